//! `cargo xtask data`: list the data sets, draw a grid of samples, export to folders.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use gaze_data::catalog;
use gaze_data::MnistSource;
use gaze_tensor::Seed;

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    cmd: DataCmd,
}

#[derive(Subcommand)]
enum DataCmd {
    /// List the named data sets.
    List,
    /// Write a PNG grid of samples with their labels and boxes.
    Show {
        /// Data set name (see `data list`).
        dataset: String,
        /// Number of samples.
        #[arg(long, default_value_t = 16)]
        n: usize,
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
        /// Generator seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Folder of MNIST IDX files (default: $GAZE_DATA_DIR, else the embedded fixture).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Columns of the grid.
        #[arg(long, default_value_t = 4)]
        cols: usize,
    },
    /// Export generated scenes to the generic VQA / caption folder format.
    Export {
        /// barn-vqa, sort-of-clevr or shape-captions.
        dataset: String,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Number of scenes (images).
        #[arg(long, default_value_t = 100)]
        scenes: usize,
        /// Generator seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

pub fn run(a: DataArgs) -> anyhow::Result<()> {
    match a.cmd {
        DataCmd::List => {
            for n in catalog::NAMES {
                println!("{n}");
            }
        }
        DataCmd::Show { dataset, n, out, seed, data_dir, cols } => {
            let source = data_dir.map_or(MnistSource::Auto, MnistSource::Dir);
            let tiles = catalog::preview(&dataset, n, Seed(seed), &source)
                .with_context(|| format!("making {n} samples of {dataset}"))?;
            // tiles about 256 px wide: 128 px scenes at 2x, 60 px canvases at 4x
            let img = gaze_data::preview::grid(&tiles, cols, 256);
            img.save_png(&out).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} ({} samples of {dataset}, {}x{} px)", out.display(), tiles.len(), img.width, img.height);
        }
        DataCmd::Export { dataset, out, scenes, seed } => {
            let n = catalog::export(&dataset, scenes, Seed(seed), &out)
                .with_context(|| format!("exporting {dataset} to {}", out.display()))?;
            println!("wrote {n} records of {scenes} scenes to {}", out.display());
        }
    }
    Ok(())
}

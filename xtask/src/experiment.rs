//! `cargo xtask experiment`: run `experiments/<name>.toml`, record the run, update
//! `experiments/RESULTS.md` after a full run.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use gaze_train::{ExperimentConfig, RunOptions};

#[derive(Args)]
pub struct ExperimentArgs {
    /// The experiment (a file `experiments/<name>.toml`).
    name: Option<String>,
    /// List the experiments.
    #[arg(long)]
    list: bool,
    /// A few steps on a few samples of the embedded fixture: a smoke check, never recorded.
    #[arg(long)]
    quick: bool,
    /// CPU threads (default: the experiment's `train.threads`, else all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Folder of MNIST IDX files (sets GAZE_DATA_DIR for this run).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Write the run folder under this folder (default: `runs/` in the repository). A folder
    /// outside the work tree keeps long runs resumable when the tree is laid anew.
    #[arg(long)]
    runs: Option<PathBuf>,
}

/// The repository root (xtask lives one below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

pub fn run(a: ExperimentArgs) -> anyhow::Result<()> {
    let dir = root().join("experiments");
    if a.list || a.name.is_none() {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".toml")).map(str::to_string))
            .collect();
        names.sort();
        for n in names {
            let cfg = ExperimentConfig::load(&dir.join(format!("{n}.toml")));
            let targets = cfg
                .map(|c| c.targets.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "))
                .unwrap_or_else(|e| format!("INVALID: {e}"));
            println!("{n:<24} {targets}");
        }
        return Ok(());
    }
    let name = a.name.unwrap_or_default();
    let path = dir.join(format!("{name}.toml"));
    if !path.is_file() {
        anyhow::bail!(
            "no experiment `{name}`: {} does not exist (see `cargo xtask experiment --list`)",
            path.display()
        );
    }
    let mut cfg = ExperimentConfig::load(&path)?;
    if a.quick {
        cfg = cfg.quick();
    }
    if let Some(d) = &a.data_dir {
        #[allow(unsafe_code)]
        // Safe: set before any thread is spawned.
        unsafe {
            std::env::set_var(gaze_data::mnist::DATA_DIR_ENV, d);
        }
    }
    gaze_train::set_threads(a.threads.unwrap_or(cfg.train.threads));
    let mut command = String::from("cargo xtask experiment ");
    command += &name;
    if a.quick {
        command += " --quick";
    }
    if let Some(t) = a.threads {
        command += &format!(" --threads {t}");
    }
    if let Some(d) = std::env::var_os(gaze_data::mnist::DATA_DIR_ENV).filter(|_| !a.quick) {
        command = format!("GAZE_DATA_DIR={} {command}", d.to_string_lossy());
    }
    let runs = a.runs.clone().unwrap_or_else(|| root().join("runs"));
    let opts = RunOptions { runs_root: Some(runs), resume: a.resume, command: Some(command), ..RunOptions::default() };
    let s = gaze_train::run(&cfg, &opts)?;
    println!("run folder: {}", s.run_dir.display());
    for (k, v) in &s.metrics {
        println!("  {k:<16} {v:<10} {}", cfg.targets.get(k).map_or("", String::as_str));
    }
    println!("  wall_s {:.1}, {:.0} training samples/s", s.wall_s, s.samples_per_s);
    if a.quick {
        println!("(--quick: not recorded in RESULTS.md)");
    } else if !s.stopped_early {
        let results = dir.join("RESULTS.md");
        gaze_train::results::update(&results, &s, &cfg.targets)?;
        println!("recorded in {}", results.display());
    }
    Ok(())
}

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
    // Where runs go decides which run `init_from = { experiment = ... }` starts from.
    if let (Some(gaze_train::config::InitFrom::Experiment { .. }), Some(r)) = (&cfg.train.init_from, &a.runs) {
        command += &format!(" --runs {}", r.display());
    }
    if let Some(d) = std::env::var_os(gaze_data::mnist::DATA_DIR_ENV).filter(|_| !a.quick) {
        command = format!("GAZE_DATA_DIR={} {command}", d.to_string_lossy());
    }
    let runs = a.runs.clone().unwrap_or_else(|| root().join("runs"));
    let opts = RunOptions { runs_root: Some(runs), resume: a.resume, command: Some(command), ..RunOptions::default() };
    let s = gaze_train::run(&cfg, &opts)?;
    println!("run folder: {}", s.run_dir.display());
    // The targets hold for the data they were set for (`targets_data`), not for any data.
    let record = gaze_train::data::DataRecord::load(&s.run_dir)?;
    let targets = record.as_ref().map_or_else(|| cfg.targets.clone(), |r| cfg.targets_here(&r.sha256.test));
    if targets.len() < cfg.targets.len() {
        println!("(the targets were set for other data than this run's: not compared, not recorded)");
    }
    for (k, v) in &s.metrics {
        println!("  {k:<16} {v:<10} {}", targets.get(k).map_or("", String::as_str));
    }
    println!("  wall_s {:.1}, {:.0} training samples/s", s.wall_s, s.samples_per_s);
    if a.quick {
        println!("(--quick: not recorded in RESULTS.md)");
        let full = ExperimentConfig::load(&path)?;
        match estimate(&full, &s.run_dir) {
            Some(e) => println!("{e}"),
            None => println!("(no estimate of the full run: the quick run left no timed steps)"),
        }
    } else if !s.stopped_early {
        let results = dir.join("RESULTS.md");
        gaze_train::results::update(&results, &s, &targets)?;
        println!("recorded in {}", results.display());
    }
    Ok(())
}

/// Training examples (images; for VQA, images with all their questions) one epoch of `cfg`'s
/// full run reads, from its config: `None` for a folder, whose size is known only by reading it.
/// MNIST sources other than the fixture are taken to be the standard 60,000-digit training file.
pub fn full_train_examples(cfg: &ExperimentConfig) -> Option<usize> {
    use gaze_train::config::{DataConfig, MnistData};
    let digits = |m: &MnistData| {
        let file = if m.source == gaze_data::MnistSource::Fixture { 2_000 } else { 60_000 };
        let train = file - ((file as f64) * m.val_fraction).round().max(1.0) as usize;
        if m.train_limit > 0 {
            train.min(m.train_limit)
        } else {
            train
        }
    };
    Some(match &cfg.data {
        DataConfig::Mnist(m) => digits(m),
        DataConfig::MnistCanvas(c) => digits(&c.digits),
        DataConfig::MnistPairs(p) => digits(&p.digits),
        DataConfig::Cifar(c) => {
            let train = 50_000 - ((50_000.0 * c.val_fraction).round().max(1.0) as usize);
            if c.train_limit > 0 {
                train.min(c.train_limit)
            } else {
                train
            }
        }
        DataConfig::BarnVqa(b) => b.train_scenes,
        DataConfig::SortOfClevr(c) => c.train_images,
        DataConfig::ShapeCaptions(c) => c.train_images,
        DataConfig::VqaFolder(_) | DataConfig::CaptionFolder(_) => return None,
    })
}

/// What the full run of `full` will take, from the time a step took in the quick run in
/// `quick_run` (its `checkpoints/last.json`): the same model and batch on this machine, so the
/// same time a step; evaluation is not counted.
pub fn estimate(full: &ExperimentConfig, quick_run: &Path) -> Option<String> {
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(quick_run.join("checkpoints/last.json")).ok()?).ok()?;
    let state = state.get("state")?;
    let steps = state.get("step")?.as_u64().filter(|&s| s > 0)?;
    let per_step = state.get("train_seconds")?.as_f64()? / steps as f64;
    let (epochs, batch) = (full.train.epochs, full.train.batch_size.max(1));
    let how = format!("at the quick run's {:.0} ms a step over {steps} steps; evaluation not counted", 1e3 * per_step);
    Some(match full_train_examples(full) {
        Some(n) => {
            let total = n.div_ceil(batch) as u64 * epochs as u64;
            format!(
                "the full run: {epochs} epoch(s) x {} steps of {batch} ({n} training examples), about {} of training \
                 ({how})",
                n.div_ceil(batch),
                gaze_train::trainer::human_duration(per_step * total as f64)
            )
        }
        None => format!(
            "the full run: {epochs} epoch(s), about {} of training per 1,000 training examples of its folder ({how})",
            gaze_train::trainer::human_duration(per_step * (1000usize.div_ceil(batch) * epochs) as f64)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(name: &str) -> anyhow::Result<ExperimentConfig> {
        Ok(ExperimentConfig::load(&root().join("experiments").join(format!("{name}.toml")))?)
    }

    #[test]
    fn full_runs_are_sized_from_their_configs() -> anyhow::Result<()> {
        // 60,000 digits less a twelfth for validation.
        assert_eq!(full_train_examples(&experiment("mnist-convnet")?), Some(55_000));
        let barn = experiment("han-barn")?;
        let gaze_train::config::DataConfig::BarnVqa(b) = &barn.data else { anyhow::bail!("barn data") };
        assert_eq!(full_train_examples(&barn), Some(b.train_scenes));
        Ok(())
    }

    #[test]
    fn the_estimate_scales_the_quick_runs_step_time_to_the_full_run() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("checkpoints"))?;
        std::fs::write(dir.path().join("checkpoints/last.json"), r#"{"state": {"step": 10, "train_seconds": 0.5}}"#)?;
        let mut cfg = experiment("mnist-convnet")?;
        (cfg.train.epochs, cfg.train.batch_size) = (2, 100);
        // 550 steps an epoch, 1,100 steps at 50 ms: 55 s.
        let e = estimate(&cfg, dir.path()).unwrap_or_default();
        assert!(e.contains("2 epoch(s) x 550 steps of 100") && e.contains("about 55 s") && e.contains("50 ms"), "{e}");
        assert_eq!(estimate(&cfg, &dir.path().join("none")), None);
        Ok(())
    }
}

//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

use gaze_train::{ExperimentConfig, RunOptions};

/// Quiet runs under `root`.
pub fn opts(root: &Path) -> RunOptions {
    RunOptions { runs_root: Some(root.to_path_buf()), quiet: true, ..RunOptions::default() }
}

/// The `--quick` version of a checked-in experiment.
pub fn quick_of(name: &str) -> anyhow::Result<ExperimentConfig> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../experiments/{name}.toml"));
    Ok(ExperimentConfig::load(&file)?.quick())
}

//! gaze's task runner (`cargo xtask ...`): one module per task.
//!
//! - `data list | show | export`: look at and export the data sets.
//! - `experiment <name> [--quick] | --list`: run and record an experiment.
//! - `bench convnet | ram | <experiment> | layers`: time a training step and its parts;
//!   `bench suite`, `bench compare`: the fixed set CI compares with `benchmarks/baseline.json`.
//! - `results check`: which rows of `experiments/RESULTS.md` are stale (code they run changed).

mod bench;
mod data;
mod experiment;
mod results;
mod suite;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "gaze's tasks: experiments, data previews and exports")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Look at, list and export data sets.
    Data(data::DataArgs),
    /// Run an experiment from experiments/<name>.toml and record its results.
    Experiment(experiment::ExperimentArgs),
    /// Time training steps and their parts.
    Bench(bench::BenchArgs),
    /// Check `experiments/RESULTS.md` against the code: which rows are stale.
    Results(results::ResultsArgs),
}

fn main() -> anyhow::Result<()> {
    gaze_train::keep_freed_memory();
    match Cli::parse().task {
        Task::Data(a) => data::run(a),
        Task::Experiment(a) => experiment::run(a),
        Task::Bench(a) => bench::run(a),
        Task::Results(a) => results::run(a),
    }
}

//! gaze's task runner (`cargo xtask ...`): one module per task.
//!
//! - `data list | show | export`: look at and export the data sets.

mod data;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "gaze's tasks: data previews and exports")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Look at, list and export data sets.
    Data(data::DataArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Data(a) => data::run(a),
    }
}

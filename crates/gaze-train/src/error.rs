//! Errors of the trainer: each names the file, key, step or term at fault.

use std::path::PathBuf;

/// Errors from configuring, running, checkpointing and reporting a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An experiment file is malformed or holds an impossible value.
    #[error("{path}: `{key}`: {reason}")]
    Config {
        /// The experiment file.
        path: PathBuf,
        /// The key at fault (dotted: `optim.lr`), or `-` when the file as a whole is at fault.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A loss term, the gradient norm or a parameter became NaN or infinite: the run diverged.
    #[error("step {step}: {what} is {value}; the run stops, {kept}")]
    NonFinite {
        /// The global step.
        step: u64,
        /// What is not finite: "loss term `classify`", "the gradient norm", "parameter `...`".
        what: String,
        /// Its value.
        value: f32,
        /// What is left to resume from: the last checkpoint written (all of whose values are
        /// finite: none is written after the divergence), or that there is none.
        kept: String,
    },
    /// A checkpoint could not be written or read.
    #[error("{path}: checkpoint: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// File-system trouble.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Data could not be loaded or batched.
    #[error(transparent)]
    Data(#[from] gaze_data::DataError),
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Anything else (rendering, encoding).
    #[error("{0}")]
    Other(String),
}

/// `Result` with [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

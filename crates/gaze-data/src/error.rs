//! The one error type of `gaze-data`: every variant names the file, record or field at fault.

use std::path::PathBuf;

/// Errors from reading, generating and batching data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The operating system refused a read or write.
    #[error("{path}: {source}")]
    Io {
        /// File or folder at fault.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// An IDX file is malformed.
    #[error("{path}: not a valid IDX file: {reason}")]
    Idx {
        /// File at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Two files that belong together disagree (image and label counts, sizes).
    #[error("{path}: {reason}")]
    Mismatch {
        /// File at fault.
        path: PathBuf,
        /// What disagrees.
        reason: String,
    },
    /// A record of a JSON / JSONL file is malformed or points at something missing.
    #[error("{path}: record {record}: {reason}")]
    Record {
        /// File at fault.
        path: PathBuf,
        /// 1-based record number (the line for JSONL, the array position for JSON).
        record: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A file that must hold records holds none.
    #[error("{path}: no records")]
    Empty {
        /// File at fault.
        path: PathBuf,
    },
    /// A generator or loader setting is impossible.
    #[error("invalid setting `{field}`: {reason}")]
    Config {
        /// The setting at fault.
        field: String,
        /// Why it is impossible.
        reason: String,
    },
    /// An image could not be decoded or encoded.
    #[error("{path}: image: {reason}")]
    Image {
        /// File at fault.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// The Hugging Face hub could not supply a data set.
    #[error("{0}")]
    Hub(String),
    /// A tensor operation failed while batching.
    #[error("building a batch: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// `Result` with [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;

impl DataError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    /// An impossible setting.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config { field: field.into(), reason: reason.into() }
    }
}

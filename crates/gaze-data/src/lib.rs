//! Data for gaze: real digits, generated scenes, on-disk folders, datasets and batches.
//!
//! - [`idx`], [`mnist`]: the IDX format and MNIST-like sets from a folder (`GAZE_DATA_DIR`),
//!   the embedded fixture, or the Hugging Face hub.
//! - [`generate`]: seeded generators — translated and cluttered MNIST, MNIST pairs, barn-scene
//!   VQA, Sort-of-CLEVR, shape captions — every sample with the boxes of its objects.
//! - [`vqa`], [`caption`]: VQA and caption sets in memory and as folders (bring your own data),
//!   with the data set's own splits ([`split`]) when it ships them.
//! - [`dataset`], [`vocab`]: splits, shuffles, vocabularies, images and labels as candle tensors.
//! - [`preview`], [`catalog`]: pictures of samples and the data sets by name.
//!
//! Errors are [`DataError`]s naming the file, record or setting at fault; nothing panics on bad
//! input.

pub mod caption;
pub mod catalog;
pub mod cifar;
pub mod dataset;
pub mod error;
pub mod generate;
pub mod idx;
pub mod image;
pub mod mnist;
pub mod preview;
pub mod split;
pub mod vocab;
pub mod vqa;

pub use dataset::{Batcher, ImageBatch, Split};
pub use error::{DataError, Result};
pub use image::{BBox, Image, LabeledBox};
pub use mnist::{LabeledImages, Mnist, MnistSource};
pub use split::SplitName;

use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename, so
/// a reader never sees a half-written file and an interrupted write leaves the old one intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| DataError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

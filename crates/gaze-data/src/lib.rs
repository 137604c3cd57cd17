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
    let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()));
    let done = written
        .map_err(|e| DataError::io(&tmp, e))
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e)));
    if done.is_err() {
        // A failed write (a full disk) leaves nothing behind: the old file stays, the partial one goes.
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// Removes temporary files that [`write_atomic`] left in `dir` when a process died mid-write
/// (`.<name>.<pid>.tmp`); returns how many. Run folders call it when a run resumes.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with('.') && n.ends_with(".tmp") && e.path().is_file()
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temp_and_stale_temps_are_swept() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| DataError::io("tmp", e))?;
        let d = dir.path();
        let temps = || {
            std::fs::read_dir(d)
                .map(|r| r.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).count())
                .unwrap_or(0)
        };
        // The rename cannot replace a non-empty folder: the write fails, its temp file goes.
        let target = d.join("taken");
        std::fs::create_dir_all(target.join("inside")).map_err(|e| DataError::io(&target, e))?;
        assert!(write_atomic(&target, b"new").is_err());
        assert_eq!(temps(), 0);
        write_atomic(&d.join("ok.json"), b"{}")?;
        assert_eq!(std::fs::read(d.join("ok.json")).map_err(|e| DataError::io("ok", e))?, b"{}");
        // Leftovers of a killed writer are removed; other files stay.
        std::fs::write(d.join(".last.safetensors.123.tmp"), b"half").map_err(|e| DataError::io("t", e))?;
        std::fs::write(d.join("keep.tmp"), b"mine").map_err(|e| DataError::io("t", e))?;
        assert_eq!(remove_stale_temps(d), 1);
        assert!(d.join("keep.tmp").is_file() && d.join("ok.json").is_file());
        Ok(())
    }
}

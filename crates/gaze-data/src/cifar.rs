//! The CIFAR-10 / CIFAR-100 binary format ("Learning Multiple Layers of Features from Tiny
//! Images", Krizhevsky 2009), as the data sets' "binary version" ships it: records of label
//! byte(s) and 3,072 pixel bytes (32x32, the red plane, then green, then blue).
//!
//! - CIFAR-10: `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`, one label byte
//!   (0..10) per record; class names in `batches.meta.txt`.
//! - CIFAR-100: `train.bin` and `test.bin`, a coarse (0..20) and a fine (0..100) label byte per
//!   record; the fine label is the class; names in `fine_label_names.txt`.
//!
//! Files may be gzipped (`.bin.gz`). A truncated record or a label out of range is an error
//! naming the file and the record.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::mnist::LabeledImages;

/// Pixel bytes of one record: 3 planes of 32x32.
pub const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    /// 10 classes, one label byte.
    Ten,
    /// 100 classes (the fine labels), two label bytes.
    Hundred,
}

impl CifarKind {
    /// Label bytes per record.
    pub fn label_bytes(self) -> usize {
        match self {
            CifarKind::Ten => 1,
            CifarKind::Hundred => 2,
        }
    }

    /// Classes.
    pub fn classes(self) -> usize {
        match self {
            CifarKind::Ten => 10,
            CifarKind::Hundred => 100,
        }
    }
}

/// A CIFAR data set: its training and test images (RGB, 32x32) and class names.
#[derive(Debug, Clone)]
pub struct Cifar {
    /// Which one.
    pub kind: CifarKind,
    /// Training images, in file order.
    pub train: LabeledImages,
    /// Test images.
    pub test: LabeledImages,
    /// Class names when the folder has them, else the class numbers.
    pub names: Vec<String>,
}

/// Reads the records of one file of `kind`.
pub fn read_file(path: &Path, kind: CifarKind) -> Result<LabeledImages> {
    // The largest CIFAR file (CIFAR-100's train.bin) is 50,000 records, 154 MB.
    let bytes = crate::idx::read_maybe_gzipped_capped(path, 60_000 * (PIXELS as u64 + 2))?;
    let (lb, record) = (kind.label_bytes(), kind.label_bytes() + PIXELS);
    if bytes.is_empty() {
        return Err(DataError::Empty { path: path.into() });
    }
    if bytes.len() % record != 0 {
        return Err(DataError::Record {
            path: path.into(),
            record: bytes.len() / record + 1,
            reason: format!(
                "truncated: {} bytes after the last whole record, a record is {record} ({lb} label byte{} and \
                 {PIXELS} pixels)",
                bytes.len() % record,
                if lb == 1 { "" } else { "s" }
            ),
        });
    }
    let n = bytes.len() / record;
    let mut out = LabeledImages {
        channels: 3,
        rows: 32,
        cols: 32,
        pixels: Vec::with_capacity(n * PIXELS),
        labels: Vec::with_capacity(n),
    };
    for (i, r) in bytes.chunks_exact(record).enumerate() {
        let label = r[lb - 1];
        if usize::from(label) >= kind.classes() {
            return Err(DataError::Record {
                path: path.into(),
                record: i + 1,
                reason: format!("label {label} is outside the {} classes", kind.classes()),
            });
        }
        out.labels.push(label);
        out.pixels.extend_from_slice(&r[lb..]);
    }
    Ok(out)
}

fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))].into_iter().find(|p| p.is_file())
}

fn concat(parts: Vec<LabeledImages>) -> LabeledImages {
    let mut out = LabeledImages { channels: 3, rows: 32, cols: 32, pixels: vec![], labels: vec![] };
    for p in parts {
        out.pixels.extend(p.pixels);
        out.labels.extend(p.labels);
    }
    out
}

impl Cifar {
    /// Reads a CIFAR-10 (`data_batch_*.bin`, `test_batch.bin`) or CIFAR-100 (`train.bin`,
    /// `test.bin`) folder; the error for any other folder lists what was looked for.
    pub fn read_folder(dir: &Path) -> Result<Self> {
        let (kind, train, test, names) = if let Some(test) = find(dir, "test_batch.bin") {
            let mut batches = vec![];
            for k in 1..=5 {
                if let Some(p) = find(dir, &format!("data_batch_{k}.bin")) {
                    batches.push(read_file(&p, CifarKind::Ten)?);
                }
            }
            if batches.is_empty() {
                return Err(DataError::io(
                    dir,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "test_batch.bin but no data_batch_*.bin"),
                ));
            }
            (CifarKind::Ten, concat(batches), read_file(&test, CifarKind::Ten)?, "batches.meta.txt")
        } else if let (Some(train), Some(test)) = (find(dir, "train.bin"), find(dir, "test.bin")) {
            let (a, b) = (read_file(&train, CifarKind::Hundred)?, read_file(&test, CifarKind::Hundred)?);
            (CifarKind::Hundred, a, b, "fine_label_names.txt")
        } else {
            return Err(DataError::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not a CIFAR binary folder: expected data_batch_1..5.bin and test_batch.bin (CIFAR-10) or \
                     train.bin and test.bin (CIFAR-100)",
                ),
            ));
        };
        let listed: Vec<String> = std::fs::read_to_string(dir.join(names))
            .map(|t| t.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
            .unwrap_or_default();
        let names =
            if listed.len() == kind.classes() { listed } else { (0..kind.classes()).map(|c| c.to_string()).collect() };
        Ok(Self { kind, train, test, names })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: &[u8], fill: u8) -> Vec<u8> {
        let mut r = label.to_vec();
        // red plane `fill`, green 0, blue 255
        r.extend(std::iter::repeat_n(fill, 1024));
        r.extend(std::iter::repeat_n(0, 1024));
        r.extend(std::iter::repeat_n(255, 1024));
        r
    }

    fn write(path: &Path, bytes: &[u8]) -> Result<()> {
        std::fs::write(path, bytes).map_err(|e| DataError::io(path, e))
    }

    #[test]
    fn reads_cifar10_and_cifar100_folders_written_here() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| DataError::io("tmp", e))?;
        let d = dir.path();
        write(&d.join("data_batch_1.bin"), &[record(&[3], 10), record(&[9], 20)].concat())?;
        write(&d.join("data_batch_2.bin"), &record(&[0], 30))?;
        write(&d.join("test_batch.bin"), &record(&[7], 40))?;
        let names: String = (0..10).map(|i| format!("class{i}\n")).collect();
        write(&d.join("batches.meta.txt"), names.as_bytes())?;
        let c = Cifar::read_folder(d)?;
        assert_eq!((c.kind, c.train.len(), c.test.len()), (CifarKind::Ten, 3, 1));
        assert_eq!(c.train.labels, [3, 9, 0]);
        assert_eq!((c.train.channels, c.train.rows, c.train.cols), (3, 32, 32));
        assert_eq!(c.names[7], "class7");
        // Planes stay planes in the set; the picture interleaves them.
        let img = c.train.to_image(1)?;
        assert_eq!((img.channels, &img.data[..6]), (3, &[20u8, 0, 255, 20, 0, 255][..]));

        let dir = tempfile::tempdir().map_err(|e| DataError::io("tmp", e))?;
        let d = dir.path();
        write(&d.join("train.bin"), &[record(&[1, 57], 5), record(&[19, 99], 6)].concat())?;
        write(&d.join("test.bin"), &record(&[0, 3], 7))?;
        let c = Cifar::read_folder(d)?;
        assert_eq!(
            (c.kind, c.train.labels.clone(), c.test.labels.clone()),
            (CifarKind::Hundred, vec![57, 99], vec![3])
        );
        assert_eq!(c.names.len(), 100, "numbers when the folder names no classes");
        Ok(())
    }

    #[test]
    fn truncated_records_and_labels_out_of_range_name_the_file_and_record() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| DataError::io("tmp", e))?;
        let d = dir.path();
        let bad = d.join("data_batch_1.bin");
        let mut bytes = [record(&[1], 0), record(&[2], 0)].concat();
        bytes.truncate(bytes.len() - 100);
        write(&bad, &bytes)?;
        write(&d.join("test_batch.bin"), &record(&[7], 40))?;
        let e = Cifar::read_folder(d).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("data_batch_1.bin") && e.contains("record 2") && e.contains("truncated"), "{e}");
        write(&bad, &[record(&[1], 0), record(&[10], 0)].concat())?;
        let e = Cifar::read_folder(d).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("data_batch_1.bin: record 2: label 10 is outside the 10 classes"), "{e}");
        let e = read_file(&bad, CifarKind::Hundred).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("truncated"), "a CIFAR-10 file read as CIFAR-100 does not split into records: {e}");
        let empty = tempfile::tempdir().map_err(|e| DataError::io("tmp", e))?;
        let e = Cifar::read_folder(empty.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("not a CIFAR binary folder"), "{e}");
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Any bytes: an error or whole records, never a panic.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..7000), hundred in proptest::prelude::any::<bool>()) {
            let dir = tempfile::tempdir().map_err(|e| DataError::io("tmp", e))?;
            let p = dir.path().join("data_batch_1.bin");
            write(&p, &bytes)?;
            let kind = if hundred { CifarKind::Hundred } else { CifarKind::Ten };
            if let Ok(set) = read_file(&p, kind) {
                proptest::prop_assert_eq!(set.labels.len() * (PIXELS + kind.label_bytes()), bytes.len());
            }
        }

        /// A valid file with one byte changed or its end cut: the labels read are the ones
        /// written (or the error names the file), never a panic.
        #[test]
        fn mutated_files_read_right_or_fail_by_name(at in 0usize..3 * 3073, value in proptest::prelude::any::<u8>(), cut in 0usize..3 * 3073) {
            let mut bytes = [record(&[1], 0), record(&[2], 9), record(&[3], 200)].concat();
            bytes[at] = value;
            bytes.truncate(bytes.len() - cut % 3073);
            let dir = tempfile::tempdir().map_err(|e| DataError::io("tmp", e))?;
            let p = dir.path().join("test_batch.bin");
            write(&p, &bytes)?;
            match read_file(&p, CifarKind::Ten) {
                Ok(set) => {
                    let labels: Vec<u8> = (0..3).map(|i| if at == i * 3073 { value } else { i as u8 + 1 }).collect();
                    proptest::prop_assert_eq!(set.labels, labels);
                }
                Err(e) => proptest::prop_assert!(e.to_string().contains("test_batch.bin"), "{}", e),
            }
        }
    }
}

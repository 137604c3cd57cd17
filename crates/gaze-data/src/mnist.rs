//! MNIST-like digit sets: from a folder of IDX files, from the embedded fixture, or from the
//! Hugging Face hub.
//!
//! Data set: Y. LeCun, C. Cortes, C. J. C. Burges, "The MNIST database of handwritten digits".
//! Any folder holding the four standard file names (raw or `.gz`) loads the same way, so
//! Fashion-MNIST, KMNIST and friends work unchanged.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::idx;
use crate::image::Image;

/// The environment variable naming a folder of IDX files.
pub const DATA_DIR_ENV: &str = "GAZE_DATA_DIR";

/// The hub's MNIST files (parquet conversion of `ylecun/mnist`).
#[cfg(feature = "hub")]
const HUB_FILES: [&str; 2] = ["mnist/test/0000.parquet", "mnist/train/0000.parquet"];
#[cfg(feature = "hub")]
const HUB_REVISION: &str = "refs/convert/parquet";

/// The standard IDX file names: (train images, train labels, test images, test labels).
pub const STANDARD_NAMES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

/// A set of images of one size with one class label each (grey MNIST digits, RGB CIFAR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledImages {
    /// Channels of every image (1: grey, 3: RGB), stored plane after plane.
    pub channels: usize,
    /// Height of every image.
    pub rows: usize,
    /// Width of every image.
    pub cols: usize,
    /// `len() * channels * rows * cols` bytes, image after image, each channel's plane row-major.
    pub pixels: Vec<u8>,
    /// One class label per image.
    pub labels: Vec<u8>,
}

impl LabeledImages {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes of one image: channels x rows x cols.
    pub fn image_len(&self) -> usize {
        self.channels * self.rows * self.cols
    }

    /// Pixels of image `i` (`channels * rows * cols` bytes, plane after plane), or `None` past
    /// the end.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let size = self.image_len();
        self.pixels.get(i * size..(i + 1) * size)
    }

    /// Image `i` as an [`Image`] (grey, or RGB with its channels interleaved), for pictures.
    pub fn to_image(&self, i: usize) -> Result<Image> {
        let px = self.image(i).ok_or_else(|| DataError::config("index", format!("image {i} of {}", self.len())))?;
        if self.channels == 1 {
            return Image::grey(self.rows, self.cols, px.to_vec());
        }
        let plane = self.rows * self.cols;
        let mut data = Vec::with_capacity(plane * 3);
        for p in 0..plane {
            for c in 0..3 {
                data.push(px[c.min(self.channels - 1) * plane + p]);
            }
        }
        Ok(Image { height: self.rows, width: self.cols, channels: 3, data })
    }

    /// How many images carry each label `0..classes`.
    pub fn label_counts(&self, classes: usize) -> Vec<usize> {
        let mut counts = vec![0; classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(usize::from(l)) {
                *c += 1;
            }
        }
        counts
    }

    /// The first `n` images (all of them when `n` is larger).
    pub fn take(&self, n: usize) -> Self {
        let n = n.min(self.len());
        Self {
            channels: self.channels,
            rows: self.rows,
            cols: self.cols,
            pixels: self.pixels[..n * self.image_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
        }
    }

    /// The images at `indices`, in that order; an index past the end is an error.
    pub fn select(&self, indices: &[usize]) -> Result<Self> {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_len());
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let img = self.image(i).ok_or_else(|| {
                DataError::config("index", format!("image {i} requested from a set of {}", self.len()))
            })?;
            pixels.extend_from_slice(img);
            labels.push(self.labels[i]);
        }
        Ok(Self { channels: self.channels, rows: self.rows, cols: self.cols, pixels, labels })
    }

    /// Pairs an image file with a label file, checking that counts agree.
    pub fn from_idx(images: idx::IdxImages, labels: Vec<u8>, labels_path: &Path) -> Result<Self> {
        if images.count != labels.len() {
            return Err(DataError::Mismatch {
                path: labels_path.into(),
                reason: format!("{} labels for {} images in the matching image file", labels.len(), images.count),
            });
        }
        Ok(Self { channels: 1, rows: images.rows, cols: images.cols, pixels: images.pixels, labels })
    }
}

/// A train and a test split of a digit data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mnist {
    /// The training file (60,000 digits for MNIST).
    pub train: LabeledImages,
    /// The test file (10,000 digits for MNIST).
    pub test: LabeledImages,
}

/// Finds `name` or `name.gz` in `dir`.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(DataError::io(
        &raw,
        std::io::Error::new(std::io::ErrorKind::NotFound, format!("neither {name} nor {name}.gz is in this folder")),
    ))
}

fn load_split(dir: &Path, images: &str, labels: &str) -> Result<LabeledImages> {
    let ip = find(dir, images)?;
    let lp = find(dir, labels)?;
    LabeledImages::from_idx(idx::read_images(&ip)?, idx::read_labels(&lp)?, &lp)
}

impl Mnist {
    /// Loads the four standard IDX files (raw or gzipped) from `dir`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(DataError::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder")));
        }
        Ok(Self {
            train: load_split(dir, STANDARD_NAMES[0], STANDARD_NAMES[1])?,
            test: load_split(dir, STANDARD_NAMES[2], STANDARD_NAMES[3])?,
        })
    }

    /// The small real fixture compiled into the crate: the first 2,000 training and the first
    /// 500 test digits of MNIST (see `datasets/mnist-fixture/README.md`).
    pub fn fixture() -> Result<Self> {
        let part = |bytes: &[u8], name: &str| -> Result<Vec<u8>> {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out)
                .map_err(|e| DataError::Idx { path: name.into(), reason: format!("bad gzip data: {e}") })?;
            Ok(out)
        };
        let split = |ib: &[u8], lb: &[u8], iname: &str, lname: &str| -> Result<LabeledImages> {
            let images = idx::parse_images(&part(ib, iname)?, Path::new(iname))?;
            let labels = idx::parse_labels(&part(lb, lname)?, Path::new(lname))?;
            LabeledImages::from_idx(images, labels, Path::new(lname))
        };
        Ok(Self {
            train: split(
                include_bytes!("../../../datasets/mnist-fixture/train-images-idx3-ubyte.gz"),
                include_bytes!("../../../datasets/mnist-fixture/train-labels-idx1-ubyte.gz"),
                "fixture:train-images-idx3-ubyte.gz",
                "fixture:train-labels-idx1-ubyte.gz",
            )?,
            test: split(
                include_bytes!("../../../datasets/mnist-fixture/t10k-images-idx3-ubyte.gz"),
                include_bytes!("../../../datasets/mnist-fixture/t10k-labels-idx1-ubyte.gz"),
                "fixture:t10k-images-idx3-ubyte.gz",
                "fixture:t10k-labels-idx1-ubyte.gz",
            )?,
        })
    }

    /// MNIST from the Hugging Face hub (`ylecun/mnist`, parquet), from the local hub cache
    /// (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`) when it is there.
    /// With `HF_HUB_OFFLINE=1` the network is never tried: no cache is an error that says how to
    /// use a folder instead (so is any download failure).
    #[cfg(feature = "hub")]
    pub fn from_hub() -> Result<Self> {
        Self::from_hub_checked(hub_offline())
    }

    /// [`Mnist::from_hub`] with the offline switch given rather than read from the environment.
    #[cfg(feature = "hub")]
    pub fn from_hub_checked(offline: bool) -> Result<Self> {
        let how = format!(
            "put the four IDX files ({}) in a folder and pass --data-dir DIR or set {DATA_DIR_ENV}=DIR",
            STANDARD_NAMES.join(", ")
        );
        let client =
            hf_hub::HFClientSync::new().map_err(|e| DataError::Hub(format!("Hugging Face hub client: {e}; {how}")))?;
        let repo = client.dataset("ylecun", "mnist");
        let cached = HUB_FILES
            .iter()
            .all(|f| repo.download_file().filename(*f).revision(HUB_REVISION).local_files_only(true).send().is_ok());
        if !cached && offline {
            return Err(DataError::Hub(format!(
                "MNIST is not in the Hugging Face hub cache and HF_HUB_OFFLINE is set; {how}"
            )));
        }
        let ds = candle_datasets::vision::mnist::load().map_err(|e| {
            DataError::Hub(format!("could not get MNIST from the Hugging Face hub ({e}). Offline? {how}"))
        })?;
        let to_set = |images: &candle_core::Tensor, labels: &candle_core::Tensor| -> Result<LabeledImages> {
            let pixels = (images * 255.0)?.round()?.to_dtype(candle_core::DType::U8)?.flatten_all()?.to_vec1::<u8>()?;
            let labels = labels.to_dtype(candle_core::DType::U8)?.to_vec1::<u8>()?;
            Ok(LabeledImages { channels: 1, rows: 28, cols: 28, pixels, labels })
        };
        Ok(Self { train: to_set(&ds.train_images, &ds.train_labels)?, test: to_set(&ds.test_images, &ds.test_labels)? })
    }

    /// Without the `hub` feature the hub is not available: the error says how to use a folder.
    #[cfg(not(feature = "hub"))]
    pub fn from_hub() -> Result<Self> {
        Err(DataError::Hub(format!(
            "the Hugging Face hub is an opt-in feature and this build does not have it: put the four IDX \
             files in a folder and pass --data-dir DIR or set {DATA_DIR_ENV}=DIR, or rebuild with the hub \
             (`cargo run --release -p xtask --features hub -- experiment NAME`, \
             `cargo run --release -p gaze-train --features hub --bin gaze -- ...`)"
        )))
    }

    /// Loads from `source`.
    pub fn load(source: &MnistSource) -> Result<Self> {
        match source {
            MnistSource::Dir(d) => Self::from_dir(d),
            MnistSource::Fixture => Self::fixture(),
            MnistSource::Hub => Self::from_hub(),
            MnistSource::Auto => match std::env::var_os(DATA_DIR_ENV) {
                Some(d) if !d.is_empty() => Self::from_dir(PathBuf::from(d)),
                _ => Self::fixture(),
            },
            MnistSource::EnvOrHub => match std::env::var_os(DATA_DIR_ENV) {
                Some(d) if !d.is_empty() => Self::from_dir(PathBuf::from(d)),
                _ => Self::from_hub(),
            },
        }
    }

    /// The whole training file split into (train, val): the last `val` digits of the training
    /// file are the validation set (the standard 55k / 5k split when `val` = 5,000).
    pub fn train_val(&self, val: usize) -> Result<(LabeledImages, LabeledImages)> {
        let n = self.train.len();
        if val >= n {
            return Err(DataError::config("val", format!("{val} validation digits asked of a training file of {n}")));
        }
        let cut = n - val;
        let tr: Vec<usize> = (0..cut).collect();
        let va: Vec<usize> = (cut..n).collect();
        Ok((self.train.select(&tr)?, self.train.select(&va)?))
    }
}

/// Where to get MNIST-like digits.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MnistSource {
    /// `GAZE_DATA_DIR` when set, else the embedded fixture.
    #[default]
    Auto,
    /// A folder of the four standard IDX files.
    Dir(PathBuf),
    /// The embedded fixture (2,000 train / 500 test real digits).
    Fixture,
    /// The Hugging Face hub (or its local cache).
    Hub,
    /// The full data set: `GAZE_DATA_DIR` when set, else the hub; never the small fixture.
    EnvOrHub,
}

/// The file of class names an IDX folder may hold beside its four files: one name per line, in
/// label order.
pub const CLASS_NAMES_FILE: &str = "classes.txt";

/// The class names of the IDX folder `dir` (its [`CLASS_NAMES_FILE`]), checked against the
/// `classes` its labels use: `None` when the folder has no such file; an error naming the file
/// when it lists another number of names or an empty one.
pub fn class_names_in(dir: &Path, classes: usize) -> Result<Option<Vec<String>>> {
    let path = dir.join(CLASS_NAMES_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DataError::io(&path, e)),
    };
    let names: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    let names: Vec<String> = match names.iter().rposition(|n| !n.is_empty()) {
        Some(last) => names[..=last].to_vec(),
        None => vec![],
    };
    if let Some(i) = names.iter().position(String::is_empty) {
        return Err(DataError::Record { path, record: i + 1, reason: "an empty class name".into() });
    }
    if names.len() != classes {
        return Err(DataError::Record {
            path,
            record: names.len(),
            reason: format!("{} class names for {classes} classes (one name per line, in label order)", names.len()),
        });
    }
    Ok(Some(names))
}

impl MnistSource {
    /// The folder this source reads now (a `Dir`, or `GAZE_DATA_DIR` for `Auto` / `EnvOrHub`),
    /// or `None` for the fixture and the hub.
    pub fn folder(&self) -> Option<PathBuf> {
        let env = std::env::var_os(DATA_DIR_ENV).filter(|d| !d.is_empty());
        match (self, env) {
            (MnistSource::Dir(d), _) => Some(d.clone()),
            (MnistSource::Auto | MnistSource::EnvOrHub, Some(d)) => Some(PathBuf::from(d)),
            _ => None,
        }
    }

    /// Where this source reads from, now: the folder (named, with `GAZE_DATA_DIR` when it came
    /// from there), the embedded fixture or the hub. Recorded with every run.
    pub fn describe(&self) -> String {
        let env = std::env::var_os(DATA_DIR_ENV).filter(|d| !d.is_empty());
        match (self, env) {
            (MnistSource::Dir(d), _) => format!("MNIST IDX folder {}", d.display()),
            (MnistSource::Auto | MnistSource::EnvOrHub, Some(d)) => {
                format!("MNIST IDX folder {} ({DATA_DIR_ENV})", PathBuf::from(d).display())
            }
            (MnistSource::Auto | MnistSource::Fixture, _) => "the embedded MNIST fixture".into(),
            (MnistSource::EnvOrHub | MnistSource::Hub, _) => "MNIST from the Hugging Face hub".into(),
        }
    }
}

/// Whether `HF_HUB_OFFLINE` (`1`, `true`, `yes`) asks for the local hub cache only.
#[cfg(feature = "hub")]
pub fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_loads_and_matches_the_start_of_mnist() -> Result<()> {
        let m = Mnist::fixture()?;
        assert_eq!((m.train.len(), m.test.len()), (2000, 500));
        assert_eq!((m.test.rows, m.test.cols), (28, 28));
        // The first test digits of MNIST are 7, 2, 1, 0, 4, 1, 4, 9, 5, 9.
        assert_eq!(&m.test.labels[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
        // The first training digits are 5, 0, 4, 1, 9, 2, 1, 3, 1, 4.
        assert_eq!(&m.train.labels[..10], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
        Ok(())
    }

    #[test]
    fn class_names_are_read_beside_the_idx_files_and_checked() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| DataError::io("tempdir", e))?;
        assert_eq!(class_names_in(dir.path(), 3)?, None, "no file: no names");
        let file = dir.path().join(CLASS_NAMES_FILE);
        std::fs::write(&file, "cat\ndog \nbird\n\n").map_err(|e| DataError::io(&file, e))?;
        assert_eq!(class_names_in(dir.path(), 3)?, Some(vec!["cat".into(), "dog".into(), "bird".into()]));
        let e = class_names_in(dir.path(), 10).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("classes.txt") && e.contains("3 class names for 10 classes"), "{e}");
        std::fs::write(&file, "cat\n\nbird\n").map_err(|e| DataError::io(&file, e))?;
        let e = class_names_in(dir.path(), 3).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("classes.txt") && e.contains("empty class name"), "{e}");
        Ok(())
    }

    #[test]
    fn missing_folder_and_files_are_named() {
        let e = Mnist::from_dir("/no/such/gaze/dir").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("/no/such/gaze/dir"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Mnist::from_dir(dir.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    }

    #[test]
    fn count_mismatch_names_the_label_file() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| DataError::io("tmp", e))?;
        let d = dir.path();
        let imgs = idx::IdxImages { count: 3, rows: 2, cols: 2, pixels: vec![0; 12] };
        for (i, l) in [(0, 1), (2, 3)] {
            idx::write_maybe_gzipped(&d.join(STANDARD_NAMES[i]), &idx::encode_images(&imgs))?;
            let labels = if i == 0 { vec![1, 2] } else { vec![1, 2, 3] };
            idx::write_maybe_gzipped(&d.join(format!("{}.gz", STANDARD_NAMES[l])), &idx::encode_labels(&labels))?;
        }
        let e = Mnist::from_dir(d).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("train-labels-idx1-ubyte.gz") && e.contains("2 labels for 3 images"), "{e}");
        Ok(())
    }

    #[test]
    fn train_val_split_is_the_tail() -> Result<()> {
        let m = Mnist::fixture()?;
        let (tr, va) = m.train_val(500)?;
        assert_eq!((tr.len(), va.len()), (1500, 500));
        assert_eq!(va.image(0), m.train.image(1500));
        assert!(m.train_val(2000).is_err());
        Ok(())
    }
}

//! The IDX format of the MNIST files: reader and writer, raw or gzipped.
//!
//! An IDX file is a big-endian header (two zero bytes, a type code, the number of dimensions,
//! then one u32 per dimension) followed by the data. gaze reads unsigned-byte files (type
//! `0x08`): images with three dimensions (count, rows, cols) and labels with one. Every
//! violation — wrong magic, wrong dimension count, data shorter or longer than the header
//! says — is a [`DataError::Idx`] naming the file; no input makes the reader panic.

use std::io::{Read, Write};
use std::path::Path;

use crate::error::{DataError, Result};

/// Magic number of an unsigned-byte IDX file with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an unsigned-byte IDX file with one dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Largest element count accepted from a header (guards allocation on corrupt files).
const MAX_ELEMENTS: u64 = 1 << 32;

/// Images from an IDX file: `count` images of `rows x cols` bytes, row-major, one after another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Height of each image.
    pub rows: usize,
    /// Width of each image.
    pub cols: usize,
    /// `count * rows * cols` pixel bytes.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// The pixels of image `i`, or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let size = self.rows * self.cols;
        self.pixels.get(i * size..(i + 1) * size)
    }
}

/// Reads a whole file, un-gzipping it when it starts with the gzip magic bytes.
pub fn read_maybe_gzipped(path: &Path) -> Result<Vec<u8>> {
    read_maybe_gzipped_capped(path, u64::MAX)
}

/// [`read_maybe_gzipped`], refusing a file whose (decompressed) content exceeds `cap` bytes
/// before holding more than that: a small gzip that inflates to gigabytes is an error, not an
/// exhausted memory.
pub fn read_maybe_gzipped_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let mut reader = open(path)?;
    let mut out = Vec::new();
    reader
        .by_ref()
        .take(cap.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| DataError::Idx { path: path.into(), reason: format!("bad gzip data: {e}") })?;
    if out.len() as u64 > cap {
        return Err(DataError::Idx { path: path.into(), reason: format!("holds more than the {cap} bytes allowed") });
    }
    Ok(out)
}

/// A reader of the file's content, un-gzipped when it starts with the gzip magic bytes.
fn open(path: &Path) -> Result<Box<dyn Read>> {
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(|e| DataError::io(path, e))?;
    let head = std::io::Cursor::new(magic[..n].to_vec()).chain(f);
    Ok(if n == 2 && magic == [0x1f, 0x8b] { Box::new(flate2::read::MultiGzDecoder::new(head)) } else { Box::new(head) })
}

/// An IDX file's bytes, reading no more data than its header says (plus one byte, to tell a
/// file with trailing bytes): the header bounds the memory a file can take.
fn read_idx(path: &Path, dims_expected: u8) -> Result<Vec<u8>> {
    let mut reader = open(path)?;
    let header_len = 4 + 4 * u64::from(dims_expected);
    let mut bytes = Vec::new();
    let gz = |e: std::io::Error| DataError::Idx { path: path.into(), reason: format!("bad gzip data: {e}") };
    reader.by_ref().take(header_len).read_to_end(&mut bytes).map_err(gz)?;
    if bytes.len() as u64 == header_len {
        let total = (0..usize::from(dims_expected)).try_fold(1u64, |acc, d| {
            let o = 4 + 4 * d;
            acc.checked_mul(u64::from(u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]])))
        });
        if let Some(t) = total.filter(|&t| t <= MAX_ELEMENTS) {
            reader.take(t + 1).read_to_end(&mut bytes).map_err(gz)?;
        }
    }
    Ok(bytes)
}

fn header(bytes: &[u8], path: &Path, dims_expected: u8) -> Result<(Vec<usize>, usize)> {
    let bad = |reason: String| DataError::Idx { path: path.into(), reason };
    if bytes.is_empty() {
        return Err(bad("the file is empty".into()));
    }
    if bytes.len() < 4 {
        return Err(bad(format!("{} bytes is too short for the 4-byte magic number", bytes.len())));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let expected = 0x0000_0800 | u32::from(dims_expected);
    if magic != expected {
        return Err(bad(format!(
            "magic number {magic:#010x}, expected {expected:#010x} (unsigned bytes, {dims_expected} dimension{})",
            if dims_expected == 1 { "" } else { "s" }
        )));
    }
    let ndim = usize::from(dims_expected);
    let header_len = 4 + 4 * ndim;
    if bytes.len() < header_len {
        return Err(bad(format!(
            "{} bytes is too short for a header of {ndim} dimension sizes ({header_len} bytes)",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|d| {
            let o = 4 + 4 * d;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let total = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let total = match total {
        Some(t) if t <= MAX_ELEMENTS => t as usize,
        _ => return Err(bad(format!("dimensions {dims:?} describe an impossible size"))),
    };
    let have = bytes.len() - header_len;
    if have < total {
        return Err(bad(format!("truncated: header {dims:?} needs {total} data bytes, the file has {have}")));
    }
    if have > total {
        return Err(bad(format!("has trailing bytes: header {dims:?} needs {total} data bytes, the file has more")));
    }
    Ok((dims, header_len))
}

/// Parses IDX image bytes (already un-gzipped); `path` only names the source in errors.
pub fn parse_images(bytes: &[u8], path: &Path) -> Result<IdxImages> {
    let (dims, start) = header(bytes, path, 3)?;
    Ok(IdxImages { count: dims[0], rows: dims[1], cols: dims[2], pixels: bytes[start..].to_vec() })
}

/// Parses IDX label bytes (already un-gzipped); `path` only names the source in errors.
pub fn parse_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let (_, start) = header(bytes, path, 1)?;
    Ok(bytes[start..].to_vec())
}

/// Reads an IDX image file, raw or gzipped.
pub fn read_images(path: &Path) -> Result<IdxImages> {
    parse_images(&read_idx(path, 3)?, path)
}

/// Reads an IDX label file, raw or gzipped.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    parse_labels(&read_idx(path, 1)?, path)
}

/// Encodes images as IDX bytes.
pub fn encode_images(images: &IdxImages) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + images.pixels.len());
    out.extend_from_slice(&IMAGES_MAGIC.to_be_bytes());
    for d in [images.count, images.rows, images.cols] {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(&images.pixels);
    out
}

/// Encodes labels as IDX bytes.
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

/// Writes bytes to `path`, gzipped when the name ends in `.gz`, atomically (temp file + rename).
pub fn write_maybe_gzipped(path: &Path, bytes: &[u8]) -> Result<()> {
    let data = if path.extension().is_some_and(|e| e == "gz") {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(bytes).map_err(|e| DataError::io(path, e))?;
        enc.finish().map_err(|e| DataError::io(path, e))?
    } else {
        bytes.to_vec()
    };
    crate::write_atomic(path, &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images_bytes() -> Vec<u8> {
        encode_images(&IdxImages { count: 2, rows: 2, cols: 3, pixels: (0..12).collect() })
    }

    #[test]
    fn roundtrip() -> Result<()> {
        let p = Path::new("mem");
        let imgs = parse_images(&images_bytes(), p)?;
        assert_eq!((imgs.count, imgs.rows, imgs.cols), (2, 2, 3));
        assert_eq!(imgs.image(1), Some(&[6u8, 7, 8, 9, 10, 11][..]));
        assert_eq!(parse_labels(&encode_labels(&[3, 1, 4]), p)?, vec![3, 1, 4]);
        Ok(())
    }

    fn err_text(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_magic_names_file_and_numbers() {
        let mut b = images_bytes();
        b[3] = 0x01;
        let e = err_text(parse_images(&b, Path::new("x/train-images")));
        assert!(e.contains("x/train-images") && e.contains("magic number 0x00000801"), "{e}");
        let e = err_text(parse_labels(&images_bytes(), Path::new("lbl")));
        assert!(e.contains("expected 0x00000801"), "{e}");
    }

    #[test]
    fn truncated_and_trailing_data() {
        let b = images_bytes();
        let e = err_text(parse_images(&b[..b.len() - 1], Path::new("f")));
        assert!(e.contains("truncated") && e.contains("needs 12") && e.contains("has 11"), "{e}");
        let mut longer = b.clone();
        longer.push(0);
        assert!(err_text(parse_images(&longer, Path::new("f"))).contains("trailing"));
        let e = err_text(parse_images(&b[..10], Path::new("f")));
        assert!(e.contains("too short for a header"), "{e}");
    }

    #[test]
    fn empty_file() {
        assert!(err_text(parse_labels(&[], Path::new("empty"))).contains("empty"));
    }

    #[test]
    fn huge_header_is_an_error_not_an_allocation() {
        let mut b = IMAGES_MAGIC.to_be_bytes().to_vec();
        for _ in 0..3 {
            b.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        assert!(err_text(parse_images(&b, Path::new("f"))).contains("impossible size"));
    }

    /// A small gzip that inflates far past what its header says is refused after reading what
    /// the header allows plus a byte, not inflated whole; a capped read refuses past its cap.
    #[test]
    fn a_gzip_bomb_is_refused_without_inflating_it() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| DataError::io("tempdir", e))?;
        let p = dir.path().join("train-labels-idx1-ubyte.gz");
        let mut bytes = encode_labels(&[1, 2, 3]);
        bytes.extend(std::iter::repeat_n(0u8, 64 << 20)); // 64 MiB of zeros: ~64 KiB gzipped
        write_maybe_gzipped(&p, &bytes)?;
        assert!(std::fs::metadata(&p).map_err(|e| DataError::io(&p, e))?.len() < 1 << 20);
        let e = err_text(read_labels(&p));
        assert!(e.contains("train-labels-idx1-ubyte.gz") && e.contains("trailing bytes"), "{e}");
        let e = err_text(read_maybe_gzipped_capped(&p, 1 << 20));
        assert!(e.contains("more than the 1048576 bytes allowed"), "{e}");
        assert_eq!(read_maybe_gzipped_capped(&p, 128 << 20)?.len(), bytes.len());
        Ok(())
    }

    #[test]
    fn gzip_roundtrip_on_disk() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| DataError::io("tempdir", e))?;
        let p = dir.path().join("l.gz");
        write_maybe_gzipped(&p, &encode_labels(&[9, 8]))?;
        assert_eq!(std::fs::read(&p).map_err(|e| DataError::io(&p, e))?[..2], [0x1f, 0x8b]);
        assert_eq!(read_labels(&p)?, vec![9, 8]);
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = parse_images(&bytes, Path::new("fuzz"));
            let _ = parse_labels(&bytes, Path::new("fuzz"));
        }

        #[test]
        fn valid_header_random_tail_never_panics(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), n in 0u32..4) {
            let mut b = IMAGES_MAGIC.to_be_bytes().to_vec();
            for d in [n, 2, 3] { b.extend_from_slice(&d.to_be_bytes()); }
            b.extend_from_slice(&tail);
            let r = parse_images(&b, Path::new("fuzz"));
            proptest::prop_assert_eq!(r.is_ok(), tail.len() == (n as usize) * 6);
        }
    }
}

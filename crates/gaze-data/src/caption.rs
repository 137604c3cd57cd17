//! Captioned images, in memory and as a folder on disk.
//!
//! Folder format: `DIR/images/*.png` and `DIR/captions.jsonl` (or `captions.json`, an array)
//! with records `{"image": "images/000000.png", "caption": "a red circle"}`. Optional fields:
//! `boxes` (the image's objects) and `word_boxes` (for each word, the index of the box it names,
//! or null). Several records may share an image (several captions per image).
//!
//! The JSON layout captioning code commonly uses for Flickr8k, Flickr30k and COCO (the
//! "Karpathy splits") is read too: `DIR/dataset.json` (or `DIR/dataset_*.json`) holding
//! `{"images": [{"filename", "filepath", "split", "sentences": [{"tokens": [...], "raw"}]}]}`,
//! each image at `DIR/images/[filepath/]filename`, each sentence a reference caption (its tokens
//! joined by spaces, else its raw text).
//!
//! Splits: subfolders `DIR/train/`, `DIR/val/`, `DIR/test/` in the folder format, or a `split`
//! field on every record (the Karpathy layout always has one; `restval` counts as training).
//! Without either, [`CaptionSet::splits`] is all None.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::generate::captions::CaptionSample;
use crate::image::{Image, LabeledBox};
use crate::split::{self, SplitName};
use crate::vqa::{load_image, read_records};

/// A caption of an image of a [`CaptionSet`].
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionRecord {
    /// Index into [`CaptionSet::images`].
    pub image: usize,
    /// The caption.
    pub caption: String,
    /// For each word, the box it refers to (empty when unknown).
    pub word_boxes: Vec<Option<usize>>,
}

/// Images, their boxes and captions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CaptionSet {
    /// The images.
    pub images: Vec<Image>,
    /// The objects of each image (empty when unknown).
    pub boxes: Vec<Vec<LabeledBox>>,
    /// One record per caption.
    pub records: Vec<CaptionRecord>,
    /// The split the data set puts each image in (None for all: it ships no splits).
    pub splits: Vec<Option<SplitName>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FolderRecord {
    image: Option<String>,
    caption: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    boxes: Vec<LabeledBox>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    word_boxes: Vec<Option<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    split: Option<String>,
}

#[derive(Debug, Deserialize)]
struct KarpathyFile {
    images: Vec<KarpathyImage>,
}

#[derive(Debug, Deserialize)]
struct KarpathyImage {
    filename: Option<String>,
    #[serde(default)]
    filepath: String,
    split: Option<String>,
    #[serde(default)]
    sentences: Vec<KarpathySentence>,
}

#[derive(Debug, Deserialize)]
struct KarpathySentence {
    #[serde(default)]
    tokens: Vec<String>,
    raw: Option<String>,
}

impl CaptionSet {
    /// Gathers generated samples into a set, every caption of a sample a record.
    pub fn from_samples(samples: Vec<CaptionSample>) -> Self {
        let mut set = CaptionSet::default();
        for (i, s) in samples.into_iter().enumerate() {
            set.images.push(s.image);
            set.boxes.push(s.boxes);
            set.splits.push(None);
            set.records.extend(s.captions.into_iter().map(|c| CaptionRecord {
                image: i,
                caption: c.text,
                word_boxes: c.word_boxes,
            }));
        }
        set
    }

    /// The images `images` (indices into this set) with their boxes, captions and splits, in that
    /// order; indices past the end are skipped.
    pub fn subset(&self, images: &[usize]) -> CaptionSet {
        let mut out = CaptionSet::default();
        let mut at = vec![None; self.images.len()];
        for &i in images {
            if let Some(img) = self.images.get(i) {
                at[i] = Some(out.images.len());
                out.images.push(img.clone());
                out.boxes.push(self.boxes.get(i).cloned().unwrap_or_default());
                out.splits.push(self.splits.get(i).copied().flatten());
            }
        }
        for r in &self.records {
            if let Some(Some(j)) = at.get(r.image) {
                out.records.push(CaptionRecord { image: *j, ..r.clone() });
            }
        }
        out
    }

    /// Number of captions.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are no captions.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Writes the set as a caption folder.
    pub fn write_folder(&self, dir: &Path) -> Result<()> {
        let img_dir = dir.join("images");
        std::fs::create_dir_all(&img_dir).map_err(|e| DataError::io(&img_dir, e))?;
        for (i, img) in self.images.iter().enumerate() {
            img.save_png(&img_dir.join(format!("{i:06}.png")))?;
        }
        let path = dir.join("captions.jsonl");
        let mut out = String::new();
        for (n, r) in self.records.iter().enumerate() {
            let rec = FolderRecord {
                image: Some(format!("images/{:06}.png", r.image)),
                caption: Some(r.caption.clone()),
                boxes: self.boxes.get(r.image).cloned().unwrap_or_default(),
                word_boxes: r.word_boxes.clone(),
                split: self.splits.get(r.image).copied().flatten().map(|s| s.as_str().to_string()),
            };
            let line = serde_json::to_string(&rec).map_err(|e| DataError::Record {
                path: path.clone(),
                record: n + 1,
                reason: e.to_string(),
            })?;
            out.push_str(&line);
            out.push('\n');
        }
        crate::write_atomic(&path, out.as_bytes())
    }

    /// Reads a caption folder, resizing images to `size` (height, width) when given, their boxes
    /// scaled with them.
    /// The Karpathy JSON layout is read when there is no `captions.jsonl` / `captions.json`, and
    /// the data set's own splits from subfolders or `split` fields (see the module docs).
    pub fn read_folder(dir: &Path, size: Option<(usize, usize)>) -> Result<Self> {
        if let Some(parts) = split::subfolders(dir) {
            let mut set = CaptionSet::default();
            for (name, sub) in parts {
                let part = Self::read_flat(&sub, size)?;
                let offset = set.images.len();
                set.images.extend(part.images);
                set.boxes.extend(part.boxes);
                set.splits.extend(std::iter::repeat_n(Some(name), part.splits.len()));
                set.records.extend(part.records.into_iter().map(|r| CaptionRecord { image: r.image + offset, ..r }));
            }
            return Ok(set);
        }
        let plain = ["captions.jsonl", "captions.json"].iter().any(|n| dir.join(n).is_file());
        match karpathy_file(dir) {
            Some(path) if !plain => Self::read_karpathy(dir, &path, size),
            _ => Self::read_flat(dir, size),
        }
    }

    /// Reads the Karpathy JSON layout from `path`, images under `dir/images/`.
    fn read_karpathy(dir: &Path, path: &Path, size: Option<(usize, usize)>) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let file: KarpathyFile = serde_json::from_slice(&bytes).map_err(|e| DataError::Record {
            path: path.into(),
            record: 0,
            reason: format!("not a Karpathy-split JSON file (`{{\"images\": [...]}}`): {e}"),
        })?;
        if file.images.is_empty() {
            return Err(DataError::Empty { path: path.into() });
        }
        let mut set = CaptionSet::default();
        let mut per = Vec::with_capacity(file.images.len());
        for (n, im) in file.images.iter().enumerate() {
            let bad = |reason: String| DataError::Record { path: path.into(), record: n + 1, reason };
            let name = im.filename.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| bad("no `filename`".into()))?;
            let rel = if im.filepath.is_empty() {
                format!("images/{name}")
            } else {
                format!("images/{}/{name}", im.filepath)
            };
            let captions: Vec<String> = im
                .sentences
                .iter()
                .map(|s| if s.tokens.is_empty() { s.raw.clone().unwrap_or_default() } else { s.tokens.join(" ") })
                .filter(|c| !c.trim().is_empty())
                .collect();
            if captions.is_empty() {
                return Err(bad("no caption (`sentences` with `tokens` or `raw`)".into()));
            }
            let (img, boxes) = load_image(dir, &rel, size, &[]).map_err(|e| bad(e.to_string()))?;
            let idx = set.images.len();
            set.images.push(img);
            set.boxes.push(boxes);
            per.push((idx, im.split.as_deref()));
            set.records.extend(captions.into_iter().map(|caption| CaptionRecord {
                image: idx,
                caption,
                word_boxes: vec![],
            }));
        }
        set.splits = split::from_records(set.images.len(), &per, path)?;
        Ok(set)
    }

    fn read_flat(dir: &Path, size: Option<(usize, usize)>) -> Result<Self> {
        let (path, records) = read_records::<FolderRecord>(dir, &["captions.jsonl", "captions.json"])?;
        let mut set = CaptionSet::default();
        let mut fields: Vec<(usize, Option<String>)> = Vec::with_capacity(records.len());
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (n, rec) in records.into_iter().enumerate() {
            let bad = |reason: String| DataError::Record { path: path.clone(), record: n + 1, reason };
            let image = rec.image.filter(|s| !s.is_empty()).ok_or_else(|| bad("no `image`".into()))?;
            let caption = rec.caption.filter(|s| !s.trim().is_empty()).ok_or_else(|| bad("no `caption`".into()))?;
            let words = caption.split_whitespace().count();
            if !rec.word_boxes.is_empty() && rec.word_boxes.len() != words {
                return Err(bad(format!("{} `word_boxes` for {words} words", rec.word_boxes.len())));
            }
            if rec.word_boxes.iter().flatten().any(|&b| b >= rec.boxes.len()) {
                return Err(bad(format!("`word_boxes` point past its {} boxes", rec.boxes.len())));
            }
            let idx = match by_name.get(&image) {
                Some(&i) => i,
                None => {
                    let (img, boxes) = load_image(dir, &image, size, &rec.boxes).map_err(|e| bad(e.to_string()))?;
                    set.images.push(img);
                    set.boxes.push(boxes);
                    by_name.insert(image, set.images.len() - 1);
                    set.images.len() - 1
                }
            };
            fields.push((idx, rec.split));
            set.records.push(CaptionRecord { image: idx, caption, word_boxes: rec.word_boxes });
        }
        set.splits = split::from_records(set.images.len(), &fields, &path)?;
        Ok(set)
    }
}

/// `dir/dataset.json`, else the first `dir/dataset_*.json` by name.
fn karpathy_file(dir: &Path) -> Option<std::path::PathBuf> {
    let plain = dir.join("dataset.json");
    if plain.is_file() {
        return Some(plain);
    }
    let mut named: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("dataset_") && n.ends_with(".json"))
        })
        .collect();
    named.sort();
    named.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{CaptionConfig, ShapeCaptions};
    use gaze_tensor::Seed;

    #[test]
    fn folder_roundtrip_and_errors() -> Result<()> {
        let g = ShapeCaptions::new(CaptionConfig::default(), Seed(0))?;
        let set = CaptionSet::from_samples((0..5).map(|i| g.sample(i)).collect::<Result<_>>()?);
        let dir = tempfile::tempdir().map_err(|e| DataError::io("tmp", e))?;
        set.write_folder(dir.path())?;
        assert_eq!(CaptionSet::read_folder(dir.path(), None)?, set);
        // resized to twice the width and the same height: boxes stretch across, not down
        let (h, w) = (set.images[0].height, set.images[0].width);
        let resized = CaptionSet::read_folder(dir.path(), Some((h, 2 * w)))?;
        for (a, b) in resized.boxes[0].iter().zip(&set.boxes[0]) {
            assert_eq!((a.bbox.x, a.bbox.y, a.bbox.w, a.bbox.h), (2.0 * b.bbox.x, b.bbox.y, 2.0 * b.bbox.w, b.bbox.h));
        }
        assert!(!set.boxes[0].is_empty(), "the generator's scenes have boxes");
        std::fs::write(dir.path().join("captions.jsonl"), "{\"image\":\"images/000000.png\"}\n")
            .map_err(|e| DataError::io("w", e))?;
        let e = CaptionSet::read_folder(dir.path(), None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("captions.jsonl: record 1: no `caption`"), "{e}");
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Random JSON-ish text as a caption file (each layout): an error naming the file, or a
        /// set, never a panic.
        #[test]
        fn random_caption_files_never_panic(text in "[\\[\\]{}\":,a-z0-9 ./\n]{0,160}", layout in 0usize..3) {
            let dir = tempfile::tempdir().map_err(|e| DataError::io("tmp", e))?;
            let name = ["captions.jsonl", "captions.json", "dataset_flickr8k.json"][layout];
            std::fs::write(dir.path().join(name), &text).map_err(|e| DataError::io(name, e))?;
            if let Err(e) = CaptionSet::read_folder(dir.path(), Some((8, 8))) {
                proptest::prop_assert!(e.to_string().contains(name) || e.to_string().contains("images"), "{}", e);
            }
        }
    }
}

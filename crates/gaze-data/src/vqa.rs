//! Visual question answering data: scenes with questions, in memory and as a folder on disk.
//!
//! The folder format, for bringing your own data and exporting gaze's:
//! ```text
//! DIR/images/*.png                 any size, RGB or grey
//! DIR/questions.jsonl              one JSON object per line, or
//! DIR/questions.json               one JSON array of the same objects
//! ```
//! Each record is `{"image": "images/000000.png", "question": "...", "answer": "..."}` with the
//! image path relative to `DIR`. Optional fields: `kind` (question type, for per-type metrics),
//! `relational` (bool), `code` (a numeric question encoding, as Sort-of-CLEVR's), `boxes`
//! (`[{"label", "x", "y", "w", "h"}]`, the image's objects) and `focus` (indices into `boxes` of
//! the objects the question is about). Other fields are ignored.
//!
//! A data set that ships its splits gives them as subfolders `DIR/train/`, `DIR/val/`, `DIR/test/`
//! (each in the format above; `val/` may be missing), or as a `split` field (`train`, `val`,
//! `test`) on every record. Without either, [`VqaSet::splits`] is all None and the loader splits
//! by seeded fractions.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::image::{Image, LabeledBox};
use crate::split::{self, SplitName};

/// One question about an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqaQuestion {
    /// The question in words.
    pub question: String,
    /// The answer in one word (or a number written as digits).
    pub answer: String,
    /// The question type (`"shape"`, `"closest"`, `"count"` ...); empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Whether the question is about a relation between objects.
    #[serde(default)]
    pub relational: bool,
    /// A numeric encoding of the question (Sort-of-CLEVR's 11-d vector); empty when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub code: Vec<f32>,
    /// Indices into the image's boxes of the objects the question is about.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub focus: Vec<usize>,
}

/// A generated image, its objects and its questions.
#[derive(Debug, Clone, PartialEq)]
pub struct VqaScene {
    /// The image.
    pub image: Image,
    /// Every object in it.
    pub boxes: Vec<LabeledBox>,
    /// Questions about it.
    pub questions: Vec<VqaQuestion>,
}

/// A question tied to an image of a [`VqaSet`].
#[derive(Debug, Clone, PartialEq)]
pub struct VqaRecord {
    /// Index into [`VqaSet::images`].
    pub image: usize,
    /// The question and its answer.
    pub q: VqaQuestion,
}

/// Images, their boxes and questions about them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VqaSet {
    /// The images.
    pub images: Vec<Image>,
    /// The objects of each image (empty when unknown).
    pub boxes: Vec<Vec<LabeledBox>>,
    /// One record per question.
    pub records: Vec<VqaRecord>,
    /// The split the data set puts each image in (None for all: it ships no splits).
    pub splits: Vec<Option<SplitName>>,
}

impl VqaSet {
    /// Gathers generated scenes into a set.
    pub fn from_scenes(scenes: Vec<VqaScene>) -> Self {
        let mut set = VqaSet::default();
        for s in scenes {
            let image = set.images.len();
            set.images.push(s.image);
            set.boxes.push(s.boxes);
            set.splits.push(None);
            set.records.extend(s.questions.into_iter().map(|q| VqaRecord { image, q }));
        }
        set
    }

    /// Number of questions.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are no questions.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Writes the set as a VQA folder (`images/NNNNNN.png`, `questions.jsonl`).
    pub fn write_folder(&self, dir: &Path) -> Result<()> {
        let img_dir = dir.join("images");
        std::fs::create_dir_all(&img_dir).map_err(|e| DataError::io(&img_dir, e))?;
        for (i, img) in self.images.iter().enumerate() {
            img.save_png(&img_dir.join(format!("{i:06}.png")))?;
        }
        let mut out = String::new();
        for r in &self.records {
            let rec = FolderRecord {
                image: Some(format!("images/{:06}.png", r.image)),
                question: Some(r.q.question.clone()),
                answer: Some(r.q.answer.clone()),
                kind: r.q.kind.clone(),
                relational: r.q.relational,
                code: r.q.code.clone(),
                boxes: self.boxes.get(r.image).cloned().unwrap_or_default(),
                focus: r.q.focus.clone(),
                split: self.splits.get(r.image).copied().flatten().map(|s| s.as_str().to_string()),
            };
            let line = serde_json::to_string(&rec).map_err(|e| DataError::Record {
                path: dir.join("questions.jsonl"),
                record: r.image + 1,
                reason: e.to_string(),
            })?;
            out.push_str(&line);
            out.push('\n');
        }
        crate::write_atomic(&dir.join("questions.jsonl"), out.as_bytes())
    }

    /// Reads a VQA folder. Each image is loaded once (RGB) and, when `size` is given, resized to
    /// `size` (height, width), its boxes scaled with it. A missing image, a record without a
    /// question or answer, or a file with no records is an error naming the file and record.
    /// The data set's own splits are read from `train/` / `val/` / `test/` subfolders or from
    /// the records' `split` fields (see the module docs).
    pub fn read_folder(dir: &Path, size: Option<(usize, usize)>) -> Result<Self> {
        let Some(parts) = split::subfolders(dir) else { return Self::read_flat(dir, size) };
        let mut set = VqaSet::default();
        for (name, sub) in parts {
            let part = Self::read_flat(&sub, size)?;
            let offset = set.images.len();
            set.images.extend(part.images);
            set.boxes.extend(part.boxes);
            set.splits.extend(std::iter::repeat_n(Some(name), part.splits.len()));
            set.records.extend(part.records.into_iter().map(|r| VqaRecord { image: r.image + offset, q: r.q }));
        }
        Ok(set)
    }

    fn read_flat(dir: &Path, size: Option<(usize, usize)>) -> Result<Self> {
        let (path, records) = read_records::<FolderRecord>(dir, &["questions.jsonl", "questions.json"])?;
        let mut set = VqaSet::default();
        let mut fields: Vec<(usize, Option<String>)> = Vec::with_capacity(records.len());
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (n, rec) in records.into_iter().enumerate() {
            let bad = |reason: String| DataError::Record { path: path.clone(), record: n + 1, reason };
            let image = rec.image.filter(|s| !s.is_empty()).ok_or_else(|| bad("no `image`".into()))?;
            let question = rec.question.filter(|s| !s.trim().is_empty()).ok_or_else(|| bad("no `question`".into()))?;
            let answer = rec.answer.filter(|s| !s.trim().is_empty()).ok_or_else(|| bad("no `answer`".into()))?;
            if rec.focus.iter().any(|&f| f >= rec.boxes.len()) {
                return Err(bad(format!("`focus` {:?} points past its {} boxes", rec.focus, rec.boxes.len())));
            }
            let idx = match by_name.get(&image) {
                Some(&i) => i,
                None => {
                    let (img, boxes) = load_image(dir, &image, size, &rec.boxes).map_err(|e| bad(e.to_string()))?;
                    set.images.push(img);
                    set.boxes.push(boxes);
                    by_name.insert(image.clone(), set.images.len() - 1);
                    set.images.len() - 1
                }
            };
            let q = VqaQuestion {
                question,
                answer,
                kind: rec.kind,
                relational: rec.relational,
                code: rec.code,
                focus: rec.focus,
            };
            fields.push((idx, rec.split));
            set.records.push(VqaRecord { image: idx, q });
        }
        set.splits = split::from_records(set.images.len(), &fields, &path)?;
        Ok(set)
    }
}

/// One line of `questions.jsonl`. Fields are optional here so that a missing one is reported by
/// name with its record number rather than as a bare parse error.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FolderRecord {
    image: Option<String>,
    question: Option<String>,
    answer: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    kind: String,
    #[serde(default)]
    relational: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    code: Vec<f32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    boxes: Vec<LabeledBox>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    focus: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    split: Option<String>,
}

/// Loads `rel` under `dir` as RGB, resized when asked, with its `boxes` scaled to match. The
/// image must lie inside `dir`'s tree once `..` and links are resolved: a record naming
/// `../x.png`, an absolute path or a link out of the folder is an error naming it.
pub(crate) fn load_image(
    dir: &Path,
    rel: &str,
    size: Option<(usize, usize)>,
    boxes: &[LabeledBox],
) -> Result<(Image, Vec<LabeledBox>)> {
    let p = dir.join(rel);
    if !p.is_file() {
        return Err(DataError::io(&p, std::io::Error::new(std::io::ErrorKind::NotFound, "image file not found")));
    }
    let root = dir.canonicalize().map_err(|e| DataError::io(dir, e))?;
    let real = p.canonicalize().map_err(|e| DataError::io(&p, e))?;
    if !real.starts_with(&root) {
        return Err(DataError::io(
            &p,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("image {rel:?} lies outside the data folder {} (at {})", root.display(), real.display()),
            ),
        ));
    }
    let img = Image::load(&p, false)?;
    Ok(match size {
        Some((h, w)) => {
            let (fx, fy) = (w as f32 / img.width.max(1) as f32, h as f32 / img.height.max(1) as f32);
            let boxes = boxes.iter().map(|b| LabeledBox { label: b.label.clone(), bbox: b.bbox.scaled_xy(fx, fy) });
            (img.resize(h, w), boxes.collect())
        }
        None => (img, boxes.to_vec()),
    })
}

/// Parses records from JSONL (one object per line; blank lines skipped) or a JSON array. Errors
/// name `path` and the 1-based record (line for JSONL). Never panics, whatever the bytes.
pub fn parse_records<T: for<'de> Deserialize<'de>>(bytes: &[u8], path: &Path) -> Result<Vec<T>> {
    let text = std::str::from_utf8(bytes).map_err(|e| DataError::Record {
        path: path.into(),
        record: 0,
        reason: format!("not UTF-8 text: {e}"),
    })?;
    let is_array = path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('[');
    let out: Vec<T> = if is_array {
        let values: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| DataError::Record {
            path: path.into(),
            record: 0,
            reason: format!("not a JSON array of records: {e}"),
        })?;
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                serde_json::from_value(v).map_err(|e| DataError::Record {
                    path: path.into(),
                    record: i + 1,
                    reason: e.to_string(),
                })
            })
            .collect::<Result<_>>()?
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| DataError::Record {
                    path: path.into(),
                    record: i + 1,
                    reason: e.to_string(),
                })
            })
            .collect::<Result<_>>()?
    };
    if out.is_empty() {
        return Err(DataError::Empty { path: path.into() });
    }
    Ok(out)
}

/// Reads the first of `names` that exists in `dir` and parses its records.
pub(crate) fn read_records<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    names: &[&str],
) -> Result<(std::path::PathBuf, Vec<T>)> {
    let Some(path) = names.iter().map(|n| dir.join(n)).find(|p| p.is_file()) else {
        return Err(DataError::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("none of {} in this folder", names.join(", "))),
        ));
    };
    let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
    let records = parse_records(&bytes, &path)?;
    Ok((path, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> VqaSet {
        let img = Image::filled(4, 6, 3, 200);
        VqaSet::from_scenes(vec![VqaScene {
            image: img,
            boxes: vec![LabeledBox { label: "cow".into(), bbox: crate::image::BBox::new(1.0, 1.0, 2.0, 2.0) }],
            questions: vec![
                VqaQuestion {
                    question: "what animal?".into(),
                    answer: "cow".into(),
                    kind: "what".into(),
                    relational: false,
                    code: vec![],
                    focus: vec![0],
                },
                VqaQuestion {
                    question: "is there a pig?".into(),
                    answer: "no".into(),
                    kind: "exists".into(),
                    relational: false,
                    code: vec![1.0, 0.0],
                    focus: vec![],
                },
            ],
        }])
    }

    #[test]
    fn folder_roundtrip() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| DataError::io("tmp", e))?;
        let s = set();
        s.write_folder(dir.path())?;
        assert_eq!(VqaSet::read_folder(dir.path(), None)?, s);
        let resized = VqaSet::read_folder(dir.path(), Some((8, 12)))?;
        assert_eq!((resized.images[0].height, resized.images[0].width), (8, 12));
        // a 4x6 image doubled: its box (1, 1, 2, 2) doubles too
        let b = resized.boxes[0][0].bbox;
        assert_eq!((b.x, b.y, b.w, b.h), (2.0, 2.0, 4.0, 4.0));
        Ok(())
    }

    fn error_of(dir: &Path, body: &str) -> String {
        std::fs::write(dir.join("questions.jsonl"), body).expect("write");
        VqaSet::read_folder(dir, None).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn bad_folders_name_the_record() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| DataError::io("tmp", e))?;
        set().write_folder(dir.path())?;
        let ok = r#"{"image":"images/000000.png","question":"q?","answer":"a"}"#;
        let e = error_of(dir.path(), &format!("{ok}\n{}\n", r#"{"image":"images/000000.png","question":"q?"}"#));
        assert!(e.contains("questions.jsonl: record 2: no `answer`"), "{e}");
        let e = error_of(
            dir.path(),
            &format!("{ok}\n{}\n", r#"{"image":"images/missing.png","question":"q?","answer":"a"}"#),
        );
        assert!(e.contains("record 2") && e.contains("missing.png"), "{e}");
        let e = error_of(dir.path(), "\n\n");
        assert!(e.contains("questions.jsonl: no records"), "{e}");
        // Records may only name images inside the folder: not by `..`, nor absolutely, nor by a link.
        let outside = tempfile::tempdir().map_err(|e| DataError::io("tmp", e))?;
        set().write_folder(outside.path())?;
        let there = outside.path().join("images").join("000000.png");
        let sub = dir.path().join("sub");
        std::fs::create_dir_all(&sub).map_err(|e| DataError::io(&sub, e))?;
        std::fs::copy(dir.path().join("images/000000.png"), sub.join("in.png")).map_err(|e| DataError::io(&sub, e))?;
        #[cfg(unix)]
        std::os::unix::fs::symlink(&there, dir.path().join("link.png")).map_err(|e| DataError::io("link", e))?;
        let rec = |image: &str| format!("{{\"image\":{image:?},\"question\":\"q?\",\"answer\":\"a\"}}\n");
        let up = format!("../{}/images/000000.png", outside.path().file_name().and_then(|n| n.to_str()).unwrap_or(""));
        let mut escapes = vec![up, there.display().to_string()];
        if cfg!(unix) {
            escapes.push("link.png".into());
        }
        for image in escapes {
            let e = error_of(dir.path(), &rec(&image));
            assert!(e.contains("outside the data folder") && e.contains("record 1"), "{image}: {e}");
        }
        // `..` that stays inside is fine.
        assert_eq!(error_of(dir.path(), &rec("sub/../sub/in.png")), "");
        let e = error_of(dir.path(), &format!("{ok}\n{{not json\n"));
        assert!(e.contains("record 2"), "{e}");
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse_records::<FolderRecord>(&bytes, Path::new("q.jsonl"));
            let _ = parse_records::<FolderRecord>(&bytes, Path::new("q.json"));
        }

        #[test]
        fn random_text_never_panics(text in "[\\[\\]{}\":,a-z0-9 \n]{0,120}") {
            let _ = parse_records::<FolderRecord>(text.as_bytes(), Path::new("q.jsonl"));
        }
    }
}

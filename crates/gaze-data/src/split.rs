//! The split a data set assigns an image to, read from its own layout: subfolders `train/`,
//! `val/`, `test/`, or a `split` field per record. Data without one is split by seeded fractions
//! by whoever loads it.

use serde::{Deserialize, Serialize};

/// A split of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitName {
    /// Training.
    Train,
    /// Validation.
    Val,
    /// Test.
    Test,
}

impl SplitName {
    /// The three, in order, with their folder names.
    pub const ALL: [(SplitName, &'static str); 3] =
        [(SplitName::Train, "train"), (SplitName::Val, "val"), (SplitName::Test, "test")];

    /// Reads a split name as data sets write it: `train`, `val` / `valid` / `validation`,
    /// `test`, and `restval` (the Karpathy splits' extra training images) as training.
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "train" | "training" | "restval" => Some(SplitName::Train),
            "val" | "valid" | "validation" | "dev" => Some(SplitName::Val),
            "test" | "testing" => Some(SplitName::Test),
            _ => None,
        }
    }

    /// The name as written in records.
    pub fn as_str(&self) -> &'static str {
        match self {
            SplitName::Train => "train",
            SplitName::Val => "val",
            SplitName::Test => "test",
        }
    }
}

/// The split of each image from its records' `split` fields: an unknown name, an image given two
/// splits, or records with and without a split in one file are errors naming `path` and the
/// record. `per_record[r]` is (image index, the record's field).
pub(crate) fn from_records<S: AsRef<str>>(
    images: usize,
    per_record: &[(usize, Option<S>)],
    path: &std::path::Path,
) -> crate::Result<Vec<Option<SplitName>>> {
    let bad = |r: usize, reason: String| crate::DataError::Record { path: path.into(), record: r + 1, reason };
    let mut out: Vec<Option<SplitName>> = vec![None; images];
    let with = per_record.iter().position(|(_, s)| s.is_some());
    for (r, (image, field)) in per_record.iter().enumerate() {
        let image = *image;
        let Some(name) = field.as_ref().map(AsRef::as_ref) else {
            if let Some(w) = with {
                return Err(bad(
                    r,
                    format!("no `split`, while record {} has one (give every record a split, or none)", w + 1),
                ));
            }
            continue;
        };
        let s = SplitName::parse(name).ok_or_else(|| bad(r, format!("unknown split `{name}` (train, val or test)")))?;
        match out.get(image).copied().flatten() {
            Some(prev) if prev != s => {
                return Err(bad(r, format!("split `{name}` for an image an earlier record put in `{}`", prev.as_str())))
            }
            _ => {
                if let Some(slot) = out.get_mut(image) {
                    *slot = Some(s);
                }
            }
        }
    }
    Ok(out)
}

/// The split subfolders of `dir` that exist (`train/`, `val/`, `test/`), when `train/` does.
pub(crate) fn subfolders(dir: &std::path::Path) -> Option<Vec<(SplitName, std::path::PathBuf)>> {
    dir.join("train")
        .is_dir()
        .then(|| SplitName::ALL.iter().map(|&(s, n)| (s, dir.join(n))).filter(|(_, p)| p.is_dir()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caption::CaptionSet;
    use crate::vqa::VqaSet;
    use crate::{DataError, Image, Result};
    use std::path::Path;

    fn write(path: &Path, text: &str) -> Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| DataError::io(d, e))?;
        }
        std::fs::write(path, text).map_err(|e| DataError::io(path, e))
    }

    fn png(path: &Path) -> Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| DataError::io(d, e))?;
        }
        Image::filled(4, 4, 3, 100).save_png(path)
    }

    fn err<T>(r: Result<T>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn vqa_folders_read_their_own_splits() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| DataError::io("tmp", e))?;
        // Subfolders: train/ and test/ (no val/).
        let sub = tmp.path().join("sub");
        for (split, n) in [("train", 2), ("test", 1)] {
            let mut lines = String::new();
            for i in 0..n {
                png(&sub.join(format!("{split}/images/{i}.png")))?;
                lines += &format!("{{\"image\":\"images/{i}.png\",\"question\":\"q{i}?\",\"answer\":\"a\"}}\n");
            }
            write(&sub.join(format!("{split}/questions.jsonl")), &lines)?;
        }
        let set = VqaSet::read_folder(&sub, None)?;
        assert_eq!(set.splits, vec![Some(SplitName::Train), Some(SplitName::Train), Some(SplitName::Test)]);
        assert_eq!(set.records.iter().map(|r| r.image).collect::<Vec<_>>(), vec![0, 1, 2]);
        // A `split` field per record; two questions about one image share its split.
        let flat = tmp.path().join("flat");
        for i in 0..3 {
            png(&flat.join(format!("images/{i}.png")))?;
        }
        let rec = |i: usize, s: &str| {
            format!("{{\"image\":\"images/{i}.png\",\"question\":\"q?\",\"answer\":\"a\",\"split\":\"{s}\"}}\n")
        };
        write(
            &flat.join("questions.jsonl"),
            &(rec(0, "train") + &rec(1, "validation") + &rec(2, "test") + &rec(0, "train")),
        )?;
        let set = VqaSet::read_folder(&flat, None)?;
        assert_eq!(set.splits, vec![Some(SplitName::Train), Some(SplitName::Val), Some(SplitName::Test)]);
        // Errors name the file and record: an unknown split, two splits for one image, a record
        // without a split among records with one, a missing image, a record without an answer.
        write(&flat.join("questions.jsonl"), &(rec(0, "train") + &rec(1, "holdout")))?;
        let e = err(VqaSet::read_folder(&flat, None));
        assert!(e.contains("questions.jsonl: record 2") && e.contains("unknown split `holdout`"), "{e}");
        write(&flat.join("questions.jsonl"), &(rec(0, "train") + &rec(0, "test")))?;
        let e = err(VqaSet::read_folder(&flat, None));
        assert!(e.contains("record 2") && e.contains("earlier record put in `train`"), "{e}");
        write(
            &flat.join("questions.jsonl"),
            &(rec(0, "train") + "{\"image\":\"images/1.png\",\"question\":\"q?\",\"answer\":\"a\"}\n"),
        )?;
        let e = err(VqaSet::read_folder(&flat, None));
        assert!(e.contains("record 2") && e.contains("no `split`"), "{e}");
        write(&flat.join("questions.jsonl"), &rec(7, "train"))?;
        let e = err(VqaSet::read_folder(&flat, None));
        assert!(e.contains("record 1") && e.contains("7.png"), "{e}");
        write(&flat.join("questions.jsonl"), "{\"image\":\"images/0.png\",\"question\":\"q?\",\"split\":\"train\"}\n")?;
        let e = err(VqaSet::read_folder(&flat, None));
        assert!(e.contains("record 1") && e.contains("no `answer`"), "{e}");
        // In a subfolder layout, an error names the subfolder's file.
        write(&sub.join("test/questions.jsonl"), "{\"image\":\"images/0.png\",\"question\":\"q?\"}\n")?;
        let e = err(VqaSet::read_folder(&sub, None));
        assert!(e.contains("test/questions.jsonl") && e.contains("no `answer`"), "{e}");
        Ok(())
    }

    #[test]
    fn caption_folders_read_splits_and_the_karpathy_layout() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| DataError::io("tmp", e))?;
        let k = tmp.path().join("flickr");
        png(&k.join("images/a.jpg.png"))?;
        png(&k.join("images/val2014/b.png"))?;
        let json = r#"{"dataset": "toy", "images": [
            {"filename": "a.jpg.png", "split": "restval", "sentences": [
                {"tokens": ["a", "dog", "runs"], "raw": "A dog runs."}, {"tokens": [], "raw": "a dog"}]},
            {"filepath": "val2014", "filename": "b.png", "split": "test", "sentences": [{"tokens": ["a", "cat"]}]}
        ]}"#;
        write(&k.join("dataset_toy.json"), json)?;
        let set = CaptionSet::read_folder(&k, None)?;
        assert_eq!(set.images.len(), 2);
        assert_eq!(set.splits, vec![Some(SplitName::Train), Some(SplitName::Test)]);
        let caps: Vec<(usize, &str)> = set.records.iter().map(|r| (r.image, r.caption.as_str())).collect();
        assert_eq!(caps, vec![(0, "a dog runs"), (0, "a dog"), (1, "a cat")], "several references per image");
        // Errors: unknown split, no caption, missing image; each names the file and record.
        write(&k.join("dataset_toy.json"), &json.replace("\"test\"", "\"holdout\""))?;
        let e = err(CaptionSet::read_folder(&k, None));
        assert!(e.contains("dataset_toy.json: record 2") && e.contains("unknown split"), "{e}");
        write(&k.join("dataset_toy.json"), &json.replace("[{\"tokens\": [\"a\", \"cat\"]}]", "[]"))?;
        let e = err(CaptionSet::read_folder(&k, None));
        assert!(e.contains("record 2") && e.contains("no caption"), "{e}");
        write(&k.join("dataset_toy.json"), &json.replace("b.png", "c.png"))?;
        let e = err(CaptionSet::read_folder(&k, None));
        assert!(e.contains("record 2") && e.contains("c.png"), "{e}");
        // The folder format with subfolders.
        let sub = tmp.path().join("sub");
        for split in ["train", "val", "test"] {
            png(&sub.join(format!("{split}/images/0.png")))?;
            write(
                &sub.join(format!("{split}/captions.jsonl")),
                "{\"image\":\"images/0.png\",\"caption\":\"a red circle\"}\n",
            )?;
        }
        let set = CaptionSet::read_folder(&sub, None)?;
        assert_eq!(set.splits, vec![Some(SplitName::Train), Some(SplitName::Val), Some(SplitName::Test)]);
        write(&sub.join("val/captions.jsonl"), "{\"image\":\"images/0.png\",\"caption\":\"x\",\"split\":\"nope\"}\n")?;
        let e = err(CaptionSet::read_folder(&sub, None));
        assert!(e.contains("val/captions.jsonl: record 1") && e.contains("unknown split"), "{e}");
        Ok(())
    }
}

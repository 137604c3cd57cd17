//! Captioning through the trainer: "Show, Attend and Tell" on caption folders in each layout gaze
//! reads (a `split` field on every record, train/val/test subfolders, the Karpathy JSON), scored by
//! BLEU against every reference and, where the folder links words to boxes, by where it looked.

use std::path::Path;

use crate::common::opts;

use gaze_data::caption::CaptionSet;
use gaze_data::generate::{CaptionConfig, ShapeCaptions};
use gaze_data::SplitName;
use gaze_tensor::Seed;
use gaze_train::ExperimentConfig;

fn tiny(path: &Path) -> String {
    format!(
        r#"
name = "tiny-captions"
seed = 2
[model]
type = "show_attend_tell"
embed = 8
hidden = 32
attention_dim = 16
[model.convnet]
channels = [8, 16]
coord_channels = true
[data]
type = "caption_folder"
path = "{}"
size = [63, 63]
min_count = 1
[optim]
lr = 0.003
[train]
epochs = 1
batch_size = 16
pictures = 2
[train.decode]
type = "beam"
width = 2
"#,
        path.display()
    )
}

/// 40 / 10 / 10 generated scenes with all their captions, their splits named.
fn scenes() -> anyhow::Result<CaptionSet> {
    let g = ShapeCaptions::new(CaptionConfig::default(), Seed(9))?;
    let mut set = CaptionSet::from_samples((0..60).map(|i| g.sample(i)).collect::<Result<_, _>>()?);
    set.splits = (0..60)
        .map(|i| {
            Some(if i < 40 {
                SplitName::Train
            } else if i < 50 {
                SplitName::Val
            } else {
                SplitName::Test
            })
        })
        .collect();
    Ok(set)
}

fn train(folder: &Path, runs: &Path) -> anyhow::Result<gaze_train::RunSummary> {
    let cfg = ExperimentConfig::from_toml(&tiny(folder), Path::new("tiny-captions.toml"))?;
    Ok(gaze_train::run(&cfg, &opts(runs))?)
}

#[test]
fn caption_folders_in_each_layout_train_and_report_bleu() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let set = scenes()?;

    // Records with a `split` field, word-to-box links kept: BLEU and grounding.
    let flat = tmp.path().join("flat");
    set.write_folder(&flat)?;
    let s = train(&flat, &tmp.path().join("runs"))?;
    for key in ["test_bleu1", "test_bleu4", "test_bleu4_greedy", "grounding_mass_pct", "pointing_uniform_pct"] {
        let v = s.metrics.get(key).copied().unwrap_or(-1.0);
        assert!((0.0..=100.0).contains(&v), "{key} = {v} in {:?}", s.metrics);
    }
    assert!(s.data.contains("40/10/10 images by its own splits"), "{}", s.data);
    assert!(
        s.run_dir.join("attention/test_wrong.png").is_file() || s.run_dir.join("attention/test_right.png").is_file()
    );
    let report = std::fs::read_to_string(s.run_dir.join("report.md"))?;
    assert!(report.contains("test_bleu4"), "{report}");

    // train/ val/ test/ subfolders.
    let sub = tmp.path().join("sub");
    for (name, split) in [("train", SplitName::Train), ("val", SplitName::Val), ("test", SplitName::Test)] {
        let idx: Vec<usize> = (0..60).filter(|&i| set.splits[i] == Some(split)).collect();
        let mut part = set.subset(&idx);
        part.splits = vec![None; part.images.len()];
        part.write_folder(&sub.join(name))?;
    }
    let s = train(&sub, &tmp.path().join("runs"))?;
    assert!(s.metrics.contains_key("test_bleu4") && s.metrics.contains_key("grounding_mass_pct"), "{:?}", s.metrics);

    // The Karpathy JSON layout: references but no boxes, so BLEU and no grounding.
    let k = tmp.path().join("karpathy");
    std::fs::create_dir_all(k.join("images"))?;
    let mut images = vec![];
    for (i, img) in set.images.iter().enumerate() {
        img.save_png(&k.join(format!("images/{i}.png")))?;
        let sentences: Vec<serde_json::Value> = set
            .records
            .iter()
            .filter(|r| r.image == i)
            .map(|r| serde_json::json!({"tokens": r.caption.split(' ').collect::<Vec<_>>(), "raw": r.caption}))
            .collect();
        let split = set.splits[i].map_or("train", |s| s.as_str());
        images.push(serde_json::json!({"filename": format!("{i}.png"), "split": split, "sentences": sentences}));
    }
    std::fs::write(k.join("dataset.json"), serde_json::json!({"images": images}).to_string())?;
    let s = train(&k, &tmp.path().join("runs"))?;
    assert!(s.metrics.contains_key("test_bleu4"), "{:?}", s.metrics);
    assert!(!s.metrics.contains_key("grounding_mass_pct"), "no boxes, no grounding: {:?}", s.metrics);
    Ok(())
}

#[test]
fn a_broken_caption_folder_names_the_record() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let flat = tmp.path().join("flat");
    scenes()?.write_folder(&flat)?;
    let path = flat.join("captions.jsonl");
    let mut lines: Vec<String> = std::fs::read_to_string(&path)?.lines().map(str::to_string).collect();
    lines[4] = lines[4].replace("\"caption\"", "\"title\"");
    std::fs::write(&path, lines.join("\n"))?;
    let e = train(&flat, &tmp.path().join("runs")).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("captions.jsonl") && e.contains("record 5"), "{e}");
    Ok(())
}

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

/// A ResNet-18 trunk (its first stage) from a weights file in torchvision's names: frozen, it
/// ends training as the file has it and the run evaluates without the file; trainable, it moves.
#[test]
fn a_pretrained_resnet_trunk_loads_and_stays_frozen_unless_trainable() -> anyhow::Result<()> {
    use candle_core::Device;
    use gaze_tensor::SeededVarMap;

    let tmp = tempfile::tempdir()?;
    let flat = tmp.path().join("flat");
    scenes()?.write_folder(&flat)?;
    // "Pretrained" weights: a seeded trunk written as torchvision names it, plus a classifier
    // head the trunk does not use.
    let dev = Device::Cpu;
    let vm = SeededVarMap::new(Seed(77));
    let trunk = gaze_encoders::ResNetConfig { trainable: true, stages: 1, ..Default::default() };
    gaze_encoders::ResNet::new(gaze_encoders::Depth::D18, &trunk, vm.builder(&dev))?;
    let mut file: std::collections::HashMap<String, candle_core::Tensor> =
        vm.sorted_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    file.insert("fc.weight".into(), candle_core::Tensor::zeros((10, 512), candle_core::DType::F32, &dev)?);
    let weights = tmp.path().join("resnet18.safetensors");
    candle_core::safetensors::save(&file, &weights)?;

    let with = |trainable: bool| -> anyhow::Result<gaze_train::RunSummary> {
        let text = tiny(&flat).replace(
            "[model.convnet]",
            &format!(
                "encoder = {{ type = \"resnet18\", weights = \"{}\", trainable = {trainable}, stages = 1 }}\n[model.convnet]",
                weights.display()
            ),
        );
        let cfg = ExperimentConfig::from_toml(&text, Path::new("tiny-resnet.toml"))?;
        Ok(gaze_train::run(&cfg, &opts(&tmp.path().join(format!("runs-{trainable}"))))?)
    };
    let trunk_of = |run: &Path| -> anyhow::Result<Vec<(String, Vec<f32>)>> {
        let ck = candle_core::safetensors::load(run.join("checkpoints/last.safetensors"), &dev)?;
        let mut out: Vec<(String, Vec<f32>)> = ck
            .iter()
            .filter_map(|(k, t)| k.strip_prefix("encoder.").map(|k| (k.to_string(), t)))
            .filter(|(k, _)| !k.contains("running_"))
            .map(|(k, t)| Ok((k, t.flatten_all()?.to_vec1::<f32>()?)))
            .collect::<anyhow::Result<_>>()?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    };
    let want: Vec<(String, Vec<f32>)> = {
        let mut w: Vec<(String, Vec<f32>)> = file
            .iter()
            .filter(|(k, _)| !k.starts_with("fc.") && !k.contains("running_"))
            .map(|(k, t)| Ok((k.clone(), t.flatten_all()?.to_vec1::<f32>()?)))
            .collect::<anyhow::Result<_>>()?;
        w.sort_by(|a, b| a.0.cmp(&b.0));
        w
    };
    assert_eq!(want.len(), 3 + 2 * 6, "conv1, bn1's weight and bias; two blocks of two convs and two norms");

    let frozen = with(false)?;
    assert!(frozen.metrics.contains_key("test_bleu4"), "{:?}", frozen.metrics);
    assert_eq!(trunk_of(&frozen.run_dir)?, want, "a frozen trunk keeps the file's weights");
    // The run needs the weights file no more: its checkpoints hold the trunk.
    std::fs::remove_file(&weights)?;
    let (_, _, built, _) = gaze_train::trainer::load_model(&frozen.run_dir, true, &dev)?;
    assert!(built.vars.sorted_vars().iter().any(|(n, _)| n == "encoder.layer1.1.conv2.weight"));
    candle_core::safetensors::save(&file, &weights)?;

    let trained = with(true)?;
    let moved = trunk_of(&trained.run_dir)?;
    assert_eq!(moved.len(), want.len());
    assert!(moved.iter().zip(&want).any(|(a, b)| a.1 != b.1), "a trainable trunk learns");

    // A file of another network: an error naming the file and what it lacks.
    let other = tmp.path().join("other.safetensors");
    candle_core::safetensors::save(
        &[("conv1.weight".to_string(), candle_core::Tensor::zeros((64, 3, 7, 7), candle_core::DType::F32, &dev)?)]
            .into_iter()
            .collect(),
        &other,
    )?;
    std::fs::rename(&other, &weights)?;
    let e = with(false).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("resnet18.safetensors") && e.contains("lacks"), "{e}");
    Ok(())
}

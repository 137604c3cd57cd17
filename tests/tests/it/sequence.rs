//! A sequence task through the same trainer as classes and answers: a soft-attention decoder reads
//! the two digits of MNIST-pairs canvases left to right, scored by sequence and token error,
//! its best checkpoint chosen by validation sequence error.

use crate::common::opts;

use gaze_train::ExperimentConfig;

const PAIRS: &str = r#"
name = "tiny-pairs"
seed = 3
[model]
type = "show_attend_tell"
embed = 8
hidden = 32
attention_dim = 16
[model.convnet]
channels = [8, 16]
coord_channels = true
[data]
type = "mnist_pairs"
[data.digits]
source = "fixture"
train_limit = 192
test_limit = 48
val_fraction = 0.03
[data.pairs]
canvas = 56
[optim]
lr = 0.003
[train]
epochs = 2
batch_size = 32
log_every = 1
pictures = 2
[train.decode]
type = "beam"
width = 2
"#;

#[test]
fn a_tiny_sequence_model_trains_and_reports_sequence_metrics() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cfg = ExperimentConfig::from_toml(PAIRS, std::path::Path::new("tiny-pairs.toml"))?;
    let s = gaze_train::run(&cfg, &opts(tmp.path()))?;
    for key in ["test_sequence_error_pct", "test_token_error_pct", "val_sequence_error_pct", "test_loss"] {
        let v = *s.metrics.get(key).ok_or_else(|| anyhow::anyhow!("no {key} in {:?}", s.metrics))?;
        assert!(v.is_finite() && v >= 0.0, "{key} = {v}");
    }
    assert!(s.metrics["test_sequence_error_pct"] <= 100.0);
    assert!(!s.metrics.contains_key("test_acc_pct"), "no class accuracy for sequences");
    // The pairs name their digits' boxes: the attention at each digit's step is graded against
    // its box, beside the chance levels of a uniform map.
    for key in ["grounding_mass_pct", "pointing_pct", "grounding_mass_uniform_pct", "pointing_uniform_pct"] {
        let v = s.metrics.get(key).copied().unwrap_or(-1.0);
        assert!((0.0..=100.0).contains(&v), "{key} = {v}");
    }
    assert_eq!(s.metrics.get("grounded_words"), Some(&96.0), "two digits of 48 test canvases");
    // The training loss fell, and each epoch line carries the validation sequence metrics.
    let text = std::fs::read_to_string(s.run_dir.join("metrics.jsonl"))?;
    let lines: Vec<serde_json::Value> = text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let steps: Vec<f64> = lines.iter().filter(|v| v["kind"] == "step").filter_map(|v| v["loss"].as_f64()).collect();
    let epochs: Vec<&serde_json::Value> = lines.iter().filter(|v| v["kind"] == "epoch").collect();
    assert_eq!(epochs.len(), 2);
    assert!(epochs.iter().all(|e| e["val_sequence_error_pct"].is_number() && e["val_token_error_pct"].is_number()));
    let first = steps.first().copied().unwrap_or(0.0);
    let last = epochs.last().and_then(|e| e["train_loss"].as_f64()).unwrap_or(f64::MAX);
    assert!(last < first, "training loss {first} -> {last}");
    let report = std::fs::read_to_string(s.run_dir.join("report.md"))?;
    assert!(report.contains("test_sequence_error_pct"), "{report}");
    Ok(())
}

#[test]
fn a_selection_metric_the_task_does_not_measure_is_named() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let text =
        PAIRS.replace("pictures = 2", "pictures = 0\nselect = \"val_bleu4\"").replace("epochs = 2", "epochs = 1");
    let cfg = ExperimentConfig::from_toml(&text, std::path::Path::new("tiny-pairs.toml"))?;
    let e = gaze_train::run(&cfg, &opts(tmp.path())).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("train.select") && e.contains("val_bleu4") && e.contains("val_sequence_error_pct"), "{e}");
    let bad = ExperimentConfig::from_toml(&PAIRS.replace("pictures = 2", "select = \"test_bleu4\""), "x.toml".as_ref());
    assert!(bad.err().map(|e| e.to_string()).unwrap_or_default().contains("train.select"));
    Ok(())
}

/// Exported, a sequence model reads a canvas as its run does: the same tokens, spelt with the
/// vocabulary the export carries.
#[test]
fn an_exported_sequence_model_reads_as_its_run() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cfg = ExperimentConfig::from_toml(&PAIRS.replace("epochs = 2", "epochs = 1"), std::path::Path::new("p.toml"))?;
    let s = gaze_train::run(&cfg, &opts(tmp.path()))?;
    let dev = candle_core::Device::Cpu;
    let card = gaze_train::export::export(&s.run_dir, &tmp.path().join("shared"), false, &dev)?;
    let e = gaze_train::export::load(&tmp.path().join("shared"), &dev)?;
    assert_eq!(e.card, card);
    let (_, data, built, _) = gaze_train::trainer::load_run(&s.run_dir, false, false, &dev)?;
    let gaze_train::data::Examples::Sequences(seqs) = &data.test else { anyhow::bail!("a sequence split") };
    assert_eq!(&card.words, seqs.words.as_ref());
    assert_eq!((card.input, card.max_steps), (data.input, data.max_steps));
    let batch = data.test.batch(&[0, 1, 2], &dev)?;
    let search = gaze_zoo::Search::Greedy;
    let a = built.model.decode(&batch, search, data.max_steps, &mut gaze_tensor::Seed(0).rng())?;
    let b = e.built.model.decode(&batch, search, data.max_steps, &mut gaze_tensor::Seed(0).rng())?;
    assert_eq!(a.tokens, b.tokens);
    Ok(())
}

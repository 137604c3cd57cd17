//! DRAM end to end on MNIST pairs: one label per digit read in order (sequence targets), or one
//! class for the pair (their sum, the unordered pair), with the glimpse measures its runs report.

use crate::common::opts;

use gaze_train::ExperimentConfig;

const DRAM: &str = r#"
name = "tiny-dram"
seed = 5
[model]
type = "dram"
glimpses = 2
patch = 8
scales = 2
glimpse_out = 32
hidden = 32
context_pool = 4
[model.glimpse_cnn]
channels = [8, 16]
pool = 1
stride = 2
[model.context_cnn]
channels = [8, 8]
[data]
type = "mnist_pairs"
target = "sequence"
[data.digits]
source = "fixture"
train_limit = 128
test_limit = 48
val_fraction = 0.03
[data.pairs]
canvas = 56
[optim]
lr = 0.003
[train]
epochs = 1
batch_size = 32
pictures = 2
"#;

fn run(text: &str) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let tmp = tempfile::tempdir()?;
    let cfg = ExperimentConfig::from_toml(text, std::path::Path::new("tiny-dram.toml"))?;
    let s = gaze_train::run(&cfg, &opts(tmp.path()))?;
    let pictures = s.run_dir.join("attention").join("test_wrong.png");
    assert!(pictures.exists(), "no glimpse pictures in {}", s.run_dir.display());
    Ok(s.metrics)
}

fn pct(m: &std::collections::BTreeMap<String, f64>, key: &str) -> f64 {
    let v = m.get(key).copied().unwrap_or(-1.0);
    assert!((0.0..=100.0).contains(&v) || key == "glimpse_pixels_pct", "{key} = {v} in {m:?}");
    v
}

#[test]
fn dram_reads_pairs_in_order_and_reports_where_each_digits_glimpses_went() -> anyhow::Result<()> {
    let m = run(DRAM)?;
    pct(&m, "test_sequence_error_pct");
    assert!(m["test_token_error_pct"] >= 0.0, "edits per true token (over 100 when the reading is longer)");
    let each = pct(&m, "object_glimpsed_pct");
    let all = pct(&m, "all_objects_glimpsed_pct");
    assert!(all <= each, "every digit glimpsed ({all}) cannot exceed each digit ({each})");
    // 3 labels (two digits and <eos>) x 2 glimpses, each reading 8^2 + 16^2 pixels, on 56x56.
    let want = 100.0 * (6.0 * (64.0 + 256.0)) / (56.0 * 56.0);
    assert!((m["glimpse_pixels_pct"] - want).abs() < 1e-3, "{} vs {want}", m["glimpse_pixels_pct"]);
    // Same seed, same metrics.
    let again = run(DRAM)?;
    assert_eq!(m, again);
    Ok(())
}

#[test]
fn dram_answers_a_pairs_sum_and_class_with_both_digits_graded() -> anyhow::Result<()> {
    let m = run(&DRAM.replace("target = \"sequence\"", "target = \"sum\""))?;
    pct(&m, "test_error_pct");
    pct(&m, "glimpsed_digit_pct");
    // 2 digits x 2 glimpses before the one label.
    let want = 100.0 * (4.0 * (64.0 + 256.0)) / (56.0 * 56.0);
    assert!((m["glimpse_pixels_pct"] - want).abs() < 1e-3);
    assert!(!m.contains_key("test_sequence_error_pct"));
    let m = run(&DRAM.replace("target = \"sequence\"", "target = \"pair\""))?;
    pct(&m, "test_error_pct");
    // The unordered pair needs two digits.
    let three =
        DRAM.replace("target = \"sequence\"", "target = \"pair\"").replace("canvas = 56", "canvas = 84\ndigits = 3");
    let e = ExperimentConfig::from_toml(&three, "x.toml".as_ref()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("data.target") && e.contains("digits is 3"), "{e}");
    Ok(())
}

//! Trainer tests: exact resume, the NaN guard, and the quick experiment end to end.

use crate::common;
use common::{opts, quick_of};

use std::path::{Path, PathBuf};

use candle_core::Device;
use gaze_train::{checkpoint, ExperimentConfig, RunOptions, TrainError};

const TINY: &str = r#"
name = "tiny"
seed = 7
[model]
type = "convnet"
hidden = 16
dropout = 0.2
[model.convnet]
channels = [4, 8]
[data]
type = "mnist"
source = "fixture"
train_limit = 96
test_limit = 64
val_fraction = 0.05
[optim]
lr = 0.003
clip_norm = 1.0
[optim.schedule]
type = "cosine"
min_lr = 0.0001
[train]
epochs = 2
batch_size = 16
log_every = 1
pictures = 2
"#;

fn tiny() -> anyhow::Result<ExperimentConfig> {
    Ok(ExperimentConfig::from_toml(TINY, Path::new("tiny.toml"))?)
}

fn params(run: &Path) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
    let loaded = checkpoint::load(&run.join("checkpoints/last.safetensors"), &Device::Cpu)?;
    let mut v: Vec<(String, Vec<f32>)> = loaded
        .tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.flatten_all()?.to_vec1::<f32>()?)))
        .collect::<anyhow::Result<_>>()?;
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

#[test]
fn stopped_and_resumed_equals_uninterrupted() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cfg = tiny()?;
    let full = gaze_train::run(&cfg, &opts(&tmp.path().join("a")))?;
    assert_eq!(full.steps, 12); // 2 epochs of ceil(96 / 16)
                                // Stop mid-epoch (step 8 of 12: epoch 2, batch 2), then resume in the same folder.
    let stop = RunOptions { stop_after_steps: Some(8), ..opts(&tmp.path().join("b")) };
    let part = gaze_train::run(&cfg, &stop)?;
    assert!(part.stopped_early && part.steps == 8);
    let resumed =
        gaze_train::run(&cfg, &RunOptions { resume: Some(part.run_dir.clone()), ..opts(&tmp.path().join("b")) })?;
    assert_eq!(resumed.steps, 12);
    // The resumed run's wall time counts the first part too, as its checkpoint recorded it.
    let stopped_at = checkpoint::load(&part.run_dir.join("checkpoints/last.safetensors"), &Device::Cpu)?;
    assert!(stopped_at.state.wall_seconds > 0.0);
    assert!(resumed.wall_s >= stopped_at.state.wall_seconds, "{} < {}", resumed.wall_s, stopped_at.state.wall_seconds);
    let (pa, pb) = (params(&full.run_dir)?, params(&resumed.run_dir)?);
    assert_eq!(pa.len(), pb.len());
    assert!(pa.iter().any(|(k, _)| k.starts_with("optim.m.")));
    for ((ka, va), (kb, vb)) in pa.iter().zip(&pb) {
        assert_eq!(ka, kb);
        let same = va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "`{ka}` differs after resume");
    }
    assert_eq!(full.metrics, resumed.metrics);
    // A resume with another config is refused, naming the setting, and the folder is untouched.
    let metrics_before = std::fs::read(part.run_dir.join("metrics.jsonl"))?;
    let mut other = cfg.clone();
    other.optim.lr *= 2.0;
    let e = gaze_train::run(&other, &RunOptions { resume: Some(part.run_dir.clone()), ..opts(&tmp.path().join("b")) })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("config.toml") && e.contains("optim.lr"), "{e}");
    assert_eq!(std::fs::read(part.run_dir.join("metrics.jsonl"))?, metrics_before);
    // The same seed gives bit-identical metrics; a different seed does not.
    let again = gaze_train::run(&cfg, &opts(&tmp.path().join("c")))?;
    assert_eq!(again.metrics, full.metrics);
    Ok(())
}

#[test]
fn nan_loss_stops_the_run_and_the_last_checkpoint_loads() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cfg = tiny()?;
    cfg.train.checkpoint_every = 3;
    let o = RunOptions { inject_nan_at_step: Some(5), ..opts(tmp.path()) };
    let err = gaze_train::run(&cfg, &o).err().ok_or_else(|| anyhow::anyhow!("the NaN run must fail"))?;
    let msg = err.to_string();
    assert!(matches!(err, TrainError::NonFinite { step: 5, .. }), "{msg}");
    assert!(msg.contains("step 5") && msg.contains("`classify`") && msg.contains("NaN"), "{msg}");
    assert!(msg.contains("last.safetensors (step 3) is the last good checkpoint"), "{msg}");
    let run: PathBuf =
        std::fs::read_dir(tmp.path().join("tiny"))?.next().ok_or_else(|| anyhow::anyhow!("no run"))??.path();
    let loaded = checkpoint::load(&run.join("checkpoints/last.safetensors"), &Device::Cpu)?;
    assert_eq!(loaded.state.step, 3);
    assert!(loaded
        .tensors
        .values()
        .all(|t| t.flatten_all().and_then(|f| f.to_vec1::<f32>()).is_ok_and(|v| v.iter().all(|x| x.is_finite()))));
    Ok(())
}

#[test]
fn quick_mnist_convnet_runs_end_to_end() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/mnist-convnet.toml");
    let cfg = ExperimentConfig::load(&file)?.quick();
    let s = gaze_train::run(&cfg, &opts(tmp.path()))?;
    for f in [
        "config.toml",
        "run.json",
        "metrics.jsonl",
        "summary.json",
        "report.md",
        "curves.png",
        "checkpoints/best.safetensors",
        "checkpoints/last.safetensors",
    ] {
        assert!(s.run_dir.join(f).is_file(), "{f} missing");
    }
    assert!(s.metrics.contains_key("test_error_pct"));
    let report = std::fs::read_to_string(s.run_dir.join("report.md"))?;
    assert!(report.contains("test_error_pct") && report.contains("curves.png"));
    Ok(())
}

#[test]
fn every_checked_in_experiment_parses() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
    let mut n = 0;
    for e in std::fs::read_dir(&dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            ExperimentConfig::load(&p)?;
            n += 1;
        }
    }
    assert!(n >= 2);
    let e = ExperimentConfig::load(Path::new("/no/such/exp.toml")).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("/no/such/exp.toml"), "{e}");
    Ok(())
}

/// Two RAM runs with the same seed give bit-identical metrics (sampled glimpse paths included),
/// and the report draws the glimpse paths.
#[test]
fn ram_runs_are_bit_identical_and_draw_glimpse_paths() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cfg = quick_of("ram-mnist-28")?;
    cfg.train.epochs = 2;
    cfg.train.log_every = 1;
    let a = gaze_train::run(&cfg, &opts(&tmp.path().join("a")))?;
    let b = gaze_train::run(&cfg, &opts(&tmp.path().join("b")))?;
    assert_eq!(a.metrics, b.metrics);
    let steps = |s: &gaze_train::RunSummary| -> anyhow::Result<String> {
        let text = std::fs::read_to_string(s.run_dir.join("metrics.jsonl"))?;
        Ok(text.lines().filter(|l| l.contains("\"kind\":\"step\"")).collect::<Vec<_>>().join("\n"))
    };
    let (sa, sb) = (steps(&a)?, steps(&b)?);
    assert!(sa.contains("\"reinforce\"") && sa.contains("\"baseline\""), "{sa}");
    assert_eq!(sa, sb);
    assert!(
        a.run_dir.join("attention/test_right.png").is_file() || a.run_dir.join("attention/test_wrong.png").is_file()
    );
    Ok(())
}

/// Canvases redrawn every epoch: epoch 0 is the prepared set, later epochs differ from it and
/// from each other, and the same epoch is drawn the same way twice.
#[test]
fn fresh_canvases_are_redrawn_per_epoch_and_reproducibly() -> anyhow::Result<()> {
    let cfg = quick_of("ram-cluttered-60")?;
    let seed = gaze_tensor::Seed(cfg.seed);
    let data = gaze_train::data::prepare(&cfg.data, seed)?;
    assert!(data.train_for_epoch(0, seed)?.is_none());
    let images = |e: Option<gaze_train::data::Examples>| -> anyhow::Result<gaze_data::LabeledImages> {
        e.and_then(|e| e.as_images().cloned()).ok_or_else(|| anyhow::anyhow!("not redrawn"))
    };
    let (e1, e2) = (images(data.train_for_epoch(1, seed)?)?, images(data.train_for_epoch(2, seed)?)?);
    let e0 = data.train.as_images().ok_or_else(|| anyhow::anyhow!("digit images"))?;
    assert_eq!(e1.labels, e0.labels, "the same digits, newly placed");
    assert_ne!(e1.pixels, e0.pixels);
    assert_ne!(e1.pixels, e2.pixels);
    assert_eq!(images(data.train_for_epoch(1, seed)?)?.pixels, e1.pixels);
    // Every canvas names its digit's centre, and the digit's ink is there (a 28x28 digit's ink
    // box centre lies within a few pixels of some stroke).
    let test = data.test.as_images().ok_or_else(|| anyhow::anyhow!("digit images"))?;
    let info = data.test.row_info(&(0..test.len()).collect::<Vec<_>>());
    assert_eq!(info.len(), test.len());
    for (i, row) in info.iter().enumerate() {
        let [(x, y)] = row.row.centres[..] else { anyhow::bail!("canvas {i}: centres {:?}", row.row.centres) };
        let (cx, cy) = ((x * test.cols as f32) as i64, (y * test.rows as f32) as i64);
        let img = test.image(i).ok_or_else(|| anyhow::anyhow!("image {i}"))?;
        let ink = (cy - 4..=cy + 4)
            .flat_map(|py| (cx - 4..=cx + 4).map(move |px| (py, px)))
            .filter(|&(py, px)| py >= 0 && px >= 0 && (py as usize) < test.rows && (px as usize) < test.cols)
            .any(|(py, px)| img[py as usize * test.cols + px as usize] > 0);
        assert!(ink, "canvas {i}: no ink near the digit centre ({cx}, {cy})");
    }
    Ok(())
}

/// On canvases, a RAM run reports how often its glimpses reached the digit, and the accuracy on
/// either side of that split adds up to the test accuracy.
#[test]
fn ram_reports_whether_its_glimpses_reached_the_digit() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cfg = quick_of("ram-cluttered-60")?;
    let s = gaze_train::run(&cfg, &opts(tmp.path()))?;
    let m = |k: &str| s.metrics.get(k).copied().ok_or_else(|| anyhow::anyhow!("no {k} in {:?}", s.metrics));
    let on = m("glimpsed_digit_pct")?;
    assert!((0.0..=100.0).contains(&on), "{on}");
    let part = |k: &str, share: f64| if share > 0.0 { m(k).map(|a| a * share / 100.0) } else { Ok(0.0) };
    let total = part("test_acc_glimpsed_pct", on)? + part("test_acc_not_glimpsed_pct", 100.0 - on)?;
    assert!((total - m("test_acc_pct")?).abs() < 0.01, "{total} vs {:?}", s.metrics);
    let report = std::fs::read_to_string(s.run_dir.join("report.md"))?;
    assert!(report.contains("glimpsed_digit_pct"), "{report}");
    Ok(())
}

/// `train.shards`: a batch split into two shards on two threads takes the step one pass over the
/// whole batch takes (a deterministic model, plain SGD: parameters equal to float noise); sharded
/// RAM runs (each shard sampling its own paths) are bit-identical with the same seed; impossible
/// shard counts and batch norm are named.
#[test]
fn sharded_steps_equal_one_pass_and_repeat_exactly() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut one = tiny()?;
    one.model =
        ExperimentConfig::from_toml(&TINY.replace("dropout = 0.2", "dropout = 0.0"), Path::new("t.toml"))?.model;
    one.optim.kind = gaze_train::config::OptimKind::Sgd;
    one.optim.momentum = 0.0;
    one.optim.clip_norm = 0.0; // clipping would hide a wrongly scaled gradient
    let two = {
        let mut c = one.clone();
        c.train.shards = 2;
        c
    };
    let stop = |d: &str| RunOptions { stop_after_steps: Some(3), ..opts(&tmp.path().join(d)) };
    let (a, b) = (gaze_train::run(&one, &stop("one"))?, gaze_train::run(&two, &stop("two"))?);
    let (pa, pb) = (params(&a.run_dir)?, params(&b.run_dir)?);
    // Where the parameters started: one step at a vanishing rate.
    let init = {
        let c = RunOptions { stop_after_steps: Some(1), ..opts(&tmp.path().join("init")) };
        let mut still = one.clone();
        still.optim.lr = 1e-30;
        still.optim.schedule = gaze_train::config::Schedule::Constant;
        params(&gaze_train::run(&still, &c)?.run_dir)?
    };
    // Each parameter's displacement over the three steps, one pass against two shards.
    let mut moved = 0f32;
    let mut worst = 0f32;
    for (((k0, v0), (ka, va)), (kb, vb)) in init.iter().zip(&pa).zip(&pb) {
        assert!(k0 == ka && ka == kb, "{k0} {ka} {kb}");
        for ((x0, x), y) in v0.iter().zip(va).zip(vb) {
            moved = moved.max((x - x0).abs());
            worst = worst.max(((x - x0) - (y - x0)).abs());
        }
    }
    // The runs moved the parameters (else equal parameters would prove nothing), and the
    // shards moved them the same way: a gradient off by a factor would differ by its size.
    assert!(moved > 1e-3, "three SGD steps moved no parameter by more than {moved}");
    assert!(worst <= 1e-3 * moved, "displacements differ by up to {worst} (largest {moved})");

    let mut ram = quick_of("ram-mnist-28")?;
    ram.train.shards = 2;
    ram.train.log_every = 1;
    let (r1, r2) =
        (gaze_train::run(&ram, &opts(&tmp.path().join("r1")))?, gaze_train::run(&ram, &opts(&tmp.path().join("r2")))?);
    assert_eq!(r1.metrics, r2.metrics);
    assert_eq!(params(&r1.run_dir)?, params(&r2.run_dir)?);

    for (shards, batch) in [(0, 16), (17, 16)] {
        let text = TINY.replace("batch_size = 16", &format!("batch_size = {batch}\nshards = {shards}"));
        let msg =
            ExperimentConfig::from_toml(&text, Path::new("t.toml")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("train.shards") && msg.contains(&shards.to_string()), "shards = {shards}: {msg:?}");
    }
    let mut bn = quick_of("han-sort-of-clevr")?;
    bn.train.shards = 2;
    let msg = gaze_train::run(&bn, &opts(&tmp.path().join("bn"))).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("train.shards") && msg.contains("batch norm"), "{msg:?}");
    Ok(())
}

/// A run that diverges with finite losses (a learning rate far too large) stops at the step whose
/// gradient or parameters leave f32's range, exits with an error, and writes no checkpoint of it:
/// with AdamW (decay off) and with SGD, as `lr = 1e6` on the quickstart showed.
#[test]
fn a_diverging_run_stops_and_keeps_no_infinite_checkpoint() -> anyhow::Result<()> {
    use gaze_train::config::OptimKind;
    for kind in [OptimKind::Adamw, OptimKind::Sgd] {
        let tmp = tempfile::tempdir()?;
        let mut cfg = tiny()?;
        cfg.optim.lr = 1e30;
        cfg.optim.weight_decay = 0.0;
        cfg.optim.kind = kind;
        cfg.train.checkpoint_every = 1;
        let err =
            gaze_train::run(&cfg, &opts(tmp.path())).err().ok_or_else(|| anyhow::anyhow!("{kind:?}: must fail"))?;
        let msg = err.to_string();
        assert!(matches!(err, TrainError::NonFinite { .. }), "{kind:?}: {msg}");
        assert!(msg.contains("the run stops"), "{msg}");
        let run: PathBuf =
            std::fs::read_dir(tmp.path().join("tiny"))?.next().ok_or_else(|| anyhow::anyhow!("no run"))??.path();
        let last = run.join("checkpoints/last.safetensors");
        if last.is_file() {
            let loaded = checkpoint::load(&last, &Device::Cpu)?;
            assert!(msg.contains(&format!("(step {}) is the last good checkpoint", loaded.state.step)), "{msg}");
            for t in loaded.tensors.values() {
                assert!(t.flatten_all()?.to_vec1::<f32>()?.iter().all(|x| x.is_finite()), "{kind:?}: {msg}");
            }
        } else {
            assert!(msg.contains("no checkpoint written yet"), "{msg}");
        }
    }
    Ok(())
}

/// A shift that moves the image out of view is an error naming the key, before any training.
#[test]
fn a_shift_past_half_the_image_is_refused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cfg = tiny()?;
    cfg.train.augment_shift = 14;
    let e = gaze_train::run(&cfg, &opts(tmp.path())).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("train.augment_shift") && e.contains("28x28"), "{e}");
    assert!(!tmp.path().join("tiny").exists(), "no run folder is made");
    Ok(())
}

/// Targets set for other data (a copied experiment on a new data set) are shown as such and
/// compared with nothing; the same targets stamped with this data's test split are compared.
#[test]
fn targets_hold_only_for_the_data_they_were_set_for() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cfg = tiny()?;
    cfg.targets.insert("test_acc_pct".into(), ">= 99.9".into());
    cfg.targets_data = Some("000000000000".into());
    let s = gaze_train::run(&cfg, &opts(tmp.path()))?;
    let report = std::fs::read_to_string(s.run_dir.join("report.md"))?;
    assert!(report.contains("were set for other data") && !report.contains(">= 99.9 |"), "{report}");
    let record = gaze_train::data::DataRecord::load(&s.run_dir)?.ok_or_else(|| anyhow::anyhow!("no data.json"))?;
    cfg.targets_data = Some(record.sha256.test[..16].to_string());
    let s = gaze_train::run(&cfg, &opts(&tmp.path().join("again")))?;
    let report = std::fs::read_to_string(s.run_dir.join("report.md"))?;
    assert!(!report.contains("were set for other data") && report.contains("| >= 99.9 |"), "{report}");
    Ok(())
}

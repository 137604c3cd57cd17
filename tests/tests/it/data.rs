//! Data tests against the real, full MNIST when it is present (`GAZE_DATA_DIR`, or
//! `../shared/data/mnist` beside the repository), and determinism of every generator.

use std::path::PathBuf;

use gaze_data::generate::*;
use gaze_data::Mnist;
use gaze_tensor::Seed;

fn real_mnist_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("GAZE_DATA_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mnist");
    beside.is_dir().then_some(beside)
}

#[test]
fn real_mnist_has_the_canonical_test_label_counts() -> anyhow::Result<()> {
    let Some(dir) = real_mnist_dir() else {
        println!("NOTICE: real MNIST not found (set GAZE_DATA_DIR); skipping the canonical-count check");
        return Ok(());
    };
    let m = Mnist::from_dir(&dir)?;
    assert_eq!((m.train.len(), m.test.len()), (60_000, 10_000));
    assert_eq!(m.test.label_counts(10), vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    assert_eq!(m.train.label_counts(10), vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]);
    // The embedded fixture is the start of the real files.
    let fx = Mnist::fixture()?;
    assert_eq!(fx.test, m.test.take(500));
    assert_eq!(fx.train, m.train.take(2000));
    Ok(())
}

#[test]
fn every_generator_is_deterministic() -> anyhow::Result<()> {
    let m = Mnist::fixture()?;
    for cfg in [CanvasConfig::translated_60(), CanvasConfig::cluttered_60(), CanvasConfig::cluttered_100()] {
        let (a, b) =
            (MnistCanvas::new(cfg.clone(), &m.test, Seed(5))?, MnistCanvas::new(cfg.clone(), &m.test, Seed(5))?);
        let c = MnistCanvas::new(cfg, &m.test, Seed(6))?;
        let (sa, sb) = (
            (0..20).map(|i| a.sample(i)).collect::<Result<Vec<_>, _>>()?,
            (0..20).map(|i| b.sample(i)).collect::<Result<Vec<_>, _>>()?,
        );
        assert_eq!(sa, sb);
        assert_ne!(sa[0].image, c.sample(0)?.image);
    }
    let (p, q) = (
        MnistPairs::new(PairsConfig::default(), &m.test, Seed(5))?,
        MnistPairs::new(PairsConfig::default(), &m.test, Seed(5))?,
    );
    assert!((0..20).all(|i| p.sample(i).ok() == q.sample(i).ok()));
    let (b1, b2) = (BarnVqa::new(BarnConfig::default(), Seed(5))?, BarnVqa::new(BarnConfig::default(), Seed(5))?);
    assert!((0..10).all(|i| b1.scene(i).ok() == b2.scene(i).ok()));
    assert_ne!(b1.scene(0)?.image, BarnVqa::new(BarnConfig::default(), Seed(6))?.scene(0)?.image);
    let (s1, s2) = (
        SortOfClevr::new(SortOfClevrConfig::default(), Seed(5))?,
        SortOfClevr::new(SortOfClevrConfig::default(), Seed(5))?,
    );
    assert!((0..10).all(|i| s1.scene(i).ok() == s2.scene(i).ok()));
    let (c1, c2) = (
        ShapeCaptions::new(CaptionConfig::default(), Seed(5))?,
        ShapeCaptions::new(CaptionConfig::default(), Seed(5))?,
    );
    assert!((0..10).all(|i| c1.sample(i).ok() == c2.sample(i).ok()));
    Ok(())
}

/// Without the opt-in `hub` feature, asking for the hub says how to use a folder and how to turn
/// the feature on (and makes no network call).
#[cfg(not(feature = "hub"))]
#[test]
fn without_the_hub_feature_the_error_says_how_to_get_data() {
    let e = gaze_data::Mnist::from_hub().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("GAZE_DATA_DIR") && e.contains("--data-dir") && e.contains("--features hub"), "{e}");
}

/// Data checked against the model before training: a label outside the classes and an empty
/// test file are errors naming the split and the first bad image, not a failure inside a tensor
/// op (or an "accuracy" of 0 on nothing) after the run.
#[test]
fn bad_labels_and_empty_splits_stop_the_run_before_it_starts() -> anyhow::Result<()> {
    use gaze_data::idx::{encode_images, encode_labels, write_maybe_gzipped, IdxImages};
    let m = gaze_data::Mnist::fixture()?;
    let write = |dir: &std::path::Path, test_labels: Vec<u8>, test_count: usize| -> anyhow::Result<()> {
        let imgs = |set: &gaze_data::LabeledImages, n: usize| IdxImages {
            count: n,
            rows: 28,
            cols: 28,
            pixels: set.pixels[..n * 784].to_vec(),
        };
        write_maybe_gzipped(&dir.join("train-images-idx3-ubyte.gz"), &encode_images(&imgs(&m.train, 200)))?;
        write_maybe_gzipped(&dir.join("train-labels-idx1-ubyte.gz"), &encode_labels(&m.train.labels[..200]))?;
        write_maybe_gzipped(&dir.join("t10k-images-idx3-ubyte.gz"), &encode_images(&imgs(&m.test, test_count)))?;
        write_maybe_gzipped(&dir.join("t10k-labels-idx1-ubyte.gz"), &encode_labels(&test_labels))?;
        Ok(())
    };
    let run = |dir: &std::path::Path| -> String {
        let text = format!(
            "name = \"bad-data\"\nseed = 1\n[model]\ntype = \"convnet\"\nhidden = 8\n[model.convnet]\nchannels = [4]\n\
             [data]\ntype = \"mnist\"\nsource = {{ dir = {:?} }}\n[train]\nepochs = 1\nbatch_size = 16\npictures = 0\n",
            dir.display().to_string()
        );
        let runs = tempfile::tempdir().ok();
        gaze_train::ExperimentConfig::from_toml(&text, "bad.toml".as_ref())
            .map_err(anyhow::Error::from)
            .and_then(|cfg| Ok(gaze_train::run(&cfg, &crate::common::opts(runs.as_ref().map_or(dir, |r| r.path())))?))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let dir = tempfile::tempdir()?;
    let mut labels = m.test.labels[..40].to_vec();
    labels[17] = 200;
    write(dir.path(), labels, 40)?;
    let e = run(dir.path());
    assert!(e.contains("test image 17 has label 200, outside the 10 classes") && e.contains("MNIST IDX folder"), "{e}");
    write(dir.path(), vec![], 0)?;
    let e = run(dir.path());
    assert!(e.contains("the test split is empty"), "{e}");
    Ok(())
}

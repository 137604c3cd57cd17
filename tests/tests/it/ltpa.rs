//! Learn to Pay Attention end to end: on a CIFAR binary folder written here (the reader, RGB
//! batches, the model), and on cluttered canvases whose digit boxes grade its maps beside
//! Grad-CAM.

use crate::common::opts;

use gaze_train::ExperimentConfig;

const LTPA: &str = r#"
name = "tiny-ltpa"
seed = 4
[model]
type = "learn_to_pay_attention"
attend = [0, 1]
[model.backbone]
channels = [4, 8, 8]
batch_norm = true
convs_per_block = 1
[optim]
lr = 0.01
[train]
epochs = 1
batch_size = 16
pictures = 2
"#;

/// CIFAR-10 records whose class sets the red plane's level.
fn cifar_folder(dir: &std::path::Path) -> anyhow::Result<()> {
    let record = |label: u8| {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(20 * label, 1024));
        r.extend(std::iter::repeat_n(128, 2048));
        r
    };
    let train: Vec<u8> = (0..60u8).flat_map(|i| record(i % 10)).collect();
    let test: Vec<u8> = (0..20u8).flat_map(|i| record(i % 10)).collect();
    std::fs::write(dir.join("data_batch_1.bin"), train)?;
    std::fs::write(dir.join("test_batch.bin"), test)?;
    Ok(())
}

#[test]
fn ltpa_trains_on_a_cifar_binary_folder() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    cifar_folder(data.path())?;
    let text = format!(
        "{LTPA}\n[data]\ntype = \"cifar\"\npath = {:?}\nval_fraction = 0.2\n",
        data.path().display().to_string()
    );
    let cfg = ExperimentConfig::from_toml(&text, "tiny-ltpa.toml".as_ref())?;
    let runs = tempfile::tempdir()?;
    let s = gaze_train::run(&cfg, &opts(runs.path()))?;
    assert!(s.data.contains("CIFAR-10") && s.data.contains("48 train / 12 val / 20 test"), "{}", s.data);
    let e = s.metrics.get("test_error_pct").copied().unwrap_or(-1.0);
    assert!((0.0..=100.0).contains(&e), "{:?}", s.metrics);
    assert!(
        s.run_dir.join("attention").join("test_wrong.png").exists()
            || s.run_dir.join("attention").join("test_right.png").exists()
    );
    // No boxes in CIFAR: nothing to grade the maps by.
    assert!(!s.metrics.contains_key("test_gradcam_pointing_pct"));
    // A folder that is not CIFAR is named.
    let empty = tempfile::tempdir()?;
    let text = text.replace(
        &format!("{:?}", data.path().display().to_string()),
        &format!("{:?}", empty.path().display().to_string()),
    );
    let cfg = ExperimentConfig::from_toml(&text, "tiny-ltpa.toml".as_ref())?;
    let e = gaze_train::run(&cfg, &opts(runs.path())).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("not a CIFAR binary folder"), "{e}");
    Ok(())
}

#[test]
fn ltpa_maps_and_grad_cam_are_graded_by_the_digit_box() -> anyhow::Result<()> {
    for attention in [true, false] {
        let text = format!(
            "{}\n[data]\ntype = \"mnist_canvas\"\n[data.digits]\nsource = \"fixture\"\ntrain_limit = 64\ntest_limit = 32\nval_fraction = 0.02\n[data.canvas]\ncanvas = 40\ndistractors = 2\n",
            LTPA.replace("attend = [0, 1]", &format!("attend = [0, 1]\nattention = {attention}"))
        );
        let cfg = ExperimentConfig::from_toml(&text, "tiny-ltpa.toml".as_ref())?;
        let runs = tempfile::tempdir()?;
        let s = gaze_train::run(&cfg, &opts(runs.path()))?;
        for key in [
            "test_pointing_pct",
            "test_attention_in_box_pct",
            "test_box_area_pct",
            "test_gradcam_pointing_pct",
            "test_gradcam_attention_in_box_pct",
        ] {
            let v = s.metrics.get(key).copied().unwrap_or(-1.0);
            assert!((0.0..=100.0).contains(&v), "attention = {attention}: {key} = {v} in {:?}", s.metrics);
        }
        // Each attended block's map is graded too; the last is the one shown and graded above.
        let layer = |k: &str| s.metrics.get(k).copied();
        if attention {
            for key in ["test_block0_pointing_pct", "test_block0_attention_in_box_pct"] {
                assert!(layer(key).is_some_and(|v| (0.0..=100.0).contains(&v)), "{key} in {:?}", s.metrics);
            }
            assert_eq!(layer("test_block1_pointing_pct"), layer("test_pointing_pct"));
            assert_eq!(layer("test_block1_attention_in_box_pct"), layer("test_attention_in_box_pct"));
        } else {
            assert!(!s.metrics.keys().any(|k| k.contains("block")), "no attention, no layer maps: {:?}", s.metrics);
        }
    }
    Ok(())
}

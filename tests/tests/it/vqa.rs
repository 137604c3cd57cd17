//! HAN / AdaHAN through the trainer: quick runs on generated barn scenes and Sort-of-CLEVR, a VQA
//! folder written by the generator trained through `data.type = "vqa_folder"`, and broken folders
//! named in the error.

use crate::common;
use common::{opts, quick_of};

use std::path::Path;

use gaze_train::ExperimentConfig;

#[test]
fn han_and_adahan_quick_runs_report_accuracy_cells_and_compute() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    for name in ["han-barn", "adahan-sort-of-clevr"] {
        let s = gaze_train::run(&quick_of(name)?, &opts(tmp.path()))?;
        for key in ["test_acc_pct", "cells_kept_pct", "head_mflops", "infer_samples_per_s"] {
            assert!(s.metrics.contains_key(key), "{name}: no {key} in {:?}", s.metrics);
        }
        assert!(!s.per_kind.is_empty(), "{name}: per-kind accuracy");
        let report = std::fs::read_to_string(s.run_dir.join("report.md"))?;
        let kept = s.metrics["cells_kept_pct"];
        assert!(kept > 0.0 && kept <= 100.0, "{name}: kept {kept}");
        if name == "han-barn" {
            assert!((kept - 25.0).abs() < 1e-3, "top-16 of 64 cells is 25%: {kept}");
        } else {
            assert!(s.metrics.contains_key("test_acc_rel_pct") && s.metrics.contains_key("test_acc_nonrel_pct"));
            // Sort-of-CLEVR names each question's objects: the accuracies with the focus kept and
            // missed, weighted by their shares, give the kind's accuracy
            for (kind, k) in &s.per_kind {
                let share = k.focus_kept_pct.ok_or_else(|| anyhow::anyhow!("{kind}: no focus_kept_pct"))? / 100.0;
                let (a, b) = (k.acc_focus_kept_pct.unwrap_or(0.0), k.acc_focus_missed_pct.unwrap_or(0.0));
                let mixed = share * a + (1.0 - share) * b;
                assert!(
                    (mixed - k.acc_pct).abs() < 0.05,
                    "{kind}: {share} x {a} + rest x {b} = {mixed}, not {}",
                    k.acc_pct
                );
            }
            assert!(report.contains("focus kept %"), "{name}");
        }
        assert!(report.contains("Per question kind"), "{name}");
        assert!(
            s.run_dir.join("attention/test_wrong.png").is_file()
                || s.run_dir.join("attention/test_right.png").is_file()
        );
    }
    Ok(())
}

fn folder_config(dir: &Path) -> String {
    format!(
        r#"
name = "folder"
seed = 3
[model]
type = "han"
selection = "hard_topk"
k = 4
head = "pooled"
f_hidden = 16
[model.cnn]
channels = [4, 8]
[data]
type = "vqa_folder"
path = "{}"
size = [32, 32]
val_fraction = 0.2
test_fraction = 0.2
[train]
epochs = 2
batch_size = 4
pictures = 2
"#,
        dir.display()
    )
}

#[test]
fn a_generated_vqa_folder_trains_through_vqa_folder() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("barn");
    let questions = gaze_data::catalog::export("barn-vqa", 20, gaze_tensor::Seed(5), &dir)?;
    assert_eq!(questions, 120);
    let cfg = ExperimentConfig::from_toml(&folder_config(&dir), Path::new("folder.toml"))?;
    let s = gaze_train::run(&cfg, &opts(&tmp.path().join("runs")))?;
    assert_eq!(s.steps, 2 * 3, "12 training scenes in batches of 4, two epochs");
    assert!(s.metrics.contains_key("test_acc_pct") && s.metrics.contains_key("test_unknown_answers"));
    assert!(s.data.contains("resized to 32x32"), "{}", s.data);
    Ok(())
}

#[test]
fn broken_vqa_folders_are_named() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("v");
    gaze_data::catalog::export("sort-of-clevr", 4, gaze_tensor::Seed(1), &dir)?;
    let qfile = dir.join("questions.jsonl");
    let good = std::fs::read_to_string(&qfile)?;
    let cfg = ExperimentConfig::from_toml(&folder_config(&dir), Path::new("folder.toml"))?;
    let err = |text: &str| -> anyhow::Result<String> {
        std::fs::write(&qfile, text)?;
        Ok(gaze_train::data::prepare(&cfg.data, gaze_tensor::Seed(1)).err().map(|e| e.to_string()).unwrap_or_default())
    };
    let lines: Vec<&str> = good.lines().collect();
    // record 3 names a missing image
    let mut missing = lines.clone();
    let moved = missing[2].replace("images/", "images/nope-");
    missing[2] = &moved;
    let e = err(&missing.join("\n"))?;
    assert!(e.contains("questions.jsonl") && e.contains("record 3") && e.contains("nope-"), "{e}");
    // record 2 has no answer
    let mut no_answer = lines.clone();
    let stripped = no_answer[1].replacen("\"answer\"", "\"not_the_answer\"", 1);
    no_answer[1] = &stripped;
    let e = err(&no_answer.join("\n"))?;
    assert!(e.contains("record 2") && e.contains("answer"), "{e}");
    // an empty questions file
    let e = err("")?;
    assert!(e.contains("questions.jsonl"), "{e}");
    Ok(())
}

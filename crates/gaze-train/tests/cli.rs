//! The `gaze` binary end to end: train a tiny run, then `eval`, `infer` on a PNG, `show`.
//! (Here rather than in the `tests` crate: only this package's tests can run its binary.)

use std::path::Path;
use std::process::Command;

fn gaze(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_gaze")).args(args).output()?;
    anyhow::ensure!(out.status.success(), "gaze {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn train_eval_infer_show() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cfg = tmp.path().join("tiny.toml");
    std::fs::write(
        &cfg,
        "name = \"cli\"\nseed = 2\n[model]\ntype = \"convnet\"\nhidden = 16\n[model.convnet]\nchannels = [4, 8]\n\
         [data]\ntype = \"mnist\"\nsource = \"fixture\"\ntrain_limit = 64\ntest_limit = 32\n[train]\nepochs = 1\nbatch_size = 16\npictures = 2\n",
    )?;
    let runs = tmp.path().join("runs");
    let out = gaze(&[
        "train",
        cfg.to_str().unwrap_or_default(),
        "--runs",
        runs.to_str().unwrap_or_default(),
        "--quiet",
        "--threads",
        "1",
    ])?;
    let run =
        out.lines().find_map(|l| l.strip_prefix("run: ")).ok_or_else(|| anyhow::anyhow!("no run line in {out}"))?;
    let out = gaze(&["eval", run])?;
    assert!(out.contains("test accuracy") && out.contains("best.safetensors"), "{out}");
    // Per-class accuracy and the confusion matrix over the 32 test digits.
    assert!(out.contains("per class") && out.contains("confusion matrix"), "{out}");
    let matrix: u64 = out
        .lines()
        .skip_while(|l| !l.starts_with("confusion matrix"))
        .skip(2)
        .flat_map(|l| l.split_whitespace().skip(1).filter_map(|c| c.parse::<u64>().ok()).collect::<Vec<_>>())
        .sum();
    assert_eq!(matrix, 32, "every test digit counted once: {out}");
    assert!(gaze(&["eval", run, "--last"])?.contains("last.safetensors"));
    // The validation split, scored alike under its own names.
    let val = gaze(&["eval", run, "--split", "val"])?;
    assert!(val.contains("val accuracy") && val.contains("val_acc_pct") && !val.contains("test_acc_pct"), "{val}");
    // Without `best`, eval says so instead of reading `last` unasked.
    let best = Path::new(run).join("checkpoints/best.safetensors");
    let kept = tmp.path().join("best.keep");
    std::fs::rename(&best, &kept)?;
    let failed = Command::new(env!("CARGO_BIN_EXE_gaze")).args(["eval", run]).output()?;
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success() && err.contains("no best checkpoint") && err.contains("--last"), "{err}");
    std::fs::rename(&kept, &best)?;
    // A digit as a PNG: the first test digit of the fixture (a 7).
    let m = gaze_data::Mnist::fixture()?;
    let png = tmp.path().join("digit.png");
    gaze_data::Image::grey(28, 28, m.test.image(0).unwrap_or_default().to_vec())?.save_png(&png)?;
    let out = gaze(&["infer", run, png.to_str().unwrap_or_default()])?;
    assert!(out.starts_with("class "), "{out}");
    // Exported, the model runs without its run folder or data, and says the same.
    let shared = tmp.path().join("shared");
    assert!(gaze(&["export", run, shared.to_str().unwrap_or_default()])?.contains("best.safetensors"));
    for f in ["model.safetensors", "config.json", "README.md"] {
        assert!(shared.join(f).is_file(), "{f}");
    }
    let card = std::fs::read_to_string(shared.join("README.md"))?;
    assert!(card.contains("test_acc_pct") && card.contains("gaze infer"), "{card}");
    let again = gaze(&["infer", shared.to_str().unwrap_or_default(), png.to_str().unwrap_or_default()])?;
    assert_eq!(again.lines().next(), out.lines().next(), "the exported model gives the run's answer");
    // A damaged export is named.
    std::fs::write(shared.join("model.safetensors"), b"not tensors")?;
    let e = Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(["infer", shared.to_str().unwrap_or_default(), png.to_str().unwrap_or_default()])
        .output()?;
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("model.safetensors"));
    let overlay = tmp.path().join("digit.attention.png");
    assert!(overlay.is_file());
    assert!(gaze_data::Image::load(&overlay, false)?.width >= 28);
    assert!(gaze(&["show", run])?.contains("test_acc_pct"));
    let report = std::fs::read_to_string(Path::new(run).join("report.md"))?;
    assert!(report.contains("## Per class (test)") && Path::new(run).join("confusion.png").is_file(), "{report}");
    assert!(report.contains("after epoch 1 of 1: the best by") && report.contains("training images/s"), "{report}");
    let (looked, metrics) = (report.find("## Where it looked"), report.find("## Final metrics"));
    assert!(looked.is_some() && looked < metrics, "the report opens with the attention pictures: {report}");
    // Grad-CAM beside the model's own map.
    let out = gaze(&["infer", run, png.to_str().unwrap_or_default(), "--gradcam"])?;
    assert!(out.contains("Grad-CAM of class") && tmp.path().join("digit.gradcam.png").is_file(), "{out}");
    // Parameters that give a non-finite loss (written here without a checksum, as an old
    // checkpoint would be) are an error, not a score.
    let loaded = gaze_train::checkpoint::load(&best, &candle_core::Device::Cpu)?;
    let mut poisoned = loaded.tensors.clone();
    for t in poisoned.values_mut() {
        *t = (t.clone() * f64::NAN)?;
    }
    candle_core::safetensors::save(&poisoned, &best)?;
    let failed = Command::new(env!("CARGO_BIN_EXE_gaze")).args(["eval", run]).output()?;
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success() && err.contains("diverged") && err.contains("best.safetensors"), "{err}");
    Ok(())
}

/// `--data-dir` points an experiment's MNIST at a folder, and the run says which: in its data
/// line and in the command it records (as the shell would set it).
#[test]
fn the_data_folder_is_given_by_flag_and_recorded() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cfg = tmp.path().join("tiny.toml");
    std::fs::write(
        &cfg,
        "name = \"cli-dir\"\nseed = 2\n[model]\ntype = \"convnet\"\nhidden = 8\n[model.convnet]\nchannels = [4]\n\
         [data]\ntype = \"mnist\"\nsource = \"env_or_hub\"\ntrain_limit = 32\ntest_limit = 16\n[train]\nepochs = 1\nbatch_size = 16\npictures = 0\n",
    )?;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist-fixture").canonicalize()?;
    let runs = tmp.path().join("runs");
    let out = Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(["--data-dir", fixture.to_str().unwrap_or_default(), "train", cfg.to_str().unwrap_or_default()])
        .args(["--runs", runs.to_str().unwrap_or_default(), "--quiet", "--threads", "1"])
        .env_remove("GAZE_DATA_DIR")
        .env("HF_HUB_OFFLINE", "1")
        .output()?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let run = stdout.lines().find_map(|l| l.strip_prefix("run: ")).ok_or_else(|| anyhow::anyhow!("{stdout}"))?;
    let summary = std::fs::read_to_string(Path::new(run).join("summary.json"))?;
    let folder = fixture.display().to_string();
    assert!(summary.contains(&format!("MNIST IDX folder {folder} (GAZE_DATA_DIR)")), "{summary}");
    assert!(summary.contains(&format!("GAZE_DATA_DIR={folder} ")), "{summary}");
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(Path::new(run).join("data.json"))?)?;
    assert_eq!(record["sha256"]["test"].as_str().map(str::len), Some(64), "{record}");
    assert_eq!(record["class_names"][3], "3", "{record}");
    let report = std::fs::read_to_string(Path::new(run).join("report.md"))?;
    assert!(report.contains("data sha256"), "{report}");

    // The same digits copied elsewhere are the same data; one test label changed is not.
    let copy = tmp.path().join("copy");
    let other = tmp.path().join("other");
    for dir in [&copy, &other] {
        std::fs::create_dir_all(dir)?;
        for f in std::fs::read_dir(&fixture)? {
            let f = f?.path();
            if f.extension().is_some_and(|e| e == "gz") {
                std::fs::copy(&f, dir.join(f.file_name().unwrap_or_default()))?;
            }
        }
    }
    std::fs::write(copy.join("classes.txt"), "zero\none\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\n")?;
    let mut labels = gaze_data::Mnist::fixture()?.test.labels;
    labels[0] = (labels[0] + 1) % 10;
    let mut idx = vec![0, 0, 8, 1];
    idx.extend((labels.len() as u32).to_be_bytes());
    idx.extend(&labels);
    std::fs::write(other.join("t10k-labels-idx1-ubyte"), idx)?; // read before the .gz beside it
    let eval = |dir: &Path, extra: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new(env!("CARGO_BIN_EXE_gaze"))
            .args(["--data-dir", dir.to_str().unwrap_or_default(), "eval", run])
            .args(extra)
            .env_remove("GAZE_DATA_DIR")
            .output()?)
    };
    let same = eval(&copy, &[])?;
    let said = String::from_utf8_lossy(&same.stdout);
    anyhow::ensure!(same.status.success(), "{}", String::from_utf8_lossy(&same.stderr));
    assert!(said.contains("  seven "), "the folder's class names name the classes: {said}");
    let refused = eval(&other, &[])?;
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "another test set must be refused: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    assert!(err.contains("data.json") && err.contains("--other-data") && err.contains(&folder), "{err}");
    let asked = eval(&other, &["--other-data"])?;
    assert!(asked.status.success() && String::from_utf8_lossy(&asked.stdout).contains("test accuracy"));
    // Inference reads only the run folder: no data is needed, wherever it points.
    let png = tmp.path().join("digit.png");
    let m = gaze_data::Mnist::fixture()?;
    gaze_data::Image::grey(28, 28, m.test.image(0).unwrap_or_default().to_vec())?.save_png(&png)?;
    let out = Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(["--data-dir", "/no/such/gaze/data", "infer", run, png.to_str().unwrap_or_default()])
        .env("HF_HUB_OFFLINE", "1")
        .output()?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("class "));
    Ok(())
}

/// `gaze infer` on a VQA run answers a question given with `--question`, and without one says
/// what it needs.
#[test]
fn infer_answers_a_question_about_an_image() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/han-barn.toml");
    let text = std::fs::read_to_string(file)?
        .replace("train_scenes = 8000", "train_scenes = 24")
        .replace("val_scenes = 300", "val_scenes = 4")
        .replace("test_scenes = 400       # 2,400 test questions", "test_scenes = 4")
        .replace("epochs = 15", "epochs = 1\npictures = 0");
    let cfg = tmp.path().join("han.toml");
    std::fs::write(&cfg, text)?;
    let runs = tmp.path().join("runs");
    let out =
        gaze(&["train", cfg.to_str().unwrap_or_default(), "--runs", runs.to_str().unwrap_or_default(), "--quiet"])?;
    let run = out.lines().find_map(|l| l.strip_prefix("run: ")).ok_or_else(|| anyhow::anyhow!("no run in {out}"))?;
    let png = tmp.path().join("scene.png");
    gaze_data::Image::filled(64, 64, 3, 90).save_png(&png)?;
    let out = gaze(&["infer", run, png.to_str().unwrap_or_default(), "--question", "what color is the cow?"])?;
    assert!(out.lines().count() >= 2 && out.contains("overlay:"), "{out}");
    let failed =
        Command::new(env!("CARGO_BIN_EXE_gaze")).args(["infer", run, png.to_str().unwrap_or_default()]).output()?;
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success() && err.contains("--question"), "{err}");
    // Exported, it carries its question vocabulary and answers, and answers as the run does.
    let shared = tmp.path().join("vqa-export");
    gaze(&["export", run, shared.to_str().unwrap_or_default()])?;
    let q = ["--question", "what color is the cow?"];
    let again = gaze(&["infer", shared.to_str().unwrap_or_default(), png.to_str().unwrap_or_default(), q[0], q[1]])?;
    assert_eq!(again.lines().next(), out.lines().next(), "{again} vs {out}");
    Ok(())
}

/// Each parameter's name and the bits of its values.
type Params = Vec<(String, Vec<u32>)>;

/// The parameters of a run's `last` checkpoint, by name, and its per-epoch metrics without the
/// timing fields.
fn finished(run: &Path) -> anyhow::Result<(Params, Vec<String>)> {
    let loaded = gaze_train::checkpoint::load(&run.join("checkpoints/last.safetensors"), &candle_core::Device::Cpu)?;
    let mut params: Params = loaded
        .tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.flatten_all()?.to_vec1::<f32>()?.iter().map(|x| x.to_bits()).collect())))
        .collect::<anyhow::Result<_>>()?;
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let mut epochs = vec![];
    for line in std::fs::read_to_string(run.join("metrics.jsonl"))?.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line)?;
        if v["kind"] == "epoch" {
            if let Some(o) = v.as_object_mut() {
                o.remove("samples_per_s");
            }
            epochs.push(v.to_string());
        }
    }
    Ok((params, epochs))
}

/// kill -9 in the middle of a run (a checkpoint is written every step, so the kill may land in a
/// write), then `--resume`: the same parameters to the bit and the same per-epoch metrics as a
/// run never interrupted.
#[test]
fn a_run_killed_mid_way_resumes_to_the_same_bits() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cfg = tmp.path().join("tiny.toml");
    std::fs::write(
        &cfg,
        "name = \"killed\"\nseed = 4\n[model]\ntype = \"convnet\"\nhidden = 16\n[model.convnet]\nchannels = [4, 8]\n\
         [data]\ntype = \"mnist\"\nsource = \"fixture\"\ntrain_limit = 320\ntest_limit = 32\n\
         [train]\nepochs = 3\nbatch_size = 16\nlog_every = 1\ncheckpoint_every = 1\npictures = 0\n",
    )?;
    let train = |runs: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_gaze"));
        c.args(["--threads", "1", "train"]).arg(&cfg).arg("--runs").arg(runs).arg("--quiet");
        c
    };
    let whole = tmp.path().join("whole");
    let out = train(&whole).output()?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run_of = |runs: &Path| -> anyhow::Result<std::path::PathBuf> {
        let dir = runs.join("killed");
        let mut found = std::fs::read_dir(&dir)?.filter_map(|e| e.ok().map(|e| e.path()));
        found.next().ok_or_else(|| anyhow::anyhow!("no run in {}", dir.display()))
    };
    let want = finished(&run_of(&whole)?)?;
    assert_eq!(want.1.len(), 3);

    let cut = tmp.path().join("cut");
    let mut child = train(&cut).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn()?;
    // Wait for step 25 of 60 (epoch 2), then kill.
    let started = std::time::Instant::now();
    loop {
        let steps = run_of(&cut)
            .ok()
            .and_then(|r| std::fs::read_to_string(r.join("metrics.jsonl")).ok())
            .map_or(0, |t| t.lines().filter(|l| l.contains("\"kind\":\"step\"")).count());
        if steps >= 25 {
            break;
        }
        anyhow::ensure!(child.try_wait()?.is_none(), "the run ended before it could be killed");
        anyhow::ensure!(started.elapsed().as_secs() < 120, "no progress in 120 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill()?; // SIGKILL
    child.wait()?;
    let run = run_of(&cut)?;
    let out = Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(["--threads", "1", "train", "--quiet", "--resume"])
        .arg(&run)
        .arg("--runs")
        .arg(&cut)
        .output()?;
    anyhow::ensure!(out.status.success(), "resume failed: {}", String::from_utf8_lossy(&out.stderr));
    let got = finished(&run)?;
    assert_eq!(got.0.len(), want.0.len());
    for ((ka, a), (kb, b)) in want.0.iter().zip(&got.0) {
        assert!(ka == kb && a == b, "`{ka}` differs after the kill and resume");
    }
    assert_eq!(got.1, want.1, "per-epoch metrics");
    Ok(())
}

/// `gaze compare` on two tiny runs that differ in their learning rate: the setting, both runs'
/// metrics, and one chart of their curves.
#[test]
fn compare_names_what_differs_and_shows_both_runs() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let runs = tmp.path().join("runs");
    let mut dirs = vec![];
    for lr in ["0.003", "0.03"] {
        let cfg = tmp.path().join(format!("lr{lr}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "name = \"cmp\"\nseed = 2\n[model]\ntype = \"convnet\"\nhidden = 16\n[model.convnet]\nchannels = [4, 8]\n\
                 [data]\ntype = \"mnist\"\nsource = \"fixture\"\ntrain_limit = 64\ntest_limit = 32\n[optim]\nlr = {lr}\n\
                 [train]\nepochs = 2\nbatch_size = 16\npictures = 0\n"
            ),
        )?;
        let (cfg, runs) = (cfg.to_str().unwrap_or_default(), runs.to_str().unwrap_or_default());
        let out = gaze(&["--threads", "1", "train", cfg, "--runs", runs, "--quiet"])?;
        let run = out.lines().find_map(|l| l.strip_prefix("run: ")).ok_or_else(|| anyhow::anyhow!("{out}"))?;
        dirs.push(run.to_string());
    }
    let png = tmp.path().join("cmp.png");
    let out = gaze(&["compare", &dirs[0], &dirs[1], "--out", png.to_str().unwrap_or_default()])?;
    let lr_line = out.lines().find(|l| l.trim_start().starts_with("optim.lr")).unwrap_or_default();
    assert!(lr_line.contains("0.003") && lr_line.contains("0.03"), "{out}");
    assert!(!out.contains("  seed "), "equal settings are not listed: {out}");
    let acc = out.lines().find(|l| l.trim_start().starts_with("test_acc_pct")).unwrap_or_default();
    assert_eq!(acc.split_whitespace().count(), 3, "a value for each run: {out}");
    assert!(png.is_file() && gaze_data::Image::load(&png, false)?.width == 900);
    let e = Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(["compare", &dirs[0], tmp.path().to_str().unwrap_or_default()])
        .output()?;
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("is not a run folder"));
    Ok(())
}

/// A hub repository id where a folder is expected: without the `hub` feature the error says how
/// to build gaze to fetch it; with it, offline and not cached, the error names the repository.
#[test]
fn infer_from_a_hub_id_says_what_it_needs() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let png = tmp.path().join("x.png");
    gaze_data::Image::filled(28, 28, 1, 0).save_png(&png)?;
    let out = Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(["infer", "gaze-no-such-owner/no-such-model", png.to_str().unwrap_or_default()])
        .current_dir(tmp.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("gaze-no-such-owner/no-such-model"), "{err}");
    if cfg!(feature = "hub") {
        assert!(err.contains("config.json"), "{err}");
    } else {
        assert!(err.contains("--features hub"), "{err}");
    }
    Ok(())
}

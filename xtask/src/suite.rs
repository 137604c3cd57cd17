//! The benchmark suite CI compares: `cargo xtask bench suite [--json OUT]` times a fixed set of
//! training steps (each in a child process, so each gets the thread count it is measured at) and
//! writes one JSON; `cargo xtask bench compare [--json OUT] [--baseline FILE] [--margin M]` prints
//! every row against `benchmarks/baseline.json` and fails when a row's step is slower than the
//! baseline's by more than the margin both on its first measurement and when timed again (these
//! machines are noisy: one slow reading is not a regression).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{json, Value};

/// One row of the suite: a model's training step at a batch size and thread count.
struct Case {
    what: &'static str,
    batch: usize,
    threads: usize,
}

/// The fixed set: the ConvNet baseline, RAM on MNIST and on 100x100 clutter, HAN on
/// Sort-of-CLEVR (rows are questions: 320 = 16 images), the attention decoder on MNIST pairs.
const CASES: [Case; 5] = [
    Case { what: "mnist-convnet", batch: 64, threads: 2 },
    Case { what: "ram-mnist-28", batch: 128, threads: 1 },
    Case { what: "ram-cluttered-100", batch: 128, threads: 1 },
    Case { what: "han-sort-of-clevr", batch: 320, threads: 1 },
    Case { what: "mnist-pairs-read", batch: 64, threads: 2 },
];

fn key(what: &str, batch: usize, threads: usize) -> String {
    format!("{what} b{batch} t{threads}")
}

/// Times one case in a child process (`xtask bench NAME --batch B --threads T`) and returns its row.
fn measure(what: &str, batch: usize, threads: usize, reps: usize) -> anyhow::Result<Value> {
    let dir = tempfile_dir()?;
    let out = dir.join(format!("{what}.json"));
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let status = std::process::Command::new(exe)
        .args(["bench", what, "--batch", &batch.to_string(), "--threads", &threads.to_string()])
        .args(["--reps", &reps.to_string(), "--json"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("timing {what}"))?;
    anyhow::ensure!(status.success(), "timing {what} failed ({status})");
    let text = std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    let rows: Vec<Value> = serde_json::from_str(&text).with_context(|| format!("parsing {}", out.display()))?;
    let row = rows.into_iter().next().with_context(|| format!("{} holds no row", out.display()))?;
    Ok(json!({
        "key": key(what, batch, threads),
        "what": what, "batch": row["batch"], "threads": threads,
        "step_ms": row["step_ms"], "samples_per_s": row["samples_per_s"],
        "inference_ms": row["inference_ms"], "inference_samples_per_s": row["inference_samples_per_s"],
    }))
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = crate::experiment::root().join("runs/bench/suite-rows");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// What the machine is, for the reader of a baseline.
fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    json!({ "cpu": cpu, "cores": cores, "os": std::env::consts::OS, "arch": std::env::consts::ARCH })
}

/// Runs every case and writes the suite's JSON to `out` (default `runs/bench/suite.json`).
pub fn run_suite(out: Option<&Path>, reps: usize) -> anyhow::Result<()> {
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| crate::experiment::root().join("runs/bench/suite.json"));
    let mut rows = vec![];
    println!("| row | step ms | train samples/s | inference ms | inference samples/s |");
    println!("|---|---|---|---|---|");
    for c in &CASES {
        let row = measure(c.what, c.batch, c.threads, reps)?;
        println!(
            "| {} | {:.2} | {:.0} | {:.3} | {:.0} |",
            row["key"].as_str().unwrap_or(""),
            row["step_ms"].as_f64().unwrap_or(f64::NAN),
            row["samples_per_s"].as_f64().unwrap_or(f64::NAN),
            row["inference_ms"].as_f64().unwrap_or(f64::NAN),
            row["inference_samples_per_s"].as_f64().unwrap_or(f64::NAN),
        );
        rows.push(row);
    }
    let doc = json!({
        "git_rev": gaze_train::record::git_rev_in(&crate::experiment::root()),
        "date": gaze_train::record::now_utc(),
        "machine": machine(),
        "reps": reps,
        "rows": rows,
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

fn rows_of(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    doc["rows"].as_array().cloned().with_context(|| format!("{}: no `rows` array", path.display()))
}

/// Compares a suite's JSON (default `runs/bench/suite.json`, run first when missing) with the
/// baseline; re-times each row over the margin once before calling it slower.
pub fn compare(current: Option<&Path>, baseline: &Path, margin: f64, reps: usize) -> anyhow::Result<()> {
    anyhow::ensure!(margin.is_finite() && margin >= 0.0, "--margin {margin} must be a number >= 0");
    let root = crate::experiment::root();
    let current = current.map(Path::to_path_buf).unwrap_or_else(|| root.join("runs/bench/suite.json"));
    if !current.is_file() {
        run_suite(Some(&current), reps)?;
    }
    let baseline = if baseline.is_absolute() { baseline.to_path_buf() } else { root.join(baseline) };
    let (now, base) = (rows_of(&current)?, rows_of(&baseline)?);
    println!(
        "Step time against {} (a row fails above {:.0}% of its baseline, on two timings)\n",
        baseline.display(),
        100.0 * (1.0 + margin)
    );
    println!("| row | baseline ms | now ms | now / baseline | verdict |");
    println!("|---|---|---|---|---|");
    let mut failed = vec![];
    for b in &base {
        let k = b["key"].as_str().unwrap_or("");
        let base_ms = b["step_ms"].as_f64().unwrap_or(f64::NAN);
        let Some(n) = now.iter().find(|r| r["key"] == b["key"]) else {
            println!("| {k} | {base_ms:.2} | - | - | missing from the current run |");
            failed.push(k.to_string());
            continue;
        };
        let mut ms = n["step_ms"].as_f64().unwrap_or(f64::NAN);
        let mut verdict = "ok";
        let within = |ms: f64| ms <= base_ms * (1.0 + margin); // false for NaN: a missing figure is re-timed
        if !within(ms) {
            // One more timing before a verdict.
            let (what, batch, threads) = (
                b["what"].as_str().unwrap_or(""),
                b["batch"].as_u64().unwrap_or(1) as usize,
                b["threads"].as_u64().unwrap_or(1) as usize,
            );
            let again = measure(what, batch, threads, reps)?["step_ms"].as_f64().unwrap_or(f64::NAN);
            ms = ms.min(again);
            verdict = if within(ms) { "ok on the second timing" } else { "SLOWER" };
            if verdict == "SLOWER" {
                failed.push(k.to_string());
            }
        }
        println!("| {k} | {base_ms:.2} | {ms:.2} | {:.2} | {verdict} |", ms / base_ms);
    }
    anyhow::ensure!(
        failed.is_empty(),
        "slower than the baseline by more than {:.0}%: {}",
        100.0 * margin,
        failed.join(", ")
    );
    Ok(())
}

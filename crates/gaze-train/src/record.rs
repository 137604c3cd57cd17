//! The run record: what a run says of itself (git revision, command, time, data, final
//! metrics), written to `summary.json` and read by reports, `RESULTS.md` and resumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::metrics::KindSummary;

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    /// The experiment.
    pub name: String,
    /// The run folder.
    pub run_dir: PathBuf,
    /// Final metrics by name (`test_acc_pct`, `test_error_pct`, `val_acc_pct` ...).
    pub metrics: BTreeMap<String, f64>,
    /// Wall-clock seconds of the whole run (this process and any it resumed).
    pub wall_s: f64,
    /// Training examples per second (training steps only).
    pub samples_per_s: f64,
    /// Global steps done.
    pub steps: u64,
    /// Whether the run stopped before its last epoch (`stop_after_steps`).
    pub stopped_early: bool,
    /// Git revision of the code.
    pub git_rev: String,
    /// The command that started it.
    pub command: String,
    /// When it finished (UTC, RFC 3339).
    pub date: String,
    /// Where the data came from.
    pub data: String,
    /// Test-set means of the model's statistics (attention entropy per step ...).
    #[serde(default)]
    pub stats: BTreeMap<String, f64>,
    /// Test accuracy and cells kept per question kind (VQA).
    #[serde(default)]
    pub per_kind: BTreeMap<String, KindSummary>,
}

/// The git revision of the working tree (`+dirty` when it has changes), or `unknown`. The
/// results table (`experiments/RESULTS.md`) is left out of the check: finished experiments write
/// it, so a run started while another one's row is not yet committed is not marked dirty.
pub fn git_rev() -> String {
    git_rev_in(Path::new("."))
}

/// [`git_rev`] of the repository holding `dir`.
pub fn git_rev_in(dir: &Path) -> String {
    let out = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match out(&["rev-parse", "--short=10", "HEAD"]) {
        Some(rev) => {
            let status = [
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":(top)",
                ":(top,exclude)experiments/RESULTS.md",
            ];
            if out(&status).is_some_and(|s| !s.is_empty()) {
                format!("{rev}+dirty")
            } else {
                rev
            }
        }
        None => "unknown".into(),
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ` (UTC), without a date crate.
pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil-from-days (H. Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_rev_is_dirty_for_code_changes_but_not_for_the_results_table() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let git = |args: &[&str]| -> anyhow::Result<()> {
            let ok = std::process::Command::new("git").arg("-C").arg(dir.path()).args(args).output()?.status.success();
            anyhow::ensure!(ok, "git {args:?} failed");
            Ok(())
        };
        git(&["init", "-q"])?;
        std::fs::create_dir(dir.path().join("experiments"))?;
        std::fs::write(dir.path().join("experiments/RESULTS.md"), "| a |\n")?;
        std::fs::write(dir.path().join("model.rs"), "fn f() {}\n")?;
        git(&["add", "."])?;
        git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one"])?;
        let clean = git_rev_in(dir.path());
        assert!(clean.len() == 10 && !clean.contains("dirty"), "{clean}");
        std::fs::write(dir.path().join("experiments/RESULTS.md"), "| a |\n| b |\n")?;
        assert_eq!(git_rev_in(&dir.path().join("experiments")), clean, "a new results row is not a code change");
        std::fs::write(dir.path().join("model.rs"), "fn g() {}\n")?;
        assert_eq!(git_rev_in(&dir.path().join("experiments")), format!("{clean}+dirty"));
        Ok(())
    }
}

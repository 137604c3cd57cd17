//! `experiments/RESULTS.md`: one markdown table, one row per metric of the newest full run of
//! each experiment, with exactly the columns
//! `| experiment | metric | value | target | wall_s | samples_per_s | git_rev | date | command |`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Result, TrainError};
use crate::record::RunSummary;

/// The table's header row.
pub const HEADER: &str = "| experiment | metric | value | target | wall_s | samples_per_s | git_rev | date | command |";

const PREAMBLE: &str = "# Measured results\n\nWritten by `cargo xtask experiment <name>`: one row per metric of the newest full run of each\nexperiment. Nothing here is typed by hand. `git_rev` is the revision the run started at (and, for a\nrun resumed at another, \"(resumed at REV)\"). A row is *stale* when code its experiment runs has\nchanged since that revision: it was measured on the code it names and may differ at HEAD.\n`cargo xtask results check` lists the stale rows and the changes that make them so.\n\n";

/// The table's rows in `text`, each its nine cells (lines of another width are skipped).
pub fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("| experiment ") && !l.starts_with("|---"))
        .map(|l| l.trim().trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect::<Vec<_>>())
        .filter(|r| r.len() == 9)
        .collect()
}

/// Replaces the rows of `summary.name` in the table at `path` (creating it if needed) with one row
/// per metric of `summary`; other experiments' rows are kept; rows are sorted by experiment then
/// metric.
pub fn update(path: &Path, summary: &RunSummary, targets: &BTreeMap<String, String>) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut rows: Vec<Vec<String>> = rows(&text).into_iter().filter(|r| r[0] != summary.name).collect();
    for (metric, value) in &summary.metrics {
        rows.push(vec![
            summary.name.clone(),
            metric.clone(),
            format!("{value}"),
            targets.get(metric).cloned().unwrap_or_default(),
            format!("{:.1}", summary.wall_s),
            format!("{:.0}", summary.samples_per_s),
            summary.git_rev.clone(),
            summary.date.chars().take(10).collect(),
            format!("`{}`", summary.command.replace('|', "\\|").trim_matches('`')),
        ]);
    }
    rows.sort_by(|a, b| (&a[0], &a[1]).cmp(&(&b[0], &b[1])));
    let mut out = String::from(PREAMBLE);
    out += HEADER;
    out += "\n|---|---|---|---|---|---|---|---|---|\n";
    for r in rows {
        out += &format!("| {} |\n", r.join(" | "));
    }
    gaze_data::write_atomic(path, out.as_bytes()).map_err(TrainError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(name: &str, v: f64) -> RunSummary {
        RunSummary {
            name: name.into(),
            run_dir: "runs/x".into(),
            metrics: [("test_error_pct".to_string(), v)].into(),
            wall_s: 12.34,
            samples_per_s: 999.6,
            steps: 3,
            stopped_early: false,
            git_rev: "abc".into(),
            command: "cargo xtask experiment x".into(),
            date: "2026-11-21T10:00:00Z".into(),
            data: "d".into(),
            stats: BTreeMap::new(),
            per_kind: BTreeMap::new(),
        }
    }

    #[test]
    fn rows_are_replaced_per_experiment() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::io("tmp", e))?;
        let p = dir.path().join("RESULTS.md");
        let t: BTreeMap<String, String> = [("test_error_pct".to_string(), "<= 1.0".to_string())].into();
        update(&p, &summary("b", 2.0), &t)?;
        update(&p, &summary("a", 1.5), &t)?;
        update(&p, &summary("b", 0.9), &t)?;
        let text = std::fs::read_to_string(&p).map_err(|e| TrainError::io(&p, e))?;
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| a") || l.starts_with("| b")).collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(
            rows[1].starts_with("| b | test_error_pct | 0.9 | <= 1.0 | 12.3 | 1000 | abc | 2026-11-21 |"),
            "{}",
            rows[1]
        );
        assert!(text.contains(HEADER));
        Ok(())
    }
}

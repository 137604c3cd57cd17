//! VQA results per question kind: accuracy per kind, on relational and non-relational questions,
//! and, for a hard attention, the share of grid cells kept per kind and whether the cells of the
//! objects a question is about (its focus) were among them, with the accuracy either way.

use std::collections::BTreeMap;

use super::{class_right, round4, split_pcts, KindSummary, Looked, Measured, Metric, Rows, Tally};
use crate::error::Result;

/// Per-kind tallies.
#[derive(Debug, Clone, Default)]
pub struct QuestionKinds {
    by_kind: BTreeMap<String, Tally>,
    relational: (Tally, Tally),
    kept: BTreeMap<String, (f64, u64)>,
    focus: BTreeMap<String, (Tally, Tally)>,
}

/// Whether the grid cells (a (rows, cols) 0/1 mask) holding every point (x, y), given as
/// fractions of the image's width and height, are kept.
pub fn focus_cells_kept(mask: &[Vec<f32>], points: &[(f32, f32)]) -> bool {
    let (rows, cols) = (mask.len(), mask.first().map_or(0, Vec::len));
    let cell = |f: f32, n: usize| ((f.clamp(0.0, 1.0) * n as f32) as usize).min(n.saturating_sub(1));
    points
        .iter()
        .all(|&(x, y)| mask.get(cell(y, rows)).and_then(|row| row.get(cell(x, cols))).is_some_and(|&v| v > 0.5))
}

impl Metric for QuestionKinds {
    fn update(&mut self, b: &Rows) -> Result<()> {
        let masks = match b.looked {
            Some(Looked::Grid { maps, hard: true }) => Some(maps),
            _ => None,
        };
        for (r, (p, row)) in b.predicted.iter().zip(b.rows).enumerate() {
            if row.kind.is_empty() {
                continue;
            }
            let ok = class_right(p, &row.truth);
            self.by_kind.entry(row.kind.clone()).or_default().add(ok);
            if row.relational { &mut self.relational.0 } else { &mut self.relational.1 }.add(ok);
            if let Some(m) = masks.and_then(|m| m.get(r)) {
                if !row.boxes.is_empty() {
                    let e = self.focus.entry(row.kind.clone()).or_default();
                    if focus_cells_kept(m, &row.centres) { &mut e.0 } else { &mut e.1 }.add(ok);
                }
                let cells = m.iter().map(Vec::len).sum::<usize>().max(1);
                let share = m.iter().flatten().sum::<f32>() / cells as f32;
                let e = self.kept.entry(row.kind.clone()).or_insert((0.0, 0));
                e.0 += 100.0 * f64::from(share);
                e.1 += 1;
            }
        }
        Ok(())
    }

    fn finish(&self, into: &mut Measured) {
        if self.by_kind.is_empty() {
            return;
        }
        let (rel, nonrel) = self.relational;
        if rel.total > 0 {
            into.scores.insert("acc_rel_pct".into(), round4(rel.pct()));
            into.scores.insert("acc_nonrel_pct".into(), round4(nonrel.pct()));
        }
        for (kind, t) in &self.by_kind {
            let focus = self.focus.get(kind).and_then(split_pcts);
            into.per_kind.insert(
                kind.clone(),
                KindSummary {
                    acc_pct: round4(t.pct()),
                    questions: t.total,
                    kept_pct: self.kept.get(kind).map(|&(s, c)| round4(s / c.max(1) as f64)),
                    focus_kept_pct: focus.map(|(share, _, _)| share),
                    acc_focus_kept_pct: focus.and_then(|(_, kept, _)| kept),
                    acc_focus_missed_pct: focus.and_then(|(_, _, missed)| missed),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn focus_cells_are_found_by_their_centres() {
        // a 2x3 grid keeping the top-left and bottom-right cells
        let mask = vec![vec![1.0, 0.0, 0.0], vec![0.0, 0.0, 1.0]];
        assert!(focus_cells_kept(&mask, &[(0.1, 0.2)]));
        assert!(focus_cells_kept(&mask, &[(0.1, 0.2), (0.9, 0.9)]));
        assert!(!focus_cells_kept(&mask, &[(0.1, 0.2), (0.5, 0.9)]), "the bottom-middle cell is dropped");
        assert!(!focus_cells_kept(&mask, &[(0.9, 0.2)]), "top-right is dropped");
        // edges and points outside the image fall in the border cells
        assert!(focus_cells_kept(&mask, &[(1.0, 1.0), (-0.5, 0.0)]));
        assert!(focus_cells_kept(&mask, &[]), "no focus: nothing to miss");
    }
}

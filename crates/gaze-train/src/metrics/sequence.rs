//! Sequence and token error of decoded sequences against their references (one for the digits
//! of a pair; several correct captions of a scene).
//!
//! - `sequence_error_pct`: the percent of sequences equal to no reference (every token, and the
//!   length).
//! - `token_error_pct`: the edit (Levenshtein) distance between decoded tokens and the nearest
//!   reference, summed over the corpus, per hundred tokens of those references (substitutions,
//!   insertions and deletions, as a word error rate counts them; it can pass 100 for long wrong
//!   outputs).

use super::{round4, Measured, Metric, Predicted, Rows, Truth};
use crate::error::Result;

/// Corpus totals.
#[derive(Debug, Clone, Default)]
pub struct SequenceError {
    sequences: u64,
    wrong: u64,
    edits: u64,
    tokens: u64,
}

/// The edit distance between `a` and `b`.
pub fn edit_distance(a: &[u32], b: &[u32]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(x != y)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Metric for SequenceError {
    fn update(&mut self, b: &Rows) -> Result<()> {
        for (p, row) in b.predicted.iter().zip(b.rows) {
            if let (Predicted::Tokens(got), Truth::Tokens(refs)) = (p, &row.truth) {
                // The nearest reference (the first of equally near ones).
                let (edits, want) = refs
                    .iter()
                    .map(|r| (edit_distance(got, r), r.len()))
                    .min_by_key(|&(e, _)| e)
                    .unwrap_or((got.len(), 0));
                self.sequences += 1;
                self.wrong += u64::from(edits != 0);
                self.edits += edits as u64;
                self.tokens += want as u64;
            }
        }
        Ok(())
    }

    fn finish(&self, into: &mut Measured) {
        if self.sequences == 0 {
            return;
        }
        into.scores.insert("sequence_error_pct".into(), round4(100.0 * self.wrong as f64 / self.sequences as f64));
        into.scores.insert("token_error_pct".into(), round4(100.0 * self.edits as f64 / self.tokens.max(1) as f64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Row;

    #[test]
    fn sequence_and_token_errors_count_edits() -> Result<()> {
        assert_eq!(edit_distance(&[1, 2, 3], &[1, 2, 3]), 0);
        assert_eq!(edit_distance(&[1, 3], &[1, 2, 3]), 1);
        assert_eq!(edit_distance(&[3, 2, 1], &[1, 2, 3]), 2);
        assert_eq!(edit_distance(&[], &[7, 7]), 2);
        let row = |r: Vec<u32>| Row {
            truth: Truth::Tokens(vec![r]),
            kind: String::new(),
            relational: false,
            boxes: vec![],
            centres: vec![],
            word_boxes: vec![],
        };
        let rows = [row(vec![4, 5]), row(vec![6, 7]), row(vec![8, 9])];
        let got = [Predicted::Tokens(vec![4, 5]), Predicted::Tokens(vec![6]), Predicted::Tokens(vec![9, 8])];
        let mut m = SequenceError::default();
        m.update(&crate::metrics::tests::plain(&rows, &got))?;
        let mut out = Measured::default();
        m.finish(&mut out);
        assert_eq!(out.scores["sequence_error_pct"], round4(200.0 / 3.0));
        assert_eq!(out.scores["token_error_pct"], 50.0, "3 edits in 6 tokens");
        // Several references: right when equal to any; edits counted against the nearest.
        let mut two = row(vec![4, 5, 6]);
        two.truth = Truth::Tokens(vec![vec![4, 5, 6], vec![6, 5]]);
        let rows = [two.clone(), two];
        let got = [Predicted::Tokens(vec![6, 5]), Predicted::Tokens(vec![6])];
        let mut m = SequenceError::default();
        m.update(&crate::metrics::tests::plain(&rows, &got))?;
        let mut out = Measured::default();
        m.finish(&mut out);
        assert_eq!(out.scores["sequence_error_pct"], 50.0);
        assert_eq!(out.scores["token_error_pct"], 25.0, "1 edit in 2 + 2 nearest tokens");
        Ok(())
    }
}

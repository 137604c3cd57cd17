//! Accuracy: the percent of rows (images, or questions) whose predicted class is the true one.
//! Answers outside the training answers can never be predicted and count as wrong; how many
//! there were is reported beside (`unknown_answers`).

use super::{class_right, round4, Measured, Metric, Rows, Tally, Truth};
use crate::error::Result;

/// Percent right and wrong.
#[derive(Debug, Clone, Default)]
pub struct Accuracy {
    all: Tally,
    unknown: u64,
    answers: bool,
}

impl Metric for Accuracy {
    fn update(&mut self, b: &Rows) -> Result<()> {
        for (p, r) in b.predicted.iter().zip(b.rows) {
            self.all.add(class_right(p, &r.truth));
            self.unknown += u64::from(matches!(r.truth, Truth::Class(None)));
            self.answers |= !r.kind.is_empty();
        }
        Ok(())
    }

    fn finish(&self, into: &mut Measured) {
        if self.all.total == 0 {
            return;
        }
        into.scores.insert("acc_pct".into(), round4(self.all.pct()));
        into.scores.insert("error_pct".into(), round4(100.0 - self.all.pct()));
        if self.answers {
            into.scores.insert("unknown_answers".into(), self.unknown as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Predicted, Row};

    #[test]
    fn unknown_answers_are_wrong_and_counted() -> Result<()> {
        let row = |t: Option<u32>| Row {
            truth: Truth::Class(t),
            kind: "k".into(),
            relational: false,
            boxes: vec![],
            centres: vec![],
            word_boxes: vec![],
        };
        let rows = [row(Some(1)), row(Some(2)), row(None), row(Some(0))];
        let predicted = [Predicted::Class(1), Predicted::Class(0), Predicted::Class(0), Predicted::Class(0)];
        let mut m = Accuracy::default();
        m.update(&crate::metrics::tests::plain(&rows, &predicted))?;
        let mut out = Measured::default();
        m.finish(&mut out);
        assert_eq!(out.scores["acc_pct"], 50.0);
        assert_eq!(out.scores["error_pct"], 50.0);
        assert_eq!(out.scores["unknown_answers"], 1.0);
        Ok(())
    }
}

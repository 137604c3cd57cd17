//! The cost of a hard attention's choice, from the statistics the model reports per batch: the
//! percent of grid cells kept (`cells_kept_pct`), the relational head's MFLOPs per question
//! (`head_mflops`) and, for AdaHAN capped at k, the percent of questions at the cap
//! (`at_cap_pct`). Means over the test questions.

use super::{round4, Measured, Metric, Rows};
use crate::error::Result;

const KEYS: [&str; 3] = ["cells_kept_pct", "head_mflops", "at_cap_pct"];

/// Row-weighted means of the cost statistics.
#[derive(Debug, Clone, Default)]
pub struct HardAttentionCost {
    sums: [(f64, u64); 3],
}

impl Metric for HardAttentionCost {
    fn update(&mut self, b: &Rows) -> Result<()> {
        let n = b.rows.len() as u64;
        for (k, sum) in KEYS.iter().zip(self.sums.iter_mut()) {
            if let Some((_, v)) = b.stats.iter().find(|(name, _)| name == k) {
                sum.0 += v * n as f64;
                sum.1 += n;
            }
        }
        Ok(())
    }

    fn finish(&self, into: &mut Measured) {
        for (k, &(s, n)) in KEYS.iter().zip(&self.sums) {
            if n > 0 {
                into.facts.insert((*k).to_string(), round4(s / n as f64));
            }
        }
    }
}

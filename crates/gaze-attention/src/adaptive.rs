//! AdaHAN's adaptive hard attention ("Learning Visual Question Answering by Bootstrapping Hard
//! Attention", section 3.2): softmax over the cells' presence (squared L2 norm); keep every cell
//! whose weight is at least a threshold (1/n by default), so the number kept varies per example;
//! at least one cell (the strongest) is always kept. Kept cells pass their features on
//! (differentiably), the rest are zeroed.
//!
//! Squared norms of unnormalised features reach the hundreds, and a softmax over them is one-hot:
//! one cell passes 1/n. `standardize` makes the rule scale-free: presence is turned into per-example
//! z-scores before the softmax (for normal scores about a third of the cells pass 1/n; fewer
//! when a few cells stand out).
//!
//! `max_cells` (gaze's addition, not the paper's) bounds the count: of the cells over the threshold
//! only the `max_cells` of highest weight are kept. Without it the threshold alone does not bound
//! the count: when m cells share one high presence and the rest one low one, each of the m has a
//! weight near 1/m, which passes a threshold of 1/n for any m < n.

use candle_core::{Result, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::{check_scored, shape_err};

/// Settings of [`AdaptiveHard`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveHardConfig {
    /// Keep cells whose softmax weight is at least this; `None`: 1/n (uniform).
    pub threshold: Option<f32>,
    /// Softmax over per-example z-scores of the presence instead of the raw presence.
    pub standardize: bool,
    /// Keep at most this many cells (the over-threshold cells of highest weight); `None`: no bound.
    pub max_cells: Option<usize>,
}

impl AdaptiveHardConfig {
    /// For tests.
    pub fn tiny() -> Self {
        Self::default()
    }
}

/// What an adaptive selection gives.
#[derive(Debug, Clone)]
pub struct AdaptiveSelection {
    /// 0/1 mask of kept cells (b, n).
    pub mask: Tensor,
    /// Features with dropped cells zeroed (b, n, d).
    pub kept: Tensor,
    /// Softmax of presence (b, n).
    pub weights: Tensor,
    /// Cells kept per example.
    pub counts: Vec<usize>,
}

impl AdaptiveSelection {
    /// The kept cells of each example gathered to the front, padded to the batch's largest count
    /// (at least 1) with zeros, and which of them are real. Shapes: feats (b, n, d) -> cells
    /// (b, m, d), valid (b, m) of 0/1; row r's real cells are its first `counts[r]`, in grid order.
    pub fn gather(&self, feats: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, n, d) = feats.dims3()?;
        let rows = self.mask.to_vec2::<f32>()?;
        if rows.len() != b || rows.first().is_some_and(|r| r.len() != n) {
            return Err(shape_err(
                "AdaptiveSelection::gather",
                format!("feats {:?} do not match the mask {:?}", feats.dims(), self.mask.dims()),
            ));
        }
        let m = self.counts.iter().copied().max().unwrap_or(1).max(1);
        let (mut idx, mut valid) = (Vec::with_capacity(b * m), Vec::with_capacity(b * m));
        for row in &rows {
            let kept: Vec<u32> = (0..n).filter(|&i| row[i] > 0.5).map(|i| i as u32).collect();
            for j in 0..m {
                idx.push(kept.get(j).copied().unwrap_or(0));
                valid.push(if j < kept.len() { 1f32 } else { 0.0 });
            }
        }
        let idx = Tensor::from_vec(idx, (b, m, 1), feats.device())?.broadcast_as((b, m, d))?.contiguous()?;
        let valid = Tensor::from_vec(valid, (b, m), feats.device())?;
        let cells = feats.gather(&idx, 1)?.broadcast_mul(&valid.unsqueeze(2)?)?;
        Ok((cells, valid))
    }
}

/// Adaptive hard attention (no parameters).
#[derive(Debug, Clone)]
pub struct AdaptiveHard {
    cfg: AdaptiveHardConfig,
}

impl AdaptiveHard {
    /// An adaptive selector; a threshold must be in (0, 1].
    pub fn new(cfg: &AdaptiveHardConfig) -> Result<Self> {
        if let Some(t) = cfg.threshold {
            if !(t > 0.0 && t <= 1.0) {
                return Err(shape_err("AdaptiveHard", format!("threshold {t} is not in (0, 1]")));
            }
        }
        if cfg.max_cells == Some(0) {
            return Err(shape_err("AdaptiveHard", "max_cells = 0 keeps nothing (it must be >= 1)".to_string()));
        }
        Ok(Self { cfg: cfg.clone() })
    }

    /// Shapes: feats (b, n, d) -> mask (b, n), kept (b, n, d), weights (b, n), counts (b).
    pub fn select(&self, feats: &Tensor) -> Result<AdaptiveSelection> {
        self.select_scored(feats, feats)
    }

    /// Like [`AdaptiveHard::select`], with presence measured on `scored` (b, n, e) and the kept
    /// cells taken from `feats` (b, n, d).
    pub fn select_scored(&self, feats: &Tensor, scored: &Tensor) -> Result<AdaptiveSelection> {
        let (b, n, _) = check_scored("AdaptiveHard", feats, scored)?;
        let threshold = self.cfg.threshold.unwrap_or(1.0 / n as f32);
        let mut presence = gaze_tensor::ops::presence(scored)?;
        if self.cfg.standardize {
            let centred = presence.broadcast_sub(&presence.mean_keepdim(D::Minus1)?)?;
            let std = (centred.sqr()?.mean_keepdim(D::Minus1)? + 1e-6)?.sqrt()?;
            presence = centred.broadcast_div(&std)?;
        }
        let weights = candle_nn::ops::softmax(&presence, D::Minus1)?;
        let rows = weights.detach().to_vec2::<f32>()?;
        let mut mask = vec![0f32; b * n];
        let mut counts = Vec::with_capacity(b);
        for (r, row) in rows.iter().enumerate() {
            let mut over: Vec<usize> = (0..n).filter(|&i| row[i] >= threshold).collect();
            if let Some(cap) = self.cfg.max_cells {
                if over.len() > cap {
                    // highest weight first; ties by index, so the choice is deterministic
                    over.sort_by(|&a, &c| row[c].total_cmp(&row[a]).then(a.cmp(&c)));
                    over.truncate(cap);
                }
            }
            for &i in &over {
                mask[r * n + i] = 1.0;
            }
            let mut count = over.len();
            if count == 0 {
                let best = row.iter().enumerate().fold(0, |a, (i, &v)| if v > row[a] { i } else { a });
                mask[r * n + best] = 1.0;
                count = 1;
            }
            counts.push(count);
        }
        let mask = Tensor::from_vec(mask, (b, n), feats.device())?;
        let kept = feats.broadcast_mul(&mask.unsqueeze(2)?)?;
        Ok(AdaptiveSelection { mask, kept, weights, counts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn gather_moves_each_rows_kept_cells_to_the_front_and_pads_with_zeros() -> Result<()> {
        let dev = Device::Cpu;
        // Two rows of four 1-d cells; row 0 keeps cells 1 and 3, row 1 keeps cell 2.
        let feats = Tensor::new(&[[[1f32], [2.0], [3.0], [4.0]], [[5.0], [6.0], [7.0], [8.0]]], &dev)?;
        let mask = Tensor::new(&[[0f32, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]], &dev)?;
        let sel = AdaptiveSelection { kept: feats.clone(), weights: mask.clone(), mask, counts: vec![2, 1] };
        let (cells, valid) = sel.gather(&feats)?;
        assert_eq!(cells.to_vec3::<f32>()?, vec![vec![vec![2.0], vec![4.0]], vec![vec![7.0], vec![0.0]]]);
        assert_eq!(valid.to_vec2::<f32>()?, vec![vec![1.0, 1.0], vec![1.0, 0.0]]);
        let e = sel.gather(&Tensor::zeros((2, 3, 1), candle_core::DType::F32, &dev)?).err();
        assert!(e.map(|e| e.to_string()).unwrap_or_default().contains("gather"));
        Ok(())
    }

    #[test]
    fn keeps_exactly_the_cells_over_threshold() -> Result<()> {
        // presence 0, 1, 2.25, 0.01: softmax ~ (0.07, 0.19, 0.67, 0.07); 1/n = 0.25 keeps one
        let f = Var::new(&[[[0f32], [1.0], [1.5], [0.1]]], &Device::Cpu)?;
        let sel = AdaptiveHard::new(&AdaptiveHardConfig::default())?.select(f.as_tensor())?;
        let w = sel.weights.to_vec2::<f32>()?[0].clone();
        let by_hand: Vec<f32> = w.iter().map(|&v| if v >= 0.25 { 1.0 } else { 0.0 }).collect();
        assert_eq!(sel.mask.to_vec2::<f32>()?[0], by_hand);
        assert_eq!(sel.counts, vec![1]);
        let low = AdaptiveHard::new(&AdaptiveHardConfig { threshold: Some(0.1), ..Default::default() })?
            .select(f.as_tensor())?;
        assert_eq!(low.mask.to_vec2::<f32>()?[0], vec![0.0, 1.0, 1.0, 0.0]);
        assert_eq!(low.counts, vec![2]);
        // gradient reaches the kept cells' features directly; dropped cells get only the
        // softmax path, which is zero here because the mask stops kept * 0
        let g = low.kept.sum_all()?.backward()?;
        let grad = g.get(f.as_tensor()).map(|t| t.to_vec3::<f32>()).transpose()?.unwrap_or_default();
        assert_eq!(grad[0], vec![vec![0.0], vec![1.0], vec![1.0], vec![0.0]]);
        // a threshold nobody passes still keeps the strongest cell
        let high = AdaptiveHard::new(&AdaptiveHardConfig { threshold: Some(0.99), ..Default::default() })?
            .select(f.as_tensor())?;
        assert_eq!(high.mask.to_vec2::<f32>()?[0], vec![0.0, 0.0, 1.0, 0.0]);
        assert!(AdaptiveHard::new(&AdaptiveHardConfig { threshold: Some(1.5), ..Default::default() }).is_err());
        Ok(())
    }

    #[test]
    fn max_cells_keeps_the_strongest_of_the_cells_over_threshold() -> Result<()> {
        // presence 0, 1, 2.25, 0.01, 1.44: threshold 0.1 passes cells 1, 2 and 4
        let f = Tensor::new(&[[[0f32], [1.0], [1.5], [0.1], [1.2]]], &Device::Cpu)?;
        let free = AdaptiveHard::new(&AdaptiveHardConfig { threshold: Some(0.1), ..Default::default() })?.select(&f)?;
        assert_eq!(free.mask.to_vec2::<f32>()?[0], vec![0.0, 1.0, 1.0, 0.0, 1.0]);
        let capped = |cap| {
            AdaptiveHard::new(&AdaptiveHardConfig { threshold: Some(0.1), max_cells: Some(cap), ..Default::default() })?
                .select(&f)
        };
        let two = capped(2)?;
        assert_eq!(two.mask.to_vec2::<f32>()?[0], vec![0.0, 0.0, 1.0, 0.0, 1.0]);
        assert_eq!(two.counts, vec![2]);
        // a cap above the count changes nothing
        assert_eq!(capped(4)?.mask.to_vec2::<f32>()?, free.mask.to_vec2::<f32>()?);
        let zero = AdaptiveHardConfig { max_cells: Some(0), ..Default::default() };
        assert!(AdaptiveHard::new(&zero).is_err());
        Ok(())
    }

    #[test]
    fn uniform_presence_keeps_every_cell() -> Result<()> {
        let f = Tensor::ones((2, 5, 3), candle_core::DType::F32, &Device::Cpu)?;
        let sel = AdaptiveHard::new(&AdaptiveHardConfig::default())?.select(&f)?;
        assert_eq!(sel.counts, vec![5, 5]);
        Ok(())
    }

    #[test]
    fn standardized_presence_is_scale_free_and_keeps_more_than_the_strongest() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let vals: Vec<f32> = (0..16).map(|i| ((i * 7 % 16) as f32) * 0.5 + 1.0).collect();
        let f = Tensor::from_vec(vals, (1, 16, 1), &dev)?;
        let raw = AdaptiveHard::new(&AdaptiveHardConfig::default())?.select(&(&f * 30.0)?)?;
        assert_eq!(raw.counts, vec![1], "a softmax over large squared norms keeps one cell");
        let std = AdaptiveHardConfig { standardize: true, ..Default::default() };
        let a = AdaptiveHard::new(&std)?.select(&f)?;
        let b = AdaptiveHard::new(&std)?.select(&(&f * 30.0)?)?;
        assert_eq!(a.mask.to_vec2::<f32>()?, b.mask.to_vec2::<f32>()?);
        assert!(a.counts[0] > 1 && a.counts[0] < 16, "{:?}", a.counts);
        Ok(())
    }
}

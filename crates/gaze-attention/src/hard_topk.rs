//! HAN's hard attention ("Learning Visual Question Answering by Bootstrapping Hard Attention",
//! Malinowski et al. 2018, section 3): presence = squared L2 norm of each cell, keep the k cells
//! of highest presence. The selection is not differentiated; the kept cells' features are, so
//! the norm itself can be learned.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::{check_scored, shape_err};

/// Settings of [`HardTopK`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HardTopKConfig {
    /// Cells kept per example.
    pub k: usize,
}

impl Default for HardTopKConfig {
    /// 16 of Sort-of-CLEVR's 64 cells (a quarter; the paper studies fractions of the grid).
    fn default() -> Self {
        Self { k: 16 }
    }
}

impl HardTopKConfig {
    /// For tests.
    pub fn tiny() -> Self {
        Self { k: 2 }
    }
}

/// What a hard selection gives.
#[derive(Debug, Clone)]
pub struct HardSelection {
    /// 0/1 mask of kept cells (b, n).
    pub mask: Tensor,
    /// Kept features in presence order (b, k, d).
    pub kept: Tensor,
    /// Indices of kept cells (b, k) u32.
    pub indices: Tensor,
    /// Presence of every cell (b, n).
    pub presence: Tensor,
}

/// Top-k hard attention (no parameters).
#[derive(Debug, Clone)]
pub struct HardTopK {
    cfg: HardTopKConfig,
}

impl HardTopK {
    /// A top-k selector.
    pub fn new(cfg: &HardTopKConfig) -> Result<Self> {
        if cfg.k == 0 {
            return Err(shape_err("HardTopK", "k must be at least 1".into()));
        }
        Ok(Self { cfg: cfg.clone() })
    }

    /// Shapes: feats (b, n, d) -> mask (b, n), kept (b, k, d), indices (b, k).
    pub fn select(&self, feats: &Tensor) -> Result<HardSelection> {
        self.select_scored(feats, feats)
    }

    /// Like [`HardTopK::select`], with presence measured on `scored` (b, n, e) and the kept
    /// cells taken from `feats` (b, n, d): say, features without the coordinates appended.
    pub fn select_scored(&self, feats: &Tensor, scored: &Tensor) -> Result<HardSelection> {
        let (b, n, d) = check_scored("HardTopK", feats, scored)?;
        if self.cfg.k > n {
            return Err(shape_err("HardTopK", format!("k = {} is larger than the grid's {n} cells", self.cfg.k)));
        }
        let presence = gaze_tensor::ops::presence(scored)?;
        let (mask, indices) = gaze_tensor::ops::top_k_mask(&presence.detach(), self.cfg.k)?;
        let idx = indices.unsqueeze(2)?.broadcast_as((b, self.cfg.k, d))?.contiguous()?;
        let kept = feats.gather(&idx, 1)?;
        Ok(HardSelection { mask, kept, indices, presence })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor, Var};

    #[test]
    fn keeps_the_k_highest_norm_cells_and_only_they_get_gradient() -> Result<()> {
        // norms^2: 1, 25, 4, 16 | 9, 0, 49, 1
        let f = Var::new(
            &[[[1f32, 0.0], [3.0, 4.0], [0.0, 2.0], [4.0, 0.0]], [[3.0, 0.0], [0.0, 0.0], [0.0, 7.0], [1.0, 0.0]]],
            &Device::Cpu,
        )?;
        let sel = HardTopK::new(&HardTopKConfig { k: 2 })?.select(f.as_tensor())?;
        assert_eq!(sel.mask.to_vec2::<f32>()?, vec![vec![0.0, 1.0, 0.0, 1.0], vec![1.0, 0.0, 1.0, 0.0]]);
        assert_eq!(sel.indices.to_vec2::<u32>()?, vec![vec![1, 3], vec![2, 0]]);
        assert_eq!(sel.kept.to_vec3::<f32>()?[1], vec![vec![0.0, 7.0], vec![3.0, 0.0]]);
        let g = sel.kept.sum_all()?.backward()?;
        let grad = g.get(f.as_tensor()).map(|t| t.to_vec3::<f32>()).transpose()?.unwrap_or_default();
        assert_eq!(grad[0], vec![vec![0.0, 0.0], vec![1.0, 1.0], vec![0.0, 0.0], vec![1.0, 1.0]]);
        assert_eq!(grad[1], vec![vec![1.0, 1.0], vec![0.0, 0.0], vec![1.0, 1.0], vec![0.0, 0.0]]);
        let e = HardTopK::new(&HardTopKConfig { k: 5 })?
            .select(f.as_tensor())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("k = 5") && e.contains("4 cells"), "{e}");
        assert!(HardTopK::new(&HardTopKConfig { k: 0 }).is_err());
        // presence from other features: the cells are ranked by `scored`, taken from `f`
        let scored = Tensor::new(&[[[0f32], [1.0], [3.0], [2.0]], [[5.0], [0.0], [0.0], [4.0]]], &Device::Cpu)?;
        let by = HardTopK::new(&HardTopKConfig { k: 2 })?.select_scored(f.as_tensor(), &scored)?;
        assert_eq!(by.indices.to_vec2::<u32>()?, vec![vec![2, 3], vec![0, 3]]);
        assert_eq!(by.kept.to_vec3::<f32>()?[0], vec![vec![0.0, 2.0], vec![4.0, 0.0]]);
        let e = HardTopK::new(&HardTopKConfig { k: 2 })?.select_scored(f.as_tensor(), &scored.narrow(1, 0, 3)?).err();
        assert!(e.map(|e| e.to_string()).is_some_and(|e| e.contains("scored is [2, 3, 1]")));
        Ok(())
    }
}

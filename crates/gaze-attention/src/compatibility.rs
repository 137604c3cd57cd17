//! Attention estimators of "Learn to Pay Attention" (Jetley et al. 2018, section 3): local
//! features l_i of a CNN layer and a global feature g of the network's end give compatibility
//! scores, `pc`: c_i = <u, l_i + g> (u learned) or `dp`: c_i = <l_i, g>; when l and g differ in
//! width, l is first projected to g's width by a 1x1 convolution (a linear map per cell).
//! Normalised by a softmax over space, g_a = sum_i a_i l_i; or by a sigmoid, g_a = mean_i a_i l_i
//! (the paper's variant for when several objects matter).

use candle_core::{Result, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::{check_fq, weighted_sum, Attend, Attended};

/// The compatibility function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompatibilityKind {
    /// Parametrised: <u, l_i + g>.
    Pc,
    /// Dot product: <l_i, g>.
    Dp,
}

/// How scores become weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// Softmax over space (weights sum to 1).
    Softmax,
    /// Sigmoid per cell, context averaged over cells.
    Sigmoid,
}

/// Settings of [`Compatibility`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompatibilityConfig {
    /// `pc` or `dp` (the paper's best: `pc`).
    pub kind: CompatibilityKind,
    /// Width of the local features.
    pub local_dim: usize,
    /// Width of the global feature.
    pub global_dim: usize,
    /// `softmax` or `sigmoid`.
    pub normalization: Normalization,
}

impl Default for CompatibilityConfig {
    /// `pc` with softmax on VGG's 512-wide features.
    fn default() -> Self {
        Self { kind: CompatibilityKind::Pc, local_dim: 512, global_dim: 512, normalization: Normalization::Softmax }
    }
}

impl CompatibilityConfig {
    /// Small sizes for tests.
    pub fn tiny() -> Self {
        Self { kind: CompatibilityKind::Pc, local_dim: 2, global_dim: 3, normalization: Normalization::Softmax }
    }
}

/// An attention estimator.
#[derive(Debug, Clone)]
pub struct Compatibility {
    cfg: CompatibilityConfig,
    proj: Option<Linear>,
    u: Option<Linear>,
}

impl Compatibility {
    /// Parameters `proj` (when widths differ) and `u` (for `pc`).
    pub fn new(cfg: &CompatibilityConfig, vb: VarBuilder) -> Result<Self> {
        let proj = if cfg.local_dim != cfg.global_dim {
            Some(candle_nn::linear_no_bias(cfg.local_dim, cfg.global_dim, vb.pp("proj"))?)
        } else {
            None
        };
        let u = match cfg.kind {
            CompatibilityKind::Pc => Some(candle_nn::linear_no_bias(cfg.global_dim, 1, vb.pp("u"))?),
            CompatibilityKind::Dp => None,
        };
        Ok(Self { cfg: cfg.clone(), proj, u })
    }

    /// Scores c (b, n). Shapes: local (b, n, dl), global (b, dg) -> (b, n).
    pub fn scores(&self, local: &Tensor, global: &Tensor) -> Result<Tensor> {
        let l = self.project(local, global)?;
        match &self.u {
            Some(u) => u.forward(&l.broadcast_add(&global.unsqueeze(1)?)?)?.squeeze(D::Minus1),
            None => l.matmul(&global.unsqueeze(D::Minus1)?)?.squeeze(D::Minus1),
        }
    }

    fn project(&self, local: &Tensor, global: &Tensor) -> Result<Tensor> {
        check_fq("Compatibility", local, global, self.cfg.local_dim, self.cfg.global_dim)?;
        match &self.proj {
            Some(p) => p.forward(local),
            None => Ok(local.clone()),
        }
    }
}

impl Attend for Compatibility {
    /// Shapes: local (b, n, dl), global (b, dg) -> g_a (b, dg), weights (b, n). With sigmoid
    /// normalisation the weights are per-cell gates in (0, 1), not a distribution.
    fn attend(&self, local: &Tensor, global: &Tensor) -> Result<Attended> {
        let l = self.project(local, global)?;
        let c = self.scores(local, global)?;
        match self.cfg.normalization {
            Normalization::Softmax => {
                let weights = candle_nn::ops::softmax(&c, D::Minus1)?;
                Ok(Attended { context: weighted_sum(&l, &weights)?, weights })
            }
            Normalization::Sigmoid => {
                let weights = candle_nn::ops::sigmoid(&c)?;
                let n = c.dim(1)? as f64;
                Ok(Attended { context: (weighted_sum(&l, &weights)? / n)?, weights })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{rand, rows_sum_to_one};
    use candle_core::Device;
    use gaze_tensor::testing::grad_check;
    use gaze_tensor::{Seed, SeededVarMap};

    #[test]
    fn dp_scores_are_dot_products() -> Result<()> {
        let vm = SeededVarMap::new(Seed(0));
        let cfg = CompatibilityConfig {
            kind: CompatibilityKind::Dp,
            local_dim: 2,
            global_dim: 2,
            normalization: Normalization::Softmax,
        };
        let c = Compatibility::new(&cfg, vm.builder(&Device::Cpu))?;
        let l = Tensor::new(&[[[1f32, 2.0], [3.0, -1.0]]], &Device::Cpu)?;
        let g = Tensor::new(&[[0.5f32, 1.0]], &Device::Cpu)?;
        assert_eq!(c.scores(&l, &g)?.to_vec2::<f32>()?, vec![vec![2.5, 0.5]]);
        rows_sum_to_one(&c.attend(&l, &g)?.weights);
        Ok(())
    }

    #[test]
    fn pc_with_projection_and_both_normalisations() -> Result<()> {
        for norm in [Normalization::Softmax, Normalization::Sigmoid] {
            for kind in [CompatibilityKind::Pc, CompatibilityKind::Dp] {
                let vm = SeededVarMap::new(Seed(1));
                let cfg = CompatibilityConfig { kind, normalization: norm, ..CompatibilityConfig::tiny() };
                let c = Compatibility::new(&cfg, vm.builder(&Device::Cpu))?;
                let (l, g) = (rand(&[2, 4, 2], 1), rand(&[2, 3], 2));
                let out = c.attend(&l, &g)?;
                assert_eq!(out.context.dims(), &[2, 3]);
                if norm == Normalization::Softmax {
                    rows_sum_to_one(&out.weights);
                }
                let wts = rand(&[2, 3], 5);
                assert!(grad_check(|x| (c.attend(x, &g)?.context * &wts)?.sum_all(), &l, 1e-2)? < 2e-2);
                assert!(grad_check(|x| (c.attend(&l, x)?.context * &wts)?.sum_all(), &g, 1e-2)? < 2e-2);
            }
        }
        let vm = SeededVarMap::new(Seed(1));
        let c = Compatibility::new(&CompatibilityConfig::tiny(), vm.builder(&Device::Cpu))?;
        let e = c.attend(&rand(&[2, 4, 3], 1), &rand(&[2, 3], 2)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("Compatibility") && e.contains("(b, n, 2)"), "{e}");
        Ok(())
    }
}

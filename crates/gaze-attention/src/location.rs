//! Location softmax: the hidden state says where to look directly, weights = softmax(Linear(h))
//! over the n cells (the elementary soft attention tutorial's first variant, 196 = 14 x 14 cells).

use candle_core::{Result, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::{check_fq, shape_err, weighted_sum, Attend, Attended};

/// Settings of [`LocationSoftmax`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocationSoftmaxConfig {
    /// Number of cells n (14 x 14 = 196 in the tutorial).
    pub cells: usize,
    /// Width of the cells.
    pub feat_dim: usize,
    /// Width of the query.
    pub query_dim: usize,
}

impl Default for LocationSoftmaxConfig {
    fn default() -> Self {
        Self { cells: 196, feat_dim: 12, query_dim: 196 }
    }
}

impl LocationSoftmaxConfig {
    /// Small sizes for tests.
    pub fn tiny() -> Self {
        Self { cells: 4, feat_dim: 3, query_dim: 2 }
    }
}

/// Softmax over cells from the query alone.
#[derive(Debug, Clone)]
pub struct LocationSoftmax {
    cfg: LocationSoftmaxConfig,
    proj: Linear,
}

impl LocationSoftmax {
    /// Parameter `proj` (query -> n).
    pub fn new(cfg: &LocationSoftmaxConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self { cfg: cfg.clone(), proj: candle_nn::linear(cfg.query_dim, cfg.cells, vb.pp("proj"))? })
    }
}

impl Attend for LocationSoftmax {
    fn attend(&self, feats: &Tensor, query: &Tensor) -> Result<Attended> {
        let (_, n, _) = check_fq("LocationSoftmax", feats, query, self.cfg.feat_dim, self.cfg.query_dim)?;
        if n != self.cfg.cells {
            return Err(shape_err("LocationSoftmax", format!("{n} cells given, configured for {}", self.cfg.cells)));
        }
        let weights = candle_nn::ops::softmax(&self.proj.forward(query)?, D::Minus1)?;
        Ok(Attended { context: weighted_sum(feats, &weights)?, weights })
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
    fn weights_sum_to_one_and_gradients_check() -> Result<()> {
        let vm = SeededVarMap::new(Seed(0));
        let att = LocationSoftmax::new(&LocationSoftmaxConfig::tiny(), vm.builder(&Device::Cpu))?;
        let (f, q) = (rand(&[2, 4, 3], 1), rand(&[2, 2], 2));
        rows_sum_to_one(&att.attend(&f, &q)?.weights);
        let wts = rand(&[2, 3], 5);
        assert!(grad_check(|x| (att.attend(x, &q)?.context * &wts)?.sum_all(), &f, 1e-2)? < 2e-2);
        assert!(grad_check(|x| (att.attend(&f, x)?.context * &wts)?.sum_all(), &q, 1e-2)? < 2e-2);
        assert!(att.attend(&rand(&[2, 5, 3], 1), &q).is_err());
        Ok(())
    }
}

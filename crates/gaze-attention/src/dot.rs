//! Dot-product attention with a feature-vector key: the query is mapped to a key of the cells'
//! width and compared with every cell, weights = softmax_i <a_i, key> (the elementary soft
//! attention tutorial's third variant: a 12-d feature-like key).

use candle_core::{Result, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::{check_fq, weighted_sum, Attend, Attended};

/// Settings of [`DotProductAttention`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DotProductConfig {
    /// Width d of the cells (12 in the tutorial's activation volume).
    pub feat_dim: usize,
    /// Width of the query (the LSTM's hidden state, 196 in the tutorial).
    pub query_dim: usize,
    /// Divide scores by sqrt(d).
    pub scaled: bool,
}

impl Default for DotProductConfig {
    fn default() -> Self {
        Self { feat_dim: 12, query_dim: 196, scaled: false }
    }
}

impl DotProductConfig {
    /// Small sizes for tests.
    pub fn tiny() -> Self {
        Self { feat_dim: 3, query_dim: 2, scaled: false }
    }
}

/// Dot-product attention with a learned key.
#[derive(Debug, Clone)]
pub struct DotProductAttention {
    cfg: DotProductConfig,
    key: Linear,
}

impl DotProductAttention {
    /// Parameter `key` (query -> d).
    pub fn new(cfg: &DotProductConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self { cfg: cfg.clone(), key: candle_nn::linear(cfg.query_dim, cfg.feat_dim, vb.pp("key"))? })
    }

    /// Weights from an explicit key. Shapes: feats (b, n, d), key (b, d) -> (b, n).
    pub fn weights_for_key(&self, feats: &Tensor, key: &Tensor) -> Result<Tensor> {
        check_fq("DotProductAttention", feats, key, self.cfg.feat_dim, self.cfg.feat_dim)?;
        let mut s = feats.matmul(&key.unsqueeze(D::Minus1)?)?.squeeze(D::Minus1)?;
        if self.cfg.scaled {
            s = (s / (self.cfg.feat_dim as f64).sqrt())?;
        }
        candle_nn::ops::softmax(&s, D::Minus1)
    }
}

impl Attend for DotProductAttention {
    fn attend(&self, feats: &Tensor, query: &Tensor) -> Result<Attended> {
        check_fq("DotProductAttention", feats, query, self.cfg.feat_dim, self.cfg.query_dim)?;
        let key = self.key.forward(query)?;
        let weights = self.weights_for_key(feats, &key)?;
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
    fn key_picks_the_matching_cell() -> Result<()> {
        let vm = SeededVarMap::new(Seed(0));
        let att = DotProductAttention::new(&DotProductConfig::tiny(), vm.builder(&Device::Cpu))?;
        let feats = Tensor::new(&[[[10f32, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]]], &Device::Cpu)?;
        let w = att.weights_for_key(&feats, &Tensor::new(&[[0f32, 1.0, 0.0]], &Device::Cpu)?)?;
        rows_sum_to_one(&w);
        assert!(w.to_vec2::<f32>()?[0][1] > 0.99);
        let (f, q) = (rand(&[2, 4, 3], 1), rand(&[2, 2], 2));
        rows_sum_to_one(&att.attend(&f, &q)?.weights);
        let wts = rand(&[2, 3], 5);
        assert!(grad_check(|x| (att.attend(x, &q)?.context * &wts)?.sum_all(), &f, 1e-2)? < 2e-2);
        assert!(grad_check(|x| (att.attend(&f, x)?.context * &wts)?.sum_all(), &q, 1e-2)? < 2e-2);
        Ok(())
    }
}

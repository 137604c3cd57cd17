//! Additive (Bahdanau-style) soft attention of "Show, Attend and Tell" (Xu et al. 2015):
//! e_i = w^T tanh(W_a a_i + W_h h), alpha = softmax(e), z = beta * sum_i alpha_i a_i with the
//! optional gate beta = sigmoid(f_beta(h)) (section 4.2.1).

use candle_core::{Result, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::{check_fq, weighted_sum, Attend, Attended};

/// Settings of [`AdditiveAttention`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdditiveConfig {
    /// Width d of each cell's features (the paper: 512).
    pub feat_dim: usize,
    /// Width of the query (the decoder's hidden state; the paper: 1800 in some runs, we use 512).
    pub query_dim: usize,
    /// Width of the attention MLP's hidden layer.
    pub hidden: usize,
    /// Gate the context with beta = sigmoid(f_beta(h)).
    pub gate: bool,
}

impl Default for AdditiveConfig {
    fn default() -> Self {
        Self { feat_dim: 512, query_dim: 512, hidden: 512, gate: true }
    }
}

impl AdditiveConfig {
    /// Small sizes for tests.
    pub fn tiny() -> Self {
        Self { feat_dim: 3, query_dim: 2, hidden: 4, gate: true }
    }
}

/// Additive soft attention.
#[derive(Debug, Clone)]
pub struct AdditiveAttention {
    cfg: AdditiveConfig,
    w_a: Linear,
    w_h: Linear,
    w: Linear,
    beta: Option<Linear>,
}

impl AdditiveAttention {
    /// Parameters `w_a`, `w_h`, `w`, and `beta` when gated.
    pub fn new(cfg: &AdditiveConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            w_a: candle_nn::linear(cfg.feat_dim, cfg.hidden, vb.pp("w_a"))?,
            w_h: candle_nn::linear_no_bias(cfg.query_dim, cfg.hidden, vb.pp("w_h"))?,
            w: candle_nn::linear_no_bias(cfg.hidden, 1, vb.pp("w"))?,
            beta: if cfg.gate { Some(candle_nn::linear(cfg.query_dim, 1, vb.pp("beta"))?) } else { None },
        })
    }

    /// Scores e (b, n) before the softmax. Shapes: feats (b, n, d), query (b, q) -> (b, n).
    pub fn scores(&self, feats: &Tensor, query: &Tensor) -> Result<Tensor> {
        check_fq("AdditiveAttention", feats, query, self.cfg.feat_dim, self.cfg.query_dim)?;
        self.scores_from_keys(&self.keys(feats)?, query)
    }

    /// The features' half of the scores, W_a a_i + b, which a decoder attending to the same
    /// features at every step computes once. Shapes: feats (b, n, d) -> (b, n, hidden).
    pub fn keys(&self, feats: &Tensor) -> Result<Tensor> {
        self.w_a.forward(feats)
    }

    /// Scores from keys made by [`AdditiveAttention::keys`]. Shapes: keys (b, n, hidden),
    /// query (b, q) -> (b, n).
    pub fn scores_from_keys(&self, keys: &Tensor, query: &Tensor) -> Result<Tensor> {
        gaze_tensor::ops::additive_scores(keys, &self.w_h.forward(query)?, self.w.weight())
    }

    /// The gate beta (b, 1), or ones without a gate.
    pub fn gate(&self, query: &Tensor) -> Result<Option<Tensor>> {
        self.beta.as_ref().map(|b| candle_nn::ops::sigmoid(&b.forward(query)?)).transpose()
    }
}

impl Attend for AdditiveAttention {
    fn attend(&self, feats: &Tensor, query: &Tensor) -> Result<Attended> {
        let weights = candle_nn::ops::softmax(&self.scores(feats, query)?, D::Minus1)?;
        let mut context = weighted_sum(feats, &weights)?;
        if let Some(beta) = self.gate(query)? {
            context = context.broadcast_mul(&beta)?;
        }
        Ok(Attended { context, weights })
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
        let att = AdditiveAttention::new(&AdditiveConfig::tiny(), vm.builder(&Device::Cpu))?;
        let (f, q) = (rand(&[2, 5, 3], 1), rand(&[2, 2], 2));
        let out = att.attend(&f, &q)?;
        rows_sum_to_one(&out.weights);
        assert_eq!(out.context.dims(), &[2, 3]);
        // Without the gate the context is the weighted mean, by hand.
        let plain = AdditiveAttention { beta: None, ..att.clone() };
        let o = plain.attend(&f, &q)?;
        let (w, fv) = (o.weights.to_vec2::<f32>()?, f.to_vec3::<f32>()?);
        let want: f32 = (0..5).map(|i| w[1][i] * fv[1][i][2]).sum();
        assert!((o.context.to_vec2::<f32>()?[1][2] - want).abs() < 1e-6);
        let wts = rand(&[2, 3], 9);
        assert!(grad_check(|x| (att.attend(x, &q)?.context * &wts)?.sum_all(), &f, 1e-2)? < 2e-2);
        assert!(grad_check(|x| (att.attend(&f, x)?.context * &wts)?.sum_all(), &q, 1e-2)? < 2e-2);
        let e = att.attend(&rand(&[2, 5, 4], 1), &q).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("AdditiveAttention") && e.contains("[2, 5, 4]"), "{e}");
        Ok(())
    }
}

//! Hard stochastic attention of "Show, Attend and Tell" (Xu et al. 2015, section 4.1): alpha from
//! the additive scores, one location s ~ Multinoulli(alpha) drawn from the seeded stream, the
//! context is that cell's features; the log-probability and entropy feed REINFORCE with a
//! baseline and an entropy bonus. In the expected mode (evaluation) the context is the
//! alpha-weighted mean, as the paper does at test time.

use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;

use gaze_tensor::sample;
use gaze_tensor::seed::Rng;

use crate::additive::{AdditiveAttention, AdditiveConfig};
use crate::{shape_err, weighted_sum};

/// Stochastic hard attention: additive scores, then a sampled cell.
#[derive(Debug, Clone)]
pub struct StochasticHard {
    scores: AdditiveAttention,
}

/// What a stochastic step gives.
#[derive(Debug, Clone)]
pub struct StochasticOutput {
    /// The context (b, d): the sampled cell, or the expectation.
    pub context: Tensor,
    /// alpha (b, n).
    pub weights: Tensor,
    /// The sampled cell (b,) u32; `None` in the expected mode.
    pub index: Option<Tensor>,
    /// log alpha[s] (b,), differentiable in the scores; `None` in the expected mode.
    pub log_prob: Option<Tensor>,
    /// Entropy of alpha (b,).
    pub entropy: Tensor,
}

impl StochasticHard {
    /// The scoring network under `vb` (same parameters as [`AdditiveAttention`]; no gate).
    pub fn new(cfg: &AdditiveConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self { scores: AdditiveAttention::new(&AdditiveConfig { gate: false, ..cfg.clone() }, vb)? })
    }

    /// Shapes: feats (b, n, d), query (b, q) -> context (b, d), weights (b, n), index (b,),
    /// log_prob (b,), entropy (b,). With `rng` a cell is sampled; without, the expectation.
    pub fn forward(&self, feats: &Tensor, query: &Tensor, rng: Option<&mut Rng>) -> Result<StochasticOutput> {
        let alpha = candle_nn::ops::softmax(&self.scores.scores(feats, query)?, D::Minus1)?;
        let entropy = sample::categorical_entropy(&alpha)?;
        match rng {
            Some(rng) => {
                let (b, _, d) =
                    feats.dims3().map_err(|_| shape_err("StochasticHard", format!("feats {:?}", feats.dims())))?;
                let index = sample::categorical_sample(&alpha.detach(), rng)?;
                let log_prob = sample::categorical_log_prob(&alpha, &index)?;
                let idx = index.reshape((b, 1, 1))?.broadcast_as((b, 1, d))?.contiguous()?;
                let context = feats.gather(&idx, 1)?.squeeze(1)?;
                Ok(StochasticOutput { context, weights: alpha, index: Some(index), log_prob: Some(log_prob), entropy })
            }
            None => Ok(StochasticOutput {
                context: weighted_sum(feats, &alpha)?,
                weights: alpha,
                index: None,
                log_prob: None,
                entropy,
            }),
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
    fn sampled_context_is_the_sampled_cell() -> Result<()> {
        let vm = SeededVarMap::new(Seed(0));
        let att = StochasticHard::new(&AdditiveConfig::tiny(), vm.builder(&Device::Cpu))?;
        let (f, q) = (rand(&[3, 5, 3], 1), rand(&[3, 2], 2));
        let out = att.forward(&f, &q, Some(&mut Seed(4).rng()))?;
        rows_sum_to_one(&out.weights);
        let idx = out.index.as_ref().map(|i| i.to_vec1::<u32>()).transpose()?.unwrap_or_default();
        let (fv, ctx) = (f.to_vec3::<f32>()?, out.context.to_vec2::<f32>()?);
        for b in 0..3 {
            assert_eq!(ctx[b], fv[b][idx[b] as usize]);
        }
        let w = out.weights.to_vec2::<f32>()?;
        let lp = out.log_prob.as_ref().map(|l| l.to_vec1::<f32>()).transpose()?.unwrap_or_default();
        for b in 0..3 {
            assert!((lp[b] - w[b][idx[b] as usize].ln()).abs() < 1e-5);
        }
        // same seed, same draws
        let again = att.forward(&f, &q, Some(&mut Seed(4).rng()))?;
        assert_eq!(again.index.map(|i| i.to_vec1::<u32>()).transpose()?.unwrap_or_default(), idx);
        // the expected mode is differentiable end to end
        let wts = rand(&[3, 3], 5);
        assert!(grad_check(|x| (att.forward(x, &q, None)?.context * &wts)?.sum_all(), &f, 1e-2)? < 2e-2);
        // REINFORCE's log-prob is differentiable in the query (through the scores)
        let fixed = out.index.clone().ok_or_else(|| candle_core::Error::Msg("index".into()))?;
        let lp_of = |x: &Tensor| -> Result<Tensor> {
            let alpha = candle_nn::ops::softmax(&att.scores.scores(&f, x)?, D::Minus1)?;
            sample::categorical_log_prob(&alpha, &fixed)?.sum_all()
        };
        assert!(grad_check(lp_of, &q, 1e-2)? < 2e-2);
        Ok(())
    }
}

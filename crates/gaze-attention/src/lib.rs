//! Attention mechanisms, one per file, each with a `*Config` (serde, the paper's defaults,
//! `tiny()` for tests), a VarBuilder constructor, and shapes documented and checked on entry.
//!
//! | mechanism | paper |
//! |---|---|
//! | [`AdditiveAttention`] | "Show, Attend and Tell" (Xu et al. 2015), soft attention with gate |
//! | [`DotProductAttention`] | feature-vector key (elementary soft attention, variant 3) |
//! | [`LocationSoftmax`] | softmax over cells from the hidden state (elementary, variant 1) |
//! | [`GaussianWindow`] | 2-D Gaussian window from the hidden state (elementary, variant 2) |
//! | [`HardTopK`] | "Learning Visual Question Answering by Bootstrapping Hard Attention" (HAN) |
//! | [`AdaptiveHard`] | the same paper's AdaHAN |
//! | [`StochasticHard`] | "Show, Attend and Tell", hard stochastic attention |
//! | [`Compatibility`] | "Learn to Pay Attention" (Jetley et al. 2018), `pc` and `dp` |
//! | [`Retina`] | "Recurrent Models of Visual Attention" (Mnih et al. 2014), glimpse sensor |
//!
//! The soft mechanisms share the [`Attend`] trait: features (b, n, d) and a query (b, q) give a
//! context (b, d) and weights (b, n) that sum to 1.

pub mod adaptive;
pub mod additive;
pub mod compatibility;
pub mod dot;
pub mod gaussian;
pub mod hard_topk;
pub mod location;
pub mod retina;
pub mod stochastic;

pub use adaptive::{AdaptiveHard, AdaptiveHardConfig, AdaptiveSelection};
pub use additive::{AdditiveAttention, AdditiveConfig};
pub use compatibility::{Compatibility, CompatibilityConfig, CompatibilityKind, Normalization};
pub use dot::{DotProductAttention, DotProductConfig};
pub use gaussian::{GaussianWindow, GaussianWindowConfig};
pub use hard_topk::{HardSelection, HardTopK, HardTopKConfig};
pub use location::{LocationSoftmax, LocationSoftmaxConfig};
pub use retina::{Retina, RetinaConfig};
pub use stochastic::{StochasticHard, StochasticOutput};

use candle_core::{Result, Tensor};

/// What a soft mechanism returns.
#[derive(Debug, Clone)]
pub struct Attended {
    /// The attended vector (b, d).
    pub context: Tensor,
    /// Weights over the n cells (b, n), each row summing to 1.
    pub weights: Tensor,
}

/// A soft attention over cells given a query.
pub trait Attend {
    /// Shapes: feats (b, n, d), query (b, q) -> context (b, d), weights (b, n).
    fn attend(&self, feats: &Tensor, query: &Tensor) -> Result<Attended>;
}

/// An error naming what is wrong with the shapes.
pub(crate) fn shape_err(what: &str, msg: String) -> candle_core::Error {
    candle_core::Error::Msg(format!("{what}: {msg}"))
}

/// Checks feats (b, n, d) and query (b, q) against the expected widths; returns (b, n, d).
pub(crate) fn check_fq(
    what: &str,
    feats: &Tensor,
    query: &Tensor,
    d: usize,
    q: usize,
) -> Result<(usize, usize, usize)> {
    let (b, n, fd) =
        feats.dims3().map_err(|_| shape_err(what, format!("feats must be (b, n, d), got {:?}", feats.dims())))?;
    let (qb, qd) =
        query.dims2().map_err(|_| shape_err(what, format!("query must be (b, q), got {:?}", query.dims())))?;
    if fd != d || qd != q || qb != b {
        return Err(shape_err(
            what,
            format!("feats {:?} and query {:?} do not fit (want (b, n, {d}) and (b, {q}))", feats.dims(), query.dims()),
        ));
    }
    Ok((b, n, d))
}

/// Checks feats (b, n, d) and the features presence is measured on, scored (b, n, e): the same
/// examples and cells. Returns (b, n, d).
pub(crate) fn check_scored(what: &str, feats: &Tensor, scored: &Tensor) -> Result<(usize, usize, usize)> {
    let (b, n, d) =
        feats.dims3().map_err(|_| shape_err(what, format!("feats must be (b, n, d), got {:?}", feats.dims())))?;
    match scored.dims3() {
        Ok((sb, sn, _)) if (sb, sn) == (b, n) => Ok((b, n, d)),
        _ => Err(shape_err(what, format!("scored is {:?}, feats {:?} (want (b, n, e))", scored.dims(), feats.dims()))),
    }
}

/// Weighted sum of cells. Shapes: feats (b, n, d), weights (b, n) -> (b, d).
pub fn weighted_sum(feats: &Tensor, weights: &Tensor) -> Result<Tensor> {
    weights.unsqueeze(1)?.matmul(feats)?.squeeze(1)
}

#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::{Device, Tensor};
    use gaze_tensor::Seed;
    use rand::Rng;

    /// A seeded random tensor in [-1, 1).
    pub fn rand(shape: &[usize], seed: u64) -> Tensor {
        let mut r = Seed(seed).rng();
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| r.random::<f32>() * 2.0 - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).expect("a tensor of that shape")
    }

    /// Asserts every row of (b, n) weights sums to 1.
    pub fn rows_sum_to_one(w: &Tensor) {
        for row in w.to_vec2::<f32>().expect("weights (b, n)") {
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "row sums to {s}");
            assert!(row.iter().all(|&v| v >= 0.0));
        }
    }
}

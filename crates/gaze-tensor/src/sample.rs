//! Seeded sampling with log-probabilities and entropies: categorical (multinoulli, for
//! Show-Attend-Tell's hard attention) and diagonal Gaussian (RAM's location policy).
//! Draws come from a [`Rng`](crate::seed::Rng); log-probs are differentiable in the parameters.

use candle_core::{DType, Result, Tensor, D};
use rand::Rng as _;
use rand_distr::{Distribution, StandardNormal};

use crate::seed::Rng;

fn err(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(msg)
}

/// One draw per row from the categorical distributions `probs` (rows sum to 1).
/// Shapes: probs (b, n) -> indices (b,) u32.
pub fn categorical_sample(probs: &Tensor, rng: &mut Rng) -> Result<Tensor> {
    let (_, n) =
        probs.dims2().map_err(|_| err(format!("categorical_sample: probs must be (b, n), got {:?}", probs.dims())))?;
    let rows = probs.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let total: f32 = row.iter().sum();
        if !(total.is_finite() && total > 0.0) || row.iter().any(|&p| p < 0.0) {
            return Err(err(format!("categorical_sample: a row of probs is not a distribution (sum {total})")));
        }
        let u = rng.random::<f32>() * total;
        let mut acc = 0.0;
        let mut pick = n - 1;
        for (i, &p) in row.iter().enumerate() {
            acc += p;
            if u < acc {
                pick = i;
                break;
            }
        }
        out.push(pick as u32);
    }
    let b = out.len();
    Tensor::from_vec(out, b, probs.device())
}

/// log p(index) under each row of `probs`. Shapes: probs (b, n), indices (b,) u32 -> (b,).
pub fn categorical_log_prob(probs: &Tensor, indices: &Tensor) -> Result<Tensor> {
    let picked = probs.gather(&indices.unsqueeze(1)?, 1)?.squeeze(1)?;
    picked.clamp(1e-30, f64::INFINITY)?.log()
}

/// Entropy of each row: -sum p log p. Shapes: probs (b, n) -> (b,).
pub fn categorical_entropy(probs: &Tensor) -> Result<Tensor> {
    let logp = probs.clamp(1e-30, f64::INFINITY)?.log()?;
    (probs * logp)?.sum(D::Minus1)?.neg()
}

/// A draw from N(mean, sigma^2 I), detached. Shapes: mean (b, d) -> (b, d).
pub fn gaussian_sample(mean: &Tensor, sigma: f64, rng: &mut Rng) -> Result<Tensor> {
    if sigma.is_nan() || sigma <= 0.0 {
        return Err(err(format!("gaussian_sample: sigma = {sigma} must be positive")));
    }
    let noise: Vec<f32> = (0..mean.elem_count())
        .map(|_| {
            let z: f64 = StandardNormal.sample(rng);
            (sigma * z) as f32
        })
        .collect();
    (mean.detach() + Tensor::from_vec(noise, mean.shape(), mean.device())?)?.detach().to_dtype(mean.dtype())
}

/// log N(x; mean, sigma^2 I), summed over the last dimension; differentiable in `mean`.
/// Shapes: mean (b, d), x (b, d) -> (b,).
pub fn gaussian_log_prob(mean: &Tensor, sigma: f64, x: &Tensor) -> Result<Tensor> {
    if mean.dims() != x.dims() {
        return Err(err(format!("gaussian_log_prob: mean {:?} and x {:?} differ", mean.dims(), x.dims())));
    }
    let d = mean.dim(D::Minus1)? as f64;
    let sq = (x - mean)?.sqr()?.sum(D::Minus1)?;
    (sq * (-0.5 / (sigma * sigma)))? - d * (sigma.ln() + 0.5 * (2.0 * std::f64::consts::PI).ln())
}

/// Entropy of N(., sigma^2 I) in `d` dimensions.
pub fn gaussian_entropy(d: usize, sigma: f64) -> f64 {
    d as f64 * (0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E).ln() + sigma.ln())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Seed;
    use candle_core::Device;

    #[test]
    fn categorical_frequencies_match_alpha_chi_square() -> Result<()> {
        let alpha = [0.1f32, 0.2, 0.3, 0.15, 0.25];
        let probs = Tensor::new(&[alpha], &Device::Cpu)?.repeat((100, 1))?;
        let mut rng = Seed(42).rng();
        let mut counts = [0f64; 5];
        for _ in 0..100 {
            for i in categorical_sample(&probs, &mut rng)?.to_vec1::<u32>()? {
                counts[i as usize] += 1.0;
            }
        }
        let n = 10_000.0;
        let chi2: f64 =
            counts.iter().zip(alpha).map(|(&o, a)| (o - n * f64::from(a)).powi(2) / (n * f64::from(a))).sum();
        // 4 degrees of freedom: P(chi2 > 18.47) = 0.001.
        assert!(chi2 < 18.47, "chi2 {chi2}, counts {counts:?}");
        Ok(())
    }

    #[test]
    fn log_probs_and_entropies_equal_closed_forms() -> Result<()> {
        let p = Tensor::new(&[[0.25f32, 0.75], [0.5, 0.5]], &Device::Cpu)?;
        let lp = categorical_log_prob(&p, &Tensor::new(&[1u32, 0], &Device::Cpu)?)?.to_vec1::<f32>()?;
        assert!((lp[0] - 0.75f32.ln()).abs() < 1e-6 && (lp[1] - 0.5f32.ln()).abs() < 1e-6);
        let h = categorical_entropy(&p)?.to_vec1::<f32>()?;
        assert!((h[0] - -(0.25f32 * 0.25f32.ln() + 0.75 * 0.75f32.ln())).abs() < 1e-6);
        assert!((h[1] - 2f32.ln()).abs() < 1e-6);
        let mean = Tensor::new(&[[0.1f32, -0.2]], &Device::Cpu)?;
        let x = Tensor::new(&[[0.3f32, 0.0]], &Device::Cpu)?;
        let s: f64 = 0.2;
        let want = -(0.04 + 0.04) / (2.0 * s * s) - 2.0 * (s.ln() + 0.5 * (2.0 * std::f64::consts::PI).ln());
        let got = gaussian_log_prob(&mean, s, &x)?.to_vec1::<f32>()?[0];
        assert!((f64::from(got) - want).abs() < 1e-5, "{got} vs {want}");
        assert!((gaussian_entropy(1, 1.0) - 1.4189385332046727).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn gaussian_draws_are_seeded_and_centred() -> Result<()> {
        let mean = Tensor::zeros((2000, 2), DType::F32, &Device::Cpu)?;
        let a = gaussian_sample(&mean, 0.5, &mut Seed(1).rng())?;
        let b = gaussian_sample(&mean, 0.5, &mut Seed(1).rng())?;
        assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
        let v = a.flatten_all()?.to_vec1::<f32>()?;
        let m = v.iter().sum::<f32>() / v.len() as f32;
        let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / v.len() as f32).sqrt();
        assert!(m.abs() < 0.03 && (sd - 0.5).abs() < 0.03, "{m} {sd}");
        assert!(!a.track_op());
        assert!(gaussian_sample(&mean, 0.0, &mut Seed(1).rng()).is_err());
        Ok(())
    }
}

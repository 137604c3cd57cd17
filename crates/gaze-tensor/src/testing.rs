//! Finite-difference gradient checks, for the tests of every differentiable mechanism.

use candle_core::{Result, Tensor, Var};

/// Largest relative difference between autograd's gradient of the scalar `f(x)` and central
/// finite differences with step `eps`, over every element of `x` (keep `x` small).
/// The difference is relative to `max(1, |grad|)`.
pub fn grad_check(f: impl Fn(&Tensor) -> Result<Tensor>, x: &Tensor, eps: f64) -> Result<f32> {
    let var = Var::from_tensor(x)?;
    let y = f(var.as_tensor())?;
    let grads = y.backward()?;
    let auto = match grads.get(var.as_tensor()) {
        Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
        None => vec![0.0; x.elem_count()],
    };
    let base = x.flatten_all()?.to_vec1::<f32>()?;
    let mut worst = 0f32;
    for i in 0..base.len() {
        let at = |delta: f64| -> Result<f32> {
            let mut v = base.clone();
            v[i] += delta as f32;
            f(&Tensor::from_vec(v, x.shape(), x.device())?)?.to_scalar::<f32>()
        };
        let numeric = (at(eps)? - at(-eps)?) / (2.0 * eps as f32);
        let rel = (numeric - auto[i]).abs() / auto[i].abs().max(1.0);
        worst = worst.max(rel);
    }
    Ok(worst)
}

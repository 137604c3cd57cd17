//! Finite-difference gradient checks, for the tests of every differentiable mechanism.

use candle_core::{Result, Tensor, Var};

/// The outcome of [`grad_check_kinks`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradCheck {
    /// Largest relative difference over the elements compared.
    pub max_rel_err: f32,
    /// Elements compared.
    pub compared: usize,
    /// Elements skipped because `f` has a kink within `eps` there (ReLU, max-pool).
    pub skipped: usize,
}

/// Largest relative difference between autograd's gradient of the scalar `f(x)` and central
/// finite differences with step `eps`, over every element of `x` (keep `x` small).
/// The difference is relative to `max(1, |grad|)`.
pub fn grad_check(f: impl Fn(&Tensor) -> Result<Tensor>, x: &Tensor, eps: f64) -> Result<f32> {
    Ok(check(&f, x, eps, false)?.max_rel_err)
}

/// As [`grad_check`], for functions with kinks (ReLU, max-pool): an element whose left and right
/// one-sided differences disagree by more than `kink_tol` is skipped (the function is not
/// differentiable within `eps` of it) and counted.
pub fn grad_check_kinks(f: impl Fn(&Tensor) -> Result<Tensor>, x: &Tensor, eps: f64) -> Result<GradCheck> {
    check(&f, x, eps, true)
}

fn check(f: &dyn Fn(&Tensor) -> Result<Tensor>, x: &Tensor, eps: f64, skip_kinks: bool) -> Result<GradCheck> {
    let var = Var::from_tensor(x)?;
    let y = f(var.as_tensor())?;
    let grads = y.backward()?;
    let auto = match grads.get(var.as_tensor()) {
        Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
        None => vec![0.0; x.elem_count()],
    };
    let base = x.flatten_all()?.to_vec1::<f32>()?;
    let f0 = f(x)?.to_scalar::<f32>()?;
    let (mut worst, mut compared, mut skipped) = (0f32, 0, 0);
    for i in 0..base.len() {
        let at = |delta: f64| -> Result<f32> {
            let mut v = base.clone();
            v[i] += delta as f32;
            f(&Tensor::from_vec(v, x.shape(), x.device())?)?.to_scalar::<f32>()
        };
        let (plus, minus) = (at(eps)?, at(-eps)?);
        let (right, left) = ((plus - f0) / eps as f32, (f0 - minus) / eps as f32);
        if skip_kinks && (right - left).abs() > 0.05 * right.abs().max(left.abs()).max(1.0) {
            skipped += 1;
            continue;
        }
        let numeric = (plus - minus) / (2.0 * eps as f32);
        worst = worst.max((numeric - auto[i]).abs() / auto[i].abs().max(1.0));
        compared += 1;
    }
    Ok(GradCheck { max_rel_err: worst, compared, skipped })
}

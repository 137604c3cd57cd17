//! The pieces of a relation network's head ("A simple neural network module for relational
//! reasoning", Santoro et al., 2017) as fused operations for candle's CPU autograd.
//!
//! Written with broadcasting, the head's pair construction `a_i + b_j + c` and its sum over pairs
//! are reductions over strided dimensions in the backward pass (and the sum in the forward pass),
//! which candle's CPU backend walks element by element. The operations here compute the same
//! values with loops over contiguous rows, in both directions (the g-MLP's layers add their
//! biases with [`crate::ops::add_bias`] for the same reason).

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};

use crate::ops::{contiguous_f32, with_values};

fn err(m: String) -> candle_core::Error {
    candle_core::Error::Msg(m)
}

/// `x[q, i, j] = a[q, i] + b[q, j] + c[q]` over rows of width h.
struct PairSums;

fn pair_dims(a: &Shape, b: &Shape, c: &Shape) -> Result<(usize, usize, usize)> {
    let (q, m, h) = a.dims3()?;
    if b.dims() != a.dims() || c.dims() != [q, h] {
        return Err(err(format!("pair_sums: a {a:?}, b {b:?} and c {c:?} must be (q, m, h), (q, m, h) and (q, h)")));
    }
    Ok((q, m, h))
}

impl CustomOp3 for PairSums {
    fn name(&self) -> &'static str {
        "gaze-pair-sums"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, m, h) = pair_dims(l1.shape(), l2.shape(), l3.shape())?;
        let (a, b, c) = (
            contiguous_f32(s1, l1, "pair_sums")?,
            contiguous_f32(s2, l2, "pair_sums")?,
            contiguous_f32(s3, l3, "pair_sums")?,
        );
        let mut out = vec![0f32; q * m * m * h];
        let mut ac = vec![0f32; h];
        for r in 0..q {
            let cr = &c[r * h..(r + 1) * h];
            for i in 0..m {
                let ai = &a[(r * m + i) * h..(r * m + i + 1) * h];
                for ((s, x), y) in ac.iter_mut().zip(ai).zip(cr) {
                    *s = x + y;
                }
                for j in 0..m {
                    let bj = &b[(r * m + j) * h..(r * m + j + 1) * h];
                    let o = &mut out[((r * m + i) * m + j) * h..((r * m + i) * m + j + 1) * h];
                    for ((o, x), y) in o.iter_mut().zip(&ac).zip(bj) {
                        *o = x + y;
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((q, m, m, h))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        _b: &Tensor,
        _c: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, m, h) = a.dims3()?;
        let (da, db, dc) = with_values(grad, "pair_sum", |g| {
            let (mut da, mut db, mut dc) = (vec![0f32; q * m * h], vec![0f32; q * m * h], vec![0f32; q * h]);
            for r in 0..q {
                for i in 0..m {
                    for j in 0..m {
                        let gij = &g[((r * m + i) * m + j) * h..((r * m + i) * m + j + 1) * h];
                        for (s, x) in da[(r * m + i) * h..(r * m + i + 1) * h].iter_mut().zip(gij) {
                            *s += x;
                        }
                        for (s, x) in db[(r * m + j) * h..(r * m + j + 1) * h].iter_mut().zip(gij) {
                            *s += x;
                        }
                    }
                }
                // c's gradient is the sum of a's over i.
                let (dar, dcr) = (&da[r * m * h..(r + 1) * m * h], &mut dc[r * h..(r + 1) * h]);
                for row in dar.chunks_exact(h) {
                    for (s, x) in dcr.iter_mut().zip(row) {
                        *s += x;
                    }
                }
            }
            Ok((da, db, dc))
        })?;
        let dev = a.device();
        Ok((
            Some(Tensor::from_vec(da, (q, m, h), dev)?),
            Some(Tensor::from_vec(db, (q, m, h), dev)?),
            Some(Tensor::from_vec(dc, (q, h), dev)?),
        ))
    }
}

/// Every pair of a row's m items: `x[q, i, j, :] = a[q, i, :] + b[q, j, :] + c[q, :]`, the
/// relation network's first g layer (linear in (o_i, o_j, question)) from its three projections.
/// Shapes: a (q, m, h), b (q, m, h), c (q, h) -> (q, m, m, h). Differentiable in all three.
pub fn pair_sums(a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Tensor> {
    pair_dims(a.shape(), b.shape(), c.shape())?;
    a.contiguous()?.apply_op3(&b.contiguous()?, &c.contiguous()?, PairSums)
}

/// `out[q] = sum_p x[q, p]`.
struct SumRows;

impl CustomOp1 for SumRows {
    fn name(&self) -> &'static str {
        "gaze-sum-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (q, p, h) = l.shape().dims3()?;
        let x = contiguous_f32(s, l, "sum_rows")?;
        let mut out = vec![0f32; q * h];
        for (r, o) in out.chunks_exact_mut(h).enumerate() {
            for row in x[r * p * h..(r + 1) * p * h].chunks_exact(h) {
                for (s, v) in o.iter_mut().zip(row) {
                    *s += v;
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((q, h))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (q, p, h) = x.dims3()?;
        let out = with_values(grad, "pair_sum", |g| {
            let mut out = Vec::with_capacity(q * p * h);
            for gr in g.chunks_exact(h.max(1)) {
                for _ in 0..p {
                    out.extend_from_slice(gr);
                }
            }
            Ok(out)
        })?;
        Ok(Some(Tensor::from_vec(out, (q, p, h), x.device())?))
    }
}

/// The sum over the middle dimension. Shapes: x (q, p, h) -> (q, h).
pub fn sum_rows(x: &Tensor) -> Result<Tensor> {
    x.dims3().map_err(|_| err(format!("sum_rows: x must be (q, p, h), got {:?}", x.dims())))?;
    x.contiguous()?.apply_op1(SumRows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::grad_check;
    use crate::Seed;
    use candle_core::{Device, Var};
    use rand::Rng as _;

    fn random(shape: &[usize], seed: u64) -> Result<Tensor> {
        let mut r = Seed(seed).rng();
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| r.random::<f32>() * 2.0 - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// The fused head equals the broadcasting one in value and in every input's gradient.
    #[test]
    fn fused_pairs_and_sums_equal_broadcasting() -> Result<()> {
        let (q, m, h) = (3, 4, 5);
        let vars: Vec<Var> = [vec![q, m, h], vec![q, m, h], vec![q, h]]
            .iter()
            .enumerate()
            .map(|(i, s)| Var::from_tensor(&random(s, i as u64)?))
            .collect::<Result<_>>()?;
        let [a, b, c] = [0, 1, 2].map(|i| vars[i].as_tensor().clone());
        let probe = random(&[q, h], 9)?;
        let broadcast = a.unsqueeze(2)?.broadcast_add(&b.unsqueeze(1)?)?.broadcast_add(&c.reshape((q, 1, 1, h))?)?;
        let fused = pair_sums(&a, &b, &c)?;
        assert!(max_diff(&broadcast, &fused)? < 1e-6);
        let pooled_ref = broadcast.sqr()?.sum(2)?.sum(1)?;
        let pooled = sum_rows(&fused.sqr()?.reshape((q, m * m, h))?)?;
        assert!(max_diff(&pooled_ref, &pooled)? < 1e-5);
        let (gr, gf) = ((pooled_ref * &probe)?.sum_all()?.backward()?, (pooled * &probe)?.sum_all()?.backward()?);
        for (name, t) in [("a", &a), ("b", &b), ("c", &c)] {
            let (Some(x), Some(y)) = (gr.get(t), gf.get(t)) else { panic!("no gradient for {name}") };
            assert!(max_diff(x, y)? < 1e-4, "{name}: {}", max_diff(x, y)?);
        }
        Ok(())
    }

    #[test]
    fn fused_ops_pass_finite_difference_checks() -> Result<()> {
        let (a, b, c) = (random(&[2, 3, 2], 1)?, random(&[2, 3, 2], 2)?, random(&[2, 2], 3)?);
        let w = random(&[2, 3, 3, 2], 4)?;
        let by = |x: &Tensor| -> Result<Tensor> { (x * &w)?.sum_all() };
        for (name, e) in [
            ("a", grad_check(|x| by(&pair_sums(x, &b, &c)?), &a, 1e-2)?),
            ("b", grad_check(|x| by(&pair_sums(&a, x, &c)?), &b, 1e-2)?),
            ("c", grad_check(|x| by(&pair_sums(&a, &b, x)?), &c, 1e-2)?),
            ("sum_rows", grad_check(|x| (sum_rows(&x.sqr()?)? * &random(&[2, 2], 5)?)?.sum_all(), &a, 1e-2)?),
        ] {
            assert!(e < 2e-3, "{name}: {e}");
        }
        Ok(())
    }

    #[test]
    fn wrong_shapes_are_named() -> Result<()> {
        let e = pair_sums(&random(&[2, 3, 4], 1)?, &random(&[2, 2, 4], 1)?, &random(&[2, 4], 1)?)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("must be (q, m, h)"), "{e}");
        Ok(())
    }
}

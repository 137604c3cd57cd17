//! Masks and normalisations shared by the attention mechanisms.
//!
//! candle pitfalls: `candle_nn::ops::softmax_last_dim` has no backward pass (everything trained
//! here uses `candle_nn::ops::softmax(x, D::Minus1)`); and `Tensor::max_pool2d`'s backward
//! (candle 0.11) scales the gradient by the window's mean of the max mask (1/k^2 for a unique
//! maximum) instead of dividing by the number of maxima, so gradients through it are k^2 times
//! too small. [`max_pool2d`] here is an operation of its own, one pass each way, whose backward
//! sends each window's gradient to every maximum (as candle's max reduction does). And a
//! broadcast bias's gradient is a strided reduction that candle's CPU backend walks element by
//! element: [`add_bias`] (and [`linear`] with it) sums the rows contiguously instead. candle's
//! ReLU backward takes four passes and three allocations (zeros, compare, cast, multiply, then
//! the accumulation); [`relu`] and [`linear_relu`] (bias and ReLU in one) take one.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use candle_nn::Linear;

fn err(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(msg)
}

/// Presence of each cell: the squared L2 norm over its features.
/// Shapes: feats (b, n, d) -> (b, n).
pub fn presence(feats: &Tensor) -> Result<Tensor> {
    let (_b, _n, _d) =
        feats.dims3().map_err(|_| err(format!("presence: feats must be (b, n, d), got {:?}", feats.dims())))?;
    feats.sqr()?.sum(D::Minus1)
}

/// The `k` largest scores of each row: a 0/1 mask and their indices (largest first; ties go to
/// the lower index). Not differentiable (the mask is a selection).
/// Shapes: scores (b, n) -> mask (b, n) f32, indices (b, k) u32.
pub fn top_k_mask(scores: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    let (b, n) =
        scores.dims2().map_err(|_| err(format!("top_k_mask: scores must be (b, n), got {:?}", scores.dims())))?;
    if k == 0 || k > n {
        return Err(err(format!("top_k_mask: k = {k} must be in 1..={n} (the number of cells)")));
    }
    let rows = scores.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut mask = vec![0f32; b * n];
    let mut idx = Vec::with_capacity(b * k);
    for (r, row) in rows.iter().enumerate() {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&i, &j| row[j].total_cmp(&row[i]).then(i.cmp(&j)));
        for &i in &order[..k] {
            mask[r * n + i] = 1.0;
            idx.push(i as u32);
        }
    }
    Ok((Tensor::from_vec(mask, (b, n), scores.device())?, Tensor::from_vec(idx, (b, k), scores.device())?))
}

/// Softmax over the last dimension where `mask` is 1; masked entries get weight 0. A row with
/// no kept entry is an error.
/// Shapes: x (.., n), mask (.., n) of 0/1 -> (.., n).
pub fn masked_softmax(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if x.dims() != mask.dims() {
        return Err(err(format!("masked_softmax: x {:?} and mask {:?} differ", x.dims(), mask.dims())));
    }
    let mask = mask.to_dtype(x.dtype())?;
    let kept = mask.sum(D::Minus1)?.flatten_all()?.to_vec1::<f32>()?;
    if kept.iter().any(|&c| c < 0.5) {
        return Err(err("masked_softmax: a row keeps no entry".into()));
    }
    // Shift by the row max over kept entries for stability, then zero the masked ones.
    let very_negative = ((&mask - 1.0)? * 1e30)?;
    let shifted = (x + &very_negative)?;
    let max = shifted.max_keepdim(D::Minus1)?.detach();
    let e = (shifted.broadcast_sub(&max)?.exp()? * &mask)?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Max-pooling with kernel == stride == `k` (rows and columns past the last full window are
/// dropped, as candle's does), with a correct gradient: each window's gradient to every position
/// equal to its maximum.
/// Shapes: x (b, c, h, w) -> (b, c, h / k, w / k).
pub fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4().map_err(|_| err(format!("max_pool2d: x must be (b, c, h, w), got {:?}", x.dims())))?;
    if k == 0 || k > h || k > w {
        return Err(err(format!("max_pool2d: window {k} does not fit a {h}x{w} map")));
    }
    if k == 1 {
        return Ok(x.clone());
    }
    x.contiguous()?.apply_op1(MaxPool { k })
}

/// Max-pooling of windows `k` x `k` with stride `k` over contiguous (b, c, h, w) maps; the
/// backward pass sends each window's gradient to every position equal to its maximum, as the
/// reshape-and-max pool it replaced did (candle's max reduction): on a background of equal values
/// (a conv's bias through a ReLU) that is all four positions, where PyTorch picks one. Training
/// results depend on it: mnist-convnet with one position per window ended at 1.23% test error
/// against 0.97% with all of them (`experiments/notes/mnist-convnet.md`).
struct MaxPool {
    k: usize,
}

/// The index in `plane` (a `w`-wide map) of the first maximum of window (oy, ox).
fn window_argmax(plane: &[f32], w: usize, k: usize, oy: usize, ox: usize) -> usize {
    let mut best = (f32::NEG_INFINITY, oy * k * w + ox * k);
    for dy in 0..k {
        let row = (oy * k + dy) * w + ox * k;
        for (dx, &v) in plane[row..row + k].iter().enumerate() {
            if v > best.0 {
                best = (v, row + dx);
            }
        }
    }
    best.1
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "gaze-max-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let x = contiguous_f32(s, l, "max_pool2d")?;
        let (b, c, h, w) = l.shape().dims4()?;
        let (k, oh, ow) = (self.k, h / self.k, w / self.k);
        let mut out = vec![0f32; b * c * oh * ow];
        out.par_chunks_mut((oh * ow).max(1)).enumerate().for_each(|(p, dst)| {
            let plane = &x[p * h * w..][..h * w];
            for oy in 0..oh {
                for ox in 0..ow {
                    dst[oy * ow + ox] = plane[window_argmax(plane, w, k, oy, ox)];
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &MaxPoolBack { k: self.k })?))
    }
}

/// The input gradient of [`MaxPool`]: (x, output gradient) -> (b, c, h, w).
struct MaxPoolBack {
    k: usize,
}

impl CustomOp2 for MaxPoolBack {
    fn name(&self) -> &'static str {
        "gaze-max-pool-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (x, g) = (contiguous_f32(s1, l1, "max_pool2d")?, contiguous_f32(s2, l2, "max_pool2d")?);
        let (b, c, h, w) = l1.shape().dims4()?;
        let (k, oh, ow) = (self.k, h / self.k, w / self.k);
        if g.len() != b * c * oh * ow {
            return Err(err(format!("max_pool2d backward: gradient {:?} for input {:?}", l2.shape(), l1.shape())));
        }
        let mut dx = vec![0f32; b * c * h * w];
        dx.par_chunks_mut((h * w).max(1)).enumerate().for_each(|(p, dst)| {
            let plane = &x[p * h * w..][..h * w];
            let gp = &g[p * oh * ow..][..oh * ow];
            for oy in 0..oh {
                for ox in 0..ow {
                    // Every position equal to the window's maximum gets the window's gradient.
                    let m = plane[window_argmax(plane, w, k, oy, ox)];
                    for dy in 0..k {
                        let row = (oy * k + dy) * w + ox * k;
                        for dx in 0..k {
                            if plane[row + dx] == m {
                                dst[row + dx] += gp[oy * ow + ox];
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// The f32 values of a contiguous storage (custom operations' inputs); errors name `op`.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        return Err(err(format!("{op}: inputs must be f32")));
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => Err(err(format!("{op}: inputs must be contiguous"))),
    }
}

/// A half cosine from `start` (at progress 0) to `end` (at 1), progress clamped to [0, 1]: the
/// shape of the cosine learning-rate schedule and of RAM's `sigma_final`.
pub fn half_cosine(start: f64, end: f64, progress: f64) -> f64 {
    end + 0.5 * (start - end) * (1.0 + (std::f64::consts::PI * progress.clamp(0.0, 1.0)).cos())
}

/// `f` of a CPU f32 tensor's values in row-major order, read in place (no copy when the tensor is
/// contiguous); errors name `op`.
pub(crate) fn with_values<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(s) => f(contiguous_f32(s, layout, op)?),
        _ => Err(err(format!("{op}: CPU tensors only"))),
    }
}

/// Adds `bias` to every row of `rows` (rows of `bias.len()` values).
fn add_to_rows(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len().max(1)) {
        for (o, v) in row.iter_mut().zip(bias) {
            *o += v;
        }
    }
}

/// The sum of the rows of `g` (rows of `h` values): a bias's gradient.
fn row_sums(g: &[f32], h: usize) -> Vec<f32> {
    let mut sums = vec![0f32; h];
    for row in g.chunks_exact(h.max(1)) {
        for (s, v) in sums.iter_mut().zip(row) {
            *s += v;
        }
    }
    sums
}

/// Checks that `bias` is a vector as long as the last dimension of `x`; errors name `op`.
fn check_bias(op: &str, x: &Tensor, bias: &Tensor) -> Result<()> {
    if bias.rank() != 1 || x.dims().last() != Some(&bias.elem_count()) {
        return Err(err(format!("{op}: bias {:?} does not match the last dimension of x {:?}", bias.dims(), x.dims())));
    }
    Ok(())
}

/// `y[n] = x[n] + bias`.
struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "gaze-add-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (contiguous_f32(s1, l1, "add_bias")?, contiguous_f32(s2, l2, "add_bias")?);
        let mut out = x.to_vec();
        add_to_rows(&mut out, b);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = with_values(grad, "add_bias", |g| Ok(row_sums(g, bias.elem_count())))?;
        Ok((Some(grad.clone()), Some(Tensor::from_vec(db, bias.shape(), bias.device())?)))
    }
}

/// `x + bias` over the last dimension. Shapes: x (.., h), bias (h) -> like x.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    check_bias("add_bias", x, bias)?;
    x.contiguous()?.apply_op2(&bias.contiguous()?, AddBias)
}

/// A `candle_nn::Linear` on rows (n, in) -> (n, out), its bias added by [`add_bias`].
pub fn linear(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    let y = x.matmul(&layer.weight().t()?)?;
    match layer.bias() {
        Some(b) => add_bias(&y, b),
        None => Ok(y),
    }
}

/// The gradient through a ReLU of pre-activations `pre`: `grad` where `pre >= 0` (candle's
/// convention at 0), else 0.
fn relu_grad(pre: &[f32], grad: &[f32]) -> Vec<f32> {
    pre.iter().zip(grad).map(|(&p, &g)| if p >= 0.0 { g } else { 0.0 }).collect()
}

/// `y = max(0, x)`.
struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "gaze-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "relu")?;
        Ok((CpuStorage::F32(x.iter().map(|v| v.max(0.0)).collect()), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = with_values(x, "relu", |xv| with_values(grad, "relu", |gv| Ok(relu_grad(xv, gv))))?;
        Ok(Some(Tensor::from_vec(g, x.shape(), x.device())?))
    }
}

/// `max(0, x)` with a one-pass backward (`Tensor::relu`'s values and gradients). f32 only.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Relu)
}

/// `y[n] = max(0, x[n] + bias)`.
struct BiasRelu;

impl CustomOp2 for BiasRelu {
    fn name(&self) -> &'static str {
        "gaze-bias-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (contiguous_f32(s1, l1, "linear_relu")?, contiguous_f32(s2, l2, "linear_relu")?);
        let mut out = x.to_vec();
        add_to_rows(&mut out, b);
        out.iter_mut().for_each(|v| *v = v.max(0.0));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, bias: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = with_values(x, "linear_relu", |xv| {
            with_values(bias, "linear_relu", |b| {
                with_values(grad, "linear_relu", |gv| {
                    let (h, mut g) = (b.len().max(1), Vec::with_capacity(gv.len()));
                    for (xr, gr) in xv.chunks_exact(h).zip(gv.chunks_exact(h)) {
                        // x + bias >= 0, as `add_to_rows` adds them: candle's convention at 0.
                        g.extend(xr.iter().zip(b).zip(gr).map(|((&x, &c), &d)| if x + c >= 0.0 { d } else { 0.0 }));
                    }
                    Ok(g)
                })
            })
        })?;
        let db = row_sums(&g, bias.elem_count());
        Ok((
            Some(Tensor::from_vec(g, x.shape(), x.device())?),
            Some(Tensor::from_vec(db, bias.shape(), bias.device())?),
        ))
    }
}

/// `relu(linear(layer, x))` with the bias and the ReLU as one operation, forward and backward.
/// Shapes: x (n, in) -> (n, out).
pub fn linear_relu(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    bias_relu(&x.matmul(&layer.weight().t()?)?, layer.bias())
}

/// `max(0, x + bias)` over the last dimension as one operation (without a bias: [`relu`]).
/// Shapes: x (.., h), bias (h) -> like x.
pub fn bias_relu(x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => {
            check_bias("linear_relu", x, b)?;
            x.contiguous()?.apply_op2(&b.contiguous()?, BiasRelu)
        }
        None => relu(x),
    }
}

/// tanh from one `exp` (libm's `tanhf` goes through the slower `expm1f`), by its series near 0
/// where 1 - e^(-2|x|) would lose digits; within a few ulp of `f32::tanh`.
#[inline]
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    if a < 0.1 {
        let x2 = x * x;
        return x * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0 - x2 * (17.0 / 315.0))));
    }
    let e = (-2.0 * a).exp();
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

/// The scores of additive attention, e_bn = sum_k w_k tanh(keys_bnk + query_bk), as one op: the
/// composed candle ops write the (b, n, k) sum and its tanh as tensors at every decoder step,
/// forward and backward, and that was most of a captioner's training time. The backward
/// recomputes the tanh rather than keeping it. Shapes: keys (b, n, k), query (b, k), w (k) or
/// (1, k) -> (b, n).
pub fn additive_scores(keys: &Tensor, query: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (b, _, k) = keys.dims3()?;
    if query.dims() != [b, k] || w.elem_count() != k {
        return Err(err(format!(
            "additive_scores: keys {:?}, query {:?} and w {:?} do not agree (want (b, n, k), (b, k), (k))",
            keys.dims(),
            query.dims(),
            w.dims()
        )));
    }
    keys.contiguous()?.apply_op3(&query.contiguous()?, &w.contiguous()?, AdditiveScores)
}

struct AdditiveScores;

impl candle_core::CustomOp3 for AdditiveScores {
    fn name(&self) -> &'static str {
        "gaze-additive-scores"
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
        use rayon::prelude::*;
        let op = "additive_scores";
        let (keys, q, w) = (contiguous_f32(s1, l1, op)?, contiguous_f32(s2, l2, op)?, contiguous_f32(s3, l3, op)?);
        let (b, n, k) = l1.shape().dims3()?;
        let mut out = vec![0f32; b * n];
        if n > 0 && k > 0 {
            out.par_chunks_mut(n).enumerate().for_each(|(bi, dst)| {
                let qb = &q[bi * k..][..k];
                for (j, o) in dst.iter_mut().enumerate() {
                    let row = &keys[(bi * n + j) * k..][..k];
                    *o = row.iter().zip(qb).zip(w).map(|((&a, &c), &wk)| wk * tanh_f32(a + c)).sum();
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, n))))
    }

    fn bwd(
        &self,
        keys: &Tensor,
        query: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, n, k) = keys.dims3()?;
        let back = AdditiveScoresBack { w: w.flatten_all()?.to_vec1::<f32>()? };
        let flat = keys.apply_op3_no_bwd(query, &grad.contiguous()?, &back)?;
        let dk = flat.narrow(0, 0, b * n * k)?.reshape((b, n, k))?;
        let dq = flat.narrow(0, b * n * k, b * k)?.reshape((b, k))?;
        let dw = flat.narrow(0, b * n * k + b * k, k)?.reshape(w.shape())?;
        Ok((Some(dk), Some(dq), Some(dw)))
    }
}

/// The gradients of [`AdditiveScores`] from (keys, query, output gradient), laid end to end in
/// one vector: d keys (b n k), d query (b k), d w (k).
struct AdditiveScoresBack {
    w: Vec<f32>,
}

impl candle_core::CustomOp3 for AdditiveScoresBack {
    fn name(&self) -> &'static str {
        "gaze-additive-scores-backward"
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
        use rayon::prelude::*;
        let op = "additive_scores backward";
        let (keys, q, g) = (contiguous_f32(s1, l1, op)?, contiguous_f32(s2, l2, op)?, contiguous_f32(s3, l3, op)?);
        let (b, n, k) = l1.shape().dims3()?;
        let w = &self.w;
        let mut out = vec![0f32; b * n * k + b * k + k];
        if n > 0 && k > 0 {
            let (dk_all, rest) = out.split_at_mut(b * n * k);
            let (dq_all, dw_all) = rest.split_at_mut(b * k);
            let partial: Vec<Vec<f32>> = dk_all
                .par_chunks_mut(n * k)
                .zip(dq_all.par_chunks_mut(k))
                .enumerate()
                .map(|(bi, (dk, dq))| {
                    let mut dw = vec![0f32; k];
                    let qb = &q[bi * k..][..k];
                    for j in 0..n {
                        let gj = g[bi * n + j];
                        let row = &keys[(bi * n + j) * k..][..k];
                        let drow = &mut dk[j * k..][..k];
                        for t in 0..k {
                            let th = tanh_f32(row[t] + qb[t]);
                            dw[t] += gj * th;
                            let d = gj * w[t] * (1.0 - th * th);
                            drow[t] = d;
                            dq[t] += d;
                        }
                    }
                    dw
                })
                .collect();
            for p in partial {
                for (a, v) in dw_all.iter_mut().zip(p) {
                    *a += v;
                }
            }
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// The centre of each cell of a gh x gw grid as (x, y) in [-1, 1], cells row by row.
/// Shape (1, gh * gw, 2).
pub fn cell_centres(gh: usize, gw: usize, device: &candle_core::Device) -> Result<Tensor> {
    let mut xy = Vec::with_capacity(gh * gw * 2);
    for r in 0..gh {
        for c in 0..gw {
            xy.push((c as f32 + 0.5) / gw as f32 * 2.0 - 1.0);
            xy.push((r as f32 + 0.5) / gh as f32 * 2.0 - 1.0);
        }
    }
    Tensor::from_vec(xy, (1, gh * gw, 2), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An f32 tensor's values in row-major order.
    fn values(t: &Tensor) -> Result<Vec<f32>> {
        t.contiguous()?.flatten_all()?.to_vec1::<f32>()
    }
    use candle_core::Device;

    #[test]
    fn relu_and_linear_relu_match_candle_with_their_gradients() -> Result<()> {
        use candle_core::Var;
        let dev = Device::Cpu;
        // Values away from 0 (where the finite differences would straddle the kink), both signs.
        let r = |n: usize, s: f32| {
            Tensor::from_vec((0..n).map(|i| (((i * 7 + 3) % 11) as f32 - 5.3) * s).collect(), n, &dev)
        };
        let (w, b) = (r(12, 0.2)?.reshape((4, 3))?, r(4, 0.3)?);
        let x = Var::from_tensor(&r(15, 0.15)?.reshape((5, 3))?)?;
        let (wv, bv) = (Var::from_tensor(&w)?, Var::from_tensor(&b)?);
        let layer = Linear::new(wv.as_tensor().clone(), Some(bv.as_tensor().clone()));
        let weights = Tensor::from_vec((0..20).map(|i| i as f32 * 0.1 - 0.7).collect(), (5, 4), &dev)?;
        let loss = |y: Tensor| (y * &weights)?.sum_all();
        let want = candle_core::Module::forward(&layer, x.as_tensor())?.relu()?;
        let got = linear_relu(&layer, x.as_tensor())?;
        assert_eq!(values(&got)?, values(&want)?);
        assert!(values(&got)?.contains(&0.0) && values(&got)?.iter().any(|&v| v > 0.0), "both sides of the kink");
        let (gw, gg) = (loss(want)?.backward()?, loss(got)?.backward()?);
        for v in [&x, &wv, &bv] {
            let (a, b) = (gw.get(v.as_tensor()), gg.get(v.as_tensor()));
            let diff = match (a, b) {
                (Some(a), Some(b)) => (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?,
                _ => f32::INFINITY,
            };
            assert!(diff < 1e-6, "gradient of {:?}: {diff}", v.dims());
        }
        let pre = r(15, 0.15)?;
        assert_eq!(values(&relu(&pre)?)?, values(&pre.relu()?)?);
        let by_x = crate::testing::grad_check(|x| relu(x)?.sqr()?.sum_all(), &pre, 1e-2)?;
        assert!(by_x < 2e-3, "{by_x}");
        let odd = Linear::new(w, Some(r(3, 0.3)?));
        let e = linear_relu(&odd, x.as_tensor()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("linear_relu") && e.contains("does not match"), "{e}");
        Ok(())
    }

    #[test]
    fn add_bias_and_linear_match_candle_with_their_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let r =
            |n: usize, s: f32| Tensor::from_vec((0..n).map(|i| ((i * 7 + 3) % 11) as f32 * s - 1.0).collect(), n, &dev);
        let (w, b, x) = (r(12, 0.2)?.reshape((4, 3))?, r(4, 0.3)?, r(15, 0.15)?.reshape((5, 3))?);
        let layer = Linear::new(w, Some(b.clone()));
        let want = candle_core::Module::forward(&layer, &x)?;
        assert!((linear(&layer, &x)? - &want)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-6);
        let by_x = crate::testing::grad_check(|x| add_bias(x, &b)?.sqr()?.sum_all(), &want, 1e-2)?;
        let by_b = crate::testing::grad_check(|b| add_bias(&want, b)?.sqr()?.sum_all(), &b, 1e-2)?;
        assert!(by_x < 2e-3 && by_b < 2e-3, "{by_x} {by_b}");
        let e = add_bias(&x, &b).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("does not match the last dimension"), "{e}");
        Ok(())
    }

    #[test]
    fn top_k_keeps_exactly_the_k_largest() -> Result<()> {
        let s = Tensor::new(&[[0.1f32, 5.0, 3.0, 3.0, -1.0], [9.0, 8.0, 7.0, 6.0, 5.0]], &Device::Cpu)?;
        let (m, i) = top_k_mask(&s, 2)?;
        assert_eq!(m.to_vec2::<f32>()?, vec![vec![0.0, 1.0, 1.0, 0.0, 0.0], vec![1.0, 1.0, 0.0, 0.0, 0.0]]);
        assert_eq!(i.to_vec2::<u32>()?, vec![vec![1, 2], vec![0, 1]]);
        assert!(top_k_mask(&s, 0).is_err());
        let e = top_k_mask(&s, 6).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("k = 6") && e.contains("1..=5"), "{e}");
        Ok(())
    }

    #[test]
    fn masked_softmax_sums_to_one_on_kept() -> Result<()> {
        let x = Tensor::new(&[[1f32, 2.0, 3.0], [0.0, 0.0, 100.0]], &Device::Cpu)?;
        let m = Tensor::new(&[[1f32, 0.0, 1.0], [1.0, 1.0, 0.0]], &Device::Cpu)?;
        let p = masked_softmax(&x, &m)?.to_vec2::<f32>()?;
        assert!((p[0][0] + p[0][2] - 1.0).abs() < 1e-6 && p[0][1] == 0.0);
        let e = (1f32).exp() / ((1f32).exp() + (3f32).exp());
        assert!((p[0][0] - e).abs() < 1e-6);
        assert!((p[1][0] - 0.5).abs() < 1e-6 && p[1][2] == 0.0);
        let none = Tensor::new(&[[0f32, 0.0, 0.0]], &Device::Cpu)?;
        assert!(masked_softmax(&x.narrow(0, 0, 1)?, &none).is_err());
        Ok(())
    }

    #[test]
    fn max_pool_matches_candle_forward_and_has_the_right_gradient() -> Result<()> {
        use rand::Rng;
        let mut r = crate::Seed(3).rng();
        let x = Tensor::from_vec(
            (0..2 * 3 * 9 * 8).map(|_| r.random::<f32>()).collect::<Vec<_>>(),
            (2, 3, 9, 8),
            &Device::Cpu,
        )?;
        let ours = max_pool2d(&x, 2)?;
        assert_eq!(ours.dims(), &[2, 3, 4, 4]);
        assert_eq!(ours.flatten_all()?.to_vec1::<f32>()?, x.max_pool2d(2)?.flatten_all()?.to_vec1::<f32>()?);
        let small = x.narrow(0, 0, 1)?.narrow(1, 0, 1)?.narrow(2, 0, 4)?.narrow(3, 0, 4)?;
        let w = Tensor::new(&[[[[1f32, -2.0], [0.5, 3.0]]]], &Device::Cpu)?;
        let c = crate::testing::grad_check_kinks(|x| (max_pool2d(x, 2)? * &w)?.sum_all(), &small, 1e-3)?;
        assert!(c.max_rel_err < 1e-2 && c.compared >= 12, "{c:?}");
        // candle's own pool gets this wrong (a quarter of the gradient): keep the workaround
        // until this fails.
        let theirs = crate::testing::grad_check_kinks(|x| (x.max_pool2d(2)? * &w)?.sum_all(), &small, 1e-3)?;
        assert!(theirs.max_rel_err > 0.5, "candle's max_pool2d backward looks fixed: {theirs:?}");
        Ok(())
    }

    #[test]
    fn max_pool_sends_a_windows_gradient_to_every_tied_maximum() -> Result<()> {
        // One 2x2 window of equal values and one with a unique maximum.
        let x = candle_core::Var::new(&[[[[0.5f32, 0.5, 0.1, 0.9], [0.5, 0.5, 0.3, 0.2]]]], &Device::Cpu)?;
        let g =
            (max_pool2d(x.as_tensor(), 2)? * Tensor::new(&[[[[2f32, 3.0]]]], &Device::Cpu)?)?.sum_all()?.backward()?;
        let dx = g.get(&x).map(|t| t.flatten_all()?.to_vec1::<f32>()).transpose()?.unwrap_or_default();
        assert_eq!(dx, vec![2.0, 2.0, 0.0, 3.0, 2.0, 2.0, 0.0, 0.0]);
        Ok(())
    }

    #[test]
    fn presence_is_squared_norm() -> Result<()> {
        let f = Tensor::new(&[[[3f32, 4.0], [1.0, 0.0]]], &Device::Cpu)?;
        assert_eq!(presence(&f)?.to_vec2::<f32>()?, vec![vec![25.0, 1.0]]);
        assert!(presence(&f.flatten_all()?).is_err());
        Ok(())
    }

    #[test]
    fn additive_scores_match_the_composed_ops_in_value_and_gradient() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let r = |shape: &[usize], seed: u64| -> Result<Tensor> {
            let n: usize = shape.iter().product();
            let v: Vec<f32> =
                (0..n).map(|i| ((i as u64 * 7919 + seed * 104_729) % 1000) as f32 / 250.0 - 2.0).collect();
            Tensor::from_vec(v, shape, &dev)
        };
        // odd sizes: 3 rows, 5 cells, 7 hidden units
        let (keys, q, w) = (r(&[3, 5, 7], 1)?, r(&[3, 7], 2)?, r(&[1, 7], 3)?.affine(0.5, 0.0)?);
        let composed = |k: &Tensor, q: &Tensor, w: &Tensor| -> Result<Tensor> {
            k.broadcast_add(&q.unsqueeze(1)?)?.tanh()?.broadcast_mul(&w.reshape((1, 1, 7))?)?.sum(D::Minus1)
        };
        let got = additive_scores(&keys, &q, &w)?;
        let want = composed(&keys, &q, &w)?;
        assert_eq!(got.dims(), &[3, 5]);
        assert!((got - &want)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
        let g = r(&[3, 5], 4)?;
        let loss = |x: &Tensor| -> Result<Tensor> { (x * &g)?.sum_all() };
        for which in 0..3 {
            let grad_of = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>| -> Result<Vec<f32>> {
                let vars = [
                    candle_core::Var::from_tensor(&keys)?,
                    candle_core::Var::from_tensor(&q)?,
                    candle_core::Var::from_tensor(&w)?,
                ];
                let out = loss(&f(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor())?)?;
                let grads = out.backward()?;
                let gr = grads.get(&vars[which]).ok_or_else(|| err("no gradient".into()))?;
                gr.flatten_all()?.to_vec1::<f32>()
            };
            let (a, b) = (grad_of(&|k, q, w| additive_scores(k, q, w))?, grad_of(&composed)?);
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-4, "input {which}: {x} vs {y}");
            }
        }
        // tanh near 0, at the series' edge and far out
        for x in [0.0f32, 1e-6, -0.05, 0.0999, 0.1, -0.1001, 0.7, -3.0, 12.0, -90.0] {
            assert!((tanh_f32(x) - x.tanh()).abs() <= 4.0 * f32::EPSILON * x.tanh().abs().max(1e-30), "{x}");
        }
        assert!(additive_scores(&keys, &q.narrow(1, 0, 6)?, &w).is_err());
        Ok(())
    }
}

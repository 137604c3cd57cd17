//! 2-d convolution as one matrix product, with a backward pass of matrix products too.
//!
//! The input (b, c, h, w) is unfolded ("im2col") into a matrix of (c k k) rows and (b ho wo)
//! columns, one column per output position of every image; the convolution is then the product
//! of the weights (co, c k k) with it, one product for the whole batch, and its gradients are two
//! more products (dW = dY cols^T, dcols = W^T dY) and a fold back ("col2im") of dcols. The
//! products are candle's (the multi-threaded `gemm` kernels its matmul uses); the unfold and fold
//! are gaze's own operations, each the other's backward. candle's own conv2d backward goes
//! through a transposed convolution and a convolution per gradient, several times slower on CPU
//! for the small channel counts of gaze's models, and wrong in shape when the stride does not
//! divide the padded input's extent past the kernel (the test that compares gradients skips those
//! shapes for candle and checks them by finite differences alone).
//!
//! Values equal candle's `conv2d` up to summation order (a test compares them, and checks the
//! gradients by finite differences).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::contiguous_f32;

fn err(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(msg)
}

/// The geometry of one convolution: input (b, c, h, w), a square kernel, stride and zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

impl Geometry {
    fn out(&self) -> (usize, usize) {
        let o = |n: usize| (n + 2 * self.pad).saturating_sub(self.k) / self.stride + 1;
        (o(self.h), o(self.w))
    }

    /// (rows, columns) of the unfolded matrix.
    fn cols_shape(&self) -> (usize, usize) {
        let (ho, wo) = self.out();
        (self.c * self.k * self.k, self.b * ho * wo)
    }

    /// Fills row `row` of the unfolded matrix (its `b ho wo` columns) from the input.
    fn unfold_row(&self, row: usize, x: &[f32], out: &mut [f32]) {
        let (ho, wo) = self.out();
        let (ci, ky, kx) = (row / (self.k * self.k), row / self.k % self.k, row % self.k);
        let hw = self.h * self.w;
        for bi in 0..self.b {
            let plane = &x[(bi * self.c + ci) * hw..][..hw];
            for oy in 0..ho {
                let iy = (oy * self.stride + ky) as isize - self.pad as isize;
                let dst = &mut out[(bi * ho + oy) * wo..][..wo];
                if iy < 0 || iy >= self.h as isize {
                    dst.fill(0.0);
                    continue;
                }
                let src = &plane[iy as usize * self.w..][..self.w];
                for (ox, d) in dst.iter_mut().enumerate() {
                    let ix = (ox * self.stride + kx) as isize - self.pad as isize;
                    *d = if ix >= 0 && (ix as usize) < self.w { src[ix as usize] } else { 0.0 };
                }
            }
        }
    }

    /// Adds into one channel plane (`bi`, `ci`) of the input's gradient every entry of the
    /// unfolded gradient that came from it.
    fn fold_plane(&self, bi: usize, ci: usize, cols: &[f32], plane: &mut [f32]) {
        let (ho, wo) = self.out();
        let ncols = self.b * ho * wo;
        for ky in 0..self.k {
            for kx in 0..self.k {
                let row = &cols[((ci * self.k + ky) * self.k + kx) * ncols..][..ncols];
                for oy in 0..ho {
                    let iy = (oy * self.stride + ky) as isize - self.pad as isize;
                    if iy < 0 || iy >= self.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * self.w..][..self.w];
                    let src = &row[(bi * ho + oy) * wo..][..wo];
                    for (ox, v) in src.iter().enumerate() {
                        let ix = (ox * self.stride + kx) as isize - self.pad as isize;
                        if ix >= 0 && (ix as usize) < self.w {
                            dst[ix as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Unfold: (b, c, h, w) -> (c k k, b ho wo).
struct Im2Col(Geometry);

/// Fold (sum overlapping positions): (c k k, b ho wo) -> (b, c, h, w).
struct Col2Im(Geometry);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "gaze-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "im2col")?;
        let g = self.0;
        let (rows, cols) = g.cols_shape();
        let mut out = vec![0f32; rows * cols];
        // One row per task: rows are disjoint slices of the output.
        out.par_chunks_mut(cols.max(1)).enumerate().for_each(|(r, dst)| g.unfold_row(r, x, dst));
        Ok((CpuStorage::F32(out), Shape::from((rows, cols))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2Im(self.0))?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "gaze-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = contiguous_f32(s, l, "col2im")?;
        let g = self.0;
        let mut out = vec![0f32; g.b * g.c * g.h * g.w];
        // One channel plane per task: planes are disjoint slices of the output.
        out.par_chunks_mut((g.h * g.w).max(1))
            .enumerate()
            .for_each(|(p, plane)| g.fold_plane(p / g.c, p % g.c, cols, plane));
        Ok((CpuStorage::F32(out), Shape::from((g.b, g.c, g.h, g.w))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Im2Col(self.0))?))
    }
}

/// A 2-d convolution with zero padding, as candle's `conv2d` computes it, with a cheaper
/// backward. Shapes: x (b, c, h, w), weight (co, c, k, k), bias (co) -> (b, co, ho, wo) with
/// ho = (h + 2 pad - k) / stride + 1 (likewise wo).
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize, pad: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (co, wc, k, k2) = weight.dims4()?;
    if wc != c || k != k2 || k == 0 {
        return Err(err(format!(
            "conv2d: weight {:?} does not fit input {:?} (it needs (out, {c}, k, k))",
            weight.dims(),
            x.dims()
        )));
    }
    if stride == 0 {
        return Err(err("conv2d: stride 0".into()));
    }
    if h + 2 * pad < k || w + 2 * pad < k {
        return Err(err(format!("conv2d: a {k}x{k} kernel does not fit a {h}x{w} input padded by {pad}")));
    }
    if let Some(bias) = bias {
        if bias.dims() != [co] {
            return Err(err(format!("conv2d: bias {:?} for {co} output channels", bias.dims())));
        }
    }
    let g = Geometry { b, c, h, w, k, stride, pad };
    let (ho, wo) = g.out();
    let cols = x.contiguous()?.apply_op1(Im2Col(g))?; // (c k k, b ho wo)
    let mut y = weight.reshape((co, c * k * k))?.matmul(&cols)?; // (co, b ho wo)
    if let Some(bias) = bias {
        y = y.broadcast_add(&bias.reshape((co, 1))?)?;
    }
    y.reshape((co, b, ho, wo))?.transpose(0, 1)?.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::grad_check;
    use crate::Seed;
    use candle_core::Device;
    use rand::Rng as _;

    fn rand(shape: &[usize], seed: u64) -> Result<Tensor> {
        let mut r = Seed(seed).rng();
        let n: usize = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| r.random::<f32>() * 2.0 - 1.0).collect::<Vec<_>>(), shape, &Device::Cpu)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Odd shapes: batch 1 and 3, channels not a multiple of 8, stride 1 and 2, padding 0-2,
    /// kernels 1, 3 and 5, a non-square input.
    /// (b, c, h, w, co, k, stride, pad)
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

    const CASES: [Case; 6] = [
        (1, 1, 7, 7, 3, 3, 1, 1),
        (3, 5, 9, 6, 7, 3, 2, 1),
        (2, 3, 8, 8, 4, 1, 1, 0),
        (2, 2, 11, 10, 5, 5, 2, 2),
        (1, 6, 5, 7, 9, 3, 1, 0),
        (3, 3, 6, 6, 2, 3, 3, 2),
    ];

    #[test]
    fn values_equal_candles_conv2d_on_odd_shapes() -> Result<()> {
        for (i, &(b, c, h, w, co, k, stride, pad)) in CASES.iter().enumerate() {
            let (x, wt, bias) =
                (rand(&[b, c, h, w], i as u64)?, rand(&[co, c, k, k], 10 + i as u64)?, rand(&[co], 20)?);
            let ours = conv2d(&x, &wt, Some(&bias), stride, pad)?;
            let theirs = x.conv2d(&wt, pad, stride, 1, 1)?.broadcast_add(&bias.reshape((1, co, 1, 1))?)?;
            assert_eq!(ours.dims(), theirs.dims(), "case {i}");
            assert!(max_diff(&ours, &theirs)? < 1e-5, "case {i}");
            let no_bias = conv2d(&x, &wt, None, stride, pad)?;
            assert!(max_diff(&no_bias, &x.conv2d(&wt, pad, stride, 1, 1)?)? < 1e-5, "case {i}");
        }
        Ok(())
    }

    #[test]
    fn gradients_check_by_finite_differences_and_match_candle() -> Result<()> {
        for (i, &(b, c, h, w, co, k, stride, pad)) in CASES.iter().enumerate() {
            let (x, wt, bias) =
                (rand(&[b, c, h, w], i as u64)?, rand(&[co, c, k, k], 10 + i as u64)?, rand(&[co], 20)?);
            let (ho, wo) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
            let mix = rand(&[b, co, ho, wo], 30 + i as u64)?; // a loss that weighs every output
            let loss =
                |x: &Tensor, wt: &Tensor, bias: &Tensor| (conv2d(x, wt, Some(bias), stride, pad)? * &mix)?.sum_all();
            assert!(grad_check(|v| loss(v, &wt, &bias), &x, 1e-2)? < 1e-2, "case {i}: d/dx");
            assert!(grad_check(|v| loss(&x, v, &bias), &wt, 1e-2)? < 1e-2, "case {i}: d/dw");
            assert!(grad_check(|v| loss(&x, &wt, v), &bias, 1e-2)? < 1e-2, "case {i}: d/db");
            // and the same gradients as candle's conv2d, where it has them: when the stride does
            // not divide h + 2 pad - k, candle's backward (a transposed convolution without output
            // padding) returns a gradient of the wrong shape for x ("shape mismatch in add").
            if (h + 2 * pad - k) % stride != 0 || (w + 2 * pad - k) % stride != 0 {
                continue;
            }
            let (xv, wv) = (candle_core::Var::from_tensor(&x)?, candle_core::Var::from_tensor(&wt)?);
            let ours = (conv2d(xv.as_tensor(), wv.as_tensor(), None, stride, pad)? * &mix)?.sum_all()?.backward()?;
            let theirs = (xv.conv2d(wv.as_tensor(), pad, stride, 1, 1)? * &mix)?.sum_all()?.backward()?;
            for v in [&xv, &wv] {
                let (a, b) = (ours.get(v), theirs.get(v));
                let (Some(a), Some(b)) = (a, b) else { panic!("case {i}: a gradient is missing") };
                assert!(max_diff(a, b)? < 1e-4, "case {i}");
            }
        }
        Ok(())
    }

    #[test]
    fn shapes_that_do_not_fit_are_named() -> Result<()> {
        let x = rand(&[1, 3, 4, 4], 0)?;
        let e = conv2d(&x, &rand(&[2, 2, 3, 3], 1)?, None, 1, 1).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("[2, 2, 3, 3]") && e.contains("[1, 3, 4, 4]"), "{e}");
        assert!(conv2d(&x, &rand(&[2, 3, 7, 7], 1)?, None, 1, 1).is_err(), "kernel larger than the padded input");
        assert!(conv2d(&x, &rand(&[2, 3, 3, 3], 1)?, None, 0, 1).is_err(), "stride 0");
        assert!(conv2d(&x, &rand(&[2, 3, 3, 3], 1)?, Some(&rand(&[3], 2)?), 1, 1).is_err(), "bias length");
        Ok(())
    }
}

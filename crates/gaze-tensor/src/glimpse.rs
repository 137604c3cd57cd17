//! Batched glimpse extraction: the retina of "Recurrent Models of Visual Attention" (Mnih et
//! al. 2014) for a whole batch at once.
//!
//! For images (b, c, h, w) and locations (b, 2) = (x, y) in [-1, 1], the centre pixel is
//! `0.5 * (l + 1) * size` and the i-th patch (i = 0..k) has side `g * s^i`, its top-left corner
//! at `round(centre - side / 2)`. Pixels outside the image are zero. Each patch is average-pooled
//! down to g x g (kernel == stride, so candle's pool backward applies). The cut is one custom op
//! per scale for the whole batch: forward copies row slices (zeros outside the image), backward
//! adds the gradient's rows back, so gradients reach the image. (A first version gathered from a
//! zero-padded copy; candle's CPU `gather` made it 9x slower than a per-sample loop on 60x60
//! canvases with three scales.)

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

fn err(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(msg)
}

/// Patch size, number of scales and scale factor of a retina.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlimpseSpec {
    /// Side g of every output patch.
    pub patch: usize,
    /// Number of concentric patches k.
    pub scales: usize,
    /// Factor s between successive patch sides.
    pub factor: usize,
}

impl GlimpseSpec {
    /// Side of the largest patch, `g * s^(k-1)`.
    pub fn largest(&self) -> usize {
        self.patch * self.factor.max(1).pow(self.scales.saturating_sub(1) as u32)
    }

    /// Checks the spec against an `h x w` image.
    pub fn check(&self, h: usize, w: usize) -> Result<()> {
        if self.patch == 0 || self.scales == 0 || self.factor == 0 {
            return Err(err(format!(
                "glimpse: patch {}, scales {}, factor {} must all be >= 1",
                self.patch, self.scales, self.factor
            )));
        }
        if self.largest() > h.max(w) {
            return Err(err(format!(
                "glimpse: the largest patch ({} = {} x {}^{}) is larger than the {h}x{w} canvas",
                self.largest(),
                self.patch,
                self.factor,
                self.scales - 1
            )));
        }
        Ok(())
    }
}

/// Top-left corners (x0, y0) of a patch of side `side` around each location, in image pixels.
pub fn corners(locs: &[f32], h: usize, w: usize, side: usize) -> Vec<(i64, i64)> {
    locs.chunks(2)
        .map(|l| {
            let (lx, ly) = (l[0].clamp(-1.0, 1.0), l[1].clamp(-1.0, 1.0));
            let cx = 0.5 * (lx + 1.0) * w as f32;
            let cy = 0.5 * (ly + 1.0) * h as f32;
            ((cx - side as f32 / 2.0).round() as i64, (cy - side as f32 / 2.0).round() as i64)
        })
        .collect()
}

/// Cuts a `side x side` window at each sample's corner (x0, y0) from a contiguous f32 batch
/// (b, c, h, w); pixels outside the image are zero.
struct Crop {
    corners: Vec<(i64, i64)>,
    side: usize,
}

impl Crop {
    /// For each (sample, channel, window row): the source row offset, the destination offset,
    /// and the length of the run inside the image.
    fn runs(&self, dims: (usize, usize, usize, usize)) -> Vec<(usize, usize, usize)> {
        let (b, c, h, w) = dims;
        let s = self.side;
        let mut out = Vec::with_capacity(b * c * s);
        for (n, &(x0, y0)) in self.corners.iter().enumerate().take(b) {
            let (xa, xb) = (x0.max(0), (x0 + s as i64).min(w as i64));
            if xa >= xb {
                continue;
            }
            for ch in 0..c {
                for r in 0..s {
                    let y = y0 + r as i64;
                    if y < 0 || y >= h as i64 {
                        continue;
                    }
                    let src = ((n * c + ch) * h + y as usize) * w + xa as usize;
                    let dst = ((n * c + ch) * s + r) * s + (xa - x0) as usize;
                    out.push((src, dst, (xb - xa) as usize));
                }
            }
        }
        out
    }
}

impl CustomOp1 for Crop {
    fn name(&self) -> &'static str {
        "gaze-glimpse-crop"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            return Err(err("glimpse: images must be f32".into()));
        };
        let Some((start, _)) = layout.contiguous_offsets() else {
            return Err(err("glimpse: images must be contiguous".into()));
        };
        let (b, c, h, w) = layout.shape().dims4()?;
        let s = self.side;
        let mut out = vec![0f32; b * c * s * s];
        for (src, dst, len) in self.runs((b, c, h, w)) {
            out[dst..dst + len].copy_from_slice(&data[start + src..start + src + len]);
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c, s, s))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dims = arg.dims4()?;
        let g = grad_res.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; arg.elem_count()];
        for (src, dst, len) in self.runs(dims) {
            for (o, v) in out[src..src + len].iter_mut().zip(&g[dst..dst + len]) {
                *o += v;
            }
        }
        Ok(Some(Tensor::from_vec(out, arg.shape(), arg.device())?))
    }
}

fn check_inputs(images: &Tensor, locs: &Tensor, spec: &GlimpseSpec) -> Result<(usize, usize, usize, usize)> {
    let (b, c, h, w) =
        images.dims4().map_err(|_| err(format!("glimpse: images must be (b, c, h, w), got {:?}", images.dims())))?;
    let (lb, two) =
        locs.dims2().map_err(|_| err(format!("glimpse: locations must be (b, 2), got {:?}", locs.dims())))?;
    if lb != b || two != 2 {
        return Err(err(format!(
            "glimpse: locations {:?} do not match images {:?} (want ({b}, 2))",
            locs.dims(),
            images.dims()
        )));
    }
    spec.check(h, w)?;
    Ok((b, c, h, w))
}

/// Glimpses for the whole batch. Shapes: images (b, c, h, w), locs (b, 2) -> (b, k, c, g, g).
pub fn glimpses(images: &Tensor, locs: &Tensor, spec: &GlimpseSpec) -> Result<Tensor> {
    let (_b, _c, h, w) = check_inputs(images, locs, spec)?;
    let images = images.to_dtype(candle_core::DType::F32)?.contiguous()?;
    let l = locs.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(spec.scales);
    for i in 0..spec.scales {
        let side = spec.patch * spec.factor.pow(i as u32);
        let patch = images.apply_op1(Crop { corners: corners(&l, h, w, side), side })?;
        let k = side / spec.patch;
        out.push(if k > 1 { patch.avg_pool2d(k)? } else { patch });
    }
    Tensor::stack(&out, 1)
}

/// The same glimpses cut one sample at a time (the public PyTorch RAM's way): the reference
/// the batched version is tested and benchmarked against.
pub fn glimpses_loop(images: &Tensor, locs: &Tensor, spec: &GlimpseSpec) -> Result<Tensor> {
    let (b, _c, h, w) = check_inputs(images, locs, spec)?;
    let pad = spec.largest() / 2 + 1;
    let l = locs.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut per_sample = Vec::with_capacity(b);
    for s in 0..b {
        let img = images.narrow(0, s, 1)?.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?;
        let mut scales = Vec::with_capacity(spec.scales);
        for i in 0..spec.scales {
            let side = spec.patch * spec.factor.pow(i as u32);
            let (x0, y0) = corners(&l[2 * s..2 * s + 2], h, w, side)[0];
            let patch = img.narrow(2, (y0 + pad as i64) as usize, side)?.narrow(3, (x0 + pad as i64) as usize, side)?;
            let k = side / spec.patch;
            scales.push(if k > 1 { patch.avg_pool2d(k)? } else { patch });
        }
        per_sample.push(Tensor::stack(&scales, 1)?);
    }
    Tensor::cat(&per_sample, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::grad_check;
    use crate::Seed;
    use candle_core::Device;
    use rand::Rng;

    /// Cuts patch `side` at corner (x0, y0) of a (h, w) single-channel image by hand, with zeros
    /// outside, and averages blocks of `k`.
    fn hand(img: &[f32], h: usize, w: usize, x0: i64, y0: i64, side: usize, k: usize) -> Vec<f32> {
        let px = |y: i64, x: i64| {
            if y < 0 || x < 0 || y >= h as i64 || x >= w as i64 {
                0.0
            } else {
                img[y as usize * w + x as usize]
            }
        };
        let g = side / k;
        let mut out = vec![0f32; g * g];
        for r in 0..g {
            for c in 0..g {
                let mut s = 0.0;
                for dy in 0..k {
                    for dx in 0..k {
                        s += px(y0 + (r * k + dy) as i64, x0 + (c * k + dx) as i64);
                    }
                }
                out[r * g + c] = s / (k * k) as f32;
            }
        }
        out
    }

    #[test]
    fn glimpses_equal_hand_cut_patches_at_borders_too() -> Result<()> {
        let (h, w) = (12, 10);
        let mut rng = Seed(3).rng();
        let data: Vec<f32> = (0..2 * h * w).map(|_| rng.random::<f32>()).collect();
        let images = Tensor::from_vec(data.clone(), (2, 1, h, w), &Device::Cpu)?;
        let spec = GlimpseSpec { patch: 2, scales: 3, factor: 2 };
        // corners, edges and the centre
        for loc in [[-1.0f32, -1.0], [1.0, 1.0], [0.0, 0.0], [-0.9, 0.95], [0.33, -0.6]] {
            let locs = Tensor::new(&[loc, [loc[1], loc[0]]], &Device::Cpu)?;
            let got = glimpses(&images, &locs, &spec)?;
            assert_eq!(got.dims(), &[2, 3, 1, 2, 2]);
            let reference = glimpses_loop(&images, &locs, &spec)?;
            assert_eq!(got.flatten_all()?.to_vec1::<f32>()?, reference.flatten_all()?.to_vec1::<f32>()?);
            let l = locs.flatten_all()?.to_vec1::<f32>()?;
            for s in 0..2 {
                for i in 0..3 {
                    let side = 2 * 2usize.pow(i as u32);
                    let (x0, y0) = corners(&l[2 * s..2 * s + 2], h, w, side)[0];
                    let want = hand(&data[s * h * w..(s + 1) * h * w], h, w, x0, y0, side, side / 2);
                    let have = got.get(s)?.get(i)?.flatten_all()?.to_vec1::<f32>()?;
                    for (a, b) in have.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-6, "sample {s} scale {i} loc {loc:?}: {have:?} vs {want:?}");
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn corners_follow_the_paper_formula() {
        // l = 0 is the centre; l = -1 puts the centre on the top-left corner.
        assert_eq!(corners(&[0.0, 0.0], 28, 28, 8), vec![(10, 10)]);
        assert_eq!(corners(&[-1.0, -1.0], 28, 28, 8), vec![(-4, -4)]);
        assert_eq!(corners(&[1.0, -1.0], 28, 28, 8), vec![(24, -4)]);
    }

    #[test]
    fn bad_arguments_name_the_shapes() -> Result<()> {
        let images = Tensor::zeros((2, 1, 28, 28), candle_core::DType::F32, &Device::Cpu)?;
        let locs = Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu)?;
        let big = GlimpseSpec { patch: 8, scales: 3, factor: 2 };
        let e = glimpses(&images, &locs, &big).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("32") && e.contains("28x28 canvas"), "{e}");
        let e = glimpses(&images, &locs.narrow(0, 0, 1)?, &GlimpseSpec { patch: 8, scales: 1, factor: 2 })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("[1, 2]"), "{e}");
        assert!(glimpses(&images, &locs, &GlimpseSpec { patch: 0, scales: 1, factor: 2 }).is_err());
        Ok(())
    }

    #[test]
    fn gradient_reaches_the_image() -> Result<()> {
        let mut rng = Seed(5).rng();
        let x = Tensor::from_vec((0..64).map(|_| rng.random::<f32>()).collect::<Vec<_>>(), (1, 1, 8, 8), &Device::Cpu)?;
        let locs = Tensor::new(&[[0.3f32, -0.7]], &Device::Cpu)?;
        let spec = GlimpseSpec { patch: 2, scales: 2, factor: 2 };
        let wts = Tensor::from_vec((0..8).map(|i| i as f32 - 3.0).collect::<Vec<_>>(), (1, 2, 1, 2, 2), &Device::Cpu)?;
        let err = grad_check(|x| (glimpses(x, &locs, &spec)? * &wts)?.sum_all(), &x, 1e-2)?;
        assert!(err < 1e-2, "relative error {err}");
        Ok(())
    }
}

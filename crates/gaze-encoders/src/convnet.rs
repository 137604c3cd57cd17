//! A configurable ConvNet: blocks of conv ("same" padding, with zeros or by replicating the border)
//! -> optional batch or group norm -> ReLU ->
//! optional max-pool with kernel == stride ([`gaze_tensor::ops::max_pool2d`]: candle's own
//! pool backward is wrong by a factor of k^2). With `coord_channels`, two channels holding each
//! pixel's (x, y) in [-1, 1] join the input ("An intriguing failing of convolutional neural
//! networks and the CoordConv solution", Liu et al. 2018), so features can say where in the image
//! they are, finer than the output grid.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, Conv2d, GroupNorm, VarBuilder};
use serde::{Deserialize, Serialize};

/// Settings of a [`ConvNet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConvNetConfig {
    /// Input channels (1 for MNIST, 3 for RGB).
    pub in_channels: usize,
    /// Output channels of each block.
    pub channels: Vec<usize>,
    /// Square kernel side of every conv (odd, so "same" padding keeps the size).
    pub kernel: usize,
    /// Max-pool window and stride after each block (1: no pooling).
    pub pool: usize,
    /// Batch norm after each conv.
    pub batch_norm: bool,
    /// Convolutions per block before its pooling (VGG stacks 2 or 3).
    pub convs_per_block: usize,
    /// Stride of each block's first conv (1: none; 2 with `pool = 1` is the Relation Networks
    /// CNN, four times cheaper than conv + pool at the same output size).
    pub stride: usize,
    /// The first conv's stride block by block, one per block, in place of `stride` (empty: `stride`
    /// for every block). `[2, 2, 2, 1]` keeps the last block's grid as fine as the one before it
    /// while its receptive field still grows.
    pub strides: Vec<usize>,
    /// Group norm after each conv with this many channel groups (0: none). Unlike batch norm it
    /// normalises each image on its own ("Group Normalization", Wu and He 2018), so training
    /// and evaluation compute the same function and small batches are fine. Not with `batch_norm`.
    pub group_norm: usize,
    /// Append two channels with each pixel's (x, y) in [-1, 1] to the input (CoordConv): the
    /// first conv reads `in_channels + 2` channels. Lets a cell's features encode where in the
    /// cell (and the image) its content lies, which zero padding tells only near the border.
    pub coord_channels: bool,
    /// What the convs see past the border of their input. `zeros` (the default) suits the raw
    /// image when its background is black, but after a norm and a ReLU the background of a
    /// feature map is some value c, not 0: zero padding then draws an edge along every border,
    /// and empty border cells stand out from empty inner ones. `replicate` repeats the outermost
    /// row and column instead, so an empty border looks like empty space.
    pub padding: Padding,
}

/// How a [`ConvNet`]'s convs pad their input to keep its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// Zeros past the border.
    #[default]
    Zeros,
    /// The border pixels repeated.
    Replicate,
}

impl Default for ConvNetConfig {
    /// Two 3x3 blocks of 32 and 64 channels, each followed by 2x2 max-pooling.
    fn default() -> Self {
        Self {
            in_channels: 1,
            channels: vec![32, 64],
            kernel: 3,
            pool: 2,
            batch_norm: false,
            convs_per_block: 1,
            stride: 1,
            strides: vec![],
            group_norm: 0,
            coord_channels: false,
            padding: Padding::Zeros,
        }
    }
}

impl ConvNetConfig {
    /// A small net for tests.
    pub fn tiny() -> Self {
        Self {
            in_channels: 1,
            channels: vec![4, 8],
            kernel: 3,
            pool: 2,
            batch_norm: false,
            convs_per_block: 1,
            stride: 1,
            strides: vec![],
            group_norm: 0,
            coord_channels: false,
            padding: Padding::Zeros,
        }
    }

    /// VGG-style blocks ("Very Deep Convolutional Networks", Simonyan and Zisserman 2015): two
    /// 3x3 convs with batch norm per block, 2x2 max-pooling after each block. Learn to Pay
    /// Attention reads three of these blocks' outputs.
    pub fn vgg(in_channels: usize, channels: Vec<usize>) -> Self {
        Self {
            in_channels,
            channels,
            kernel: 3,
            pool: 2,
            batch_norm: true,
            convs_per_block: 2,
            stride: 1,
            strides: vec![],
            group_norm: 0,
            coord_channels: false,
            padding: Padding::Zeros,
        }
    }

    /// The pad on each side that keeps a stride-1 conv's output the size of its input ("same"),
    /// whichever [`Padding`] fills it.
    pub fn same_pad(&self) -> usize {
        self.kernel / 2
    }

    /// Where each block's grids lie on an `h x w` input: for every block, its output's size and
    /// frame before pooling, then after it (the same when `pool = 1`).
    pub fn frames(&self, h: usize, w: usize) -> Vec<[((usize, usize), CellFrame); 2]> {
        let (k, p) = (self.kernel, self.pool.max(1));
        let start = |n: usize| Track { n, first: 0.5, step: 1.0 };
        let (mut ty, mut tx) = (start(h), start(w));
        let mut out = Vec::with_capacity(self.channels.len());
        for i in 0..self.channels.len() {
            for j in 0..self.convs_per_block.max(1) {
                let stride = if j == 0 { self.block_stride(i) } else { 1 };
                (ty, tx) = (ty.conv(k, stride), tx.conv(k, stride));
            }
            let unpooled = ((ty.n, tx.n), CellFrame { y: ty.axis(h), x: tx.axis(w) });
            (ty, tx) = (ty.pool(p), tx.pool(p));
            out.push([unpooled, ((ty.n, tx.n), CellFrame { y: ty.axis(h), x: tx.axis(w) })]);
        }
        out
    }

    /// The frame of the block output (pooled or not) of size `grid` for an `image`-sized input;
    /// None when no block gives that size, or when its cells tile the image evenly (within a
    /// millionth of the side: the even tiling's own arithmetic is then used).
    pub fn cell_frame(&self, grid: (usize, usize), (h, w): (usize, usize)) -> Option<CellFrame> {
        let f = self.frames(h, w).into_iter().flatten().find(|(g, _)| *g == grid).map(|(_, f)| f)?;
        (!f.is_even(grid)).then_some(f)
    }

    /// The (channels, height, width) of the last feature map for an input of `h x w`.
    pub fn output_shape(&self, h: usize, w: usize) -> (usize, usize, usize) {
        let (h, w) = self.frames(h, w).last().map_or((h, w), |[_, (grid, _)]| *grid);
        (self.channels.last().copied().unwrap_or(self.in_channels), h, w)
    }

    /// The stride of block `i`'s first conv: `strides[i]`, else `stride` (0 read as 1).
    pub fn block_stride(&self, i: usize) -> usize {
        self.strides.get(i).copied().unwrap_or(self.stride).max(1)
    }
}

/// Where one axis of a feature grid lies on the input image, in fractions of the image's side:
/// cell `i` stands for the span of width `step` centred on `first + i * step` (its receptive
/// field's centre), clipped to the image. A grid made by pooling tiles the image evenly
/// (`first = step / 2`); a stride-2 convolution with "same" padding centres its first cell on
/// the first pixel instead, so its cells lie up to half a cell before an even tiling's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellAxis {
    /// Centre of the first cell.
    pub first: f32,
    /// Distance between neighbouring cells' centres (the cell's width).
    pub step: f32,
}

impl CellAxis {
    /// `n` cells tiling the side evenly.
    pub fn even(n: usize) -> Self {
        let step = 1.0 / n.max(1) as f32;
        Self { first: step / 2.0, step }
    }

    /// Cell `i`'s span `[start, end)`, clipped to `[0, 1]`.
    pub fn span(&self, i: usize) -> (f32, f32) {
        let c = self.centre(i);
        ((c - self.step / 2.0).max(0.0), (c + self.step / 2.0).min(1.0))
    }

    /// Cell `i`'s centre.
    pub fn centre(&self, i: usize) -> f32 {
        self.first + i as f32 * self.step
    }

    /// The cell whose span holds the fraction `f` (the nearest centre), clamped to `0..n`.
    pub fn cell_at(&self, f: f32, n: usize) -> usize {
        let i = ((f - self.first) / self.step + 0.5).floor();
        (i.max(0.0) as usize).min(n.saturating_sub(1))
    }
}

/// Where a (gh, gw) feature grid's cells lie on the image: one [`CellAxis`] per axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellFrame {
    /// Rows.
    pub y: CellAxis,
    /// Columns.
    pub x: CellAxis,
}

impl CellFrame {
    /// A (gh, gw) grid tiling the image evenly.
    pub fn even((gh, gw): (usize, usize)) -> Self {
        Self { y: CellAxis::even(gh), x: CellAxis::even(gw) }
    }

    /// Whether this frame is a (gh, gw) grid's even tiling, within a millionth of the side.
    pub fn is_even(&self, grid: (usize, usize)) -> bool {
        let e = Self::even(grid);
        let near = |a: CellAxis, b: CellAxis| (a.first - b.first).abs() < 1e-6 && (a.step - b.step).abs() < 1e-6;
        near(self.y, e.y) && near(self.x, e.x)
    }
}

/// One axis through the net: cells so far, and the first centre and the step in pixels (pixel
/// `p` spans `[p, p + 1)`).
#[derive(Debug, Clone, Copy)]
struct Track {
    n: usize,
    first: f64,
    step: f64,
}

impl Track {
    /// A conv of odd kernel `k`, stride `s` and "same" padding `k / 2`: output cell `o` is
    /// centred on input cell `s * o`.
    fn conv(self, k: usize, s: usize) -> Self {
        let pad = k / 2;
        Self { n: (self.n + 2 * pad).saturating_sub(k) / s + 1, first: self.first, step: self.step * s as f64 }
    }

    /// A max-pool of window and stride `p`: output cell `o` is centred between input cells
    /// `p * o` and `p * o + p - 1`.
    fn pool(self, p: usize) -> Self {
        Self { n: self.n / p, first: self.first + self.step * (p - 1) as f64 / 2.0, step: self.step * p as f64 }
    }

    fn axis(self, side: usize) -> CellAxis {
        let side = side.max(1) as f64;
        CellAxis { first: (self.first / side) as f32, step: (self.step / side) as f32 }
    }
}

/// The normalisation after a conv.
#[derive(Debug, Clone)]
enum Norm {
    Batch(BatchNorm),
    Group(GroupNorm),
}

/// One block: convs (each with optional normalisation and a ReLU), then pooling.
#[derive(Debug, Clone)]
struct Block {
    layers: Vec<(Conv2d, Option<Norm>)>,
}

/// One block's output, before and after its pooling.
#[derive(Debug, Clone)]
pub struct Stage {
    /// After the block's last ReLU, (b, c, h, w).
    pub unpooled: Tensor,
    /// After its pooling, (b, c, h / pool, w / pool).
    pub pooled: Tensor,
}

/// A stack of conv blocks.
#[derive(Debug, Clone)]
pub struct ConvNet {
    cfg: ConvNetConfig,
    blocks: Vec<Block>,
}

impl ConvNet {
    /// Builds the blocks under `vb` as `block{i}.conv` and `block{i}.bn`.
    pub fn new(cfg: &ConvNetConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.channels.is_empty() {
            return Err(candle_core::Error::Msg("ConvNet: `channels` is empty".into()));
        }
        if cfg.kernel % 2 == 0 || cfg.kernel == 0 {
            return Err(candle_core::Error::Msg(format!("ConvNet: kernel {} must be odd", cfg.kernel)));
        }
        if cfg.group_norm > 0 {
            if cfg.batch_norm {
                return Err(candle_core::Error::Msg("ConvNet: choose batch_norm or group_norm, not both".into()));
            }
            if let Some(c) = cfg.channels.iter().find(|&&c| c % cfg.group_norm != 0) {
                return Err(candle_core::Error::Msg(format!(
                    "ConvNet: group_norm = {} groups do not divide a block of {c} channels",
                    cfg.group_norm
                )));
            }
        }
        let mut blocks = Vec::with_capacity(cfg.channels.len());
        if cfg.convs_per_block == 0 {
            return Err(candle_core::Error::Msg("ConvNet: convs_per_block must be at least 1".into()));
        }
        for (name, v) in [("stride", cfg.stride), ("pool", cfg.pool)] {
            if v == 0 {
                return Err(candle_core::Error::Msg(format!("ConvNet: {name} must be at least 1, not 0")));
            }
        }
        if !cfg.strides.is_empty() && cfg.strides.len() != cfg.channels.len() {
            return Err(candle_core::Error::Msg(format!(
                "ConvNet: strides has {} entries for {} blocks (one per block, or none)",
                cfg.strides.len(),
                cfg.channels.len()
            )));
        }
        if let Some(i) = cfg.strides.iter().position(|&s| s == 0) {
            return Err(candle_core::Error::Msg(format!("ConvNet: strides[{i}] must be at least 1, not 0")));
        }
        let mut c_in = cfg.in_channels + if cfg.coord_channels { 2 } else { 0 };
        for (i, &c) in cfg.channels.iter().enumerate() {
            let vb = vb.pp(format!("block{i}"));
            let mut layers = Vec::with_capacity(cfg.convs_per_block);
            for j in 0..cfg.convs_per_block {
                // the first conv of a block keeps the names `conv` / `bn` of single-conv nets
                let (cn, bnn) = if j == 0 {
                    ("conv".to_string(), "bn".to_string())
                } else {
                    (format!("conv{j}"), format!("bn{j}"))
                };
                let stride = if j == 0 { cfg.block_stride(i) } else { 1 };
                let padding = match cfg.padding {
                    Padding::Zeros => cfg.same_pad(),
                    Padding::Replicate => 0, // padded in `forward_stages`
                };
                let conv_cfg = candle_nn::Conv2dConfig { padding, stride, ..Default::default() };
                let conv = candle_nn::conv2d(c_in, c, cfg.kernel, conv_cfg, vb.pp(cn))?;
                let bn = if cfg.batch_norm {
                    Some(Norm::Batch(candle_nn::batch_norm(c, 1e-5, vb.pp(bnn))?))
                } else if cfg.group_norm > 0 {
                    let gnn = bnn.replacen("bn", "gn", 1);
                    Some(Norm::Group(candle_nn::group_norm(cfg.group_norm, c, 1e-5, vb.pp(gnn))?))
                } else {
                    None
                };
                layers.push((conv, bn));
                c_in = c;
            }
            blocks.push(Block { layers });
        }
        Ok(Self { cfg: cfg.clone(), blocks })
    }

    /// The settings.
    pub fn config(&self) -> &ConvNetConfig {
        &self.cfg
    }

    /// Shapes: images (b, c, h, w) -> every block's output, the last (b, d, h / p^k, w / p^k).
    pub fn forward_all(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        Ok(self.forward_stages(x, train)?.into_iter().map(|s| s.pooled).collect())
    }

    /// Every block's output before and after its pooling (the same tensor when `pool = 1`).
    pub fn forward_stages(&self, x: &Tensor, train: bool) -> Result<Vec<Stage>> {
        let (_, c, h, w) = x.dims4()?;
        if c != self.cfg.in_channels {
            return Err(candle_core::Error::Msg(format!(
                "ConvNet: input has {c} channels, the net expects {}",
                self.cfg.in_channels
            )));
        }
        let p = self.cfg.pool.max(1);
        if p > 1 && (h < p.pow(self.blocks.len() as u32) || w < p.pow(self.blocks.len() as u32)) {
            return Err(candle_core::Error::Msg(format!(
                "ConvNet: a {h}x{w} input is too small for {} pools of {p}",
                self.blocks.len()
            )));
        }
        let mut outs = Vec::with_capacity(self.blocks.len());
        let mut x = if self.cfg.coord_channels { with_coord_channels(x)? } else { x.clone() };
        for b in &self.blocks {
            for (conv, bn) in &b.layers {
                if self.cfg.padding == Padding::Replicate {
                    let pad = self.cfg.same_pad();
                    x = x.pad_with_same(2, pad, pad)?.pad_with_same(3, pad, pad)?;
                }
                // The same parameters and values as `conv.forward`, with a cheaper backward.
                let (stride, pad) = (conv.config().stride, conv.config().padding);
                x = gaze_tensor::conv::conv2d(&x, conv.weight(), conv.bias(), stride, pad)?;
                match bn {
                    Some(Norm::Batch(bn)) => x = bn.forward_t(&x, train)?,
                    Some(Norm::Group(gn)) => x = gn.forward(&x)?,
                    None => {}
                }
                x = x.relu()?;
            }
            let unpooled = x;
            x = self.pool(&unpooled)?;
            outs.push(Stage { unpooled, pooled: x.clone() });
        }
        Ok(outs)
    }

    /// A block's pooling (max-pool with window and stride `pool`; the identity when `pool = 1`).
    pub fn pool(&self, x: &Tensor) -> Result<Tensor> {
        match self.cfg.pool.max(1) {
            1 => Ok(x.clone()),
            p => gaze_tensor::ops::max_pool2d(x, p), // candle's pool backward is off by p^2
        }
    }

    /// Shapes: images (b, c, h, w) -> last feature map (b, d, h', w').
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_all(x, train)?.pop().ok_or_else(|| candle_core::Error::Msg("ConvNet: no blocks".into()))
    }
}

/// Images (b, c, h, w) -> (b, c + 2, h, w): channel c holds each pixel's x, channel c + 1 its y,
/// both pixel centres mapped to [-1, 1].
pub fn with_coord_channels(x: &Tensor) -> Result<Tensor> {
    let (b, _, h, w) = x.dims4()?;
    let centre = |i: usize, n: usize| (i as f32 + 0.5) / n as f32 * 2.0 - 1.0;
    let xs = (0..h).flat_map(|_| (0..w).map(move |c| centre(c, w)));
    let ys = (0..h).flat_map(|r| (0..w).map(move |_| centre(r, h)));
    let grid = Tensor::from_vec(xs.chain(ys).collect::<Vec<f32>>(), (1, 2, h, w), x.device())?.to_dtype(x.dtype())?;
    Tensor::cat(&[x.clone(), grid.broadcast_as((b, 2, h, w))?.contiguous()?], 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use gaze_tensor::{Seed, SeededVarMap};

    #[test]
    fn shapes_and_errors() -> Result<()> {
        let vm = SeededVarMap::new(Seed(0));
        let net = ConvNet::new(&ConvNetConfig::tiny(), vm.builder(&Device::Cpu))?;
        let x = Tensor::zeros((2, 1, 28, 28), candle_core::DType::F32, &Device::Cpu)?;
        let outs = net.forward_all(&x, false)?;
        assert_eq!(outs[0].dims(), &[2, 4, 14, 14]);
        assert_eq!(outs[1].dims(), &[2, 8, 7, 7]);
        assert_eq!(ConvNetConfig::tiny().output_shape(28, 28), (8, 7, 7));
        let bad = Tensor::zeros((2, 3, 28, 28), candle_core::DType::F32, &Device::Cpu)?;
        let e = net.forward(&bad, false).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("3 channels"), "{e}");
        Ok(())
    }

    #[test]
    fn frames_place_each_cell_on_its_receptive_fields_centre() -> Result<()> {
        let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
        // Stride-2 blocks without pooling (the Learn to Pay Attention backbone): 100 -> 50 -> 25
        // -> 13 -> 7. A 3x3 conv of stride 2 and pad 1 centres output o on input 2o, so the last
        // grid's cell o is centred on pixel 16o (its centre 16o + 0.5), not on (o + 0.5) * 100 / 7.
        let cfg = ConvNetConfig { channels: vec![2, 2, 2, 2], pool: 1, stride: 2, ..ConvNetConfig::tiny() };
        let frames = cfg.frames(100, 100);
        let sizes: Vec<(usize, usize)> = frames.iter().map(|f| f[1].0).collect();
        assert_eq!(sizes, [(50, 50), (25, 25), (13, 13), (7, 7)]);
        let last = cfg.cell_frame((7, 7), (100, 100)).ok_or(candle_core::Error::Msg("no 7x7".into()))?;
        assert!(close(last.x.first, 0.005) && close(last.x.step, 0.16), "{last:?}");
        assert!(close(last.x.centre(6), 0.965) && last.x.span(0) == (0.0, 0.085), "{last:?}");
        assert_eq!((last.x.cell_at(0.0, 7), last.x.cell_at(0.09, 7), last.x.cell_at(0.999, 7)), (0, 1, 6));
        // The sizes agree with the net's own outputs.
        let vm = SeededVarMap::new(Seed(0));
        let net = ConvNet::new(&ConvNetConfig { channels: vec![2, 2], ..cfg.clone() }, vm.builder(&Device::Cpu))?;
        let x = Tensor::zeros((1, 1, 21, 9), candle_core::DType::F32, &Device::Cpu)?;
        let outs = net.forward_all(&x, false)?;
        let framed = net.config().frames(21, 9);
        for (o, f) in outs.iter().zip(&framed) {
            assert_eq!((o.dim(2)?, o.dim(3)?), f[1].0);
        }
        // Conv + 2x2 pooling on 28x28 (the ConvNet baseline): the grids tile the image evenly.
        let pooled = ConvNetConfig::tiny();
        for [unpooled, after] in pooled.frames(28, 28) {
            for (g, f) in [unpooled, after] {
                let even = CellFrame::even(g);
                assert!(close(f.x.first, even.x.first) && close(f.y.step, even.y.step), "{g:?}: {f:?}");
            }
        }
        // A 63-pixel side pools to 31 then 15 cells of 4 pixels: the last three pixels lie in none.
        let f = pooled.cell_frame((15, 15), (63, 63)).ok_or(candle_core::Error::Msg("no 15x15".into()))?;
        assert!(close(f.y.span(14).1, 60.0 / 63.0), "{f:?}");
        assert!(pooled.cell_frame((5, 5), (28, 28)).is_none(), "no block gives 5x5");
        assert!(pooled.cell_frame((7, 7), (28, 28)).is_none(), "even: left to the even arithmetic");
        Ok(())
    }

    #[test]
    fn strides_block_by_block_set_each_grid() -> Result<()> {
        // [2, 2, 2, 1]: the last block keeps the 13x13 grid, and its cells where block 2 put them.
        let cfg = ConvNetConfig {
            channels: vec![2, 3, 2, 3],
            pool: 1,
            stride: 2,
            strides: vec![2, 2, 2, 1],
            ..ConvNetConfig::tiny()
        };
        let frames = cfg.frames(100, 100);
        let sizes: Vec<(usize, usize)> = frames.iter().map(|f| f[1].0).collect();
        assert_eq!(sizes, [(50, 50), (25, 25), (13, 13), (13, 13)]);
        assert_eq!(frames[3][1].1, frames[2][1].1);
        assert!((frames[3][1].1.x.step - 0.08).abs() < 1e-6, "{:?}", frames[3][1].1);
        assert_eq!(cfg.output_shape(100, 100), (3, 13, 13));
        let net = ConvNet::new(&cfg, SeededVarMap::new(Seed(0)).builder(&Device::Cpu))?;
        let x = Tensor::zeros((1, 1, 37, 30), candle_core::DType::F32, &Device::Cpu)?;
        for (o, f) in net.forward_all(&x, false)?.iter().zip(cfg.frames(37, 30)) {
            assert_eq!((o.dim(2)?, o.dim(3)?), f[1].0);
        }
        // `strides` wins over `stride`; empty leaves `stride` to every block.
        let plain = ConvNetConfig { strides: vec![], ..cfg.clone() };
        assert_eq!(plain.output_shape(100, 100), (3, 7, 7));
        assert_eq!((cfg.block_stride(3), plain.block_stride(3)), (1, 2));
        // One per block, none zero.
        let vm = candle_nn::VarMap::new();
        for (bad, want) in [(vec![2, 2], "strides has 2 entries for 4 blocks"), (vec![2, 0, 2, 1], "strides[1]")] {
            let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu);
            let e = ConvNet::new(&ConvNetConfig { strides: bad, ..cfg.clone() }, vb).err().map(|e| e.to_string());
            assert!(e.as_deref().unwrap_or_default().contains(want), "{e:?}");
        }
        Ok(())
    }

    #[test]
    fn coord_channels_tell_the_net_where_a_pixel_is() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 1, 2, 4), candle_core::DType::F32, &dev)?;
        let c = with_coord_channels(&x)?;
        assert_eq!(c.dims(), &[2, 3, 2, 4]);
        let xs: Vec<Vec<f32>> = c.get(1)?.get(1)?.to_vec2()?;
        let ys: Vec<Vec<f32>> = c.get(1)?.get(2)?.to_vec2()?;
        assert_eq!(xs, vec![vec![-0.75, -0.25, 0.25, 0.75]; 2]);
        assert_eq!(ys, vec![vec![-0.5; 4], vec![0.5; 4]]);
        // the first conv reads the two extra channels; a blank image gives position-dependent features
        let cfg = ConvNetConfig { coord_channels: true, pool: 1, ..ConvNetConfig::tiny() };
        let vm = SeededVarMap::new(Seed(0));
        let net = ConvNet::new(&cfg, vm.builder(&dev))?;
        let w = vm.sorted_vars().into_iter().find(|(n, _)| n == "block0.conv.weight").map(|(_, v)| v.dims().to_vec());
        assert_eq!(w, Some(vec![4, 3, 3, 3]));
        let out = net.forward(&Tensor::zeros((1, 1, 8, 8), candle_core::DType::F32, &dev)?, false)?;
        let spread = (out.max_keepdim(3)?.max_keepdim(2)? - out.min_keepdim(3)?.min_keepdim(2)?)?;
        assert!(spread.max_all()?.to_scalar::<f32>()? > 1e-3, "blank input, flat features");
        Ok(())
    }

    #[test]
    fn zero_sizes_are_named() {
        let vm = candle_nn::VarMap::new();
        for (name, cfg) in [
            ("stride", ConvNetConfig { stride: 0, ..ConvNetConfig::tiny() }),
            ("pool", ConvNetConfig { pool: 0, ..ConvNetConfig::tiny() }),
        ] {
            let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu);
            let e = ConvNet::new(&cfg, vb).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(&format!("{name} must be at least 1")), "{name}: {e}");
        }
    }

    #[test]
    fn strided_blocks_match_their_predicted_shape() -> Result<()> {
        for (side, want) in [(80usize, 5usize), (75, 5), (64, 8)] {
            let cfg = ConvNetConfig {
                in_channels: 3,
                channels: if side == 64 { vec![3, 4, 5] } else { vec![3, 4, 5, 6] },
                pool: 1,
                stride: 2,
                ..ConvNetConfig::tiny()
            };
            let net = ConvNet::new(&cfg, SeededVarMap::new(Seed(0)).builder(&Device::Cpu))?;
            let x = Tensor::zeros((1, 3, side, side), candle_core::DType::F32, &Device::Cpu)?;
            let out = net.forward(&x, false)?;
            let (c, h, w) = cfg.output_shape(side, side);
            assert_eq!(out.dims(), &[1, c, h, w], "{side}");
            assert_eq!((h, w), (want, want), "{side}");
        }
        Ok(())
    }

    #[test]
    fn vgg_blocks_expose_every_map_and_train_with_batch_norm() -> Result<()> {
        let vm = SeededVarMap::new(Seed(0));
        let net = ConvNet::new(&ConvNetConfig::vgg(3, vec![4, 6, 8]), vm.builder(&Device::Cpu))?;
        let x = Tensor::ones((2, 3, 16, 16), candle_core::DType::F32, &Device::Cpu)?;
        let dims: Vec<Vec<usize>> = net.forward_all(&x, true)?.iter().map(|t| t.dims().to_vec()).collect();
        assert_eq!(dims, vec![vec![2, 4, 8, 8], vec![2, 6, 4, 4], vec![2, 8, 2, 2]]);
        assert!(vm.sorted_vars().iter().any(|(n, _)| n == "block2.conv1.weight"));
        Ok(())
    }

    #[test]
    fn group_norm_treats_each_image_alone_and_is_checked() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = ConvNetConfig {
            in_channels: 3,
            channels: vec![4, 6],
            group_norm: 2,
            stride: 2,
            pool: 1,
            ..ConvNetConfig::tiny()
        };
        let vm = SeededVarMap::new(Seed(0));
        let net = ConvNet::new(&cfg, vm.builder(&dev))?;
        assert!(vm.sorted_vars().iter().any(|(n, _)| n == "block1.gn.weight"));
        let mut r = Seed(4).rng();
        let imgs: Vec<f32> = (0..3 * 3 * 64).map(|_| rand::Rng::random::<f32>(&mut r)).collect();
        let x = Tensor::from_vec(imgs, (3, 3, 8, 8), &dev)?;
        // the first image alone, in a batch of three, in training and evaluation: one answer
        let alone = net.forward(&x.narrow(0, 0, 1)?, true)?;
        for (batch, train) in [(3, true), (3, false), (1, false)] {
            let out = net.forward(&x.narrow(0, 0, batch)?, train)?.narrow(0, 0, 1)?;
            let diff = (out - &alone)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "batch {batch}, train {train}: {diff}");
        }
        let both = ConvNetConfig { batch_norm: true, ..cfg.clone() };
        let uneven = ConvNetConfig { group_norm: 4, ..cfg };
        for (bad, want) in [(both, "not both"), (uneven, "6 channels")] {
            let e = ConvNet::new(&bad, SeededVarMap::new(Seed(0)).builder(&dev)).err().map(|e| e.to_string());
            assert!(e.as_deref().is_some_and(|e| e.contains(want)), "{e:?}");
        }
        Ok(())
    }

    #[test]
    fn gradient_check_through_the_convnet() -> Result<()> {
        use rand::Rng;
        for padding in [Padding::Zeros, Padding::Replicate] {
            let vm = SeededVarMap::new(Seed(2));
            // tiny(): one 3x3 conv per block, 2x2 pools, no norm
            let cfg = ConvNetConfig { channels: vec![2, 2], padding, ..ConvNetConfig::tiny() };
            let net = ConvNet::new(&cfg, vm.builder(&Device::Cpu))?;
            let mut r = Seed(3).rng();
            let x =
                Tensor::from_vec((0..64).map(|_| r.random::<f32>()).collect::<Vec<_>>(), (1, 1, 8, 8), &Device::Cpu)?;
            let w = Tensor::from_vec(
                (0..8).map(|i| (i as f32 - 3.5) / 4.0).collect::<Vec<_>>(),
                (1, 2, 2, 2),
                &Device::Cpu,
            )?;
            let c = gaze_tensor::testing::grad_check_kinks(|x| (net.forward(x, false)? * &w)?.sum_all(), &x, 1e-2)?;
            assert!(c.max_rel_err < 2e-2, "{padding:?}: {c:?}");
            assert!(c.compared >= 48, "{padding:?}: too many kinks skipped: {c:?}");
        }
        Ok(())
    }

    /// On a uniform image every position of the last map is alike with `replicate` (the border
    /// looks like the inside); with `zeros` the convs see an edge at the border, since what they
    /// read (the image's grey, then a feature map's background) is not 0.
    #[test]
    fn replicate_padding_keeps_a_uniform_image_uniform() -> Result<()> {
        let spread = |padding: Padding| -> Result<f32> {
            let vm = SeededVarMap::new(Seed(4));
            // tiny()'s one-channel input and 3x3 convs, as three stride-2 blocks
            let cfg = ConvNetConfig { channels: vec![4, 4, 4], pool: 1, stride: 2, padding, ..ConvNetConfig::tiny() };
            let net = ConvNet::new(&cfg, vm.builder(&Device::Cpu))?;
            let grey = Tensor::full(0.5f32, (1, 1, 16, 16), &Device::Cpu)?;
            let last = net.forward(&grey, false)?; // (1, 4, 2, 2)
            let (max, min) = (last.max_keepdim(3)?.max_keepdim(2)?, last.min_keepdim(3)?.min_keepdim(2)?);
            (max - min)?.max_all()?.to_scalar::<f32>()
        };
        assert!(spread(Padding::Replicate)? < 1e-5);
        assert!(spread(Padding::Zeros)? > 1e-3);
        Ok(())
    }
}

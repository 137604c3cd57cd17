//! A ResNet trunk ("Deep Residual Learning for Image Recognition", He, Zhang, Ren, Sun 2015) whose
//! output is the grid of the last stage kept, before the global pooling: the annotation vectors a
//! captioner or an attention model reads.
//!
//! ResNet-18 and -34 (basic blocks): a 7x7 convolution of stride 2 and a 3x3 max-pool of stride 2,
//! then four stages of 64, 128, 256 and 512 channels, each but the first halving the grid. The
//! parameters carry the names torchvision and candle-transformers give them (`conv1.weight`,
//! `bn1.running_mean`, `layer2.0.downsample.0.weight`, ...), so their published ImageNet weights
//! load as they are (candle-transformers' own ResNet returns only the pooled vector, which is why
//! the trunk is built here). Batch norm uses its running statistics unless the trunk is trained.

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, VarBuilder};
use serde::{Deserialize, Serialize};

/// ImageNet's per-channel mean and standard deviation, which torchvision's weights expect.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Settings of a [`ResNet`] trunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResNetConfig {
    /// Where the weights come from: a `.safetensors` file (torchvision's names, `fc.*` and
    /// `*.num_batches_tracked` ignored), or with the `hub` feature of `gaze-train` a hub model id
    /// (`owner/name`, its `model.safetensors`). Read once when a run starts; a run's checkpoints
    /// hold the trunk, so evaluating or resuming it needs no weights file. None: seeded random
    /// weights (then `trainable` must be true).
    pub weights: Option<String>,
    /// Train the trunk with the rest of the model (batch norm then uses batch statistics in
    /// training); else it is frozen at its weights and uses its running statistics throughout.
    pub trainable: bool,
    /// Stages kept (1-4): 4 gives a grid at 1/32 of the image with 512 channels, 3 at 1/16 with
    /// 256 (finer grids for small images).
    pub stages: usize,
    /// Normalise inputs in [0, 1] by ImageNet's mean and standard deviation (what pretrained
    /// weights expect); grey images are repeated to three channels either way.
    pub normalize: bool,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        Self { weights: None, trainable: false, stages: 4, normalize: true }
    }
}

/// A ResNet with basic blocks: 18 or 34 layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Two blocks per stage.
    D18,
    /// 3, 4, 6 and 3 blocks.
    D34,
}

impl Depth {
    fn blocks(self) -> [usize; 4] {
        match self {
            Depth::D18 => [2, 2, 2, 2],
            Depth::D34 => [3, 4, 6, 3],
        }
    }
}

#[derive(Debug, Clone)]
struct Conv {
    weight: Tensor,
    stride: usize,
    pad: usize,
}

impl Conv {
    fn new(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, vb: VarBuilder) -> Result<Self> {
        let fan_in = (c_in * k * k) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let weight =
            vb.get_with_hints((c_out, c_in, k, k), "weight", candle_nn::Init::Uniform { lo: -bound, up: bound })?;
        Ok(Self { weight, stride, pad })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        gaze_tensor::conv::conv2d(x, &self.weight, None, self.stride, self.pad)
    }
}

#[derive(Debug, Clone)]
struct Block {
    conv1: Conv,
    bn1: BatchNorm,
    conv2: Conv,
    bn2: BatchNorm,
    downsample: Option<(Conv, BatchNorm)>,
}

impl Block {
    fn new(c_in: usize, c_out: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let downsample = if stride != 1 || c_in != c_out {
            Some((
                Conv::new(c_in, c_out, 1, stride, 0, vb.pp("downsample.0"))?,
                candle_nn::batch_norm(c_out, 1e-5, vb.pp("downsample.1"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: Conv::new(c_in, c_out, 3, stride, 1, vb.pp("conv1"))?,
            bn1: candle_nn::batch_norm(c_out, 1e-5, vb.pp("bn1"))?,
            conv2: Conv::new(c_out, c_out, 3, 1, 1, vb.pp("conv2"))?,
            bn2: candle_nn::batch_norm(c_out, 1e-5, vb.pp("bn2"))?,
            downsample,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.bn1.forward_t(&self.conv1.forward(x)?, train)?.relu()?;
        let y = self.bn2.forward_t(&self.conv2.forward(&y)?, train)?;
        let shortcut = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x)?, train)?,
            None => x.clone(),
        };
        (y + shortcut)?.relu()
    }
}

/// The trunk: images (b, c, h, w) in [0, 1] -> the last kept stage's grid.
#[derive(Debug, Clone)]
pub struct ResNet {
    cfg: ResNetConfig,
    conv1: Conv,
    bn1: BatchNorm,
    stages: Vec<Vec<Block>>,
}

/// Widths of the four stages.
const WIDTHS: [usize; 4] = [64, 128, 256, 512];

impl ResNet {
    /// Builds the trunk (its parameters under `vb`, torchvision's names). Errors: `stages` not in
    /// 1-4; a frozen trunk without weights.
    pub fn new(depth: Depth, cfg: &ResNetConfig, vb: VarBuilder) -> Result<Self> {
        if !(1..=4).contains(&cfg.stages) {
            return Err(candle_core::Error::Msg(format!("resnet: stages = {} is not in 1-4", cfg.stages)));
        }
        if cfg.weights.is_none() && !cfg.trainable {
            return Err(candle_core::Error::Msg(
                "resnet: a frozen trunk without `weights` would stay random: give weights or set trainable = true"
                    .into(),
            ));
        }
        let mut stages = vec![];
        let mut c_in = 64;
        for (s, (&n, &width)) in depth.blocks().iter().zip(&WIDTHS).take(cfg.stages).enumerate() {
            let vb = vb.pp(format!("layer{}", s + 1));
            let mut blocks = vec![];
            for i in 0..n {
                let stride = if i == 0 && s > 0 { 2 } else { 1 };
                blocks.push(Block::new(if i == 0 { c_in } else { width }, width, stride, vb.pp(i))?);
            }
            c_in = width;
            stages.push(blocks);
        }
        Ok(Self {
            cfg: cfg.clone(),
            conv1: Conv::new(3, 64, 7, 2, 3, vb.pp("conv1"))?,
            bn1: candle_nn::batch_norm(64, 1e-5, vb.pp("bn1"))?,
            stages,
        })
    }

    /// The settings.
    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    /// Channels, height and width of the grid for an h x w image.
    pub fn output_shape(stages: usize, h: usize, w: usize) -> (usize, usize, usize) {
        let half = |n: usize| if n == 0 { 0 } else { (n - 1) / 2 + 1 };
        // conv1 (7x7, stride 2, pad 3), the max-pool (3x3, stride 2, pad 1), then a halving per
        // stage after the first.
        let (mut h, mut w) = (half(half(h)), half(half(w)));
        for _ in 1..stages.clamp(1, 4) {
            (h, w) = (half(h), half(w));
        }
        (WIDTHS[stages.clamp(1, 4) - 1], h, w)
    }

    /// Where the `grid` of a `stages`-stage trunk lies on an `(h, w)` image: each stride-2 layer
    /// (conv1, the max-pool, each later stage's first conv, all padded by half their kernel)
    /// centres output o on input 2o, so cell o is centred on pixel `2^(stages + 1) * o`. None when
    /// the trunk gives that image another grid.
    pub fn cell_frame(stages: usize, grid: (usize, usize), (h, w): (usize, usize)) -> Option<crate::CellFrame> {
        let (_, gh, gw) = Self::output_shape(stages, h, w);
        if (gh, gw) != grid {
            return None;
        }
        let stride = (1usize << (stages.clamp(1, 4) + 1)) as f32;
        let axis = |side: usize| crate::CellAxis { first: 0.5 / side.max(1) as f32, step: stride / side.max(1) as f32 };
        Some(crate::CellFrame { y: axis(h), x: axis(w) })
    }

    /// Images (b, c, h, w), c = 1 or 3, in [0, 1] -> (b, d, h', w'). `train` (with a trainable
    /// trunk) uses batch statistics; a frozen trunk's output is detached.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let x = match c {
            3 => x.clone(),
            1 => x.repeat((1, 3, 1, 1))?,
            _ => return Err(candle_core::Error::Msg(format!("resnet: images of {c} channels (1 or 3 expected)"))),
        };
        if h < 2 || w < 2 {
            return Err(candle_core::Error::Msg(format!("resnet: a {h}x{w} image is too small")));
        }
        let x = if self.cfg.normalize {
            let dev = x.device();
            let mean = Tensor::new(&IMAGENET_MEAN, dev)?.reshape((1, 3, 1, 1))?;
            let std = Tensor::new(&IMAGENET_STD, dev)?.reshape((1, 3, 1, 1))?;
            x.broadcast_sub(&mean)?.broadcast_div(&std)?
        } else {
            x
        };
        let train = train && self.cfg.trainable;
        let x = self.bn1.forward_t(&self.conv1.forward(&x)?, train)?.relu()?;
        let mut x = max_pool_3x3_stride_2(&x)?;
        for blocks in &self.stages {
            for b in blocks {
                x = b.forward(&x, train)?;
            }
        }
        // A frozen trunk is a constant of the model: no backward pass runs through it.
        Ok(if self.cfg.trainable { x } else { x.detach() })
    }
}

/// A 3x3 max-pool of stride 2 and padding 1 over non-negative maps (after a ReLU, so zero padding
/// equals padding by -inf), as the maximum of nine strided shifts: plain tensor ops, whose
/// backward is exact.
fn max_pool_3x3_stride_2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (oh, ow) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    // Room for shifts of 0..=2 and 2 * oh rows: one before, the rest after.
    let x = x.pad_with_zeros(2, 1, 2 * oh + 1 - h)?.pad_with_zeros(3, 1, 2 * ow + 1 - w)?;
    let mut out: Option<Tensor> = None;
    for dy in 0..3 {
        for dx in 0..3 {
            let s = x
                .narrow(2, dy, 2 * oh)?
                .narrow(3, dx, 2 * ow)?
                .contiguous()?
                .reshape((b, c, oh, 2, ow, 2))?
                .narrow(3, 0, 1)?
                .narrow(5, 0, 1)?
                .reshape((b, c, oh, ow))?;
            out = Some(match out {
                Some(m) => m.maximum(&s)?,
                None => s,
            });
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("max-pool: no window".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use gaze_tensor::{Seed, SeededVarMap};

    fn trainable() -> ResNetConfig {
        ResNetConfig { trainable: true, ..ResNetConfig::default() }
    }

    #[test]
    fn names_and_shapes_are_torchvisions() -> Result<()> {
        let vm = SeededVarMap::new(Seed(1));
        ResNet::new(Depth::D18, &trainable(), vm.builder(&Device::Cpu))?;
        let vars = vm.sorted_vars();
        let shape = |n: &str| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.dims().to_vec());
        assert_eq!(shape("conv1.weight"), Some(vec![64, 3, 7, 7]));
        assert_eq!(shape("bn1.running_var"), Some(vec![64]));
        assert_eq!(shape("layer1.1.conv2.weight"), Some(vec![64, 64, 3, 3]));
        assert_eq!(shape("layer2.0.downsample.0.weight"), Some(vec![128, 64, 1, 1]));
        assert_eq!(shape("layer4.1.bn2.bias"), Some(vec![512]));
        assert_eq!(shape("layer1.0.downsample.0.weight"), None);
        // 20 convolutions (17 + 3 shortcuts), each with a batch norm of four tensors.
        let convs = vars.iter().filter(|(k, _)| k.ends_with("conv1.weight") || k.ends_with("conv2.weight")).count();
        assert_eq!(convs + 3, 20);
        assert_eq!(vars.len(), 20 + 20 * 4);
        let vm = SeededVarMap::new(Seed(1));
        ResNet::new(Depth::D34, &ResNetConfig { stages: 2, ..trainable() }, vm.builder(&Device::Cpu))?;
        let names: Vec<String> = vm.sorted_vars().into_iter().map(|(k, _)| k).collect();
        assert!(names.contains(&"layer2.3.conv1.weight".to_string()) && !names.iter().any(|n| n.starts_with("layer3")));
        Ok(())
    }

    #[test]
    fn the_grid_has_the_shape_it_announces() -> Result<()> {
        let dev = Device::Cpu;
        for (stages, h, w) in [(4, 64, 64), (3, 63, 63), (2, 33, 50), (1, 17, 9)] {
            let vm = SeededVarMap::new(Seed(2));
            let net = ResNet::new(Depth::D18, &ResNetConfig { stages, ..trainable() }, vm.builder(&dev))?;
            let x = Tensor::rand(0f32, 1f32, (2, 1, h, w), &dev)?;
            let (d, gh, gw) = ResNet::output_shape(stages, h, w);
            assert_eq!(net.forward(&x, false)?.dims(), [2, d, gh, gw], "stages {stages}, {h}x{w}");
        }
        assert_eq!(ResNet::output_shape(4, 224, 224), (512, 7, 7));
        let f = ResNet::cell_frame(4, (7, 7), (224, 224)).ok_or(candle_core::Error::Msg("no 7x7 frame".into()))?;
        assert!((f.x.step - 32.0 / 224.0).abs() < 1e-6 && (f.y.first - 0.5 / 224.0).abs() < 1e-6, "{f:?}");
        assert!(ResNet::cell_frame(4, (14, 14), (224, 224)).is_none(), "stage 4 gives 7x7, not 14x14");
        assert_eq!(ResNet::output_shape(3, 224, 224), (256, 14, 14));
        Ok(())
    }

    #[test]
    fn the_max_pool_matches_its_definition_and_passes_gradients_to_the_maxima() -> Result<()> {
        let dev = Device::Cpu;
        let (h, w) = (5, 6);
        let vals: Vec<f32> = (0..h * w).map(|i| ((i * 37) % 23) as f32).collect();
        let x = candle_core::Var::from_vec(vals.clone(), (1, 1, h, w), &dev)?;
        let got = max_pool_3x3_stride_2(x.as_tensor())?;
        assert_eq!(got.dims(), [1, 1, 3, 3]);
        let got = got.flatten_all()?.to_vec1::<f32>()?;
        let at = |y: i64, x: i64| {
            if y < 0 || x < 0 || y >= h as i64 || x >= w as i64 {
                0.0
            } else {
                vals[y as usize * w + x as usize]
            }
        };
        for oy in 0..3i64 {
            for ox in 0..3i64 {
                let mut m = f32::MIN;
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        m = m.max(at(2 * oy + dy, 2 * ox + dx));
                    }
                }
                assert_eq!(got[(oy * 3 + ox) as usize], m, "({oy}, {ox})");
            }
        }
        let g = max_pool_3x3_stride_2(x.as_tensor())?.sum_all()?.backward()?;
        let g = g.get(x.as_tensor()).map(|g| g.flatten_all().and_then(|g| g.to_vec1::<f32>())).transpose()?;
        let total: f32 = g.unwrap_or_default().iter().sum();
        assert_eq!(total, 9.0, "one unit of gradient per window (no ties in these values)");
        Ok(())
    }

    #[test]
    fn frozen_uses_running_statistics_and_needs_weights() -> Result<()> {
        let dev = Device::Cpu;
        let e = ResNet::new(Depth::D18, &ResNetConfig::default(), SeededVarMap::new(Seed(0)).builder(&dev))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("frozen trunk without `weights`"), "{e}");
        let e = ResNet::new(
            Depth::D18,
            &ResNetConfig { stages: 5, ..trainable() },
            SeededVarMap::new(Seed(0)).builder(&dev),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("stages = 5"), "{e}");
        // Frozen: training mode computes what evaluation does (running statistics); trainable:
        // batch statistics make them differ.
        let x = Tensor::rand(0f32, 1f32, (3, 3, 32, 32), &dev)?;
        let frozen = ResNetConfig { weights: Some("w.safetensors".into()), stages: 2, ..ResNetConfig::default() };
        let vm = SeededVarMap::new(Seed(3));
        let net = ResNet::new(Depth::D18, &frozen, vm.builder(&dev))?;
        let diff = (net.forward(&x, true)? - net.forward(&x, false)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        let net = ResNet::new(Depth::D18, &ResNetConfig { stages: 2, ..trainable() }, vm.builder(&dev))?;
        let diff = (net.forward(&x, true)? - net.forward(&x, false)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff > 1e-3, "{diff}");
        let e = net.forward(&Tensor::zeros((1, 2, 8, 8), DType::F32, &dev)?, false).err().map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("2 channels"));
        Ok(())
    }
}

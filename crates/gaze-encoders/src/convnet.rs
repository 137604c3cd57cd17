//! A configurable ConvNet: blocks of conv (same padding) -> optional batch norm -> ReLU ->
//! optional max-pool with kernel == stride (candle's pool backward needs kernel == stride).

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, Conv2d, VarBuilder};
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
}

impl Default for ConvNetConfig {
    /// Two 3x3 blocks of 32 and 64 channels, each followed by 2x2 max-pooling.
    fn default() -> Self {
        Self { in_channels: 1, channels: vec![32, 64], kernel: 3, pool: 2, batch_norm: false }
    }
}

impl ConvNetConfig {
    /// A small net for tests.
    pub fn tiny() -> Self {
        Self { in_channels: 1, channels: vec![4, 8], kernel: 3, pool: 2, batch_norm: false }
    }

    /// The (channels, height, width) of the last feature map for an input of `h x w`.
    pub fn output_shape(&self, h: usize, w: usize) -> (usize, usize, usize) {
        let p = self.pool.max(1);
        let (mut h, mut w) = (h, w);
        for _ in &self.channels {
            h /= p;
            w /= p;
        }
        (self.channels.last().copied().unwrap_or(self.in_channels), h, w)
    }
}

/// One block.
#[derive(Debug, Clone)]
struct Block {
    conv: Conv2d,
    bn: Option<BatchNorm>,
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
        let conv_cfg = candle_nn::Conv2dConfig { padding: cfg.kernel / 2, ..Default::default() };
        let mut blocks = Vec::with_capacity(cfg.channels.len());
        let mut c_in = cfg.in_channels;
        for (i, &c) in cfg.channels.iter().enumerate() {
            let vb = vb.pp(format!("block{i}"));
            let conv = candle_nn::conv2d(c_in, c, cfg.kernel, conv_cfg, vb.pp("conv"))?;
            let bn = if cfg.batch_norm { Some(candle_nn::batch_norm(c, 1e-5, vb.pp("bn"))?) } else { None };
            blocks.push(Block { conv, bn });
            c_in = c;
        }
        Ok(Self { cfg: cfg.clone(), blocks })
    }

    /// The settings.
    pub fn config(&self) -> &ConvNetConfig {
        &self.cfg
    }

    /// Shapes: images (b, c, h, w) -> every block's output, the last (b, d, h / p^k, w / p^k).
    pub fn forward_all(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
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
        let mut x = x.clone();
        for b in &self.blocks {
            x = b.conv.forward(&x)?;
            if let Some(bn) = &b.bn {
                x = bn.forward_t(&x, train)?;
            }
            x = x.relu()?;
            if p > 1 {
                x = x.max_pool2d(p)?;
            }
            outs.push(x.clone());
        }
        Ok(outs)
    }

    /// Shapes: images (b, c, h, w) -> last feature map (b, d, h', w').
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_all(x, train)?.pop().ok_or_else(|| candle_core::Error::Msg("ConvNet: no blocks".into()))
    }
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
}

//! A plain ConvNet classifier: the no-attention baseline every attention model is compared with.
//! Conv blocks -> flatten -> Linear -> ReLU -> dropout -> Linear.
//!
//! It has no attention; for pictures it exposes the L2 norm of its last feature map per cell
//! (the quantity HAN's presence score is built on), normalised to sum to 1.

use candle_core::{Result, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use gaze_encoders::{ConvNet, ConvNetConfig};
use gaze_tensor::seed::Rng;

use crate::model::{AttentionMap, Batch, DataShape, Mode, Model, Output, Scores};

/// Settings of [`ConvNetClassifier`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConvNetClassifierConfig {
    /// The conv blocks (`in_channels` is taken from the data).
    pub convnet: ConvNetConfig,
    /// Width of the hidden fully connected layer.
    pub hidden: usize,
    /// Dropout probability before the last layer (training only).
    pub dropout: f32,
}

impl Default for ConvNetClassifierConfig {
    /// 32- and 64-channel 3x3 blocks with 2x2 pooling, 128 hidden units, dropout 0.25.
    fn default() -> Self {
        Self { convnet: ConvNetConfig::default(), hidden: 128, dropout: 0.25 }
    }
}

impl ConvNetClassifierConfig {
    /// A tiny classifier for tests.
    pub fn tiny() -> Self {
        Self { convnet: ConvNetConfig::tiny(), hidden: 16, dropout: 0.0 }
    }
}

/// The ConvNet classifier.
#[derive(Debug, Clone)]
pub struct ConvNetClassifier {
    net: ConvNet,
    fc: Linear,
    out: Linear,
    dropout: f32,
}

/// Inverted dropout with a mask drawn from `rng`: kept units are scaled by 1 / (1 - p).
pub fn dropout(x: &Tensor, p: f32, rng: &mut Rng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let mask: Vec<f32> =
        (0..x.elem_count()).map(|_| if rng.random::<f32>() < keep { 1.0 / keep } else { 0.0 }).collect();
    x * Tensor::from_vec(mask, x.shape(), x.device())?
}

impl ConvNetClassifier {
    /// Builds the classifier for the images and classes of `shape`.
    pub fn new(cfg: &ConvNetClassifierConfig, shape: &DataShape, vb: VarBuilder) -> Result<Self> {
        let (input, classes) = (shape.input, shape.classes);
        if !(0.0..1.0).contains(&cfg.dropout) {
            return Err(candle_core::Error::Msg(format!("convnet: dropout {} is not in [0, 1)", cfg.dropout)));
        }
        let net_cfg = ConvNetConfig { in_channels: input.0, ..cfg.convnet.clone() };
        let (d, h, w) = net_cfg.output_shape(input.1, input.2);
        if h == 0 || w == 0 {
            return Err(candle_core::Error::Msg(format!(
                "convnet: a {}x{} input is too small for {} pooled blocks",
                input.1,
                input.2,
                net_cfg.channels.len()
            )));
        }
        let net = ConvNet::new(&net_cfg, vb.pp("convnet"))?;
        let fc = candle_nn::linear(d * h * w, cfg.hidden, vb.pp("fc"))?;
        let out = candle_nn::linear(cfg.hidden, classes, vb.pp("out"))?;
        Ok(Self { net, fc, out, dropout: cfg.dropout })
    }
}

impl ConvNetClassifier {
    /// The layers after the conv blocks: class scores from a feature map (b, d, h', w'),
    /// in evaluation mode (no dropout).
    pub fn head_scores(&self, feats: &Tensor) -> Result<Tensor> {
        self.out.forward(&self.fc.forward(&feats.flatten_from(1)?)?.relu()?)
    }
}

impl Model for ConvNetClassifier {
    /// The ConvNet's cells.
    fn cell_frame(&self, grid: (usize, usize), image: (usize, usize)) -> Option<crate::CellFrame> {
        self.net.config().cell_frame(grid, image)
    }
    /// Shapes: images (b, c, h, w), targets (b,) -> logits (b, classes), loss `classify`,
    /// feature-norm map (b, h', w').
    fn forward(&self, batch: &Batch, mode: Mode, rng: &mut Rng) -> Result<Output> {
        let train = mode.train;
        let feats = self.net.forward(&batch.images, train)?;
        let norm = feats.sqr()?.sum(1)?.sqrt()?; // (b, h', w')
        let total = (norm.sum_keepdim(D::Minus1)?.sum_keepdim(D::Minus2)? + 1e-12)?;
        let weights = norm.broadcast_div(&total)?.detach();
        let mut x = self.fc.forward(&feats.flatten_from(1)?)?.relu()?;
        if train {
            x = dropout(&x, self.dropout, rng)?;
        }
        let logits = self.out.forward(&x)?;
        let classify = candle_nn::loss::cross_entropy(&logits, batch.targets.classes("convnet")?)?;
        Ok(Output {
            scores: Scores::Classes(logits),
            losses: vec![("classify".into(), classify)],
            attention: Some(AttentionMap::Grid { weights, title: "feature norm (no attention)".into() }),
            stats: vec![],
        })
    }

    fn conv_features(&self, images: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let feats = self.net.forward(images, false)?;
        let held = candle_core::Var::from_tensor(&feats)?.as_tensor().clone();
        let scores = self.head_scores(&held)?;
        Ok(Some((held, scores)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Targets;
    use crate::test_util::{fit_fixed_batch, total};
    use candle_core::{DType, Device};
    use gaze_tensor::{Seed, SeededVarMap};

    #[test]
    fn tiny_loss_falls_on_a_fixed_batch() -> Result<()> {
        let dev = Device::Cpu;
        let vm = SeededVarMap::new(Seed(0));
        let model = ConvNetClassifier::new(
            &ConvNetClassifierConfig::tiny(),
            &DataShape::images((1, 12, 12), 3),
            vm.builder(&dev),
        )?;
        let mut r = Seed(1).rng();
        let imgs: Vec<f32> = (0..6 * 144).map(|_| r.random::<f32>()).collect();
        let batch = Batch {
            questions: None,
            images: Tensor::from_vec(imgs, (6, 1, 12, 12), &dev)?,
            targets: Targets::Classes(Tensor::from_vec(vec![0u32, 1, 2, 0, 1, 2], 6, &dev)?),
        };
        let (first, last) = fit_fixed_batch(&model, &vm, &batch, 30, 1e-2, Mode::eval(), &mut r)?;
        let (first, last) = (total(&first)?, total(&last)?);
        assert!(last < first * 0.5, "{first} -> {last}");
        let out = model.forward(&batch, Mode::eval(), &mut r)?;
        let Some(AttentionMap::Grid { weights, .. }) = out.attention else { panic!("a grid map") };
        let sums = weights.sum(D::Minus1)?.sum(D::Minus1)?.to_vec1::<f32>()?;
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-4));
        assert_eq!(out.scores.tensor().dtype(), DType::F32);
        Ok(())
    }
}

//! The model interface.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use gaze_tensor::seed::Rng;

use crate::convnet_classifier::{ConvNetClassifier, ConvNetClassifierConfig};
use crate::han::{Han, HanConfig};
use crate::ram::{Ram, RamConfig};
use crate::soft_attention_mnist::{SoftAttentionMnist, SoftAttentionMnistConfig};

/// One batch, as tensors. Fields a model does not use may be absent.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Images (b, c, h, w) f32 in [0, 1].
    pub images: Tensor,
    /// Class targets (b,) u32, or with questions, answer classes (q,) u32.
    pub targets: Tensor,
    /// Questions about the images (VQA), grouped by image.
    pub questions: Option<Questions>,
}

impl Batch {
    /// An image classification batch.
    pub fn images(images: Tensor, targets: Tensor) -> Self {
        Self { images, targets, questions: None }
    }
}

/// q questions about the b images of a batch.
#[derive(Debug, Clone)]
pub struct Questions {
    /// (q,) u32: the image of the batch each question is about.
    pub image: Tensor,
    /// (q, t) u32 token ids, padded.
    pub tokens: Tensor,
    /// (q,) u32 real tokens per question.
    pub lengths: Tensor,
    /// (q, c) f32 question codes, when the data has them.
    pub codes: Option<Tensor>,
}

/// What a model is built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataShape {
    /// (channels, height, width) of the images.
    pub input: (usize, usize, usize),
    /// Classes (or answers).
    pub classes: usize,
    /// Question vocabulary size (0: no text).
    pub vocab: usize,
    /// Width of question codes (0: none).
    pub code_dim: usize,
}

impl DataShape {
    /// Image classification of `classes` classes.
    pub fn images(input: (usize, usize, usize), classes: usize) -> Self {
        Self { input, classes, vocab: 0, code_dim: 0 }
    }
}

/// What a model attended to, per example, for pictures.
#[derive(Debug, Clone)]
pub enum AttentionMap {
    /// Non-negative weights over a grid laid over the image, (b, gh, gw); drawn as a heat map.
    Grid {
        /// The weights.
        weights: Tensor,
        /// What the map is, for captions ("attention", "feature norm (no attention)").
        title: String,
    },
    /// Cells kept by a hard attention, (b, gh, gw) of 0/1; drawn as outlined boxes.
    Cells {
        /// The mask.
        mask: Tensor,
        /// What the map is.
        title: String,
    },
    /// Soft masks per step, (b, t, gh, gw), each summing to 1; drawn as a strip of heat maps and
    /// their sum.
    Steps {
        /// The masks.
        weights: Tensor,
        /// What the map is.
        title: String,
    },
    /// Glimpses per step: for each example, each step's centre (x, y) in [-1, 1]; drawn as
    /// numbered boxes of every scale joined by the path.
    Glimpses {
        /// `centres[example][step]`.
        centres: Vec<Vec<(f32, f32)>>,
        /// Side in pixels of each scale's patch (g, s*g, ...).
        sizes: Vec<usize>,
        /// What the map is.
        title: String,
    },
}

/// What a forward pass gives.
#[derive(Debug, Clone)]
pub struct Output {
    /// Class scores (b, classes).
    pub logits: Tensor,
    /// Loss terms by name (`classify`, `baseline`, `reinforce` ...), each a scalar, already weighted.
    pub losses: Vec<(String, Tensor)>,
    /// What the model looked at, when it says.
    pub attention: Option<AttentionMap>,
    /// Scalar statistics by name that are logged but not trained on (attention entropy ...).
    pub stats: Vec<(String, Tensor)>,
}

impl Output {
    /// The total loss: the sum of the terms.
    pub fn total_loss(&self) -> Result<Tensor> {
        let mut it = self.losses.iter();
        let Some((_, first)) = it.next() else {
            return Err(candle_core::Error::Msg("model returned no loss terms".into()));
        };
        it.try_fold(first.clone(), |acc, (_, t)| acc + t)
    }
}

/// A trainable model.
pub trait Model: Send + Sync {
    /// Runs the model on `batch`. `train` selects training behaviour (dropout, sampling);
    /// `rng` is this step's seeded stream for every random draw.
    fn forward(&self, batch: &Batch, train: bool, rng: &mut Rng) -> Result<Output>;

    /// Tells the model how far training has gone: `progress` is the share of the run's training
    /// steps already taken, in [0, 1] (1 for a trained model read back from a run). Models with a
    /// setting scheduled over training (RAM's `sigma_final`) follow it; the default ignores it.
    fn set_progress(&mut self, progress: f64) {
        let _ = progress;
    }
}

/// Every model, by `type` in the experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelConfig {
    /// A plain ConvNet classifier (no attention; the baseline).
    Convnet(ConvNetClassifierConfig),
    /// Elementary soft attention on MNIST (conv volume + LSTM key, three relations).
    SoftAttentionMnist(SoftAttentionMnistConfig),
    /// The recurrent attention model (glimpses, recurrent core, REINFORCE location policy).
    Ram(RamConfig),
    /// Hard-attention VQA (HAN / AdaHAN, soft and all-cells references).
    Han(HanConfig),
}

/// Builds the model of `cfg` for data of `shape`.
pub fn build(cfg: &ModelConfig, shape: &DataShape, vb: VarBuilder) -> Result<Box<dyn Model>> {
    let (input, classes) = (shape.input, shape.classes);
    match cfg {
        ModelConfig::Convnet(c) => Ok(Box::new(ConvNetClassifier::new(c, input, classes, vb)?)),
        ModelConfig::SoftAttentionMnist(c) => Ok(Box::new(SoftAttentionMnist::new(c, input, classes, vb)?)),
        ModelConfig::Ram(c) => Ok(Box::new(Ram::new(c, input, classes, vb)?)),
        ModelConfig::Han(c) => Ok(Box::new(Han::new(c, shape, vb)?)),
    }
}

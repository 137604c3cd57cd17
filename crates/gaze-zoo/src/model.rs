//! The model interface: what a model is given ([`Batch`], with its [`Targets`] by task), what it
//! gives back ([`Output`], with its [`Scores`] by kind), and the [`Model`] trait. The registry of
//! model types is in [`crate::registry`].

use candle_core::{Result, Tensor};

use gaze_encoders::CellFrame;
use gaze_tensor::seed::Rng;

/// One batch, as tensors. Fields a model does not use may be absent.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Images (b, c, h, w) f32 in [0, 1].
    pub images: Tensor,
    /// What the model should predict, by task.
    pub targets: Targets,
    /// Questions about the images (VQA), grouped by image.
    pub questions: Option<Questions>,
}

impl Batch {
    /// An image classification batch: `labels` (b,) u32.
    pub fn images(images: Tensor, labels: Tensor) -> Self {
        Self { images, targets: Targets::Classes(labels), questions: None }
    }
}

/// A batch's targets, by task.
#[derive(Debug, Clone)]
pub enum Targets {
    /// One class per image, (b,) u32.
    Classes(Tensor),
    /// One answer class per question, (q,) u32, the questions in [`Batch::questions`].
    Answers(Tensor),
    /// One token sequence per image (a caption, the digits of a canvas in reading order).
    Sequences {
        /// (b, t) u32 token ids, each sequence ended by `EOS` (id 3) and padded with `PAD` (id 0).
        tokens: Tensor,
        /// (b,) u32 real tokens per sequence, its `EOS` included.
        lengths: Tensor,
    },
}

/// Token ids every sequence vocabulary of gaze starts with (as `gaze_data::vocab` numbers them).
pub mod tokens {
    /// Padding.
    pub const PAD: u32 = 0;
    /// Unknown word.
    pub const UNK: u32 = 1;
    /// Start of a sequence: the decoder's first input.
    pub const BOS: u32 = 2;
    /// End of a sequence.
    pub const EOS: u32 = 3;
}

impl Targets {
    /// The class (or answer) of each row, for a model that scores classes; an error naming the
    /// model (`who`) for sequence targets.
    pub fn classes(&self, who: &str) -> Result<&Tensor> {
        match self {
            Targets::Classes(t) | Targets::Answers(t) => Ok(t),
            Targets::Sequences { .. } => Err(candle_core::Error::Msg(format!(
                "{who} predicts one class per row, but this data asks for token sequences"
            ))),
        }
    }

    /// The token sequences and their lengths, for a sequence model; an error naming the model
    /// (`who`) for class targets.
    pub fn sequences(&self, who: &str) -> Result<(&Tensor, &Tensor)> {
        match self {
            Targets::Sequences { tokens, lengths } => Ok((tokens, lengths)),
            _ => Err(candle_core::Error::Msg(format!(
                "{who} predicts token sequences, but this data asks for one class per row"
            ))),
        }
    }

    /// Rows: images, questions or sequences.
    pub fn rows(&self) -> Result<usize> {
        match self {
            Targets::Classes(t) | Targets::Answers(t) => t.dim(0),
            Targets::Sequences { lengths, .. } => lengths.dim(0),
        }
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
    /// Classes (or answers); for sequence targets, the output vocabulary (special tokens included).
    pub classes: usize,
    /// Question vocabulary size (0: no text).
    pub vocab: usize,
    /// Width of question codes (0: none).
    pub code_dim: usize,
    /// Longest target sequence, its `EOS` included (0: the targets are classes).
    pub max_steps: usize,
}

impl DataShape {
    /// Image classification of `classes` classes.
    pub fn images(input: (usize, usize, usize), classes: usize) -> Self {
        Self { input, classes, vocab: 0, code_dim: 0, max_steps: 0 }
    }

    /// Token sequences of at most `max_steps` tokens (`EOS` included) over `vocab` output tokens.
    pub fn sequences(input: (usize, usize, usize), vocab: usize, max_steps: usize) -> Self {
        Self { input, classes: vocab, vocab: 0, code_dim: 0, max_steps }
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
        /// Glimpses per named object (a label emitted after each group of this many steps), or 0
        /// when the whole path serves one answer.
        per_object: usize,
        /// Leading glimpses the policy did not choose (RAM's first, at the centre or random): 0
        /// when every location was sampled from the policy.
        fixed: usize,
        /// What the map is.
        title: String,
    },
}

/// A model's scores, by kind.
#[derive(Debug, Clone)]
pub enum Scores {
    /// One score per class, (b, classes) (or (q, answers) for questions).
    Classes(Tensor),
    /// One score per output token at each step, (b, t, vocab), teacher-forced: step s read the
    /// target's token s - 1 (`BOS` first). Sequences without teacher forcing come from
    /// [`Model::decode`].
    Steps(Tensor),
}

impl Scores {
    /// The scores as a tensor, whatever their kind.
    pub fn tensor(&self) -> &Tensor {
        match self {
            Scores::Classes(t) | Scores::Steps(t) => t,
        }
    }

    /// Class scores (b, classes); an error for per-step scores.
    pub fn classes(&self) -> Result<&Tensor> {
        match self {
            Scores::Classes(t) => Ok(t),
            Scores::Steps(t) => {
                Err(candle_core::Error::Msg(format!("class scores asked of per-step scores {:?}", t.dims())))
            }
        }
    }
}

/// What a forward pass gives.
#[derive(Debug, Clone)]
pub struct Output {
    /// The scores: per class, or per step and token.
    pub scores: Scores,
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

/// How a forward pass runs: training behaviour (dropout, sampling) or not, and how far training
/// has gone, for settings scheduled over training (RAM's `sigma_final`, HAN's `topk_warmup`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mode {
    /// Training behaviour.
    pub train: bool,
    /// Share of the run's training steps already taken, in [0, 1].
    pub progress: f64,
}

impl Mode {
    /// A training step at `progress`.
    pub fn train(progress: f64) -> Self {
        Self { train: true, progress }
    }

    /// Evaluation during training, at `progress`.
    pub fn eval_at(progress: f64) -> Self {
        Self { train: false, progress }
    }

    /// Evaluation of a trained model (progress 1).
    pub fn eval() -> Self {
        Self::eval_at(1.0)
    }
}

/// How a sequence is decoded without teacher forcing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Search {
    /// The most likely token at every step.
    #[default]
    Greedy,
    /// Beam search keeping `width` hypotheses per example (width 1 is greedy).
    Beam {
        /// Hypotheses kept.
        width: usize,
    },
}

/// Sequences decoded by a model.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Each example's tokens, without `BOS` and `EOS`.
    pub tokens: Vec<Vec<u32>>,
    /// What the model attended at each decoded step, when it says (a
    /// [`AttentionMap::Steps`] over the longest sequence, zero past an example's end).
    pub attention: Option<AttentionMap>,
}

/// A trainable model.
pub trait Model: Send + Sync {
    /// Runs the model on `batch`. `mode` selects training behaviour and says how far training
    /// has gone; `rng` is this step's seeded stream for every random draw.
    fn forward(&self, batch: &Batch, mode: Mode, rng: &mut Rng) -> Result<Output>;

    /// Decodes a sequence for every image of `batch` without teacher forcing (the targets are not
    /// read), at most `max_steps` tokens. Models that score classes do not decode.
    fn decode(&self, batch: &Batch, search: Search, max_steps: usize, rng: &mut Rng) -> Result<Decoded> {
        let _ = (batch, search, max_steps, rng);
        Err(candle_core::Error::Msg("this model scores classes; it has no sequence decoder".into()))
    }

    /// For post-hoc explanations ([`crate::explain`]): the last convolutional feature map
    /// (b, k, h, w) as a tensor whose gradient can be read, and the class scores (b, classes)
    /// computed from it in evaluation mode. None for models without one.
    fn conv_features(&self, images: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let _ = images;
        Ok(None)
    }

    /// Where the cells of a `grid`-sized map of this model (its attention, a layer's map, Grad-CAM
    /// of its conv features) lie on an `image`-sized input, for grading and drawing the map.
    /// None: they tile the image evenly, as pooled grids do.
    fn cell_frame(&self, grid: (usize, usize), image: (usize, usize)) -> Option<CellFrame> {
        let _ = (grid, image);
        None
    }

    /// Every attention map the model computes, one per layer where it attends at several (Learn
    /// to Pay Attention's estimators), each (b, h_i, w_i) summing to 1 per image, named
    /// (`block2`); evaluation mode. Empty for models with one map (their `attention`).
    fn layer_maps(&self, images: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let _ = images;
        Ok(Vec::new())
    }

    /// Name prefixes of parameters that training leaves at their values (a frozen pretrained
    /// trunk). They are still saved in checkpoints.
    fn frozen(&self) -> Vec<String> {
        Vec::new()
    }

    /// Weights a fresh run loads before its first step: (name prefix, source), the source a
    /// `.safetensors` file or a hub model id whose tensors, named without the prefix, fill every
    /// parameter under it.
    fn pretrained(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

//! "Show, Attend and Tell: Neural Image Caption Generation with Visual Attention" (Xu et al. 2015):
//! a CNN grid read by an LSTM that attends to it at every step, one token per step, for any task
//! whose target is a token sequence (a caption, the digits of a canvas in reading order).
//!
//! The CNN turns an image into an L = h x w grid of D-dim annotation vectors a_i. The LSTM starts
//! from h0 = tanh(W_h mean(a)), c0 = tanh(W_c mean(a)) (the paper's init MLPs, one layer each).
//! At step t the additive attention weighs the cells by the previous hidden state,
//! alpha_t = softmax(w^T tanh(W_a a_i + W_h h_{t-1})), and the context z_t is, by `attention`:
//!
//! - `soft`: the expectation sum_i alpha_ti a_i (section 4.2), trained with the doubly
//!   stochastic penalty `doubly_stochastic * sum_i (1 - sum_t alpha_ti)^2` per caption;
//! - `hard`: the annotation of one cell s_t ~ Multinoulli(alpha_t) (section 4.1), trained by
//!   REINFORCE: the caption's log-likelihood log p(y | s) less a moving-average baseline
//!   (b <- decay * b + (1 - decay) * the batch's mean) rewards the sampled cells, with an entropy
//!   bonus on alpha; with probability `expected_context_prob` a batch uses the expected context
//!   instead of a sample (as the authors' code does) and has no REINFORCE term, every batch in
//!   the first `expected_context_warmup` share of training. Evaluation uses the expected context
//!   unless `sample_at_eval`;
//! - `none`: the mean annotation at every step, no attention (the "Show and Tell" reference).
//!
//! With `query = "current"` the step reads its word first (the LSTM on [E y_{t-1}; mean(a)], or
//! with `feed_context` on [E y_{t-1}; z_{t-1}]) and attends with the new state h_t instead
//! ("Knowing When to Look", Lu et al. 2017), so the map of step t belongs to the state that
//! scores word t. With `feed_location` the LSTM also reads where the last step looked (the
//! attention-weighted mean of the cells' centres, or the sampled cell's centre), but not what it
//! saw there: relations between what it has named stay within its reach, while a colour or a
//! shape has to be read again at the step that names it.
//!
//! With `gate`, z_t is scaled by beta_t = sigmoid(f_beta(h_{t-1})) (section 4.2.1). The LSTM reads
//! [E y_{t-1}; z_t]. With `deep_output` the token scores are
//! L_o(dropout(tanh(E y_{t-1} + L_h h_t + L_z z_t))) (the paper's eq. 7 with the tanh of the
//! authors' code), else a linear map of dropout([h_t; z_t]). Training is teacher-forced (`BOS`
//! first) on the cross-entropy of the real tokens (`EOS` included, padding not); every extra term
//! is divided by the batch's real tokens as that loss is, so its weight keeps the paper's ratio to
//! the per-caption log-likelihood. [`Model::decode`] reads without the targets, greedily or by
//! beam search.
//!
//! With `encoder = { type = "resnet18", weights = FILE, trainable = false }` (or `resnet34`) the
//! annotations come from a ResNet trunk's last kept stage instead of the ConvNet (the paper used a
//! pretrained VGG): its parameters are named `encoder.*`, loaded from the weights when a run
//! starts, and held fixed unless `trainable`.
//!
//! The hard baseline lives in the model, not in its parameters: a resumed run starts it afresh
//! from its first batch.

use std::sync::Mutex;

use candle_core::{Result, Tensor, D};
use candle_nn::{Embedding, Linear, Module, VarBuilder};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use gaze_attention::{weighted_sum, AdditiveAttention, AdditiveConfig};
use gaze_encoders::{Backbone, ConvNet, ConvNetConfig, ResNet};
use gaze_tensor::lstm::{LstmCell, LstmState, LstmWeights};
use gaze_tensor::sample;
use gaze_tensor::seed::Rng;

use crate::convnet_classifier::dropout;
use crate::decode::{self, BeamState};
use crate::model::{AttentionMap, Batch, DataShape, Decoded, Mode, Model, Output, Scores, Search};

/// Where the decoder's context comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Looking {
    /// Soft attention: the alpha-weighted mean of the annotations.
    #[default]
    Soft,
    /// Hard stochastic attention: one sampled cell, trained by REINFORCE.
    Hard,
    /// No attention: the mean annotation at every step.
    None,
}

/// Which LSTM state asks where to look at step t.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    /// h_{t-1}, before the step reads its word (the paper): the LSTM reads [E y_{t-1}; z_t].
    #[default]
    Previous,
    /// h_t, after the step has read its word and the mean annotation ("Knowing When to Look",
    /// Lu et al. 2017): the LSTM reads [E y_{t-1}; mean(a)], then attends, and the token is
    /// scored from h_t and z_t. The map of step t is then drawn by the state that scores word t,
    /// not by the one before it.
    Current,
}

/// Settings of [`ShowAttendTell`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShowAttendTellConfig {
    /// Soft, hard or no attention.
    pub attention: Looking,
    /// Which state asks where to look: `previous` (the paper) or `current`.
    pub query: Query,
    /// With `query = "current"`: the LSTM reads the previous step's context z_{t-1} (the mean
    /// annotation at the first step) instead of the mean annotation, so it knows what it last
    /// looked at ("input feeding", Luong et al. 2015, "Effective Approaches to Attention-based
    /// Neural Machine Translation").
    pub feed_context: bool,
    /// With `query = "current"`: the LSTM also reads where the previous step looked, (x, y) in
    /// [-1, 1] (the centre at the first step): the attention-weighted mean of the cells' centres,
    /// or the sampled cell's centre.
    pub feed_location: bool,
    /// The CNN whose last feature map is the annotation grid (`in_channels` from the data).
    pub convnet: ConvNetConfig,
    /// A pretrained trunk in place of `convnet` (its last kept stage is the grid).
    pub encoder: Option<Backbone>,
    /// Append each cell's centre (x, y in [-1, 1]) to its annotation vector, so that the context
    /// says where the attended cells are (relations, reading order need it).
    pub cell_coords: bool,
    /// Width of the token embedding E.
    pub embed: usize,
    /// LSTM hidden units.
    pub hidden: usize,
    /// Hidden width of the attention MLP.
    pub attention_dim: usize,
    /// Scale the context by beta = sigmoid(f_beta(h)).
    pub gate: bool,
    /// The deep output layer (else a linear map of [h; z]).
    pub deep_output: bool,
    /// Dropout before the token scores (training only).
    pub dropout: f32,
    /// Weight lambda of the doubly stochastic penalty (soft attention; 0 turns it off).
    pub doubly_stochastic: f32,
    /// Weight of the REINFORCE term (hard attention).
    pub reinforce_weight: f32,
    /// Weight of the entropy bonus on alpha (hard attention).
    pub entropy_weight: f32,
    /// Decay of the moving-average baseline (hard attention).
    pub baseline_decay: f32,
    /// Probability that a training batch uses the expected context (hard attention).
    pub expected_context_prob: f32,
    /// Share of the run's training steps, from the start, in which every batch uses the expected
    /// context (hard attention): sampled cells from an attention that has not yet learnt where to
    /// look teach the decoder to ignore the context.
    pub expected_context_warmup: f32,
    /// Evaluate and decode with sampled cells rather than the expected context (hard attention).
    pub sample_at_eval: bool,
}

impl Default for ShowAttendTellConfig {
    /// Soft attention over two 3x3 blocks (32, 64 channels, 2x2 pooling), each cell's centre
    /// appended to its features (relations and reading order need it); embedding
    /// 64, LSTM 128, attention 64; gate, deep output, lambda 1; for hard attention the REINFORCE
    /// weight 1, entropy 0.002, baseline decay 0.9 and the expected context half the time.
    fn default() -> Self {
        Self {
            attention: Looking::Soft,
            query: Query::Previous,
            feed_context: false,
            feed_location: false,
            convnet: ConvNetConfig::default(),
            encoder: None,
            cell_coords: true,
            embed: 64,
            hidden: 128,
            attention_dim: 64,
            gate: true,
            deep_output: true,
            dropout: 0.0,
            doubly_stochastic: 1.0,
            reinforce_weight: 1.0,
            entropy_weight: 0.002,
            baseline_decay: 0.9,
            expected_context_prob: 0.5,
            expected_context_warmup: 0.0,
            sample_at_eval: false,
        }
    }
}

impl ShowAttendTellConfig {
    /// A tiny captioner for tests (the doubly stochastic penalty light, as the shape experiments
    /// set it: over few steps and many cells the paper's weight holds attention uniform).
    pub fn tiny() -> Self {
        Self {
            convnet: ConvNetConfig::tiny(),
            embed: 8,
            hidden: 24,
            attention_dim: 16,
            doubly_stochastic: 0.01,
            ..Self::default()
        }
    }
}

/// The token scores: the deep output layer, or a linear map of [h; z].
#[derive(Debug, Clone)]
enum Head {
    Deep { l_h: Linear, l_z: Linear, l_o: Linear },
    Linear(Linear),
}

/// Where the annotation grid comes from.
#[derive(Debug)]
enum Trunk {
    Conv(ConvNet),
    ResNet(ResNet),
}

impl Trunk {
    fn forward(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Trunk::Conv(n) => n.forward(images, train),
            Trunk::ResNet(n) => n.forward(images, train),
        }
    }
}

/// The captioner.
#[derive(Debug)]
pub struct ShowAttendTell {
    cfg: ShowAttendTellConfig,
    net: Trunk,
    embed: Embedding,
    init_h: Linear,
    init_c: Linear,
    attention: AdditiveAttention,
    lstm: LstmCell,
    head: Head,
    grid: (usize, usize),
    /// Each cell's centre (1, L, 2), when appended to the annotations or fed as the location.
    centres: Option<Tensor>,
    vocab: usize,
    baseline: Mutex<Option<f64>>,
}

fn err(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(format!("show_attend_tell: {msg}"))
}

/// The decoder's state for n rows: the LSTM state, each row's annotation grid, the grid's half
/// of the attention scores (computed once), the grid's mean and the last step's context (the mean
/// before the first).
struct ReadState {
    lstm: LstmState,
    feats: Tensor,
    keys: Tensor,
    mean: Tensor,
    context: Tensor,
    /// Where the last step looked, (n, 2) (the centre, 0, before the first).
    place: Tensor,
}

impl BeamState for ReadState {
    fn select(&self, rows: &Tensor) -> Result<Self> {
        Ok(ReadState {
            lstm: LstmState { h: self.lstm.h.index_select(rows, 0)?, c: self.lstm.c.index_select(rows, 0)? },
            feats: self.feats.index_select(rows, 0)?,
            keys: self.keys.index_select(rows, 0)?,
            mean: self.mean.index_select(rows, 0)?,
            context: self.context.index_select(rows, 0)?,
            place: self.place.index_select(rows, 0)?,
        })
    }
}

/// How one step forms its context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// The alpha-weighted mean.
    Expected,
    /// One sampled cell.
    Sampled,
    /// The mean annotation (no attention).
    Mean,
}

/// What one step gives for n rows.
struct Stepped {
    scores: Tensor,
    state: ReadState,
    /// alpha (n, L), unless the context is the mean.
    alpha: Option<Tensor>,
    /// log alpha of the sampled cell (n,), when sampled.
    log_pick: Option<Tensor>,
}

impl ShowAttendTell {
    /// Builds the captioner for the images and output vocabulary of `shape`.
    pub fn new(cfg: &ShowAttendTellConfig, shape: &DataShape, vb: VarBuilder) -> Result<Self> {
        let (c, h, w) = shape.input;
        if shape.max_steps == 0 {
            return Err(err("the data's targets are classes; this model reads token sequences".into()));
        }
        if shape.classes < 5 {
            return Err(err(format!(
                "an output vocabulary of {} tokens has no room beside the 4 special ones",
                shape.classes
            )));
        }
        for (name, v) in [("embed", cfg.embed), ("hidden", cfg.hidden), ("attention_dim", cfg.attention_dim)] {
            if v == 0 {
                return Err(err(format!("`{name}` must be at least 1")));
            }
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            return Err(err(format!("dropout {} is not in [0, 1)", cfg.dropout)));
        }
        for (name, v) in [
            ("doubly_stochastic", cfg.doubly_stochastic),
            ("reinforce_weight", cfg.reinforce_weight),
            ("entropy_weight", cfg.entropy_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(err(format!("`{name}` = {v} must be a finite number >= 0")));
            }
        }
        for (name, v) in [
            ("baseline_decay", cfg.baseline_decay),
            ("expected_context_prob", cfg.expected_context_prob),
            ("expected_context_warmup", cfg.expected_context_warmup),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(err(format!("`{name}` = {v} is not in [0, 1]")));
            }
        }
        if cfg.feed_context && cfg.query != Query::Current {
            return Err(err("`feed_context` needs `query = \"current\"` (the paper's order already reads z_t)".into()));
        }
        if cfg.feed_location && (cfg.query != Query::Current || cfg.attention == Looking::None) {
            return Err(err(
                "`feed_location` needs `query = \"current\"` and an attention to say where it looked".into()
            ));
        }
        let net_cfg = ConvNetConfig { in_channels: c, ..cfg.convnet.clone() };
        let (d, gh, gw) = match &cfg.encoder {
            None => net_cfg.output_shape(h, w),
            Some(b) => {
                if c != 1 && c != 3 {
                    return Err(err(format!("a ResNet encoder reads grey or RGB images, not {c} channels")));
                }
                ResNet::output_shape(b.parts().1.stages, h, w)
            }
        };
        if gh == 0 || gw == 0 {
            return Err(err(format!("a {h}x{w} input is too small for {} pooled blocks", net_cfg.channels.len())));
        }
        let d = if cfg.cell_coords { d + 2 } else { d };
        let att = AdditiveConfig { feat_dim: d, query_dim: cfg.hidden, hidden: cfg.attention_dim, gate: cfg.gate };
        let head = if cfg.deep_output {
            Head::Deep {
                l_h: candle_nn::linear(cfg.hidden, cfg.embed, vb.pp("l_h"))?,
                l_z: candle_nn::linear_no_bias(d, cfg.embed, vb.pp("l_z"))?,
                l_o: candle_nn::linear(cfg.embed, shape.classes, vb.pp("l_o"))?,
            }
        } else {
            Head::Linear(candle_nn::linear(cfg.hidden + d, shape.classes, vb.pp("out"))?)
        };
        Ok(Self {
            cfg: cfg.clone(),
            net: match &cfg.encoder {
                None => Trunk::Conv(ConvNet::new(&net_cfg, vb.pp("convnet"))?),
                Some(b) => Trunk::ResNet(b.build(vb.pp("encoder"))?),
            },
            // Small word vectors (uniform in +-0.1, as common captioning code starts them): with
            // candle's N(0, 1), E y_{t-1} drowned the context in the LSTM input and the deep
            // output, and the decoder learnt a language model that ignored the image.
            embed: Embedding::new(
                vb.pp("embed").get_with_hints(
                    (shape.classes, cfg.embed),
                    "weight",
                    candle_nn::Init::Uniform { lo: -0.1, up: 0.1 },
                )?,
                cfg.embed,
            ),
            init_h: candle_nn::linear(d, cfg.hidden, vb.pp("init_h"))?,
            init_c: candle_nn::linear(d, cfg.hidden, vb.pp("init_c"))?,
            attention: AdditiveAttention::new(&att, vb.pp("attention"))?,
            lstm: LstmCell::new(cfg.embed + d + if cfg.feed_location { 2 } else { 0 }, cfg.hidden, vb.pp("lstm"))?,
            head,
            grid: (gh, gw),
            centres: if cfg.cell_coords || cfg.feed_location {
                Some(gaze_tensor::ops::cell_centres(gh, gw, vb.device())?)
            } else {
                None
            },
            vocab: shape.classes,
            baseline: Mutex::new(None),
        })
    }

    /// The annotation grid and the initial state. Shapes: images (b, c, h, w) -> feats (b, L, D).
    fn start(&self, images: &Tensor, train: bool) -> Result<ReadState> {
        let mut feats = self.net.forward(images, train)?.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        if let Some(xy) = self.centres.as_ref().filter(|_| self.cfg.cell_coords) {
            let (b, l, _) = feats.dims3()?;
            feats = Tensor::cat(&[&feats, &xy.broadcast_as((b, l, 2))?.contiguous()?], 2)?;
        }
        let mean = feats.mean(1)?;
        let lstm = LstmState { h: self.init_h.forward(&mean)?.tanh()?, c: self.init_c.forward(&mean)?.tanh()? };
        let keys = self.attention.keys(&feats)?;
        let place = Tensor::zeros((mean.dim(0)?, 2), mean.dtype(), mean.device())?;
        Ok(ReadState { lstm, feats, keys, context: mean.clone(), mean, place })
    }

    /// How a pass forms its contexts: from the config, training or not, and (hard attention in
    /// training) past the warm-up one draw per batch.
    fn context(&self, mode: Mode, rng: &mut Rng) -> Context {
        match (self.cfg.attention, mode.train) {
            (Looking::None, _) => Context::Mean,
            (Looking::Soft, _) => Context::Expected,
            (Looking::Hard, true) => {
                if mode.progress < f64::from(self.cfg.expected_context_warmup)
                    || rng.random::<f32>() < self.cfg.expected_context_prob
                {
                    Context::Expected
                } else {
                    Context::Sampled
                }
            }
            (Looking::Hard, false) => {
                if self.cfg.sample_at_eval {
                    Context::Sampled
                } else {
                    Context::Expected
                }
            }
        }
    }

    /// One step. Shapes: prev (n,) u32 -> scores (n, vocab).
    fn step(
        &self,
        w: &LstmWeights,
        s: &ReadState,
        prev: &Tensor,
        (how, train): (Context, bool),
        rng: &mut Rng,
    ) -> Result<Stepped> {
        let e = self.embed.forward(prev)?;
        // With `current`, the step first reads its word (and the mean annotation), then asks.
        let read_first = match (self.cfg.query, how) {
            (Query::Current, Context::Expected | Context::Sampled) => {
                let seen = if self.cfg.feed_context { &s.context } else { &s.mean };
                let place = self.cfg.feed_location.then_some(&s.place);
                let parts: Vec<&Tensor> = [&e, seen].into_iter().chain(place).collect();
                Some(w.step(&Tensor::cat(&parts, 1)?, Some(&s.lstm))?)
            }
            _ => None,
        };
        let h = read_first.as_ref().map_or(&s.lstm.h, |l| &l.h);
        let centres = self.centres.as_ref().filter(|_| self.cfg.feed_location);
        let (mut z, alpha, log_pick, place) = match how {
            Context::Mean => (s.mean.clone(), None, None, s.place.clone()),
            Context::Expected | Context::Sampled => {
                let alpha = candle_nn::ops::softmax(&self.attention.scores_from_keys(&s.keys, h)?, D::Minus1)?;
                if how == Context::Expected {
                    let place = match centres {
                        Some(xy) => alpha.matmul(&xy.squeeze(0)?)?,
                        None => s.place.clone(),
                    };
                    (weighted_sum(&s.feats, &alpha)?, Some(alpha), None, place)
                } else {
                    let (n, _, d) = s.feats.dims3()?;
                    let index = sample::categorical_sample(&alpha.detach(), rng)?;
                    let log_pick = sample::categorical_log_prob(&alpha, &index)?;
                    let place = match centres {
                        Some(xy) => xy.squeeze(0)?.index_select(&index, 0)?,
                        None => s.place.clone(),
                    };
                    let idx = index.reshape((n, 1, 1))?.broadcast_as((n, 1, d))?.contiguous()?;
                    (s.feats.gather(&idx, 1)?.squeeze(1)?, Some(alpha), Some(log_pick), place)
                }
            }
        };
        if let Some(beta) = self.attention.gate(h)? {
            z = z.broadcast_mul(&beta)?;
        }
        let lstm = match read_first {
            Some(l) => l,
            None => w.step(&Tensor::cat(&[&e, &z], 1)?, Some(&s.lstm))?,
        };
        let scores = match &self.head {
            Head::Deep { l_h, l_z, l_o } => {
                let mut o = (e + l_h.forward(&lstm.h)? + l_z.forward(&z)?)?.tanh()?;
                if train {
                    o = dropout(&o, self.cfg.dropout, rng)?;
                }
                l_o.forward(&o)?
            }
            Head::Linear(out) => {
                let mut o = Tensor::cat(&[&lstm.h, &z], 1)?;
                if train {
                    o = dropout(&o, self.cfg.dropout, rng)?;
                }
                out.forward(&o)?
            }
        };
        let state = ReadState {
            lstm,
            feats: s.feats.clone(),
            keys: s.keys.clone(),
            mean: s.mean.clone(),
            context: z.clone(),
            place,
        };
        Ok(Stepped { scores, state, alpha, log_pick })
    }

    /// The baseline to compare this batch's mean reward `mean` with, and the baseline moved
    /// toward it (the first batch starts it at its own mean).
    fn advance_baseline(&self, mean: f64) -> f64 {
        let mut b = self.baseline.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = b.unwrap_or(mean);
        let decay = f64::from(self.cfg.baseline_decay);
        *b = Some(decay * before + (1.0 - decay) * mean);
        before
    }
}

/// 1 for the real tokens of each row, 0 for padding. Shapes: lengths (b,) u32 -> (b, t) f32.
pub fn token_mask(lengths: &Tensor, t: usize) -> Result<Tensor> {
    let lens = lengths.to_vec1::<u32>()?;
    let b = lens.len();
    let mask: Vec<f32> =
        lens.iter().flat_map(|&l| (0..t).map(move |s| if s < l as usize { 1.0 } else { 0.0 })).collect();
    Tensor::from_vec(mask, (b, t), lengths.device())
}

/// The log-probability of each target token, 0 on padding. Shapes: scores (b, t, v), tokens
/// (b, t) u32, mask (b, t) -> (b, t).
pub fn token_log_probs(scores: &Tensor, tokens: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(scores, D::Minus1)?;
    logp.gather(&tokens.unsqueeze(D::Minus1)?, D::Minus1)?.squeeze(D::Minus1)? * mask
}

/// Mean cross-entropy of the real tokens. Shapes: scores (b, t, v), tokens (b, t) u32, lengths (b,).
pub fn sequence_loss(scores: &Tensor, tokens: &Tensor, lengths: &Tensor) -> Result<Tensor> {
    let mask = token_mask(lengths, scores.dim(1)?)?;
    let n = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
    token_log_probs(scores, tokens, &mask)?.sum_all()?.affine(-1.0 / f64::from(n), 0.0)
}

/// The doubly stochastic penalty summed over the batch, sum_b sum_i (1 - sum_t alpha_bti)^2,
/// the steps past each caption's end left out. Shapes: alphas (b, t, L), mask (b, t) -> scalar.
pub fn doubly_stochastic(alphas: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let per_cell = alphas.broadcast_mul(&mask.unsqueeze(D::Minus1)?)?.sum(1)?; // (b, L)
    per_cell.affine(-1.0, 1.0)?.sqr()?.sum_all()
}

/// The REINFORCE surrogate of the hard attention, summed over the batch:
/// -sum_b (reward_b - baseline) * sum_t log alpha(s_bt), whose gradient is the estimator's. Its
/// value is 0 (the surrogate less its detached self): a surrogate's value means nothing, and
/// added to the loss it would hide the log-likelihood in every curve.
/// Shapes: log_picks (b, t) (0 on padding), reward (b,) -> scalar.
pub fn reinforce(log_picks: &Tensor, reward: &Tensor, baseline: f64) -> Result<Tensor> {
    let advantage = reward.detach().affine(1.0, -baseline)?;
    let surrogate = (log_picks.sum(1)? * advantage)?.sum_all()?.neg()?;
    surrogate.broadcast_sub(&surrogate.detach())
}

impl Model for ShowAttendTell {
    /// The trunk's cells.
    fn cell_frame(&self, grid: (usize, usize), image: (usize, usize)) -> Option<crate::CellFrame> {
        match &self.net {
            Trunk::Conv(n) => n.config().cell_frame(grid, image),
            Trunk::ResNet(n) => ResNet::cell_frame(n.config().stages, grid, image),
        }
    }

    fn frozen(&self) -> Vec<String> {
        match &self.cfg.encoder {
            Some(b) if !b.parts().1.trainable => vec!["encoder.".into()],
            _ => Vec::new(),
        }
    }

    fn pretrained(&self) -> Vec<(String, String)> {
        match self.cfg.encoder.as_ref().and_then(|b| b.parts().1.weights.clone()) {
            Some(w) => vec![("encoder.".into(), w)],
            None => Vec::new(),
        }
    }

    /// Shapes: images (b, c, h, w), targets (b, t) tokens -> scores (b, t, vocab), losses
    /// `sequence` (+ `doubly_stochastic`; or `reinforce` and `entropy` on sampled batches),
    /// attention (b, t, gh, gw) unless `none`.
    fn forward(&self, batch: &Batch, mode: Mode, rng: &mut Rng) -> Result<Output> {
        let (tokens, lengths) = batch.targets.sequences("show_attend_tell")?;
        let (b, t) = tokens.dims2()?;
        if let Some(&v) = tokens.flatten_all()?.to_vec1::<u32>()?.iter().find(|&&v| v as usize >= self.vocab) {
            return Err(err(format!("target token {v} is outside the vocabulary of {}", self.vocab)));
        }
        let how = self.context(mode, rng);
        let w = self.lstm.weights()?;
        let mut s = self.start(&batch.images, mode.train)?;
        let bos = Tensor::full(crate::model::tokens::BOS, b, batch.images.device())?;
        let (mut scores, mut alphas, mut picks) = (Vec::with_capacity(t), Vec::with_capacity(t), vec![]);
        for step in 0..t {
            let prev = if step == 0 { bos.clone() } else { tokens.narrow(1, step - 1, 1)?.squeeze(1)? };
            let out = self.step(&w, &s, &prev, (how, mode.train), rng)?;
            scores.push(out.scores);
            alphas.extend(out.alpha);
            picks.extend(out.log_pick);
            s = out.state;
        }
        let scores = Tensor::stack(&scores, 1)?;
        let mask = token_mask(lengths, t)?;
        let n_tokens = f64::from(mask.sum_all()?.to_scalar::<f32>()?.max(1.0));
        let log_probs = token_log_probs(&scores, tokens, &mask)?;
        let mut losses = vec![("sequence".to_string(), log_probs.sum_all()?.affine(-1.0 / n_tokens, 0.0)?)];
        let mut stats = vec![];
        let alphas = if alphas.is_empty() { None } else { Some(Tensor::stack(&alphas, 1)?) };
        if let Some(a) = &alphas {
            let entropy = sample::categorical_entropy(&a.flatten_to(1)?)?.reshape((b, t))?;
            let mean_entropy = (&entropy * &mask)?.sum_all()?.affine(1.0 / n_tokens, 0.0)?;
            stats.push(("attention_entropy".to_string(), mean_entropy.detach()));
            let lambda = f64::from(self.cfg.doubly_stochastic);
            if self.cfg.attention == Looking::Soft && lambda > 0.0 {
                let penalty = doubly_stochastic(a, &mask)?.affine(lambda / n_tokens, 0.0)?;
                losses.push(("doubly_stochastic".to_string(), penalty));
            }
            if how == Context::Sampled && mode.train {
                let reward = log_probs.sum(1)?.detach(); // log p(y | s) per caption
                let mean = f64::from(reward.mean_all()?.to_scalar::<f32>()?);
                let baseline = self.advance_baseline(mean);
                let log_picks = (Tensor::stack(&picks, 1)? * &mask)?;
                let weight = f64::from(self.cfg.reinforce_weight) / n_tokens;
                losses.push(("reinforce".to_string(), reinforce(&log_picks, &reward, baseline)?.affine(weight, 0.0)?));
                let bonus = f64::from(self.cfg.entropy_weight);
                losses.push(("entropy".to_string(), mean_entropy.affine(-bonus, 0.0)?));
                stats.push(("baseline".to_string(), Tensor::new(baseline as f32, batch.images.device())?));
                stats.push(("reward".to_string(), Tensor::new(mean as f32, batch.images.device())?));
            }
        }
        let (gh, gw) = self.grid;
        let attention = match alphas {
            Some(a) => Some(AttentionMap::Steps {
                weights: a.reshape((b, t, gh, gw))?.detach(),
                title: "attention per word".into(),
            }),
            None => None,
        };
        Ok(Output { scores: Scores::Steps(scores), losses, attention, stats })
    }

    fn decode(&self, batch: &Batch, search: Search, max_steps: usize, rng: &mut Rng) -> Result<Decoded> {
        let b = batch.images.dim(0)?;
        let w = self.lstm.weights()?;
        let how = self.context(Mode::eval(), rng);
        let start = self.start(&batch.images, false)?;
        let found = decode::search(batch.images.device(), b, search, max_steps, start, |s, prev| {
            let out = self.step(&w, s, prev, (how, false), rng)?;
            let log_probs = candle_nn::ops::log_softmax(&out.scores, D::Minus1)?;
            Ok(decode::Step { log_probs, state: out.state, attention: out.alpha })
        })?;
        // The attention of each example's steps, zero past its end.
        let (gh, gw) = self.grid;
        let steps = found.attention.iter().map(Vec::len).max().unwrap_or(0);
        let attention = if steps == 0 {
            None
        } else {
            let mut flat = vec![0f32; b * steps * gh * gw];
            for (e, rows) in found.attention.iter().enumerate() {
                for (s, row) in rows.iter().enumerate() {
                    let at = (e * steps + s) * gh * gw;
                    let n = row.len().min(gh * gw);
                    flat[at..at + n].copy_from_slice(&row[..n]);
                }
            }
            let weights = Tensor::from_vec(flat, (b, steps, gh, gw), batch.images.device())?;
            Some(AttentionMap::Steps { weights, title: "attention per decoded word".into() })
        };
        Ok(Decoded { tokens: found.tokens, attention })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{tokens::EOS, Targets};
    use crate::test_util::fit_fixed_batch;
    use candle_core::{Device, Var};
    use gaze_tensor::{Seed, SeededVarMap};

    /// Four 12x16 images: a bright square on the left, right or both halves; the target names
    /// the halves that are lit, left to right (4 = left, 5 = right), then EOS.
    fn halves() -> Result<Batch> {
        let dev = Device::Cpu;
        let lit = [(true, false), (false, true), (true, true), (false, false)];
        let mut px = vec![0f32; 4 * 12 * 16];
        let (mut toks, mut lens) = (vec![], vec![]);
        for (i, &(l, r)) in lit.iter().enumerate() {
            for y in 4..8 {
                for x in 0..16 {
                    if (x < 8 && l && (2..6).contains(&x)) || (x >= 8 && r && (10..14).contains(&x)) {
                        px[i * 192 + y * 16 + x] = 1.0;
                    }
                }
            }
            let mut seq: Vec<u32> = [(l, 4), (r, 5)].iter().filter(|p| p.0).map(|p| p.1).collect();
            seq.push(EOS);
            lens.push(seq.len() as u32);
            seq.resize(3, 0);
            toks.extend(seq);
        }
        Ok(Batch {
            images: Tensor::from_vec(px, (4, 1, 12, 16), &dev)?,
            targets: Targets::Sequences {
                tokens: Tensor::from_vec(toks, (4, 3), &dev)?,
                lengths: Tensor::from_vec(lens, 4, &dev)?,
            },
            questions: None,
        })
    }

    fn tiny(attention: Looking) -> Result<(SeededVarMap, ShowAttendTell)> {
        tiny_asking(attention, Query::Previous)
    }

    fn tiny_asking(attention: Looking, query: Query) -> Result<(SeededVarMap, ShowAttendTell)> {
        tiny_with(ShowAttendTellConfig { attention, query, ..ShowAttendTellConfig::tiny() })
    }

    fn tiny_with(cfg: ShowAttendTellConfig) -> Result<(SeededVarMap, ShowAttendTell)> {
        let vm = SeededVarMap::new(Seed(0));
        let shape = DataShape::sequences((1, 12, 16), 6, 3);
        let model = ShowAttendTell::new(&cfg, &shape, vm.builder(&Device::Cpu))?;
        Ok((vm, model))
    }

    #[test]
    fn each_kind_of_attention_fits_the_fixed_batch_and_decodes_it() -> Result<()> {
        let batch = halves()?;
        let want = vec![vec![4], vec![5], vec![4, 5], vec![]];
        for (looking, query, feed_context, feed_location) in [
            (Looking::Soft, Query::Previous, false, false),
            (Looking::Hard, Query::Previous, false, false),
            (Looking::None, Query::Previous, false, false),
            (Looking::Soft, Query::Current, false, false),
            (Looking::Hard, Query::Current, false, false),
            (Looking::Soft, Query::Current, true, false),
            (Looking::Soft, Query::Current, false, true),
            (Looking::Hard, Query::Current, false, true),
        ] {
            let cfg = ShowAttendTellConfig {
                attention: looking,
                query,
                feed_context,
                feed_location,
                ..ShowAttendTellConfig::tiny()
            };
            let (vm, model) = tiny_with(cfg)?;
            let mut r = Seed(1).rng();
            // Hard attention learns from half its batches' samples: more steps; so does a decoder
            // whose LSTM reads its own last context.
            let steps = match (looking, feed_context) {
                (Looking::Hard, _) => 500,
                (_, true) => 500,
                _ => 200,
            };
            let (first, last) = fit_fixed_batch(&model, &vm, &batch, steps, 2e-2, Mode::eval(), &mut r)?;
            // The token loss (the doubly stochastic term has a floor: 3 steps cannot visit 12 cells once each).
            let nll = |o: &Output| o.losses[0].1.to_scalar::<f32>();
            let (first, last) = (nll(&first)?, nll(&last)?);
            assert!(last < first * 0.1, "{looking:?}: {first} -> {last}");
            let out = model.forward(&batch, Mode::eval(), &mut r)?;
            let Scores::Steps(s) = &out.scores else { panic!("per-step scores") };
            assert_eq!(s.dims(), &[4, 3, 6]);
            assert_eq!(out.attention.is_some(), looking != Looking::None, "{looking:?}");
            let greedy = model.decode(&batch, Search::Greedy, 3, &mut r)?;
            assert_eq!(greedy.tokens, want, "{looking:?}");
            // A beam of width 1 is greedy decoding; a wider beam reads the batch too.
            assert_eq!(model.decode(&batch, Search::Beam { width: 1 }, 3, &mut r)?.tokens, greedy.tokens);
            assert_eq!(model.decode(&batch, Search::Beam { width: 3 }, 3, &mut r)?.tokens, want, "{looking:?}");
            match (looking, greedy.attention) {
                (Looking::None, a) => assert!(a.is_none()),
                (_, Some(AttentionMap::Steps { weights, .. })) => assert_eq!(weights.dims(), &[4, 3, 3, 4]),
                (_, other) => panic!("{looking:?}: {other:?}"),
            }
        }
        Ok(())
    }

    /// With `current`, where step t looks depends on the word it has just read; with `previous`
    /// (the paper) it cannot.
    #[test]
    fn the_current_query_looks_after_reading_the_word() -> Result<()> {
        let batch = halves()?;
        for (query, depends) in [(Query::Previous, false), (Query::Current, true)] {
            let (_vm, model) = tiny_asking(Looking::Soft, query)?;
            let w = model.lstm.weights()?;
            let s = model.start(&batch.images, false)?;
            let mut r = Seed(0).rng();
            let mut alpha = |word: u32| -> Result<Vec<f32>> {
                let prev = Tensor::full(word, 4, batch.images.device())?;
                let out = model.step(&w, &s, &prev, (Context::Expected, false), &mut r)?;
                out.alpha.ok_or_else(|| err("no alpha".into()))?.flatten_all()?.to_vec1::<f32>()
            };
            let (a, b) = (alpha(4)?, alpha(5)?);
            let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert_eq!(diff > 1e-6, depends, "{query:?}: {diff}");
        }
        Ok(())
    }

    /// With `feed_location`, where the last step looked reaches the next step's query (and so
    /// where it looks); without it the place is not read. The place fed is the attention's
    /// centre of mass over the cells' centres.
    #[test]
    fn the_fed_location_is_where_the_last_step_looked() -> Result<()> {
        let batch = halves()?;
        for fed in [false, true] {
            let cfg =
                ShowAttendTellConfig { query: Query::Current, feed_location: fed, ..ShowAttendTellConfig::tiny() };
            let (_vm, model) = tiny_with(cfg)?;
            let w = model.lstm.weights()?;
            let s = model.start(&batch.images, false)?;
            let prev = Tensor::full(4u32, 4, batch.images.device())?;
            let mut r = Seed(0).rng();
            let first = model.step(&w, &s, &prev, (Context::Expected, false), &mut r)?;
            let alpha = first.alpha.as_ref().ok_or_else(|| err("no alpha".into()))?;
            if fed {
                let xy = model.centres.as_ref().ok_or_else(|| err("no centres".into()))?;
                let want = alpha.matmul(&xy.squeeze(0)?)?;
                let diff = (&first.state.place - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-6, "{diff}");
            }
            let mut moved = ReadState { place: Tensor::full(0.5f32, (4, 2), batch.images.device())?, ..s };
            moved.place = moved.place.contiguous()?;
            let again = model.step(&w, &moved, &prev, (Context::Expected, false), &mut r)?;
            let a2 = again.alpha.ok_or_else(|| err("no alpha".into()))?;
            let diff = (alpha - a2)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff > 1e-6, fed, "fed {fed}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn hard_training_passes_carry_reinforce_or_the_expected_context() -> Result<()> {
        let (_, model) = tiny(Looking::Hard)?;
        let batch = halves()?;
        let mut r = Seed(2).rng();
        let mut seen = (0, 0);
        for _ in 0..20 {
            let names: Vec<String> =
                model.forward(&batch, Mode::train(0.0), &mut r)?.losses.into_iter().map(|l| l.0).collect();
            if names.contains(&"reinforce".to_string()) {
                assert!(names.contains(&"entropy".to_string()));
                seen.0 += 1;
            } else {
                assert_eq!(names, vec!["sequence".to_string()]);
                seen.1 += 1;
            }
        }
        assert!(seen.0 > 0 && seen.1 > 0, "about half the batches sample: {seen:?}");
        // Within the warm-up no batch samples.
        let cfg = ShowAttendTellConfig { expected_context_warmup: 0.5, ..model.cfg.clone() };
        let shape = DataShape::sequences((1, 12, 16), 6, 3);
        let warm = ShowAttendTell::new(&cfg, &shape, SeededVarMap::new(Seed(0)).builder(&Device::Cpu))?;
        for progress in [0.0, 0.2, 0.49] {
            for _ in 0..5 {
                let out = warm.forward(&batch, Mode::train(progress), &mut r)?;
                assert_eq!(out.losses.len(), 1, "at {progress}");
            }
        }
        // The soft model carries the doubly stochastic term, the reference none.
        let (_, soft) = tiny(Looking::Soft)?;
        let names: Vec<String> =
            soft.forward(&batch, Mode::train(0.0), &mut r)?.losses.into_iter().map(|l| l.0).collect();
        assert_eq!(names, vec!["sequence".to_string(), "doubly_stochastic".to_string()]);
        Ok(())
    }

    #[test]
    fn the_doubly_stochastic_term_and_its_gradient_on_a_hand_made_alpha() -> Result<()> {
        // One caption of 3 steps (the third is padding) over 2 cells.
        let a = Var::from_vec(vec![0.9f32, 0.1, 0.6, 0.4, 0.5, 0.5], (1, 3, 2), &Device::Cpu)?;
        let mask = Tensor::new(&[[1f32, 1.0, 0.0]], &Device::Cpu)?;
        let p = doubly_stochastic(a.as_tensor(), &mask)?;
        // cell 0 got 1.5 over the real steps, cell 1 got 0.5: (1 - 1.5)^2 + (1 - 0.5)^2 = 0.5
        assert!((p.to_scalar::<f32>()? - 0.5).abs() < 1e-6);
        // d/d alpha_ti = -2 (1 - sum_t alpha_ti) on real steps, 0 on padding
        let g = p.backward()?.get(&a).map(|g| g.flatten_all()).transpose()?.map(|g| g.to_vec1::<f32>()).transpose()?;
        let want = [1.0f32, -1.0, 1.0, -1.0, 0.0, 0.0];
        let g = g.unwrap_or_default();
        assert_eq!(g.len(), 6);
        for (x, y) in g.iter().zip(want) {
            assert!((x - y).abs() < 1e-5, "{g:?}");
        }
        Ok(())
    }

    #[test]
    fn the_hard_estimator_moves_alpha_toward_the_rewarded_cell() -> Result<()> {
        // alpha = softmax(logits) over 4 cells; a caption is rewarded 1 when its one step picked
        // cell 2. Plain gradient steps on the REINFORCE surrogate with a batch-mean baseline.
        let logits = Var::zeros((1, 4), candle_core::DType::F32, &Device::Cpu)?;
        let mut rng = Seed(5).rng();
        let mut opt = <candle_nn::optim::SGD as candle_nn::Optimizer>::new(vec![logits.clone()], 0.5)?;
        for _ in 0..60 {
            let alpha = candle_nn::ops::softmax(&logits.broadcast_as((32, 4))?, D::Minus1)?;
            let pick = sample::categorical_sample(&alpha.detach(), &mut rng)?;
            let log_pick = sample::categorical_log_prob(&alpha, &pick)?.unsqueeze(1)?;
            let reward: Vec<f32> = pick.to_vec1::<u32>()?.iter().map(|&p| f32::from(p == 2)).collect();
            let mean = f64::from(reward.iter().sum::<f32>() / 32.0);
            let reward = Tensor::from_vec(reward, 32, &Device::Cpu)?;
            candle_nn::Optimizer::backward_step(
                &mut opt,
                &reinforce(&log_pick, &reward, mean)?.affine(1.0 / 32.0, 0.0)?,
            )?;
        }
        let alpha = candle_nn::ops::softmax(logits.as_tensor(), D::Minus1)?.to_vec2::<f32>()?;
        assert!(alpha[0][2] > 0.9, "{alpha:?}");
        // The surrogate's value is 0; only its gradient counts.
        let lp = Tensor::new(&[[-1.0f32], [-2.0]], &Device::Cpu)?;
        assert_eq!(reinforce(&lp, &Tensor::new(&[3.0f32, 1.0], &Device::Cpu)?, 0.5)?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn class_targets_and_bad_settings_are_refused() -> Result<()> {
        let vm = SeededVarMap::new(Seed(0));
        let e = ShowAttendTell::new(
            &ShowAttendTellConfig::tiny(),
            &DataShape::images((1, 12, 16), 10),
            vm.builder(&Device::Cpu),
        );
        assert!(e.err().map(|e| e.to_string()).unwrap_or_default().contains("classes"));
        let shape = DataShape::sequences((1, 12, 16), 6, 3);
        for cfg in [
            ShowAttendTellConfig { expected_context_prob: 1.5, ..ShowAttendTellConfig::tiny() },
            ShowAttendTellConfig { doubly_stochastic: f32::NAN, ..ShowAttendTellConfig::tiny() },
        ] {
            let e = ShowAttendTell::new(&cfg, &shape, vm.builder(&Device::Cpu)).err().map(|e| e.to_string());
            assert!(e.is_some_and(|e| e.contains("expected_context_prob") || e.contains("doubly_stochastic")));
        }
        let fed = ShowAttendTellConfig { feed_context: true, ..ShowAttendTellConfig::tiny() };
        let e = ShowAttendTell::new(&fed, &shape, vm.builder(&Device::Cpu)).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("feed_context")), "feeding the context needs the current query");
        for cfg in [
            ShowAttendTellConfig { feed_location: true, ..ShowAttendTellConfig::tiny() },
            ShowAttendTellConfig {
                feed_location: true,
                query: Query::Current,
                attention: Looking::None,
                ..ShowAttendTellConfig::tiny()
            },
        ] {
            let e = ShowAttendTell::new(&cfg, &shape, vm.builder(&Device::Cpu)).err().map(|e| e.to_string());
            assert!(e.is_some_and(|e| e.contains("feed_location")), "{cfg:?}");
        }
        Ok(())
    }
}

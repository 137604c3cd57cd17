//! RAM, after "Recurrent Models of Visual Attention" (Mnih, Heess, Graves, Kavukcuoglu, 2014).
//!
//! At each of T steps a glimpse sensor ([`Retina`]: k concentric patches around l, each larger one
//! pooled to g x g) is read at the current location; a glimpse network mixes what it saw with where
//! (`g = ReLU(W [ReLU(W_g rho); ReLU(W_l l)])`); a recurrent core updates its state (ReLU RNN or
//! LSTM); a location network proposes the next location as a Gaussian with fixed sigma around
//! `tanh(W h.detach())`, sampled, detached and clamped to [-1, 1]; a learned baseline
//! `b_t = W h.detach()` predicts the reward. The last state classifies.
//!
//! Loss (the paper's hybrid loss, named terms):
//! - `classify`: cross-entropy of the last state's prediction;
//! - `baseline`: mean squared error of every b_t against the reward R (1 if right, else 0);
//! - `reinforce`: `lambda * mean_b sum_t -log pi(l_t) * (R - b_t).detach()`.
//!
//! Because the location and baseline networks read the *detached* state, the REINFORCE term trains
//! only the location network and the baseline term only the baseline; the glimpse network and core
//! learn from `classify` (the common public reimplementation's reading of the paper). With
//! `reinforce_into_core` both read the live state instead, so REINFORCE (through the location
//! mean) and the baseline's error also train the core and the glimpse network, as the paper's
//! hybrid loss and other public implementations have it. `mc_samples_train = M` runs M sampled
//! paths per training image (the batch tiled M times), averaging every term over the M paths:
//! the paper's M-sample estimator of the policy gradient.
//! The first glimpse is at the centre or uniformly random (`start`); the T - 1 later locations
//! are sampled from the policy.
//!
//! Options: a `random_glimpses` ablation (locations uniform in [-1, 1], no policy; the paper's
//! "random glimpses" rows); Monte-Carlo averaging of the class probabilities over
//! `mc_samples` sampled paths at evaluation; and `eval_path = "mean"`, which evaluates the one
//! deterministic path (every location at its distribution's mean: the first at the centre, the
//! later ones at the policy mean, no noise). Training always samples; `sigma_final` narrows the
//! policy over training (a half cosine from `sigma`), so that late training samples paths near the
//! one the mean evaluation reads.

use candle_core::{Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use gaze_attention::{Retina, RetinaConfig};
use gaze_tensor::glimpse::{GlimpseSpec, Integral};
use gaze_tensor::lstm::{LstmCell, LstmState, LstmWeights};
use gaze_tensor::ops::{linear, linear_relu, relu};
use gaze_tensor::sample::{gaussian_log_prob, gaussian_sample};
use gaze_tensor::seed::Rng;

use crate::model::{AttentionMap, Batch, DataShape, Decoded, Mode, Model, Output, Scores, Search, Targets};

/// The recurrent core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Core {
    /// `h_t = ReLU(W_g g_t + W_h h_{t-1} + b)` (the paper's MNIST core).
    Rnn,
    /// An LSTM (for harder tasks).
    Lstm,
    /// The ReLU RNN started at the identity, after "A Simple Way to Initialize Recurrent Networks
    /// of Rectified Linear Units" (Le, Jaitly, Hinton 2015):
    /// `h_t = ReLU(W_g g_t + (I + W_h) h_{t-1} + b)` with `W_h` starting at zero, so the recurrent
    /// matrix starts as the identity. Written as I plus a learned part, it trains exactly as an
    /// identity-initialised matrix under any optimiser without weight decay; with weight decay the
    /// matrix decays toward I, not 0.
    Irnn,
}

/// Where the first glimpse goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// The centre of the image.
    Centre,
    /// Uniformly at random in [-1, 1]^2 (the public reimplementation's choice).
    Random,
}

/// Which path evaluation (validation, test, `gaze eval`) reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalPath {
    /// A path sampled as in training (averaged over `mc_samples` paths when that is > 1).
    #[default]
    Sampled,
    /// The deterministic path: the first glimpse at the centre (the mean of either start), each
    /// later one at the policy mean.
    Mean,
}

/// Settings of [`Ram`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RamConfig {
    /// Glimpses per image, T.
    pub glimpses: usize,
    /// Patch side g in pixels.
    pub patch: usize,
    /// Scales k (concentric patches).
    pub scales: usize,
    /// Scale factor s between consecutive patches.
    pub factor: usize,
    /// Width of the "what" and "where" layers of the glimpse network (128).
    pub glimpse_hidden: usize,
    /// Width of the glimpse vector g (256).
    pub glimpse_out: usize,
    /// Core state width (256).
    pub hidden: usize,
    /// The recurrent core.
    pub core: Core,
    /// Standard deviation of the location policy, in [-1, 1] units (at the start of training, when
    /// `sigma_final` is set).
    pub sigma: f64,
    /// When set, the policy's standard deviation moves from `sigma` at the first training step to
    /// this value at the last, along a half cosine (as the cosine learning-rate schedule): wide
    /// exploration while the policy is found, then paths close to the deterministic one that
    /// `eval_path = "mean"` reads. None: `sigma` throughout.
    pub sigma_final: Option<f64>,
    /// Where the first glimpse goes.
    pub start: Start,
    /// Hidden ReLU layer of the location network (0: the paper's single linear map; 128 by
    /// default, as every RAM experiment here sets it).
    pub locator_hidden: usize,
    /// Weight lambda of the REINFORCE term. Without `reinforce_into_core` the term reaches only
    /// the location network's parameters, so under Adam(W) without global gradient clipping
    /// lambda barely matters (Adam divides each parameter's gradient by its own running scale);
    /// it matters with SGD, with `clip_norm`, and with `reinforce_into_core`, where the term
    /// shares the core's parameters with the classification loss.
    pub reinforce_weight: f64,
    /// Let the location and baseline networks read the live core state (not a detached copy):
    /// REINFORCE and the baseline's error then train the core and glimpse network too.
    pub reinforce_into_core: bool,
    /// Sampled paths per training image, M (the batch is tiled M times; every loss term is the
    /// mean over the M paths). Evaluation is not affected (see `mc_samples`). A step costs about
    /// M times as much; training speed is still counted in images.
    pub mc_samples_train: usize,
    /// Sampled paths averaged at evaluation (1: a single sampled path).
    pub mc_samples: usize,
    /// Ablation: glimpse at uniformly random locations; no location policy is trained.
    pub random_glimpses: bool,
    /// The path evaluation reads (training always samples).
    pub eval_path: EvalPath,
}

impl Default for RamConfig {
    /// The 28x28 MNIST setting: 6 glimpses of one 8x8 patch, ReLU RNN of 256, sigma 0.05,
    /// lambda 0.01.
    fn default() -> Self {
        Self {
            glimpses: 6,
            patch: 8,
            scales: 1,
            factor: 2,
            glimpse_hidden: 128,
            glimpse_out: 256,
            hidden: 256,
            core: Core::Rnn,
            sigma: 0.05,
            sigma_final: None,
            start: Start::Centre,
            locator_hidden: 128,
            reinforce_weight: 0.01,
            reinforce_into_core: false,
            mc_samples_train: 1,
            mc_samples: 1,
            random_glimpses: false,
            eval_path: EvalPath::Sampled,
        }
    }
}

impl RamConfig {
    /// A tiny model for tests (8x8 images: two 2x2 scales).
    pub fn tiny() -> Self {
        Self {
            glimpses: 3,
            patch: 2,
            scales: 2,
            factor: 2,
            glimpse_hidden: 8,
            glimpse_out: 12,
            hidden: 16,
            locator_hidden: 0,
            ..Self::default()
        }
    }

    fn retina(&self) -> RetinaConfig {
        RetinaConfig { patch: self.patch, scales: self.scales, factor: self.factor }
    }

    /// Side in pixels of each scale's patch: g, s*g, s^2*g, ...
    pub fn sizes(&self) -> Vec<usize> {
        (0..self.scales).map(|i| self.patch * self.factor.pow(i as u32)).collect()
    }
}

#[derive(Debug, Clone)]
enum CoreNet {
    /// `identity`: the recurrent matrix is I + `recurrent` (IRNN).
    Rnn {
        input: Linear,
        recurrent: Linear,
        identity: bool,
    },
    Lstm(LstmCell),
}

/// The core's parameters as one pass through the glimpses steps them (the LSTM's weights laid
/// out once per pass, see [`gaze_tensor::lstm`]).
enum CoreWeights<'a> {
    Rnn { input: &'a Linear, recurrent: &'a Linear, identity: bool },
    Lstm(LstmWeights),
}

#[derive(Debug, Clone)]
enum CoreState {
    Rnn(Tensor),
    Lstm(LstmState),
}

impl CoreState {
    fn h(&self) -> &Tensor {
        match self {
            CoreState::Rnn(h) => h,
            CoreState::Lstm(s) => &s.h,
        }
    }
}

/// One sampled path through an image batch.
struct Path {
    logits: Tensor,
    /// log pi(l_t) of each sampled location, (b, T - 1); None for random glimpses or T = 1.
    log_pi: Option<Tensor>,
    /// b_t for each sampled location, (b, T - 1).
    baselines: Option<Tensor>,
    /// Glimpse centres, (b, T, 2).
    locations: Tensor,
}

/// The model.
#[derive(Debug, Clone)]
pub struct Ram {
    cfg: RamConfig,
    retina: Retina,
    what: Linear,
    where_: Linear,
    mix: Linear,
    core: CoreNet,
    locator_hidden: Option<Linear>,
    locator: Linear,
    baseline: Linear,
    classifier: Linear,
    /// Labels per image: 1 for class targets, the longest sequence for sequence targets (a
    /// label after every `glimpses` glimpses, the state carried on).
    labels: usize,
}

impl Ram {
    /// Builds the model for (channels, height, width) images. Errors name the impossible setting
    /// (a glimpse larger than the canvas, zero glimpses, a non-positive sigma).
    pub fn new(cfg: &RamConfig, shape: &DataShape, vb: VarBuilder) -> Result<Self> {
        let (input, classes) = (shape.input, shape.classes);
        let msg = |m: String| candle_core::Error::Msg(format!("ram: {m}"));
        GlimpseSpec { patch: cfg.patch, scales: cfg.scales, factor: cfg.factor }
            .check(input.1, input.2)
            .map_err(|e| msg(e.to_string()))?;
        if cfg.glimpses == 0 || cfg.glimpse_hidden == 0 || cfg.glimpse_out == 0 || cfg.hidden == 0 {
            return Err(msg("glimpses, glimpse_hidden, glimpse_out and hidden must all be >= 1".into()));
        }
        if cfg.sigma.is_nan() || cfg.sigma <= 0.0 {
            return Err(msg(format!("sigma = {} must be positive", cfg.sigma)));
        }
        if let Some(f) = cfg.sigma_final.filter(|f| f.is_nan() || *f <= 0.0) {
            return Err(msg(format!("sigma_final = {f} must be positive")));
        }
        if cfg.mc_samples == 0 || cfg.mc_samples_train == 0 {
            return Err(msg(format!(
                "mc_samples = {} and mc_samples_train = {} must be >= 1",
                cfg.mc_samples, cfg.mc_samples_train
            )));
        }
        if cfg.eval_path == EvalPath::Mean && (cfg.mc_samples > 1 || cfg.random_glimpses) {
            return Err(msg(format!(
                "eval_path = \"mean\" is one deterministic path: it cannot be averaged over mc_samples = {} \
                 or combined with random_glimpses = {}",
                cfg.mc_samples, cfg.random_glimpses
            )));
        }
        if !cfg.reinforce_weight.is_finite() || cfg.reinforce_weight < 0.0 {
            return Err(msg(format!("reinforce_weight = {} must be finite and >= 0", cfg.reinforce_weight)));
        }
        let rcfg = cfg.retina();
        let (gh, go, hd) = (cfg.glimpse_hidden, cfg.glimpse_out, cfg.hidden);
        let core = match cfg.core {
            Core::Rnn => CoreNet::Rnn {
                input: candle_nn::linear(go, hd, vb.pp("core.input"))?,
                recurrent: candle_nn::linear_no_bias(hd, hd, vb.pp("core.recurrent"))?,
                identity: false,
            },
            Core::Irnn => CoreNet::Rnn {
                input: candle_nn::linear(go, hd, vb.pp("core.input"))?,
                recurrent: Linear::new(
                    vb.pp("core.recurrent").get_with_hints((hd, hd), "weight", candle_nn::Init::Const(0.0))?,
                    None,
                ),
                identity: true,
            },
            // The parameters of `candle_nn::lstm` (names, shapes, initialisation), stepped more cheaply.
            Core::Lstm => CoreNet::Lstm(LstmCell::new(go, hd, vb.pp("core.lstm"))?),
        };
        Ok(Self {
            cfg: cfg.clone(),
            retina: Retina::new(&rcfg),
            what: candle_nn::linear(rcfg.output_len(input.0), gh, vb.pp("glimpse.what"))?,
            where_: candle_nn::linear(2, gh, vb.pp("glimpse.where"))?,
            mix: candle_nn::linear(2 * gh, go, vb.pp("glimpse.mix"))?,
            core,
            locator_hidden: match cfg.locator_hidden {
                0 => None,
                n => Some(candle_nn::linear(hd, n, vb.pp("locator.hidden"))?),
            },
            locator: candle_nn::linear(
                if cfg.locator_hidden > 0 { cfg.locator_hidden } else { hd },
                2,
                vb.pp("locator"),
            )?,
            baseline: candle_nn::linear(hd, 1, vb.pp("baseline"))?,
            classifier: candle_nn::linear(hd, classes, vb.pp("classifier"))?,
            labels: shape.max_steps.max(1),
        })
    }

    /// The location policy's standard deviation at training progress `p` in [0, 1]: `sigma`, or
    /// the half-cosine from `sigma` to `sigma_final`.
    pub fn sigma_at(&self, p: f64) -> f64 {
        match self.cfg.sigma_final {
            None => self.cfg.sigma,
            Some(end) => gaze_tensor::ops::half_cosine(self.cfg.sigma, end, p),
        }
    }

    /// The glimpse vector g for images at locations l. Shapes: (b, c, h, w), (b, 2) -> (b, glimpse_out).
    pub fn glimpse(&self, images: &Tensor, locs: &Tensor) -> Result<Tensor> {
        self.glimpse_from(images, None, locs)
    }

    /// [`Ram::glimpse`], read from the images' summed-area table when given (built once for every
    /// step of a path: cheaper with several scales).
    fn glimpse_from(&self, images: &Tensor, table: Option<&Integral>, locs: &Tensor) -> Result<Tensor> {
        let seen = match table {
            Some(t) => self.retina.forward_integral(t, locs)?,
            None => self.retina.forward(images, locs)?,
        };
        let what = linear_relu(&self.what, &seen)?;
        let where_ = linear_relu(&self.where_, locs)?;
        linear_relu(&self.mix, &Tensor::cat(&[what, where_], 1)?)
    }

    fn core_weights(&self) -> Result<CoreWeights<'_>> {
        Ok(match &self.core {
            CoreNet::Rnn { input, recurrent, identity } => CoreWeights::Rnn { input, recurrent, identity: *identity },
            CoreNet::Lstm(cell) => CoreWeights::Lstm(cell.weights()?),
        })
    }

    fn step_with(&self, w: &CoreWeights, g: &Tensor, state: Option<&CoreState>) -> Result<CoreState> {
        match (w, state) {
            (CoreWeights::Rnn { input, .. }, None) => Ok(CoreState::Rnn(linear_relu(input, g)?)),
            (CoreWeights::Rnn { input, recurrent, identity }, Some(s)) => {
                let mut pre = (linear(input, g)? + linear(recurrent, s.h())?)?;
                if *identity {
                    pre = (pre + s.h())?;
                }
                Ok(CoreState::Rnn(relu(&pre)?))
            }
            (CoreWeights::Lstm(l), None) => Ok(CoreState::Lstm(l.step(g, None)?)),
            (CoreWeights::Lstm(l), Some(CoreState::Lstm(s))) => Ok(CoreState::Lstm(l.step(g, Some(s))?)),
            (CoreWeights::Lstm(_), Some(CoreState::Rnn(_))) => {
                Err(candle_core::Error::Msg("ram: LSTM core given an RNN state".into()))
            }
        }
    }

    /// One core step with the weights laid out for this call alone (tests).
    #[cfg(test)]
    fn step(&self, g: &Tensor, state: Option<&CoreState>) -> Result<CoreState> {
        self.step_with(&self.core_weights()?, g, state)
    }

    /// The state the location and baseline networks read: detached, or live with
    /// `reinforce_into_core`.
    fn policy_input(&self, h: &Tensor) -> Tensor {
        if self.cfg.reinforce_into_core {
            h.clone()
        } else {
            h.detach()
        }
    }

    /// The mean of the location policy for a state: tanh(W h.detach()) (with the optional hidden
    /// layer: tanh(W ReLU(V h.detach()))), (b, hidden) -> (b, 2); h live with
    /// `reinforce_into_core`.
    pub fn location_mean(&self, h: &Tensor) -> Result<Tensor> {
        let h = self.policy_input(h);
        match &self.locator_hidden {
            Some(l) => linear(&self.locator, &linear_relu(l, &h)?)?.tanh(),
            None => linear(&self.locator, &h)?.tanh(),
        }
    }

    /// One path through the batch: sampled, or (`mean`) every location at its distribution's mean.
    /// With `groups` > 1, a label after every `glimpses` glimpses (logits (b, groups, classes)).
    fn path(&self, images: &Tensor, mean_path: bool, sigma: f64, groups: usize, rng: &mut Rng) -> Result<Path> {
        let (b, dev) = (images.dim(0)?, images.device());
        let uniform = |rng: &mut Rng| -> Result<Tensor> {
            let xy: Vec<f32> = (0..b * 2).map(|_| rng.random_range(-1.0f32..=1.0)).collect();
            Tensor::from_vec(xy, (b, 2), dev)
        };
        let mut loc = match self.cfg.start {
            Start::Random if !mean_path => uniform(rng)?,
            _ => Tensor::zeros((b, 2), images.dtype(), dev)?,
        };
        let mut state: Option<CoreState> = None;
        let core = self.core_weights()?;
        let table = (self.cfg.scales > 1).then(|| Integral::new(images)).transpose()?;
        let (mut log_pi, mut baselines, mut locations, mut logits) = (vec![], vec![], vec![], vec![]);
        let total = self.cfg.glimpses * groups;
        for t in 0..total {
            locations.push(loc.clone());
            let g = self.glimpse_from(images, table.as_ref(), &loc)?;
            let s = self.step_with(&core, &g, state.as_ref())?;
            if (t + 1) % self.cfg.glimpses == 0 {
                logits.push(linear(&self.classifier, s.h())?);
            }
            if t + 1 < total {
                let h = s.h();
                loc = if self.cfg.random_glimpses {
                    uniform(rng)?
                } else {
                    let mean = self.location_mean(h)?;
                    let sample = if mean_path { mean.detach() } else { gaussian_sample(&mean, sigma, rng)? };
                    log_pi.push(gaussian_log_prob(&mean, sigma, &sample)?);
                    baselines.push(linear(&self.baseline, &self.policy_input(h))?.squeeze(1)?);
                    sample.clamp(-1f32, 1f32)?
                };
            }
            state = Some(s);
        }
        let stack = |v: &[Tensor]| if v.is_empty() { Ok(None) } else { Tensor::stack(v, 1).map(Some) };
        Ok(Path {
            logits: match logits.len() {
                1 => logits.remove(0),
                0 => return Err(candle_core::Error::Msg("ram: no glimpses".into())),
                _ => Tensor::stack(&logits, 1)?,
            },
            log_pi: stack(&log_pi)?,
            baselines: stack(&baselines)?,
            locations: Tensor::stack(&locations, 1)?,
        })
    }
}

impl Ram {
    /// Label log-probabilities: one path's (training, or a single evaluation path), or the log
    /// of the mean probability over `mc_samples` sampled paths; with the first path.
    fn evaluated(&self, images: &Tensor, mode: Mode, groups: usize, rng: &mut Rng) -> Result<(Tensor, Path)> {
        let sigma = self.sigma_at(mode.progress);
        let mean_path = !mode.train && self.cfg.eval_path == EvalPath::Mean;
        let path = self.path(images, mean_path, sigma, groups, rng)?;
        if mode.train || self.cfg.mc_samples == 1 {
            return Ok((path.logits.clone(), path));
        }
        let mut probs = candle_nn::ops::softmax(&path.logits, D::Minus1)?;
        for _ in 1..self.cfg.mc_samples {
            probs =
                (probs + candle_nn::ops::softmax(&self.path(images, false, sigma, groups, rng)?.logits, D::Minus1)?)?;
        }
        Ok(((probs / self.cfg.mc_samples as f64)?.clamp(1e-30, 1.0)?.log()?, path))
    }

    fn glimpse_map(&self, path: &Path, mean_path: bool, groups: usize) -> Result<AttentionMap> {
        let locs = path.locations.to_vec3::<f32>()?;
        let centres = locs.iter().map(|steps| steps.iter().map(|xy| (xy[0], xy[1])).collect()).collect();
        let title = match (self.cfg.random_glimpses, mean_path) {
            (true, _) => "random glimpses",
            (false, true) => "glimpse path (policy means)",
            (false, false) => "glimpse path",
        };
        Ok(AttentionMap::Glimpses {
            centres,
            sizes: self.cfg.sizes(),
            per_object: if groups > 1 { self.cfg.glimpses } else { 0 },
            fixed: 1,
            title: title.into(),
        })
    }
}

impl Model for Ram {
    /// Shapes: images (b, c, h, w) -> logits (b, classes), or for sequence targets (b, labels,
    /// vocab) with a label after every `glimpses` glimpses; losses `classify`, `baseline`,
    /// `reinforce` (for sequences each location's return is the labels right from its own on);
    /// glimpse centres per step; statistics `reward` (labels right per image), `baseline` (mean
    /// b_t) and `sigma` (the policy's standard deviation at this point of training).
    /// With `mc_samples_train = M > 1` in training, the batch is tiled M times: the losses and
    /// statistics are means over all M paths, the scores and glimpses those of the first.
    fn forward(&self, batch: &Batch, mode: Mode, rng: &mut Rng) -> Result<Output> {
        let m = if mode.train { self.cfg.mc_samples_train } else { 1 };
        if m == 1 {
            return self.forward_paths(batch, mode, rng);
        }
        let b = batch.images.dim(0)?;
        let mut out = self.forward_paths(&tiled(batch, m)?, mode, rng)?;
        out.scores = match out.scores {
            Scores::Classes(t) => Scores::Classes(t.narrow(0, 0, b)?),
            Scores::Steps(t) => Scores::Steps(t.narrow(0, 0, b)?),
        };
        if let Some(AttentionMap::Glimpses { centres, .. }) = &mut out.attention {
            centres.truncate(b);
        }
        Ok(out)
    }

    /// For sequence targets: the labels of each image up to the first `EOS` (the search is
    /// irrelevant: labels do not feed back).
    fn decode(&self, batch: &Batch, _search: Search, max_steps: usize, rng: &mut Rng) -> Result<Decoded> {
        if self.labels < 2 {
            return Err(candle_core::Error::Msg("ram: this model was built for class targets".into()));
        }
        let (logits, path) = self.evaluated(&batch.images, Mode::eval(), self.labels, rng)?;
        let best = logits.argmax(D::Minus1)?.to_vec2::<u32>()?;
        let tokens = best
            .into_iter()
            .map(|row| row.into_iter().take(max_steps).take_while(|&t| t != crate::model::tokens::EOS).collect())
            .collect();
        let mean_path = self.cfg.eval_path == EvalPath::Mean;
        Ok(Decoded { tokens, attention: Some(self.glimpse_map(&path, mean_path, self.labels)?) })
    }
}

/// The batch repeated `m` times along its first axis (copy k is rows k*b..(k+1)*b).
fn tiled(batch: &Batch, m: usize) -> Result<Batch> {
    let rep = |t: &Tensor| Tensor::cat(&vec![t.clone(); m], 0);
    let targets = match &batch.targets {
        Targets::Classes(t) => Targets::Classes(rep(t)?),
        Targets::Sequences { tokens, lengths } => Targets::Sequences { tokens: rep(tokens)?, lengths: rep(lengths)? },
        Targets::Answers(_) => return Err(candle_core::Error::Msg("ram: questions are not RAM's task".into())),
    };
    Ok(Batch { images: rep(&batch.images)?, targets, questions: None })
}

impl Ram {
    /// [`Model::forward`] for one path per image of `batch`.
    fn forward_paths(&self, batch: &Batch, mode: Mode, rng: &mut Rng) -> Result<Output> {
        let sigma = self.sigma_at(mode.progress);
        let mean_path = !mode.train && self.cfg.eval_path == EvalPath::Mean;
        let (logits, classify, rewards, groups) = match &batch.targets {
            Targets::Sequences { tokens, lengths } => {
                let t = tokens.dim(1)?;
                if t > self.labels {
                    return Err(candle_core::Error::Msg(format!(
                        "ram: targets of {t} tokens, the model was built for {} labels",
                        self.labels
                    )));
                }
                let (logits, path) = self.evaluated(&batch.images, mode, self.labels, rng)?;
                let logits = if logits.rank() == 2 { logits.unsqueeze(1)? } else { logits }.narrow(1, 0, t)?;
                let mask = crate::show_attend_tell::token_mask(lengths, t)?;
                let right = (logits.argmax(D::Minus1)?.eq(tokens)?.to_dtype(logits.dtype())? * mask)?;
                let classify = crate::show_attend_tell::sequence_loss(&logits, tokens, lengths)?;
                (Scores::Steps(logits), classify, (right, path), t)
            }
            other => {
                let targets = other.classes("ram")?;
                let (logits, path) = self.evaluated(&batch.images, mode, 1, rng)?;
                let classify = candle_nn::loss::cross_entropy(&logits, targets)?;
                let right = logits.argmax(D::Minus1)?.eq(targets)?.to_dtype(logits.dtype())?.unsqueeze(1)?;
                (Scores::Classes(logits), classify, (right, path), 1)
            }
        };
        let (rewards, path) = rewards;
        let mut losses = vec![("classify".to_string(), classify)];
        let mut stats = vec![("reward".to_string(), rewards.sum(1)?.mean_all()?)];
        if let (Some(log_pi), Some(baselines)) = (&path.log_pi, &path.baselines) {
            // Location j is glimpse j + 1's: the first group has T - 1 sampled locations.
            let labels = rewards.dim(1)?;
            let mut sizes = vec![self.cfg.glimpses; labels];
            sizes[0] -= 1;
            let (b, n) = baselines.dims2()?;
            let mut r = crate::dram::returns(&rewards, &sizes)?;
            let have = r.dim(1)?;
            if have < n {
                // Sequences shorter than the model's labels: later locations earn nothing more.
                r = Tensor::cat(&[r, Tensor::zeros((b, n - have), baselines.dtype(), baselines.device())?], 1)?;
            }
            losses.push(("baseline".into(), (baselines - &r)?.sqr()?.mean_all()?));
            let advantage = (r - baselines)?.detach();
            let reinforce = (log_pi * advantage)?.sum(1)?.mean_all()?.neg()?;
            losses.push(("reinforce".into(), (reinforce * self.cfg.reinforce_weight)?));
            stats.push(("baseline".into(), baselines.mean_all()?));
            stats.push(("sigma".into(), Tensor::new(sigma as f32, baselines.device())?));
        }
        Ok(Output {
            scores: logits,
            losses,
            attention: Some(self.glimpse_map(&path, mean_path, if groups > 1 { self.labels } else { 1 })?),
            stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::fit_fixed_batch;
    use candle_core::{Device, Var};
    use gaze_tensor::{Seed, SeededVarMap};

    fn batch(dev: &Device, n: usize) -> Result<Batch> {
        let mut r = Seed(1).rng();
        let imgs: Vec<f32> = (0..n * 64).map(|_| r.random::<f32>()).collect();
        Ok(Batch {
            questions: None,
            images: Tensor::from_vec(imgs, (n, 1, 8, 8), dev)?,
            targets: Targets::Classes(Tensor::from_vec((0..n).map(|i| (i % 3) as u32).collect::<Vec<_>>(), n, dev)?),
        })
    }

    fn shape() -> DataShape {
        DataShape::images((1, 8, 8), 3)
    }

    fn loss_of(out: &Output, name: &str) -> Tensor {
        out.losses.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone()).expect(name)
    }

    #[test]
    fn tiny_loss_falls_on_a_fixed_batch() -> Result<()> {
        let dev = Device::Cpu;
        for core in [Core::Rnn, Core::Lstm, Core::Irnn] {
            let vm = SeededVarMap::new(Seed(0));
            let model = Ram::new(&RamConfig { core, ..RamConfig::tiny() }, &shape(), vm.builder(&dev))?;
            let (out, last) =
                fit_fixed_batch(&model, &vm, &batch(&dev, 12)?, 50, 2e-2, Mode::train(0.0), &mut Seed(2).rng())?;
            let names: Vec<_> = out.losses.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["classify", "baseline", "reinforce"]);
            let first = loss_of(&out, "classify").to_scalar::<f32>()?;
            let last = loss_of(&last, "classify").to_scalar::<f32>()?;
            assert!(last < 0.5 * first, "{core:?}: {first} -> {last}");
        }
        Ok(())
    }

    #[test]
    fn gradients_flow_only_where_the_paper_says() -> Result<()> {
        let dev = Device::Cpu;
        let vm = SeededVarMap::new(Seed(3));
        let model = Ram::new(&RamConfig::tiny(), &shape(), vm.builder(&dev))?;
        let out = model.forward(&batch(&dev, 6)?, Mode::train(0.0), &mut Seed(4).rng())?;
        let touched = |loss: &Tensor| crate::test_util::touched(&vm, loss);
        let reinforce = touched(&loss_of(&out, "reinforce"))?;
        assert!(!reinforce.is_empty() && reinforce.iter().all(|n| n.starts_with("locator.")), "{reinforce:?}");
        let baseline = touched(&loss_of(&out, "baseline"))?;
        assert!(!baseline.is_empty() && baseline.iter().all(|n| n.starts_with("baseline.")), "{baseline:?}");
        let classify = touched(&loss_of(&out, "classify"))?;
        for must in ["glimpse.what.weight", "glimpse.where.weight", "core.input.weight", "classifier.weight"] {
            assert!(classify.contains(&must.to_string()), "classify misses {must}: {classify:?}");
        }
        assert!(classify.iter().all(|n| !n.starts_with("locator.") && !n.starts_with("baseline.")), "{classify:?}");
        Ok(())
    }

    /// With `reinforce_into_core` the policy and baseline read the live state: their terms reach
    /// the core and the glimpse network (and still not the classifier).
    #[test]
    fn reinforce_into_core_trains_the_core() -> Result<()> {
        let dev = Device::Cpu;
        for core in [Core::Rnn, Core::Lstm] {
            let vm = SeededVarMap::new(Seed(3));
            let cfg = RamConfig { core, reinforce_into_core: true, ..RamConfig::tiny() };
            let model = Ram::new(&cfg, &shape(), vm.builder(&dev))?;
            let out = model.forward(&batch(&dev, 6)?, Mode::train(0.0), &mut Seed(4).rng())?;
            let touched = |loss: &Tensor| crate::test_util::touched(&vm, loss);
            for term in ["reinforce", "baseline"] {
                let names = touched(&loss_of(&out, term))?;
                let own = if term == "reinforce" { "locator." } else { "baseline." };
                for must in [own, "core.", "glimpse.what.", "glimpse.where."] {
                    assert!(names.iter().any(|n| n.starts_with(must)), "{core:?} {term} misses {must}: {names:?}");
                }
                assert!(names.iter().all(|n| !n.starts_with("classifier.")), "{names:?}");
            }
        }
        Ok(())
    }

    /// M paths per training image: the same losses as a batch holding M copies of every image
    /// (the estimator averaged over the M paths), the scores and glimpses of the first copy, and
    /// the copies' paths differ. Evaluation reads one path.
    #[test]
    fn mc_samples_train_tiles_the_batch_and_averages() -> Result<()> {
        let dev = Device::Cpu;
        let vm = SeededVarMap::new(Seed(3));
        let cfg = RamConfig { sigma: 0.3, ..RamConfig::tiny() };
        let one = Ram::new(&cfg, &shape(), vm.builder(&dev))?;
        let three = Ram::new(&RamConfig { mc_samples_train: 3, ..cfg }, &shape(), vm.builder(&dev))?;
        let b = batch(&dev, 4)?;
        let by_hand = tiled(&b, 3)?;
        assert_eq!(by_hand.images.dims(), [12, 1, 8, 8]);
        let got = three.forward(&b, Mode::train(0.0), &mut Seed(4).rng())?;
        let want = one.forward(&by_hand, Mode::train(0.0), &mut Seed(4).rng())?;
        for term in ["classify", "baseline", "reinforce"] {
            let (g, w) = (loss_of(&got, term).to_scalar::<f32>()?, loss_of(&want, term).to_scalar::<f32>()?);
            assert_eq!(g, w, "{term}");
        }
        assert_eq!(got.scores.tensor().dims(), [4, 3]);
        let first = want.scores.tensor().narrow(0, 0, 4)?.to_vec2::<f32>()?;
        assert_eq!(got.scores.tensor().to_vec2::<f32>()?, first);
        let (Some(AttentionMap::Glimpses { centres: g, .. }), Some(AttentionMap::Glimpses { centres: w, .. })) =
            (&got.attention, &want.attention)
        else {
            panic!("glimpses")
        };
        assert_eq!((g.len(), &g[..], w.len()), (4, &w[..4], 12));
        assert_ne!(w[0][1], w[4][1], "the copies of an image sample their own paths");
        let eval = three.forward(&b, Mode::eval(), &mut Seed(4).rng())?;
        assert_eq!(eval.scores.tensor().dims(), [4, 3]);
        let e = Ram::new(&RamConfig { mc_samples_train: 0, ..RamConfig::tiny() }, &shape(), vm.builder(&dev))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("mc_samples_train = 0"), "{e}");
        Ok(())
    }

    /// IRNN: the recurrent matrix starts as the identity, h_1 = ReLU(W_g g + b + h_0).
    #[test]
    fn irnn_starts_at_the_identity() -> Result<()> {
        let dev = Device::Cpu;
        let vm = SeededVarMap::new(Seed(3));
        let model = Ram::new(&RamConfig { core: Core::Irnn, ..RamConfig::tiny() }, &shape(), vm.builder(&dev))?;
        let b = batch(&dev, 4)?;
        let g0 = model.glimpse(&b.images, &Tensor::zeros((4, 2), candle_core::DType::F32, &dev)?)?;
        let h0 = model.step(&g0, None)?;
        let g1 = model.glimpse(&b.images, &Tensor::full(0.5f32, (4, 2), &dev)?)?;
        let h1 = model.step(&g1, Some(&h0))?.h().to_vec2::<f32>()?;
        let CoreNet::Rnn { input, .. } = &model.core else { panic!("rnn") };
        let want = relu(&(linear(input, &g1)? + h0.h())?)?.to_vec2::<f32>()?;
        for (a, w) in h1.iter().flatten().zip(want.iter().flatten()) {
            assert!((a - w).abs() < 1e-6, "{a} vs {w}");
        }
        let w = vm.sorted_vars().into_iter().find(|(n, _)| n == "core.recurrent.weight").map(|(_, v)| v);
        assert_eq!(w.map(|v| v.as_tensor().abs()?.sum_all()?.to_scalar::<f32>()).transpose()?, Some(0.0));
        Ok(())
    }

    /// REINFORCE alone, classifier frozen: the reward is 1 when the second glimpse lands in the
    /// right half; the location mean must move right.
    #[test]
    fn reinforce_moves_the_location_mean_toward_reward() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = RamConfig { glimpses: 2, sigma: 0.3, reinforce_weight: 1.0, ..RamConfig::tiny() };
        let vm = SeededVarMap::new(Seed(5));
        let model = Ram::new(&cfg, &shape(), vm.builder(&dev))?;
        let b = batch(&dev, 64)?;
        let locator: Vec<Var> =
            vm.sorted_vars().into_iter().filter(|(n, _)| n.starts_with("locator.")).map(|(_, v)| v).collect();
        assert_eq!(locator.len(), 2);
        let mut opt = <candle_nn::optim::SGD as candle_nn::Optimizer>::new(locator, 0.5)?;
        let mean_x = |rng: &mut Rng| -> Result<f32> {
            let p = model.path(&b.images, false, model.sigma_at(0.0), 1, rng)?;
            let h0 = model.step(&model.glimpse(&b.images, &p.locations.narrow(1, 0, 1)?.squeeze(1)?)?, None)?;
            model.location_mean(h0.h())?.narrow(1, 0, 1)?.mean_all()?.to_scalar::<f32>()
        };
        let mut rng = Seed(6).rng();
        let before = mean_x(&mut rng)?;
        for _ in 0..60 {
            let p = model.path(&b.images, false, model.sigma_at(0.0), 1, &mut rng)?;
            let (Some(log_pi), Some(_)) = (&p.log_pi, &p.baselines) else { panic!("sampled path") };
            // toy reward from where the second glimpse went, fixed baseline 0.5
            let x = p.locations.narrow(1, 1, 1)?.squeeze(1)?.narrow(1, 0, 1)?.squeeze(1)?;
            let reward = x.ge(0f32)?.to_dtype(candle_core::DType::F32)?;
            let adv = (reward - 0.5)?.unsqueeze(1)?;
            let loss = (log_pi * adv)?.sum(1)?.mean_all()?.neg()?;
            candle_nn::Optimizer::backward_step(&mut opt, &loss)?;
        }
        let after = mean_x(&mut rng)?;
        assert!(after > before + 0.3 && after > 0.3, "mean x {before} -> {after}");
        Ok(())
    }

    #[test]
    fn same_seed_same_path_and_impossible_settings_are_named() -> Result<()> {
        let dev = Device::Cpu;
        let run = || -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
            let vm = SeededVarMap::new(Seed(7));
            let model = Ram::new(&RamConfig { mc_samples: 3, ..RamConfig::tiny() }, &shape(), vm.builder(&dev))?;
            let out = model.forward(&batch(&dev, 4)?, Mode::eval(), &mut Seed(8).rng())?;
            let Some(AttentionMap::Glimpses { centres, sizes, .. }) = &out.attention else { panic!("glimpses") };
            assert_eq!(sizes, &[2, 4]);
            assert_eq!(centres[0][0], (0.0, 0.0), "first glimpse at the centre");
            let c = centres.iter().map(|s| s.iter().flat_map(|&(x, y)| [x, y]).collect()).collect();
            Ok((out.scores.tensor().flatten_all()?.to_vec1::<f32>()?, c))
        };
        assert_eq!(run()?, run()?);
        let vb = || SeededVarMap::new(Seed(0)).builder(&dev);
        let big = RamConfig { patch: 6, scales: 2, ..RamConfig::tiny() };
        let e = Ram::new(&big, &shape(), vb()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("larger than the 8x8 canvas"), "{e}");
        let e = Ram::new(&RamConfig { sigma: 0.0, ..RamConfig::tiny() }, &shape(), vb())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("sigma"), "{e}");
        Ok(())
    }

    #[test]
    fn mean_path_evaluation_ignores_the_rng_and_training_still_samples() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = RamConfig { eval_path: EvalPath::Mean, start: Start::Random, sigma: 0.3, ..RamConfig::tiny() };
        let vm = SeededVarMap::new(Seed(5));
        let model = Ram::new(&cfg, &shape(), vm.builder(&dev))?;
        let b = batch(&dev, 4)?;
        let centres = |train: bool, seed: u64| -> Result<Vec<Vec<(f32, f32)>>> {
            match model
                .forward(&b, if train { Mode::train(0.0) } else { Mode::eval() }, &mut Seed(seed).rng())?
                .attention
            {
                Some(AttentionMap::Glimpses { centres, .. }) => Ok(centres),
                _ => Err(candle_core::Error::Msg("no glimpses".into())),
            }
        };
        let eval = centres(false, 1)?;
        let title = match model.forward(&b, Mode::eval(), &mut Seed(1).rng())?.attention {
            Some(AttentionMap::Glimpses { title, .. }) => title,
            _ => String::new(),
        };
        assert_eq!(title, "glimpse path (policy means)");
        assert_eq!(eval, centres(false, 2)?, "the mean path does not depend on the rng");
        assert!(eval.iter().all(|s| s[0] == (0.0, 0.0)), "first glimpse at the centre");
        // The second location is the policy mean of the state after the first glimpse.
        let g = model.glimpse(&b.images, &Tensor::zeros((4, 2), candle_core::DType::F32, &dev)?)?;
        let mean = model.location_mean(model.step(&g, None)?.h())?.to_vec2::<f32>()?;
        for (s, m) in eval.iter().zip(&mean) {
            assert!((s[1].0 - m[0]).abs() < 1e-6 && (s[1].1 - m[1]).abs() < 1e-6, "{:?} vs {m:?}", s[1]);
        }
        assert_ne!(centres(true, 1)?, centres(true, 2)?, "training samples its path");
        let both = RamConfig { mc_samples: 2, ..cfg };
        let e = Ram::new(&both, &shape(), vm.builder(&dev)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("eval_path") && e.contains("mc_samples = 2"), "{e}");
        Ok(())
    }

    #[test]
    fn sigma_follows_its_schedule_into_the_sampled_paths() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = RamConfig { sigma: 0.4, sigma_final: Some(1e-4), ..RamConfig::tiny() };
        let vm = SeededVarMap::new(Seed(5));
        let model = Ram::new(&cfg, &shape(), vm.builder(&dev))?;
        assert_eq!(model.sigma_at(0.0), 0.4, "training starts at sigma");
        assert!((model.sigma_at(0.5) - (0.4 + 1e-4) / 2.0).abs() < 1e-12);
        assert!((model.sigma_at(1.0) - 1e-4).abs() < 1e-12 && (model.sigma_at(2.0) - 1e-4).abs() < 1e-12);
        let b = batch(&dev, 8)?;
        // How far a sampled path strays from the deterministic one (both start at the centre).
        let stray = |model: &Ram, p: f64| -> Result<f32> {
            let sampled = model.path(&b.images, false, model.sigma_at(p), 1, &mut Seed(1).rng())?.locations;
            let mean = model.path(&b.images, true, model.sigma_at(p), 1, &mut Seed(1).rng())?.locations;
            (sampled - mean)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        let wide = stray(&model, 0.0)?;
        let narrow = stray(&model, 1.0)?;
        assert!(wide > 0.1 && narrow < 1e-2, "stray at sigma 0.4: {wide}, at 1e-4: {narrow}");
        let out = model.forward(&b, Mode::train(1.0), &mut Seed(2).rng())?;
        let logged = out.stats.iter().find(|(n, _)| n == "sigma").map(|(_, t)| t.to_scalar::<f32>()).transpose()?;
        assert_eq!(logged, Some(1e-4), "the statistics log the sigma in force");
        // Without a schedule, progress changes nothing.
        let fixed = Ram::new(&RamConfig { sigma: 0.4, ..RamConfig::tiny() }, &shape(), vm.builder(&dev))?;
        assert_eq!(fixed.sigma_at(1.0), 0.4);
        let bad = RamConfig { sigma_final: Some(0.0), ..RamConfig::tiny() };
        let e = Ram::new(&bad, &shape(), vm.builder(&dev)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("sigma_final = 0"), "{e}");
        Ok(())
    }

    #[test]
    fn random_glimpses_have_no_policy_terms() -> Result<()> {
        let dev = Device::Cpu;
        let vm = SeededVarMap::new(Seed(9));
        let model = Ram::new(&RamConfig { random_glimpses: true, ..RamConfig::tiny() }, &shape(), vm.builder(&dev))?;
        let out = model.forward(&batch(&dev, 4)?, Mode::train(0.0), &mut Seed(1).rng())?;
        assert_eq!(out.losses.len(), 1);
        Ok(())
    }

    /// Sequence targets: a label after every T glimpses, the state carried on (RAM's glimpses
    /// run once per digit of a pair, then once for `EOS`).
    #[test]
    fn sequences_get_a_label_per_glimpse_group() -> Result<()> {
        let dev = Device::Cpu;
        let n = 12;
        let toks: Vec<u32> = (0..n).flat_map(|i| [4 + (i % 3) as u32, 4 + ((i + 1) % 3) as u32, 3]).collect();
        let mut b = batch(&dev, n)?;
        b.targets = Targets::Sequences {
            tokens: Tensor::from_vec(toks, (n, 3), &dev)?,
            lengths: Tensor::from_vec(vec![3u32; n], n, &dev)?,
        };
        let vm = SeededVarMap::new(Seed(0));
        let model = Ram::new(&RamConfig::tiny(), &DataShape::sequences((1, 8, 8), 7, 3), vm.builder(&dev))?;
        let (first, last) = fit_fixed_batch(&model, &vm, &b, 60, 2e-2, Mode::train(0.0), &mut Seed(2).rng())?;
        assert_eq!(first.scores.tensor().dims(), [n, 3, 7]);
        let (f, l) = (loss_of(&first, "classify").to_scalar::<f32>()?, loss_of(&last, "classify").to_scalar::<f32>()?);
        assert!(l < 0.5 * f, "{f} -> {l}");
        let Some(AttentionMap::Glimpses { centres, per_object, fixed, .. }) = &first.attention else {
            panic!("glimpses")
        };
        assert_eq!((centres[0].len(), *per_object, *fixed), (9, 3, 1));
        // Returns: the 8 sampled locations' baselines are regressed on the labels still to come.
        let d = model.decode(&b, Search::Greedy, 3, &mut Seed(3).rng())?;
        assert!(d.tokens.iter().all(|t| t.len() <= 3 && !t.contains(&3)));
        Ok(())
    }
}

//! DRAM, after "Multiple Object Recognition with Visual Attention" (Ba, Mnih, Kavukcuoglu, 2015).
//!
//! RAM for images holding several objects: the model glimpses, names an object, moves on, names
//! the next. Its parts:
//! - **Glimpse network**: the multi-resolution retina's k patches (as k channels) through a small
//!   CNN and a linear layer, `G_image`, multiplied element-wise with a linear layer of the
//!   location, `G_loc`: "what" times "where", `g = ReLU(W_i CNN(rho)) * ReLU(W_l l)`.
//! - **Two stacked LSTMs**: the lower one, r1, reads g and feeds the classifier; the upper one, r2,
//!   reads r1's output (detached: the classifier's features learn from classification alone) and
//!   feeds the emission network (the next location's mean, `tanh(W r2)`) and the baseline.
//! - **Context network**: a CNN on the whole image down-sampled (average pooling), whose output
//!   sets r2's initial state, so that the first glimpse can already go where an object is. The
//!   classifier never reads it: r2's state reaches r1 only through where the glimpses go.
//!
//! Every location, the first included, is sampled from a Gaussian around the emission network's
//! mean (sigma fixed, or narrowed over training as in [`crate::ram`]); after each object's N
//! glimpses the classifier reads r1 and emits a label. For sequence targets (the digits of a
//! pair in reading order, then `EOS`) one label per token; for class targets (the sum of two
//! digits) one label after `objects` x N glimpses.
//!
//! Loss (named terms):
//! - `classify`: cross-entropy of the labels (mean over real tokens, or over images);
//! - `baseline`: mean squared error of each step's baseline `b_t = W r2_{t-1}` against its
//!   return, the number of labels right from that step's object on (the paper's cumulative
//!   reward); the baseline reads r2 undetached, so predicting the return also shapes r2;
//! - `reinforce`: the gradient of `lambda * mean_b sum_t -log pi(l_t) * (R_t - b_t).detach()`
//!   (its value is shown as 0), which reaches the emission network, r2 and the context network.
//!
//! Evaluation reads a sampled path, the average of `mc_samples` sampled paths' label
//! probabilities, or the deterministic path of the policy means (`eval_path = "mean"`).

use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use gaze_encoders::{ConvNet, ConvNetConfig};
use gaze_tensor::glimpse::{GlimpseSpec, Integral};
use gaze_tensor::lstm::{LstmCell, LstmState, LstmWeights};
use gaze_tensor::ops::{linear, linear_relu};
use gaze_tensor::sample::{gaussian_log_prob, gaussian_sample};
use gaze_tensor::seed::Rng;

use crate::model::{tokens, AttentionMap, Batch, DataShape, Decoded, Mode, Model, Output, Scores, Search, Targets};
use crate::ram::EvalPath;
use crate::show_attend_tell::{sequence_loss, token_mask};

/// Settings of [`Dram`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DramConfig {
    /// Glimpses per object, N: a label is emitted after every N glimpses.
    pub glimpses: usize,
    /// For class targets: the objects glimpsed (N each) before the one label (2 for the sum of
    /// a pair). Sequence targets glimpse once per token instead.
    pub objects: usize,
    /// Patch side g in pixels.
    pub patch: usize,
    /// Scales k (concentric patches, each pooled to g x g).
    pub scales: usize,
    /// Scale factor between consecutive patches.
    pub factor: usize,
    /// The glimpse CNN of `G_image`; its input channels are the retina's scales times the image's
    /// channels, whatever `in_channels` says.
    pub glimpse_cnn: ConvNetConfig,
    /// Width of the glimpse vector g (and of each of its "what" and "where" layers).
    pub glimpse_out: usize,
    /// Width of each LSTM, r1 and r2.
    pub hidden: usize,
    /// Use the context network (false: r2 starts at zero, the paper's "without context" row).
    pub context: bool,
    /// The context image is the input average-pooled by this factor (4: 100x100 to 25x25).
    pub context_pool: usize,
    /// The context CNN; its input channels are the image's.
    pub context_cnn: ConvNetConfig,
    /// Standard deviation of the location policy in [-1, 1] units (at the start of training when
    /// `sigma_final` is set).
    pub sigma: f64,
    /// When set, the policy's standard deviation moves from `sigma` to this value over training
    /// along a half cosine.
    pub sigma_final: Option<f64>,
    /// Weight lambda of the REINFORCE term. The emission network learns from this term alone, so
    /// under Adam its scale hardly matters there; but r2 and the context network share it with
    /// the baseline's, and at 0.1 or 1 its noise drove r2's state into saturation and every
    /// glimpse into a corner of the canvas (MNIST pairs, 56 and 100 pixels). Default 0.01.
    pub reinforce_weight: f64,
    /// Sampled paths whose label probabilities are averaged at evaluation.
    pub mc_samples: usize,
    /// The path evaluation reads.
    pub eval_path: EvalPath,
}

impl Default for DramConfig {
    /// The MNIST-pairs setting: 3 glimpses per digit of four 12-pixel scales (12 to 96), a
    /// glimpse CNN of three stride-2 convs, LSTMs of 256, a context CNN on the image pooled 4x;
    /// both CNNs group-normalised (8 groups): without it the glimpse vector reaching r1 starts
    /// ~30x fainter than its biases, and r1 learns to read it far more slowly.
    fn default() -> Self {
        let gn = |channels: Vec<usize>, pool: usize, stride: usize| ConvNetConfig {
            channels,
            pool,
            stride,
            group_norm: 8,
            ..ConvNetConfig::default()
        };
        Self {
            glimpses: 3,
            objects: 2,
            patch: 12,
            scales: 4,
            factor: 2,
            glimpse_cnn: gn(vec![32, 64, 64], 1, 2),
            glimpse_out: 256,
            hidden: 256,
            context: true,
            context_pool: 4,
            context_cnn: gn(vec![16, 32, 32], 2, 1),
            sigma: 0.2,
            sigma_final: Some(0.03),
            reinforce_weight: 0.01,
            mc_samples: 1,
            eval_path: EvalPath::Mean,
        }
    }
}

impl DramConfig {
    /// A tiny model for tests (16x16 images: two scales of 4 pixels).
    pub fn tiny() -> Self {
        Self {
            glimpses: 2,
            objects: 2,
            patch: 4,
            scales: 2,
            factor: 2,
            glimpse_cnn: ConvNetConfig { channels: vec![4, 8], pool: 1, stride: 2, ..ConvNetConfig::tiny() },
            glimpse_out: 16,
            hidden: 16,
            context: true,
            context_pool: 2,
            context_cnn: ConvNetConfig::tiny(),
            sigma: 0.2,
            ..Self::default()
        }
    }

    /// Side in pixels of each scale's patch.
    pub fn sizes(&self) -> Vec<usize> {
        (0..self.scales).map(|i| self.patch * self.factor.pow(i as u32)).collect()
    }

    fn spec(&self) -> GlimpseSpec {
        GlimpseSpec { patch: self.patch, scales: self.scales, factor: self.factor }
    }
}

/// One path through a batch.
struct Path {
    /// Label scores after each object, (b, labels, classes).
    logits: Tensor,
    /// log pi(l_t) of every location, (b, T).
    log_pi: Tensor,
    /// b_t of every location, (b, T).
    baselines: Tensor,
    /// Glimpse centres, (b, T, 2).
    locations: Tensor,
}

/// The model.
#[derive(Debug, Clone)]
pub struct Dram {
    cfg: DramConfig,
    glimpse_cnn: ConvNet,
    what: Linear,
    where_: Linear,
    r1: LstmCell,
    r2: LstmCell,
    context: Option<(ConvNet, Linear)>,
    emission: Linear,
    baseline: Linear,
    classifier: Linear,
    /// Labels per image: the output vocabulary's steps (sequences) or 1 (classes).
    labels: usize,
    /// Sequence targets (else classes).
    sequences: bool,
}

impl Dram {
    /// Builds the model for data of `shape`. Errors name the impossible setting (a glimpse larger
    /// than the canvas, zero glimpses, a context pool that does not divide the image).
    pub fn new(cfg: &DramConfig, shape: &DataShape, vb: VarBuilder) -> Result<Self> {
        let msg = |m: String| candle_core::Error::Msg(format!("dram: {m}"));
        let (c, h, w) = shape.input;
        cfg.spec().check(h, w).map_err(|e| msg(e.to_string()))?;
        if cfg.glimpses == 0 || cfg.objects == 0 || cfg.glimpse_out == 0 || cfg.hidden == 0 {
            return Err(msg("glimpses, objects, glimpse_out and hidden must all be >= 1".into()));
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(cfg.sigma) || cfg.sigma_final.is_some_and(|f| !positive(f)) {
            return Err(msg(format!("sigma = {} and sigma_final = {:?} must be positive", cfg.sigma, cfg.sigma_final)));
        }
        if cfg.mc_samples == 0 {
            return Err(msg("mc_samples must be >= 1".into()));
        }
        if cfg.eval_path == EvalPath::Mean && cfg.mc_samples > 1 {
            return Err(msg(format!(
                "eval_path = \"mean\" is one deterministic path: it cannot be averaged over mc_samples = {}",
                cfg.mc_samples
            )));
        }
        if !cfg.reinforce_weight.is_finite() || cfg.reinforce_weight < 0.0 {
            return Err(msg(format!("reinforce_weight = {} must be finite and >= 0", cfg.reinforce_weight)));
        }
        let gcfg = ConvNetConfig { in_channels: cfg.scales * c, ..cfg.glimpse_cnn.clone() };
        let (gc, gh, gw) = gcfg.output_shape(cfg.patch, cfg.patch);
        if gh == 0 || gw == 0 {
            return Err(msg(format!("glimpse_cnn reduces a {0}x{0} patch to nothing", cfg.patch)));
        }
        let context = if cfg.context {
            let p = cfg.context_pool.max(1);
            if h % p != 0 || w % p != 0 {
                return Err(msg(format!("context_pool = {p} does not divide the {h}x{w} image")));
            }
            let ccfg = ConvNetConfig { in_channels: c, ..cfg.context_cnn.clone() };
            let (cc, ch, cw) = ccfg.output_shape(h / p, w / p);
            if ch == 0 || cw == 0 {
                return Err(msg(format!("context_cnn reduces the {}x{} context image to nothing", h / p, w / p)));
            }
            Some((
                ConvNet::new(&ccfg, vb.pp("context.cnn"))?,
                candle_nn::linear(cc * ch * cw, cfg.hidden, vb.pp("context.out"))?,
            ))
        } else {
            None
        };
        let (sequences, labels) = if shape.max_steps > 0 { (true, shape.max_steps) } else { (false, 1) };
        Ok(Self {
            cfg: cfg.clone(),
            glimpse_cnn: ConvNet::new(&gcfg, vb.pp("glimpse.cnn"))?,
            what: candle_nn::linear(gc * gh * gw, cfg.glimpse_out, vb.pp("glimpse.what"))?,
            where_: where_layer(cfg.glimpse_out, vb.pp("glimpse.where"))?,
            r1: LstmCell::new(cfg.glimpse_out, cfg.hidden, vb.pp("r1"))?,
            r2: LstmCell::new(cfg.hidden, cfg.hidden, vb.pp("r2"))?,
            context,
            emission: candle_nn::linear(cfg.hidden, 2, vb.pp("emission"))?,
            baseline: candle_nn::linear(cfg.hidden, 1, vb.pp("baseline"))?,
            classifier: candle_nn::linear(cfg.hidden, shape.classes, vb.pp("classifier"))?,
            labels,
            sequences,
        })
    }

    /// The policy's standard deviation at training progress `p`.
    pub fn sigma_at(&self, p: f64) -> f64 {
        match self.cfg.sigma_final {
            None => self.cfg.sigma,
            Some(end) => gaze_tensor::ops::half_cosine(self.cfg.sigma, end, p),
        }
    }

    /// Glimpses before each label.
    fn groups(&self) -> Vec<usize> {
        if self.sequences {
            vec![self.cfg.glimpses; self.labels]
        } else {
            vec![self.cfg.glimpses * self.cfg.objects]
        }
    }

    /// The glimpse vector g, "what" times "where". Shapes: locs (b, 2) -> (b, glimpse_out).
    pub fn glimpse(&self, table: &Integral, locs: &Tensor, train: bool) -> Result<Tensor> {
        let p = table.glimpses(locs, &self.cfg.spec())?; // (b, k, c, g, g)
        let (b, k, c, g, _) = p.dims5()?;
        let seen = self.glimpse_cnn.forward(&p.reshape((b, k * c, g, g))?, train)?.flatten_from(1)?;
        let what = linear_relu(&self.what, &seen)?;
        let where_ = linear_relu(&self.where_, locs)?;
        what * where_
    }

    /// r2's initial state from the context network: (b, c, h, w) -> h (b, hidden), c = 0.
    pub fn context_state(&self, images: &Tensor, train: bool) -> Result<Option<LstmState>> {
        let Some((cnn, out)) = &self.context else { return Ok(None) };
        let p = self.cfg.context_pool.max(1);
        let small = if p > 1 { images.avg_pool2d(p)? } else { images.clone() };
        let h = linear(out, &cnn.forward(&small, train)?.flatten_from(1)?)?.tanh()?;
        let c = h.zeros_like()?;
        Ok(Some(LstmState { h, c }))
    }

    /// The emission network's mean for r2's state (zero when r2 has not started). -> (b, 2).
    fn emit(&self, h2: &Tensor) -> Result<Tensor> {
        linear(&self.emission, h2)?.tanh()
    }

    /// One path: sampled, or (`mean_path`) every location at the policy mean.
    fn path(&self, images: &Tensor, train: bool, mean_path: bool, sigma: f64, rng: &mut Rng) -> Result<Path> {
        let (b, dev) = (images.dim(0)?, images.device());
        let table = Integral::new(images)?;
        let (w1, w2): (LstmWeights, LstmWeights) = (self.r1.weights()?, self.r2.weights()?);
        let mut r2 = self.context_state(images, train)?;
        let mut r1: Option<LstmState> = None;
        let zeros = Tensor::zeros((b, self.cfg.hidden), DType::F32, dev)?;
        let (mut log_pi, mut baselines, mut locations, mut logits) = (vec![], vec![], vec![], vec![]);
        for n in self.groups() {
            for _ in 0..n {
                let h2 = r2.as_ref().map_or(&zeros, |s| &s.h);
                let mean = self.emit(h2)?;
                let sample = if mean_path { mean.detach() } else { gaussian_sample(&mean, sigma, rng)? };
                log_pi.push(gaussian_log_prob(&mean, sigma, &sample)?);
                baselines.push(linear(&self.baseline, h2)?.squeeze(1)?);
                let loc = sample.clamp(-1f32, 1f32)?;
                let g = self.glimpse(&table, &loc, train)?;
                let s1 = w1.step(&g, r1.as_ref())?;
                r2 = Some(w2.step(&s1.h.detach(), r2.as_ref())?);
                r1 = Some(s1);
                locations.push(loc);
            }
            let h1 = r1.as_ref().map(|s| &s.h).ok_or_else(|| candle_core::Error::Msg("dram: no glimpses".into()))?;
            logits.push(linear(&self.classifier, h1)?);
        }
        Ok(Path {
            logits: Tensor::stack(&logits, 1)?,
            log_pi: Tensor::stack(&log_pi, 1)?,
            baselines: Tensor::stack(&baselines, 1)?,
            locations: Tensor::stack(&locations, 1)?,
        })
    }

    /// Label log-probabilities for evaluation: one path's, or the log of the mean probability
    /// over `mc_samples` sampled paths. Returns them with the first path.
    fn evaluated(&self, images: &Tensor, mode: Mode, rng: &mut Rng) -> Result<(Tensor, Path)> {
        let sigma = self.sigma_at(mode.progress);
        let mean_path = !mode.train && self.cfg.eval_path == EvalPath::Mean;
        let path = self.path(images, mode.train, mean_path, sigma, rng)?;
        if mode.train || self.cfg.mc_samples == 1 {
            return Ok((candle_nn::ops::log_softmax(&path.logits, D::Minus1)?, path));
        }
        let mut probs = candle_nn::ops::softmax(&path.logits, D::Minus1)?;
        for _ in 1..self.cfg.mc_samples {
            let other = self.path(images, false, false, sigma, rng)?;
            probs = (probs + candle_nn::ops::softmax(&other.logits, D::Minus1)?)?;
        }
        let logp = (probs / self.cfg.mc_samples as f64)?.clamp(1e-30, 1.0)?.log()?;
        Ok((logp, path))
    }

    fn glimpse_map(&self, path: &Path, mean_path: bool) -> Result<AttentionMap> {
        let locs = path.locations.to_vec3::<f32>()?;
        let centres = locs.iter().map(|steps| steps.iter().map(|xy| (xy[0], xy[1])).collect()).collect();
        let title = if mean_path { "glimpse path (policy means)" } else { "glimpse path" };
        Ok(AttentionMap::Glimpses {
            centres,
            sizes: self.cfg.sizes(),
            per_object: self.cfg.glimpses,
            fixed: 0,
            title: title.into(),
        })
    }
}

/// `G_loc`'s linear layer, its bias initialised to 1: the product `what * ReLU(W l + b)` then
/// starts near `what` and the location modulates it, instead of two small activations
/// multiplying into a glimpse vector too faint for the LSTM to read.
fn where_layer(out: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get_with_hints((out, 2), "weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
    let b = vb.get_with_hints(out, "bias", candle_nn::Init::Const(1.0))?;
    Ok(Linear::new(w, Some(b)))
}

/// Returns from each glimpse on: for glimpse t of object k, the sum of `rewards[j]` for j >= k.
/// Shapes: rewards (b, labels) -> (b, sum(groups)).
pub fn returns(rewards: &Tensor, groups: &[usize]) -> Result<Tensor> {
    let labels = rewards.dim(1)?;
    if labels != groups.len() {
        return Err(candle_core::Error::Msg(format!("dram: {labels} rewards for {} label groups", groups.len())));
    }
    let mut cols = Vec::with_capacity(groups.iter().sum());
    for (k, &n) in groups.iter().enumerate() {
        let future = rewards.narrow(1, k, labels - k)?.sum_keepdim(1)?;
        cols.extend(std::iter::repeat_n(future, n));
    }
    Tensor::cat(&cols, 1)
}

impl Model for Dram {
    /// Shapes: images (b, c, h, w) -> label scores, (b, labels, classes) for sequence targets or
    /// (b, classes); losses `classify`, `baseline`, `reinforce`; glimpse centres per step;
    /// statistics `reward` (labels right per image), `baseline`, `sigma` and `at_border` (the share
    /// of glimpses at the canvas's edge).
    fn forward(&self, batch: &Batch, mode: Mode, rng: &mut Rng) -> Result<Output> {
        let (logp, path) = self.evaluated(&batch.images, mode, rng)?;
        let (b, dev) = (batch.images.dim(0)?, batch.images.device());
        let (classify, rewards, scores) = match &batch.targets {
            Targets::Sequences { tokens, lengths } => {
                let t = tokens.dim(1)?;
                if t > self.labels {
                    return Err(candle_core::Error::Msg(format!(
                        "dram: targets of {t} tokens, the model was built for {} labels",
                        self.labels
                    )));
                }
                let logp = logp.narrow(1, 0, t)?;
                let mask = token_mask(lengths, t)?;
                let right = logp.argmax(D::Minus1)?.eq(tokens)?.to_dtype(DType::F32)?;
                let mut rewards = (right * mask)?;
                if t < self.labels {
                    rewards = Tensor::cat(&[rewards, Tensor::zeros((b, self.labels - t), DType::F32, dev)?], 1)?;
                }
                (sequence_loss(&logp, tokens, lengths)?, rewards, Scores::Steps(logp))
            }
            other => {
                let targets = other.classes("dram")?;
                let logp = logp.squeeze(1)?;
                let right = logp.argmax(D::Minus1)?.eq(targets)?.to_dtype(DType::F32)?.unsqueeze(1)?;
                (candle_nn::loss::nll(&logp, targets)?, right, Scores::Classes(logp))
            }
        };
        let ret = returns(&rewards, &self.groups())?;
        let sigma = self.sigma_at(mode.progress);
        let baseline = (&path.baselines - &ret)?.sqr()?.mean_all()?;
        let advantage = (ret - &path.baselines)?.detach();
        // The surrogate's gradient, with the value 0: its value (log-densities of narrow
        // Gaussians) says nothing and would swamp the total loss.
        let surrogate = (&path.log_pi * advantage)?.sum(1)?.mean_all()?.neg()?;
        let reinforce = (&surrogate - surrogate.detach())?;
        let mean_path = !mode.train && self.cfg.eval_path == EvalPath::Mean;
        Ok(Output {
            scores,
            losses: vec![
                ("classify".into(), classify),
                ("baseline".into(), baseline),
                ("reinforce".into(), (reinforce * self.cfg.reinforce_weight)?),
            ],
            attention: Some(self.glimpse_map(&path, mean_path)?),
            stats: vec![
                ("reward".into(), rewards.sum(1)?.mean_all()?),
                ("baseline".into(), path.baselines.mean_all()?),
                ("sigma".into(), Tensor::new(sigma as f32, dev)?),
                // The share of glimpses pinned to the canvas's border: a policy whose means run
                // into tanh's saturation reads empty corners and stops learning.
                (
                    "at_border".into(),
                    path.locations.abs()?.max(D::Minus1)?.ge(0.999f32)?.to_dtype(DType::F32)?.mean_all()?,
                ),
            ],
        })
    }

    /// The labels of each image up to the first `EOS` (at most `max_steps`); the search is
    /// irrelevant: the labels do not feed back, so each is its own most likely class.
    fn decode(&self, batch: &Batch, _search: Search, max_steps: usize, rng: &mut Rng) -> Result<Decoded> {
        if !self.sequences {
            return Err(candle_core::Error::Msg("dram: this model was built for class targets".into()));
        }
        let (logp, path) = self.evaluated(&batch.images, Mode::eval(), rng)?;
        let best = logp.argmax(D::Minus1)?.to_vec2::<u32>()?;
        let tokens = best
            .into_iter()
            .map(|row| row.into_iter().take(max_steps).take_while(|&t| t != tokens::EOS).collect())
            .collect();
        let mean_path = self.cfg.eval_path == EvalPath::Mean;
        Ok(Decoded { tokens, attention: Some(self.glimpse_map(&path, mean_path)?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::fit_fixed_batch;
    use candle_core::Device;
    use gaze_tensor::{Seed, SeededVarMap};
    use rand::Rng as _;

    fn images(dev: &Device, n: usize) -> Result<Tensor> {
        let mut r = Seed(1).rng();
        let px: Vec<f32> = (0..n * 256).map(|_| r.random::<f32>()).collect();
        Tensor::from_vec(px, (n, 1, 16, 16), dev)
    }

    /// Two "digits" per image and `EOS`: tokens 4 + (i % 3), 4 + ((i + 1) % 3), EOS.
    fn sequence_batch(dev: &Device, n: usize) -> Result<Batch> {
        let toks: Vec<u32> = (0..n).flat_map(|i| [4 + (i % 3) as u32, 4 + ((i + 1) % 3) as u32, tokens::EOS]).collect();
        Ok(Batch {
            images: images(dev, n)?,
            targets: Targets::Sequences {
                tokens: Tensor::from_vec(toks, (n, 3), dev)?,
                lengths: Tensor::from_vec(vec![3u32; n], n, dev)?,
            },
            questions: None,
        })
    }

    fn seq_shape() -> DataShape {
        DataShape::sequences((1, 16, 16), 7, 3)
    }

    fn loss_of(out: &Output, name: &str) -> Tensor {
        out.losses.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone()).expect(name)
    }

    #[test]
    fn tiny_loss_falls_on_a_fixed_batch_for_sequences_and_classes() -> Result<()> {
        let dev = Device::Cpu;
        let vm = SeededVarMap::new(Seed(0));
        let model = Dram::new(&DramConfig::tiny(), &seq_shape(), vm.builder(&dev))?;
        let b = sequence_batch(&dev, 12)?;
        let (first, last) = fit_fixed_batch(&model, &vm, &b, 60, 2e-2, Mode::train(0.0), &mut Seed(2).rng())?;
        let names: Vec<_> = first.losses.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["classify", "baseline", "reinforce"]);
        let (f, l) = (loss_of(&first, "classify").to_scalar::<f32>()?, loss_of(&last, "classify").to_scalar::<f32>()?);
        assert!(l < 0.5 * f, "sequence classify {f} -> {l}");
        assert_eq!(first.scores.tensor().dims(), [12, 3, 7]);
        let Some(AttentionMap::Glimpses { centres, per_object, .. }) = &first.attention else { panic!("glimpses") };
        assert_eq!((centres[0].len(), *per_object), (3 * 2, 2), "N glimpses for each of the 3 labels");

        // Class targets: each image's brightness says its class, whatever the glimpses' places.
        let vm = SeededVarMap::new(Seed(0));
        let model = Dram::new(&DramConfig::tiny(), &DataShape::images((1, 16, 16), 5), vm.builder(&dev))?;
        let classes: Vec<u32> = (0..12u32).map(|i| i % 5).collect();
        let level = Tensor::from_vec(classes.iter().map(|&c| c as f32 / 5.0).collect::<Vec<_>>(), (12, 1, 1, 1), &dev)?;
        let imgs = (images(&dev, 12)?.affine(0.1, 0.0)?.broadcast_add(&level))?;
        let b = Batch::images(imgs, Tensor::from_vec(classes, 12, &dev)?);
        let (first, last) = fit_fixed_batch(&model, &vm, &b, 60, 2e-2, Mode::train(0.0), &mut Seed(2).rng())?;
        let (f, l) = (loss_of(&first, "classify").to_scalar::<f32>()?, loss_of(&last, "classify").to_scalar::<f32>()?);
        assert!(l < 0.5 * f, "class classify {f} -> {l}");
        assert_eq!(first.scores.tensor().dims(), [12, 5]);
        let Some(AttentionMap::Glimpses { centres, .. }) = &first.attention else { panic!("glimpses") };
        assert_eq!(centres[0].len(), 2 * 2, "objects x N glimpses before the one label");
        Ok(())
    }

    #[test]
    fn the_glimpse_is_what_times_where() -> Result<()> {
        let dev = Device::Cpu;
        let vm = SeededVarMap::new(Seed(3));
        let model = Dram::new(&DramConfig::tiny(), &seq_shape(), vm.builder(&dev))?;
        let imgs = images(&dev, 5)?;
        let table = Integral::new(&imgs)?;
        let locs = Tensor::from_vec(vec![0.1f32, -0.2, 0.5, 0.5, -1.0, 1.0, 0.0, 0.0, 0.3, -0.7], (5, 2), &dev)?;
        let g = model.glimpse(&table, &locs, false)?;
        assert_eq!(g.dims(), [5, 16]);
        // Recomputed from its parts: the CNN on the (b, k, g, g) patches, then the product.
        let p = table.glimpses(&locs, &DramConfig::tiny().spec())?;
        assert_eq!(p.dims(), [5, 2, 1, 4, 4]);
        let seen = model.glimpse_cnn.forward(&p.reshape((5, 2, 4, 4))?, false)?.flatten_from(1)?;
        let want = (linear_relu(&model.what, &seen)? * linear_relu(&model.where_, &locs)?)?;
        let diff = (g - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        Ok(())
    }

    #[test]
    fn the_context_reaches_r2_and_the_policy_never_the_classifier() -> Result<()> {
        let dev = Device::Cpu;
        let vm = SeededVarMap::new(Seed(4));
        let model = Dram::new(&DramConfig::tiny(), &seq_shape(), vm.builder(&dev))?;
        let out = model.forward(&sequence_batch(&dev, 6)?, Mode::train(0.0), &mut Seed(5).rng())?;
        let touched = |loss: &Tensor| crate::test_util::touched(&vm, loss);
        let classify = touched(&loss_of(&out, "classify"))?;
        for must in ["glimpse.what.weight", "glimpse.where.weight", "r1.weight_ih_l0", "classifier.weight"] {
            assert!(classify.contains(&must.to_string()), "classify misses {must}: {classify:?}");
        }
        assert!(
            classify.iter().all(|n| !n.starts_with("context.") && !n.starts_with("r2.") && !n.starts_with("emission.")),
            "the classifier's loss reaches the context path: {classify:?}"
        );
        let reinforce = touched(&loss_of(&out, "reinforce"))?;
        for must in ["context.out.weight", "context.cnn.block0.conv.weight", "r2.weight_ih_l0", "emission.weight"] {
            assert!(reinforce.contains(&must.to_string()), "reinforce misses {must}: {reinforce:?}");
        }
        assert!(
            reinforce.iter().all(|n| n.starts_with("context.") || n.starts_with("r2.") || n.starts_with("emission.")),
            "{reinforce:?}"
        );
        let baseline = touched(&loss_of(&out, "baseline"))?;
        assert!(
            baseline.contains(&"baseline.weight".to_string()) && baseline.contains(&"context.out.weight".to_string())
        );
        assert!(baseline
            .iter()
            .all(|n| !n.starts_with("r1.") && !n.starts_with("classifier.") && !n.starts_with("glimpse.")));
        // Without the context network r2 starts at zero: no context parameters exist.
        let vm = SeededVarMap::new(Seed(4));
        let _ = Dram::new(&DramConfig { context: false, ..DramConfig::tiny() }, &seq_shape(), vm.builder(&dev))?;
        assert!(vm.sorted_vars().iter().all(|(n, _)| !n.starts_with("context.")));
        Ok(())
    }

    #[test]
    fn returns_sum_the_labels_still_to_come() -> Result<()> {
        let r = Tensor::new(&[[1f32, 0., 1.], [0., 1., 1.]], &Device::Cpu)?;
        let got = returns(&r, &[2, 2, 1])?.to_vec2::<f32>()?;
        assert_eq!(got, [[2., 2., 1., 1., 1.], [2., 2., 2., 2., 1.]]);
        assert!(returns(&r, &[2, 2]).is_err());
        Ok(())
    }

    #[test]
    fn decoding_stops_at_eos_and_same_seed_same_labels() -> Result<()> {
        let dev = Device::Cpu;
        let run = |seed: u64| -> Result<(Vec<Vec<u32>>, Vec<f32>)> {
            let vm = SeededVarMap::new(Seed(7));
            let cfg = DramConfig { mc_samples: 2, eval_path: EvalPath::Sampled, ..DramConfig::tiny() };
            let model = Dram::new(&cfg, &seq_shape(), vm.builder(&dev))?;
            let b = sequence_batch(&dev, 4)?;
            let d = model.decode(&b, Search::Greedy, 3, &mut Seed(seed).rng())?;
            assert!(d.tokens.iter().all(|t| t.len() <= 3 && !t.contains(&tokens::EOS)));
            let out = model.forward(&b, Mode::eval(), &mut Seed(seed).rng())?;
            Ok((d.tokens, out.scores.tensor().flatten_all()?.to_vec1::<f32>()?))
        };
        assert_eq!(run(8)?, run(8)?);
        // Impossible settings are named.
        let vb = || SeededVarMap::new(Seed(0)).builder(&dev);
        let e = Dram::new(&DramConfig { patch: 10, ..DramConfig::tiny() }, &seq_shape(), vb())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("larger than the 16x16 canvas"), "{e}");
        let e = Dram::new(&DramConfig { context_pool: 3, ..DramConfig::tiny() }, &seq_shape(), vb())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("context_pool = 3"), "{e}");
        Ok(())
    }
}

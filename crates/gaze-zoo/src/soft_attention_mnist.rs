//! Elementary soft attention on MNIST, after a well-known tutorial on attention: a conv layer
//! and max-pool give an activation volume (14, 14, 12); an LSTM (196 units) runs 10 steps; at
//! each step its state relates a key to the volume, the attended vector sum_ij mask_ij F_ij feeds
//! the next step, and the last state classifies. Three relations, by config:
//! - `location_softmax`: mask = softmax(Linear(h -> 196)) ([`LocationSoftmax`]);
//! - `gaussian`: a 2-D Gaussian window from Linear(h -> 5) ([`GaussianWindow`]);
//! - `feature_key`: a 12-d key, mask = softmax_ij <F_ij, key> ([`DotProductAttention`]).
//!
//! Unlike the tutorial (precomputed features) the conv layer is trained end to end.
//!
//! Two options, off by default, matter for `feature_key`: a content key alone cannot say *where*
//! it looked (the attended vector is a weighted mean of translation-equivariant features), so
//! `position_embedding` adds a learned (cells, channels) table to the volume before attention, as
//! transformers add positions to tokens; `scaled_key` divides the scores by sqrt(channels)
//! ("Attention Is All You Need").

use candle_core::{Result, Tensor};
use candle_nn::rnn::{LSTMConfig, LSTMState, RNN};
use candle_nn::{Conv2d, Linear, Module, VarBuilder, LSTM};
use serde::{Deserialize, Serialize};

use gaze_attention::{
    Attend, DotProductAttention, DotProductConfig, GaussianWindow, GaussianWindowConfig, LocationSoftmax,
    LocationSoftmaxConfig,
};
use gaze_tensor::seed::Rng;

use crate::model::{AttentionMap, Batch, DataShape, Mode, Model, Output, Scores};

/// How the LSTM's state is related to the activation volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// Softmax over a linear map of the state to the cells.
    LocationSoftmax,
    /// A 2-D Gaussian window (mean, scales, correlation) from the state.
    Gaussian,
    /// A feature-like key compared with every cell by dot product.
    FeatureKey,
}

/// Settings of [`SoftAttentionMnist`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SoftAttentionMnistConfig {
    /// The relation between key and volume.
    pub relation: Relation,
    /// Channels of the activation volume (12).
    pub channels: usize,
    /// Kernel of the conv layer (odd; same padding).
    pub kernel: usize,
    /// LSTM units (196).
    pub hidden: usize,
    /// Attention steps (10).
    pub steps: usize,
    /// Add a learned position vector to every cell of the volume (off: the tutorial's volume).
    pub position_embedding: bool,
    /// `feature_key` only: divide scores by sqrt(channels).
    pub scaled_key: bool,
    /// `gaussian` only: the window's starting scale in [-1, 1] units of the grid (unset: 0.74,
    /// i.e. min scale 0.05 + softplus(0)); smaller values start with sharper windows.
    pub window_scale: Option<f64>,
}

impl Default for SoftAttentionMnistConfig {
    /// The tutorial's setting: 12 channels, 14 x 14 cells, 196 LSTM units, 10 steps.
    fn default() -> Self {
        Self {
            relation: Relation::LocationSoftmax,
            channels: 12,
            kernel: 5,
            hidden: 196,
            steps: 10,
            position_embedding: false,
            scaled_key: false,
            window_scale: None,
        }
    }
}

impl SoftAttentionMnistConfig {
    /// A tiny model for tests.
    pub fn tiny(relation: Relation) -> Self {
        Self {
            relation,
            channels: 3,
            kernel: 3,
            hidden: 8,
            steps: 3,
            position_embedding: false,
            scaled_key: false,
            window_scale: None,
        }
    }
}

#[derive(Debug, Clone)]
enum Relator {
    Location(LocationSoftmax),
    Gaussian(GaussianWindow),
    Key(DotProductAttention),
}

impl Relator {
    fn attend(&self, feats: &Tensor, h: &Tensor) -> Result<gaze_attention::Attended> {
        match self {
            Relator::Location(a) => a.attend(feats, h),
            Relator::Gaussian(a) => a.attend(feats, h),
            Relator::Key(a) => a.attend(feats, h),
        }
    }
}

/// The model.
#[derive(Debug, Clone)]
pub struct SoftAttentionMnist {
    cfg: SoftAttentionMnistConfig,
    conv: Conv2d,
    lstm: LSTM,
    relator: Relator,
    out: Linear,
    positions: Option<Tensor>,
    grid: (usize, usize),
}

impl SoftAttentionMnist {
    /// Builds the model for the images (height and width even) and classes of `shape`.
    pub fn new(cfg: &SoftAttentionMnistConfig, shape: &DataShape, vb: VarBuilder) -> Result<Self> {
        let (input, classes) = (shape.input, shape.classes);
        if cfg.kernel % 2 == 0 || cfg.steps == 0 || cfg.channels == 0 || cfg.hidden == 0 {
            return Err(candle_core::Error::Msg(format!(
                "soft_attention_mnist: kernel {} must be odd and channels, hidden, steps >= 1",
                cfg.kernel
            )));
        }
        let min_scale = GaussianWindowConfig::default().min_scale;
        if let Some(ws) = cfg.window_scale.filter(|&ws| !(ws > min_scale && ws.is_finite())) {
            return Err(candle_core::Error::Msg(format!(
                "soft_attention_mnist: window_scale {ws} must be larger than the minimum scale {min_scale}"
            )));
        }
        let (gh, gw) = (input.1 / 2, input.2 / 2);
        let n = gh * gw;
        let conv_cfg = candle_nn::Conv2dConfig { padding: cfg.kernel / 2, ..Default::default() };
        let conv = candle_nn::conv2d(input.0, cfg.channels, cfg.kernel, conv_cfg, vb.pp("conv"))?;
        let lstm = candle_nn::lstm(cfg.channels, cfg.hidden, LSTMConfig::default(), vb.pp("lstm"))?;
        let avb = vb.pp("attention");
        let relator = match cfg.relation {
            Relation::LocationSoftmax => Relator::Location(LocationSoftmax::new(
                &LocationSoftmaxConfig { cells: n, feat_dim: cfg.channels, query_dim: cfg.hidden },
                avb,
            )?),
            Relation::Gaussian => Relator::Gaussian(GaussianWindow::new(
                &GaussianWindowConfig {
                    grid_h: gh,
                    grid_w: gw,
                    feat_dim: cfg.channels,
                    query_dim: cfg.hidden,
                    init_scale: cfg.window_scale.unwrap_or(GaussianWindowConfig::default().init_scale),
                    ..GaussianWindowConfig::default()
                },
                avb,
            )?),
            Relation::FeatureKey => Relator::Key(DotProductAttention::new(
                &DotProductConfig { feat_dim: cfg.channels, query_dim: cfg.hidden, scaled: cfg.scaled_key },
                avb,
            )?),
        };
        let out = candle_nn::linear(cfg.hidden, classes, vb.pp("out"))?;
        let positions = if cfg.position_embedding {
            let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.1 };
            Some(vb.get_with_hints((1, n, cfg.channels), "positions", init)?)
        } else {
            None
        };
        Ok(Self { cfg: cfg.clone(), conv, lstm, relator, out, positions, grid: (gh, gw) })
    }

    /// The activation volume as cells (plus the position table, if configured).
    /// Shapes: images (b, c, h, w) -> (b, n, channels).
    pub fn volume(&self, images: &Tensor) -> Result<Tensor> {
        let f = gaze_tensor::ops::max_pool2d(&self.conv.forward(images)?.relu()?, 2)?;
        let cells = f.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        match &self.positions {
            Some(p) => cells.broadcast_add(p),
            None => Ok(cells),
        }
    }
}

impl Model for SoftAttentionMnist {
    /// Shapes: images (b, c, h, w) -> logits (b, classes), loss `classify`, masks (b, t, h/2, w/2),
    /// statistics `entropy_tNN` (mean attention entropy at step NN, nats; ln 196 = 5.28 is uniform).
    fn forward(&self, batch: &Batch, _mode: Mode, _rng: &mut Rng) -> Result<Output> {
        let feats = self.volume(&batch.images)?;
        let b = feats.dim(0)?;
        let mut state: LSTMState = self.lstm.zero_state(b)?;
        let mut masks = Vec::with_capacity(self.cfg.steps);
        let mut stats = Vec::with_capacity(self.cfg.steps);
        for t in 0..self.cfg.steps {
            let att = self.relator.attend(&feats, state.h())?;
            state = self.lstm.step(&att.context, &state)?;
            let w = att.weights.detach();
            let entropy = gaze_tensor::sample::categorical_entropy(&w)?.mean_all()?;
            stats.push((format!("entropy_t{:02}", t + 1), entropy));
            masks.push(w);
        }
        let logits = self.out.forward(state.h())?;
        let classify = candle_nn::loss::cross_entropy(&logits, batch.targets.classes("soft_attention_mnist")?)?;
        let (gh, gw) = self.grid;
        let weights = Tensor::stack(&masks, 1)?.reshape((b, self.cfg.steps, gh, gw))?;
        let title = format!("{:?} attention, steps 1..{} then their sum", self.cfg.relation, self.cfg.steps);
        Ok(Output {
            scores: Scores::Classes(logits),
            losses: vec![("classify".into(), classify)],
            attention: Some(AttentionMap::Steps { weights, title }),
            stats,
        })
    }
}

/// For tests: the sum of each step's mask, (b, t, gh, gw) -> (b, t).
#[cfg(test)]
fn step_sums(weights: &Tensor) -> Result<Vec<Vec<f32>>> {
    weights.sum(candle_core::D::Minus1)?.sum(candle_core::D::Minus1)?.to_vec2::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fit_fixed_batch, total};
    use candle_core::Device;
    use gaze_tensor::{Seed, SeededVarMap};
    use rand::Rng as _;

    fn batch(dev: &Device) -> Result<Batch> {
        let mut r = Seed(1).rng();
        let imgs: Vec<f32> = (0..6 * 64).map(|_| r.random::<f32>()).collect();
        Ok(Batch {
            questions: None,
            images: Tensor::from_vec(imgs, (6, 1, 8, 8), dev)?,
            targets: crate::model::Targets::Classes(Tensor::from_vec(vec![0u32, 1, 2, 0, 1, 2], 6, dev)?),
        })
    }

    #[test]
    fn masks_sum_to_one_per_step_and_loss_falls() -> Result<()> {
        let dev = Device::Cpu;
        let key_with_options = SoftAttentionMnistConfig {
            position_embedding: true,
            scaled_key: true,
            ..SoftAttentionMnistConfig::tiny(Relation::FeatureKey)
        };
        let sharp_gaussian =
            SoftAttentionMnistConfig { window_scale: Some(0.2), ..SoftAttentionMnistConfig::tiny(Relation::Gaussian) };
        let cfgs = [Relation::LocationSoftmax, Relation::Gaussian, Relation::FeatureKey]
            .map(SoftAttentionMnistConfig::tiny)
            .into_iter()
            .chain([key_with_options, sharp_gaussian]);
        for cfg in cfgs {
            let relation = cfg.relation;
            let vm = SeededVarMap::new(Seed(0));
            let model = SoftAttentionMnist::new(&cfg, &DataShape::images((1, 8, 8), 3), vm.builder(&dev))?;
            let b = batch(&dev)?;
            let (out, last) = fit_fixed_batch(&model, &vm, &b, 40, 2e-2, Mode::eval(), &mut Seed(2).rng())?;
            let Some(AttentionMap::Steps { weights, .. }) = &out.attention else { panic!("step masks") };
            assert_eq!(weights.dims(), &[6, 3, 4, 4]);
            for row in step_sums(weights)? {
                assert!(row.iter().all(|s| (s - 1.0).abs() < 1e-5), "{relation:?}: {row:?}");
            }
            assert_eq!(out.stats.len(), 3);
            let (first, last) = (total(&out)?, total(&last)?);
            assert!(last < 0.5 * first, "{relation:?}: {first} -> {last}");
        }
        Ok(())
    }

    #[test]
    fn gaussian_mask_peaks_at_its_predicted_mean() -> Result<()> {
        let dev = Device::Cpu;
        let vm = SeededVarMap::new(Seed(5));
        let cfg = SoftAttentionMnistConfig { hidden: 6, ..SoftAttentionMnistConfig::tiny(Relation::Gaussian) };
        let model = SoftAttentionMnist::new(&cfg, &DataShape::images((1, 16, 16), 3), vm.builder(&dev))?;
        let Relator::Gaussian(g) = &model.relator else { panic!("gaussian relator") };
        let feats = model.volume(&batch(&dev)?.images.pad_with_zeros(2, 4, 4)?.pad_with_zeros(3, 4, 4)?)?;
        let mut r = Seed(9).rng();
        for _ in 0..20 {
            // a random LSTM state, as at any step
            let h =
                Tensor::from_vec((0..6 * 6).map(|_| r.random::<f32>() * 4.0 - 2.0).collect::<Vec<_>>(), (6, 6), &dev)?;
            let (mean, scale, rho) = g.window_params(&h)?;
            let (mean, scale, rho) = (mean.to_vec2::<f32>()?, scale.to_vec2::<f32>()?, rho.to_vec2::<f32>()?);
            let masks = g.attend(&feats, &h)?.weights.to_vec2::<f32>()?;
            for (k, m) in masks.iter().enumerate() {
                // Independently: the Mahalanobis distance of every cell centre from the predicted
                // mean under the predicted scales and correlation; the mask must peak where it is
                // smallest (the nearest cell when rho = 0 and the scales are equal).
                let q = |cell: usize| {
                    let (cx, cy) = (((cell % 8) as f32 + 0.5) / 4.0 - 1.0, ((cell / 8) as f32 + 0.5) / 4.0 - 1.0);
                    let (dx, dy) = ((cx - mean[k][0]) / scale[k][0], (cy - mean[k][1]) / scale[k][1]);
                    (dx * dx - 2.0 * rho[k][0] * dx * dy + dy * dy) / (1.0 - rho[k][0] * rho[k][0])
                };
                let peak = m.iter().enumerate().fold(0, |a, (i, &v)| if v > m[a] { i } else { a });
                let nearest = (0..64).fold(0, |a, i| if q(i) < q(a) { i } else { a });
                assert!(
                    peak == nearest || (q(peak) - q(nearest)).abs() < 1e-4,
                    "peak {peak}, nearest {nearest}, mean {:?}",
                    mean[k]
                );
            }
        }
        Ok(())
    }

    #[test]
    fn window_scale_sets_the_starting_width_and_is_checked() -> Result<()> {
        let dev = Device::Cpu;
        let gaussian = SoftAttentionMnistConfig { hidden: 6, ..SoftAttentionMnistConfig::tiny(Relation::Gaussian) };
        let zero = Tensor::zeros((2, 6), candle_core::DType::F32, &dev)?;
        // a zero state gives the starting scale: 0.05 + softplus(bias) with the default, and
        // exactly `window_scale` when the bias is zero
        for (ws, want) in [(None, 0.05 + std::f32::consts::LN_2), (Some(0.3), 0.3f32)] {
            let vm = SeededVarMap::new(Seed(3));
            let model = SoftAttentionMnist::new(
                &SoftAttentionMnistConfig { window_scale: ws, ..gaussian.clone() },
                &DataShape::images((1, 8, 8), 3),
                vm.builder(&dev),
            )?;
            let Relator::Gaussian(g) = &model.relator else { panic!("gaussian relator") };
            for (name, var) in vm.sorted_vars() {
                if name.ends_with("params.bias") {
                    var.set(&var.zeros_like()?)?;
                }
            }
            let (_, scale, _) = g.window_params(&zero)?;
            for s in scale.flatten_all()?.to_vec1::<f32>()? {
                assert!((s - want).abs() < 1e-5, "window_scale {ws:?}: scale {s}, want {want}");
            }
        }
        for bad in [0.05, 0.0, -1.0, f64::NAN] {
            let vm = SeededVarMap::new(Seed(3));
            let cfg = SoftAttentionMnistConfig { window_scale: Some(bad), ..gaussian.clone() };
            let e = SoftAttentionMnist::new(&cfg, &DataShape::images((1, 8, 8), 3), vm.builder(&dev))
                .err()
                .map(|e| e.to_string());
            assert!(e.as_deref().is_some_and(|e| e.contains("window_scale")), "{bad}: {e:?}");
        }
        Ok(())
    }
}

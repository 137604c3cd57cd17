//! "Learn to Pay Attention" (Jetley, Lord, Lee, Torr 2018): attention estimators trained into a
//! CNN classifier.
//!
//! A VGG-style backbone (blocks of 3x3 conv, batch norm, ReLU, max-pooling) gives local features
//! l^s at some of its blocks and, from its end, a global vector g (global average pooling and a
//! fully connected layer). At each attended block an estimator ([`Compatibility`]) scores every
//! cell against g, `pc`: `<u, l_i + g>` or `dp`: `<l_i, g>` (l projected to g's width where they
//! differ), normalises the scores over space (softmax) or per cell (sigmoid), and pools the
//! block's features with them into g_a^s. The classifier reads only these attended vectors:
//! `concat` (one linear layer on [g_a^1; g_a^2; ...]) or `indep` (one per block, their scores
//! averaged). With `attention = false` the same backbone classifies g itself: the reference.
//!
//! Its attention map is the last attended block's weights (for sigmoid gates, rescaled to sum to
//! 1 for pictures and grounding); every block's map is kept for pictures. The backbone's last
//! feature map and the scores computed from it are offered for Grad-CAM
//! ([`crate::explain`]), so attention trained in and attention read off afterwards can be
//! compared on the same model.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use gaze_attention::{Attend, Compatibility, CompatibilityConfig, CompatibilityKind, Normalization};
use gaze_encoders::{ConvNet, ConvNetConfig, Stage};
use gaze_tensor::seed::Rng;

use crate::model::{AttentionMap, Batch, DataShape, Mode, Model, Output, Scores};

/// How the attended vectors become class scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LtpaHead {
    /// One linear classifier on the concatenated attended vectors.
    #[default]
    Concat,
    /// One linear classifier per attended block, their scores averaged.
    Indep,
}

/// Settings of [`LearnToPayAttention`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LtpaConfig {
    /// The backbone (`in_channels` is taken from the data).
    pub backbone: ConvNetConfig,
    /// The blocks whose outputs are attended (0-based; the paper's att2 / att3 read the last two
    /// or three pooled stages before the end).
    pub attend: Vec<usize>,
    /// Width of g (0: the last block's channels).
    pub global_dim: usize,
    /// `pc` or `dp`.
    pub compatibility: CompatibilityKind,
    /// `softmax` over space or `sigmoid` per cell.
    pub normalization: Normalization,
    /// `concat` or `indep`.
    pub head: LtpaHead,
    /// False: the reference, classifying g without attention.
    pub attention: bool,
    /// Attend each block's output before its pooling (a grid `pool` times finer) rather than
    /// after it. The same either way when the backbone does not pool.
    pub before_pool: bool,
    /// The attended block whose map is the model's attention (pictures and grounding metrics);
    /// None: the last one attended. Every map is trained either way; this chooses the one shown.
    pub map_block: Option<usize>,
}

impl Default for LtpaConfig {
    /// VGG blocks of 32, 64, 128 and 128 channels; the middle two attended (att2), `pc`, softmax,
    /// `concat`.
    fn default() -> Self {
        Self {
            backbone: ConvNetConfig::vgg(1, vec![32, 64, 128, 128]),
            attend: vec![1, 2],
            global_dim: 0,
            compatibility: CompatibilityKind::Pc,
            normalization: Normalization::Softmax,
            head: LtpaHead::Concat,
            attention: true,
            before_pool: false,
            map_block: None,
        }
    }
}

impl LtpaConfig {
    /// A tiny model for tests (16x16 images, three blocks of 4, 8 and 8 channels).
    pub fn tiny() -> Self {
        Self { backbone: ConvNetConfig::vgg(1, vec![4, 8, 8]), attend: vec![0, 1], ..Self::default() }
    }
}

/// The model.
#[derive(Debug, Clone)]
pub struct LearnToPayAttention {
    cfg: LtpaConfig,
    backbone: ConvNet,
    global: Linear,
    estimators: Vec<Compatibility>,
    heads: Vec<Linear>,
}

/// What one pass computes, for the model and for Grad-CAM.
struct Pass {
    /// The backbone's last feature map after its pooling (b, c, h, w).
    last: Tensor,
    /// Class scores (b, classes).
    logits: Tensor,
    /// Each attended block's weights (b, h_s, w_s).
    maps: Vec<Tensor>,
}

impl LearnToPayAttention {
    /// Builds the model for the images and classes of `shape`. Errors name an attended block the
    /// backbone does not have, or an input too small for its pooling.
    pub fn new(cfg: &LtpaConfig, shape: &DataShape, vb: VarBuilder) -> Result<Self> {
        let msg = |m: String| candle_core::Error::Msg(format!("learn_to_pay_attention: {m}"));
        let (c, h, w) = shape.input;
        let bcfg = ConvNetConfig { in_channels: c, ..cfg.backbone.clone() };
        let blocks = bcfg.channels.len();
        let (last, oh, ow) = bcfg.output_shape(h, w);
        if oh == 0 || ow == 0 {
            return Err(msg(format!("a {h}x{w} input is too small for {blocks} pooled blocks")));
        }
        if cfg.attention && cfg.attend.is_empty() {
            return Err(msg("attend names no block (set attention = false for the reference)".into()));
        }
        if let Some(&b) = cfg.attend.iter().find(|&&b| b >= blocks) {
            return Err(msg(format!("attend names block {b}, the backbone has blocks 0..{}", blocks - 1)));
        }
        if let Some(b) = cfg.map_block.filter(|b| !cfg.attend.contains(b)) {
            return Err(msg(format!("map_block {b} is not one of the attended blocks {:?}", cfg.attend)));
        }
        let gd = if cfg.global_dim == 0 { last } else { cfg.global_dim };
        let mut estimators = vec![];
        let mut heads = vec![];
        if cfg.attention {
            for (k, &b) in cfg.attend.iter().enumerate() {
                let ccfg = CompatibilityConfig {
                    kind: cfg.compatibility,
                    local_dim: bcfg.channels[b],
                    global_dim: gd,
                    normalization: cfg.normalization,
                };
                estimators.push(Compatibility::new(&ccfg, vb.pp(format!("att{k}")))?);
            }
            match cfg.head {
                LtpaHead::Concat => heads.push(candle_nn::linear(gd * cfg.attend.len(), shape.classes, vb.pp("head"))?),
                LtpaHead::Indep => {
                    for k in 0..cfg.attend.len() {
                        heads.push(candle_nn::linear(gd, shape.classes, vb.pp(format!("head{k}")))?);
                    }
                }
            }
        } else {
            heads.push(candle_nn::linear(gd, shape.classes, vb.pp("head"))?);
        }
        Ok(Self {
            cfg: cfg.clone(),
            backbone: ConvNet::new(&bcfg, vb.pp("backbone"))?,
            global: candle_nn::linear(last, gd, vb.pp("global"))?,
            estimators,
            heads,
        })
    }

    fn pass(&self, images: &Tensor, train: bool) -> Result<Pass> {
        let stages = self.backbone.forward_stages(images, train)?;
        let last = self.last_unpooled(&stages)?;
        self.after_backbone(&stages, last)
    }

    fn last_unpooled(&self, stages: &[Stage]) -> Result<Tensor> {
        stages.last().map(|s| s.unpooled.clone()).ok_or_else(|| candle_core::Error::Msg("ltpa: no blocks".into()))
    }

    /// Everything after the backbone, from its block outputs (`last_unpooled` is the final
    /// block's output before its pooling, passed separately so that Grad-CAM can hold it: every
    /// path to the scores, through g and through an estimator on the last block, goes through it).
    fn after_backbone(&self, stages: &[Stage], last_unpooled: Tensor) -> Result<Pass> {
        let last = self.backbone.pool(&last_unpooled)?;
        let g = self.global.forward(&last.mean(D::Minus1)?.mean(D::Minus1)?)?.relu()?;
        if !self.cfg.attention {
            let logits = self.heads[0].forward(&g)?;
            return Ok(Pass { last, logits, maps: vec![] });
        }
        let (mut attended, mut maps) = (vec![], vec![]);
        for (est, &b) in self.estimators.iter().zip(&self.cfg.attend) {
            let l = match (b + 1 == stages.len(), self.cfg.before_pool) {
                (true, true) => &last_unpooled,
                (true, false) => &last,
                (false, true) => &stages[b].unpooled,
                (false, false) => &stages[b].pooled,
            };
            let (n, _, h, w) = l.dims4()?;
            let local = l.flatten_from(2)?.transpose(1, 2)?.contiguous()?; // (b, h*w, c)
            let a = est.attend(&local, &g)?;
            attended.push(a.context);
            maps.push(a.weights.reshape((n, h, w))?);
        }
        let logits = match self.cfg.head {
            LtpaHead::Concat => self.heads[0].forward(&Tensor::cat(&attended, 1)?)?,
            LtpaHead::Indep => {
                let per: Vec<Tensor> =
                    self.heads.iter().zip(&attended).map(|(h, a)| h.forward(a)).collect::<Result<_>>()?;
                (Tensor::stack(&per, 0)?.sum(0)? / per.len() as f64)?
            }
        };
        Ok(Pass { last, logits, maps })
    }

    /// Each attended block's map for `images` (evaluation mode), (b, h_s, w_s) each.
    pub fn maps(&self, images: &Tensor) -> Result<Vec<Tensor>> {
        Ok(self.pass(images, false)?.maps)
    }
}

impl Model for LearnToPayAttention {
    /// The backbone's cells: stride-2 blocks centre their first cell on the first pixel.
    fn cell_frame(&self, grid: (usize, usize), image: (usize, usize)) -> Option<crate::CellFrame> {
        self.backbone.config().cell_frame(grid, image)
    }
    /// Shapes: images (b, c, h, w), targets (b,) -> logits (b, classes); loss `classify`; the last
    /// attended block's map (the reference: the last feature map's norm, as the ConvNet shows).
    fn forward(&self, batch: &Batch, mode: Mode, _rng: &mut Rng) -> Result<Output> {
        let p = self.pass(&batch.images, mode.train)?;
        let classify = candle_nn::loss::cross_entropy(&p.logits, batch.targets.classes("learn_to_pay_attention")?)?;
        let shown = match self.cfg.map_block {
            Some(b) => self.cfg.attend.iter().position(|&a| a == b).and_then(|k| p.maps.get(k)),
            None => p.maps.last(),
        };
        let attention = match shown {
            Some(m) => {
                let total = m.sum_keepdim(D::Minus1)?.sum_keepdim(D::Minus2)?;
                let weights = m.broadcast_div(&(total + 1e-12)?)?.detach();
                let what = match self.cfg.normalization {
                    Normalization::Softmax => "attention",
                    Normalization::Sigmoid => "attention gates (rescaled to sum 1)",
                };
                let block = self.cfg.map_block.or(self.cfg.attend.last().copied()).unwrap_or(0);
                AttentionMap::Grid { weights, title: format!("{what}, block {block}") }
            }
            None => {
                let norm = p.last.sqr()?.sum(1)?.sqrt()?;
                let total = (norm.sum_keepdim(D::Minus1)?.sum_keepdim(D::Minus2)? + 1e-12)?;
                AttentionMap::Grid {
                    weights: norm.broadcast_div(&total)?.detach(),
                    title: "feature norm (no attention)".into(),
                }
            }
        };
        Ok(Output {
            scores: Scores::Classes(p.logits),
            losses: vec![("classify".into(), classify)],
            attention: Some(attention),
            stats: vec![],
        })
    }

    /// Each attended block's map (`block<n>`, rescaled to sum 1 as the shown map is), when there
    /// are two or more.
    fn layer_maps(&self, images: &Tensor) -> Result<Vec<(String, Tensor)>> {
        if self.cfg.attend.len() < 2 {
            return Ok(Vec::new());
        }
        let maps = self.maps(images)?;
        self.cfg
            .attend
            .iter()
            .zip(maps)
            .map(|(b, m)| {
                let total = (m.sum_keepdim(D::Minus1)?.sum_keepdim(D::Minus2)? + 1e-12)?;
                Ok((format!("block{b}"), m.broadcast_div(&total)?.detach()))
            })
            .collect()
    }

    /// The last block's output before its pooling (the last conv layer's ReLU, where Grad-CAM
    /// reads VGG) and the class scores computed from it.
    fn conv_features(&self, images: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let stages = self.backbone.forward_stages(images, false)?;
        let Some(last) = stages.last() else { return Ok(None) };
        // A fresh leaf of the same values, so its gradient is read without reaching the backbone.
        let held = candle_core::Var::from_tensor(&last.unpooled)?.as_tensor().clone();
        let p = self.after_backbone(&stages, held.clone())?;
        Ok(Some((held, p.logits)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Targets;
    use crate::test_util::fit_fixed_batch;
    use candle_core::Device;
    use gaze_tensor::{Seed, SeededVarMap};
    use rand::Rng as _;

    fn batch(dev: &Device, n: usize) -> Result<Batch> {
        let mut r = Seed(1).rng();
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
        // The class sets the brightness of a random 6x6 square on a noisy 16x16 image.
        let mut px = vec![0f32; n * 256];
        for (i, &c) in labels.iter().enumerate() {
            for v in &mut px[i * 256..(i + 1) * 256] {
                *v = 0.1 * r.random::<f32>();
            }
            let (y0, x0) = (r.random_range(0..10usize), r.random_range(0..10usize));
            for y in y0..y0 + 6 {
                for x in x0..x0 + 6 {
                    px[i * 256 + y * 16 + x] = 0.3 + 0.35 * c as f32;
                }
            }
        }
        Ok(Batch {
            images: Tensor::from_vec(px, (n, 1, 16, 16), dev)?,
            targets: Targets::Classes(Tensor::from_vec(labels, n, dev)?),
            questions: None,
        })
    }

    fn shape() -> DataShape {
        DataShape::images((1, 16, 16), 3)
    }

    #[test]
    fn tiny_loss_falls_for_every_head_and_the_reference() -> Result<()> {
        let dev = Device::Cpu;
        for cfg in [
            LtpaConfig::tiny(),
            LtpaConfig { head: LtpaHead::Indep, compatibility: CompatibilityKind::Dp, ..LtpaConfig::tiny() },
            LtpaConfig { normalization: Normalization::Sigmoid, ..LtpaConfig::tiny() },
            LtpaConfig { attention: false, ..LtpaConfig::tiny() },
            LtpaConfig { before_pool: true, attend: vec![1, 2], ..LtpaConfig::tiny() },
        ] {
            let vm = SeededVarMap::new(Seed(0));
            let model = LearnToPayAttention::new(&cfg, &shape(), vm.builder(&dev))?;
            let b = batch(&dev, 12)?;
            let (first, last) = fit_fixed_batch(&model, &vm, &b, 40, 1e-2, Mode::train(0.0), &mut Seed(2).rng())?;
            let (f, l) = (first.losses[0].1.to_scalar::<f32>()?, last.losses[0].1.to_scalar::<f32>()?);
            assert!(l < 0.5 * f, "{cfg:?}: {f} -> {l}");
        }
        Ok(())
    }

    #[test]
    fn softmax_maps_sum_to_one_and_indep_averages_its_heads() -> Result<()> {
        let dev = Device::Cpu;
        let vm = SeededVarMap::new(Seed(3));
        let cfg = LtpaConfig { head: LtpaHead::Indep, ..LtpaConfig::tiny() };
        let model = LearnToPayAttention::new(&cfg, &shape(), vm.builder(&dev))?;
        let b = batch(&dev, 5)?;
        let maps = model.maps(&b.images)?;
        assert_eq!(maps.len(), 2);
        assert_eq!((maps[0].dims(), maps[1].dims()), (&[5, 8, 8][..], &[5, 4, 4][..]), "blocks 0 and 1 after pooling");
        for m in &maps {
            for s in m.sum(D::Minus1)?.sum(D::Minus1)?.to_vec1::<f32>()? {
                assert!((s - 1.0).abs() < 1e-5, "{s}");
            }
        }
        // indep: the mean of each head on its own attended vector, recomputed from the parts.
        let outs = model.backbone.forward_all(&b.images, false)?;
        let last = outs.last().cloned().ok_or_else(|| candle_core::Error::Msg("no blocks".into()))?;
        let g = model.global.forward(&last.mean(D::Minus1)?.mean(D::Minus1)?)?.relu()?;
        let mut sum = Tensor::zeros((5, 3), candle_core::DType::F32, &dev)?;
        for (k, &blk) in cfg.attend.iter().enumerate() {
            let local = outs[blk].flatten_from(2)?.transpose(1, 2)?.contiguous()?;
            let a = model.estimators[k].attend(&local, &g)?;
            sum = (sum + model.heads[k].forward(&a.context)?)?;
        }
        let want = (sum / 2.0)?;
        let got = model.forward(&b, Mode::eval(), &mut Seed(0).rng())?.scores.tensor().clone();
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        // Before pooling, each map is the block's own grid, twice as fine; the last block's
        // unpooled map is what Grad-CAM holds.
        let before = LtpaConfig { before_pool: true, attend: vec![1, 2], ..cfg.clone() };
        let model = LearnToPayAttention::new(&before, &shape(), vm.builder(&dev))?;
        let maps = model.maps(&b.images)?;
        assert_eq!((maps[0].dims(), maps[1].dims()), (&[5, 8, 8][..], &[5, 4, 4][..]), "blocks 1 and 2 before pooling");
        let Some((held, logits)) = model.conv_features(&b.images)? else { panic!("a feature map") };
        assert_eq!((held.dims(), logits.dims()), (&[5, 8, 4, 4][..], &[5, 3][..]));
        let scores = model.forward(&b, Mode::eval(), &mut Seed(0).rng())?.scores.tensor().clone();
        assert!((scores - logits)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5, "the held map gives the same scores");
        // A block the backbone does not have is named.
        let bad = LtpaConfig { attend: vec![0, 3], ..LtpaConfig::tiny() };
        let e =
            LearnToPayAttention::new(&bad, &shape(), vm.builder(&dev)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("block 3"), "{e}");
        // The map shown is the chosen attended block's (by default the last one's).
        let shown = |m: &LearnToPayAttention| -> Result<Vec<usize>> {
            match m.forward(&b, Mode::eval(), &mut Seed(0).rng())?.attention {
                Some(AttentionMap::Grid { weights, .. }) => Ok(weights.dims().to_vec()),
                _ => Err(candle_core::Error::Msg("a grid".into())),
            }
        };
        let first = LtpaConfig { map_block: Some(0), ..LtpaConfig::tiny() };
        assert_eq!(shown(&LearnToPayAttention::new(&first, &shape(), vm.builder(&dev))?)?, [5, 8, 8]);
        assert_eq!(shown(&LearnToPayAttention::new(&LtpaConfig::tiny(), &shape(), vm.builder(&dev))?)?, [5, 4, 4]);
        let bad = LtpaConfig { map_block: Some(2), ..LtpaConfig::tiny() };
        let e =
            LearnToPayAttention::new(&bad, &shape(), vm.builder(&dev)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("map_block 2"), "{e}");
        // Every attended block's map, named, each summing to 1 per image; the last equals the
        // map shown by default. One attended block: no layer maps (its map is the one shown).
        let model = LearnToPayAttention::new(&LtpaConfig::tiny(), &shape(), vm.builder(&dev))?;
        let layers = model.layer_maps(&b.images)?;
        let names: Vec<&str> = layers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["block0", "block1"]);
        for (_, m) in &layers {
            let sums = m.sum(D::Minus1)?.sum(D::Minus1)?.to_vec1::<f32>()?;
            assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-4), "{sums:?}");
        }
        let Some(AttentionMap::Grid { weights, .. }) = model.forward(&b, Mode::eval(), &mut Seed(0).rng())?.attention
        else {
            panic!("a grid")
        };
        assert!((weights - &layers[1].1)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-6);
        let one = LtpaConfig { attend: vec![1], ..LtpaConfig::tiny() };
        let fresh = SeededVarMap::new(Seed(9));
        assert!(LearnToPayAttention::new(&one, &shape(), fresh.builder(&dev))?.layer_maps(&b.images)?.is_empty());
        Ok(())
    }
}

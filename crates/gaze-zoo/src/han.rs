//! HAN and AdaHAN, after "Learning Visual Question Answering by Bootstrapping Hard Attention"
//! (Malinowski, Doersch, Santoro, Battaglia, 2018), with the relational head of "A simple neural
//! network module for relational reasoning" (Santoro et al., 2017).
//!
//! A CNN turns the image into a grid of n cells (their (x, y) centres in [-1, 1] appended); the
//! question (an LSTM over its words, or its fixed code) is projected and added to every cell,
//! optionally followed by per-cell fusion layers (1x1 convolutions with ReLU, `fuse_layers`); the
//! presence of a cell is its squared L2 norm (with or without the coordinates,
//! `coords_in_presence`; the head always gets them). With `sub_cells`, each cell also carries the
//! previous conv layer's features at the 2x2 positions under it, for the head only: where in the
//! cell its content lies, at twice the grid's resolution. Selection, by config:
//! - `hard_topk` (HAN): the k cells of highest presence;
//! - `adaptive` (AdaHAN): the cells whose softmax presence weight is at least a threshold
//!   (1/n by default), a per-example number. With `topk_warmup` (gaze's addition, not the
//!   paper's), training passes keep the top k for a first share of the steps, and evaluation is
//!   adaptive throughout; with `cap_at_k` (also gaze's), at most k cells are kept;
//! - `soft`: every cell, scaled by n times its softmax presence weight;
//! - `all`: every cell as it is (no attention).
//!
//! The selection itself is not differentiated; the kept cells' features are, so presence is
//! learned through what the head does with the kept cells ("bootstrapping"). Heads: `relational`
//! (g-MLP on every pair of kept cells with the question, summed, then an f-MLP; pairs grow as
//! k^2, which is where hard attention saves compute) or `pooled` (mean of the kept cells with the
//! question, then an MLP). With `adaptive`, the g-MLP runs on each example's own kept pairs
//! (m_i^2 of them), not on pairs padded to the batch's largest count, so the saving is in wall time.
//!
//! The batch groups questions by image: the CNN runs once per image, and each question picks its
//! image's cells (`Questions::image`).

use candle_core::{Result, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use gaze_attention::{AdaptiveHard, AdaptiveHardConfig, HardTopK, HardTopKConfig};
use gaze_encoders::{ConvNet, ConvNetConfig, TextEncoder, TextEncoderConfig};
use gaze_tensor::seed::Rng;

use crate::model::{AttentionMap, Batch, DataShape, Mode, Model, Output, Scores};
pub use crate::relation_net::PairNorm;
use crate::relation_net::{FMlp, RelationHead, RelationHeadConfig};

/// Which cells go on to the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// HAN: the k cells of highest presence.
    HardTopk,
    /// AdaHAN: the cells whose softmax presence passes the threshold.
    Adaptive,
    /// Every cell, weighted by its softmax presence (times n).
    Soft,
    /// Every cell (no attention).
    All,
}

/// What answers from the selected cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Head {
    /// A relation network over pairs of selected cells.
    Relational,
    /// The mean of the selected cells and the question, through an MLP.
    Pooled,
}

/// How the question is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuestionInput {
    /// Its words, through an embedding and an LSTM.
    Text,
    /// Its fixed code vector (Sort-of-CLEVR's 11-d encoding).
    Code,
}

/// Settings of [`Han`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HanConfig {
    /// The image encoder (its `in_channels` is taken from the data).
    pub cnn: ConvNetConfig,
    /// How the question is read.
    pub question: QuestionInput,
    /// Word embedding width (text questions).
    pub embed: usize,
    /// Question LSTM width (text questions).
    pub question_hidden: usize,
    /// Which cells go on.
    pub selection: Selection,
    /// Cells kept by `hard_topk`.
    pub k: usize,
    /// `adaptive` threshold on the softmax presence (default 1 / n).
    pub threshold: Option<f32>,
    /// `adaptive`: softmax over per-example z-scores of the presence (scale-free), not the raw
    /// squared norms (whose softmax is nearly one-hot once features grow).
    pub standardize_presence: bool,
    /// The head.
    pub head: Head,
    /// Width of the relational g-MLP.
    pub g_hidden: usize,
    /// Layers of the g-MLP (>= 1).
    pub g_layers: usize,
    /// Width of the f-MLP (both heads).
    pub f_hidden: usize,
    /// Hidden layers of the f-MLP (>= 1, each `f_hidden` wide, ReLU), before the answer layer.
    /// 1 (default): `f1` then the answer layer `f2`; the Relation Networks paper's f has two
    /// (256, 256). The f-MLP runs once per question, so its depth costs little beside the g-MLP,
    /// which runs once per pair.
    pub f_layers: usize,
    /// How the relational head scales its sum over pairs.
    pub pair_norm: PairNorm,
    /// Per-cell layers (a 1x1 convolution and ReLU each, width kept) applied after the question
    /// is added and before presence is measured. With none, presence is ||cell + q||^2, whose
    /// ranking of cells moves with the question only through <cell, q>; a fusion layer lets
    /// the question gate which features (say, which colour) grow large.
    pub fuse_layers: usize,
    /// Whether the cells' (x, y) coordinates count in the presence (true: they are appended to
    /// the CNN features before the question is added). With false they are appended only after
    /// selection, for the head: otherwise corner cells (|x|, |y| near 1) outrank empty centre
    /// cells on coordinates alone, and a net trained from scratch keeps picking empty corners
    /// (default false).
    pub coords_in_presence: bool,
    /// Append to each cell, after presence is measured, the previous conv layer's features at the
    /// 2x2 positions under it (that map must be exactly twice the grid, as with stride-2 or
    /// pool-2 blocks). A kept cell's coordinates are its centre; these say which quarter of the
    /// cell holds its content, so the head can tell positions at twice the grid's resolution
    /// (an object in the middle column of a 5x5 grid is left or right of the image's midline).
    /// The presence, and so the selection, does not see them.
    pub sub_cells: bool,
    /// `adaptive` only: for this share of the training steps (in [0, 1)), training passes keep the
    /// top `k` cells, as HAN does, before the adaptive rule takes over; validation, test and
    /// inference always use the adaptive rule. Presence is learned by bootstrapping from what the
    /// head does with the kept cells; a fixed k gives every example the same number of cells to
    /// learn from while the norms are still unformed. 0 (default): adaptive from the first step.
    pub topk_warmup: f64,
    /// `adaptive` only: keep at most `k` cells per question (of the cells over the threshold, those
    /// of highest weight). gaze's addition, not the paper's: the threshold alone does not bound
    /// the count (see [`AdaptiveHardConfig::max_cells`]), so HAN's k serves as a budget; the
    /// statistic `at_cap_pct` says how often the cap decided.
    pub cap_at_k: bool,
}

impl Default for HanConfig {
    /// HAN with a relational head: three 24-channel conv blocks (3x3, stride 2, batch norm, no
    /// pooling, as every HAN experiment here uses them), k = 16, g-MLP 3 x 128, f 128.
    fn default() -> Self {
        Self {
            cnn: ConvNetConfig {
                in_channels: 3,
                channels: vec![24, 24, 24],
                stride: 2,
                pool: 1,
                batch_norm: true,
                ..ConvNetConfig::default()
            },
            question: QuestionInput::Text,
            embed: 32,
            question_hidden: 64,
            selection: Selection::HardTopk,
            k: 16,
            threshold: None,
            standardize_presence: false,
            head: Head::Relational,
            g_hidden: 128,
            g_layers: 3,
            f_hidden: 128,
            f_layers: 1,
            pair_norm: PairNorm::Sum,
            fuse_layers: 0,
            coords_in_presence: false,
            sub_cells: false,
            topk_warmup: 0.0,
            cap_at_k: false,
        }
    }
}

impl HanConfig {
    /// The relational head's settings.
    pub fn relation_head(&self) -> RelationHeadConfig {
        RelationHeadConfig {
            g_hidden: self.g_hidden,
            g_layers: self.g_layers,
            f_hidden: self.f_hidden,
            f_layers: self.f_layers,
            pair_norm: self.pair_norm,
        }
    }

    /// A tiny model for tests (16x16 images: a 4x4 grid).
    pub fn tiny(selection: Selection, head: Head) -> Self {
        Self {
            cnn: ConvNetConfig { in_channels: 3, channels: vec![4, 6], ..ConvNetConfig::tiny() },
            question: QuestionInput::Text,
            embed: 4,
            question_hidden: 6,
            selection,
            k: 4,
            threshold: None,
            standardize_presence: false,
            head,
            g_hidden: 8,
            g_layers: 2,
            f_hidden: 8,
            f_layers: 1,
            pair_norm: PairNorm::Sum,
            fuse_layers: 0,
            coords_in_presence: true,
            sub_cells: false,
            topk_warmup: 0.0,
            cap_at_k: false,
        }
    }
}

/// The cells a head reads: `cells` (q, m, d) and, when rows keep different numbers of cells,
/// `valid` (q, m) of 0/1.
pub struct Selected {
    /// The selected cells.
    pub cells: Tensor,
    /// Which of them are real (None: all). When set, row r's real cells are its first
    /// `counts[r]` (the rest is zero padding), which is what the relational head relies on.
    pub valid: Option<Tensor>,
    /// Kept cells over the grid (q, n) of 0/1, or the soft weights (q, n).
    pub map: Tensor,
    /// Number of cells kept per row.
    pub counts: Vec<usize>,
}

#[derive(Debug, Clone)]
enum QuestionNet {
    Text(TextEncoder),
    Code,
}

#[derive(Debug, Clone)]
enum HeadNet {
    Relational(RelationHead),
    Pooled { f: FMlp },
}

/// The model.
#[derive(Debug, Clone)]
pub struct Han {
    cfg: HanConfig,
    cnn: ConvNet,
    question: QuestionNet,
    q_proj: Linear,
    fuse: Vec<Linear>,
    head: HeadNet,
    coords: Tensor,
    grid: (usize, usize),
    cell_dim: usize,
    q_dim: usize,
}

impl Han {
    /// Builds the model for `shape` (image size, answer classes, vocabulary, code width).
    pub fn new(cfg: &HanConfig, shape: &DataShape, vb: VarBuilder) -> Result<Self> {
        let msg = |m: String| candle_core::Error::Msg(format!("han: {m}"));
        let (c, h, w) = shape.input;
        let cnn_cfg = ConvNetConfig { in_channels: c, ..cfg.cnn.clone() };
        let (d, gh, gw) = cnn_cfg.output_shape(h, w);
        let n = gh * gw;
        if n == 0 {
            return Err(msg(format!("the CNN leaves no cells of a {h}x{w} image")));
        }
        if !(0.0..1.0).contains(&cfg.topk_warmup) {
            return Err(msg(format!("topk_warmup = {} must be in [0, 1) (a share of training)", cfg.topk_warmup)));
        }
        let warmup = cfg.topk_warmup > 0.0;
        if warmup && cfg.selection != Selection::Adaptive {
            return Err(msg(format!(
                "topk_warmup = {} needs selection = \"adaptive\" (it is {:?})",
                cfg.topk_warmup, cfg.selection
            )));
        }
        if cfg.cap_at_k && cfg.selection != Selection::Adaptive {
            return Err(msg(format!("cap_at_k = true needs selection = \"adaptive\" (it is {:?})", cfg.selection)));
        }
        // The top k is used by HAN, by AdaHAN's warm-up and as AdaHAN's cap.
        if (cfg.selection == Selection::HardTopk || warmup || cfg.cap_at_k) && (cfg.k == 0 || cfg.k > n) {
            let user = match (warmup, cfg.cap_at_k) {
                (true, _) => " (kept by topk_warmup)",
                (false, true) => " (the cap_at_k bound)",
                (false, false) => "",
            };
            return Err(msg(format!("k = {} must be in 1..={n} (the {gh}x{gw} grid){user}", cfg.k)));
        }
        if cfg.g_layers == 0 || cfg.g_hidden == 0 || cfg.f_hidden == 0 || cfg.f_layers == 0 {
            return Err(msg(format!(
                "g_layers, g_hidden, f_hidden and f_layers must be >= 1 (they are {}, {}, {}, {})",
                cfg.g_layers, cfg.g_hidden, cfg.f_hidden, cfg.f_layers
            )));
        }
        AdaptiveHard::new(&Self::adaptive_config(cfg))?;
        let cnn = ConvNet::new(&cnn_cfg, vb.pp("cnn"))?;
        let (question, q_dim) = match cfg.question {
            QuestionInput::Text => {
                if shape.vocab == 0 {
                    return Err(msg("text questions need a vocabulary (the data gave none)".into()));
                }
                let t = TextEncoderConfig { vocab: shape.vocab, embed: cfg.embed, hidden: cfg.question_hidden };
                (QuestionNet::Text(TextEncoder::new(&t, vb.pp("question"))?), cfg.question_hidden)
            }
            QuestionInput::Code => {
                if shape.code_dim == 0 {
                    return Err(msg("question = \"code\" needs question codes (the data has none)".into()));
                }
                (QuestionNet::Code, shape.code_dim)
            }
        };
        let sub_dim = if cfg.sub_cells {
            let layers = cnn_cfg.channels.len();
            if layers < 2 {
                return Err(msg("sub_cells needs at least two conv blocks (it reads the one before the last)".into()));
            }
            let prev = ConvNetConfig { channels: cnn_cfg.channels[..layers - 1].to_vec(), ..cnn_cfg.clone() };
            let (pd, ph, pw) = prev.output_shape(h, w);
            if (ph, pw) != (2 * gh, 2 * gw) {
                return Err(msg(format!(
                    "sub_cells needs the map before the last block to be twice the {gh}x{gw} grid; it is {ph}x{pw}"
                )));
            }
            4 * pd
        } else {
            0
        };
        let cell_dim = d + sub_dim + 2;
        let scored_dim = if cfg.coords_in_presence { cell_dim } else { d };
        let q_proj = candle_nn::linear(q_dim, scored_dim, vb.pp("q_proj"))?;
        let fuse = (0..cfg.fuse_layers)
            .map(|i| candle_nn::linear(scored_dim, scored_dim, vb.pp(format!("fuse{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let hvb = vb.pp("head");
        let head = match cfg.head {
            Head::Relational => HeadNet::Relational(RelationHead::new(
                cell_dim,
                q_dim,
                &cfg.relation_head(),
                shape.classes,
                hvb.clone(),
            )?),
            Head::Pooled => HeadNet::Pooled {
                f: FMlp::new(cell_dim + q_dim, cfg.f_hidden, cfg.f_layers, shape.classes, hvb.clone())?,
            },
        };
        let coords = gaze_tensor::ops::cell_centres(gh, gw, vb.device())?;
        Ok(Self { cfg: cfg.clone(), cnn, question, q_proj, fuse, head, coords, grid: (gh, gw), cell_dim, q_dim })
    }

    /// The grid (rows, cols).
    pub fn grid(&self) -> (usize, usize) {
        self.grid
    }

    /// Image cells as the head sees them before the question: features, coordinates and (with
    /// `sub_cells`) the 2x2 features under each cell: (b, c, h, w) -> (b, n, cell width).
    pub fn cells(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let (f, sub) = self.features_and_sub_cells(images, train)?;
        let f = self.with_coords(&f)?;
        match sub {
            Some(sub) => Tensor::cat(&[f, sub], 2),
            None => Ok(f),
        }
    }

    /// The CNN's grid as cells, without coordinates: (b, c, h, w) -> (b, n, d).
    fn features(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        self.cnn.forward(images, train)?.flatten_from(2)?.transpose(1, 2)
    }

    /// The grid as cells (b, n, d) and, with `sub_cells`, the previous map's 2x2 features under
    /// each cell (b, n, 4 c'), in the order (top-left, top-right, bottom-left, bottom-right).
    fn features_and_sub_cells(&self, images: &Tensor, train: bool) -> Result<(Tensor, Option<Tensor>)> {
        if !self.cfg.sub_cells {
            return Ok((self.features(images, train)?, None));
        }
        let mut maps = self.cnn.forward_all(images, train)?;
        let (last, prev) = match (maps.pop(), maps.pop()) {
            (Some(l), Some(p)) => (l, p),
            _ => return Err(candle_core::Error::Msg("han: sub_cells needs two conv blocks".into())),
        };
        let (b, c, _, _) = prev.dims4()?;
        let (gh, gw) = self.grid;
        // (b, c, gh, 2, gw, 2) -> (b, gh, gw, 2, 2, c) -> (b, n, 4 c)
        let sub = prev.reshape((b, c, gh, 2, gw, 2))?.permute((0, 2, 4, 3, 5, 1))?.reshape((b, gh * gw, 4 * c))?;
        Ok((last.flatten_from(2)?.transpose(1, 2)?, Some(sub)))
    }

    /// Cells (b, n, d) with their coordinates appended: (b, n, d + 2).
    fn with_coords(&self, cells: &Tensor) -> Result<Tensor> {
        let (b, n, _) = cells.dims3()?;
        Tensor::cat(&[cells.clone(), self.coords.broadcast_as((b, n, 2))?.contiguous()?], 2)
    }

    /// Selects cells of question-conditioned features x (q, n, d) by the configured rule.
    pub fn select(&self, x: &Tensor) -> Result<Selected> {
        self.select_scored(x, x)
    }

    /// Selects cells of x (q, n, d) by the configured rule, presence measured on `scored`
    /// (q, n, e).
    pub fn select_scored(&self, x: &Tensor, scored: &Tensor) -> Result<Selected> {
        self.select_by(self.cfg.selection, x, scored)
    }

    /// The adaptive selector's settings.
    fn adaptive_config(cfg: &HanConfig) -> AdaptiveHardConfig {
        AdaptiveHardConfig {
            threshold: cfg.threshold,
            standardize: cfg.standardize_presence,
            max_cells: cfg.cap_at_k.then_some(cfg.k),
        }
    }

    /// The rule a pass uses: `topk_warmup` turns an adaptive model's training passes into
    /// top-k ones for the first share of training.
    fn selection(&self, mode: Mode) -> Selection {
        if mode.train && self.cfg.selection == Selection::Adaptive && mode.progress < self.cfg.topk_warmup {
            Selection::HardTopk
        } else {
            self.cfg.selection
        }
    }

    fn select_by(&self, selection: Selection, x: &Tensor, scored: &Tensor) -> Result<Selected> {
        let (q, n, _) = x.dims3()?;
        match selection {
            Selection::HardTopk => {
                let s = HardTopK::new(&HardTopKConfig { k: self.cfg.k })?.select_scored(x, scored)?;
                Ok(Selected { cells: s.kept, valid: None, map: s.mask, counts: vec![self.cfg.k; q] })
            }
            Selection::Adaptive => {
                let s = AdaptiveHard::new(&Self::adaptive_config(&self.cfg))?.select_scored(x, scored)?;
                // The kept cells, padded to the largest count in the batch.
                let (cells, valid) = s.gather(x)?;
                Ok(Selected { cells, valid: Some(valid), map: s.mask, counts: s.counts })
            }
            Selection::Soft => {
                let w = candle_nn::ops::softmax(&gaze_tensor::ops::presence(scored)?, D::Minus1)?;
                let cells = x.broadcast_mul(&(w.unsqueeze(2)? * n as f64)?)?;
                Ok(Selected { cells, valid: None, map: w, counts: vec![n; q] })
            }
            Selection::All => {
                let map = Tensor::ones((q, n), x.dtype(), x.device())?;
                Ok(Selected { cells: x.clone(), valid: None, map, counts: vec![n; q] })
            }
        }
    }

    fn head(&self, sel: &Selected, q: &Tensor) -> Result<Tensor> {
        match &self.head {
            HeadNet::Relational(r) => r.forward(&sel.cells, sel.valid.is_some(), &sel.counts, q),
            HeadNet::Pooled { f } => {
                let pooled = match &sel.valid {
                    Some(v) => sel.cells.sum(1)?.broadcast_div(&v.sum_keepdim(1)?.clamp(1.0, f64::INFINITY)?)?,
                    None => sel.cells.mean(1)?,
                };
                f.forward(&Tensor::cat(&[pooled, q.clone()], 1)?)
            }
        }
    }

    /// Multiply-adds of the head for one example that keeps `m` cells (the compute attention saves).
    pub fn head_macs(&self, m: usize) -> f64 {
        let (m, d, q, h, f) =
            (m as f64, self.cell_dim as f64, self.q_dim as f64, self.cfg.g_hidden as f64, self.cfg.f_hidden as f64);
        // The f-MLP's further hidden layers (f x f each); its answer layer is not counted.
        let f_more = (self.cfg.f_layers as f64 - 1.0) * f * f;
        f_more
            + match self.cfg.head {
                Head::Relational => {
                    2.0 * m * d * h + q * h + m * m * h + (self.cfg.g_layers as f64 - 1.0) * m * m * h * h + h * f
                }
                Head::Pooled => m * d + (d + q) * f,
            }
    }
}

impl Model for Han {
    /// The CNN's cells.
    fn cell_frame(&self, grid: (usize, usize), image: (usize, usize)) -> Option<crate::CellFrame> {
        self.cnn.config().cell_frame(grid, image)
    }
    /// Shapes: images (b, c, h, w), questions for q rows -> logits (q, answers), loss `classify`;
    /// statistics `cells_kept_pct` and `head_mflops` (per example); the kept cells (or soft
    /// weights) over the grid.
    fn forward(&self, batch: &Batch, mode: Mode, _rng: &mut Rng) -> Result<Output> {
        let train = mode.train;
        let qs = batch.questions.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("han: the batch has no questions (a VQA data set is needed)".into())
        })?;
        let (f, sub) = self.features_and_sub_cells(&batch.images, train)?;
        let f = if self.cfg.coords_in_presence { self.with_coords(&f)? } else { f };
        let image = qs.image.contiguous()?;
        let cells = f.contiguous()?.index_select(&image, 0)?;
        let q = match &self.question {
            QuestionNet::Text(t) => t.forward(&qs.tokens, &qs.lengths)?.last,
            QuestionNet::Code => qs
                .codes
                .clone()
                .ok_or_else(|| candle_core::Error::Msg("han: question = \"code\" but the batch has no codes".into()))?,
        };
        let mut scored = cells.broadcast_add(&self.q_proj.forward(&q)?.unsqueeze(1)?)?;
        for l in &self.fuse {
            scored = l.forward(&scored)?.relu()?;
        }
        let x = if self.cfg.coords_in_presence { scored.clone() } else { self.with_coords(&scored)? };
        let x = match sub {
            Some(sub) => Tensor::cat(&[x, sub.contiguous()?.index_select(&image, 0)?], 2)?,
            None => x,
        };
        let selection = self.selection(mode);
        let sel = self.select_by(selection, &x, &scored)?;
        let logits = self.head(&sel, &q)?;
        let classify = candle_nn::loss::cross_entropy(&logits, batch.targets.classes("han")?)?;
        let (nq, n) = (sel.counts.len(), self.grid.0 * self.grid.1);
        let kept = sel.counts.iter().sum::<usize>() as f64 / (nq.max(1) * n) as f64 * 100.0;
        let flops = sel.counts.iter().map(|&m| 2.0 * self.head_macs(m)).sum::<f64>() / nq.max(1) as f64 / 1e6;
        let dev = logits.device();
        let mut stats = vec![
            ("cells_kept_pct".to_string(), Tensor::new(kept as f32, dev)?),
            ("head_mflops".to_string(), Tensor::new(flops as f32, dev)?),
        ];
        if self.cfg.cap_at_k && selection == Selection::Adaptive {
            let at_cap = sel.counts.iter().filter(|&&m| m >= self.cfg.k).count() as f64 / nq.max(1) as f64 * 100.0;
            stats.push(("at_cap_pct".to_string(), Tensor::new(at_cap as f32, dev)?));
        }
        let (gh, gw) = self.grid;
        let map = sel.map.detach().reshape((nq, gh, gw))?;
        let attention = match selection {
            Selection::HardTopk | Selection::Adaptive => {
                AttentionMap::Cells { mask: map, title: format!("{selection:?}: kept cells") }
            }
            Selection::Soft => AttentionMap::Grid { weights: map, title: "soft attention".into() },
            Selection::All => {
                let norm = gaze_tensor::ops::presence(&scored.detach())?.reshape((nq, gh, gw))?;
                AttentionMap::Grid { weights: norm, title: "feature norm (no attention)".into() }
            }
        };
        Ok(Output {
            scores: Scores::Classes(logits),
            losses: vec![("classify".into(), classify)],
            attention: Some(attention),
            stats,
        })
    }
}

/// For tests: a cast helper.
#[cfg(test)]
fn f32s(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    t.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::Questions;
    use crate::test_util::{fit_fixed_batch, total};
    use candle_core::{Device, Var};
    use gaze_tensor::{Seed, SeededVarMap};
    use rand::Rng as _;

    pub(crate) fn shape() -> DataShape {
        DataShape { input: (3, 16, 16), classes: 3, vocab: 6, code_dim: 4, max_steps: 0 }
    }

    pub(crate) fn batch(dev: &Device) -> Result<Batch> {
        let mut r = Seed(1).rng();
        let imgs: Vec<f32> = (0..3 * 3 * 256).map(|_| r.random::<f32>()).collect();
        let q = 6;
        let tokens: Vec<u32> = (0..q * 4).map(|i| (i % 5 + 1) as u32).collect();
        Ok(Batch {
            images: Tensor::from_vec(imgs, (3, 3, 16, 16), dev)?,
            targets: crate::model::Targets::Answers(Tensor::from_vec(vec![0u32, 1, 2, 0, 1, 2], q, dev)?),
            questions: Some(Questions {
                image: Tensor::from_vec(vec![0u32, 0, 1, 1, 2, 2], q, dev)?,
                tokens: Tensor::from_vec(tokens, (q, 4), dev)?,
                lengths: Tensor::from_vec(vec![4u32, 3, 2, 4, 1, 4], q, dev)?,
                codes: Some(Tensor::from_vec((0..q * 4).map(|i| (i % 3) as f32).collect::<Vec<_>>(), (q, 4), dev)?),
            }),
        })
    }

    #[test]
    fn every_selection_and_head_trains_on_a_fixed_batch() -> Result<()> {
        let dev = Device::Cpu;
        let plain = [Selection::HardTopk, Selection::Adaptive, Selection::Soft, Selection::All]
            .into_iter()
            .flat_map(|s| [Head::Relational, Head::Pooled].map(|h| HanConfig::tiny(s, h)));
        let fused = HanConfig { fuse_layers: 2, ..HanConfig::tiny(Selection::HardTopk, Head::Relational) };
        let coords_after = [Selection::HardTopk, Selection::Adaptive].map(|s| HanConfig {
            fuse_layers: 1,
            coords_in_presence: false,
            ..HanConfig::tiny(s, Head::Relational)
        });
        let sub_cells = [Selection::HardTopk, Selection::Adaptive].map(|s| HanConfig {
            coords_in_presence: false,
            sub_cells: true,
            ..HanConfig::tiny(s, Head::Relational)
        });
        let deep_f = [Head::Relational, Head::Pooled].map(|h| HanConfig {
            f_layers: 2,
            coords_in_presence: false,
            ..HanConfig::tiny(Selection::HardTopk, h)
        });
        for cfg in plain.chain([fused]).chain(coords_after).chain(sub_cells).chain(deep_f) {
            let (selection, head) = (cfg.selection, cfg.head);
            let vm = SeededVarMap::new(Seed(0));
            let model = Han::new(&cfg, &shape(), vm.builder(&dev))?;
            let b = batch(&dev)?;
            let (first, last) = fit_fixed_batch(&model, &vm, &b, 40, 2e-2, Mode::train(0.0), &mut Seed(2).rng())?;
            let (first, last) = (total(&first)?, total(&last)?);
            assert!(last < 0.5 * first, "{selection:?} {head:?} fuse {}: {first} -> {last}", cfg.fuse_layers);
        }
        Ok(())
    }

    /// Each cell carries the previous map's 2x2 features under it, in reading order, and the
    /// selection does not see them; a CNN whose previous map is not twice the grid is refused.
    #[test]
    fn sub_cells_carry_the_previous_map_under_each_cell() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = HanConfig { coords_in_presence: false, ..HanConfig::tiny(Selection::HardTopk, Head::Relational) };
        let with = HanConfig { sub_cells: true, ..cfg.clone() };
        let [plain, sub] = [cfg, with].map(|c| {
            let vm = SeededVarMap::new(Seed(0));
            Han::new(&c, &shape(), vm.builder(&dev))
        });
        let (plain, sub) = (plain?, sub?);
        let b = batch(&dev)?;
        let (cells, detail) = sub.features_and_sub_cells(&b.images, false)?;
        let detail = detail.map(|d| d.to_vec3::<f32>()).transpose()?.unwrap_or_default();
        let prev: Vec<Vec<Vec<Vec<f32>>>> = {
            let p = &sub.cnn.forward_all(&b.images, false)?[0];
            (0..p.dim(0)?).map(|i| p.get(i)?.to_vec3::<f32>()).collect::<Result<_>>()?
        };
        let (gh, gw) = sub.grid();
        let c = prev[0].len();
        assert_eq!((detail.len(), detail[0].len(), detail[0][0].len()), (3, gh * gw, 4 * c));
        for (img, cells) in detail.iter().enumerate() {
            for (cell, v) in cells.iter().enumerate() {
                let (i, j) = (cell / gw, cell % gw);
                for (quarter, (di, dj)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                    for ch in 0..c {
                        assert_eq!(v[quarter * c + ch], prev[img][ch][2 * i + di][2 * j + dj], "cell {cell}");
                    }
                }
            }
        }
        // the grid features and the presence are those of the model without sub-cells
        let same = (cells - plain.features(&b.images, false)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(same, 0.0);
        assert_eq!(sub.cell_dim, plain.cell_dim + 4 * c);
        assert_eq!(sub.cells(&b.images, false)?.dims(), &[3, gh * gw, sub.cell_dim]);
        let mut rng = Seed(1).rng();
        let (a, p) = (sub.forward(&b, Mode::eval(), &mut rng)?, plain.forward(&b, Mode::eval(), &mut rng)?);
        let masks = [a, p].map(|o| match o.attention {
            Some(AttentionMap::Cells { mask, .. }) => f32s(&mask.flatten_from(1)?),
            _ => Err(candle_core::Error::Msg("no kept-cell mask".into())),
        });
        let [ma, mp] = masks;
        assert_eq!(ma?, mp?);
        // one conv block, or a previous map that is not twice the grid: refused, by name
        let one = HanConfig {
            sub_cells: true,
            cnn: ConvNetConfig { channels: vec![4], ..HanConfig::tiny(Selection::HardTopk, Head::Pooled).cnn },
            ..HanConfig::tiny(Selection::HardTopk, Head::Pooled)
        };
        let both = HanConfig { sub_cells: true, ..HanConfig::tiny(Selection::HardTopk, Head::Pooled) };
        let odd = DataShape { input: (3, 18, 18), ..shape() }; // 18 -> 9 -> 4: 9 is not twice 4
        for (c, s, want) in [(&one, shape(), "two conv blocks"), (&both, odd, "9x9")] {
            let e = Han::new(c, &s, SeededVarMap::new(Seed(0)).builder(&dev)).err().map(|e| e.to_string());
            assert!(e.as_deref().is_some_and(|e| e.contains(want)), "{e:?}");
        }
        Ok(())
    }

    /// A fixed feature map: HAN keeps exactly the k highest-norm cells, AdaHAN exactly the cells
    /// whose softmax presence passes 1/n; gradients reach kept cells and never dropped ones.
    #[test]
    fn selection_keeps_the_right_cells_and_gradients_reach_only_them() -> Result<()> {
        let dev = Device::Cpu;
        let mut r = Seed(3).rng();
        let (q, n, d) = (2, 16, 5);
        let x =
            Var::from_vec((0..q * n * d).map(|_| r.random::<f32>() * 2.0 - 1.0).collect::<Vec<_>>(), (q, n, d), &dev)?;
        let norms: Vec<Vec<f32>> = x
            .as_tensor()
            .to_vec3::<f32>()?
            .iter()
            .map(|row| row.iter().map(|c| c.iter().map(|v| v * v).sum()).collect())
            .collect();
        for selection in [Selection::HardTopk, Selection::Adaptive] {
            let vm = SeededVarMap::new(Seed(0));
            let model = Han::new(&HanConfig::tiny(selection, Head::Relational), &shape(), vm.builder(&dev))?;
            let sel = model.select(x.as_tensor())?;
            let map = f32s(&sel.map)?;
            for (row, norm) in map.iter().zip(&norms) {
                let expect: Vec<f32> = match selection {
                    Selection::HardTopk => {
                        let mut order: Vec<usize> = (0..n).collect();
                        order.sort_by(|&a, &b| norm[b].total_cmp(&norm[a]));
                        (0..n).map(|i| if order[..4].contains(&i) { 1.0 } else { 0.0 }).collect()
                    }
                    _ => {
                        let mx = norm.iter().fold(f32::MIN, |a, &b| a.max(b));
                        let z: f32 = norm.iter().map(|v| (v - mx).exp()).sum();
                        norm.iter().map(|v| if (v - mx).exp() / z >= 1.0 / n as f32 { 1.0 } else { 0.0 }).collect()
                    }
                };
                assert_eq!(row, &expect, "{selection:?}");
            }
            let grads = sel.cells.sqr()?.sum_all()?.backward()?;
            let g = grads.get(x.as_tensor()).map(|t| t.to_vec3::<f32>()).transpose()?.unwrap_or_default();
            for (r, row) in map.iter().enumerate() {
                for (i, &kept) in row.iter().enumerate() {
                    let touched = g[r][i].iter().any(|v| *v != 0.0);
                    assert_eq!(touched, kept > 0.5, "{selection:?} row {r} cell {i}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn adaptive_relational_head_on_kept_pairs_matches_each_row_alone() -> Result<()> {
        // Rows keeping different numbers of cells are answered from their kept pairs only: the
        // batched head gives each row what the dense head gives on that row's kept cells alone.
        // Each row's sum over pairs is scaled by its own count (pair_norm), not the batch's.
        let dev = Device::Cpu;
        let mut r = Seed(3).rng();
        let (q, d) = (6, 6);
        let x = Tensor::from_vec(
            (0..q * 16 * d).map(|_| r.random::<f32>() * 2.0 - 1.0).collect::<Vec<_>>(),
            (q, 16, d),
            &dev,
        )?;
        let code = Tensor::from_vec((0..q * 4).map(|_| r.random::<f32>()).collect::<Vec<_>>(), (q, 4), &dev)?;
        let mut answers = Vec::new();
        for pair_norm in [PairNorm::Sum, PairNorm::PerCell, PairNorm::Mean] {
            let cfg = HanConfig {
                question: QuestionInput::Code,
                pair_norm,
                ..HanConfig::tiny(Selection::Adaptive, Head::Relational)
            };
            let vm = SeededVarMap::new(Seed(0));
            let model = Han::new(&cfg, &shape(), vm.builder(&dev))?;
            assert_eq!((model.grid.0 * model.grid.1, model.cell_dim - 2), (16, d));
            let sel = model.select_scored(&model.with_coords(&x)?, &x)?;
            assert!(sel.counts.iter().any(|&c| c != sel.counts[0]), "counts {:?} should differ", sel.counts);
            let batched = f32s(&model.head(&sel, &code)?)?;
            for (row, &c) in sel.counts.iter().enumerate() {
                let alone = Selected {
                    cells: sel.cells.narrow(0, row, 1)?.narrow(1, 0, c)?,
                    valid: None,
                    map: sel.map.narrow(0, row, 1)?,
                    counts: vec![c],
                };
                let want = f32s(&model.head(&alone, &code.narrow(0, row, 1)?)?)?;
                for (a, b) in batched[row].iter().zip(&want[0]) {
                    assert!((a - b).abs() < 1e-5, "{pair_norm:?} row {row} ({c} cells): {a} vs {b}");
                }
            }
            answers.push(batched);
        }
        // Same weights, different scaling: the answers differ, so the option reaches the head.
        assert_ne!(answers[0], answers[1]);
        assert_ne!(answers[1], answers[2]);
        Ok(())
    }

    #[test]
    fn topk_warmup_trains_as_han_first_and_evaluates_as_adahan() -> Result<()> {
        let dev = Device::Cpu;
        let b = batch(&dev)?;
        let build = |cfg: HanConfig| Han::new(&cfg, &shape(), SeededVarMap::new(Seed(0)).builder(&dev));
        let adaptive = HanConfig::tiny(Selection::Adaptive, Head::Relational);
        let warm = build(HanConfig { topk_warmup: 0.5, ..adaptive.clone() })?;
        let topk = build(HanConfig::tiny(Selection::HardTopk, Head::Relational))?;
        let plain = build(adaptive)?;
        let mask = |m: &Han, mode: Mode| -> Result<Vec<Vec<f32>>> {
            match m.forward(&b, mode, &mut Seed(1).rng())?.attention {
                Some(AttentionMap::Cells { mask, .. }) => f32s(&mask.flatten_from(1)?),
                _ => Err(candle_core::Error::Msg("no kept-cells map".into())),
            }
        };
        let (han, ada) = (mask(&topk, Mode::train(0.0))?, mask(&plain, Mode::train(0.0))?);
        assert_ne!(han, ada, "the two rules must differ on this batch for the test to mean anything");
        assert_eq!(mask(&warm, Mode::train(0.25))?, han, "training passes in the warm-up keep the top k");
        assert_eq!(mask(&warm, Mode::eval_at(0.25))?, mask(&plain, Mode::eval())?, "evaluation is adaptive throughout");
        assert_eq!(mask(&warm, Mode::train(0.5))?, ada, "after the warm-up, training is adaptive");
        for bad in [
            HanConfig { topk_warmup: 1.0, ..HanConfig::tiny(Selection::Adaptive, Head::Pooled) },
            HanConfig { topk_warmup: 0.2, ..HanConfig::tiny(Selection::HardTopk, Head::Pooled) },
            HanConfig { topk_warmup: 0.2, k: 17, ..HanConfig::tiny(Selection::Adaptive, Head::Pooled) },
        ] {
            let e = build(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("topk_warmup"), "{e}");
        }
        Ok(())
    }

    #[test]
    fn cap_at_k_bounds_the_adaptive_count_and_reports_how_often_it_bound() -> Result<()> {
        let dev = Device::Cpu;
        let b = batch(&dev)?;
        let build = |cfg: HanConfig| Han::new(&cfg, &shape(), SeededVarMap::new(Seed(0)).builder(&dev));
        // a low threshold passes most of the 16 cells
        let loose = HanConfig { threshold: Some(0.01), ..HanConfig::tiny(Selection::Adaptive, Head::Relational) };
        let stat = |m: &Han, key: &str| -> Result<Option<f32>> {
            let out = m.forward(&b, Mode::eval(), &mut Seed(1).rng())?;
            out.stats.iter().find(|(k, _)| k == key).map(|(_, t)| t.to_scalar::<f32>()).transpose()
        };
        let free = build(loose.clone())?;
        let kept_free = stat(&free, "cells_kept_pct")?.unwrap_or_default();
        assert!(kept_free > 25.0, "the test needs more than k = 4 of 16 cells over the threshold: {kept_free}");
        assert_eq!(stat(&free, "at_cap_pct")?, None, "no cap, no statistic");
        let capped = build(HanConfig { cap_at_k: true, ..loose })?;
        let kept = stat(&capped, "cells_kept_pct")?.unwrap_or(f32::NAN);
        assert!(kept <= 25.0, "at most 4 of 16 cells: {kept}");
        assert!(stat(&capped, "at_cap_pct")?.unwrap_or_default() > 0.0);
        let bad = HanConfig { cap_at_k: true, ..HanConfig::tiny(Selection::HardTopk, Head::Pooled) };
        let e = build(bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("cap_at_k"), "{e}");
        let big = HanConfig { cap_at_k: true, k: 17, ..HanConfig::tiny(Selection::Adaptive, Head::Pooled) };
        let e = build(big).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("k = 17") && e.contains("cap_at_k"), "{e}");
        Ok(())
    }

    #[test]
    fn impossible_settings_are_named() {
        let dev = Device::Cpu;
        let vb = || SeededVarMap::new(Seed(0)).builder(&dev);
        let big = HanConfig { k: 17, ..HanConfig::tiny(Selection::HardTopk, Head::Pooled) };
        let e = Han::new(&big, &shape(), vb()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("k = 17") && e.contains("4x4"), "{e}");
        let code = HanConfig { question: QuestionInput::Code, ..HanConfig::tiny(Selection::All, Head::Pooled) };
        let e = Han::new(&code, &DataShape { code_dim: 0, ..shape() }, vb()).err().map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("code"));
        let flat = HanConfig { f_layers: 0, ..HanConfig::tiny(Selection::HardTopk, Head::Relational) };
        let e = Han::new(&flat, &shape(), vb()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("f_layers") && e.contains("2, 8, 8, 0"), "{e}");
    }

    /// `f_layers = 2` adds one f_hidden x f_hidden layer (`head.f1_1`) between `f1` and the answer
    /// layer, keeps the one-layer names, and counts its multiply-adds once per example.
    #[test]
    fn deeper_f_mlp_adds_one_named_layer_and_its_compute() -> Result<()> {
        let dev = Device::Cpu;
        let one = HanConfig::tiny(Selection::HardTopk, Head::Relational);
        let two = HanConfig { f_layers: 2, ..one.clone() };
        let [(m1, v1), (m2, v2)] = [one, two].map(|c| {
            let vm = SeededVarMap::new(Seed(0));
            let m = Han::new(&c, &shape(), vm.builder(&dev));
            (m, vm.sorted_vars().into_iter().map(|(n, _)| n).collect::<Vec<_>>())
        });
        let (m1, m2) = (m1?, m2?);
        let added: Vec<_> = v2.iter().filter(|n| !v1.contains(n)).collect();
        assert_eq!(added, ["head.f1_1.bias", "head.f1_1.weight"], "{v2:?}");
        assert!(v1.iter().all(|n| v2.contains(n)));
        for m in [1, 4] {
            assert_eq!(m2.head_macs(m) - m1.head_macs(m), 64.0, "one 8 x 8 layer at m = {m}");
        }
        Ok(())
    }
}

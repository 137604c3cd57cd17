//! The relational head of "A simple neural network module for relational reasoning" (Santoro et
//! al. 2017), and the Relation Network as a model of its own: every cell of a CNN grid paired with
//! every other and the question, g-MLP on each pair, summed, f-MLP to the answer. HAN and AdaHAN
//! ([`crate::han`]) put the same head behind a hard attention; `relation_net` is their all-cells
//! reference (HAN's `selection = "all"` with this head, parameters named as HAN's).

use candle_core::{Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use gaze_encoders::ConvNetConfig;
use gaze_tensor::seed::Rng;
use gaze_tensor::{ops, relational};

use crate::han::{Han, HanConfig, Head, QuestionInput, Selection};
use crate::model::{Batch, DataShape, Mode, Model, Output};

/// How the relational head scales its sum over pairs of kept cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairNorm {
    /// The plain sum over the m^2 pairs (the Relation Networks head).
    #[default]
    Sum,
    /// The sum divided by m, the example's kept cells: it grows like m, as a count of cells does,
    /// not like m^2. With `adaptive`, m varies per example and a plain sum moves the f-MLP's input
    /// by the square of that spread. (On barn AdaHAN it made the net keep fewer cells and learn
    /// slower: see `experiments/notes/adahan-barn.md`.)
    PerCell,
    /// The mean over the m^2 pairs.
    Mean,
}

/// Sizes of the relational head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelationHeadConfig {
    /// Width of the g-MLP.
    pub g_hidden: usize,
    /// Layers of the g-MLP (>= 1).
    pub g_layers: usize,
    /// Width of the f-MLP.
    pub f_hidden: usize,
    /// Hidden layers of the f-MLP (>= 1).
    pub f_layers: usize,
    /// How the sum over pairs is scaled.
    pub pair_norm: PairNorm,
}

/// The f-MLP: `f1`, the further hidden layers `f1_1`, `f1_2`, ... (ReLU each), and the answer
/// layer `f2` (the names of a one-layer f are those of checkpoints written before `f_layers`).
#[derive(Debug, Clone)]
pub(crate) struct FMlp {
    hidden: Vec<Linear>,
    out: Linear,
}

impl FMlp {
    pub(crate) fn new(input: usize, width: usize, layers: usize, classes: usize, vb: VarBuilder) -> Result<Self> {
        let mut hidden = vec![candle_nn::linear(input, width, vb.pp("f1"))?];
        for i in 1..layers {
            hidden.push(candle_nn::linear(width, width, vb.pp(format!("f1_{i}")))?);
        }
        Ok(Self { hidden, out: candle_nn::linear(width, classes, vb.pp("f2"))? })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.hidden.iter().try_fold(x.clone(), |x, l| ops::linear_relu(l, &x))?;
        self.out.forward(&h)
    }
}

/// The relational head: `g0_a`, `g0_b`, `g0_q` (the first g layer, linear in (o_i, o_j, q)),
/// `g1`... and the f-MLP.
#[derive(Debug, Clone)]
pub struct RelationHead {
    cfg: RelationHeadConfig,
    a: Linear,
    b: Linear,
    q: Linear,
    g: Vec<Linear>,
    f: FMlp,
}

impl RelationHead {
    /// A head over `cell_dim`-wide cells and a `q_dim`-wide question, answering `classes`.
    pub fn new(
        cell_dim: usize,
        q_dim: usize,
        cfg: &RelationHeadConfig,
        classes: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            cfg: *cfg,
            a: candle_nn::linear(cell_dim, cfg.g_hidden, vb.pp("g0_a"))?,
            b: candle_nn::linear_no_bias(cell_dim, cfg.g_hidden, vb.pp("g0_b"))?,
            q: candle_nn::linear_no_bias(q_dim, cfg.g_hidden, vb.pp("g0_q"))?,
            g: (1..cfg.g_layers)
                .map(|i| candle_nn::linear(cfg.g_hidden, cfg.g_hidden, vb.pp(format!("g{i}"))))
                .collect::<Result<_>>()?,
            f: FMlp::new(cfg.g_hidden, cfg.f_hidden, cfg.f_layers, classes, vb)?,
        })
    }

    /// Answers from the cells. Shapes: cells (q, m, d), question (q, qd) -> scores (q, classes).
    /// `padded`: row r's real cells are its first `counts[r]`, the rest zero padding (AdaHAN);
    /// the g-MLP then runs on each row's own pairs only.
    pub fn forward(&self, cells: &Tensor, padded: bool, counts: &[usize], q: &Tensor) -> Result<Tensor> {
        let (nq, m, _) = cells.dims3()?;
        let h = self.cfg.g_hidden;
        // The first g layer is linear in (o_i, o_j, q): project once per cell, add per pair.
        let pa = self.a.forward(cells)?; // (q, m, h)
        let pb = self.b.forward(cells)?;
        let pq = self.q.forward(q)?; // (q, h)

        // The rest of the g-MLP, on first-layer pre-activations (pairs, h). The pair sums,
        // the sum over pairs and the bias additions are fused operations
        // (`gaze_tensor::relational`, `ops::add_bias`): the same values, without candle's
        // strided reductions.
        let g_mlp = |x: Tensor| self.g.iter().try_fold(ops::relu(&x)?, |x, l| ops::linear_relu(l, &x));
        let pooled = if !padded {
            let x = g_mlp(relational::pair_sums(&pa, &pb, &pq)?.reshape((nq * m * m, h))?)?;
            relational::sum_rows(&x.reshape((nq, m * m, h))?)?
        } else {
            // Rows keep different numbers of cells: the g-MLP runs on the kept pairs only
            // (sum over rows of counts^2), not on pairs padded to the largest count, so
            // the compute AdaHAN saves on paper is saved in wall time too.
            let pairs: usize = counts.iter().map(|c| c * c).sum();
            let (mut ia, mut ib, mut iq) =
                (Vec::with_capacity(pairs), Vec::with_capacity(pairs), Vec::with_capacity(pairs));
            for (r, &c) in counts.iter().enumerate() {
                for i in 0..c {
                    for j in 0..c {
                        ia.push((r * m + i) as u32);
                        ib.push((r * m + j) as u32);
                        iq.push(r as u32);
                    }
                }
            }
            let zeros = Tensor::zeros((nq, h), pq.dtype(), pq.device())?;
            if pairs == 0 {
                zeros
            } else {
                let dev = pq.device();
                let iq = Tensor::from_vec(iq, pairs, dev)?;
                let pa = pa.reshape((nq * m, h))?.index_select(&Tensor::from_vec(ia, pairs, dev)?, 0)?;
                let pb = pb.reshape((nq * m, h))?.index_select(&Tensor::from_vec(ib, pairs, dev)?, 0)?;
                let x = g_mlp((pa + pb)?.add(&pq.index_select(&iq, 0)?)?)?;
                zeros.index_add(&iq, &x, 0)?
            }
        };
        let pooled = match self.cfg.pair_norm {
            PairNorm::Sum => pooled,
            norm => {
                let scale: Vec<f32> = counts
                    .iter()
                    .map(|&c| {
                        let c = c.max(1) as f32;
                        if norm == PairNorm::Mean {
                            1.0 / (c * c)
                        } else {
                            1.0 / c
                        }
                    })
                    .collect();
                pooled.broadcast_mul(&Tensor::from_vec(scale, (nq, 1), pooled.device())?)?
            }
        };
        self.f.forward(&pooled)
    }
}

/// Settings of [`RelationNet`]: HAN's encoder, question reader and relational head, on all cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelationNetConfig {
    /// The image encoder (its `in_channels` is taken from the data).
    pub cnn: ConvNetConfig,
    /// How the question is read.
    pub question: QuestionInput,
    /// Word embedding width (text questions).
    pub embed: usize,
    /// Question LSTM width (text questions).
    pub question_hidden: usize,
    /// Width of the g-MLP.
    pub g_hidden: usize,
    /// Layers of the g-MLP (>= 1).
    pub g_layers: usize,
    /// Width of the f-MLP.
    pub f_hidden: usize,
    /// Hidden layers of the f-MLP (>= 1).
    pub f_layers: usize,
    /// How the sum over pairs is scaled.
    pub pair_norm: PairNorm,
    /// Per-cell fusion layers after the question is added (see [`HanConfig::fuse_layers`]).
    pub fuse_layers: usize,
    /// Each cell also carries the 2x2 positions of the previous map under it (see
    /// [`HanConfig::sub_cells`]).
    pub sub_cells: bool,
}

impl Default for RelationNetConfig {
    /// HAN's defaults for the shared parts.
    fn default() -> Self {
        RelationNetConfig::from_han(&HanConfig::default())
    }
}

impl RelationNetConfig {
    /// The shared settings of a HAN config.
    pub fn from_han(h: &HanConfig) -> Self {
        Self {
            cnn: h.cnn.clone(),
            question: h.question,
            embed: h.embed,
            question_hidden: h.question_hidden,
            g_hidden: h.g_hidden,
            g_layers: h.g_layers,
            f_hidden: h.f_hidden,
            f_layers: h.f_layers,
            pair_norm: h.pair_norm,
            fuse_layers: h.fuse_layers,
            sub_cells: h.sub_cells,
        }
    }

    /// The HAN config that computes this model: every cell, the relational head, coordinates
    /// given to the head only.
    pub fn han(&self) -> HanConfig {
        HanConfig {
            cnn: self.cnn.clone(),
            question: self.question,
            embed: self.embed,
            question_hidden: self.question_hidden,
            selection: Selection::All,
            head: Head::Relational,
            g_hidden: self.g_hidden,
            g_layers: self.g_layers,
            f_hidden: self.f_hidden,
            f_layers: self.f_layers,
            pair_norm: self.pair_norm,
            fuse_layers: self.fuse_layers,
            coords_in_presence: false,
            sub_cells: self.sub_cells,
            ..HanConfig::default()
        }
    }
}

/// The Relation Network: the relational head on every cell.
#[derive(Debug, Clone)]
pub struct RelationNet(Han);

impl RelationNet {
    /// Builds the network for the images, questions and answers of `shape`.
    pub fn new(cfg: &RelationNetConfig, shape: &DataShape, vb: VarBuilder) -> Result<Self> {
        Ok(Self(Han::new(&cfg.han(), shape, vb)?))
    }
}

impl Model for RelationNet {
    /// As [`Han`] with every cell kept: answers (q, answers), loss `classify`, the feature norms.
    fn forward(&self, batch: &Batch, mode: Mode, rng: &mut Rng) -> Result<Output> {
        self.0.forward(batch, mode, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::han::tests::{batch, shape};
    use candle_core::Device;
    use gaze_tensor::{Seed, SeededVarMap};

    #[test]
    fn relation_net_is_han_on_all_cells_with_the_same_parameters() -> Result<()> {
        let dev = Device::Cpu;
        let han_cfg = HanConfig { coords_in_presence: false, ..HanConfig::tiny(Selection::All, Head::Relational) };
        let (a, b) = (SeededVarMap::new(Seed(4)), SeededVarMap::new(Seed(4)));
        let han = Han::new(&han_cfg, &shape(), a.builder(&dev))?;
        let rn = RelationNet::new(&RelationNetConfig::from_han(&han_cfg), &shape(), b.builder(&dev))?;
        let names = |v: &SeededVarMap| v.sorted_vars().into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(names(&a), names(&b), "checkpoints of either load into the other");
        let x = batch(&dev)?;
        let scores = |m: &dyn Model| -> Result<Vec<f32>> {
            m.forward(&x, Mode::eval(), &mut Seed(0).rng())?.scores.tensor().flatten_all()?.to_vec1::<f32>()
        };
        assert_eq!(scores(&han)?, scores(&rn)?);
        Ok(())
    }
}

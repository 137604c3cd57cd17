//! A CNN grid read by an LSTM with additive soft attention, one token per step: the soft-attention
//! decoder of "Show, Attend and Tell" (Xu et al. 2015, section 3.1.2) in its plain form, for any
//! task whose target is a token sequence (the digits of a canvas in reading order, a caption).
//!
//! The CNN turns an image into an L = h x w grid of D-dim annotation vectors a_i. The LSTM starts
//! from h0 = tanh(W_h mean(a)), c0 = tanh(W_c mean(a)) (the paper's init MLPs, one layer each).
//! At step t the attention weighs the cells by the previous hidden state,
//! alpha_t = softmax(w^T tanh(W_a a_i + W_h h_{t-1})), the context is z_t = sum_i alpha_ti a_i,
//! the LSTM reads [E y_{t-1}; z_t], and the token scores are a linear map of [h_t; z_t].
//! Training is teacher-forced (y_{t-1} is the target's previous token, `BOS` first) on the
//! cross-entropy of the real tokens (`EOS` included, padding not); [`Model::decode`] reads
//! without the targets, greedily or by beam search. The paper's gate on the context, deep
//! output layer and doubly stochastic penalty are left to the Show-Attend-Tell model.

use candle_core::{Result, Tensor, D};
use candle_nn::{Embedding, Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use gaze_attention::{AdditiveAttention, AdditiveConfig, Attend};
use gaze_encoders::{ConvNet, ConvNetConfig};
use gaze_tensor::lstm::{LstmCell, LstmState, LstmWeights};
use gaze_tensor::seed::Rng;

use crate::convnet_classifier::dropout;
use crate::decode::{self, BeamState};
use crate::model::{AttentionMap, Batch, DataShape, Decoded, Mode, Model, Output, Scores, Search};

/// Settings of [`AttentionDecoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttentionDecoderConfig {
    /// The CNN whose last feature map is the annotation grid (`in_channels` from the data).
    pub convnet: ConvNetConfig,
    /// Width of the token embedding E.
    pub embed: usize,
    /// LSTM hidden units.
    pub hidden: usize,
    /// Hidden width of the attention MLP.
    pub attention: usize,
    /// Dropout on [h_t; z_t] before the token scores (training only).
    pub dropout: f32,
}

impl Default for AttentionDecoderConfig {
    /// Two 3x3 blocks (32, 64 channels, 2x2 pooling) with coordinate channels, so that a cell's
    /// features say where it is (reading order needs it); embedding 64, LSTM 128, attention 64.
    fn default() -> Self {
        Self {
            convnet: ConvNetConfig { coord_channels: true, ..ConvNetConfig::default() },
            embed: 64,
            hidden: 128,
            attention: 64,
            dropout: 0.0,
        }
    }
}

impl AttentionDecoderConfig {
    /// A tiny decoder for tests.
    pub fn tiny() -> Self {
        Self {
            convnet: ConvNetConfig { coord_channels: true, ..ConvNetConfig::tiny() },
            embed: 8,
            hidden: 24,
            attention: 16,
            dropout: 0.0,
        }
    }
}

/// The attention decoder.
#[derive(Debug, Clone)]
pub struct AttentionDecoder {
    net: ConvNet,
    embed: Embedding,
    init_h: Linear,
    init_c: Linear,
    attention: AdditiveAttention,
    lstm: LstmCell,
    out: Linear,
    grid: (usize, usize),
    vocab: usize,
    dropout: f32,
}

fn err(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(format!("attention_decoder: {msg}"))
}

/// The decoder's state for n rows: the LSTM state and each row's annotation grid.
struct ReadState {
    lstm: LstmState,
    feats: Tensor,
}

impl BeamState for ReadState {
    fn select(&self, rows: &Tensor) -> Result<Self> {
        Ok(ReadState {
            lstm: LstmState { h: self.lstm.h.index_select(rows, 0)?, c: self.lstm.c.index_select(rows, 0)? },
            feats: self.feats.index_select(rows, 0)?,
        })
    }
}

impl AttentionDecoder {
    /// Builds the decoder for the images and output vocabulary of `shape`.
    pub fn new(cfg: &AttentionDecoderConfig, shape: &DataShape, vb: VarBuilder) -> Result<Self> {
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
        for (name, v) in [("embed", cfg.embed), ("hidden", cfg.hidden), ("attention", cfg.attention)] {
            if v == 0 {
                return Err(err(format!("`{name}` must be at least 1")));
            }
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            return Err(err(format!("dropout {} is not in [0, 1)", cfg.dropout)));
        }
        let net_cfg = ConvNetConfig { in_channels: c, ..cfg.convnet.clone() };
        let (d, gh, gw) = net_cfg.output_shape(h, w);
        if gh == 0 || gw == 0 {
            return Err(err(format!("a {h}x{w} input is too small for {} pooled blocks", net_cfg.channels.len())));
        }
        let att = AdditiveConfig { feat_dim: d, query_dim: cfg.hidden, hidden: cfg.attention, gate: false };
        Ok(Self {
            net: ConvNet::new(&net_cfg, vb.pp("convnet"))?,
            embed: candle_nn::embedding(shape.classes, cfg.embed, vb.pp("embed"))?,
            init_h: candle_nn::linear(d, cfg.hidden, vb.pp("init_h"))?,
            init_c: candle_nn::linear(d, cfg.hidden, vb.pp("init_c"))?,
            attention: AdditiveAttention::new(&att, vb.pp("attention"))?,
            lstm: LstmCell::new(cfg.embed + d, cfg.hidden, vb.pp("lstm"))?,
            out: candle_nn::linear(cfg.hidden + d, shape.classes, vb.pp("out"))?,
            grid: (gh, gw),
            vocab: shape.classes,
            dropout: cfg.dropout,
        })
    }

    /// The annotation grid and the initial state. Shapes: images (b, c, h, w) -> feats (b, L, D).
    fn start(&self, images: &Tensor, train: bool) -> Result<ReadState> {
        let feats = self.net.forward(images, train)?.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let mean = feats.mean(1)?;
        let lstm = LstmState { h: self.init_h.forward(&mean)?.tanh()?, c: self.init_c.forward(&mean)?.tanh()? };
        Ok(ReadState { lstm, feats })
    }

    /// One step. Shapes: prev (n,) u32 -> scores (n, vocab), the new state, weights (n, L).
    fn step(
        &self,
        w: &LstmWeights,
        s: &ReadState,
        prev: &Tensor,
        train: bool,
        rng: &mut Rng,
    ) -> Result<(Tensor, ReadState, Tensor)> {
        let att = self.attention.attend(&s.feats, &s.lstm.h)?;
        let x = Tensor::cat(&[&self.embed.forward(prev)?, &att.context], 1)?;
        let lstm = w.step(&x, Some(&s.lstm))?;
        let mut o = Tensor::cat(&[&lstm.h, &att.context], 1)?;
        if train {
            o = dropout(&o, self.dropout, rng)?;
        }
        let scores = self.out.forward(&o)?;
        Ok((scores, ReadState { lstm, feats: s.feats.clone() }, att.weights))
    }
}

/// Mean cross-entropy of the real tokens. Shapes: scores (b, t, v), tokens (b, t) u32, lengths (b,).
pub fn sequence_loss(scores: &Tensor, tokens: &Tensor, lengths: &Tensor) -> Result<Tensor> {
    let (b, t, _) = scores.dims3()?;
    let lens = lengths.to_vec1::<u32>()?;
    let mask: Vec<f32> =
        lens.iter().flat_map(|&l| (0..t).map(move |s| if s < l as usize { 1.0 } else { 0.0 })).collect();
    let mask = Tensor::from_vec(mask, (b, t), scores.device())?;
    let logp = candle_nn::ops::log_softmax(scores, D::Minus1)?;
    let picked = logp.gather(&tokens.unsqueeze(D::Minus1)?, D::Minus1)?.squeeze(D::Minus1)?;
    let n = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
    (picked * mask)?.sum_all()?.affine(-1.0 / f64::from(n), 0.0)
}

impl Model for AttentionDecoder {
    /// Shapes: images (b, c, h, w), targets (b, t) tokens -> scores (b, t, vocab), loss `sequence`,
    /// attention (b, t, gh, gw).
    fn forward(&self, batch: &Batch, mode: Mode, rng: &mut Rng) -> Result<Output> {
        let (tokens, lengths) = batch.targets.sequences("attention_decoder")?;
        let (b, t) = tokens.dims2()?;
        if let Some(&v) = tokens.flatten_all()?.to_vec1::<u32>()?.iter().find(|&&v| v as usize >= self.vocab) {
            return Err(err(format!("target token {v} is outside the vocabulary of {}", self.vocab)));
        }
        let w = self.lstm.weights()?;
        let mut s = self.start(&batch.images, mode.train)?;
        let bos = Tensor::full(crate::model::tokens::BOS, b, batch.images.device())?;
        let (mut scores, mut weights) = (Vec::with_capacity(t), Vec::with_capacity(t));
        for step in 0..t {
            let prev = if step == 0 { bos.clone() } else { tokens.narrow(1, step - 1, 1)?.squeeze(1)? };
            let (sc, next, a) = self.step(&w, &s, &prev, mode.train, rng)?;
            scores.push(sc);
            weights.push(a);
            s = next;
        }
        let scores = Tensor::stack(&scores, 1)?;
        let loss = sequence_loss(&scores, tokens, lengths)?;
        let (gh, gw) = self.grid;
        let weights = Tensor::stack(&weights, 1)?.reshape((b, t, gh, gw))?.detach();
        Ok(Output {
            scores: Scores::Steps(scores),
            losses: vec![("sequence".into(), loss)],
            attention: Some(AttentionMap::Steps { weights, title: "attention per step".into() }),
            stats: vec![],
        })
    }

    fn decode(&self, batch: &Batch, search: Search, max_steps: usize, rng: &mut Rng) -> Result<Decoded> {
        let b = batch.images.dim(0)?;
        let w = self.lstm.weights()?;
        let start = self.start(&batch.images, false)?;
        let found = decode::search(batch.images.device(), b, search, max_steps, start, |s, prev| {
            let (scores, state, attention) = self.step(&w, s, prev, false, rng)?;
            let log_probs = candle_nn::ops::log_softmax(&scores, D::Minus1)?;
            Ok(decode::Step { log_probs, state, attention: Some(attention) })
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
                    flat[at..at + row.len().min(gh * gw)].copy_from_slice(&row[..row.len().min(gh * gw)]);
                }
            }
            let weights = Tensor::from_vec(flat, (b, steps, gh, gw), batch.images.device())?;
            Some(AttentionMap::Steps { weights, title: "attention per decoded token".into() })
        };
        Ok(Decoded { tokens: found.tokens, attention })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{tokens::EOS, Targets};
    use crate::test_util::{fit_fixed_batch, total};
    use candle_core::Device;
    use gaze_tensor::{Seed, SeededVarMap};
    use rand::Rng as _;

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

    #[test]
    fn tiny_loss_falls_and_decoding_reads_the_fixed_batch() -> Result<()> {
        let vm = SeededVarMap::new(Seed(0));
        let shape = DataShape::sequences((1, 12, 16), 6, 3);
        let model = AttentionDecoder::new(&AttentionDecoderConfig::tiny(), &shape, vm.builder(&Device::Cpu))?;
        let batch = halves()?;
        let mut r = Seed(1).rng();
        let _ = r.random::<u8>();
        let (first, last) = fit_fixed_batch(&model, &vm, &batch, 150, 2e-2, Mode::eval(), &mut r)?;
        let (first, last) = (total(&first)?, total(&last)?);
        assert!(last < first * 0.1, "{first} -> {last}");
        let Scores::Steps(s) = &model.forward(&batch, Mode::eval(), &mut r)?.scores else { panic!("per-step scores") };
        assert_eq!(s.dims(), &[4, 3, 6]);
        let want = vec![vec![4], vec![5], vec![4, 5], vec![]];
        for search in [Search::Greedy, Search::Beam { width: 3 }] {
            let d = model.decode(&batch, search, 3, &mut r)?;
            assert_eq!(d.tokens, want, "{search:?}");
            let Some(AttentionMap::Steps { weights, .. }) = d.attention else { panic!("steps") };
            assert_eq!(weights.dims(), &[4, 3, 3, 4]);
        }
        Ok(())
    }

    #[test]
    fn class_targets_and_class_data_are_refused() -> Result<()> {
        let vm = SeededVarMap::new(Seed(0));
        let e = AttentionDecoder::new(
            &AttentionDecoderConfig::tiny(),
            &DataShape::images((1, 12, 16), 10),
            vm.builder(&Device::Cpu),
        );
        assert!(e.err().map(|e| e.to_string()).unwrap_or_default().contains("classes"));
        Ok(())
    }
}

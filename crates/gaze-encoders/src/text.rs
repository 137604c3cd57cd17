//! Text encoders: a word embedding and an LSTM over padded token ids, returning the last valid
//! state of each sequence and every state (zeroed past each sequence's length).

use candle_core::{DType, Result, Tensor};
use candle_nn::{Embedding, Module, VarBuilder};
use gaze_tensor::lstm::{LstmCell, LstmState};
use serde::{Deserialize, Serialize};

/// Settings of [`TextEncoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextEncoderConfig {
    /// Vocabulary size (ids `0..vocab`; 0 is padding).
    pub vocab: usize,
    /// Embedding width.
    pub embed: usize,
    /// LSTM width.
    pub hidden: usize,
}

impl Default for TextEncoderConfig {
    fn default() -> Self {
        Self { vocab: 100, embed: 32, hidden: 128 }
    }
}

impl TextEncoderConfig {
    /// Small sizes for tests.
    pub fn tiny() -> Self {
        Self { vocab: 7, embed: 3, hidden: 4 }
    }
}

/// What the encoder gives.
#[derive(Debug, Clone)]
pub struct TextEncoding {
    /// The state after each sequence's last real token (b, hidden).
    pub last: Tensor,
    /// Every state (b, t, hidden), zero past each length.
    pub all: Tensor,
    /// 1 for real tokens, 0 for padding (b, t).
    pub mask: Tensor,
}

/// Embedding + LSTM.
#[derive(Debug, Clone)]
pub struct TextEncoder {
    cfg: TextEncoderConfig,
    embedding: Embedding,
    lstm: LstmCell,
}

impl TextEncoder {
    /// Parameters `embedding` and `lstm`.
    pub fn new(cfg: &TextEncoderConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            embedding: candle_nn::embedding(cfg.vocab, cfg.embed, vb.pp("embedding"))?,
            // `candle_nn::LSTM`'s parameters and maths, stepped with fused gates (`gaze_tensor::lstm`).
            lstm: LstmCell::new(cfg.embed, cfg.hidden, vb.pp("lstm"))?,
        })
    }

    /// Shapes: tokens (b, t) u32, lengths (b,) u32 in 1..=t -> last (b, h), all (b, t, h).
    pub fn forward(&self, tokens: &Tensor, lengths: &Tensor) -> Result<TextEncoding> {
        let (_, _) = tokens.dims2().map_err(|_| {
            candle_core::Error::Msg(format!("TextEncoder: tokens must be (b, t), got {:?}", tokens.dims()))
        })?;
        let max = tokens.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
        if max >= self.cfg.vocab {
            return Err(candle_core::Error::Msg(format!(
                "TextEncoder: token id {max} is outside the vocabulary of {}",
                self.cfg.vocab
            )));
        }
        self.forward_embedded(&self.embedding.forward(tokens)?, lengths)
    }

    /// The LSTM part on already-embedded input. Shapes: x (b, t, e), lengths (b,) -> as `forward`.
    pub fn forward_embedded(&self, x: &Tensor, lengths: &Tensor) -> Result<TextEncoding> {
        let (b, t, e) = x.dims3().map_err(|_| {
            candle_core::Error::Msg(format!("TextEncoder: input must be (b, t, e), got {:?}", x.dims()))
        })?;
        if e != self.cfg.embed {
            return Err(candle_core::Error::Msg(format!("TextEncoder: input width {e}, expected {}", self.cfg.embed)));
        }
        let lens = lengths.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        if lens.len() != b || lens.iter().any(|&l| l == 0 || l as usize > t) {
            return Err(candle_core::Error::Msg(format!(
                "TextEncoder: lengths {lens:?} must be {b} values in 1..={t}"
            )));
        }
        let w = self.lstm.weights()?;
        let mut state: Option<LstmState> = None;
        let mut hs = Vec::with_capacity(t);
        for i in 0..t {
            let s = w.step(&x.narrow(1, i, 1)?.squeeze(1)?, state.as_ref())?;
            hs.push(s.h.clone());
            state = Some(s);
        }
        let all = Tensor::stack(&hs, 1)?; // (b, t, h)
        let mask: Vec<f32> =
            lens.iter().flat_map(|&l| (0..t).map(move |i| if i < l as usize { 1.0 } else { 0.0 })).collect();
        let mask = Tensor::from_vec(mask, (b, t), x.device())?;
        let all = all.broadcast_mul(&mask.unsqueeze(2)?)?;
        let idx: Vec<u32> = lens.iter().map(|&l| l - 1).collect();
        let idx = Tensor::from_vec(idx, (b, 1, 1), x.device())?.broadcast_as((b, 1, self.cfg.hidden))?.contiguous()?;
        let last = all.gather(&idx, 1)?.squeeze(1)?;
        Ok(TextEncoding { last, all, mask })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use gaze_tensor::{Seed, SeededVarMap};

    #[test]
    fn last_state_ignores_padding() -> Result<()> {
        let vm = SeededVarMap::new(Seed(0));
        let enc = TextEncoder::new(&TextEncoderConfig::tiny(), vm.builder(&Device::Cpu))?;
        let padded = Tensor::new(&[[4u32, 5, 6, 0, 0]], &Device::Cpu)?;
        let short = Tensor::new(&[[4u32, 5, 6]], &Device::Cpu)?;
        let a = enc.forward(&padded, &Tensor::new(&[3u32], &Device::Cpu)?)?;
        let b = enc.forward(&short, &Tensor::new(&[3u32], &Device::Cpu)?)?;
        assert_eq!(a.last.to_vec2::<f32>()?, b.last.to_vec2::<f32>()?);
        assert_eq!(a.all.dims(), &[1, 5, 4]);
        assert!(a.all.get(0)?.get(4)?.to_vec1::<f32>()?.iter().all(|&v| v == 0.0));
        assert!(enc.forward(&Tensor::new(&[[9u32]], &Device::Cpu)?, &Tensor::new(&[1u32], &Device::Cpu)?).is_err());
        assert!(enc.forward(&padded, &Tensor::new(&[6u32], &Device::Cpu)?).is_err());
        Ok(())
    }

    #[test]
    fn the_lstm_is_candles_lstm_on_the_same_parameters() -> Result<()> {
        use candle_nn::rnn::{LSTMConfig, RNN};
        let (dev, vm) = (Device::Cpu, SeededVarMap::new(Seed(4)));
        let enc = TextEncoder::new(&TextEncoderConfig::tiny(), vm.builder(&dev))?;
        // The same names: candle's LSTM built second reads the variables the encoder made.
        let reference = candle_nn::lstm(3, 4, LSTMConfig::default(), vm.builder(&dev).pp("lstm"))?;
        let tokens = Tensor::new(&[[4u32, 5, 6, 1], [2, 3, 0, 0]], &dev)?;
        let lens = Tensor::new(&[4u32, 2], &dev)?;
        let got = enc.forward(&tokens, &lens)?;
        let states = reference.seq(&enc.embedding.forward(&tokens)?)?;
        for (row, len) in [(0usize, 4usize), (1, 2)] {
            let want = states[len - 1].h().get(row)?;
            let diff = (got.last.get(row)? - want)?.abs()?.max(0)?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "row {row}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn gradient_check_through_the_lstm() -> Result<()> {
        use rand::Rng;
        let vm = SeededVarMap::new(Seed(1));
        let enc = TextEncoder::new(&TextEncoderConfig::tiny(), vm.builder(&Device::Cpu))?;
        let mut r = Seed(2).rng();
        let x = Tensor::from_vec(
            (0..2 * 3 * 3).map(|_| r.random::<f32>() - 0.5).collect::<Vec<_>>(),
            (2, 3, 3),
            &Device::Cpu,
        )?;
        let lens = Tensor::new(&[3u32, 2], &Device::Cpu)?;
        let w = Tensor::from_vec((0..8).map(|i| i as f32 / 4.0 - 1.0).collect::<Vec<_>>(), (2, 4), &Device::Cpu)?;
        let err =
            gaze_tensor::testing::grad_check(|x| (enc.forward_embedded(x, &lens)?.last * &w)?.sum_all(), &x, 1e-2)?;
        assert!(err < 2e-2, "relative error {err}");
        Ok(())
    }
}

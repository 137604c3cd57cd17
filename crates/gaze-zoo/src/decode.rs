//! Decoding sequences without teacher forcing, for any model that steps one token at a time:
//! greedy decoding and beam search (greedy is a beam of width 1).
//!
//! A beam keeps, per example, the `width` most likely partial sequences by the sum of their
//! tokens' log-probabilities. A hypothesis that emits `EOS` is finished: it keeps its score and
//! competes with the unfinished ones until the end, so a short likely sequence beats a long one
//! only when its total is higher (no length normalisation, as in the beam search that "Show,
//! Attend and Tell" reports its BLEU with).

use candle_core::{Device, Result, Tensor};

use crate::model::{tokens::BOS, tokens::EOS, tokens::PAD, Search};

/// A decoder's per-row state (hidden state, the example's features ...), which beam search
/// reorders as hypotheses are kept and dropped.
pub trait BeamState: Sized {
    /// The state of rows `rows` (indices into this state's rows), in that order.
    fn select(&self, rows: &Tensor) -> Result<Self>;
}

/// What one decoding step gives for n rows.
pub struct Step<S> {
    /// Log-probabilities of the next token, (n, vocab).
    pub log_probs: Tensor,
    /// The state after the step.
    pub state: S,
    /// Attention weights of the step, (n, cells), when the decoder has them.
    pub attention: Option<Tensor>,
}

/// Decoded sequences of one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Each example's tokens, without `BOS` and `EOS`.
    pub tokens: Vec<Vec<u32>>,
    /// Each example's attention weights at each of its steps (the step that emitted `EOS`
    /// included); empty when the decoder gives none.
    pub attention: Vec<Vec<Vec<f32>>>,
    /// Each example's total log-probability.
    pub log_prob: Vec<f64>,
}

#[derive(Debug, Clone)]
struct Hypothesis {
    tokens: Vec<u32>,
    attention: Vec<Vec<f32>>,
    score: f64,
    done: bool,
}

/// Decodes `batch` examples whose initial state is `start` (one row per example): `step` maps a
/// state of n rows and the previous tokens (n,) u32 to the next [`Step`]. At most `max_steps`
/// tokens are emitted per example (`EOS` counted).
pub fn search<S: BeamState>(
    device: &Device,
    batch: usize,
    how: Search,
    max_steps: usize,
    start: S,
    mut step: impl FnMut(&S, &Tensor) -> Result<Step<S>>,
) -> Result<Found> {
    let width = match how {
        Search::Greedy => 1,
        Search::Beam { width } => {
            if width == 0 {
                return Err(candle_core::Error::Msg("beam search: width 0 keeps no hypothesis".into()));
            }
            width
        }
    };
    // Every example's row repeated `width` times; only the first copy is live at the start.
    let rows: Vec<u32> = (0..batch as u32).flat_map(|e| std::iter::repeat_n(e, width)).collect();
    let mut state = start.select(&Tensor::new(rows.as_slice(), device)?)?;
    let fresh = |score| Hypothesis { tokens: vec![], attention: vec![], score, done: false };
    let mut beams: Vec<Vec<Hypothesis>> =
        (0..batch).map(|_| (0..width).map(|j| fresh(if j == 0 { 0.0 } else { f64::NEG_INFINITY })).collect()).collect();
    let mut prev = vec![BOS; batch * width];
    for _ in 0..max_steps {
        if beams.iter().all(|b| b.iter().all(|h| h.done || h.score == f64::NEG_INFINITY)) {
            break;
        }
        let out = step(&state, &Tensor::new(prev.as_slice(), device)?)?;
        let lp = out.log_probs.to_vec2::<f32>()?;
        let att = out.attention.as_ref().map(Tensor::to_vec2::<f32>).transpose()?;
        let mut parents = Vec::with_capacity(batch * width);
        let mut next_prev = Vec::with_capacity(batch * width);
        for (e, beam) in beams.iter_mut().enumerate() {
            // (score, slot, token or None for a finished hypothesis carried over)
            let mut cands: Vec<(f64, usize, Option<u32>)> = vec![];
            for (j, h) in beam.iter().enumerate() {
                if h.done {
                    cands.push((h.score, j, None));
                    continue;
                }
                let row = lp.get(e * width + j).ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "beam search: the step gave {} rows, not {}",
                        lp.len(),
                        batch * width
                    ))
                })?;
                // The `width` best tokens of this hypothesis are all that can survive.
                let mut best: Vec<(f64, u32)> = row
                    .iter()
                    .enumerate()
                    .filter(|&(v, _)| v as u32 != PAD && v as u32 != BOS)
                    .map(|(v, &p)| (h.score + f64::from(p), v as u32))
                    .collect();
                best.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                cands.extend(best.into_iter().take(width).map(|(s, v)| (s, j, Some(v))));
            }
            cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut next = Vec::with_capacity(width);
            for &(score, j, tok) in cands.iter().take(width) {
                let parent = &beam[j];
                let mut h = parent.clone();
                h.score = score;
                if let Some(v) = tok {
                    if let Some(a) = att.as_ref().and_then(|a| a.get(e * width + j)) {
                        h.attention.push(a.clone());
                    }
                    if v == EOS {
                        h.done = true;
                    } else {
                        h.tokens.push(v);
                    }
                }
                next_prev.push(if h.done { PAD } else { *h.tokens.last().unwrap_or(&BOS) });
                parents.push((e * width + j) as u32);
                next.push(h);
            }
            while next.len() < width {
                next.push(fresh(f64::NEG_INFINITY));
                next_prev.push(PAD);
                parents.push((e * width) as u32);
            }
            *beam = next;
        }
        state = out.state.select(&Tensor::new(parents.as_slice(), device)?)?;
        prev = next_prev;
    }
    let mut found = Found { tokens: vec![], attention: vec![], log_prob: vec![] };
    for beam in beams {
        let best = beam.into_iter().max_by(|a, b| a.score.total_cmp(&b.score));
        let h = best.unwrap_or_else(|| fresh(f64::NEG_INFINITY));
        found.tokens.push(h.tokens);
        found.attention.push(h.attention);
        found.log_prob.push(h.score);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state is the last token of each row (as f32), which the toy step reads.
    struct Last(Tensor);

    impl BeamState for Last {
        fn select(&self, rows: &Tensor) -> Result<Self> {
            Ok(Last(self.0.index_select(rows, 0)?))
        }
    }

    const A: u32 = 4;
    const B: u32 = 5;

    /// After BOS: A with 0.6, B with 0.4. After A: A or B with 0.5 each, never EOS. After B: EOS.
    fn toy(state: &Last, prev: &Tensor) -> Result<Step<Last>> {
        let prev = prev.to_vec1::<u32>()?;
        let mut rows = vec![];
        for &p in &prev {
            let mut r = vec![1e-9f32; 6];
            match p {
                BOS => (r[A as usize], r[B as usize]) = (0.6, 0.4),
                A => (r[A as usize], r[B as usize]) = (0.5, 0.5),
                _ => r[EOS as usize] = 1.0,
            }
            rows.push(r.into_iter().map(f32::ln).collect::<Vec<_>>());
        }
        let n = prev.len();
        let log_probs = Tensor::from_vec(rows.concat(), (n, 6), &Device::Cpu)?;
        let attention = Some(Tensor::from_vec(prev.iter().map(|&p| p as f32).collect(), (n, 1), &Device::Cpu)?);
        let _ = state;
        let last = prev.iter().map(|&p| p as f32).collect::<Vec<_>>();
        Ok(Step { log_probs, state: Last(Tensor::from_vec(last, n, &Device::Cpu)?), attention })
    }

    fn start(b: usize) -> Result<Last> {
        Ok(Last(Tensor::zeros(b, candle_core::DType::F32, &Device::Cpu)?))
    }

    #[test]
    fn greedy_follows_the_likeliest_token_and_beam_finds_the_likelier_sequence() -> Result<()> {
        // Greedy: A (0.6), then A or B (0.5, the tie goes to the lower id), ... never ending.
        let g = search(&Device::Cpu, 2, Search::Greedy, 3, start(2)?, toy)?;
        assert_eq!(g.tokens, vec![vec![A, A, A]; 2]);
        assert!((g.log_prob[0] - (0.6f64 * 0.25).ln()).abs() < 1e-5);
        // Width 2 keeps B, whose EOS (total 0.4) beats every continuation of A (at most 0.3).
        let b = search(&Device::Cpu, 2, Search::Beam { width: 2 }, 3, start(2)?, toy)?;
        assert_eq!(b.tokens, vec![vec![B]; 2]);
        assert!((b.log_prob[1] - 0.4f64.ln()).abs() < 1e-5);
        // One attention row per step taken, EOS's step included; each step saw its input token.
        assert_eq!(b.attention[0], vec![vec![BOS as f32], vec![B as f32]]);
        // Width 1 is greedy.
        assert_eq!(search(&Device::Cpu, 1, Search::Beam { width: 1 }, 3, start(1)?, toy)?.tokens, vec![vec![A, A, A]]);
        assert!(search(&Device::Cpu, 1, Search::Beam { width: 0 }, 3, start(1)?, toy).is_err());
        Ok(())
    }
}

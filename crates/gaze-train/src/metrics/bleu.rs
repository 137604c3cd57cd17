//! Corpus BLEU-1..4 ("BLEU: a Method for Automatic Evaluation of Machine Translation", Papineni
//! et al. 2002), with the standard corpus-level conventions, as NLTK's `corpus_bleu` and the
//! COCO caption evaluation compute it: each hypothesis n-gram count is clipped by its largest
//! count in any one reference, clipped counts and hypothesis n-gram totals are summed over the
//! corpus before dividing, the reference length of each hypothesis is the closest one (ties to
//! the shorter), and one brevity penalty exp(1 - r / c) (when c < r) is taken on the corpus
//! totals. BLEU-N is the geometric mean of the precisions of orders 1..N with uniform weights,
//! times the penalty; no smoothing, so an order with no match gives 0.

use std::collections::HashMap;

use super::{round4, Measured, Metric, Predicted, Rows, Truth};
use crate::error::Result;

/// Corpus totals for BLEU-1..4.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bleu {
    /// Clipped matching n-grams of orders 1..4.
    matched: [u64; 4],
    /// Hypothesis n-grams of orders 1..4.
    total: [u64; 4],
    /// Summed hypothesis lengths.
    hyp_len: u64,
    /// Summed closest reference lengths.
    ref_len: u64,
    sentences: u64,
}

fn counts(tokens: &[u32], n: usize) -> HashMap<&[u32], u64> {
    let mut c = HashMap::new();
    if tokens.len() >= n {
        for g in tokens.windows(n) {
            *c.entry(g).or_insert(0) += 1;
        }
    }
    c
}

impl Bleu {
    /// Adds one hypothesis with its references.
    pub fn add(&mut self, hypothesis: &[u32], references: &[Vec<u32>]) {
        self.sentences += 1;
        for n in 1..=4 {
            let hyp = counts(hypothesis, n);
            let refs: Vec<_> = references.iter().map(|r| counts(r, n)).collect();
            for (g, &c) in &hyp {
                let most = refs.iter().map(|r| r.get(g).copied().unwrap_or(0)).max().unwrap_or(0);
                self.matched[n - 1] += c.min(most);
            }
            self.total[n - 1] += hypothesis.len().saturating_sub(n - 1) as u64;
        }
        let c = hypothesis.len();
        let closest = references.iter().map(Vec::len).min_by_key(|&r| (r.abs_diff(c), r));
        self.hyp_len += c as u64;
        self.ref_len += closest.unwrap_or(0) as u64;
    }

    /// BLEU-`n` (n in 1..=4) of the corpus so far, in [0, 1].
    pub fn score(&self, n: usize) -> f64 {
        let n = n.clamp(1, 4);
        if self.hyp_len == 0 {
            return 0.0;
        }
        let mut log_sum = 0.0;
        for k in 0..n {
            if self.matched[k] == 0 || self.total[k] == 0 {
                return 0.0;
            }
            log_sum += (self.matched[k] as f64 / self.total[k] as f64).ln();
        }
        let (c, r) = (self.hyp_len as f64, self.ref_len as f64);
        let bp = if c < r { (1.0 - r / c).exp() } else { 1.0 };
        bp * (log_sum / n as f64).exp()
    }
}

impl Metric for Bleu {
    fn update(&mut self, b: &Rows) -> Result<()> {
        for (p, row) in b.predicted.iter().zip(b.rows) {
            if let (Predicted::Tokens(hyp), Truth::Tokens(refs)) = (p, &row.truth) {
                self.add(hyp, refs);
            }
        }
        Ok(())
    }

    fn finish(&self, into: &mut Measured) {
        if self.sentences == 0 {
            return;
        }
        for n in 1..=4 {
            into.scores.insert(format!("bleu{n}"), round4(100.0 * self.score(n)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words to ids, one id per distinct (case-sensitive) word.
    fn ids<'a>(vocab: &mut HashMap<&'a str, u32>, words: &[&'a str]) -> Vec<u32> {
        words
            .iter()
            .map(|w| {
                let n = vocab.len() as u32;
                *vocab.entry(w).or_insert(n)
            })
            .collect()
    }

    /// The example of NLTK's `corpus_bleu` doctest (nltk/translate/bleu_score.py): corpus BLEU-4
    /// 0.5920..., against 0.6223... for the mean of the two sentence scores.
    #[test]
    fn corpus_bleu_matches_the_nltk_reference_values() {
        let mut v = HashMap::new();
        let hyp1 = ids(
            &mut v,
            &[
                "It", "is", "a", "guide", "to", "action", "which", "ensures", "that", "the", "military", "always",
                "obeys", "the", "commands", "of", "the", "party",
            ],
        );
        let ref1a = ids(
            &mut v,
            &[
                "It", "is", "a", "guide", "to", "action", "that", "ensures", "that", "the", "military", "will",
                "forever", "heed", "Party", "commands",
            ],
        );
        let ref1b = ids(
            &mut v,
            &[
                "It",
                "is",
                "the",
                "guiding",
                "principle",
                "which",
                "guarantees",
                "the",
                "military",
                "forces",
                "always",
                "being",
                "under",
                "the",
                "command",
                "of",
                "the",
                "Party",
            ],
        );
        let ref1c = ids(
            &mut v,
            &[
                "It",
                "is",
                "the",
                "practical",
                "guide",
                "for",
                "the",
                "army",
                "always",
                "to",
                "heed",
                "the",
                "directions",
                "of",
                "the",
                "party",
            ],
        );
        let hyp2 =
            ids(&mut v, &["he", "read", "the", "book", "because", "he", "was", "interested", "in", "world", "history"]);
        let ref2a =
            ids(&mut v, &["he", "was", "interested", "in", "world", "history", "because", "he", "read", "the", "book"]);
        let refs1 = vec![ref1a, ref1b, ref1c];
        let refs2 = vec![ref2a];

        let mut corpus = Bleu::default();
        corpus.add(&hyp1, &refs1);
        corpus.add(&hyp2, &refs2);
        // NLTK prints the scores to 4 places followed by an ellipsis: the value lies in [0.5920, 0.5921).
        assert!((0.5920..0.5921).contains(&corpus.score(4)), "{}", corpus.score(4));

        let sentence = |h: &[u32], r: &[Vec<u32>]| {
            let mut b = Bleu::default();
            b.add(h, r);
            b.score(4)
        };
        let mean = (sentence(&hyp1, &refs1) + sentence(&hyp2, &refs2)) / 2.0;
        assert!((0.6223..0.6224).contains(&mean), "{mean}");
    }

    #[test]
    fn brevity_penalty_clipping_and_no_smoothing() {
        // "the the the the" against "the cat": the unigram count is clipped to 1 of 4, and no
        // bigram matches, so BLEU-2 is 0 (no smoothing).
        let mut b = Bleu::default();
        b.add(&[1, 1, 1, 1], &[vec![1, 2]]);
        assert!((b.score(1) - 0.25).abs() < 1e-12);
        assert_eq!(b.score(2), 0.0);
        // A correct but short hypothesis: precision 1, penalty exp(1 - 4/2).
        let mut b = Bleu::default();
        b.add(&[5, 6], &[vec![5, 6, 7, 8]]);
        assert!((b.score(1) - (-1.0f64).exp()).abs() < 1e-12);
        // The closest reference length, ties to the shorter: references of 3 and 1 tokens are both
        // 1 away from 2; the shorter is taken, so there is no penalty.
        let mut b = Bleu::default();
        b.add(&[5, 6], &[vec![5, 6, 9], vec![5]]);
        assert_eq!((b.hyp_len, b.ref_len), (2, 1));
        assert!((b.score(1) - 1.0).abs() < 1e-12);
    }
}

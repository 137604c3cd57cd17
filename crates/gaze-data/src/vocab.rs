//! Vocabularies of words (questions, captions) and of answers.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Padding token id.
pub const PAD: u32 = 0;
/// Unknown-word token id.
pub const UNK: u32 = 1;
/// Start-of-sentence token id.
pub const BOS: u32 = 2;
/// End-of-sentence token id.
pub const EOS: u32 = 3;
const SPECIALS: [&str; 4] = ["<pad>", "<unk>", "<bos>", "<eos>"];

/// Splits text into lower-case words; punctuation is dropped.
pub fn tokenize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// A word vocabulary with `<pad>`, `<unk>`, `<bos>`, `<eos>` as ids 0..4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vocab {
    words: Vec<String>,
    #[serde(skip)]
    index: HashMap<String, u32>,
}

impl Vocab {
    /// Builds a vocabulary from `texts` (normally the training split): words seen at least
    /// `min_count` times, most frequent first, ties alphabetical, so the ids are deterministic.
    pub fn build<'a>(texts: impl IntoIterator<Item = &'a str>, min_count: usize) -> Self {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for t in texts {
            for w in tokenize(t) {
                *counts.entry(w).or_default() += 1;
            }
        }
        let mut by_freq: Vec<(String, usize)> = counts.into_iter().filter(|(_, c)| *c >= min_count.max(1)).collect();
        by_freq.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let words = SPECIALS.iter().map(|s| s.to_string()).chain(by_freq.into_iter().map(|(w, _)| w)).collect();
        Self::from_words(words)
    }

    /// A vocabulary from its word list (as saved); the first four must be the special tokens.
    pub fn from_words(words: Vec<String>) -> Self {
        let index = words.iter().enumerate().map(|(i, w)| (w.clone(), i as u32)).collect();
        Self { words, index }
    }

    /// Rebuilds the lookup after deserialising.
    pub fn reindex(self) -> Self {
        Self::from_words(self.words)
    }

    /// Number of ids, specials included.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether only the specials are present.
    pub fn is_empty(&self) -> bool {
        self.words.len() <= SPECIALS.len()
    }

    /// The id of `word` (`<unk>` when unseen).
    pub fn id(&self, word: &str) -> u32 {
        self.index.get(word).copied().unwrap_or(UNK)
    }

    /// The word of `id`, or `<unk>`.
    pub fn word(&self, id: u32) -> &str {
        self.words.get(id as usize).map_or("<unk>", String::as_str)
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        tokenize(text).iter().map(|w| self.id(w)).collect()
    }

    /// Words of `ids`, stopping at `<eos>` and skipping `<pad>` and `<bos>`.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .take_while(|&&i| i != EOS)
            .filter(|&&i| i != PAD && i != BOS)
            .map(|&i| self.word(i))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A closed set of answers (class names); answers outside it have no class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerSet {
    names: Vec<String>,
}

impl AnswerSet {
    /// The answers in `answers` (normally the training split's), sorted, each once.
    pub fn build<'a>(answers: impl IntoIterator<Item = &'a str>) -> Self {
        let mut names: Vec<String> = answers.into_iter().map(|a| a.trim().to_lowercase()).collect();
        names.sort();
        names.dedup();
        Self { names }
    }

    /// A fixed answer list in the given order.
    pub fn fixed(names: &[&str]) -> Self {
        Self { names: names.iter().map(|s| s.to_string()).collect() }
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are no classes.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The class of `answer`, or `None` when it is not in the set.
    pub fn class(&self, answer: &str) -> Option<u32> {
        let a = answer.trim().to_lowercase();
        self.names.iter().position(|n| *n == a).map(|p| p as u32)
    }

    /// The answer of class `c`.
    pub fn name(&self, c: u32) -> Option<&str> {
        self.names.get(c as usize).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_encode_decode() {
        let v = Vocab::build(["What is the shape?", "what colour is the cow"], 1);
        assert_eq!(v.word(4), "is"); // most frequent first, ties alphabetical: is, the, what
        assert_eq!(v.encode("what is the zebra?"), vec![v.id("what"), v.id("is"), v.id("the"), UNK]);
        assert_eq!(v.decode(&[BOS, v.id("cow"), EOS, v.id("is")]), "cow");
        let json = serde_json::to_string(&v).expect("json");
        let back: Vocab = serde_json::from_str::<Vocab>(&json).expect("parse").reindex();
        assert_eq!(back.id("cow"), v.id("cow"));
    }

    #[test]
    fn answers() {
        let a = AnswerSet::build(["yes", "no", "Yes", "cow"]);
        assert_eq!(a.len(), 3);
        assert_eq!(a.class("YES"), Some(2));
        assert_eq!(a.class("zebra"), None);
    }
}

//! Datasets, seeded splits and shuffles, and batches as candle tensors.
//!
//! Images become `(b, c, h, w)` f32 tensors in [0, 1]; labels and answers `(b,)` u32; questions
//! and captions `(b, t)` u32 token ids padded with [`PAD`](crate::vocab::PAD), with their lengths.

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;

use gaze_tensor::Seed;

use crate::caption::CaptionSet;
use crate::error::{DataError, Result};
use crate::image::Image;
use crate::mnist::LabeledImages;
use crate::vocab::{AnswerSet, Vocab, BOS, EOS, PAD};
use crate::vqa::VqaSet;

/// Anything indexable that yields samples.
pub trait Dataset {
    /// One sample.
    type Item;
    /// Number of samples.
    fn len(&self) -> usize;
    /// Sample `i`; past the end is an error.
    fn get(&self, i: usize) -> Result<Self::Item>;
    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Indices of a train / validation / test split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Training indices.
    pub train: Vec<usize>,
    /// Validation indices.
    pub val: Vec<usize>,
    /// Test indices.
    pub test: Vec<usize>,
}

/// Splits `0..n` by a seeded permutation into `val` and `test` items and the rest for training.
pub fn split(n: usize, val: usize, test: usize, seed: Seed) -> Result<Split> {
    if val + test >= n {
        return Err(DataError::config(
            "split",
            format!("{val} validation + {test} test items leave none of {n} to train on"),
        ));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut seed.rng());
    let test_part = idx.split_off(n - test);
    let val_part = idx.split_off(n - test - val);
    Ok(Split { train: idx, val: val_part, test: test_part })
}

/// Yields batches of indices, in order or shuffled by a seed and epoch.
#[derive(Debug, Clone)]
pub struct Batcher {
    order: Vec<usize>,
    batch: usize,
    drop_last: bool,
    pos: usize,
}

impl Batcher {
    /// Batches of `indices` in the given order.
    pub fn new(indices: Vec<usize>, batch: usize, drop_last: bool) -> Result<Self> {
        if batch == 0 {
            return Err(DataError::config("batch_size", "must be at least 1"));
        }
        Ok(Self { order: indices, batch, drop_last, pos: 0 })
    }

    /// Batches of `indices` shuffled by `seed.index(epoch)`: every epoch a new, reproducible order.
    pub fn shuffled(mut indices: Vec<usize>, batch: usize, drop_last: bool, seed: Seed, epoch: u64) -> Result<Self> {
        indices.shuffle(&mut seed.index(epoch).rng());
        Self::new(indices, batch, drop_last)
    }

    /// Number of batches this batcher yields in all.
    pub fn num_batches(&self) -> usize {
        if self.drop_last {
            self.order.len() / self.batch
        } else {
            self.order.len().div_ceil(self.batch)
        }
    }

    /// Skips the first `n` batches (for resuming inside an epoch).
    pub fn skip_batches(&mut self, n: usize) {
        self.pos = (self.pos + n * self.batch).min(self.order.len());
    }
}

impl Iterator for Batcher {
    type Item = Vec<usize>;
    fn next(&mut self) -> Option<Vec<usize>> {
        let rest = self.order.len() - self.pos;
        if rest == 0 || (self.drop_last && rest < self.batch) {
            return None;
        }
        let end = self.pos + rest.min(self.batch);
        let out = self.order[self.pos..end].to_vec();
        self.pos = end;
        Some(out)
    }
}

/// Stacks same-size images into a `(b, c, h, w)` f32 tensor in [0, 1].
pub fn images_to_tensor(images: &[&Image], device: &Device) -> Result<Tensor> {
    let Some(first) = images.first() else {
        return Err(DataError::config("batch", "no images to stack"));
    };
    let (c, h, w) = (first.channels, first.height, first.width);
    let mut data = Vec::with_capacity(images.len() * c * h * w);
    for (k, img) in images.iter().enumerate() {
        if (img.channels, img.height, img.width) != (c, h, w) {
            return Err(DataError::config(
                "batch",
                format!("image {k} is {}x{}x{}, the first is {c}x{h}x{w}", img.channels, img.height, img.width),
            ));
        }
        for ch in 0..c {
            data.extend(img.data.iter().skip(ch).step_by(c).map(|&v| f32::from(v) / 255.0));
        }
    }
    Ok(Tensor::from_vec(data, (images.len(), c, h, w), device)?)
}

/// A batch of images with one class label each.
#[derive(Debug, Clone)]
pub struct ImageBatch {
    /// `(b, c, h, w)` f32 in [0, 1].
    pub images: Tensor,
    /// `(b,)` u32.
    pub labels: Tensor,
}

impl LabeledImages {
    /// The images at `indices` as a `(b, 1, rows, cols)` batch with their labels.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<ImageBatch> {
        let size = self.rows * self.cols;
        let mut data = Vec::with_capacity(indices.len() * size);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let img =
                self.image(i).ok_or_else(|| DataError::config("index", format!("image {i} of {}", self.len())))?;
            data.extend(img.iter().map(|&v| f32::from(v) / 255.0));
            labels.push(u32::from(self.labels[i]));
        }
        Ok(ImageBatch {
            images: Tensor::from_vec(data, (indices.len(), 1, self.rows, self.cols), device)?,
            labels: Tensor::from_vec(labels, indices.len(), device)?,
        })
    }
}

/// A VQA batch.
#[derive(Debug, Clone)]
pub struct VqaBatch {
    /// `(b, c, h, w)` f32 in [0, 1].
    pub images: Tensor,
    /// `(b, t)` u32 token ids, padded.
    pub questions: Tensor,
    /// `(b,)` u32 number of real tokens of each question.
    pub lengths: Tensor,
    /// `(b, q)` f32 question codes, when every record has one of the same width.
    pub codes: Option<Tensor>,
    /// `(b,)` u32 answer classes (0 where the answer is outside the answer set).
    pub answers: Tensor,
    /// Whether each answer is in the answer set (unknown answers always count as wrong).
    pub known: Vec<bool>,
}

/// Turns VQA records into batches: a question vocabulary and an answer set built from the
/// training records, unknown words as `<unk>`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VqaEncoder {
    /// Question words.
    pub vocab: Vocab,
    /// Answer classes.
    pub answers: AnswerSet,
    /// Longest question kept (longer ones are cut).
    pub max_len: usize,
}

impl VqaEncoder {
    /// Builds vocabulary and answers from the records `train` of `set`.
    pub fn fit(set: &VqaSet, train: &[usize], max_len: usize) -> Result<Self> {
        let recs: Vec<_> = train
            .iter()
            .map(|&i| {
                set.records.get(i).ok_or_else(|| DataError::config("index", format!("record {i} of {}", set.len())))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            vocab: Vocab::build(recs.iter().map(|r| r.q.question.as_str()), 1),
            answers: AnswerSet::build(recs.iter().map(|r| r.q.answer.as_str())),
            max_len: max_len.max(1),
        })
    }

    /// A question as `max_len` token ids (cut, or padded with `<pad>`; an empty question is one
    /// `<unk>`) and its number of real tokens (>= 1).
    pub fn encode_question(&self, text: &str) -> (Vec<u32>, u32) {
        let mut ids = self.vocab.encode(text);
        ids.truncate(self.max_len);
        if ids.is_empty() {
            ids.push(crate::vocab::UNK);
        }
        let len = ids.len() as u32;
        ids.resize(self.max_len, PAD);
        (ids, len)
    }

    /// The records `indices` of `set` as a batch.
    pub fn batch(&self, set: &VqaSet, indices: &[usize], device: &Device) -> Result<VqaBatch> {
        let mut imgs = Vec::with_capacity(indices.len());
        let mut tokens = Vec::with_capacity(indices.len() * self.max_len);
        let (mut lengths, mut answers, mut known, mut codes) = (vec![], vec![], vec![], vec![]);
        let code_width = indices.first().and_then(|&i| set.records.get(i)).map_or(0, |r| r.q.code.len());
        let mut all_codes = code_width > 0;
        for &i in indices {
            let r =
                set.records.get(i).ok_or_else(|| DataError::config("index", format!("record {i} of {}", set.len())))?;
            imgs.push(
                set.images
                    .get(r.image)
                    .ok_or_else(|| DataError::config("image", format!("record {i} names image {}", r.image)))?,
            );
            let (ids, len) = self.encode_question(&r.q.question);
            lengths.push(len);
            tokens.extend(ids);
            let class = self.answers.class(&r.q.answer);
            known.push(class.is_some());
            answers.push(class.unwrap_or(0));
            all_codes &= r.q.code.len() == code_width;
            codes.extend_from_slice(&r.q.code);
        }
        let b = indices.len();
        Ok(VqaBatch {
            images: images_to_tensor(&imgs, device)?,
            questions: Tensor::from_vec(tokens, (b, self.max_len), device)?,
            lengths: Tensor::from_vec(lengths, b, device)?,
            codes: if all_codes { Some(Tensor::from_vec(codes, (b, code_width), device)?) } else { None },
            answers: Tensor::from_vec(answers, b, device)?,
            known,
        })
    }
}

/// A caption batch: images and `<bos> words <eos>` token rows, padded.
#[derive(Debug, Clone)]
pub struct CaptionBatch {
    /// `(b, c, h, w)` f32 in [0, 1].
    pub images: Tensor,
    /// `(b, t)` u32: `<bos>`, the words, `<eos>`, then `<pad>`.
    pub tokens: Tensor,
    /// `(b,)` u32 number of tokens including `<bos>` and `<eos>`.
    pub lengths: Tensor,
}

/// Turns captions into batches.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CaptionEncoder {
    /// Caption words.
    pub vocab: Vocab,
    /// Longest caption kept, in words (cut beyond).
    pub max_words: usize,
}

impl CaptionEncoder {
    /// Builds the vocabulary from the records `train` of `set`.
    pub fn fit(set: &CaptionSet, train: &[usize], max_words: usize) -> Self {
        let texts = train.iter().filter_map(|&i| set.records.get(i)).map(|r| r.caption.as_str());
        Self { vocab: Vocab::build(texts, 1), max_words: max_words.max(1) }
    }

    /// The records `indices` of `set` as a batch.
    pub fn batch(&self, set: &CaptionSet, indices: &[usize], device: &Device) -> Result<CaptionBatch> {
        let t = self.max_words + 2;
        let (mut imgs, mut tokens, mut lengths) = (vec![], Vec::with_capacity(indices.len() * t), vec![]);
        for &i in indices {
            let r =
                set.records.get(i).ok_or_else(|| DataError::config("index", format!("record {i} of {}", set.len())))?;
            imgs.push(
                set.images
                    .get(r.image)
                    .ok_or_else(|| DataError::config("image", format!("record {i} names image {}", r.image)))?,
            );
            let mut ids = vec![BOS];
            ids.extend(self.vocab.encode(&r.caption).into_iter().take(self.max_words));
            ids.push(EOS);
            lengths.push(ids.len() as u32);
            ids.resize(t, PAD);
            tokens.extend(ids);
        }
        let b = indices.len();
        Ok(CaptionBatch {
            images: images_to_tensor(&imgs, device)?,
            tokens: Tensor::from_vec(tokens, (b, t), device)?,
            lengths: Tensor::from_vec(lengths, b, device)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{SortOfClevr, SortOfClevrConfig};

    #[test]
    fn split_is_a_seeded_partition() -> Result<()> {
        let s = split(100, 10, 20, Seed(3))?;
        assert_eq!((s.train.len(), s.val.len(), s.test.len()), (70, 10, 20));
        let mut all: Vec<usize> = s.train.iter().chain(&s.val).chain(&s.test).copied().collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(s, split(100, 10, 20, Seed(3))?);
        assert_ne!(s, split(100, 10, 20, Seed(4))?);
        assert!(split(10, 5, 5, Seed(0)).is_err());
        Ok(())
    }

    #[test]
    fn batcher_covers_everything_once_per_epoch() -> Result<()> {
        let b = Batcher::shuffled((0..10).collect(), 3, false, Seed(1), 0)?;
        assert_eq!(b.num_batches(), 4);
        let batches: Vec<Vec<usize>> = b.collect();
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
        let mut seen: Vec<usize> = batches.concat();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        let e1: Vec<Vec<usize>> = Batcher::shuffled((0..10).collect(), 3, true, Seed(1), 1)?.collect();
        assert_eq!(e1.len(), 3);
        assert_ne!(batches[0], e1[0]);
        let mut resumed = Batcher::shuffled((0..10).collect(), 3, false, Seed(1), 0)?;
        resumed.skip_batches(2);
        assert_eq!(resumed.next(), Some(batches[2].clone()));
        assert!(Batcher::new(vec![1], 0, false).is_err());
        Ok(())
    }

    #[test]
    fn mnist_batch_shapes_and_values() -> Result<()> {
        let m = crate::Mnist::fixture()?;
        let b = m.test.batch(&[0, 3], &Device::Cpu)?;
        assert_eq!(b.images.dims(), &[2, 1, 28, 28]);
        assert_eq!(b.labels.to_vec1::<u32>()?, vec![7, 0]);
        let max = b.images.max_all()?.to_scalar::<f32>()?;
        assert!(max <= 1.0 && max > 0.9);
        Ok(())
    }

    #[test]
    fn vqa_batch() -> Result<()> {
        let g = SortOfClevr::new(SortOfClevrConfig::default(), Seed(0))?;
        let set = VqaSet::from_scenes((0..3).map(|i| g.scene(i)).collect::<Result<_>>()?);
        let enc = VqaEncoder::fit(&set, &(0..40).collect::<Vec<_>>(), 16)?;
        let b = enc.batch(&set, &[0, 41, 59], &Device::Cpu)?;
        assert_eq!(b.images.dims(), &[3, 3, 75, 75]);
        assert_eq!(b.questions.dims(), &[3, 16]);
        assert_eq!(b.codes.as_ref().map(|c| c.dims().to_vec()), Some(vec![3, 11]));
        let lens = b.lengths.to_vec1::<u32>()?;
        let q = b.questions.to_vec2::<u32>()?;
        for (row, &l) in q.iter().zip(&lens) {
            assert!(row[..l as usize].iter().all(|&t| t != PAD) && row[l as usize..].iter().all(|&t| t == PAD));
        }
        // channel-first: the red channel of the first image equals the HWC data's channel 0
        let img = &set.images[0];
        let red = b.images.get(0)?.get(0)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(red[5], f32::from(img.data[5 * 3]) / 255.0);
        Ok(())
    }
}

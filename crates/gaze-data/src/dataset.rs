//! Datasets, seeded splits and shuffles, and batches as candle tensors.
//!
//! Images become `(b, c, h, w)` f32 tensors in [0, 1]; labels and answers `(b,)` u32; questions
//! and captions `(b, t)` u32 token ids padded with [`PAD`](crate::vocab::PAD), with their lengths.

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;

use gaze_tensor::Seed;

use crate::error::{DataError, Result};
use crate::image::Image;
use crate::mnist::LabeledImages;
use crate::vocab::{AnswerSet, Vocab, PAD};
use crate::vqa::VqaSet;

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
    /// The images at `indices` as a `(b, channels, rows, cols)` batch with their labels.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<ImageBatch> {
        let size = self.image_len();
        let mut data = Vec::with_capacity(indices.len() * size);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let img =
                self.image(i).ok_or_else(|| DataError::config("index", format!("image {i} of {}", self.len())))?;
            data.extend(img.iter().map(|&v| f32::from(v) / 255.0));
            labels.push(u32::from(self.labels[i]));
        }
        Ok(ImageBatch {
            images: Tensor::from_vec(data, (indices.len(), self.channels, self.rows, self.cols), device)?,
            labels: Tensor::from_vec(labels, indices.len(), device)?,
        })
    }
}

/// How VQA records become token ids and answer classes: a question vocabulary and an answer set
/// built from the training records, unknown words as `<unk>`. (Batches are built by the trainer's
/// data module, the one path from records to tensors.)
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
    fn questions_are_cut_or_padded_and_images_go_channel_first() -> Result<()> {
        let g = SortOfClevr::new(SortOfClevrConfig::default(), Seed(0))?;
        let set = VqaSet::from_scenes((0..3).map(|i| g.scene(i)).collect::<Result<_>>()?);
        let enc = VqaEncoder::fit(&set, &(0..40).collect::<Vec<_>>(), 16)?;
        for r in [0, 41, 59] {
            let (ids, len) = enc.encode_question(&set.records[r].q.question);
            assert_eq!(ids.len(), 16);
            let l = len as usize;
            assert!(l >= 1 && ids[..l].iter().all(|&t| t != PAD) && ids[l..].iter().all(|&t| t == PAD));
        }
        let (short, _) = VqaEncoder { max_len: 2, ..enc.clone() }.encode_question("what is the colour of it");
        assert_eq!(short.len(), 2, "cut to max_len");
        assert_eq!(enc.encode_question("").0[0], crate::vocab::UNK, "an empty question is one <unk>");
        // channel-first: the red channel of the first image equals the HWC data's channel 0
        let t = images_to_tensor(&[&set.images[0], &set.images[1]], &Device::Cpu)?;
        assert_eq!(t.dims(), &[2, 3, 75, 75]);
        let red = t.get(0)?.get(0)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(red[5], f32::from(set.images[0].data[5 * 3]) / 255.0);
        Ok(())
    }
}

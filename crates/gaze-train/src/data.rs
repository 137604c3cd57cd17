//! Turns a [`DataConfig`] into train / validation / test examples: labelled images, VQA images
//! with their questions (one example = one image and all its questions), or images with token
//! sequences (the digits of an MNIST-pairs canvas in reading order). Each split knows its
//! [`Task`], builds its batches, says what each row is for the metrics ([`RowInfo`]) and,
//! for training, shifts its images or draws one of its references ([`Examples::training_batch`]).

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use gaze_data::caption::CaptionSet;
use gaze_data::dataset::{images_to_tensor, VqaEncoder};
use gaze_data::generate::{BarnVqa, CanvasConfig, MnistCanvas, MnistPairs, ShapeCaptions, SortOfClevr};
use gaze_data::vocab::AnswerSet;
use gaze_data::vocab::Vocab;
use gaze_data::vqa::VqaSet;
use gaze_data::{Image, LabeledImages, Mnist};
use gaze_tensor::Seed;
use gaze_zoo::{tokens, Batch, DataShape, Questions, Targets};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{DataConfig, MnistData, PairsData, PairsTarget};
use crate::error::{Result, TrainError};
use crate::metrics::{FracBox, Row, Task, Truth};

/// The examples of one split.
#[derive(Debug, Clone)]
pub enum Examples {
    /// Labelled single-channel images (one example = one image).
    Images {
        /// The images and labels.
        set: LabeledImages,
        /// Each image's digits (one on a cluttered canvas, two for a pair's sum) as boxes and
        /// centres, in fractions of the image's width and height, when the data knows them
        /// (generated canvases), else empty.
        objects: Vec<Vec<(FracBox, (f32, f32))>>,
    },
    /// VQA (one example = one image with all its questions).
    Vqa(VqaSplit),
    /// Images with token sequences (one example = one image and its reference sequences).
    Sequences(SequenceSplit),
}

/// Images and the token sequences to read from them.
#[derive(Debug, Clone)]
pub struct SequenceSplit {
    /// The images.
    pub images: Vec<Image>,
    /// Each image's reference sequences (token ids without `BOS` / `EOS`): training reads one
    /// drawn at random each time ([`Examples::training_batch`]), evaluation the first.
    pub references: Vec<Vec<Vec<u32>>>,
    /// For each image, reference and token, the object (index into `objects`) the token names
    /// (a colour or shape word, a digit); empty where the data does not say.
    pub word_boxes: Vec<Vec<Vec<Option<usize>>>>,
    /// Each image's objects (the digits of a pair, a scene's shapes), as boxes and centres in
    /// fractions.
    pub objects: Vec<Vec<(FracBox, (f32, f32))>>,
    /// The output vocabulary (the special tokens first), for reports.
    pub words: Arc<Vec<String>>,
    /// Natural-language references (scored with BLEU).
    pub text: bool,
}

impl SequenceSplit {
    /// The tokens of `seq` as words.
    pub fn spell(&self, seq: &[u32]) -> String {
        seq.iter().map(|&t| self.words.get(t as usize).map_or("?", String::as_str)).collect::<Vec<_>>().join(" ")
    }

    /// Examples `idx` as a batch: the first reference of each, `EOS` appended, padded with `PAD`.
    pub fn batch(&self, idx: &[usize], device: &Device) -> Result<Batch> {
        self.batch_of(idx, |_, _| 0, device)
    }

    /// Examples `idx` as a batch of the reference `pick(example, references)` of each.
    fn batch_of(&self, idx: &[usize], mut pick: impl FnMut(usize, usize) -> usize, device: &Device) -> Result<Batch> {
        let bad = |i: usize| TrainError::Other(format!("example {i} of {}", self.images.len()));
        let mut imgs = Vec::with_capacity(idx.len());
        let mut seqs = Vec::with_capacity(idx.len());
        for &i in idx {
            imgs.push(self.images.get(i).ok_or_else(|| bad(i))?);
            let refs = self.references.get(i).ok_or_else(|| bad(i))?;
            let chosen = refs.get(pick(i, refs.len())).or(refs.first()).ok_or_else(|| bad(i))?;
            seqs.push(chosen);
        }
        let t = seqs.iter().map(|s| s.len() + 1).max().unwrap_or(1);
        let mut toks = Vec::with_capacity(idx.len() * t);
        let mut lens = Vec::with_capacity(idx.len());
        for s in seqs {
            toks.extend_from_slice(s);
            toks.push(tokens::EOS);
            toks.extend(std::iter::repeat_n(tokens::PAD, t - s.len() - 1));
            lens.push(s.len() as u32 + 1);
        }
        Ok(Batch {
            images: images_to_tensor(&imgs, device)?,
            targets: Targets::Sequences {
                tokens: Tensor::from_vec(toks, (idx.len(), t), device)?,
                lengths: Tensor::from_vec(lens, idx.len(), device)?,
            },
            questions: None,
        })
    }
}

/// Images of a VQA set and their questions.
#[derive(Debug, Clone)]
pub struct VqaSplit {
    /// The set the images and records come from.
    pub set: Arc<VqaSet>,
    /// Image indices (into `set.images`) of this split.
    pub images: Vec<usize>,
    /// Record indices of each image, aligned with `images`.
    pub records: Vec<Vec<usize>>,
    /// Vocabulary and answers (from the training split).
    pub encoder: Arc<VqaEncoder>,
}

/// What a row of a batch is: for the metrics, and for pictures.
#[derive(Debug, Clone)]
pub struct RowInfo {
    /// What the metrics read (truth, kind, the objects' boxes).
    pub row: Row,
    /// The true class / answer / sequence, as text.
    pub truth: String,
    /// The question (empty for images).
    pub question: String,
    /// Position in the batch's images.
    pub image: usize,
}

/// A box in pixels as fractions of a `w` x `h` image, and its centre.
fn frac(b: &gaze_data::BBox, w: usize, h: usize) -> (FracBox, (f32, f32)) {
    let (w, h) = (w.max(1) as f32, h.max(1) as f32);
    let (x, y) = b.centre();
    ([b.x / w, b.y / h, (b.x + b.w) / w, (b.y + b.h) / h], (x / w, y / h))
}

fn row_of(truth: Truth, objects: &[(FracBox, (f32, f32))]) -> Row {
    Row {
        truth,
        kind: String::new(),
        relational: false,
        boxes: objects.iter().map(|o| o.0).collect(),
        centres: objects.iter().map(|o| o.1).collect(),
        word_boxes: vec![],
    }
}

impl Examples {
    /// SHA-256 (hex) of what the examples hold: every image's size and pixels and every label;
    /// for VQA each question, answer and code too; for sequences every reference's tokens and
    /// the words that spell them. Equal data read from another place gives the same checksum.
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        match self {
            Examples::Images { set, .. } => {
                h.update(b"images");
                for n in [set.channels, set.rows, set.cols, set.labels.len()] {
                    put_len(&mut h, n);
                }
                h.update(&set.pixels);
                h.update(&set.labels);
            }
            Examples::Vqa(v) => {
                h.update(b"vqa");
                put_len(&mut h, v.images.len());
                for (&i, recs) in v.images.iter().zip(&v.records) {
                    if let Some(im) = v.set.images.get(i) {
                        put_image(&mut h, im);
                    }
                    put_len(&mut h, recs.len());
                    for r in recs.iter().filter_map(|&r| v.set.records.get(r)) {
                        put_str(&mut h, &r.q.question);
                        put_str(&mut h, &r.q.answer);
                        put_str(&mut h, &r.q.kind);
                        put_len(&mut h, r.q.code.len());
                        for c in &r.q.code {
                            h.update(c.to_le_bytes());
                        }
                    }
                }
            }
            Examples::Sequences(s) => {
                h.update(b"sequences");
                put_len(&mut h, s.images.len());
                for (im, refs) in s.images.iter().zip(&s.references) {
                    put_image(&mut h, im);
                    put_len(&mut h, refs.len());
                    for r in refs {
                        put_len(&mut h, r.len());
                        for t in r {
                            h.update(t.to_le_bytes());
                        }
                    }
                }
                put_len(&mut h, s.words.len());
                for w in s.words.iter() {
                    put_str(&mut h, w);
                }
            }
        }
        hex(&h.finalize())
    }

    /// What the examples ask of a model.
    pub fn task(&self) -> Task {
        match self {
            Examples::Images { .. } => Task::Classify,
            Examples::Vqa(_) => Task::Answer,
            Examples::Sequences(s) => Task::Sequence { bleu: s.text },
        }
    }

    /// Number of examples (images).
    pub fn len(&self) -> usize {
        match self {
            Examples::Images { set: s, .. } => s.len(),
            Examples::Vqa(v) => v.images.len(),
            Examples::Sequences(s) => s.images.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of rows (images, or questions).
    pub fn rows(&self) -> usize {
        match self {
            Examples::Images { set: s, .. } => s.len(),
            Examples::Vqa(v) => v.records.iter().map(Vec::len).sum(),
            Examples::Sequences(s) => s.images.len(),
        }
    }

    /// The digit images, when this is an image set.
    pub fn as_images(&self) -> Option<&LabeledImages> {
        match self {
            Examples::Images { set: s, .. } => Some(s),
            _ => None,
        }
    }

    /// Examples `idx` as a batch.
    pub fn batch(&self, idx: &[usize], device: &Device) -> Result<Batch> {
        match self {
            Examples::Images { set: s, .. } => {
                let b = s.batch(idx, device)?;
                Ok(Batch::images(b.images, b.labels))
            }
            Examples::Vqa(v) => v.batch(idx, device),
            Examples::Sequences(s) => s.batch(idx, device),
        }
    }

    /// Examples `idx` as a training batch: images shifted by up to `max` pixels each way
    /// (uniform per image, drawn from `rng`), zeros filling in; for sequences, one of each
    /// image's references drawn from `rng` (every correct caption is trained on); other data as
    /// it is.
    pub fn training_batch(
        &self,
        idx: &[usize],
        max: usize,
        rng: &mut gaze_tensor::seed::Rng,
        device: &Device,
    ) -> Result<Batch> {
        use rand::Rng as _;
        match self {
            Examples::Images { set, .. } if max > 0 => shifted_batch(set, idx, max, rng, device),
            Examples::Sequences(s) => s.batch_of(idx, |_, n| if n > 1 { rng.random_range(0..n) } else { 0 }, device),
            _ => self.batch(idx, device),
        }
    }

    /// What each row of `batch(idx)` is.
    pub fn row_info(&self, idx: &[usize]) -> Vec<RowInfo> {
        match self {
            Examples::Images { set: s, objects } => idx
                .iter()
                .enumerate()
                .map(|(k, &i)| RowInfo {
                    row: row_of(
                        Truth::Class(s.labels.get(i).map(|&l| u32::from(l))),
                        objects.get(i).map_or(&[][..], Vec::as_slice),
                    ),
                    truth: s.labels.get(i).map(|l| l.to_string()).unwrap_or_default(),
                    question: String::new(),
                    image: k,
                })
                .collect(),
            Examples::Sequences(s) => idx
                .iter()
                .enumerate()
                .map(|(k, &i)| {
                    let refs = s.references.get(i).cloned().unwrap_or_default();
                    let truth = refs.first().map(|r| s.spell(r)).unwrap_or_default();
                    let objects = s.objects.get(i).map_or(&[][..], Vec::as_slice);
                    let mut row = row_of(Truth::Tokens(refs), objects);
                    row.word_boxes = s.word_boxes.get(i).and_then(|w| w.first()).cloned().unwrap_or_default();
                    RowInfo { row, truth, question: String::new(), image: k }
                })
                .collect(),
            Examples::Vqa(v) => {
                let mut rows = vec![];
                for (k, &i) in idx.iter().enumerate() {
                    for &r in v.records.get(i).map_or(&[][..], Vec::as_slice) {
                        if let Some(rec) = v.set.records.get(r) {
                            let boxes = v.set.boxes.get(rec.image).map_or(&[][..], Vec::as_slice);
                            let (w, h) = v.set.images.get(rec.image).map_or((1, 1), |im| (im.width, im.height));
                            let focus: Vec<_> =
                                rec.q.focus.iter().filter_map(|&f| boxes.get(f)).map(|b| frac(&b.bbox, w, h)).collect();
                            let mut row = row_of(Truth::Class(v.encoder.answers.class(&rec.q.answer)), &focus);
                            row.kind = rec.q.kind.clone();
                            row.relational = rec.q.relational;
                            rows.push(RowInfo {
                                row,
                                truth: rec.q.answer.clone(),
                                question: rec.q.question.clone(),
                                image: k,
                            });
                        }
                    }
                }
                rows
            }
        }
    }

    /// Example `i`'s image, for pictures.
    pub fn image(&self, i: usize) -> Result<Image> {
        let missing = || TrainError::Other(format!("example {i} of {}", self.len()));
        match self {
            Examples::Images { set: s, .. } => {
                if i >= s.len() {
                    return Err(missing());
                }
                Ok(s.to_image(i)?)
            }
            Examples::Vqa(v) => {
                let j = *v.images.get(i).ok_or_else(missing)?;
                v.set.images.get(j).cloned().ok_or_else(missing)
            }
            Examples::Sequences(s) => s.images.get(i).cloned().ok_or_else(missing),
        }
    }
}

/// A training batch whose images are shifted by up to `max` pixels each way (uniform per image,
/// drawn from `rng`), zeros filling in.
pub fn shifted_batch(
    set: &LabeledImages,
    idx: &[usize],
    max: usize,
    rng: &mut gaze_tensor::seed::Rng,
    device: &Device,
) -> Result<Batch> {
    use rand::Rng as _;
    let (c, h, w) = (set.channels, set.rows, set.cols);
    let m = max as i64;
    let mut shifted = LabeledImages {
        channels: c,
        rows: h,
        cols: w,
        pixels: Vec::with_capacity(idx.len() * set.image_len()),
        labels: Vec::with_capacity(idx.len()),
    };
    for &i in idx {
        let src = set.image(i).ok_or_else(|| TrainError::Other(format!("image {i} of {}", set.len())))?;
        let (dy, dx) = (rng.random_range(-m..=m), rng.random_range(-m..=m));
        for plane in src.chunks_exact(h * w) {
            for y in 0..h as i64 {
                for x in 0..w as i64 {
                    let (sy, sx) = (y - dy, x - dx);
                    let v = if sy < 0 || sx < 0 || sy >= h as i64 || sx >= w as i64 {
                        0
                    } else {
                        plane[(sy as usize) * w + sx as usize]
                    };
                    shifted.pixels.push(v);
                }
            }
        }
        shifted.labels.push(set.labels[i]);
    }
    let b = shifted.batch(&(0..idx.len()).collect::<Vec<_>>(), device)?;
    Ok(Batch::images(b.images, b.labels))
}

impl VqaSplit {
    /// Images `idx` of this split and all their questions.
    pub fn batch(&self, idx: &[usize], device: &Device) -> Result<Batch> {
        let (enc, max) = (&self.encoder, self.encoder.max_len);
        let mut imgs = Vec::with_capacity(idx.len());
        let (mut image, mut tokens, mut lengths, mut codes, mut answers) = (vec![], vec![], vec![], vec![], vec![]);
        let mut code_width = None;
        let mut all_codes = true;
        for (k, &i) in idx.iter().enumerate() {
            let bad = || TrainError::Other(format!("example {i} of {}", self.images.len()));
            let j = *self.images.get(i).ok_or_else(bad)?;
            imgs.push(self.set.images.get(j).ok_or_else(bad)?);
            for &r in self.records.get(i).ok_or_else(bad)? {
                let rec = &self.set.records.get(r).ok_or_else(bad)?.q;
                image.push(k as u32);
                let (ids, len) = enc.encode_question(&rec.question);
                lengths.push(len);
                tokens.extend(ids);
                answers.push(enc.answers.class(&rec.answer).unwrap_or(0));
                let w = *code_width.get_or_insert(rec.code.len());
                all_codes &= w > 0 && rec.code.len() == w;
                codes.extend_from_slice(&rec.code);
            }
        }
        let q = image.len();
        if q == 0 {
            return Err(TrainError::Other(format!("images {idx:?} have no questions")));
        }
        let codes = match code_width {
            Some(w) if all_codes => Some(Tensor::from_vec(codes, (q, w), device)?),
            _ => None,
        };
        Ok(Batch {
            images: images_to_tensor(&imgs, device)?,
            targets: Targets::Answers(Tensor::from_vec(answers, q, device)?),
            questions: Some(Questions {
                image: Tensor::from_vec(image, q, device)?,
                tokens: Tensor::from_vec(tokens, (q, max), device)?,
                lengths: Tensor::from_vec(lengths, q, device)?,
                codes,
            }),
        })
    }
}

/// Data, split, with what a model needs to know about it.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Training examples.
    pub train: Examples,
    /// Validation examples.
    pub val: Examples,
    /// Test examples.
    pub test: Examples,
    /// (channels, height, width).
    pub input: (usize, usize, usize),
    /// Number of classes (answers).
    pub classes: usize,
    /// Question vocabulary size (0 for images).
    pub vocab: usize,
    /// Question code width (0: none).
    pub code_dim: usize,
    /// Longest target sequence, `EOS` included (0: class targets).
    pub max_steps: usize,
    /// Answer names (VQA), for pictures.
    pub answers: Option<AnswerSet>,
    /// The name of each class (a classifier: digits, a folder's `classes.txt`, CIFAR's names;
    /// VQA: the answers); empty for sequence targets, whose words name their tokens.
    pub class_names: Vec<String>,
    /// Where the data came from, for reports.
    pub description: String,
    /// For generated canvases redrawn every epoch: the settings and the training digits.
    fresh: Option<(Fresh, LabeledImages)>,
}

/// What is redrawn every epoch from the training digits.
#[derive(Debug, Clone)]
enum Fresh {
    /// Translated / cluttered canvases.
    Canvas(CanvasConfig),
    /// MNIST pairs (with their target).
    Pairs(PairsData),
}

impl Prepared {
    /// The training set of epoch `epoch` (0-based): `train` itself, unless the data is redrawn
    /// every epoch, then epoch e >= 1 is drawn from `seed.stream("data/train").index(e)`.
    pub fn train_for_epoch(&self, epoch: usize, seed: Seed) -> Result<Option<Examples>> {
        let seed = seed.stream("data/train").index(epoch as u64);
        match &self.fresh {
            Some((Fresh::Canvas(canvas), digits)) if epoch > 0 => {
                let (set, objects) = canvases(canvas, digits, seed)?;
                Ok(Some(Examples::Images { set, objects }))
            }
            Some((Fresh::Pairs(p), digits)) if epoch > 0 => Ok(Some(pairs(p, digits, seed, "train")?)),
            _ => Ok(None),
        }
    }

    /// Checks every split against what the model will be built for, before any training: no
    /// split is empty, every image has the training images' size and channels, every label is
    /// one of the classes, every target token is in the vocabulary. The error names the split,
    /// the first bad example and where the data came from.
    pub fn check(&self) -> Result<()> {
        let from = &self.description;
        for (name, split) in [("training", &self.train), ("validation", &self.val), ("test", &self.test)] {
            if split.is_empty() {
                return Err(TrainError::Other(format!("the {name} split is empty (data: {from})")));
            }
            match split {
                Examples::Images { set, .. } => {
                    let size = (set.channels, set.rows, set.cols);
                    if size != self.input {
                        return Err(TrainError::Other(format!(
                            "the {name} images are {}x{}x{} (channels x height x width), the training images {}x{}x{} \
                             (data: {from})",
                            size.0, size.1, size.2, self.input.0, self.input.1, self.input.2
                        )));
                    }
                    if let Some((i, l)) = set.labels.iter().enumerate().find(|(_, &l)| usize::from(l) >= self.classes) {
                        return Err(TrainError::Other(format!(
                            "{name} image {i} has label {l}, outside the {} classes (data: {from})",
                            self.classes
                        )));
                    }
                }
                Examples::Sequences(s) => {
                    for (i, img) in s.images.iter().enumerate() {
                        if (img.channels, img.height, img.width) != self.input {
                            return Err(TrainError::Other(format!(
                                "{name} image {i} is {}x{}x{}, the model reads {}x{}x{} (data: {from})",
                                img.channels, img.height, img.width, self.input.0, self.input.1, self.input.2
                            )));
                        }
                    }
                    let bad = s.references.iter().enumerate().find_map(|(i, refs)| {
                        refs.iter().flatten().find(|&&t| t as usize >= self.classes).map(|&t| (i, t))
                    });
                    if let Some((i, t)) = bad {
                        return Err(TrainError::Other(format!(
                            "{name} example {i} has token {t}, outside the vocabulary of {} (data: {from})",
                            self.classes
                        )));
                    }
                }
                Examples::Vqa(_) => {}
            }
        }
        Ok(())
    }

    /// What a model is built for.
    pub fn shape(&self) -> DataShape {
        DataShape {
            input: self.input,
            classes: self.classes,
            vocab: self.vocab,
            code_dim: self.code_dim,
            max_steps: self.max_steps,
        }
    }

    fn images(
        train: Examples,
        val: Examples,
        test: Examples,
        input: (usize, usize, usize),
        description: String,
    ) -> Self {
        Prepared {
            train,
            val,
            test,
            input,
            classes: 10,
            vocab: 0,
            code_dim: 0,
            max_steps: 0,
            answers: None,
            class_names: (0..10).map(|d| d.to_string()).collect(),
            description,
            fresh: None,
        }
    }

    /// What a run records of its data (`data.json`): where it came from, a checksum of each
    /// split as loaded, and what a model needs to run without it.
    pub fn record(&self) -> DataRecord {
        let words = match &self.test {
            Examples::Sequences(s) => s.words.as_ref().clone(),
            _ => vec![],
        };
        let (text, questions) = match &self.test {
            Examples::Sequences(s) => (s.text, None),
            Examples::Vqa(v) => (false, Some(v.encoder.as_ref().clone())),
            Examples::Images { .. } => (false, None),
        };
        DataRecord {
            description: self.description.clone(),
            sha256: Checksums { train: self.train.sha256(), val: self.val.sha256(), test: self.test.sha256() },
            input: self.input,
            classes: self.classes,
            vocab: self.vocab,
            code_dim: self.code_dim,
            max_steps: self.max_steps,
            class_names: self.class_names.clone(),
            words,
            text,
            questions,
        }
    }
}

/// SHA-256 of each split as loaded (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksums {
    /// The training split (its first epoch's examples).
    pub train: String,
    /// The validation split.
    pub val: String,
    /// The test split.
    pub test: String,
}

/// The data of a run, as it recorded it in `data.json`: enough to tell whether data read later is
/// the same, and to build and run its model without the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    /// Where the data came from (the folder, the hub, the fixture, the generator) and its sizes.
    pub description: String,
    /// A checksum of each split's examples (pixels, labels, questions, references).
    pub sha256: Checksums,
    /// (channels, height, width) of the model's input.
    pub input: (usize, usize, usize),
    /// Classes, answers, or output words.
    pub classes: usize,
    /// Question vocabulary size (0 for images).
    pub vocab: usize,
    /// Question code width (0: none).
    pub code_dim: usize,
    /// Longest output sequence, `EOS` included (0: a classifier).
    pub max_steps: usize,
    /// The name of each class (empty for sequence targets).
    pub class_names: Vec<String>,
    /// The output vocabulary of a sequence model, in token order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<String>,
    /// Whether the sequences are natural-language text (scored with BLEU).
    #[serde(default)]
    pub text: bool,
    /// A VQA model's question vocabulary and answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub questions: Option<VqaEncoder>,
}

/// The file a run records its data in.
pub const DATA_RECORD: &str = "data.json";

impl DataRecord {
    /// The shape a model is built for.
    pub fn shape(&self) -> DataShape {
        DataShape {
            input: self.input,
            classes: self.classes,
            vocab: self.vocab,
            code_dim: self.code_dim,
            max_steps: self.max_steps,
        }
    }

    /// Writes `run_dir/data.json` (atomically).
    pub fn save(&self, run_dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|e| TrainError::Other(e.to_string()))?;
        gaze_data::write_atomic(&run_dir.join(DATA_RECORD), json.as_bytes()).map_err(TrainError::from)
    }

    /// Reads `run_dir/data.json`: `None` for a run made before runs recorded their data.
    pub fn load(run_dir: &Path) -> Result<Option<Self>> {
        let path = run_dir.join(DATA_RECORD);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(TrainError::io(&path, e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| TrainError::Other(format!("{}: {e}", path.display())))
    }

    /// Whether `now` (the data as read today) is the data this run was tested on: an error naming
    /// both sources when the test split's checksum differs.
    pub fn check_same_test(&self, now: &DataRecord, run_dir: &Path) -> Result<()> {
        if self.sha256.test == now.sha256.test {
            return Ok(());
        }
        Err(TrainError::Other(format!(
            "{}: this run was tested on {} (test split sha256 {}), but its data now reads as {} (sha256 {}): \
             give the data it recorded (`--data-dir` for an IDX folder), or pass --other-data to evaluate on this data \
             on purpose",
            run_dir.join(DATA_RECORD).display(),
            self.description,
            short(&self.sha256.test),
            now.description,
            short(&now.sha256.test)
        )))
    }
}

fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

/// Lower-case hex of a digest.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn put_len(h: &mut Sha256, n: usize) {
    h.update((n as u64).to_le_bytes());
}

fn put_str(h: &mut Sha256, s: &str) {
    put_len(h, s.len());
    h.update(s.as_bytes());
}

fn put_image(h: &mut Sha256, im: &Image) {
    for n in [im.channels, im.height, im.width] {
        put_len(h, n);
    }
    h.update(&im.data);
}

/// The objects of an image: each one's box and its centre, in fractions of the image's sides.
type Objects = Vec<Vec<(FracBox, (f32, f32))>>;

/// Every digit of `set` placed on its own canvas, with each digit's ink box (and its centre) as
/// fractions of the canvas side.
fn canvases(cfg: &CanvasConfig, set: &LabeledImages, seed: Seed) -> Result<(LabeledImages, Objects)> {
    let g = MnistCanvas::new(cfg.clone(), set, seed)?;
    let mut out = LabeledImages {
        channels: 1,
        rows: cfg.canvas,
        cols: cfg.canvas,
        pixels: Vec::with_capacity(g.len() * cfg.canvas * cfg.canvas),
        labels: Vec::with_capacity(g.len()),
    };
    let mut centres = Vec::with_capacity(g.len());
    for i in 0..g.len() {
        let s = g.sample(i)?;
        out.pixels.extend_from_slice(&s.image.data);
        out.labels.push(s.label);
        if let Some(d) = s.boxes.iter().find(|b| b.label == "digit") {
            centres.push(vec![frac(&d.bbox, cfg.canvas, cfg.canvas)]);
        }
    }
    if centres.len() != out.len() {
        return Err(TrainError::Other(format!("canvases: {} digit boxes for {} canvases", centres.len(), out.len())));
    }
    Ok((out, centres))
}

/// The words of digit sequences: the four special tokens, then the digits 0-9.
const DIGIT_WORDS: [&str; 14] = ["<pad>", "<unk>", "<bos>", "<eos>", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// MNIST pairs over the digits of `set` drawn from `seed`, as examples of `p`'s target.
fn pairs(p: &PairsData, set: &LabeledImages, seed: Seed, split: &str) -> Result<Examples> {
    let n = p.pairs.canvas;
    let g = MnistPairs::new(p.pairs.clone(), set, seed)?;
    let mut samples = Vec::with_capacity(g.len());
    for i in 0..g.len() {
        let s = g.sample(i)?;
        let objects: Vec<_> = s.boxes.iter().take(s.digits.len()).map(|b| frac(&b.bbox, n, n)).collect();
        samples.push((s, objects));
    }
    if p.target != PairsTarget::Sequence {
        let mut out = LabeledImages {
            channels: 1,
            rows: n,
            cols: n,
            pixels: Vec::with_capacity(samples.len() * n * n),
            labels: Vec::with_capacity(samples.len()),
        };
        let mut objects = Vec::with_capacity(samples.len());
        for (s, o) in samples {
            let label = match p.target {
                PairsTarget::Pair => s.pair().ok_or_else(|| {
                    TrainError::Other(format!("{split}: a pair class needs two digits, not {}", s.digits.len()))
                })?,
                _ => s.sum,
            };
            out.pixels.extend_from_slice(&s.image.data);
            out.labels.push(label);
            objects.push(o);
        }
        return Ok(Examples::Images { set: out, objects });
    }
    let mut out = SequenceSplit {
        images: Vec::with_capacity(samples.len()),
        references: Vec::with_capacity(samples.len()),
        word_boxes: Vec::with_capacity(samples.len()),
        objects: Vec::with_capacity(samples.len()),
        words: Arc::new(DIGIT_WORDS.iter().map(|w| w.to_string()).collect()),
        text: false,
    };
    for (s, o) in samples {
        out.references.push(vec![s.digits.iter().map(|&d| 4 + u32::from(d)).collect()]);
        // The boxes are in reading order: token k names box k.
        out.word_boxes.push(vec![(0..s.digits.len()).map(Some).collect()]);
        out.objects.push(o);
        out.images.push(s.image);
    }
    Ok(Examples::Sequences(out))
}

/// The names of the 10 classes of an IDX folder's digits: its `classes.txt` when it has one, else
/// the digits.
fn digit_names(m: &MnistData) -> Result<Vec<String>> {
    let listed = match m.source.folder() {
        Some(dir) => gaze_data::mnist::class_names_in(&dir, 10)?,
        None => None,
    };
    Ok(listed.unwrap_or_else(|| (0..10).map(|d| d.to_string()).collect()))
}

fn digits(m: &MnistData) -> Result<(LabeledImages, LabeledImages, LabeledImages, String)> {
    let mnist = Mnist::load(&m.source)?;
    let val = ((mnist.train.len() as f64) * m.val_fraction).round() as usize;
    let (mut train, val) = mnist.train_val(val.max(1))?;
    if m.train_limit > 0 {
        train = train.take(m.train_limit);
    }
    let test = if m.test_limit > 0 { mnist.test.take(m.test_limit) } else { mnist.test };
    let desc =
        format!("{}: {} train / {} val / {} test digits", m.source.describe(), train.len(), val.len(), test.len());
    Ok((train, val, test, desc))
}

/// Loads or generates the data of `cfg`; generated sets use `seed.stream("data/<split>")`.
pub fn prepare(cfg: &DataConfig, seed: Seed) -> Result<Prepared> {
    match cfg {
        DataConfig::Mnist(m) => {
            let (train, val, test, description) = digits(m)?;
            let input = (train.channels, train.rows, train.cols);
            let plain = |set| Examples::Images { set, objects: vec![] };
            let mut p = Prepared::images(plain(train), plain(val), plain(test), input, description);
            p.class_names = digit_names(m)?;
            Ok(p)
        }
        DataConfig::MnistCanvas(c) => {
            let (train, val, test, desc) = digits(&c.digits)?;
            let gen =
                |set: &LabeledImages, split: &str| canvases(&c.canvas, set, seed.stream(&format!("data/{split}")));
            let (train_canvases, val, test) = (gen(&train, "train")?, gen(&val, "val")?, gen(&test, "test")?);
            let input = (1, c.canvas.canvas, c.canvas.canvas);
            let description = format!(
                "{}x{} canvas, {} clutter crops{}, from {desc}",
                c.canvas.canvas,
                c.canvas.canvas,
                c.canvas.distractors,
                if c.fresh_each_epoch { ", training canvases redrawn every epoch" } else { "" }
            );
            let [train_canvases, val, test] =
                [train_canvases, val, test].map(|(set, objects)| Examples::Images { set, objects });
            let mut p = Prepared::images(train_canvases, val, test, input, description);
            p.class_names = digit_names(&c.digits)?;
            p.fresh = c.fresh_each_epoch.then(|| (Fresh::Canvas(c.canvas.clone()), train));
            Ok(p)
        }
        DataConfig::MnistPairs(p) => {
            let (train, val, test, desc) = digits(&p.digits)?;
            let n = p.pairs.canvas;
            let what = match p.target {
                PairsTarget::Sequence => "read left to right",
                PairsTarget::Sum => "their sum as the class",
                PairsTarget::Pair => "the unordered pair as the class",
            };
            let clutter = match p.pairs.distractors {
                0 => String::new(),
                d => format!(", {d} clutter crops"),
            };
            let fresh = if p.fresh_each_epoch { ", training pairs redrawn every epoch" } else { "" };
            let description =
                format!("{} MNIST digits on a {n}x{n} canvas{clutter}, {what}{fresh}, from {desc}", p.pairs.digits);
            let gen = |set: &LabeledImages, split: &str| pairs(p, set, seed.stream(&format!("data/{split}")), split);
            let mut prepared =
                Prepared::images(gen(&train, "train")?, gen(&val, "val")?, gen(&test, "test")?, (1, n, n), description);
            match p.target {
                PairsTarget::Sequence => {
                    prepared.classes = DIGIT_WORDS.len();
                    prepared.max_steps = p.pairs.digits + 1;
                    prepared.class_names = vec![];
                }
                PairsTarget::Sum => {
                    prepared.classes = 9 * p.pairs.digits + 1;
                    prepared.class_names = (0..prepared.classes).map(|s| format!("sum {s}")).collect();
                }
                PairsTarget::Pair => {
                    prepared.classes = gaze_data::generate::PAIR_CLASSES;
                    let mut names = vec![String::new(); prepared.classes];
                    for a in 0..10u8 {
                        for b in a..10u8 {
                            if let Some(n) = names.get_mut(usize::from(gaze_data::generate::pair_class(a, b))) {
                                *n = format!("{a}&{b}");
                            }
                        }
                    }
                    prepared.class_names = names;
                }
            }
            prepared.fresh = p.fresh_each_epoch.then(|| (Fresh::Pairs(p.clone()), train));
            Ok(prepared)
        }
        DataConfig::BarnVqa(b) => generated(
            |s| BarnVqa::new(b.barn.clone(), s),
            BarnVqa::scene,
            [b.train_scenes, b.val_scenes, b.test_scenes],
            seed,
            b.max_words,
            format!("barn-scene VQA, {}/{}/{} scenes", b.train_scenes, b.val_scenes, b.test_scenes),
        ),
        DataConfig::SortOfClevr(c) => generated(
            |s| SortOfClevr::new(c.clevr.clone(), s),
            SortOfClevr::scene,
            [c.train_images, c.val_images, c.test_images],
            seed,
            c.max_words,
            format!("Sort-of-CLEVR, {}/{}/{} images", c.train_images, c.val_images, c.test_images),
        ),
        DataConfig::VqaFolder(f) => {
            let set = VqaSet::read_folder(&f.path, Some((f.size[0], f.size[1])))?;
            let (parts, how) = folder_splits(&set.splits, f.val_fraction, f.test_fraction, seed)
                .map_err(|e| TrainError::Other(format!("{}: {e}", f.path.display())))?;
            let desc = format!(
                "VQA folder {} ({} images: {}/{}/{} by {how}, resized to {}x{})",
                f.path.display(),
                set.images.len(),
                parts[0].len(),
                parts[1].len(),
                parts[2].len(),
                f.size[0],
                f.size[1]
            );
            let set = Arc::new(set);
            vqa_views(set.clone(), parts, f.max_words, desc)
        }
        DataConfig::ShapeCaptions(c) => {
            let gen = |n: usize, split: &str| -> Result<CaptionSet> {
                let g = ShapeCaptions::new(c.captions.clone(), seed.stream(&format!("data/{split}")))?;
                Ok(CaptionSet::from_samples((0..n).map(|i| g.sample(i)).collect::<gaze_data::Result<_>>()?))
            };
            let mut sets = [gen(c.train_images, "train")?, gen(c.val_images, "val")?, gen(c.test_images, "test")?];
            if !c.any_order {
                // Train on the reading-order caption, each scene's first record.
                let mut seen = vec![false; sets[0].images.len()];
                sets[0].records.retain(|r| seen.get_mut(r.image).is_some_and(|s| !std::mem::replace(s, true)));
            }
            // Every word of a generated caption is a training word, every caption is kept.
            let description = format!(
                "shape-scene captions ({0}x{0}, up to {1} shapes, every order of naming them a reference; \
                 trained on {5}), {2}/{3}/{4} images",
                c.captions.size,
                c.captions.max_shapes,
                c.train_images,
                c.val_images,
                c.test_images,
                if c.any_order { "any order" } else { "reading order" }
            );
            captions(sets, 1, usize::MAX, description)
        }
        DataConfig::Cifar(c) => {
            let set = gaze_data::cifar::Cifar::read_folder(&c.path)?;
            let n = set.train.len();
            let val = ((n as f64) * c.val_fraction).round().max(1.0) as usize;
            if val >= n {
                return Err(TrainError::Other(format!(
                    "{}: {n} training images cannot spare {val} for validation",
                    c.path.display()
                )));
            }
            let mut train = set.train.select(&(0..n - val).collect::<Vec<_>>())?;
            let held = set.train.select(&(n - val..n).collect::<Vec<_>>())?;
            if c.train_limit > 0 {
                train = train.take(c.train_limit);
            }
            let test = if c.test_limit > 0 { set.test.take(c.test_limit) } else { set.test };
            let description = format!(
                "CIFAR-{} from {}: {} train / {} val / {} test images",
                set.kind.classes(),
                c.path.display(),
                train.len(),
                held.len(),
                test.len()
            );
            let plain = |set| Examples::Images { set, objects: vec![] };
            let mut p = Prepared::images(plain(train), plain(held), plain(test), (3, 32, 32), description);
            p.classes = set.kind.classes();
            p.class_names = set.names.clone();
            Ok(p)
        }
        DataConfig::CaptionFolder(f) => {
            let set = CaptionSet::read_folder(&f.path, Some((f.size[0], f.size[1])))?;
            let (parts, how) = folder_splits(&set.splits, f.val_fraction, f.test_fraction, seed)
                .map_err(|e| TrainError::Other(format!("{}: {e}", f.path.display())))?;
            let desc = format!(
                "caption folder {} ({} images, {} captions: {}/{}/{} images by {how}, resized to {}x{})",
                f.path.display(),
                set.images.len(),
                set.records.len(),
                parts[0].len(),
                parts[1].len(),
                parts[2].len(),
                f.size[0],
                f.size[1]
            );
            let sets = parts.map(|p| set.subset(&p));
            captions(sets, f.min_count, f.max_words, desc)
        }
    }
}

/// Caption sets (train, val, test) as sequence splits over a vocabulary of the training
/// captions' words seen at least `min_count` times. Training captions longer than `max_words`
/// words are left out (an image left without one is too); validation and test keep every
/// reference for BLEU. Decoding stops after as many words as the longest training caption has.
fn captions(sets: [CaptionSet; 3], min_count: usize, max_words: usize, description: String) -> Result<Prepared> {
    let vocab = Vocab::build(sets[0].records.iter().map(|r| r.caption.as_str()), min_count);
    let words: Arc<Vec<String>> = Arc::new((0..vocab.len() as u32).map(|i| vocab.word(i).to_string()).collect());
    let split = |set: &CaptionSet, train: bool| {
        let mut out = SequenceSplit {
            images: vec![],
            references: vec![],
            word_boxes: vec![],
            objects: vec![],
            words: words.clone(),
            text: true,
        };
        let mut per: Vec<Vec<&gaze_data::caption::CaptionRecord>> = vec![vec![]; set.images.len()];
        for r in &set.records {
            if let Some(p) = per.get_mut(r.image) {
                p.push(r);
            }
        }
        for (i, recs) in per.into_iter().enumerate() {
            let (mut refs, mut links) = (vec![], vec![]);
            for r in recs {
                let ids = vocab.encode(&r.caption);
                if ids.is_empty() || (train && ids.len() > max_words) {
                    continue;
                }
                links.push(if r.word_boxes.len() == ids.len() { r.word_boxes.clone() } else { vec![] });
                refs.push(ids);
            }
            if refs.is_empty() {
                continue;
            }
            let img = &set.images[i];
            let boxes = set.boxes.get(i).map_or(&[][..], Vec::as_slice);
            out.objects.push(boxes.iter().map(|b| frac(&b.bbox, img.width, img.height)).collect());
            out.images.push(img.clone());
            out.references.push(refs);
            out.word_boxes.push(links);
        }
        out
    };
    let [train, val, test] = [split(&sets[0], true), split(&sets[1], false), split(&sets[2], false)];
    for (name, s) in [("training", &train), ("validation", &val), ("test", &test)] {
        if s.images.is_empty() {
            return Err(TrainError::Other(format!(
                "{description}: the {name} split has no image with a usable caption{}",
                if name == "training" { format!(" (of at most {max_words} words)") } else { String::new() }
            )));
        }
    }
    let input = train.images.first().map_or((3, 0, 0), |im| (im.channels, im.height, im.width));
    let longest = train.references.iter().flatten().map(Vec::len).max().unwrap_or(1);
    let description = format!("{description}; {} words (min count {min_count})", vocab.len());
    let mut p = Prepared::images(
        Examples::Sequences(train),
        Examples::Sequences(val),
        Examples::Sequences(test),
        input,
        description,
    );
    p.classes = vocab.len();
    p.class_names = vec![];
    p.max_steps = longest.min(max_words) + 1; // decoding stops at the longest training caption
    Ok(p)
}

/// Train / val / test image indices of a folder's images: the data set's own splits when every
/// image has one (validation carved from training by `val_fraction`, seeded, when it ships none),
/// else seeded fractions of all images. Also says which it was, for the description.
pub fn folder_splits(
    own: &[Option<gaze_data::SplitName>],
    val_fraction: f64,
    test_fraction: f64,
    seed: Seed,
) -> std::result::Result<([Vec<usize>; 3], &'static str), String> {
    use gaze_data::SplitName;
    let n = own.len();
    if n > 0 && own.iter().all(Option::is_some) {
        let of = |s: SplitName| (0..n).filter(|&i| own[i] == Some(s)).collect::<Vec<_>>();
        let (mut train, mut val, test) = (of(SplitName::Train), of(SplitName::Val), of(SplitName::Test));
        if train.is_empty() || test.is_empty() {
            return Err(format!(
                "its own splits have {} training and {} test images; both are needed",
                train.len(),
                test.len()
            ));
        }
        let mut how = "its own splits";
        if val.is_empty() {
            let k = ((train.len() as f64) * val_fraction).round().max(1.0) as usize;
            let s =
                gaze_data::dataset::split(train.len(), k, 0, seed.stream("data/split")).map_err(|e| e.to_string())?;
            val = s.val.iter().map(|&i| train[i]).collect();
            train = s.train.iter().map(|&i| train[i]).collect();
            how = "its own train / test splits, validation drawn from training";
        }
        return Ok(([train, val, test], how));
    }
    let val = ((n as f64) * val_fraction).round().max(1.0) as usize;
    let test = ((n as f64) * test_fraction).round().max(1.0) as usize;
    let split = gaze_data::dataset::split(n, val, test, seed.stream("data/split")).map_err(|e| e.to_string())?;
    Ok(([split.train, split.val, split.test], "seeded fractions"))
}

/// Scenes from a generator per split (`seed.stream("data/<split>")`), `counts` = train / val / test.
fn generated<G>(
    make: impl Fn(Seed) -> gaze_data::Result<G>,
    scene: impl Fn(&G, usize) -> gaze_data::Result<gaze_data::vqa::VqaScene>,
    counts: [usize; 3],
    seed: Seed,
    max_words: usize,
    description: String,
) -> Result<Prepared> {
    let mut sets = Vec::with_capacity(3);
    for (n, split) in counts.into_iter().zip(["train", "val", "test"]) {
        let g = make(seed.stream(&format!("data/{split}")))?;
        sets.push(VqaSet::from_scenes((0..n).map(|i| scene(&g, i)).collect::<gaze_data::Result<_>>()?));
    }
    let sets: [VqaSet; 3] = sets.try_into().map_err(|_| TrainError::Other("three splits expected".into()))?;
    vqa(sets, max_words, description)
}

/// Three generated sets, each used whole.
fn vqa(sets: [VqaSet; 3], max_words: usize, description: String) -> Result<Prepared> {
    let [train, val, test] = sets;
    let views = [train, val, test].map(|s| {
        let n = s.images.len();
        (Arc::new(s), (0..n).collect::<Vec<_>>())
    });
    let [(a, ia), (b, ib), (c, ic)] = views;
    let encoder = Arc::new(fit_encoder(&a, &ia, max_words)?);
    Ok(vqa_prepared(
        [split_of(a, ia, &encoder), split_of(b, ib, &encoder), split_of(c, ic, &encoder)],
        encoder,
        description,
    ))
}

/// One set, split by image.
fn vqa_views(set: Arc<VqaSet>, parts: [Vec<usize>; 3], max_words: usize, description: String) -> Result<Prepared> {
    let [ta, va, te] = parts;
    let encoder = Arc::new(fit_encoder(&set, &ta, max_words)?);
    Ok(vqa_prepared(
        [split_of(set.clone(), ta, &encoder), split_of(set.clone(), va, &encoder), split_of(set, te, &encoder)],
        encoder,
        description,
    ))
}

/// The vocabulary and answers of the records of `images`.
fn fit_encoder(set: &VqaSet, images: &[usize], max_words: usize) -> Result<VqaEncoder> {
    let keep: std::collections::HashSet<usize> = images.iter().copied().collect();
    let recs: Vec<usize> = (0..set.records.len()).filter(|&r| keep.contains(&set.records[r].image)).collect();
    if recs.is_empty() {
        return Err(TrainError::Other("the training split has no questions".into()));
    }
    Ok(VqaEncoder::fit(set, &recs, max_words)?)
}

fn split_of(set: Arc<VqaSet>, images: Vec<usize>, encoder: &Arc<VqaEncoder>) -> Examples {
    let mut by_image: std::collections::HashMap<usize, Vec<usize>> = std::collections::HashMap::new();
    for (r, rec) in set.records.iter().enumerate() {
        by_image.entry(rec.image).or_default().push(r);
    }
    // images without questions teach nothing and cannot be batched
    let images: Vec<usize> = images.into_iter().filter(|i| by_image.contains_key(i)).collect();
    let records = images.iter().map(|i| by_image.get(i).cloned().unwrap_or_default()).collect();
    Examples::Vqa(VqaSplit { set, images, records, encoder: encoder.clone() })
}

fn vqa_prepared(splits: [Examples; 3], encoder: Arc<VqaEncoder>, description: String) -> Prepared {
    let [train, val, test] = splits;
    let (input, code_dim) = match &train {
        Examples::Vqa(v) => {
            let first = v.images.first().and_then(|&i| v.set.images.get(i));
            let input = first.map_or((3, 0, 0), |im| (im.channels, im.height, im.width));
            let code = v.records.first().and_then(|r| r.first()).and_then(|&r| v.set.records.get(r));
            (input, code.map_or(0, |r| r.q.code.len()))
        }
        Examples::Images { set: s, .. } => ((s.channels, s.rows, s.cols), 0),
        Examples::Sequences(s) => (s.images.first().map_or((1, 0, 0), |im| (im.channels, im.height, im.width)), 0),
    };
    let description = format!(
        "{description}; {} / {} / {} questions, {} words, {} answers",
        train.rows(),
        val.rows(),
        test.rows(),
        encoder.vocab.len(),
        encoder.answers.len()
    );
    Prepared {
        train,
        val,
        test,
        input,
        classes: encoder.answers.len(),
        vocab: encoder.vocab.len(),
        code_dim,
        max_steps: 0,
        answers: Some(encoder.answers.clone()),
        class_names: (0..encoder.answers.len() as u32)
            .map(|c| encoder.answers.name(c).unwrap_or("?").to_string())
            .collect(),
        description,
        fresh: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_move_the_digit_and_keep_its_ink() -> Result<()> {
        let set = LabeledImages {
            channels: 1,
            rows: 4,
            cols: 4,
            pixels: (0..16).map(|i| if i == 5 { 200 } else { 0 }).collect(),
            labels: vec![3],
        };
        let mut seen = std::collections::HashSet::new();
        for s in 0..40 {
            let b = shifted_batch(&set, &[0], 1, &mut Seed(s).rng(), &Device::Cpu)?;
            let px = b.images.flatten_all()?.to_vec1::<f32>()?;
            let on: Vec<usize> = (0..16).filter(|&i| px[i] > 0.0).collect();
            assert_eq!(on.len(), 1, "the one pixel stays inside a 1-pixel shift");
            let (y, x) = (on[0] / 4, on[0] % 4);
            assert!(y.abs_diff(1) <= 1 && x.abs_diff(1) <= 1);
            seen.insert(on[0]);
            assert_eq!(b.targets.classes("test")?.to_vec1::<u32>()?, vec![3]);
        }
        assert!(seen.len() >= 7, "shifts vary: {seen:?}");
        Ok(())
    }

    #[test]
    fn shape_captions_train_on_reading_order_and_score_against_every_order() -> Result<()> {
        let cfg = |any_order| {
            DataConfig::ShapeCaptions(crate::config::CaptionsData {
                train_images: 40,
                val_images: 8,
                test_images: 8,
                any_order,
                ..Default::default()
            })
        };
        let refs = |e: &Examples| match e {
            Examples::Sequences(s) => s.references.iter().map(Vec::len).collect::<Vec<_>>(),
            _ => vec![],
        };
        let p = prepare(&cfg(false), Seed(3))?;
        assert!(refs(&p.train).iter().all(|&n| n == 1), "one training caption a scene");
        assert!(refs(&p.test).contains(&6), "every order is a test reference");
        let all = prepare(&cfg(true), Seed(3))?;
        assert!(refs(&all.train).contains(&6));
        // Training draws among a scene's references; evaluation reads the first.
        let Examples::Sequences(s) = &all.train else { panic!("sequences") };
        let i = (0..s.references.len()).find(|&i| s.references[i].len() == 6).unwrap_or(0);
        let mut firsts = std::collections::HashSet::new();
        for seed in 0..20 {
            let b = all.train.training_batch(&[i], 0, &mut Seed(seed).rng(), &Device::Cpu)?;
            let (t, _) = b.targets.sequences("test")?;
            firsts.insert(t.to_vec2::<u32>()?[0].clone());
        }
        assert!(firsts.len() > 1, "{firsts:?}");
        let b = all.train.batch(&[i], &Device::Cpu)?;
        let t = b.targets.sequences("test")?.0.to_vec2::<u32>()?;
        let mut want = s.references[i][0].clone();
        want.push(tokens::EOS);
        assert_eq!(t[0], want);
        assert_eq!(p.max_steps, all.max_steps);
        Ok(())
    }

    #[test]
    fn pairs_targets_and_fresh_training_pairs() -> Result<()> {
        use crate::config::PairsData;
        use gaze_data::MnistSource;
        let cfg = |target, fresh_each_epoch| {
            DataConfig::MnistPairs(PairsData {
                digits: MnistData {
                    source: MnistSource::Fixture,
                    train_limit: 60,
                    test_limit: 20,
                    ..Default::default()
                },
                pairs: gaze_data::generate::PairsConfig { canvas: 56, ..Default::default() },
                target,
                fresh_each_epoch,
            })
        };
        let labels = |e: &Examples| e.as_images().map(|s| s.labels.clone()).unwrap_or_default();
        let sum = prepare(&cfg(PairsTarget::Sum, false), Seed(2))?;
        let pair = prepare(&cfg(PairsTarget::Pair, false), Seed(2))?;
        let seq = prepare(&cfg(PairsTarget::Sequence, false), Seed(2))?;
        assert_eq!((sum.classes, pair.classes, seq.classes, seq.max_steps), (19, 55, 14, 3));
        // The same pairs under each target: the sum and the pair class agree with the digits read.
        let Examples::Sequences(s) = &seq.test else { panic!("sequences") };
        for (i, r) in s.references.iter().enumerate() {
            let (a, b) = ((r[0][0] - 4) as u8, (r[0][1] - 4) as u8);
            assert_eq!(labels(&sum.test)[i], a + b);
            assert_eq!(labels(&pair.test)[i], gaze_data::generate::pair_class(a, b));
        }
        assert!(sum.train_for_epoch(1, Seed(2))?.is_none(), "fixed training pairs by default");
        // Redrawn every epoch: new partners and places for epoch 1, the same again when asked again.
        let fresh = prepare(&cfg(PairsTarget::Sum, true), Seed(2))?;
        let e1 = fresh.train_for_epoch(1, Seed(2))?.map(|e| labels(&e)).unwrap_or_default();
        assert_eq!(e1.len(), labels(&fresh.train).len());
        assert_ne!(e1, labels(&fresh.train));
        assert_eq!(Some(e1), fresh.train_for_epoch(1, Seed(2))?.map(|e| labels(&e)));
        assert!(fresh.train_for_epoch(0, Seed(2))?.is_none(), "epoch 0 trains on the prepared set");
        // Each class is named: a pair's class by its two digits, a sum by its value.
        let (a, b) = (labels(&pair.test)[0], labels(&sum.test)[0]);
        let Examples::Sequences(s) = &seq.test else { panic!("sequences") };
        let (x, y) = ((s.references[0][0][0] - 4) as u8, (s.references[0][0][1] - 4) as u8);
        assert_eq!(pair.class_names[usize::from(a)], format!("{}&{}", x.min(y), x.max(y)));
        assert_eq!(sum.class_names[usize::from(b)], format!("sum {}", x + y));
        assert!(pair.class_names.iter().all(|n| !n.is_empty()) && seq.class_names.is_empty());
        Ok(())
    }

    #[test]
    fn checksums_follow_the_data_not_where_it_was_read() -> Result<()> {
        let cfg = DataConfig::Mnist(MnistData {
            source: gaze_data::MnistSource::Fixture,
            train_limit: 50,
            test_limit: 20,
            ..Default::default()
        });
        let a = prepare(&cfg, Seed(1))?.record();
        assert_eq!(a, prepare(&cfg, Seed(9))?.record(), "a fixed data set is the same under any seed");
        assert_eq!(a.class_names.len(), 10);
        let mut p = prepare(&cfg, Seed(1))?;
        if let Examples::Images { set, .. } = &mut p.test {
            set.labels[3] = (set.labels[3] + 1) % 10;
        }
        let b = p.record();
        assert_eq!((&a.sha256.train, &a.sha256.val), (&b.sha256.train, &b.sha256.val));
        assert_ne!(a.sha256.test, b.sha256.test, "one label changed changes the test checksum");
        let dir = tempfile::tempdir().map_err(|e| TrainError::io("tempdir", e))?;
        assert_eq!(DataRecord::load(dir.path())?, None, "a run made before records has none");
        a.save(dir.path())?;
        assert_eq!(DataRecord::load(dir.path())?.as_ref(), Some(&a));
        assert!(a.check_same_test(&a, dir.path()).is_ok());
        let e = a.check_same_test(&b, dir.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("data.json") && e.contains("--other-data") && e.contains(&a.sha256.test[..12]), "{e}");
        // Generated data: another seed is other data.
        let canvas = DataConfig::MnistCanvas(crate::config::CanvasData {
            digits: MnistData {
                source: gaze_data::MnistSource::Fixture,
                train_limit: 20,
                test_limit: 10,
                ..Default::default()
            },
            ..Default::default()
        });
        assert_ne!(prepare(&canvas, Seed(1))?.record().sha256, prepare(&canvas, Seed(2))?.record().sha256);
        Ok(())
    }
}

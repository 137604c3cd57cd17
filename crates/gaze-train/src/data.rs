//! Turns a [`DataConfig`] into train / validation / test examples: digit images, or VQA images
//! with their questions (one example = one image and all its questions).

use std::sync::Arc;

use candle_core::{Device, Tensor};
use gaze_data::dataset::{images_to_tensor, VqaEncoder};
use gaze_data::generate::{BarnVqa, CanvasConfig, MnistCanvas, SortOfClevr};
use gaze_data::vocab::AnswerSet;
use gaze_data::vqa::VqaSet;
use gaze_data::{Image, LabeledImages, Mnist};
use gaze_tensor::Seed;
use gaze_zoo::{Batch, DataShape, Questions};

use crate::config::{DataConfig, MnistData};
use crate::error::{Result, TrainError};

/// The examples of one split.
#[derive(Debug, Clone)]
pub enum Examples {
    /// Labelled single-channel images (one example = one image).
    Images {
        /// The images and labels.
        set: LabeledImages,
        /// The centre of each image's digit as fractions (x, y) of its width and height when the
        /// data knows it (generated canvases), else empty.
        centres: Vec<(f32, f32)>,
    },
    /// VQA (one example = one image with all its questions).
    Vqa(VqaSplit),
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

/// What a row of a batch is (for per-kind accuracy and pictures).
#[derive(Debug, Clone)]
pub struct RowInfo {
    /// Question kind (`shape`, `closest` ...; empty for images).
    pub kind: String,
    /// Relational question.
    pub relational: bool,
    /// Whether the true answer is in the answer set (unknown answers always count as wrong).
    pub known: bool,
    /// The true class / answer, as text.
    pub truth: String,
    /// The question (empty for images).
    pub question: String,
    /// Position in the batch's images.
    pub image: usize,
    /// Centres of the objects the question is about (its `focus` boxes), as fractions (x, y) of
    /// the image's width and height; empty when the data names none.
    pub focus: Vec<(f32, f32)>,
}

impl Examples {
    /// Number of examples (images).
    pub fn len(&self) -> usize {
        match self {
            Examples::Images { set: s, .. } => s.len(),
            Examples::Vqa(v) => v.images.len(),
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
        }
    }

    /// The digit images, when this is an image set.
    pub fn as_images(&self) -> Option<&LabeledImages> {
        match self {
            Examples::Images { set: s, .. } => Some(s),
            Examples::Vqa(_) => None,
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
        }
    }

    /// What each row of `batch(idx)` is.
    pub fn row_info(&self, idx: &[usize]) -> Vec<RowInfo> {
        match self {
            Examples::Images { set: s, centres } => idx
                .iter()
                .enumerate()
                .map(|(k, &i)| RowInfo {
                    kind: String::new(),
                    relational: false,
                    known: true,
                    truth: s.labels.get(i).map(|l| l.to_string()).unwrap_or_default(),
                    question: String::new(),
                    image: k,
                    focus: centres.get(i).map(|&c| vec![c]).unwrap_or_default(),
                })
                .collect(),
            Examples::Vqa(v) => {
                let mut rows = vec![];
                for (k, &i) in idx.iter().enumerate() {
                    for &r in v.records.get(i).map_or(&[][..], Vec::as_slice) {
                        if let Some(rec) = v.set.records.get(r) {
                            let boxes = v.set.boxes.get(rec.image).map_or(&[][..], Vec::as_slice);
                            let (w, h) = v.set.images.get(rec.image).map_or((1, 1), |im| (im.width, im.height));
                            let focus = rec.q.focus.iter().filter_map(|&f| boxes.get(f)).map(|b| {
                                let (x, y) = b.bbox.centre();
                                (x / w.max(1) as f32, y / h.max(1) as f32)
                            });
                            rows.push(RowInfo {
                                kind: rec.q.kind.clone(),
                                relational: rec.q.relational,
                                known: v.encoder.answers.class(&rec.q.answer).is_some(),
                                truth: rec.q.answer.clone(),
                                question: rec.q.question.clone(),
                                image: k,
                                focus: focus.collect(),
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
                Ok(Image::grey(s.rows, s.cols, s.image(i).ok_or_else(missing)?.to_vec())?)
            }
            Examples::Vqa(v) => {
                let j = *v.images.get(i).ok_or_else(missing)?;
                v.set.images.get(j).cloned().ok_or_else(missing)
            }
        }
    }
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
            targets: Tensor::from_vec(answers, q, device)?,
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
    /// Answer names (VQA), for pictures.
    pub answers: Option<AnswerSet>,
    /// Where the data came from, for reports.
    pub description: String,
    /// For generated canvases redrawn every epoch: the settings and the training digits.
    fresh: Option<(CanvasConfig, LabeledImages)>,
}

impl Prepared {
    /// The training set of epoch `epoch` (0-based): `train` itself, unless the data is redrawn
    /// every epoch, then epoch e >= 1 is drawn from `seed.stream("data/train").index(e)`.
    pub fn train_for_epoch(&self, epoch: usize, seed: Seed) -> Result<Option<Examples>> {
        match &self.fresh {
            Some((canvas, digits)) if epoch > 0 => {
                let (set, centres) = canvases(canvas, digits, seed.stream("data/train").index(epoch as u64))?;
                Ok(Some(Examples::Images { set, centres }))
            }
            _ => Ok(None),
        }
    }

    /// What a model is built for.
    pub fn shape(&self) -> DataShape {
        DataShape { input: self.input, classes: self.classes, vocab: self.vocab, code_dim: self.code_dim }
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
            answers: None,
            description,
            fresh: None,
        }
    }
}

/// Every digit of `set` placed on its own canvas, with the centre of each digit's ink box as
/// fractions of the canvas side.
fn canvases(cfg: &CanvasConfig, set: &LabeledImages, seed: Seed) -> Result<(LabeledImages, Vec<(f32, f32)>)> {
    let g = MnistCanvas::new(cfg.clone(), set, seed)?;
    let mut out = LabeledImages {
        rows: cfg.canvas,
        cols: cfg.canvas,
        pixels: Vec::with_capacity(g.len() * cfg.canvas * cfg.canvas),
        labels: Vec::with_capacity(g.len()),
    };
    let mut centres = Vec::with_capacity(g.len());
    let side = cfg.canvas.max(1) as f32;
    for i in 0..g.len() {
        let s = g.sample(i)?;
        out.pixels.extend_from_slice(&s.image.data);
        out.labels.push(s.label);
        if let Some(d) = s.boxes.iter().find(|b| b.label == "digit") {
            let (x, y) = d.bbox.centre();
            centres.push((x / side, y / side));
        }
    }
    if centres.len() != out.len() {
        return Err(TrainError::Other(format!("canvases: {} digit boxes for {} canvases", centres.len(), out.len())));
    }
    Ok((out, centres))
}

fn digits(m: &MnistData) -> Result<(LabeledImages, LabeledImages, LabeledImages, String)> {
    let mnist = Mnist::load(&m.source)?;
    let val = ((mnist.train.len() as f64) * m.val_fraction).round() as usize;
    let (mut train, val) = mnist.train_val(val.max(1))?;
    if m.train_limit > 0 {
        train = train.take(m.train_limit);
    }
    let test = if m.test_limit > 0 { mnist.test.take(m.test_limit) } else { mnist.test };
    let desc = format!("{:?}: {} train / {} val / {} test digits", m.source, train.len(), val.len(), test.len());
    Ok((train, val, test, desc))
}

/// Loads or generates the data of `cfg`; generated sets use `seed.stream("data/<split>")`.
pub fn prepare(cfg: &DataConfig, seed: Seed) -> Result<Prepared> {
    match cfg {
        DataConfig::Mnist(m) => {
            let (train, val, test, description) = digits(m)?;
            let input = (1, train.rows, train.cols);
            let plain = |set| Examples::Images { set, centres: vec![] };
            Ok(Prepared::images(plain(train), plain(val), plain(test), input, description))
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
                [train_canvases, val, test].map(|(set, centres)| Examples::Images { set, centres });
            let mut p = Prepared::images(train_canvases, val, test, input, description);
            p.fresh = c.fresh_each_epoch.then(|| (c.canvas.clone(), train));
            Ok(p)
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
            let n = set.images.len();
            let val = ((n as f64) * f.val_fraction).round().max(1.0) as usize;
            let test = ((n as f64) * f.test_fraction).round().max(1.0) as usize;
            let split = gaze_data::dataset::split(n, val, test, seed.stream("data/split"))
                .map_err(|e| TrainError::Other(format!("{}: {e}", f.path.display())))?;
            let desc = format!(
                "VQA folder {} ({} images: {}/{}/{}, resized to {}x{})",
                f.path.display(),
                n,
                split.train.len(),
                split.val.len(),
                split.test.len(),
                f.size[0],
                f.size[1]
            );
            let set = Arc::new(set);
            let parts = [split.train, split.val, split.test];
            vqa_views(set.clone(), parts, f.max_words, desc)
        }
    }
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
        Examples::Images { set: s, .. } => ((1, s.rows, s.cols), 0),
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
        answers: Some(encoder.answers.clone()),
        description,
        fresh: None,
    }
}

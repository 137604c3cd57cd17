//! Evaluation: a model run over a split in batches, its loss terms and statistics averaged, its
//! predictions taken (the top class, or a decoded sequence) and handed with the rows' truth and
//! the model's attention to every metric the split's task asks for. Nothing here names a model.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Tensor, D};

use gaze_data::Batcher;
use gaze_tensor::Seed;
use gaze_zoo::{AttentionMap, Batch, Mode, Model, Output, Scores, Search};

use crate::data::Examples;
use crate::error::Result;
use crate::metrics::{self, round4, Looked, Measured, Predicted, Rows, StepMaps};

/// What a model did on a split.
pub struct Evaluation {
    /// What the metrics measured (`acc_pct`, `bleu4` ... without the split's prefix).
    pub measured: Measured,
    /// Mean total loss.
    pub loss: f64,
    /// Mean of each term.
    pub terms: BTreeMap<String, f64>,
    /// The prediction for each row (image, question in example order, or sequence).
    pub predictions: Vec<Predicted>,
    /// Mean of each statistic the model reports (attention entropy per step ...).
    pub stats: BTreeMap<String, f64>,
    /// Rows per second of the forward passes (and decoding) alone.
    pub samples_per_s: f64,
}

impl Evaluation {
    /// A score by its unprefixed name (`acc_pct`).
    pub fn score(&self, name: &str) -> Option<f64> {
        self.measured.scores.get(name).copied()
    }

    /// The scores named for `split` (`val_acc_pct`), with the loss (`val_loss`).
    pub fn named(&self, split: &str) -> BTreeMap<String, f64> {
        let mut m: BTreeMap<String, f64> =
            self.measured.scores.iter().map(|(k, v)| (format!("{split}_{k}"), *v)).collect();
        m.insert(format!("{split}_loss"), round4(self.loss));
        m
    }
}

/// Where `out` (or a decoded sequence's attention) looked, as plain numbers per row.
pub fn looked(map: Option<&AttentionMap>) -> Result<Option<Looked>> {
    Ok(match map {
        None => None,
        Some(AttentionMap::Grid { weights, .. }) => Some(Looked::Grid { maps: weights.to_vec3::<f32>()?, hard: false }),
        Some(AttentionMap::Cells { mask, .. }) => Some(Looked::Grid { maps: mask.to_vec3::<f32>()?, hard: true }),
        Some(AttentionMap::Steps { weights, .. }) => {
            Some(Looked::Grid { maps: weights.sum(1)?.to_vec3::<f32>()?, hard: false })
        }
        Some(AttentionMap::Glimpses { centres, sizes, per_object, fixed, .. }) => {
            sizes.first().map(|&patch| Looked::Glimpses {
                centres: centres.clone(),
                patch,
                per_object: *per_object,
                fixed: *fixed,
                pixels: sizes.iter().map(|s| s * s).sum(),
            })
        }
    })
}

/// A per-step map (b, t, gh, gw) as plain numbers, `[row][step][y][x]`.
pub fn per_step(map: Option<&AttentionMap>) -> Result<Option<Vec<StepMaps>>> {
    let Some(AttentionMap::Steps { weights, .. }) = map else { return Ok(None) };
    let (b, t, gh, gw) = weights.dims4()?;
    let flat = weights.flatten_all()?.to_vec1::<f32>()?;
    let cell = |r: usize, s: usize, y: usize| {
        let at = ((r * t + s) * gh + y) * gw;
        flat[at..at + gw].to_vec()
    };
    Ok(Some((0..b).map(|r| (0..t).map(|s| (0..gh).map(|y| cell(r, s, y)).collect()).collect()).collect()))
}

/// The top class of each row of class scores.
pub fn top_classes(out: &Output) -> Result<Vec<Predicted>> {
    Ok(out.scores.classes()?.argmax(D::Minus1)?.to_vec1::<u32>()?.into_iter().map(Predicted::Class).collect())
}

/// Evaluates `model` on `set` in batches (evaluation mode at training `progress`, draws from
/// `seed`; sequence models decode with `search`, at most `max_steps` tokens).
pub fn evaluate(
    model: &dyn Model,
    set: &Examples,
    batch: usize,
    (progress, search, max_steps): (f64, Search, usize),
    seed: Seed,
    device: &Device,
) -> Result<Evaluation> {
    let mut rng = seed.rng();
    let mut metrics = metrics::for_task(set.task());
    let (mut loss, mut terms, mut preds) = (0f64, BTreeMap::new(), Vec::with_capacity(set.rows()));
    let mut stats: BTreeMap<String, f64> = BTreeMap::new();
    let (mut rows_seen, mut forward_s) = (0u64, 0f64);
    // VQA examples carry ~10-20 questions each: batch by questions, not images.
    let per = if set.is_empty() { 1 } else { (set.rows() / set.len()).max(1) };
    let images_per_batch = (batch / per).max(1);
    for idx in Batcher::new((0..set.len()).collect(), images_per_batch, false)? {
        let b = set.batch(&idx, device)?;
        let info = set.row_info(&idx);
        let t0 = Instant::now();
        let out = model.forward(&b, Mode::eval_at(progress), &mut rng)?;
        let (predicted, seen, steps) = match &out.scores {
            Scores::Classes(_) => (top_classes(&out)?, looked(out.attention.as_ref())?, None),
            Scores::Steps(_) => {
                let d = model.decode(&b, search, max_steps, &mut rng)?;
                let seen = looked(d.attention.as_ref())?;
                (d.tokens.into_iter().map(Predicted::Tokens).collect(), seen, per_step(out.attention.as_ref())?)
            }
        };
        forward_s += t0.elapsed().as_secs_f64();
        let n = info.len() as f64;
        let batch_stats = out
            .stats
            .iter()
            .map(|(k, v)| Ok((k.clone(), f64::from(v.to_scalar::<f32>()?))))
            .collect::<Result<Vec<_>>>()?;
        let rows: Vec<_> = info.into_iter().map(|i| i.row).collect();
        let image_hw = (b.images.dim(2)?, b.images.dim(3)?);
        let frame_of = |grid| model.cell_frame(grid, image_hw);
        let view = Rows {
            rows: &rows,
            predicted: &predicted,
            looked: seen.as_ref(),
            steps: steps.as_deref(),
            stats: &batch_stats,
            image_hw,
            frame_of: Some(&frame_of),
        };
        for m in metrics.iter_mut() {
            m.update(&view)?;
        }
        rows_seen += rows.len() as u64;
        preds.extend(predicted);
        loss += f64::from(out.total_loss()?.to_scalar::<f32>()?) * n;
        for (name, v) in &out.losses {
            *terms.entry(name.clone()).or_insert(0.0) += f64::from(v.to_scalar::<f32>()?) * n;
        }
        for (name, v) in batch_stats {
            *stats.entry(name).or_insert(0.0) += v * n;
        }
    }
    let n = rows_seen.max(1) as f64;
    terms.values_mut().for_each(|v: &mut f64| *v /= n);
    stats.values_mut().for_each(|v: &mut f64| *v = round4(*v / n));
    let mut measured = Measured::default();
    for m in &metrics {
        m.finish(&mut measured);
    }
    Ok(Evaluation {
        measured,
        loss: loss / n,
        terms,
        predictions: preds,
        stats,
        samples_per_s: rows_seen as f64 / forward_s.max(1e-9),
    })
}

/// Grad-CAM graded like a trained attention map: for a class split whose images name their
/// objects' boxes, each image's Grad-CAM map of its predicted class against its boxes
/// (`gradcam_attention_in_box_pct`, `gradcam_pointing_pct`, beside `box_area_pct`). Empty for
/// models without a convolutional feature map, and for other tasks.
pub fn grad_cam_grounding(model: &dyn Model, set: &Examples, batch: usize, device: &Device) -> Result<Measured> {
    maps_grounding(model, set, batch, device, |images| {
        Ok(gaze_zoo::explain::grad_cam(model, images, None)?.map(|cam| vec![("gradcam".to_string(), cam)]))
    })
}

/// Every layer's attention map ([`Model::layer_maps`]) graded as the shown map is:
/// `<layer>_attention_in_box_pct`, `<layer>_pointing_pct` (`block2_pointing_pct`). Empty for
/// models with one map, and for tasks other than classes.
pub fn layer_grounding(model: &dyn Model, set: &Examples, batch: usize, device: &Device) -> Result<Measured> {
    maps_grounding(model, set, batch, device, |images| {
        let maps = model.layer_maps(images)?;
        Ok((!maps.is_empty()).then_some(maps))
    })
}

/// Grades named maps, computed batch by batch by `maps` (None: nothing to grade), against the
/// boxes of a class split: `<name>_attention_in_box_pct`, `<name>_pointing_pct`; each map's
/// cells placed where `model` says they lie.
fn maps_grounding(
    model: &dyn Model,
    set: &Examples,
    batch: usize,
    device: &Device,
    maps: impl Fn(&Tensor) -> Result<Option<Vec<(String, Tensor)>>>,
) -> Result<Measured> {
    let mut graded: Vec<(String, metrics::grounding::Grounding)> = vec![];
    if set.task() != metrics::Task::Classify {
        return Ok(Measured::default());
    }
    for idx in Batcher::new((0..set.len()).collect(), batch.max(1), false)? {
        let b = set.batch(&idx, device)?;
        let Some(named) = maps(&b.images)? else { return Ok(Measured::default()) };
        let rows: Vec<_> = set.row_info(&idx).into_iter().map(|i| i.row).collect();
        let image_hw = (b.images.dim(2)?, b.images.dim(3)?);
        let frame_of = |grid| model.cell_frame(grid, image_hw);
        for (name, map) in named {
            let at = match graded.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    graded.push((name, metrics::grounding::Grounding::default()));
                    graded.len() - 1
                }
            };
            let looked = Looked::Grid { maps: map.to_vec3::<f32>()?, hard: false };
            let view = Rows {
                rows: &rows,
                predicted: &[],
                looked: Some(&looked),
                steps: None,
                stats: &[],
                image_hw,
                frame_of: Some(&frame_of),
            };
            metrics::Metric::update(&mut graded[at].1, &view)?;
        }
    }
    let mut out = Measured::default();
    for (name, grounding) in &graded {
        let mut plain = Measured::default();
        metrics::Metric::finish(grounding, &mut plain);
        for (k, v) in plain.scores {
            if k != "box_area_pct" {
                out.scores.insert(format!("{name}_{k}"), v);
            }
        }
    }
    Ok(out)
}

/// The softmax probabilities of one image batch (b, c, h, w) -> (b, classes), and the model
/// output (a trained model, evaluation mode).
pub fn predict(model: &dyn Model, images: &Tensor, seed: Seed) -> Result<(Vec<Vec<f32>>, Output)> {
    let b = images.dim(0)?;
    let targets = Tensor::zeros(b, candle_core::DType::U32, images.device())?;
    let out = model.forward(&Batch::images(images.clone(), targets), Mode::eval(), &mut seed.rng())?;
    let probs = candle_nn::ops::softmax(out.scores.classes()?, D::Minus1)?.to_vec2::<f32>()?;
    Ok((probs, out))
}

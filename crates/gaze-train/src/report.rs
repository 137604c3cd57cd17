//! What a run shows a person: attention overlays on test images, training curves, `report.md`.
//! Pictures belong to the trainer, not to each model: a model says what it attended
//! ([`AttentionMap`]) and this module draws it.

use std::path::Path;

use candle_core::{Device, D};
use plotters::prelude::*;

use gaze_data::preview::{grid, Tile};
use gaze_data::{Image, LabeledImages};
use gaze_tensor::Seed;
use gaze_zoo::{AttentionMap, CellFrame, Decoded, Mode, Model, Search};

use crate::config::ExperimentConfig;
use crate::data::{Examples, Prepared, SequenceSplit};
use crate::error::{Result, TrainError};
use crate::evaluate::{predict, Evaluation};
use crate::metrics::{FrameOf, Predicted};
use crate::record::RunSummary;

/// The heat colour of `v` in [0, 1]: black-red-yellow-white.
fn heat(v: f32) -> [f32; 3] {
    let v = v.clamp(0.0, 1.0);
    [(3.0 * v).min(1.0), (3.0 * v - 1.0).clamp(0.0, 1.0), (3.0 * v - 2.0).clamp(0.0, 1.0)]
}

/// Overlays a grid of non-negative `weights` (gh rows of gw) on `image` as a heat map: each
/// pixel is blended with the heat colour of its cell's weight (scaled so the largest is 1). The
/// cells lie where `frames` says (the model's [`Model::cell_frame`]), else tile the image evenly.
pub fn overlay(image: &Image, weights: &[f32], gh: usize, gw: usize, frames: Option<FrameOf>) -> Image {
    let max = weights.iter().copied().fold(0f32, f32::max);
    overlay_on_scale(image, weights, (gh, gw), frames.and_then(|f| f((gh, gw))), max)
}

/// Each cell's weight as a multiple of the uniform map's (weight x cells / total), so maps over
/// grids of any size, and sums over steps, can be drawn on one scale. Zeros for an empty map.
pub fn densities(weights: &[f32]) -> Vec<f32> {
    let total: f32 = weights.iter().sum();
    if !(total > 0.0 && total.is_finite()) {
        return vec![0.0; weights.len()];
    }
    weights.iter().map(|w| w * weights.len() as f32 / total).collect()
}

/// Maps compared side by side drawn on one scale ([`densities`], full heat at the largest of
/// them all), each with its grid: a flat map looks faint beside a peaked one, as it is.
pub fn overlays_on_common_scale(
    image: &Image,
    maps: &[(Vec<f32>, usize, usize)],
    frames: Option<FrameOf>,
) -> Vec<Image> {
    let dens: Vec<Vec<f32>> = maps.iter().map(|(w, _, _)| densities(w)).collect();
    let top = dens.iter().flatten().copied().fold(0f32, f32::max);
    dens.iter()
        .zip(maps)
        .map(|(d, &(_, gh, gw))| overlay_on_scale(image, d, (gh, gw), frames.and_then(|f| f((gh, gw))), top))
        .collect()
}

/// [`overlay`] of one map whose cells lie at `frame` (None: tiling the image evenly), with
/// full heat at `top` instead of the map's own largest weight.
pub fn overlay_on_scale(
    image: &Image,
    weights: &[f32],
    (gh, gw): (usize, usize),
    frame: Option<CellFrame>,
    top: f32,
) -> Image {
    let rgb = image.to_rgb();
    let max = top.max(1e-12);
    let mut out = rgb.clone();
    for y in 0..rgb.height {
        for x in 0..rgb.width {
            let cell = match &frame {
                None => (y * gh / rgb.height.max(1)) * gw + x * gw / rgb.width.max(1),
                Some(f) => {
                    let (fy, fx) = ((y as f32 + 0.5) / rgb.height as f32, (x as f32 + 0.5) / rgb.width as f32);
                    f.y.cell_at(fy, gh) * gw + f.x.cell_at(fx, gw)
                }
            };
            let v = weights.get(cell).copied().unwrap_or(0.0) / max;
            let h = heat(v);
            let a = 0.65 * v.sqrt();
            for (c, hc) in h.iter().enumerate() {
                let o = (y * rgb.width + x) * 3 + c;
                let base = f32::from(rgb.data[o]) / 255.0 * 0.8;
                out.data[o] = ((base * (1.0 - a) + hc * a) * 255.0).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// Lays images of one height side by side with `gap` white pixels between them.
pub fn strip(panels: &[Image], gap: usize) -> Image {
    let h = panels.iter().map(|p| p.height).max().unwrap_or(1);
    let w = panels.iter().map(|p| p.width).sum::<usize>() + gap * panels.len().saturating_sub(1);
    let mut out = Image::filled(h, w.max(1), 3, 255);
    let mut x = 0;
    for p in panels {
        out.blit(p, 0, x as i64);
        x += p.width + gap;
    }
    out
}

/// Outlines the kept cells of a (gh, gw) 0/1 `mask` on `image`, scaled up by `f`; the cells lie
/// at `frame` (None: tiling the image evenly).
pub fn draw_cells(image: &Image, mask: &[f32], (gh, gw): (usize, usize), frame: Option<CellFrame>, f: usize) -> Image {
    let mut out = image.to_rgb().upscale(f);
    let (h, w) = (out.height as f32, out.width as f32);
    for r in 0..gh {
        for c in 0..gw {
            if mask.get(r * gw + c).is_some_and(|&m| m > 0.5) {
                let [x0, y0, x1, y1] = crate::metrics::grounding::cell_box(r, c, (gh, gw), frame.as_ref());
                let cell = gaze_data::BBox::new(x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h);
                out.stroke_rect(cell, [255, 60, 40], 1);
            }
        }
    }
    out
}

/// Draws a glimpse path on `image` scaled up by `f`: at each step a box per scale (sides
/// `sizes` in image pixels) around the centre, the step's number at its corner, and a line from
/// each centre to the next. Centres are (x, y) in [-1, 1], as the retina reads them.
pub fn draw_glimpses(image: &Image, centres: &[(f32, f32)], sizes: &[usize], per_object: usize, f: usize) -> Image {
    let mut out = image.to_rgb().upscale(f);
    let (h, w) = (image.height as f32, image.width as f32);
    let fs = f as f32;
    let px = |c: (f32, f32)| (0.5 * (c.0.clamp(-1.0, 1.0) + 1.0) * w * fs, 0.5 * (c.1.clamp(-1.0, 1.0) + 1.0) * h * fs);
    let colours = gaze_data::preview::BOX_COLOURS;
    for pair in centres.windows(2) {
        let ((x0, y0), (x1, y1)) = (px(pair[0]), px(pair[1]));
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for k in 0..=steps {
            let t = k as f32 / steps as f32;
            out.put((y0 + t * (y1 - y0)) as i64, (x0 + t * (x1 - x0)) as i64, [255, 255, 255]);
        }
    }
    for (t, &c) in centres.iter().enumerate() {
        let (cx, cy) = px(c);
        // One colour per object (numbered within it) when glimpses come in per-object groups.
        let (group, number) = match t.checked_div(per_object) {
            Some(g) => (g, t % per_object),
            None => (t, t),
        };
        let colour = colours[group % colours.len()];
        for &side in sizes {
            let half = side as f32 * fs / 2.0;
            out.stroke_rect(gaze_data::BBox::new(cx - half, cy - half, 2.0 * half, 2.0 * half), colour, 1);
        }
        let half = sizes.first().copied().unwrap_or(0) as f32 * fs / 2.0;
        out.draw_text(&format!("{}", number + 1), (cy - half) as i64 + 1, (cx - half) as i64 + 2, 1, colour);
    }
    out
}

/// Side in pixels (at least) at which glimpse paths are drawn: 28x28 MNIST at 7x, 60x60 canvases
/// at 3x, 100x100 at 2x.
pub const GLIMPSE_PX: usize = 180;

/// `image` with `text` written under it.
fn labelled(image: &Image, text: &str) -> Image {
    let mut out = Image::filled(image.height + 12, image.width, 3, 255);
    out.blit(image, 0, 0);
    out.draw_text(text, image.height as i64 + 3, 1, 1, [0, 0, 0]);
    out
}

/// A sequence read word by word, as "Show, Attend and Tell" draws its captions: the image, then
/// for each word the image under that step's attention with the word beneath, every word's map
/// on one scale ([`overlays_on_common_scale`]). `maps[s]` holds
/// step s's weights over a `gh` x `gw` grid; images narrower than 128 pixels are scaled up so that
/// a word fits under its picture.
pub fn word_strip(
    image: &Image,
    maps: &[Vec<f32>],
    (gh, gw): (usize, usize),
    words: &[String],
    frames: Option<FrameOf>,
) -> Image {
    let big = image.to_rgb().upscale((128 / image.width.max(1)).max(1));
    let mut panels = vec![labelled(&big, "")];
    let grids: Vec<(Vec<f32>, usize, usize)> = maps.iter().map(|m| (m.clone(), gh, gw)).collect();
    for (shown, word) in overlays_on_common_scale(&big, &grids, frames).iter().zip(words) {
        panels.push(labelled(shown, word));
    }
    strip(&panels, 4)
}

/// Example `k` of a decoded batch drawn word by word ([`word_strip`]: the words read, spelt by
/// `set`, and the end of the sequence when the decoder reached it), or the plain image when the
/// decoder gave no attention.
pub fn decoded_strip(
    image: &Image,
    d: &Decoded,
    k: usize,
    set: &SequenceSplit,
    frames: Option<FrameOf>,
) -> Result<Image> {
    if let Some(AttentionMap::Glimpses { .. }) = &d.attention {
        return Ok(render_attention(image, d.attention.as_ref(), k, None)?.0);
    }
    let Some(AttentionMap::Steps { weights, .. }) = &d.attention else { return Ok(image.to_rgb()) };
    let w = weights.get(k)?; // (steps, gh, gw)
    let (steps, gh, gw) = w.dims3()?;
    let mut words: Vec<String> =
        d.tokens.get(k).map_or(&[][..], Vec::as_slice).iter().map(|&t| set.spell(&[t])).collect();
    if words.len() < steps {
        words.push("<end>".into());
    }
    let maps =
        (0..words.len()).map(|s| w.get(s)?.flatten_all()?.to_vec1::<f32>()).collect::<candle_core::Result<Vec<_>>>()?;
    Ok(word_strip(image, &maps, (gh, gw), &words, frames))
}

/// Draws what a model attended, for example `k` of its batch, over `img`: a heat map, a strip
/// of per-step heat maps and their sum, outlined kept cells, or a numbered glimpse path (scaled up
/// to about [`GLIMPSE_PX`], the others at the image's size). Returns
/// the picture and the map's title (`None` when the model said nothing). Grid cells lie where
/// `frames` says (the model's [`Model::cell_frame`]), else tile the image evenly.
pub fn render_attention(
    img: &Image,
    map: Option<&AttentionMap>,
    k: usize,
    frames: Option<FrameOf>,
) -> Result<(Image, Option<String>)> {
    Ok(match map {
        Some(AttentionMap::Grid { weights, title }) => {
            let w = weights.get(k)?;
            let (gh, gw) = w.dims2()?;
            (overlay(img, &w.flatten_all()?.to_vec1::<f32>()?, gh, gw, frames), Some(title.clone()))
        }
        Some(AttentionMap::Steps { weights, title }) => {
            let w = weights.get(k)?; // (t, gh, gw)
            let (steps, gh, gw) = w.dims3()?;
            let mut maps = Vec::with_capacity(steps + 1);
            for s in 0..steps {
                maps.push((w.get(s)?.flatten_all()?.to_vec1::<f32>()?, gh, gw));
            }
            maps.push((w.sum(0)?.flatten_all()?.to_vec1::<f32>()?, gh, gw));
            (strip(&overlays_on_common_scale(img, &maps, frames), 2), Some(format!("{title} (one scale)")))
        }
        Some(AttentionMap::Cells { mask, title }) => {
            let m = mask.get(k)?;
            let (gh, gw) = m.dims2()?;
            let frame = frames.and_then(|f| f((gh, gw)));
            (draw_cells(img, &m.flatten_all()?.to_vec1::<f32>()?, (gh, gw), frame, 1), Some(title.clone()))
        }
        Some(AttentionMap::Glimpses { centres, sizes, per_object, title, .. }) => {
            // drawn at (about) GLIMPSE_PX so that every scale's box and the step numbers stay legible
            let f = GLIMPSE_PX.div_ceil(img.height.max(img.width).max(1));
            let path = centres.get(k).map_or(&[][..], Vec::as_slice);
            let title = if *per_object > 0 {
                format!("{title}, {per_object} glimpses per label, one colour per label")
            } else {
                title.clone()
            };
            (draw_glimpses(img, path, sizes, *per_object, f), Some(title))
        }
        None => (img.to_rgb(), None),
    })
}

/// Draws what `model` attended on `images` (indices into `set`) as tiles, each captioned with
/// the predicted and true class by `names` (their numbers where a name is missing).
pub fn attention_tiles(
    model: &dyn Model,
    set: &LabeledImages,
    indices: &[usize],
    predictions: &[Predicted],
    names: &[String],
    device: &Device,
) -> Result<(Vec<Tile>, String)> {
    if indices.is_empty() {
        return Ok((vec![], String::new()));
    }
    let b = set.batch(indices, device)?;
    let (_, out) = predict(model, &b.images, Seed(0))?;
    // Models with a CNN: Grad-CAM of the predicted class beside what the model itself shows (or
    // beside each layer's map, for models that attend at several).
    let cam = gaze_zoo::explain::grad_cam(model, &b.images, None)?
        .map(|weights| AttentionMap::Grid { weights, title: "Grad-CAM".into() });
    // Models that attend at several layers show each layer's map.
    let layers = model.layer_maps(&b.images)?;
    let mut tiles = Vec::with_capacity(indices.len());
    let mut title = String::from("inputs");
    let image_hw = (b.images.dim(2)?, b.images.dim(3)?);
    let frame_of = |grid| model.cell_frame(grid, image_hw);
    let frames: Option<FrameOf> = Some(&frame_of);
    for (k, &i) in indices.iter().enumerate() {
        let img = set.to_image(i)?;
        let (mut shown, t) = render_attention(&img, out.attention.as_ref(), k, frames)?;
        if let Some(t) = t {
            title = t;
        }
        let grid = |m: Option<&AttentionMap>| -> Result<Option<(Vec<f32>, usize, usize)>> {
            Ok(match m {
                Some(AttentionMap::Grid { weights, .. }) => {
                    let w = weights.get(k)?;
                    let (gh, gw) = w.dims2()?;
                    Some((w.flatten_all()?.to_vec1::<f32>()?, gh, gw))
                }
                _ => None,
            })
        };
        if !layers.is_empty() {
            // Every layer's map, then Grad-CAM, on one scale.
            let mut grids = vec![];
            for (_, m) in &layers {
                let w = m.get(k)?;
                let (gh, gw) = w.dims2()?;
                grids.push((w.flatten_all()?.to_vec1::<f32>()?, gh, gw));
            }
            grids.extend(grid(cam.as_ref())?);
            shown = strip(&overlays_on_common_scale(&img, &grids, frames), 2);
            let names: Vec<&str> = layers.iter().map(|(n, _)| n.as_str()).collect();
            title = format!(
                "left to right: attention at {}{} (one scale)",
                names.join(", "),
                if cam.is_some() { "; Grad-CAM" } else { "" }
            );
        } else if let Some(c) = grid(cam.as_ref())? {
            // The model's own map and Grad-CAM on one scale when both are grids, else apart.
            let pair = match grid(out.attention.as_ref())? {
                Some(own) => overlays_on_common_scale(&img, &[own, c], frames),
                None => vec![shown.clone(), overlay(&img, &c.0, c.1, c.2, frames)],
            };
            if pair[0].height == pair[1].height {
                shown = strip(&pair, 2);
                if !title.ends_with("Grad-CAM") {
                    title = format!("left: {title}; right: Grad-CAM (one scale)");
                }
            }
        }
        let pred = match predictions.get(i) {
            Some(Predicted::Class(p)) => *p,
            _ => u32::MAX,
        };
        let truth = set.labels[i];
        let mark = if pred == u32::from(truth) { "right" } else { "WRONG" };
        let name = |c: usize| names.get(c).cloned().unwrap_or_else(|| c.to_string());
        let line = format!("pred {} true {} {mark}", name(pred as usize), name(usize::from(truth)));
        tiles.push(Tile { image: shown, boxes: vec![], lines: vec![line] });
    }
    Ok((tiles, title))
}

/// Writes `attention/test_right.png` and `attention/test_wrong.png`: test images with what the
/// model attended, right and wrong predictions.
pub fn pictures(
    model: &dyn Model,
    data: &Prepared,
    test: &Evaluation,
    cfg: &ExperimentConfig,
    run_dir: &Path,
    device: &Device,
) -> Result<()> {
    if let Examples::Images { set, .. } = &data.test {
        confusion_files(set, test, data.classes, &data.class_names, run_dir)?;
    }
    let dir = run_dir.join("attention");
    let n = cfg.train.pictures;
    if n == 0 {
        return Ok(());
    }
    let pages = match &data.test {
        Examples::Images { set, .. } => {
            let is = |i: usize, right: bool| matches!(test.predictions.get(i), Some(Predicted::Class(p)) if (*p == u32::from(set.labels[i])) == right);
            let right: Vec<usize> = (0..set.len()).filter(|&i| is(i, true)).take(n).collect();
            let wrong: Vec<usize> = (0..set.len()).filter(|&i| is(i, false)).take(n).collect();
            let mut pages = vec![];
            for (name, idx) in [("test_right", right), ("test_wrong", wrong)] {
                pages.push((name, attention_tiles(model, set, &idx, &test.predictions, &data.class_names, device)?));
            }
            pages
        }
        Examples::Vqa(_) => vqa_tiles(model, data, n, device)?,
        Examples::Sequences(s) => sequence_tiles(model, s, test, n, cfg.train.decode, data.max_steps, device)?,
    };
    for (name, (tiles, title)) in pages {
        if tiles.is_empty() {
            continue;
        }
        let (w, h) = tiles.iter().fold((0, 1), |(w, h), t| (t.image.width.max(w), t.image.height.max(h)));
        let mut img = if w > 6 * h {
            grid(&tiles, 1, w) // a strip of pictures per word: one per row
        } else if w > 2 * h {
            grid(&tiles, 2, 2 * w)
        } else {
            grid(&tiles, 8, 112)
        };
        if matches!(data.test, Examples::Vqa(_)) {
            img = grid(&tiles, 4, 160);
        }
        let mut framed = Image::filled(img.height + 16, img.width, 3, 255);
        framed.draw_text(&format!("{name}: {title}"), 4, 6, 1, [0, 0, 0]);
        framed.blit(&img, 16, 0);
        img = framed;
        img.save_png(&dir.join(format!("{name}.png")))?;
    }
    Ok(())
}

type Page = (&'static str, (Vec<Tile>, String));

/// Test images read right (the sequence equals a reference) and wrong: each image with its
/// attention at every decoded word, what was read and the (first) reference.
fn sequence_tiles(
    model: &dyn Model,
    set: &SequenceSplit,
    test: &Evaluation,
    n: usize,
    search: Search,
    max_steps: usize,
    device: &Device,
) -> Result<Vec<Page>> {
    let read = |i: usize| match test.predictions.get(i) {
        Some(Predicted::Tokens(t)) => Some(t),
        _ => None,
    };
    let truth = |i: usize| set.references.get(i).and_then(|r| r.first());
    // Right: equal to one of the references (every one of them is a correct reading).
    let ok = |i: usize| read(i).is_some_and(|t| set.references.get(i).is_some_and(|r| r.contains(t)));
    let mut pages = vec![];
    for (name, right) in [("test_right", true), ("test_wrong", false)] {
        let idx: Vec<usize> = (0..set.images.len()).filter(|&i| ok(i) == right).take(n).collect();
        if idx.is_empty() {
            pages.push((name, (vec![], String::new())));
            continue;
        }
        let b = set.batch(&idx, device)?;
        let image_hw = (b.images.dim(2)?, b.images.dim(3)?);
        let frame_of = |grid| model.cell_frame(grid, image_hw);
        let d = model.decode(&b, search, max_steps.max(1), &mut Seed(0).rng())?;
        let mut title = String::from("inputs (the model does not attend)");
        let mut tiles = vec![];
        for (k, &i) in idx.iter().enumerate() {
            let img = set.images.get(i).cloned().unwrap_or_else(|| Image::filled(1, 1, 1, 0));
            match &d.attention {
                Some(AttentionMap::Steps { title: t, .. }) => title = format!("{t}, one picture per word"),
                Some(map @ AttentionMap::Glimpses { .. }) => {
                    title = render_attention(&img, Some(map), k, None)?.1.unwrap_or_default();
                }
                _ => {}
            }
            let shown = decoded_strip(&img, &d, k, set, Some(&frame_of))?;
            let want = truth(i).map(|t| set.spell(t)).unwrap_or_default();
            let mark = if right { "right" } else { "WRONG" };
            let got = d.tokens.get(k).map(|t| set.spell(t)).unwrap_or_default();
            let line = if set.text {
                format!("{got} | reference: {want}")
            } else {
                format!("read {got} | true {want} {mark}")
            };
            tiles.push(Tile { image: shown, boxes: vec![], lines: vec![line] });
        }
        pages.push((name, (tiles, title)));
    }
    Ok(pages)
}

/// Test questions answered right and wrong: the image with what the model kept (or weighed),
/// the question, its answer and the truth.
fn vqa_tiles(model: &dyn Model, data: &Prepared, n: usize, device: &Device) -> Result<Vec<Page>> {
    let set = &data.test;
    let name = |c: u32| data.answers.as_ref().and_then(|a| a.name(c)).unwrap_or("?").to_string();
    let (mut right, mut wrong) = (vec![], vec![]);
    let mut title = String::from("inputs");
    let mut i = 0;
    while i < set.len() && (right.len() < n || wrong.len() < n) {
        let idx: Vec<usize> = (i..(i + 8).min(set.len())).collect();
        i += idx.len();
        let b = set.batch(&idx, device)?;
        let out = model.forward(&b, Mode::eval(), &mut Seed(0).rng())?;
        let preds = out.scores.classes()?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let image_hw = (b.images.dim(2)?, b.images.dim(3)?);
        let frame_of = |grid| model.cell_frame(grid, image_hw);
        for (r, info) in set.row_info(&idx).iter().enumerate() {
            let known = !matches!(info.row.truth, crate::metrics::Truth::Class(None));
            let ok = known && preds.get(r).is_some_and(|&p| name(p) == info.truth);
            let bucket = if ok { &mut right } else { &mut wrong };
            if bucket.len() >= n {
                continue;
            }
            let img = set.image(idx[info.image])?;
            let (shown, t) = render_attention(&img, out.attention.as_ref(), r, Some(&frame_of))?;
            if let Some(t) = t {
                title = t;
            }
            let pred = preds.get(r).map_or(String::from("?"), |&p| name(p));
            let mark = if ok { "right" } else { "WRONG" };
            bucket.push(Tile {
                image: shown,
                boxes: vec![],
                lines: vec![info.question.clone(), format!("answer {pred}, truth {} {mark}", info.truth)],
            });
        }
    }
    Ok(vec![("test_right", (right, title.clone())), ("test_wrong", (wrong, title))])
}

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

fn plot_err<E: std::fmt::Display>(e: E) -> TrainError {
    TrainError::Other(format!("drawing curves: {e}"))
}

/// Draws `curves.png` from `metrics.jsonl`: training loss by step, and train / validation
/// accuracy by epoch.
pub fn curves(run_dir: &Path) -> Result<()> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap_or_default();
    let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let get = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_f64);
    let steps: Vec<(f64, f64)> =
        lines.iter().filter(|v| v["kind"] == "step").filter_map(|v| Some((get(v, "step")?, get(v, "loss")?))).collect();
    let epochs: Vec<&serde_json::Value> = lines.iter().filter(|v| v["kind"] == "epoch").collect();
    // Validation loss at the step each epoch ended, beside the training loss.
    let val_loss: Vec<(f64, f64)> =
        epochs.iter().filter_map(|v| Some((get(v, "step")?, get(v, "val_loss")?))).collect();
    // The right panel follows the task's validation metric: accuracy (with training accuracy),
    // BLEU-4, or sequence error.
    let metric = ["val_acc_pct", "val_bleu4", "val_sequence_error_pct"]
        .into_iter()
        .find(|k| epochs.iter().any(|v| get(v, k).is_some()))
        .unwrap_or("val_acc_pct");
    let series = |key: &str| -> Vec<(f64, f64)> {
        epochs.iter().filter_map(|v| Some((get(v, "epoch")?, get(v, key)?))).collect()
    };
    let val = series(metric);
    let train = if metric == "val_acc_pct" { series("train_acc_pct") } else { vec![] };
    let caption = match metric {
        "val_acc_pct" => "accuracy % by epoch (blue train, red val)",
        "val_bleu4" => "validation BLEU-4 by epoch",
        _ => "validation sequence error % by epoch",
    };
    let (w, h) = (960u32, 360u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (left, right) = root.split_horizontally(w / 2);
        let max_step = steps.last().map_or(1.0, |s| s.0).max(1.0);
        let max_loss = steps.iter().chain(&val_loss).map(|s| s.1).fold(0.0, f64::max).max(1e-3);
        let min_loss = steps.iter().chain(&val_loss).map(|s| s.1).fold(0.0, f64::min);
        let mut c = ChartBuilder::on(&left)
            .caption("loss (blue: logged training steps, red: validation)", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..max_step, min_loss * 1.05..max_loss * 1.05)
            .map_err(plot_err)?;
        c.configure_mesh()
            .x_desc("step")
            .x_labels(6)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(plot_err)?;
        c.draw_series(LineSeries::new(steps.iter().copied(), &BLUE)).map_err(plot_err)?;
        c.draw_series(val_loss.iter().map(|&p| Circle::new(p, 3, RED.filled()))).map_err(plot_err)?;
        let n_ep = epochs.len().max(1) as f64;
        let (lo, hi) =
            train.iter().chain(&val).map(|p| p.1).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let (lo, hi) = if lo > hi { (0.0, 100.0) } else { ((lo - 0.5).max(0.0), (hi + 0.5).min(100.0).max(lo + 1.0)) };
        let mut c = ChartBuilder::on(&right)
            .caption(caption, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.5..n_ep + 0.5, lo..hi)
            .map_err(plot_err)?;
        c.configure_mesh()
            .x_desc("epoch")
            .x_labels((epochs.len()).clamp(1, 10))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(plot_err)?;
        c.draw_series(LineSeries::new(train.iter().copied(), &BLUE)).map_err(plot_err)?;
        c.draw_series(LineSeries::new(val.iter().copied(), &RED)).map_err(plot_err)?;
        c.draw_series(val.iter().map(|&p| Circle::new(p, 3, RED.filled()))).map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Image { height: h as usize, width: w as usize, channels: 3, data: buf }.save_png(&run_dir.join("curves.png"))?;
    Ok(())
}

/// The settings in which the configs differ: each as its dotted key (`optim.lr`) and its value in
/// each config (`-` where a config lacks it), sorted by key. The run's name is left out.
pub fn config_differences(configs: &[toml::Value]) -> Vec<(String, Vec<String>)> {
    fn flatten(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    flatten(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let flat: Vec<std::collections::BTreeMap<String, String>> = configs
        .iter()
        .map(|c| {
            let mut m = std::collections::BTreeMap::new();
            flatten("", c, &mut m);
            m.remove("name");
            m
        })
        .collect();
    let keys: std::collections::BTreeSet<&String> = flat.iter().flat_map(|m| m.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let vals: Vec<String> = flat.iter().map(|m| m.get(k).cloned().unwrap_or_else(|| "-".into())).collect();
            vals.iter().any(|v| v != &vals[0]).then(|| (k.clone(), vals))
        })
        .collect()
}

/// One run's validation curve for [`compare_curves`]: its label and (epoch, value) points.
pub type Curve = (String, Vec<(f64, f64)>);

/// A run's per-epoch values of `key` from its `metrics.jsonl`.
pub fn epoch_series(run_dir: &Path, key: &str) -> Vec<(f64, f64)> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "epoch")
        .filter_map(|v| Some((v.get("epoch")?.as_f64()?, v.get(key)?.as_f64()?)))
        .collect()
}

/// Draws several runs' curves of one metric (`what`, by epoch) in one chart, a colour and a legend
/// entry per run, to `out` (PNG).
pub fn compare_curves(curves: &[Curve], what: &str, out: &Path) -> Result<()> {
    let (w, h) = (900u32, 420u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let pts = || curves.iter().flat_map(|c| c.1.iter());
        let max_ep = pts().map(|p| p.0).fold(1.0, f64::max);
        let (lo, hi) = pts().map(|p| p.1).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let (lo, hi) = if lo > hi { (0.0, 1.0) } else { (lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9)) };
        let mut c = ChartBuilder::on(&root)
            .caption(format!("{what} by epoch"), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.5..max_ep + 0.5, lo..hi)
            .map_err(plot_err)?;
        c.configure_mesh()
            .x_desc("epoch")
            .x_labels((max_ep as usize).clamp(1, 10))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(plot_err)?;
        for (i, (label, points)) in curves.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            c.draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
                .map_err(plot_err)?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2)));
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Image { height: h as usize, width: w as usize, channels: 3, data: buf }.save_png(out)?;
    Ok(())
}

/// Writes `confusion.md` (per-class accuracy, the matrix) and `confusion.png` for an image
/// classifier's test predictions; nothing for other outputs or more than 100 classes.
fn confusion_files(
    set: &LabeledImages,
    test: &Evaluation,
    classes: usize,
    names: &[String],
    run_dir: &Path,
) -> Result<()> {
    if classes > 100 {
        return Ok(());
    }
    let Some(c) = Confusion::of_images(set, &test.predictions, classes)? else { return Ok(()) };
    let md = format!("```text\n{}```\n", c.describe(names));
    gaze_data::write_atomic(&run_dir.join("confusion.md"), md.as_bytes())?;
    c.picture(&run_dir.join("confusion.png"))
}

/// A confusion matrix of a classifier on a test set: `counts[t][p]` rows of true class t predicted
/// as p.
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    /// Rows: true classes; columns: predicted classes.
    pub counts: Vec<Vec<u64>>,
}

impl Confusion {
    /// Counts `truth` against `predicted` over `classes` classes; an error names a length mismatch
    /// or a class outside the range.
    pub fn new(classes: usize, truth: &[u32], predicted: &[u32]) -> Result<Self> {
        if truth.len() != predicted.len() {
            return Err(TrainError::Other(format!(
                "confusion: {} true classes for {} predictions",
                truth.len(),
                predicted.len()
            )));
        }
        let mut counts = vec![vec![0u64; classes]; classes];
        for (&t, &p) in truth.iter().zip(predicted) {
            let cell = counts.get_mut(t as usize).and_then(|row| row.get_mut(p as usize)).ok_or_else(|| {
                TrainError::Other(format!("confusion: class {t} or {p} is outside the {classes} classes"))
            })?;
            *cell += 1;
        }
        Ok(Self { counts })
    }

    /// The matrix of an image classifier's `predictions` (one class per image of `set`); None for
    /// other outputs, or fewer than two classes.
    pub fn of_images(set: &LabeledImages, predictions: &[Predicted], classes: usize) -> Result<Option<Self>> {
        let predicted: Vec<u32> =
            predictions.iter().filter_map(|p| if let Predicted::Class(c) = p { Some(*c) } else { None }).collect();
        if predicted.len() != set.labels.len() || classes < 2 {
            return Ok(None);
        }
        let truth: Vec<u32> = set.labels.iter().map(|&l| u32::from(l)).collect();
        Self::new(classes, &truth, &predicted).map(Some)
    }

    /// Each class's accuracy in percent (None for a class with no rows), and its row count.
    pub fn per_class(&self) -> Vec<(Option<f64>, u64)> {
        self.counts
            .iter()
            .enumerate()
            .map(|(t, row)| {
                let n: u64 = row.iter().sum();
                ((n > 0).then(|| 100.0 * row[t] as f64 / n as f64), n)
            })
            .collect()
    }

    /// The matrix as a picture (`out`, PNG): each cell coloured by its share of the true class's
    /// rows, with its count.
    pub fn picture(&self, out: &Path) -> Result<()> {
        let k = self.counts.len().max(1);
        let cell = (560 / k as u32).clamp(12, 48);
        let (w, h) = (cell * k as u32 + 90, cell * k as u32 + 80);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            root.fill(&WHITE).map_err(plot_err)?;
            let font = ("sans-serif", (cell as f64 * 0.4).clamp(8.0, 14.0)).into_font();
            root.draw(&Text::new(
                "confusion (rows: true, columns: predicted; colour: share of the row)",
                (8, 6),
                ("sans-serif", 13),
            ))
            .map_err(plot_err)?;
            let (x0, y0) = (60i32, 50i32);
            let c = cell as i32;
            for (t, row) in self.counts.iter().enumerate() {
                let n: u64 = row.iter().sum::<u64>().max(1);
                root.draw(&Text::new(t.to_string(), (x0 - 24, y0 + t as i32 * c + c / 3), font.clone()))
                    .map_err(plot_err)?;
                for (p, &v) in row.iter().enumerate() {
                    let [r, g, b] = heat(v as f32 / n as f32);
                    let colour = RGBColor((255.0 * r) as u8, (255.0 * g) as u8, (255.0 * b) as u8);
                    let (x, y) = (x0 + p as i32 * c, y0 + t as i32 * c);
                    root.draw(&Rectangle::new([(x, y), (x + c - 1, y + c - 1)], colour.filled())).map_err(plot_err)?;
                    if v > 0 {
                        let ink = if (v as f32 / n as f32) > 0.5 { BLACK } else { WHITE };
                        root.draw(&Text::new(v.to_string(), (x + 2, y + c / 3), font.clone().color(&ink)))
                            .map_err(plot_err)?;
                    }
                }
            }
            for p in 0..self.counts.len() {
                root.draw(&Text::new(p.to_string(), (x0 + p as i32 * c + c / 3, y0 - 16), font.clone()))
                    .map_err(plot_err)?;
            }
            root.present().map_err(plot_err)?;
        }
        Image { height: h as usize, width: w as usize, channels: 3, data: buf }.save_png(out)?;
        Ok(())
    }

    /// Per-class accuracy, the classes most often confused, and (for at most 20 classes) the
    /// whole matrix, as text for a terminal or markdown file. `names` label the classes (their
    /// numbers where missing).
    pub fn describe(&self, names: &[String]) -> String {
        let name = |i: usize| names.get(i).cloned().unwrap_or_else(|| i.to_string());
        let mut out = String::from(
            "per class (true class: accuracy %, test rows):
",
        );
        for (t, (acc, n)) in self.per_class().iter().enumerate() {
            let acc = acc.map_or("-".to_string(), |a| format!("{a:.2}"));
            out += &format!(
                "  {:<12} {acc:>6}  {n}
",
                name(t)
            );
        }
        let mut mistakes: Vec<(u64, usize, usize)> = self
            .counts
            .iter()
            .enumerate()
            .flat_map(|(t, row)| {
                row.iter().enumerate().filter(move |&(p, &c)| p != t && c > 0).map(move |(p, &c)| (c, t, p))
            })
            .collect();
        mistakes.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        if !mistakes.is_empty() {
            out += "most confused (true -> predicted: rows):";
            for (c, t, p) in mistakes.iter().take(5) {
                out += &format!(" {} -> {}: {c};", name(*t), name(*p));
            }
            out.pop();
            out += "
";
        }
        let k = self.counts.len();
        if k <= 20 {
            out += "confusion matrix (rows: true class, columns: predicted):
";
            let width = self.counts.iter().flatten().max().map_or(1, |m| m.to_string().len()).max(3);
            out += &format!("{:>12} ", "");
            for p in 0..k {
                out += &format!(" {:>width$}", name(p));
            }
            out += "
";
            for (t, row) in self.counts.iter().enumerate() {
                out += &format!("{:>12} ", name(t));
                for c in row {
                    out += &format!(" {c:>width$}");
                }
                out += "
";
            }
        }
        out
    }
}

/// Which epoch's parameters the test metrics come from, and why (from `checkpoints/best.json`).
fn best_epoch(cfg: &ExperimentConfig, run_dir: &Path) -> String {
    let path = run_dir.join("checkpoints").join("best.json");
    let Some(state) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("state").cloned())
    else {
        return String::new();
    };
    let epoch = state.get("epoch").and_then(serde_json::Value::as_u64).unwrap_or_default();
    let value = state.get("best_value").and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
    let select = cfg.train.select.clone().unwrap_or_else(|| "the task's main validation metric".into());
    format!(
        "The test metrics are those of the parameters after epoch {epoch} of {}: the best by {select} \
         ({value}) on the validation split (`checkpoints/best.safetensors`).\n\n",
        cfg.train.epochs
    )
}

/// Writes `report.md` (and `curves.png`): config, final metrics against targets, pictures.
pub fn write(cfg: &ExperimentConfig, s: &RunSummary, run_dir: &Path) -> Result<()> {
    curves(run_dir)?;
    let mut md = format!("# {}\n\n", cfg.name);
    md += &format!("- data: {}\n", s.data);
    let record = crate::data::DataRecord::load(run_dir).ok().flatten();
    if let Some(r) = &record {
        md += &format!(
            "- data sha256 (`{}`): train `{}`, val `{}`, test `{}`\n",
            crate::data::DATA_RECORD,
            r.sha256.train,
            r.sha256.val,
            r.sha256.test
        );
    }
    md += &format!("- git: `{}`\n- finished: {}\n- command: `{}`\n\n", s.git_rev, s.date, s.command);
    // Where the model looked comes first: it is what an attention library is for.
    let pictures: Vec<&str> = ["test_right", "test_wrong"]
        .into_iter()
        .filter(|f| run_dir.join("attention").join(format!("{f}.png")).is_file())
        .collect();
    if !pictures.is_empty() {
        md += "## Where it looked (test images it got right, then wrong)\n\n";
        for f in &pictures {
            md += &format!("![{f}](attention/{f}.png)\n\n");
        }
    }
    md += "## Final metrics\n\n";
    let targets = match &record {
        Some(r) => cfg.targets_here(&r.sha256.test),
        None => cfg.targets.clone(),
    };
    let other = record.as_ref().map(|r| (r, cfg.targets_for(&r.sha256.test)));
    if let Some((r, crate::config::TargetsFor::OtherData(was))) = &other {
        let set: Vec<String> = cfg.targets.iter().map(|(k, v)| format!("{k} {v}")).collect();
        md += &format!(
            "The experiment's targets ({}) were set for other data (test split sha256 `{was}`...); this run's test \
             split is `{}`, so they are not compared here.\n\n",
            set.join(", "),
            r.sha256.test
        );
    }
    md += "| metric | value | target |\n|---|---|---|\n";
    for (k, v) in &s.metrics {
        md += &format!("| {k} | {v} | {} |\n", targets.get(k).map_or("", String::as_str));
    }
    let unit = match &cfg.data {
        crate::config::DataConfig::BarnVqa(_)
        | crate::config::DataConfig::SortOfClevr(_)
        | crate::config::DataConfig::VqaFolder(_) => "questions/s",
        crate::config::DataConfig::ShapeCaptions(_) | crate::config::DataConfig::CaptionFolder(_) => {
            "images/s (each with its caption)"
        }
        _ => "images/s",
    };
    md += &format!(
        "| wall_s | {} | |\n| samples_per_s | {} | training {unit} |\n| steps | {} | |\n\n",
        s.wall_s, s.samples_per_s, s.steps
    );
    md += &best_epoch(cfg, run_dir);
    if let Ok(text) = std::fs::read_to_string(run_dir.join("confusion.md")) {
        md += &format!("## Per class (test)\n\n{text}\n![confusion](confusion.png)\n\n");
    }
    if !s.stats.is_empty() {
        md += "## Statistics on the test set\n\n| statistic | mean |\n|---|---|\n";
        for (k, v) in &s.stats {
            md += &format!("| {k} | {v} |\n");
        }
        md += "\n";
    }
    if let Some(on) = s.metrics.get("glimpsed_digit_pct") {
        let acc = |k: &str| s.metrics.get(k).map_or(String::from("-"), |a| format!("{a:.2}%"));
        md += &format!(
            "## Did the glimpses reach the digit? (test)\n\n\
             A glimpse reached the digit when the centre of the digit's ink box lay inside its finest patch \
             (glimpses after the first, which the policy chose).\n\n\
             | | share of images | accuracy |\n|---|---|---|\n\
             | reached | {on:.2}% | {} |\n| not reached | {:.2}% | {} |\n\n",
            acc("test_acc_glimpsed_pct"),
            100.0 - on,
            acc("test_acc_not_glimpsed_pct")
        );
    }
    if !s.per_kind.is_empty() {
        md += "## Per question kind (test)\n\nFocus: the objects a question is about (when the data names them); \
               \"focus kept\" counts questions whose every focus object's centre cell was kept.\n\n\
               | kind | questions | accuracy % | cells kept % | focus kept % | accuracy, focus kept % | accuracy, focus missed % |\n\
               |---|---|---|---|---|---|---|\n";
        let pct = |p: Option<f64>| p.map_or(String::from("-"), |p| format!("{p:.1}"));
        for (k, v) in &s.per_kind {
            md += &format!(
                "| {k} | {} | {:.2} | {} | {} | {} | {} |\n",
                v.questions,
                v.acc_pct,
                pct(v.kept_pct),
                pct(v.focus_kept_pct),
                pct(v.acc_focus_kept_pct),
                pct(v.acc_focus_missed_pct)
            );
        }
        md += "\n";
    }
    md += "## Training curves\n\n![curves](curves.png)\n\n";
    md += &format!("## Config\n\n```toml\n{}```\n", cfg.to_toml()?);
    gaze_data::write_atomic(&run_dir.join("report.md"), md.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_compared_share_one_scale() -> Result<()> {
        assert_eq!(densities(&[1.0, 1.0, 2.0, 0.0]), vec![1.0, 1.0, 2.0, 0.0]);
        assert_eq!(densities(&[0.0, 0.0]), vec![0.0, 0.0]);
        let img = Image::grey(4, 4, vec![0; 16])?;
        let uniform = vec![0.25f32; 4];
        let peaked = vec![1.0f32, 0.0, 0.0, 0.0];
        // Alone, a uniform map is drawn at full heat everywhere, like the peak of a peaked one.
        let alone = overlay(&img, &uniform, 2, 2, None);
        let both = overlays_on_common_scale(&img, &[(uniform.clone(), 2, 2), (peaked, 2, 2)], None);
        let red = |im: &Image| im.data[0]; // the top-left pixel, in the top-left cell
        assert!(red(&both[0]) < red(&alone), "on one scale the uniform map is fainter");
        assert!(red(&both[1]) > red(&both[0]), "than the peak beside it");
        // A 1x1 grid and a 2x2 grid with the same density look the same.
        let same = overlays_on_common_scale(&img, &[(vec![3.0], 1, 1), (uniform, 2, 2)], None);
        assert_eq!(same[0].data, same[1].data);
        Ok(())
    }

    #[test]
    fn config_differences_name_each_differing_setting() -> Result<()> {
        let parse = |t: &str| toml::from_str::<toml::Value>(t).map_err(|e| TrainError::Other(e.to_string()));
        let a = parse("name = \"a\"\nseed = 1\n[optim]\nlr = 0.1\nkind = \"adamw\"\n")?;
        let b = parse("name = \"b\"\nseed = 1\n[optim]\nlr = 0.01\nkind = \"adamw\"\n[train]\nepochs = 3\n")?;
        let d = config_differences(&[a, b]);
        assert_eq!(
            d,
            vec![
                ("optim.lr".to_string(), vec!["0.1".to_string(), "0.01".to_string()]),
                ("train.epochs".to_string(), vec!["-".to_string(), "3".to_string()]),
            ]
        );
        Ok(())
    }

    #[test]
    fn a_confusion_matrix_counts_truth_against_prediction() -> Result<()> {
        let c = Confusion::new(3, &[0, 0, 1, 1, 1, 2], &[0, 1, 1, 1, 0, 1])?;
        assert_eq!(c.counts, vec![vec![1, 1, 0], vec![1, 2, 0], vec![0, 1, 0]]);
        let per = c.per_class();
        assert_eq!(per[0], (Some(50.0), 2));
        assert_eq!(per[2], (Some(0.0), 1));
        assert!((per[1].0.unwrap_or_default() - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!(Confusion::new(3, &[0, 1], &[0, 1])?.per_class()[2], (None, 0));
        let text = c.describe(&["cat".into(), "dog".into()]);
        assert!(
            text.contains("cat") && text.contains("most confused (true -> predicted: rows): cat -> dog: 1;"),
            "{text}"
        );
        assert!(text.contains("confusion matrix"), "{text}");
        assert!(Confusion::new(3, &[0, 3], &[0, 0]).is_err(), "a class out of range");
        assert!(Confusion::new(3, &[0], &[0, 0]).is_err(), "lengths differ");
        Ok(())
    }

    #[test]
    fn glimpse_paths_and_kept_cells_are_drawn() {
        let img = Image::filled(20, 20, 1, 0);
        // two steps: the centre, then the top-left corner; one 4-px scale and one 8-px scale
        let g = draw_glimpses(&img, &[(0.0, 0.0), (-0.5, -0.5)], &[4, 8], 0, 2);
        assert_eq!((g.width, g.height), (40, 40));
        let c0 = gaze_data::preview::BOX_COLOURS[0];
        // step 1's inner box: centre (20, 20) at 2x, half-side 4 -> its top edge is row 16
        assert_eq!((0..3).map(|c| g.get(16, 20, c)).collect::<Vec<_>>(), c0.to_vec());
        // the path passes between the two centres (20, 20) and (10, 10)
        assert_eq!(g.get(15, 15, 0), 255);
        // through render_attention a 60x60 canvas is drawn at 3x, its boxes at 3x too
        let map = AttentionMap::Glimpses {
            centres: vec![vec![(0.0, 0.0)]],
            sizes: vec![12],
            per_object: 0,
            fixed: 1,
            title: "path".into(),
        };
        let (big, title) =
            render_attention(&Image::filled(60, 60, 1, 0), Some(&map), 0, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((big.width, big.height, title.as_deref()), (180, 180, Some("path")));
        assert_eq!(big.get(90 - 18, 90, 0), c0[0]); // the 12-px box's top edge, 18 px above the centre at 3x
        let cells = draw_cells(&img, &[0.0, 1.0, 0.0, 0.0], (2, 2), None, 1);
        assert_eq!(cells.get(0, 15, 0), 255); // top-right cell outlined
        assert_eq!(cells.get(15, 5, 0), 0); // bottom-left not
    }

    #[test]
    fn overlay_brightens_the_attended_cell() {
        let img = Image::filled(4, 4, 1, 0);
        let o = overlay(&img, &[0.0, 1.0, 0.0, 0.0], 2, 2, None);
        // top-right cell is hot, bottom-left is not
        assert!(o.get(0, 3, 0) > 100);
        assert_eq!(o.get(3, 0, 0), 0);
        // Cells centred at 1/8 and 5/8 of the side (a stride-2 grid's): the hot first cell covers
        // the first pixel of each row only, where the even grid covers two.
        let axis = gaze_zoo::CellAxis { first: 0.125, step: 0.5 };
        let frame = CellFrame { y: axis, x: axis };
        let frame_of = |_| Some(frame);
        let framed = overlay(&img, &[1.0, 0.0, 0.0, 0.0], 2, 2, Some(&frame_of));
        let even = overlay(&img, &[1.0, 0.0, 0.0, 0.0], 2, 2, None);
        assert!(framed.get(0, 0, 0) > 100 && even.get(1, 1, 0) > 100);
        assert_eq!(framed.get(1, 1, 0), 0);
    }

    /// The curves follow the task's validation metric and keep their labels apart on long runs.
    #[test]
    fn curves_draw_long_sequence_runs() -> Result<()> {
        for metric in ["val_acc_pct", "val_sequence_error_pct"] {
            let dir = tempfile::tempdir().map_err(|e| crate::TrainError::Other(e.to_string()))?;
            let mut text = String::new();
            for e in 1..=36u32 {
                for k in 0..10u32 {
                    let step = (e - 1) * 860 + k * 86;
                    text += &format!("{{\"kind\":\"step\",\"step\":{step},\"loss\":{}}}\n", 2.0 / f64::from(step + 1));
                }
                text += &format!(
                    "{{\"kind\":\"epoch\",\"epoch\":{e},\"step\":{},\"val_loss\":0.5,\"{metric}\":{},\"train_acc_pct\":50}}\n",
                    e * 860,
                    100.0 / f64::from(e)
                );
            }
            std::fs::write(dir.path().join("metrics.jsonl"), text)
                .map_err(|e| crate::TrainError::Other(e.to_string()))?;
            curves(dir.path())?;
            let png = Image::load(&dir.path().join("curves.png"), false)?;
            assert_eq!((png.width, png.height), (960, 360));
        }
        Ok(())
    }
}

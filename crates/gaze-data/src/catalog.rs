//! The data sets gaze can make or load, by name: previews and exports for `cargo xtask data`.

use std::path::Path;

use gaze_tensor::Seed;

use crate::caption::CaptionSet;
use crate::error::{DataError, Result};
use crate::generate::{
    BarnConfig, BarnVqa, CanvasConfig, CaptionConfig, MnistCanvas, MnistPairs, PairsConfig, ShapeCaptions, SortOfClevr,
    SortOfClevrConfig,
};
use crate::image::{Image, LabeledBox};
use crate::mnist::{Mnist, MnistSource};
use crate::preview::Tile;
use crate::vqa::VqaSet;

/// Every named data set.
pub const NAMES: [&str; 8] = [
    "mnist",
    "translated-mnist-60",
    "cluttered-mnist-60",
    "cluttered-mnist-100",
    "mnist-pairs",
    "barn-vqa",
    "sort-of-clevr",
    "shape-captions",
];

fn unknown(name: &str) -> DataError {
    DataError::config("dataset", format!("unknown data set `{name}`; known: {}", NAMES.join(", ")))
}

fn canvas_config(name: &str) -> Option<CanvasConfig> {
    match name {
        "translated-mnist-60" => Some(CanvasConfig::translated_60()),
        "cluttered-mnist-60" => Some(CanvasConfig::cluttered_60()),
        "cluttered-mnist-100" => Some(CanvasConfig::cluttered_100()),
        _ => None,
    }
}

/// `n` samples of data set `name` as preview tiles, made with `seed` (test split for MNIST-based
/// sets, digits from `source`).
pub fn preview(name: &str, n: usize, seed: Seed, source: &MnistSource) -> Result<Vec<Tile>> {
    let digits = || -> Result<Mnist> { Mnist::load(source) };
    let tile = |image: Image, boxes: Vec<LabeledBox>, lines: Vec<String>| Tile { image, boxes, lines };
    match name {
        "mnist" => {
            let m = digits()?;
            (0..n.min(m.test.len()))
                .map(|i| {
                    let img = Image::grey(m.test.rows, m.test.cols, m.test.image(i).unwrap_or_default().to_vec())?;
                    Ok(tile(img, vec![], vec![format!("label {}", m.test.labels[i])]))
                })
                .collect()
        }
        _ if canvas_config(name).is_some() => {
            let m = digits()?;
            let cfg = canvas_config(name).ok_or_else(|| unknown(name))?;
            let g = MnistCanvas::new(cfg, &m.test, seed)?;
            (0..n.min(g.len()))
                .map(|i| {
                    let s = g.sample(i)?;
                    Ok(tile(s.image, s.boxes, vec![format!("label {}", s.label)]))
                })
                .collect()
        }
        "mnist-pairs" => {
            let m = digits()?;
            let g = MnistPairs::new(PairsConfig::default(), &m.test, seed)?;
            (0..n.min(g.len()))
                .map(|i| {
                    let s = g.sample(i)?;
                    let read: Vec<String> = s.digits.iter().map(u8::to_string).collect();
                    Ok(tile(s.image, s.boxes, vec![format!("{}  sum {}", read.join(" "), s.sum)]))
                })
                .collect()
        }
        "barn-vqa" | "sort-of-clevr" => {
            let set = vqa(name, n, seed)?;
            Ok(set
                .records
                .iter()
                .take(n)
                .map(|r| {
                    let boxes = r.q.focus.iter().filter_map(|&f| set.boxes[r.image].get(f).cloned()).collect();
                    tile(set.images[r.image].clone(), boxes, vec![r.q.question.clone(), format!("-> {}", r.q.answer)])
                })
                .collect())
        }
        "shape-captions" => {
            let set = captions(n, seed)?;
            // One tile per scene, with the first of its captions and how many there are.
            let mut tiles = vec![];
            for (i, img) in set.images.iter().enumerate() {
                let all: Vec<&str> = set.records.iter().filter(|r| r.image == i).map(|r| r.caption.as_str()).collect();
                let mut lines = vec![all.first().copied().unwrap_or_default().to_string()];
                if all.len() > 1 {
                    let more = all.len() - 1;
                    lines.push(format!("(+{more} other order{})", if more == 1 { "" } else { "s" }));
                }
                tiles.push(tile(img.clone(), set.boxes[i].clone(), lines));
            }
            Ok(tiles)
        }
        _ => Err(unknown(name)),
    }
}

/// A VQA set of about `n` questions from a generator, one question per scene so a preview shows
/// `n` different images.
fn vqa(name: &str, n: usize, seed: Seed) -> Result<VqaSet> {
    let scenes = match name {
        "barn-vqa" => {
            let g = BarnVqa::new(BarnConfig { questions_per_scene: 1, ..BarnConfig::default() }, seed)?;
            (0..n).map(|i| g.scene(i)).collect::<Result<Vec<_>>>()?
        }
        _ => {
            let g = SortOfClevr::new(SortOfClevrConfig::default(), seed)?;
            (0..n)
                .map(|i| {
                    let mut s = g.scene(i)?;
                    // alternate non-relational and relational questions
                    let pick = if i % 2 == 0 { 0 } else { s.questions.len() - 1 };
                    s.questions = vec![s.questions.swap_remove(pick)];
                    Ok(s)
                })
                .collect::<Result<Vec<_>>>()?
        }
    };
    Ok(VqaSet::from_scenes(scenes))
}

fn captions(n: usize, seed: Seed) -> Result<CaptionSet> {
    let g = ShapeCaptions::new(CaptionConfig::default(), seed)?;
    Ok(CaptionSet::from_samples((0..n).map(|i| g.sample(i)).collect::<Result<_>>()?))
}

/// Writes `scenes` generated scenes of a VQA or caption data set to `dir` in the generic folder
/// format. Returns the number of records written.
pub fn export(name: &str, scenes: usize, seed: Seed, dir: &Path) -> Result<usize> {
    match name {
        "barn-vqa" => {
            let g = BarnVqa::new(BarnConfig::default(), seed)?;
            let set = VqaSet::from_scenes((0..scenes).map(|i| g.scene(i)).collect::<Result<_>>()?);
            set.write_folder(dir)?;
            Ok(set.len())
        }
        "sort-of-clevr" => {
            let g = SortOfClevr::new(SortOfClevrConfig::default(), seed)?;
            let set = VqaSet::from_scenes((0..scenes).map(|i| g.scene(i)).collect::<Result<_>>()?);
            set.write_folder(dir)?;
            Ok(set.len())
        }
        "shape-captions" => {
            let set = captions(scenes, seed)?;
            set.write_folder(dir)?;
            Ok(set.len())
        }
        _ if NAMES.contains(&name) => Err(DataError::config(
            "dataset",
            format!("`{name}` is not a VQA or caption set; export takes barn-vqa, sort-of-clevr or shape-captions"),
        )),
        _ => Err(unknown(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_previews() -> Result<()> {
        for name in NAMES {
            let tiles = preview(name, 3, Seed(0), &MnistSource::Fixture)?;
            assert_eq!(tiles.len(), 3, "{name}");
        }
        assert!(preview("nope", 1, Seed(0), &MnistSource::Fixture).is_err());
        Ok(())
    }
}

//! Shape-scene captions, a small captioning task for "Show, Attend and Tell" (Xu et al. 2015).
//!
//! A white square canvas is cut into a 3x3 grid; 1-3 shapes (circle, square, triangle) of
//! distinct colours sit in distinct cells, jittered within them. The caption names colour, shape
//! and relation: "a red circle", "a red circle left of a blue square", "a red circle left of a
//! blue square and a green triangle above the blue square". The relation of A to B is horizontal
//! when the grid columns differ at least as much as the rows ("left of" / "right of"), else
//! vertical ("above" / "below"). Each word carries the index of the box it refers to (colour and
//! shape words), or none.
//!
//! A scene has one caption for every order in which its shapes may be named (one, two or six),
//! all correct, so that BLEU against all of them scores what a caption says, not the order it
//! picked; the first names them in reading order (by grid cell, row by row, left to right).

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use gaze_tensor::Seed;

use crate::error::{DataError, Result};
use crate::image::{BBox, Image, LabeledBox, Rgb};

/// Shape names.
pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
/// Colour names.
pub const COLOURS: [&str; 5] = ["red", "green", "blue", "yellow", "purple"];
/// Colour values.
pub const COLOUR_RGB: [Rgb; 5] = [[220, 30, 30], [30, 170, 50], [30, 60, 220], [230, 200, 20], [150, 40, 180]];

/// Settings of the caption generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptionConfig {
    /// Canvas side in pixels (a multiple of 3 keeps cells equal).
    pub size: usize,
    /// Most shapes per scene (1..=3).
    pub max_shapes: usize,
    /// Grey level of the background (255: white). 0 (black) makes a CNN's zero padding match
    /// the background and leaves the shapes as the only thing a feature map responds to.
    pub background: u8,
}

impl Default for CaptionConfig {
    fn default() -> Self {
        Self { size: 63, max_shapes: 3, background: 255 }
    }
}

/// A caption and, for each of its words (split on spaces), the box it refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct Caption {
    /// The caption.
    pub text: String,
    /// For each word, the index of the box it names.
    pub word_boxes: Vec<Option<usize>>,
}

/// One captioned scene.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionSample {
    /// The RGB canvas.
    pub image: Image,
    /// Every correct caption; the first names the shapes in reading order.
    pub captions: Vec<Caption>,
    /// One box per shape, labelled `"<colour> <shape>"`.
    pub boxes: Vec<LabeledBox>,
    /// Grid cell (row, column) of each shape.
    pub cells: Vec<(usize, usize)>,
}

/// The orders of `n` items, the identity first.
fn orders(n: usize) -> Vec<Vec<usize>> {
    match n {
        0 | 1 => vec![(0..n).collect()],
        2 => vec![vec![0, 1], vec![1, 0]],
        _ => vec![vec![0, 1, 2], vec![0, 2, 1], vec![1, 0, 2], vec![1, 2, 0], vec![2, 0, 1], vec![2, 1, 0]],
    }
}

/// The relation words of A relative to B from their grid cells.
pub fn relation(a: (usize, usize), b: (usize, usize)) -> &'static str {
    let (dr, dc) = (a.0 as i64 - b.0 as i64, a.1 as i64 - b.1 as i64);
    if dc.abs() >= dr.abs() {
        if dc < 0 {
            "left of"
        } else {
            "right of"
        }
    } else if dr < 0 {
        "above"
    } else {
        "below"
    }
}

/// The caption naming `boxes` in `order`: "a A", "a A rel a B", or "a A rel a B and a C rel
/// the B" (the second shape is the third's anchor).
fn caption(boxes: &[LabeledBox], cells: &[(usize, usize)], order: &[usize]) -> Caption {
    let mut words: Vec<(String, Option<usize>)> = vec![];
    let name = |k: usize, article: &str, words: &mut Vec<(String, Option<usize>)>| {
        words.push((article.to_string(), None));
        for w in boxes[k].label.split(' ') {
            words.push((w.to_string(), Some(k)));
        }
    };
    let rel = |a: usize, b: usize, words: &mut Vec<(String, Option<usize>)>| {
        for w in relation(cells[a], cells[b]).split(' ') {
            words.push((w.to_string(), None));
        }
    };
    if let Some(&a) = order.first() {
        name(a, "a", &mut words);
    }
    if let [a, b, ..] = *order {
        rel(a, b, &mut words);
        name(b, "a", &mut words);
    }
    if let [_, b, c] = *order {
        words.push(("and".into(), None));
        name(c, "a", &mut words);
        rel(c, b, &mut words);
        name(b, "the", &mut words);
    }
    Caption {
        text: words.iter().map(|w| w.0.as_str()).collect::<Vec<_>>().join(" "),
        word_boxes: words.into_iter().map(|w| w.1).collect(),
    }
}

/// The shape-caption generator.
#[derive(Debug, Clone)]
pub struct ShapeCaptions {
    cfg: CaptionConfig,
    seed: Seed,
}

impl ShapeCaptions {
    /// Checks the settings.
    pub fn new(cfg: CaptionConfig, seed: Seed) -> Result<Self> {
        if cfg.size < 24 {
            return Err(DataError::config(
                "size",
                format!("{} px is too small for a 3x3 grid of shapes (>= 24)", cfg.size),
            ));
        }
        if !(1..=3).contains(&cfg.max_shapes) {
            return Err(DataError::config("max_shapes", format!("{} is not in 1..=3", cfg.max_shapes)));
        }
        Ok(Self { cfg, seed })
    }

    /// Sample `i`.
    pub fn sample(&self, i: usize) -> Result<CaptionSample> {
        let mut rng = self.seed.index(i as u64).rng();
        let n = rng.random_range(1..=self.cfg.max_shapes);
        let mut cells: Vec<(usize, usize)> = (0..9).map(|c| (c / 3, c % 3)).collect();
        cells.shuffle(&mut rng);
        cells.truncate(n);
        cells.sort_unstable(); // reading order: the first caption names the shapes row by row
        let mut colours: Vec<usize> = (0..COLOURS.len()).collect();
        colours.shuffle(&mut rng);
        let cell = self.cfg.size as f32 / 3.0;
        let mut image = Image::filled(self.cfg.size, self.cfg.size, 3, self.cfg.background);
        let mut boxes = vec![];
        for (k, &(r, c)) in cells.iter().enumerate() {
            let shape = rng.random_range(0..SHAPES.len());
            let half = cell * rng.random_range(0.28..0.40f32);
            let slack = cell / 2.0 - half;
            let cx = (c as f32 + 0.5) * cell + rng.random_range(-slack..=slack);
            let cy = (r as f32 + 0.5) * cell + rng.random_range(-slack..=slack);
            let b = BBox::centred(cx, cy, half, half);
            let rgb = COLOUR_RGB[colours[k]];
            match shape {
                0 => image.fill_ellipse(b, rgb),
                1 => image.fill_rect(b, rgb),
                _ => image.fill_triangle([(b.x, b.y + b.h), (b.x + b.w, b.y + b.h), (cx, b.y)], rgb),
            }
            boxes.push(LabeledBox { label: format!("{} {}", COLOURS[colours[k]], SHAPES[shape]), bbox: b });
        }
        let captions = orders(n).into_iter().map(|order| caption(&boxes, &cells, &order)).collect();
        Ok(CaptionSample { image, captions, boxes, cells })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caption_words_match_the_scene() -> Result<()> {
        let g = ShapeCaptions::new(CaptionConfig::default(), Seed(4))?;
        let mut lengths = [0usize; 4];
        for i in 0..200 {
            let s = g.sample(i)?;
            lengths[s.boxes.len()] += 1;
            // One caption per order of the shapes, all different, each naming every shape.
            assert_eq!(s.captions.len(), [1, 1, 2, 6][s.boxes.len()]);
            for (j, c) in s.captions.iter().enumerate() {
                assert!(s.captions[..j].iter().all(|o| o.text != c.text), "{}", c.text);
                assert!(s.boxes.iter().all(|b| c.text.contains(&b.label)), "{}", c.text);
                let words: Vec<&str> = c.text.split(' ').collect();
                assert_eq!(words.len(), c.word_boxes.len());
                for (w, b) in words.iter().zip(&c.word_boxes) {
                    match b {
                        Some(k) => {
                            assert!(s.boxes[*k].label.split(' ').any(|l| l == *w), "{w} vs {}", s.boxes[*k].label)
                        }
                        None => assert!(!COLOURS.contains(w) && !SHAPES.contains(w), "{w}"),
                    }
                }
            }
            let first = &s.captions[0].text;
            // The first caption names the shapes in reading order: row by row, left to right.
            assert!(s.cells.windows(2).all(|w| w[0] < w[1]), "{:?}", s.cells);
            let at = |k: usize| first.find(&format!("a {}", s.boxes[k].label)).unwrap_or(usize::MAX);
            assert!((1..s.boxes.len()).all(|k| at(k - 1) < at(k)), "{first}");
            // Relations recomputed from the box centres (independent of the grid cells).
            let centre = |k: usize| s.boxes[k].bbox.centre();
            let check = |a: usize, b: usize, text: &str| {
                let ((ax, ay), (bx, by)) = (centre(a), centre(b));
                let cell = 21.0;
                let (dc, dr) =
                    (((ax / cell).floor() - (bx / cell).floor()), ((ay / cell).floor() - (by / cell).floor()));
                let want = if dc.abs() >= dr.abs() {
                    if dc < 0.0 {
                        "left of"
                    } else {
                        "right of"
                    }
                } else if dr < 0.0 {
                    "above"
                } else {
                    "below"
                };
                assert!(text.contains(want), "{text}: {want}");
            };
            if s.boxes.len() >= 2 {
                let (a, b) = (first.find(&s.boxes[0].label).unwrap_or(0), first.find(&s.boxes[1].label).unwrap_or(0));
                check(0, 1, &first[a..b]);
            }
            if s.boxes.len() == 3 {
                let start = first.find(&s.boxes[2].label).unwrap_or(0);
                check(2, 1, &first[start..]);
            }
            for b in &s.boxes {
                assert!(b.bbox.inside(63, 63));
                let (cx, cy) = b.bbox.centre();
                // the shape's own colour is at its centre (the triangle's centre is inside too)
                let want = COLOUR_RGB[COLOURS.iter().position(|c| b.label.starts_with(c)).unwrap_or(0)];
                let got: Vec<u8> = (0..3).map(|c| s.image.get(cy as i64, cx as i64, c)).collect();
                assert_eq!(got, want.to_vec(), "{}", b.label);
            }
        }
        assert!(lengths[1] > 0 && lengths[2] > 0 && lengths[3] > 0, "{lengths:?}");
        Ok(())
    }

    #[test]
    fn relation_rule() {
        assert_eq!(relation((0, 0), (0, 2)), "left of");
        assert_eq!(relation((2, 2), (0, 1)), "below");
        assert_eq!(relation((1, 2), (0, 1)), "right of");
        assert_eq!(relation((0, 1), (2, 1)), "above");
    }

    #[test]
    fn deterministic() -> Result<()> {
        let g = ShapeCaptions::new(CaptionConfig::default(), Seed(4))?;
        assert_eq!(g.sample(1)?, g.sample(1)?);
        assert!(ShapeCaptions::new(CaptionConfig { max_shapes: 4, ..CaptionConfig::default() }, Seed(0)).is_err());
        Ok(())
    }
}

//! Sort-of-CLEVR, the relational VQA benchmark of "A simple neural network module for relational
//! reasoning" (Santoro et al. 2017), as its public reimplementations generate it.
//!
//! A 75x75 image, white by default (`background`), holds 6 objects, one per colour, each a square
//! or a circle (p = 0.5) of half-size 5 px, centres at least 10 px apart. Each image gets 10
//! non-relational questions (shape of X? is X on the left? is X on the top?) and 10 relational
//! ones (shape of the object closest to X? farthest from X? how many objects share X's shape?),
//! X a random colour. The question code is 11-d: colour one-hot (6), non-relational / relational
//! (2), subtype (3).

use rand::Rng;
use serde::{Deserialize, Serialize};

use gaze_tensor::Seed;

use crate::error::{DataError, Result};
use crate::image::{BBox, Image, LabeledBox, Rgb};
use crate::vqa::{VqaQuestion, VqaScene};

/// Colour names, in code order.
pub const COLOURS: [&str; 6] = ["red", "green", "blue", "orange", "gray", "yellow"];
/// Colour values, in code order.
pub const COLOUR_RGB: [Rgb; 6] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 156, 0], [128, 128, 128], [255, 255, 0]];
/// The 10 answers: yes, no, the two shapes, counts 1 to 6.
pub const ANSWERS: [&str; 10] = ["yes", "no", "square", "circle", "1", "2", "3", "4", "5", "6"];
/// Non-relational subtypes.
pub const NONREL_KINDS: [&str; 3] = ["shape", "left", "top"];
/// Relational subtypes.
pub const REL_KINDS: [&str; 3] = ["closest", "farthest", "count"];

/// Settings of Sort-of-CLEVR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SortOfClevrConfig {
    /// Image side (75).
    pub size: usize,
    /// Object half-size (5).
    pub half: usize,
    /// Minimum distance between object centres (10).
    pub min_distance: f32,
    /// Non-relational questions per image (10).
    pub nonrel_per_image: usize,
    /// Relational questions per image (10).
    pub rel_per_image: usize,
    /// Grey level of the background (255: the reimplementations' white). 0 (black) makes the zero
    /// padding of a CNN match the background, so the image border is not an edge.
    pub background: u8,
}

impl Default for SortOfClevrConfig {
    /// The reimplementations' setting (75 px, half-size 5, 10 + 10 questions per image).
    fn default() -> Self {
        Self { size: 75, half: 5, min_distance: 10.0, nonrel_per_image: 10, rel_per_image: 10, background: 255 }
    }
}

/// One object of a scene: colour index, square or circle, centre (x, y).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClevrObject {
    /// Index into [`COLOURS`].
    pub colour: usize,
    /// Square (true) or circle.
    pub square: bool,
    /// Centre x.
    pub x: f32,
    /// Centre y.
    pub y: f32,
}

impl ClevrObject {
    /// `"square"` or `"circle"`.
    pub fn shape(&self) -> &'static str {
        if self.square {
            "square"
        } else {
            "circle"
        }
    }
}

/// The object closest to (or, with `farthest`, farthest from) `me`, among the others.
fn nearest<'a>(objects: &'a [ClevrObject], me: &ClevrObject, farthest: bool) -> Option<&'a ClevrObject> {
    let d2 = |o: &&ClevrObject| (o.x - me.x).powi(2) + (o.y - me.y).powi(2);
    let others = objects.iter().filter(|o| o.colour != me.colour);
    if farthest {
        others.max_by(|a, b| d2(a).total_cmp(&d2(b)))
    } else {
        others.min_by(|a, b| d2(a).total_cmp(&d2(b)))
    }
}

/// The answer to question (`relational`, `subtype`) about colour `colour`, recomputed from the
/// scene description alone. `size` is the image side.
pub fn answer(objects: &[ClevrObject], colour: usize, relational: bool, subtype: usize, size: usize) -> Option<String> {
    let me = objects.iter().find(|o| o.colour == colour)?;
    let half = size as f32 / 2.0;
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    Some(match (relational, subtype) {
        (false, 0) => me.shape().to_string(),
        (false, 1) => yes_no(me.x < half),
        (false, 2) => yes_no(me.y < half),
        (true, 0) => nearest(objects, me, false)?.shape().to_string(),
        (true, 1) => nearest(objects, me, true)?.shape().to_string(),
        (true, 2) => objects.iter().filter(|o| o.square == me.square).count().to_string(),
        _ => return None,
    })
}

/// The question text for (`relational`, `subtype`) about `colour`.
pub fn question_text(colour: usize, relational: bool, subtype: usize) -> String {
    let c = COLOURS.get(colour).copied().unwrap_or("?");
    match (relational, subtype) {
        (false, 0) => format!("what is the shape of the {c} object?"),
        (false, 1) => format!("is the {c} object on the left?"),
        (false, 2) => format!("is the {c} object on the top?"),
        (true, 0) => format!("what is the shape of the object closest to the {c} object?"),
        (true, 1) => format!("what is the shape of the object farthest from the {c} object?"),
        _ => format!("how many objects have the same shape as the {c} object?"),
    }
}

/// The 11-d code of a question.
pub fn question_code(colour: usize, relational: bool, subtype: usize) -> Vec<f32> {
    let mut v = vec![0.0; 11];
    v[colour.min(5)] = 1.0;
    v[6 + usize::from(relational)] = 1.0;
    v[8 + subtype.min(2)] = 1.0;
    v
}

/// The Sort-of-CLEVR generator: scene `i` depends only on the settings, the seed and `i`.
#[derive(Debug, Clone)]
pub struct SortOfClevr {
    cfg: SortOfClevrConfig,
    seed: Seed,
}

impl SortOfClevr {
    /// Checks that six objects fit and that the background is not an object's colour.
    pub fn new(cfg: SortOfClevrConfig, seed: Seed) -> Result<Self> {
        let bg = cfg.background;
        if let Some(c) = COLOUR_RGB.iter().position(|&rgb| rgb == [bg, bg, bg]) {
            return Err(DataError::config(
                "background",
                format!("grey level {bg} is the colour of the {} objects", COLOURS[c]),
            ));
        }
        let room = cfg.size as f32 - 2.0 * cfg.half as f32;
        if cfg.half == 0 || room < 3.0 * cfg.min_distance {
            return Err(DataError::config(
                "size",
                format!(
                    "{} px cannot hold 6 objects of half-size {} kept {} px apart",
                    cfg.size, cfg.half, cfg.min_distance
                ),
            ));
        }
        Ok(Self { cfg, seed })
    }

    /// The objects of scene `i`.
    pub fn objects(&self, rng: &mut gaze_tensor::seed::Rng) -> Result<Vec<ClevrObject>> {
        let (lo, hi) = (self.cfg.half, self.cfg.size - self.cfg.half);
        let mut objects: Vec<ClevrObject> = Vec::with_capacity(6);
        for colour in 0..6 {
            let mut tries = 0;
            loop {
                tries += 1;
                if tries > 10_000 {
                    return Err(DataError::config(
                        "min_distance",
                        "could not place 6 objects; lower it or enlarge the image",
                    ));
                }
                let (x, y) = (rng.random_range(lo..hi) as f32, rng.random_range(lo..hi) as f32);
                let far =
                    objects.iter().all(|o| ((o.x - x).powi(2) + (o.y - y).powi(2)).sqrt() >= self.cfg.min_distance);
                if far {
                    objects.push(ClevrObject { colour, square: rng.random_bool(0.5), x, y });
                    break;
                }
            }
        }
        Ok(objects)
    }

    /// Scene `i`: image, one box per object (label `"red square"` ...), and its questions.
    pub fn scene(&self, i: usize) -> Result<VqaScene> {
        let mut rng = self.seed.index(i as u64).rng();
        let objects = self.objects(&mut rng)?;
        let (s, h) = (self.cfg.size, self.cfg.half as f32);
        let mut image = Image::filled(s, s, 3, self.cfg.background);
        let mut boxes = Vec::with_capacity(6);
        for o in &objects {
            let b = BBox::centred(o.x, o.y, h, h);
            if o.square {
                image.fill_rect(b, COLOUR_RGB[o.colour]);
            } else {
                image.fill_ellipse(b, COLOUR_RGB[o.colour]);
            }
            boxes.push(LabeledBox { label: format!("{} {}", COLOURS[o.colour], o.shape()), bbox: b });
        }
        let mut questions = Vec::new();
        for (relational, count) in [(false, self.cfg.nonrel_per_image), (true, self.cfg.rel_per_image)] {
            for _ in 0..count {
                let colour = rng.random_range(0..6);
                let subtype = rng.random_range(0..3);
                let answer = answer(&objects, colour, relational, subtype, s)
                    .ok_or_else(|| DataError::config("scene", "a question about a missing colour"))?;
                let mut focus = vec![colour];
                if relational {
                    let me = objects[colour];
                    let pick = match subtype {
                        0 | 1 => nearest(&objects, &me, subtype == 1).map(|o| vec![o.colour]),
                        _ => Some(
                            objects
                                .iter()
                                .filter(|o| o.square == me.square && o.colour != colour)
                                .map(|o| o.colour)
                                .collect(),
                        ),
                    };
                    focus.extend(pick.unwrap_or_default());
                }
                let kinds = if relational { REL_KINDS } else { NONREL_KINDS };
                questions.push(VqaQuestion {
                    question: question_text(colour, relational, subtype),
                    answer,
                    kind: kinds[subtype].to_string(),
                    relational,
                    code: question_code(colour, relational, subtype),
                    focus,
                });
            }
        }
        Ok(VqaScene { image, boxes, questions })
    }
}

/// Reads the scene description back from a scene's boxes (label `"<colour> <shape>"`, centre).
pub fn objects_from_boxes(boxes: &[LabeledBox]) -> Option<Vec<ClevrObject>> {
    boxes
        .iter()
        .map(|b| {
            let mut words = b.label.split(' ');
            let first = words.next()?;
            let colour = COLOURS.iter().position(|&c| c == first)?;
            let square = match words.next()? {
                "square" => true,
                "circle" => false,
                _ => return None,
            };
            let (x, y) = b.bbox.centre();
            Some(ClevrObject { colour, square, x, y })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_apart_and_answers_recomputed() -> Result<()> {
        let g = SortOfClevr::new(SortOfClevrConfig::default(), Seed(5))?;
        let mut answers = std::collections::HashMap::new();
        for i in 0..40 {
            let s = g.scene(i)?;
            assert_eq!(s.questions.len(), 20);
            let objs = objects_from_boxes(&s.boxes).expect("labels parse");
            for (a, o) in objs.iter().enumerate() {
                assert!(s.boxes[a].bbox.inside(75, 75));
                for p in &objs[a + 1..] {
                    assert!(((o.x - p.x).powi(2) + (o.y - p.y).powi(2)).sqrt() >= 10.0);
                }
                // The pixel at the centre has the object's colour.
                let px: Vec<u8> = (0..3).map(|c| s.image.get(o.y as i64, o.x as i64, c)).collect();
                assert_eq!(px, COLOUR_RGB[o.colour].to_vec());
            }
            for q in &s.questions {
                let colour = q.code[..6].iter().position(|&v| v == 1.0).expect("colour");
                let rel = q.code[7] == 1.0;
                let sub = q.code[8..].iter().position(|&v| v == 1.0).expect("subtype");
                // Recompute from the text too: the colour word must be the coded one.
                assert!(q.question.contains(COLOURS[colour]));
                assert_eq!(Some(q.answer.clone()), answer(&objs, colour, rel, sub, 75), "{}", q.question);
                assert!(ANSWERS.contains(&q.answer.as_str()));
                *answers.entry(q.answer.clone()).or_insert(0) += 1;
            }
        }
        assert!(answers.len() >= 8, "answers cover the classes: {answers:?}");
        Ok(())
    }

    #[test]
    fn hand_checked_scene() {
        let objs = [
            ClevrObject { colour: 0, square: true, x: 10.0, y: 10.0 },
            ClevrObject { colour: 1, square: false, x: 20.0, y: 10.0 },
            ClevrObject { colour: 2, square: true, x: 70.0, y: 70.0 },
            ClevrObject { colour: 3, square: true, x: 40.0, y: 60.0 },
            ClevrObject { colour: 4, square: false, x: 60.0, y: 20.0 },
            ClevrObject { colour: 5, square: false, x: 10.0, y: 40.0 },
        ];
        assert_eq!(answer(&objs, 0, false, 0, 75).as_deref(), Some("square"));
        assert_eq!(answer(&objs, 2, false, 1, 75).as_deref(), Some("no"));
        assert_eq!(answer(&objs, 0, false, 2, 75).as_deref(), Some("yes"));
        assert_eq!(answer(&objs, 0, true, 0, 75).as_deref(), Some("circle"));
        assert_eq!(answer(&objs, 0, true, 1, 75).as_deref(), Some("square"));
        assert_eq!(answer(&objs, 0, true, 2, 75).as_deref(), Some("3"));
    }

    #[test]
    fn deterministic() -> Result<()> {
        let a = SortOfClevr::new(SortOfClevrConfig::default(), Seed(1))?;
        assert_eq!(a.scene(3)?, a.scene(3)?);
        assert_ne!(a.scene(3)?.image, a.scene(4)?.image);
        Ok(())
    }

    #[test]
    fn background_is_configurable_but_never_an_object_colour() -> Result<()> {
        let white = SortOfClevr::new(SortOfClevrConfig::default(), Seed(1))?.scene(3)?;
        let black = SortOfClevr::new(SortOfClevrConfig { background: 0, ..Default::default() }, Seed(1))?.scene(3)?;
        assert_eq!((white.image.get(0, 0, 0), black.image.get(0, 0, 0)), (255, 0));
        // the same objects and questions, only the background differs
        assert_eq!((white.boxes, white.questions), (black.boxes, black.questions));
        let e = SortOfClevr::new(SortOfClevrConfig { background: 128, ..Default::default() }, Seed(1)).err();
        let e = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("background") && e.contains("gray"), "{e}");
        Ok(())
    }
}

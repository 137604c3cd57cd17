//! Barn-scene VQA: the toy task of the public reimplementation of "Learning Visual Question
//! Answering by Bootstrapping Hard Attention" (Malinowski et al. 2018), made harder.
//!
//! A procedurally drawn farm: sky, grass, a red barn with a roof at a random place, a hay bale at
//! a random place, one animal in front of the barn, one on the roof, one beside the hay, and 0-2
//! more in the field. Animals are chickens, sheep, cows and pigs, drawn with different shapes,
//! each in one of two colours of its species. Six question templates: the original three (what
//! animal is near the front of the barn / on top of the roof / near the hay?) plus colour, count
//! and existence questions, balanced so that the question alone does not give the answer.
//! Everything is laid out on a 128-unit square and scaled to the configured size.

use rand::Rng;
use serde::{Deserialize, Serialize};

use gaze_tensor::Seed;

use crate::error::{DataError, Result};
use crate::image::{BBox, Image, LabeledBox, Rgb};
use crate::vqa::{VqaQuestion, VqaScene};

/// The four species.
pub const SPECIES: [&str; 4] = ["chicken", "sheep", "cow", "pig"];
/// Plural of each species, for count questions.
pub const PLURALS: [&str; 4] = ["chickens", "sheep", "cows", "pigs"];
/// The colours an animal can have.
pub const COLOURS: [&str; 4] = ["white", "brown", "black", "pink"];
/// The two colours (indices into [`COLOURS`]) of each species.
pub const SPECIES_COLOURS: [[usize; 2]; 4] = [[0, 1], [0, 2], [2, 1], [3, 2]];
/// The three places of the original questions, in box order after barn and hay.
pub const SLOTS: [&str; 3] = ["near the front of the barn", "on top of the roof", "near the hay"];
/// Question kinds.
pub const KINDS: [&str; 6] = ["front", "roof", "hay", "colour", "count", "exists"];

const RGB: [[Rgb; 2]; 4] = [
    [[245, 245, 240], [150, 90, 40]], // chicken white / brown
    [[235, 235, 225], [45, 45, 45]],  // sheep white / black
    [[30, 30, 30], [125, 70, 30]],    // cow black / brown
    [[240, 160, 175], [40, 35, 35]],  // pig pink / black
];

/// Settings of the barn-scene generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BarnConfig {
    /// Image side in pixels (layout is on 128 units, scaled).
    pub size: usize,
    /// Questions asked about each scene.
    pub questions_per_scene: usize,
    /// Most extra animals in the field (0..=2).
    pub max_field_animals: usize,
}

impl Default for BarnConfig {
    fn default() -> Self {
        Self { size: 128, questions_per_scene: 6, max_field_animals: 2 }
    }
}

/// One animal of a scene.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Animal {
    /// Index into [`SPECIES`].
    pub species: usize,
    /// Index into [`COLOURS`].
    pub colour: usize,
    /// Where it is (in 128-unit layout coordinates).
    pub bbox: BBox,
}

/// The barn-scene generator.
#[derive(Debug, Clone)]
pub struct BarnVqa {
    cfg: BarnConfig,
    seed: Seed,
}

fn draw_animal(img: &mut Image, a: &Animal, f: f32) {
    let (x, y) = (a.bbox.x, a.bbox.y);
    let c = RGB[a.species][usize::from(SPECIES_COLOURS[a.species][1] == a.colour)];
    let r = |dx: f32, dy: f32, w: f32, h: f32| BBox::new((x + dx) * f, (y + dy) * f, w * f, h * f);
    let dark: Rgb = [60, 50, 45];
    match a.species {
        0 => {
            // chicken: small round body, head, red comb, orange beak and legs
            img.fill_rect(r(6.0, 11.0, 1.0, 3.0), [230, 140, 20]);
            img.fill_rect(r(9.0, 11.0, 1.0, 3.0), [230, 140, 20]);
            img.fill_ellipse(r(3.0, 4.0, 10.0, 8.0), c);
            img.fill_ellipse(r(10.0, 1.0, 6.0, 6.0), c);
            img.fill_rect(r(11.5, 0.0, 3.0, 1.5), [220, 20, 20]);
            img.fill_triangle(
                [((x + 16.0) * f, (y + 3.0) * f), ((x + 18.0) * f, (y + 4.0) * f), ((x + 16.0) * f, (y + 5.0) * f)],
                [230, 140, 20],
            );
        }
        1 => {
            // sheep: fluffy body of overlapping circles, dark head and legs
            img.fill_rect(r(4.0, 10.0, 2.0, 4.0), dark);
            img.fill_rect(r(11.0, 10.0, 2.0, 4.0), dark);
            for (dx, dy) in [(1.0, 4.0), (5.0, 2.0), (9.0, 3.0), (3.0, 6.0), (8.0, 6.0)] {
                img.fill_ellipse(r(dx, dy, 7.0, 6.0), c);
            }
            img.fill_ellipse(r(13.0, 3.0, 5.0, 6.0), dark);
        }
        2 => {
            // cow: long boxy body with a white patch, square head, four legs, horns
            for dx in [2.0, 5.0, 10.0, 13.0] {
                img.fill_rect(r(dx, 9.0, 2.0, 5.0), c);
            }
            img.fill_rect(r(1.0, 3.0, 14.0, 7.0), c);
            img.fill_rect(r(5.0, 4.0, 4.0, 3.0), [250, 250, 250]);
            img.fill_rect(r(13.0, 1.0, 5.0, 5.0), c);
            img.fill_rect(r(13.0, 0.0, 1.0, 1.5), [230, 225, 200]);
            img.fill_rect(r(17.0, 0.0, 1.0, 1.5), [230, 225, 200]);
        }
        _ => {
            // pig: round body, round head, snout, ears, short legs
            img.fill_rect(r(4.0, 10.0, 2.0, 3.0), c);
            img.fill_rect(r(11.0, 10.0, 2.0, 3.0), c);
            img.fill_ellipse(r(1.0, 3.0, 13.0, 8.5), c);
            img.fill_ellipse(r(11.0, 2.0, 6.0, 6.0), c);
            img.fill_triangle(
                [((x + 12.0) * f, (y + 3.0) * f), ((x + 13.5) * f, y * f), ((x + 15.0) * f, (y + 3.0) * f)],
                c,
            );
            img.fill_ellipse(r(15.5, 4.0, 2.5, 3.0), [200, 90, 110]);
        }
    }
}

impl BarnVqa {
    /// Checks the settings.
    pub fn new(cfg: BarnConfig, seed: Seed) -> Result<Self> {
        if cfg.size < 32 {
            return Err(DataError::config(
                "size",
                format!("{} px is too small to draw a barn scene (>= 32)", cfg.size),
            ));
        }
        if cfg.questions_per_scene == 0 {
            return Err(DataError::config("questions_per_scene", "must be at least 1"));
        }
        if cfg.max_field_animals > 2 {
            return Err(DataError::config(
                "max_field_animals",
                format!("{} > 2: the field has room for two", cfg.max_field_animals),
            ));
        }
        Ok(Self { cfg, seed })
    }

    /// Scene `i`: image; boxes `[barn, hay, front animal, roof animal, hay animal, field ...]`
    /// (labels `"barn"`, `"hay"`, `"<colour> <species>"`); and its questions.
    pub fn scene(&self, i: usize) -> Result<VqaScene> {
        let mut rng = self.seed.index(i as u64).rng();
        let f = self.cfg.size as f32 / 128.0;
        let mut img = Image::filled(self.cfg.size, self.cfg.size, 3, 0);
        img.fill_rect(BBox::new(0.0, 0.0, 128.0 * f, 56.0 * f), [140, 200, 235]);
        img.fill_rect(BBox::new(0.0, 56.0 * f, 128.0 * f, 72.0 * f), [95, 170, 70]);

        // barn: body 40x30, roof 18 high, random place
        let bx = rng.random_range(4.0..36.0f32);
        let by = 44.0 + rng.random_range(0.0..6.0f32);
        let (bw, bh, rh) = (40.0, 30.0, 18.0);
        let apex = (bx + bw / 2.0, by - rh);
        img.fill_triangle(
            [((bx - 3.0) * f, by * f), ((bx + bw + 3.0) * f, by * f), (apex.0 * f, apex.1 * f)],
            [110, 25, 25],
        );
        img.fill_rect(BBox::new(bx * f, by * f, bw * f, bh * f), [185, 35, 30]);
        img.fill_rect(BBox::new((bx + bw / 2.0 - 7.0) * f, (by + 12.0) * f, 14.0 * f, 18.0 * f), [105, 60, 30]);
        img.stroke_rect(BBox::new((bx + bw / 2.0 - 7.0) * f, (by + 12.0) * f, 14.0 * f, 18.0 * f), [240, 240, 240], 1);
        let barn = BBox::new(bx - 3.0, by - rh, bw + 6.0, bh + rh);

        // hay bale
        let hay = BBox::new(rng.random_range(86.0..102.0f32), rng.random_range(84.0..100.0f32), 22.0, 16.0);
        img.fill_rect(hay.scaled(f), [225, 195, 80]);
        for k in 1..4 {
            img.fill_rect(
                BBox::new(hay.x * f, (hay.y + 4.0 * k as f32) * f, hay.w * f, (0.8 * f).max(1.0)),
                [190, 150, 50],
            );
        }

        let (aw, ah) = (18.0, 14.0);
        let animal = |bbox: BBox, rng: &mut gaze_tensor::seed::Rng| {
            let species = rng.random_range(0..4);
            let colour = SPECIES_COLOURS[species][rng.random_range(0..2)];
            Animal { species, colour, bbox }
        };
        let mut animals = vec![
            animal(BBox::new(bx + bw / 2.0 - aw / 2.0, by + bh + 2.0, aw, ah), &mut rng),
            animal(BBox::new(apex.0 - aw / 2.0, apex.1 - ah + 3.0, aw, ah), &mut rng),
            animal(BBox::new(hay.x - aw - 2.0, hay.y + hay.h - ah, aw, ah), &mut rng),
        ];
        let field = rng.random_range(0..=self.cfg.max_field_animals);
        let mut xs: Vec<f32> = vec![];
        while xs.len() < field {
            let x = rng.random_range(2.0..46.0f32);
            if xs.iter().all(|&o| (o - x).abs() >= aw + 2.0) {
                xs.push(x);
            }
        }
        for x in xs {
            let y = rng.random_range(104.0..112.0f32);
            animals.push(animal(BBox::new(x, y, aw, ah), &mut rng));
        }
        for a in &animals {
            draw_animal(&mut img, a, f);
        }

        let mut boxes = vec![
            LabeledBox { label: "barn".into(), bbox: barn.scaled(f) },
            LabeledBox { label: "hay".into(), bbox: hay.scaled(f) },
        ];
        boxes.extend(animals.iter().map(|a| LabeledBox {
            label: format!("{} {}", COLOURS[a.colour], SPECIES[a.species]),
            bbox: a.bbox.scaled(f),
        }));

        let questions = (0..self.cfg.questions_per_scene).map(|_| ask(&animals, &mut rng)).collect();
        Ok(VqaScene { image: img, boxes, questions })
    }
}

/// One random question about the scene's animals (`animals[0..3]` are the three slots).
fn ask(animals: &[Animal], rng: &mut gaze_tensor::seed::Rng) -> VqaQuestion {
    let kind = rng.random_range(0..KINDS.len());
    let q = |question: String, answer: &str, focus: Vec<usize>| VqaQuestion {
        question,
        answer: answer.to_string(),
        kind: KINDS[kind].to_string(),
        relational: kind < 4,
        code: vec![],
        focus: focus.into_iter().map(|a| a + 2).collect(),
    };
    let of_species = |s: usize| -> Vec<usize> { (0..animals.len()).filter(|&a| animals[a].species == s).collect() };
    match kind {
        0..=2 => q(format!("what animal is {}?", SLOTS[kind]), SPECIES[animals[kind].species], vec![kind]),
        3 => {
            let slot = rng.random_range(0..3);
            q(format!("what colour is the animal {}?", SLOTS[slot]), COLOURS[animals[slot].colour], vec![slot])
        }
        4 => {
            let s = rng.random_range(0..4);
            let found = of_species(s);
            q(format!("how many {} are there?", PLURALS[s]), &found.len().to_string(), found)
        }
        _ => {
            let present: Vec<usize> = (0..4).filter(|&s| !of_species(s).is_empty()).collect();
            let absent: Vec<usize> = (0..4).filter(|s| !present.contains(s)).collect();
            let pool = if absent.is_empty() || rng.random_bool(0.5) { &present } else { &absent };
            let s = pool[rng.random_range(0..pool.len())];
            let found = of_species(s);
            q(format!("is there a {}?", SPECIES[s]), if found.is_empty() { "no" } else { "yes" }, found)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Recomputes every answer from the boxes' labels alone.
    fn recompute(boxes: &[LabeledBox], q: &VqaQuestion) -> String {
        let animals: Vec<(&str, &str)> = boxes[2..]
            .iter()
            .map(|b| {
                let mut w = b.label.split(' ');
                (w.next().unwrap_or(""), w.next().unwrap_or(""))
            })
            .collect();
        if let Some(slot) = SLOTS.iter().position(|s| q.question.ends_with(&format!("{s}?"))) {
            return if q.question.starts_with("what colour") { animals[slot].0 } else { animals[slot].1 }.to_string();
        }
        if let Some(s) = PLURALS.iter().position(|p| q.question == format!("how many {p} are there?")) {
            return animals.iter().filter(|a| a.1 == SPECIES[s]).count().to_string();
        }
        let s = SPECIES.iter().position(|s| q.question == format!("is there a {s}?")).expect("known template");
        if animals.iter().any(|a| a.1 == SPECIES[s]) { "yes" } else { "no" }.to_string()
    }

    #[test]
    fn answers_recomputed_from_the_scene() -> Result<()> {
        let g = BarnVqa::new(BarnConfig::default(), Seed(2))?;
        for i in 0..60 {
            let s = g.scene(i)?;
            assert!(s.boxes.iter().all(|b| b.bbox.inside(128, 128)), "{:?}", s.boxes);
            for q in &s.questions {
                assert_eq!(recompute(&s.boxes, q), q.answer, "{}", q.question);
                assert!(q.focus.iter().all(|&f| f < s.boxes.len()));
            }
            // animals never overlap each other
            for a in 2..s.boxes.len() {
                for b in a + 1..s.boxes.len() {
                    assert_eq!(s.boxes[a].bbox.iou(&s.boxes[b].bbox), 0.0, "{:?}", s.boxes);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn the_question_alone_does_not_give_the_answer() -> Result<()> {
        let g = BarnVqa::new(BarnConfig::default(), Seed(11))?;
        let mut table: HashMap<String, HashMap<String, usize>> = HashMap::new();
        let mut total = 0;
        for i in 0..1500 {
            for q in g.scene(i)?.questions {
                *table.entry(q.question).or_default().entry(q.answer).or_default() += 1;
                total += 1;
            }
        }
        // The best any question-only model can do: the majority answer of each question text.
        let best: usize = table.values().map(|a| a.values().max().copied().unwrap_or(0)).sum();
        let acc = best as f64 / total as f64;
        assert!(acc < 0.5, "question-only accuracy {acc:.3}");
        Ok(())
    }

    #[test]
    fn deterministic_and_settings_checked() -> Result<()> {
        let g = BarnVqa::new(BarnConfig { size: 64, ..BarnConfig::default() }, Seed(1))?;
        assert_eq!(g.scene(7)?, g.scene(7)?);
        assert_eq!(g.scene(7)?.image.height, 64);
        assert!(BarnVqa::new(BarnConfig { size: 16, ..BarnConfig::default() }, Seed(1)).is_err());
        assert!(BarnVqa::new(BarnConfig { max_field_animals: 3, ..BarnConfig::default() }, Seed(1)).is_err());
        Ok(())
    }
}

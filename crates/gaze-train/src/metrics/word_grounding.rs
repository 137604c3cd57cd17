//! Grounding word by word, for sequence models that attend: for every token of the first
//! reference that names an object (a caption's colour and shape words, a digit of a pair), the
//! attention at the step that emits it, with the reference read (teacher-forced), against that
//! object's box. As "Show, Attend and Tell" (Xu et al. 2015) shows its maps, word by word.
//!
//! - `grounding_mass_pct`: the share of the step's attention mass inside the word's box (each
//!   cell's weight spread evenly over the cell), averaged over the words;
//!   `grounding_mass_uniform_pct` is what a uniform map scores (the box's share of the image).
//! - `pointing_pct`: the percent of words whose attention peak (the centre of the heaviest cell)
//!   lies inside the box ("Top-down Neural Attention by Excitation Backprop", Zhang et al. 2016);
//!   `pointing_uniform_pct` is the chance of a peak at a cell drawn uniformly (the share of cell
//!   centres inside the box).
//!
//! - `grounding_mass_prev_pct`, `pointing_prev_pct`: the same for the attention one step earlier.
//!   A decoder whose LSTM carries what it read may look at an object the step before it names it
//!   (at "a" before "red circle"); these say whether it does.
//!
//! They are facts of the split evaluated (named without its prefix).

use super::grounding::{cell_centre, frame_for, ground};
use super::{round4, FracBox, Measured, Metric, Rows};
use crate::error::Result;
use gaze_zoo::CellFrame;

/// Sums over the words seen.
#[derive(Debug, Clone, Default)]
pub struct WordGrounding {
    mass: f64,
    area: f64,
    hits: u64,
    chance_hits: f64,
    words: u64,
    prev_mass: f64,
    prev_hits: u64,
    prev_words: u64,
}

/// The share of the cells of a `gh` x `gw` grid (placed by `frame`, else tiling the image evenly)
/// whose centre lies inside `b`.
pub fn centres_inside(b: &FracBox, gh: usize, gw: usize, frame: Option<&CellFrame>) -> f64 {
    let mut n = 0usize;
    for i in 0..gh {
        for j in 0..gw {
            let (x, y) = cell_centre(i, j, (gh, gw), frame);
            n += usize::from(x >= b[0] && x < b[2] && y >= b[1] && y < b[3]);
        }
    }
    n as f64 / (gh * gw).max(1) as f64
}

impl Metric for WordGrounding {
    fn update(&mut self, b: &Rows) -> Result<()> {
        let Some(steps) = b.steps else { return Ok(()) };
        for (row, maps) in b.rows.iter().zip(steps) {
            for (s, (word, map)) in row.word_boxes.iter().zip(maps).enumerate() {
                let Some(bx) = word.and_then(|k| row.boxes.get(k)) else { continue };
                let frame = frame_for(b, map);
                if let Some((mass, area, hit)) = ground(map, frame.as_ref(), std::slice::from_ref(bx)) {
                    let (gh, gw) = (map.len(), map.first().map_or(0, Vec::len));
                    self.mass += mass;
                    self.area += area;
                    self.hits += u64::from(hit);
                    self.chance_hits += centres_inside(bx, gh, gw, frame.as_ref());
                    self.words += 1;
                }
                let before = s.checked_sub(1).and_then(|p| maps.get(p));
                if let Some((mass, _, hit)) =
                    before.and_then(|m| ground(m, frame_for(b, m).as_ref(), std::slice::from_ref(bx)))
                {
                    self.prev_mass += mass;
                    self.prev_hits += u64::from(hit);
                    self.prev_words += 1;
                }
            }
        }
        Ok(())
    }

    fn finish(&self, into: &mut Measured) {
        if self.words == 0 {
            return;
        }
        let n = self.words as f64;
        for (name, v) in [
            ("grounding_mass_pct", self.mass),
            ("grounding_mass_uniform_pct", self.area),
            ("pointing_pct", self.hits as f64),
            ("pointing_uniform_pct", self.chance_hits),
        ] {
            into.facts.insert(name.into(), round4(100.0 * v / n));
        }
        into.facts.insert("grounded_words".into(), n);
        if self.prev_words > 0 {
            let p = self.prev_words as f64;
            into.facts.insert("grounding_mass_prev_pct".into(), round4(100.0 * self.prev_mass / p));
            into.facts.insert("pointing_prev_pct".into(), round4(100.0 * self.prev_hits as f64 / p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Predicted, Row, Truth};

    #[test]
    fn each_named_word_is_graded_at_its_own_step() -> Result<()> {
        // Two objects: the top-left and the bottom-right quarter of a 2x2 grid. The reference is
        // "<left word> <filler> <right word>"; the map looks at the right object at step 0 (wrong),
        // anywhere at step 1 (not graded), at the right object at step 2 (right, 0.8 of the mass).
        let (tl, br) = ([0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]);
        let row = Row {
            truth: Truth::Tokens(vec![vec![4, 5, 6]]),
            kind: String::new(),
            relational: false,
            boxes: vec![tl, br],
            centres: vec![(0.25, 0.25), (0.75, 0.75)],
            word_boxes: vec![Some(0), None, Some(1)],
        };
        let steps = vec![vec![
            vec![vec![0.0, 0.0], vec![0.0, 1.0]],
            vec![vec![1.0, 0.0], vec![0.0, 0.0]],
            vec![vec![0.1, 0.0], vec![0.1, 0.8]],
        ]];
        let mut g = WordGrounding::default();
        let pred = [Predicted::Tokens(vec![])];
        let rows = [row];
        g.update(&Rows {
            rows: &rows,
            predicted: &pred,
            looked: None,
            steps: Some(&steps),
            stats: &[],
            image_hw: (8, 8),
            frame_of: None,
        })?;
        let mut out = Measured::default();
        g.finish(&mut out);
        assert_eq!(out.facts["grounded_words"], 2.0);
        assert_eq!(out.facts["grounding_mass_pct"], 40.0); // (0 + 0.8) / 2
        assert_eq!(out.facts["pointing_pct"], 50.0);
        assert_eq!(out.facts["grounding_mass_uniform_pct"], 25.0);
        assert_eq!(out.facts["pointing_uniform_pct"], 25.0);
        // One step earlier: step 0's word has none; step 2's word is looked at by step 1's map,
        // which looks at the other object.
        assert_eq!(out.facts["grounding_mass_prev_pct"], 0.0);
        assert_eq!(out.facts["pointing_prev_pct"], 0.0);
        // Without teacher-forced maps (a model that does not attend) nothing is reported.
        let mut none = WordGrounding::default();
        none.update(&Rows {
            rows: &rows,
            predicted: &pred,
            looked: None,
            steps: None,
            stats: &[],
            image_hw: (8, 8),
            frame_of: None,
        })?;
        let mut out = Measured::default();
        none.finish(&mut out);
        assert!(out.facts.is_empty());
        assert!((centres_inside(&[0.0, 0.0, 0.5, 1.0], 3, 4, None) - 0.5).abs() < 1e-9);
        Ok(())
    }
}

//! Did a glimpse reach the object? For glimpse models on images whose objects' positions are
//! known (generated canvases):
//! - [`GlimpseCoverage`] (one answer per image): the share of images where, for every object
//!   (the digit, or both digits of a pair whose sum is asked), the finest patch of a glimpse the
//!   policy chose covered the centre of its box, and the accuracy on those images and the others;
//! - [`ObjectGlimpses`] (one label per object, read in order): the share of objects whose own
//!   glimpses (the group before its label) covered its centre, and the share of sequences where
//!   every object's did;
//! - for both, `glimpse_pixels_pct`: the pixels the glimpses read per image (every scale's
//!   square) as a share of the image's, the compute a glimpse model spends against a model that
//!   reads the whole image.

use super::{class_right, round4, split_pcts, Looked, Measured, Metric, Rows, Tally};
use crate::error::Result;

/// Tallies of images reached and not reached.
#[derive(Debug, Clone, Default)]
pub struct GlimpseCoverage {
    reached: (Tally, Tally),
    read: Read,
}

/// Whether the finest patch (`patch` pixels square, cut as the retina cuts it) of one of the
/// glimpses at `centres` covers `point`, given as fractions (x, y) of the image's width and
/// height. Glimpse centres are in [-1, 1].
pub fn glimpse_covers(centres: &[(f32, f32)], patch: usize, (h, w): (usize, usize), point: (f32, f32)) -> bool {
    let (px, py) = (point.0 * w as f32, point.1 * h as f32);
    let locs: Vec<f32> = centres.iter().flat_map(|&(x, y)| [x, y]).collect();
    gaze_tensor::glimpse::corners(&locs, h, w, patch).iter().any(|&(x0, y0)| {
        let inside = |p: f32, lo: i64| p >= lo as f32 && p < (lo + patch as i64) as f32;
        inside(px, x0) && inside(py, y0)
    })
}

/// Pixels read by glimpses and pixels of the images seen.
#[derive(Debug, Clone, Default)]
struct Read {
    glimpsed: f64,
    whole: f64,
}

impl Read {
    fn add(&mut self, b: &Rows) {
        if let Some(Looked::Glimpses { centres, pixels, .. }) = b.looked {
            let (h, w) = b.image_hw;
            for path in centres.iter().take(b.rows.len()) {
                self.glimpsed += (path.len() * pixels) as f64;
                self.whole += (h * w) as f64;
            }
        }
    }

    fn finish(&self, into: &mut Measured) {
        if self.whole > 0.0 {
            into.facts.insert("glimpse_pixels_pct".into(), round4(100.0 * self.glimpsed / self.whole));
        }
    }
}

impl Metric for GlimpseCoverage {
    fn update(&mut self, b: &Rows) -> Result<()> {
        let Some(Looked::Glimpses { centres, patch, fixed, .. }) = b.looked else { return Ok(()) };
        self.read.add(b);
        for (r, (p, row)) in b.predicted.iter().zip(b.rows).enumerate() {
            if row.centres.is_empty() {
                continue;
            }
            let chosen = centres.get(r).map_or(&[][..], |c| c.get(*fixed..).unwrap_or_default());
            let ok = class_right(p, &row.truth);
            let all = row.centres.iter().all(|&o| glimpse_covers(chosen, *patch, b.image_hw, o));
            if all { &mut self.reached.0 } else { &mut self.reached.1 }.add(ok);
        }
        Ok(())
    }

    fn finish(&self, into: &mut Measured) {
        if let Some((share, on, off)) = split_pcts(&self.reached) {
            into.facts.insert("glimpsed_digit_pct".into(), share);
            if let Some(a) = on {
                into.scores.insert("acc_glimpsed_pct".into(), a);
            }
            if let Some(a) = off {
                into.scores.insert("acc_not_glimpsed_pct".into(), a);
            }
        }
        self.read.finish(into);
    }
}

/// Objects covered by their own group of glimpses, for models that name objects in order.
#[derive(Debug, Clone, Default)]
pub struct ObjectGlimpses {
    objects: Tally,
    sequences: Tally,
    read: Read,
}

impl Metric for ObjectGlimpses {
    fn update(&mut self, b: &Rows) -> Result<()> {
        let Some(Looked::Glimpses { centres, patch, per_object, fixed, .. }) = b.looked else { return Ok(()) };
        let (patch, per_object, fixed) = (*patch, *per_object, *fixed);
        self.read.add(b);
        if per_object == 0 {
            return Ok(());
        }
        for (r, row) in b.rows.iter().enumerate() {
            let path = centres.get(r).map_or(&[][..], Vec::as_slice);
            let mut all = !row.word_boxes.is_empty();
            for (k, object) in row.word_boxes.iter().enumerate() {
                let Some(&centre) = object.and_then(|o| row.centres.get(o)) else { continue };
                let from = (k * per_object).max(fixed).min(path.len());
                let to = ((k + 1) * per_object).min(path.len());
                let hit = glimpse_covers(&path[from..to.max(from)], patch, b.image_hw, centre);
                self.objects.add(hit);
                all &= hit;
            }
            if !row.word_boxes.is_empty() {
                self.sequences.add(all);
            }
        }
        Ok(())
    }

    fn finish(&self, into: &mut Measured) {
        if self.objects.total > 0 {
            into.facts.insert("object_glimpsed_pct".into(), round4(self.objects.pct()));
            into.facts.insert("all_objects_glimpsed_pct".into(), round4(self.sequences.pct()));
        }
        self.read.finish(into);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Predicted, Row, Truth};

    #[test]
    fn a_glimpse_covers_the_points_inside_its_finest_patch() {
        // 60x60 image, 12-pixel patch: l = (0, 0) is pixel 30, its patch spans [24, 36).
        let at = |x: f32, y: f32| (x / 60.0, y / 60.0);
        let path = [(-1.0, -1.0), (0.0, 0.0)];
        assert!(glimpse_covers(&path, 12, (60, 60), at(30.0, 30.0)));
        assert!(glimpse_covers(&path, 12, (60, 60), at(24.0, 35.9)));
        assert!(!glimpse_covers(&path, 12, (60, 60), at(36.0, 30.0)), "right edge is outside");
        assert!(!glimpse_covers(&path, 12, (60, 60), at(30.0, 23.9)));
        assert!(!glimpse_covers(&[], 12, (60, 60), at(30.0, 30.0)), "no glimpse covers nothing");
        assert!(!glimpse_covers(&[(0.5, 0.5)], 12, (60, 60), at(30.0, 30.0)), "(0.5, 0.5) is pixel 45");
        // Height and width are told apart: a 40-high, 80-wide image, l = (0.5, 0) is pixel (60, 20).
        assert!(glimpse_covers(&[(0.5, 0.0)], 4, (40, 80), (60.0 / 80.0, 20.0 / 40.0)));
        assert!(!glimpse_covers(&[(0.0, 0.5)], 4, (40, 80), (60.0 / 80.0, 20.0 / 40.0)));
    }

    fn row(truth: Truth, centres: Vec<(f32, f32)>, word_boxes: Vec<Option<usize>>) -> Row {
        Row { truth, kind: String::new(), relational: false, boxes: vec![], centres, word_boxes }
    }

    fn glimpses(centres: Vec<Vec<(f32, f32)>>, per_object: usize, fixed: usize) -> Looked {
        Looked::Glimpses { centres, patch: 10, per_object, fixed, pixels: 10 * 10 + 20 * 20 }
    }

    #[test]
    fn an_image_counts_as_glimpsed_when_every_object_was_and_the_fixed_start_is_not_chosen() -> Result<()> {
        // 100x100: l = (-0.5, 0) is pixel (25, 50), l = (0.5, 0) is (75, 50).
        let (left, right) = ((0.25, 0.5), (0.75, 0.5));
        let rows = [
            row(Truth::Class(Some(3)), vec![left, right], vec![]),
            row(Truth::Class(Some(3)), vec![left, right], vec![]),
            row(Truth::Class(Some(3)), vec![left], vec![]),
        ];
        let predicted = [Predicted::Class(3), Predicted::Class(1), Predicted::Class(3)];
        // Row 0 reaches both digits; row 1 only the left (its first glimpse, on the right, is
        // fixed); row 2 reaches its one digit only with the fixed glimpse.
        let looked = glimpses(
            vec![
                vec![(0.0, 0.0), (-0.5, 0.0), (0.5, 0.0)],
                vec![(0.5, 0.0), (-0.5, 0.0), (-0.5, 0.0)],
                vec![(-0.5, 0.0), (0.9, 0.9), (0.9, 0.9)],
            ],
            0,
            1,
        );
        let view = Rows {
            rows: &rows,
            predicted: &predicted,
            looked: Some(&looked),
            steps: None,
            stats: &[],
            image_hw: (100, 100),
            frame_of: None,
        };
        let mut m = GlimpseCoverage::default();
        m.update(&view)?;
        let mut out = Measured::default();
        m.finish(&mut out);
        assert_eq!(out.facts.get("glimpsed_digit_pct"), Some(&33.3333));
        assert_eq!(out.scores.get("acc_glimpsed_pct"), Some(&100.0));
        assert_eq!(out.scores.get("acc_not_glimpsed_pct"), Some(&50.0));
        // 3 glimpses of 500 pixels each against 10,000 per image.
        assert_eq!(out.facts.get("glimpse_pixels_pct"), Some(&15.0));
        Ok(())
    }

    #[test]
    fn each_object_is_judged_by_its_own_glimpses() -> Result<()> {
        let (left, right) = ((0.25, 0.5), (0.75, 0.5));
        let tokens = |t: Vec<u32>| Truth::Tokens(vec![t]);
        // Token k names box k; the third label (EOS) names nothing.
        let rows = [
            row(tokens(vec![4, 5]), vec![left, right], vec![Some(0), Some(1)]),
            row(tokens(vec![4, 5]), vec![left, right], vec![Some(0), Some(1)]),
        ];
        let predicted = [Predicted::Tokens(vec![4, 5]), Predicted::Tokens(vec![4, 5])];
        // Two glimpses per object: row 0 finds each digit in its own group; row 1 looks at the
        // right digit during the left one's group and the left during the right's.
        let looked = glimpses(
            vec![
                vec![(0.0, 0.0), (-0.5, 0.0), (0.5, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)],
                vec![(0.5, 0.0), (0.0, 0.0), (-0.5, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)],
            ],
            2,
            0,
        );
        let view = Rows {
            rows: &rows,
            predicted: &predicted,
            looked: Some(&looked),
            steps: None,
            stats: &[],
            image_hw: (100, 100),
            frame_of: None,
        };
        let mut m = ObjectGlimpses::default();
        m.update(&view)?;
        let mut out = Measured::default();
        m.finish(&mut out);
        assert_eq!(out.facts.get("object_glimpsed_pct"), Some(&50.0));
        assert_eq!(out.facts.get("all_objects_glimpsed_pct"), Some(&50.0));
        assert_eq!(out.facts.get("glimpse_pixels_pct"), Some(&30.0));
        Ok(())
    }
}

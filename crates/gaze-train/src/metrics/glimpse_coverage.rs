//! Did a glimpse reach the object? For glimpse models on images whose object position is known
//! (generated canvases): the share of images where the finest patch of a glimpse after the first
//! covered the centre of the object's box, and the accuracy on those images and on the others.

use super::{class_right, split_pcts, Looked, Measured, Metric, Rows, Tally};
use crate::error::Result;

/// Tallies of images reached and not reached.
#[derive(Debug, Clone, Default)]
pub struct GlimpseCoverage {
    reached: (Tally, Tally),
}

/// Whether the finest patch (`patch` pixels square, cut as the retina cuts it) of some glimpse
/// after the first covers `point`, given as fractions (x, y) of the image's width and height.
/// Glimpse centres are in [-1, 1]; the first glimpse is skipped because the policy did not
/// choose it.
pub fn glimpse_covers(centres: &[(f32, f32)], patch: usize, (h, w): (usize, usize), point: (f32, f32)) -> bool {
    let (px, py) = (point.0 * w as f32, point.1 * h as f32);
    let locs: Vec<f32> = centres.iter().skip(1).flat_map(|&(x, y)| [x, y]).collect();
    gaze_tensor::glimpse::corners(&locs, h, w, patch).iter().any(|&(x0, y0)| {
        let inside = |p: f32, lo: i64| p >= lo as f32 && p < (lo + patch as i64) as f32;
        inside(px, x0) && inside(py, y0)
    })
}

impl Metric for GlimpseCoverage {
    fn update(&mut self, b: &Rows) -> Result<()> {
        let Some(Looked::Glimpses { centres, patch }) = b.looked else { return Ok(()) };
        for (r, (p, row)) in b.predicted.iter().zip(b.rows).enumerate() {
            let Some(&object) = row.centres.first() else { continue };
            let path = centres.get(r).map_or(&[][..], Vec::as_slice);
            let ok = class_right(p, &row.truth);
            if glimpse_covers(path, *patch, b.image_hw, object) { &mut self.reached.0 } else { &mut self.reached.1 }
                .add(ok);
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_glimpse_covers_the_points_inside_its_finest_patch() {
        // 60x60 image, 12-pixel patch: l = (0, 0) is pixel 30, its patch spans [24, 36).
        let at = |x: f32, y: f32| (x / 60.0, y / 60.0);
        let path = [(-1.0, -1.0), (0.0, 0.0)];
        assert!(glimpse_covers(&path, 12, (60, 60), at(30.0, 30.0)));
        assert!(glimpse_covers(&path, 12, (60, 60), at(24.0, 35.9)));
        assert!(!glimpse_covers(&path, 12, (60, 60), at(36.0, 30.0)), "right edge is outside");
        assert!(!glimpse_covers(&path, 12, (60, 60), at(30.0, 23.9)));
        assert!(!glimpse_covers(&[(0.0, 0.0)], 12, (60, 60), at(30.0, 30.0)), "the first glimpse is not the policy's");
        assert!(!glimpse_covers(&[(0.0, 0.0), (0.5, 0.5)], 12, (60, 60), at(30.0, 30.0)), "(0.5, 0.5) is pixel 45");
        // Height and width are told apart: a 40-high, 80-wide image, l = (0.5, 0) is pixel (60, 20).
        assert!(glimpse_covers(&[(0.0, 0.0), (0.5, 0.0)], 4, (40, 80), (60.0 / 80.0, 20.0 / 40.0)));
        assert!(!glimpse_covers(&[(0.0, 0.0), (0.0, 0.5)], 4, (40, 80), (60.0 / 80.0, 20.0 / 40.0)));
    }
}

//! Grounding: does the attention fall on the objects the answer depends on? For every model that
//! reports an attention map over a grid and every data set that names its objects' boxes:
//!
//! - `attention_in_box_pct`: the share of the attention mass inside the boxes, each cell's
//!   weight spread evenly over the cell (so a cell half inside a box counts half), averaged over
//!   the rows; `box_area_pct` beside it is what a uniform map would score.
//! - `pointing_pct`: the "pointing game" of "Top-down Neural Attention by Excitation Backprop"
//!   (Zhang et al. 2016): the percent of rows whose attention peak (the centre of the heaviest
//!   cell) lies inside a box. Not for kept-cell masks, whose cells all weigh the same.
//!
//! A map over several steps (soft attention per step, a decoded sequence) is summed over them.

use super::{round4, FracBox, Looked, Measured, Metric, Rows};
use crate::error::Result;
use gaze_zoo::CellFrame;

/// Sums of the rows' shares.
#[derive(Debug, Clone, Default)]
pub struct Grounding {
    mass: f64,
    area: f64,
    rows: u64,
    hits: u64,
    pointed: u64,
}

/// The length of the overlap of [a0, a1) and [b0, b1).
fn overlap(a0: f32, a1: f32, b0: f32, b1: f32) -> f32 {
    (a1.min(b1) - a0.max(b0)).max(0.0)
}

/// The share of a cell's area (x0, y0, x1, y1 in fractions) inside the union of `boxes`,
/// counted on a 4x4 sub-grid of the cell for unions that overlap (exact for one box).
fn cell_share(cell: FracBox, boxes: &[FracBox]) -> f32 {
    let area = (cell[2] - cell[0]) * (cell[3] - cell[1]);
    if area <= 0.0 {
        return 0.0;
    }
    if boxes.len() == 1 {
        let b = boxes[0];
        return overlap(cell[0], cell[2], b[0], b[2]) * overlap(cell[1], cell[3], b[1], b[3]) / area;
    }
    let n = 4;
    let mut inside = 0;
    for i in 0..n {
        for j in 0..n {
            let x = cell[0] + (cell[2] - cell[0]) * (j as f32 + 0.5) / n as f32;
            let y = cell[1] + (cell[3] - cell[1]) * (i as f32 + 0.5) / n as f32;
            inside += usize::from(boxes.iter().any(|b| x >= b[0] && x < b[2] && y >= b[1] && y < b[3]));
        }
    }
    inside as f32 / (n * n) as f32
}

/// Cell (i, j)'s box of a (gh, gw) grid: where `frame` puts it, else the even tiling's.
pub fn cell_box(i: usize, j: usize, (gh, gw): (usize, usize), frame: Option<&CellFrame>) -> FracBox {
    match frame {
        None => [j as f32 / gw as f32, i as f32 / gh as f32, (j + 1) as f32 / gw as f32, (i + 1) as f32 / gh as f32],
        Some(f) => {
            let ((x0, x1), (y0, y1)) = (f.x.span(j), f.y.span(i));
            [x0, y0, x1, y1]
        }
    }
}

/// Cell (i, j)'s centre (x, y) of a (gh, gw) grid: where `frame` puts it, else the even tiling's.
pub fn cell_centre(i: usize, j: usize, (gh, gw): (usize, usize), frame: Option<&CellFrame>) -> (f32, f32) {
    match frame {
        None => ((j as f32 + 0.5) / gw as f32, (i as f32 + 0.5) / gh as f32),
        Some(f) => (f.x.centre(j), f.y.centre(i)),
    }
}

/// For one map (rows of cells over the whole image, placed by `frame`, else tiling it evenly):
/// the share of its mass inside the boxes, the share of the image the boxes cover, and whether
/// its peak lies inside a box. None for an empty map.
pub fn ground(map: &[Vec<f32>], frame: Option<&CellFrame>, boxes: &[FracBox]) -> Option<(f64, f64, bool)> {
    let (gh, gw) = (map.len(), map.first().map_or(0, Vec::len));
    let total: f32 = map.iter().flatten().sum();
    if gh == 0 || gw == 0 || total <= 0.0 || !total.is_finite() {
        return None;
    }
    let (mut mass, mut area, mut peak) = (0f64, 0f64, (f32::NEG_INFINITY, 0, 0));
    for (i, row) in map.iter().enumerate() {
        for (j, &w) in row.iter().enumerate() {
            let share = f64::from(cell_share(cell_box(i, j, (gh, gw), frame), boxes));
            mass += f64::from(w / total) * share;
            area += share / (gh * gw) as f64;
            if w > peak.0 {
                peak = (w, i, j);
            }
        }
    }
    let (x, y) = cell_centre(peak.1, peak.2, (gh, gw), frame);
    let hit = boxes.iter().any(|b| x >= b[0] && x < b[2] && y >= b[1] && y < b[3]);
    Some((mass, area, hit))
}

/// The frame of a map for the rows of `b`.
pub fn frame_for(b: &Rows, map: &[Vec<f32>]) -> Option<CellFrame> {
    let grid = (map.len(), map.first().map_or(0, Vec::len));
    b.frame_of.and_then(|f| f(grid))
}

impl Metric for Grounding {
    fn update(&mut self, b: &Rows) -> Result<()> {
        let Some(Looked::Grid { maps, hard }) = b.looked else { return Ok(()) };
        for (map, row) in maps.iter().zip(b.rows) {
            if row.boxes.is_empty() {
                continue;
            }
            if let Some((mass, area, hit)) = ground(map, frame_for(b, map).as_ref(), &row.boxes) {
                self.mass += mass;
                self.area += area;
                self.rows += 1;
                if !hard {
                    self.pointed += 1;
                    self.hits += u64::from(hit);
                }
            }
        }
        Ok(())
    }

    fn finish(&self, into: &mut Measured) {
        if self.rows == 0 {
            return;
        }
        let n = self.rows as f64;
        into.scores.insert("attention_in_box_pct".into(), round4(100.0 * self.mass / n));
        into.scores.insert("box_area_pct".into(), round4(100.0 * self.area / n));
        if self.pointed > 0 {
            into.scores.insert("pointing_pct".into(), round4(100.0 * self.hits as f64 / self.pointed as f64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Predicted, Row, Truth};

    #[test]
    fn mass_inside_boxes_and_the_pointing_game_on_hand_made_maps() -> Result<()> {
        // A 2x2 map, 0.7 on the top-left cell; the box is the top-left quarter exactly.
        let map = vec![vec![0.7, 0.1], vec![0.1, 0.1]];
        let quarter = [0.0, 0.0, 0.5, 0.5];
        let (mass, area, hit) = ground(&map, None, &[quarter]).ok_or(crate::TrainError::Other("empty".into()))?;
        assert!((mass - 0.7).abs() < 1e-6 && (area - 0.25).abs() < 1e-6 && hit);
        // A box over the left half of the top-left cell holds half its mass; the peak (the cell's
        // centre, x = 0.25) is outside [0, 0.25).
        let (mass, area, hit) =
            ground(&map, None, &[[0.0, 0.0, 0.25, 0.5]]).ok_or(crate::TrainError::Other("e".into()))?;
        assert!((mass - 0.35).abs() < 1e-6 && (area - 0.125).abs() < 1e-6 && !hit);
        // Unnormalised maps are normalised; two overlapping boxes count their union once.
        let (mass, ..) = ground(&[vec![2.0, 2.0], vec![0.0, 0.0]], None, &[[0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 0.5, 0.5]])
            .ok_or(crate::TrainError::Other("e".into()))?;
        assert!((mass - 1.0).abs() < 1e-6, "{mass}");
        assert!(ground(&[vec![0.0]], None, &[quarter]).is_none(), "no mass, no share");

        // Cells placed by a frame: a stride-2 grid's first cell is centred near the image's edge
        // (x = 0.1, spanning [0, 0.35)), not at the even tiling's 0.25: its peak falls in a box
        // over [0, 0.2) that the even grid's misses, and the box holds 0.2 / 0.35 of its mass.
        let frame = CellFrame { y: gaze_zoo::CellAxis::even(1), x: gaze_zoo::CellAxis { first: 0.1, step: 0.5 } };
        let edge = [0.0, 0.0, 0.2, 1.0];
        let one_row = [vec![1.0, 0.0]];
        let (mass, _, hit) = ground(&one_row, None, &[edge]).ok_or(crate::TrainError::Other("e".into()))?;
        assert!((mass - 0.4).abs() < 1e-6 && !hit, "{mass}");
        let (mass, _, hit) = ground(&one_row, Some(&frame), &[edge]).ok_or(crate::TrainError::Other("e".into()))?;
        assert!((mass - 0.2 / 0.35).abs() < 1e-6 && hit, "{mass}");

        // Through the metric: two rows, the second looking at the bottom-right.
        let row = Row {
            truth: Truth::Class(Some(0)),
            kind: String::new(),
            relational: false,
            boxes: vec![quarter],
            centres: vec![(0.25, 0.25)],
            word_boxes: vec![],
        };
        let rows = [row.clone(), row];
        let looked = Looked::Grid { maps: vec![map, vec![vec![0.0, 0.0], vec![0.0, 1.0]]], hard: false };
        let mut g = Grounding::default();
        let pred = [Predicted::Class(0), Predicted::Class(0)];
        g.update(&Rows {
            rows: &rows,
            predicted: &pred,
            looked: Some(&looked),
            steps: None,
            stats: &[],
            image_hw: (8, 8),
            frame_of: None,
        })?;
        let mut out = Measured::default();
        g.finish(&mut out);
        assert_eq!(out.scores["attention_in_box_pct"], 35.0);
        assert_eq!(out.scores["box_area_pct"], 25.0);
        assert_eq!(out.scores["pointing_pct"], 50.0);
        // Kept-cell masks have no peak: no pointing game.
        let hard = Looked::Grid { maps: vec![vec![vec![1.0, 0.0], vec![0.0, 1.0]]; 2], hard: true };
        let mut g = Grounding::default();
        g.update(&Rows {
            rows: &rows,
            predicted: &pred,
            looked: Some(&hard),
            steps: None,
            stats: &[],
            image_hw: (8, 8),
            frame_of: None,
        })?;
        let mut out = Measured::default();
        g.finish(&mut out);
        assert_eq!(out.scores["attention_in_box_pct"], 50.0);
        assert!(!out.scores.contains_key("pointing_pct"));
        Ok(())
    }
}

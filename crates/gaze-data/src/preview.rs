//! Pictures of data: a grid of samples, each with its boxes drawn and its labels written under it.

use crate::image::{BBox, Image, LabeledBox, Rgb};

/// One cell of a preview grid.
#[derive(Debug, Clone)]
pub struct Tile {
    /// The sample's image.
    pub image: Image,
    /// Boxes to draw over it (the first in red, then other colours).
    pub boxes: Vec<LabeledBox>,
    /// Lines of text under it (wrapped to the tile's width).
    pub lines: Vec<String>,
}

/// Box colours, by box index.
pub const BOX_COLOURS: [Rgb; 6] =
    [[255, 40, 40], [40, 200, 255], [255, 200, 0], [60, 220, 60], [230, 80, 230], [255, 140, 0]];

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![];
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Renders `tiles` in a grid of `cols` columns. Each image is scaled up by an integer factor so
/// that it is about `tile_px` wide; boxes are outlined; text is written below in an 8x8 font.
pub fn grid(tiles: &[Tile], cols: usize, tile_px: usize) -> Image {
    let cols = cols.max(1);
    let rows = tiles.len().div_ceil(cols).max(1);
    let max_w = tiles.iter().map(|t| t.image.width).max().unwrap_or(1).max(1);
    let max_h = tiles.iter().map(|t| t.image.height).max().unwrap_or(1).max(1);
    let f = (tile_px / max_w).max(1);
    let (tw, th) = (max_w * f, max_h * f);
    let chars = (tw / 8).max(8);
    let text_lines =
        tiles.iter().map(|t| t.lines.iter().map(|l| wrap(l, chars).len()).sum::<usize>()).max().unwrap_or(0);
    let pad = 6;
    let cell_w = tw + pad;
    let cell_h = th + text_lines * 10 + pad + 4;
    let mut out = Image::filled(rows * cell_h + pad, cols * cell_w + pad, 3, 255);
    for (k, t) in tiles.iter().enumerate() {
        let (x0, y0) = ((k % cols) * cell_w + pad, (k / cols) * cell_h + pad);
        let mut img = t.image.to_rgb().upscale(f);
        for (b, lb) in t.boxes.iter().enumerate() {
            let bb: BBox = lb.bbox.scaled(f as f32);
            img.stroke_rect(bb, BOX_COLOURS[b % BOX_COLOURS.len()], if f >= 3 { 2 } else { 1 });
        }
        out.blit(&img, y0 as i64, x0 as i64);
        // a thin frame, so white images stand apart from the white page
        out.stroke_rect(
            BBox::new(x0 as f32 - 1.0, y0 as f32 - 1.0, img.width as f32 + 2.0, img.height as f32 + 2.0),
            [150, 150, 150],
            1,
        );
        let mut y = y0 + th + 3;
        for line in &t.lines {
            for l in wrap(line, chars) {
                out.draw_text(&l, y as i64, x0 as i64, 1, [0, 0, 0]);
                y += 10;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_size_and_content() {
        let tile = Tile {
            image: Image::filled(10, 10, 1, 0),
            boxes: vec![LabeledBox { label: "x".into(), bbox: BBox::new(0.0, 0.0, 5.0, 5.0) }],
            lines: vec!["a long line of text that wraps".into()],
        };
        let g = grid(&[tile.clone(), tile.clone(), tile], 2, 40);
        assert_eq!(g.width, 2 * (40 + 6) + 6);
        // the first box's red outline is drawn at the tile's corner
        assert_eq!((0..3).map(|c| g.get(6, 6, c)).collect::<Vec<_>>(), vec![255, 40, 40]);
        // text pixels (black) exist under the first tile
        let black = (46..70)
            .flat_map(|y| (6..46).map(move |x| (y, x)))
            .filter(|&(y, x)| g.get(y, x, 0) == 0 && g.get(y, x, 1) == 0)
            .count();
        assert!(black > 10);
    }
}

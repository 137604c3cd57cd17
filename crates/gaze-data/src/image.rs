//! A plain 8-bit image (height x width x channels, row-major), boxes, and the few filled shapes
//! the generators draw. PNG encoding and decoding go through the `image` crate.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// An 8-bit image stored HWC (row-major, channels interleaved): 1 channel (grey) or 3 (RGB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// 1 or 3.
    pub channels: usize,
    /// `height * width * channels` bytes.
    pub data: Vec<u8>,
}

/// An RGB colour.
pub type Rgb = [u8; 3];

impl Image {
    /// A `height x width` image of `channels` filled with `value` in every channel.
    pub fn filled(height: usize, width: usize, channels: usize, value: u8) -> Self {
        Self { height, width, channels, data: vec![value; height * width * channels] }
    }

    /// A grey image from raw bytes; the length must be `height * width`.
    pub fn grey(height: usize, width: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != height * width {
            return Err(DataError::config("image", format!("{} bytes for a {height}x{width} grey image", data.len())));
        }
        Ok(Self { height, width, channels: 1, data })
    }

    /// The value of channel `c` at (`y`, `x`), or 0 outside the image.
    pub fn get(&self, y: i64, x: i64, c: usize) -> u8 {
        if y < 0 || x < 0 || y as usize >= self.height || x as usize >= self.width {
            return 0;
        }
        self.data[(y as usize * self.width + x as usize) * self.channels + c]
    }

    /// Sets pixel (`y`, `x`) to `rgb` (its mean for a grey image); outside the image nothing happens.
    pub fn put(&mut self, y: i64, x: i64, rgb: Rgb) {
        if y < 0 || x < 0 || y as usize >= self.height || x as usize >= self.width {
            return;
        }
        let o = (y as usize * self.width + x as usize) * self.channels;
        if self.channels == 1 {
            self.data[o] = ((u16::from(rgb[0]) + u16::from(rgb[1]) + u16::from(rgb[2])) / 3) as u8;
        } else {
            self.data[o..o + 3].copy_from_slice(&rgb);
        }
    }

    /// Pastes a grey `src` with its top-left corner at (`y`, `x`), keeping the brighter pixel
    /// (MNIST digits are white on black, so overlapping strokes stay visible).
    pub fn paste_max(&mut self, src: &Image, y: i64, x: i64) {
        self.paste_with(src, y, x, u8::max);
    }

    /// Adds a grey `src` with its top-left corner at (`y`, `x`), clipping at 255 (as DeepMind's
    /// cluttered-MNIST generator adds its patches and clips at 1).
    pub fn paste_add(&mut self, src: &Image, y: i64, x: i64) {
        self.paste_with(src, y, x, u8::saturating_add);
    }

    /// Combines `src`'s pixels into this image's at (`y`, `x`) with `f(old, new)`, clipped to the
    /// image.
    fn paste_with(&mut self, src: &Image, y: i64, x: i64, f: impl Fn(u8, u8) -> u8) {
        for sy in 0..src.height as i64 {
            for sx in 0..src.width as i64 {
                let (ty, tx) = (y + sy, x + sx);
                if ty < 0 || tx < 0 || ty as usize >= self.height || tx as usize >= self.width {
                    continue;
                }
                for c in 0..self.channels {
                    let v = src.get(sy, sx, c.min(src.channels - 1));
                    let o = (ty as usize * self.width + tx as usize) * self.channels + c;
                    self.data[o] = f(self.data[o], v);
                }
            }
        }
    }

    /// The image as RGB (grey replicated).
    pub fn to_rgb(&self) -> Image {
        if self.channels == 3 {
            return self.clone();
        }
        let data = self.data.iter().flat_map(|&v| [v, v, v]).collect();
        Image { height: self.height, width: self.width, channels: 3, data }
    }

    /// Scales by an integer factor (nearest neighbour).
    pub fn upscale(&self, factor: usize) -> Image {
        let f = factor.max(1);
        let (h, w) = (self.height * f, self.width * f);
        let mut data = Vec::with_capacity(h * w * self.channels);
        for y in 0..h {
            for x in 0..w {
                let o = ((y / f) * self.width + x / f) * self.channels;
                data.extend_from_slice(&self.data[o..o + self.channels]);
            }
        }
        Image { height: h, width: w, channels: self.channels, data }
    }

    /// Resizes to `height x width` (bilinear, through the `image` crate).
    pub fn resize(&self, height: usize, width: usize) -> Image {
        if (height, width) == (self.height, self.width) {
            return self.clone();
        }
        let rgb = self.to_rgb();
        let buf = image::RgbImage::from_raw(rgb.width as u32, rgb.height as u32, rgb.data);
        let Some(buf) = buf else { return Image::filled(height, width, self.channels, 0) };
        let out = image::imageops::resize(&buf, width as u32, height as u32, image::imageops::FilterType::Triangle);
        let img = Image { height, width, channels: 3, data: out.into_raw() };
        if self.channels == 1 {
            Image { height, width, channels: 1, data: img.data.chunks(3).map(|p| p[0]).collect() }
        } else {
            img
        }
    }

    /// Writes a PNG (atomically: temp file + rename).
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let color = if self.channels == 1 { image::ExtendedColorType::L8 } else { image::ExtendedColorType::Rgb8 };
        let mut bytes = Vec::new();
        image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new(&mut bytes),
            &self.data,
            self.width as u32,
            self.height as u32,
            color,
        )
        .map_err(|e| DataError::Image { path: path.into(), reason: e.to_string() })?;
        crate::write_atomic(path, &bytes)
    }

    /// Reads a PNG (or any format the `image` crate was built with) as RGB, or grey when `grey`.
    pub fn load(path: &Path, grey: bool) -> Result<Image> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let img = image::load_from_memory(&bytes)
            .map_err(|e| DataError::Image { path: path.into(), reason: e.to_string() })?;
        Ok(if grey {
            let g = img.to_luma8();
            Image { height: g.height() as usize, width: g.width() as usize, channels: 1, data: g.into_raw() }
        } else {
            let c = img.to_rgb8();
            Image { height: c.height() as usize, width: c.width() as usize, channels: 3, data: c.into_raw() }
        })
    }

    /// Fills the axis-aligned rectangle `b` (clipped to the image).
    pub fn fill_rect(&mut self, b: BBox, rgb: Rgb) {
        let (x0, y0) = (b.x.round() as i64, b.y.round() as i64);
        let (x1, y1) = ((b.x + b.w).round() as i64, (b.y + b.h).round() as i64);
        for y in y0..y1 {
            for x in x0..x1 {
                self.put(y, x, rgb);
            }
        }
    }

    /// Fills the ellipse inscribed in `b`: pixel centres inside it are painted.
    pub fn fill_ellipse(&mut self, b: BBox, rgb: Rgb) {
        let (cx, cy, rx, ry) = (b.x + b.w / 2.0, b.y + b.h / 2.0, b.w / 2.0, b.h / 2.0);
        if rx <= 0.0 || ry <= 0.0 {
            return;
        }
        for y in b.y.floor() as i64..=(b.y + b.h).ceil() as i64 {
            for x in b.x.floor() as i64..=(b.x + b.w).ceil() as i64 {
                let dx = (x as f32 + 0.5 - cx) / rx;
                let dy = (y as f32 + 0.5 - cy) / ry;
                if dx * dx + dy * dy <= 1.0 {
                    self.put(y, x, rgb);
                }
            }
        }
    }

    /// Fills the triangle with corners `p` (x, y): pixel centres inside it are painted.
    pub fn fill_triangle(&mut self, p: [(f32, f32); 3], rgb: Rgb) {
        let edge = |a: (f32, f32), b: (f32, f32), c: (f32, f32)| (b.0 - a.0) * (c.1 - a.1) - (b.1 - a.1) * (c.0 - a.0);
        let area = edge(p[0], p[1], p[2]);
        if area == 0.0 {
            return;
        }
        let xs = p.iter().map(|q| q.0);
        let ys = p.iter().map(|q| q.1);
        let (x0, x1) = (xs.clone().fold(f32::MAX, f32::min), xs.fold(f32::MIN, f32::max));
        let (y0, y1) = (ys.clone().fold(f32::MAX, f32::min), ys.fold(f32::MIN, f32::max));
        for y in y0.floor() as i64..=y1.ceil() as i64 {
            for x in x0.floor() as i64..=x1.ceil() as i64 {
                let c = (x as f32 + 0.5, y as f32 + 0.5);
                let w = [edge(p[1], p[2], c), edge(p[2], p[0], c), edge(p[0], p[1], c)];
                if w.iter().all(|&v| v * area >= 0.0) {
                    self.put(y, x, rgb);
                }
            }
        }
    }

    /// Draws the outline of `b`, `thick` pixels wide, inside the box.
    pub fn stroke_rect(&mut self, b: BBox, rgb: Rgb, thick: usize) {
        let t = thick as f32;
        self.fill_rect(BBox { h: t, ..b }, rgb);
        self.fill_rect(BBox { y: b.y + b.h - t, h: t, ..b }, rgb);
        self.fill_rect(BBox { w: t, ..b }, rgb);
        self.fill_rect(BBox { x: b.x + b.w - t, w: t, ..b }, rgb);
    }

    /// Writes `text` in the 8x8 bitmap font with its top-left at (`y`, `x`), scaled by `scale`.
    pub fn draw_text(&mut self, text: &str, y: i64, x: i64, scale: usize, rgb: Rgb) {
        use font8x8::UnicodeFonts;
        let s = scale.max(1) as i64;
        for (i, ch) in text.chars().enumerate() {
            let glyph = font8x8::BASIC_FONTS.get(ch).unwrap_or([0; 8]);
            for (gy, row) in glyph.iter().enumerate() {
                for gx in 0..8 {
                    if row >> gx & 1 == 1 {
                        for dy in 0..s {
                            for dx in 0..s {
                                let px = x + (i as i64 * 8 + gx) * s + dx;
                                self.put(y + gy as i64 * s + dy, px, rgb);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Copies `src` (same channel count) with its top-left at (`y`, `x`), clipped.
    pub fn blit(&mut self, src: &Image, y: i64, x: i64) {
        let src = if src.channels == self.channels { src.clone() } else { src.to_rgb() };
        for sy in 0..src.height as i64 {
            for sx in 0..src.width as i64 {
                let (ty, tx) = (y + sy, x + sx);
                if ty < 0 || tx < 0 || ty as usize >= self.height || tx as usize >= self.width {
                    continue;
                }
                let so = (sy as usize * src.width + sx as usize) * src.channels;
                let to = (ty as usize * self.width + tx as usize) * self.channels;
                self.data[to..to + self.channels].copy_from_slice(&src.data[so..so + self.channels]);
            }
        }
    }
}

/// An axis-aligned box in pixels: top-left corner (`x`, `y`), width `w`, height `h`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct BBox {
    /// Left edge.
    pub x: f32,
    /// Top edge.
    pub y: f32,
    /// Width.
    pub w: f32,
    /// Height.
    pub h: f32,
}

impl BBox {
    /// A box from its corner and size.
    pub fn new(x: f32, y: f32, w: f32, h: f32) -> Self {
        Self { x, y, w, h }
    }

    /// A box from its centre and half-size.
    pub fn centred(cx: f32, cy: f32, half_w: f32, half_h: f32) -> Self {
        Self { x: cx - half_w, y: cy - half_h, w: 2.0 * half_w, h: 2.0 * half_h }
    }

    /// The centre (x, y).
    pub fn centre(&self) -> (f32, f32) {
        (self.x + self.w / 2.0, self.y + self.h / 2.0)
    }

    /// Whether the box lies inside a `height x width` canvas.
    pub fn inside(&self, height: usize, width: usize) -> bool {
        self.x >= 0.0 && self.y >= 0.0 && self.x + self.w <= width as f32 && self.y + self.h <= height as f32
    }

    /// The box scaled by `f` (for drawing on an up-scaled image).
    pub fn scaled(&self, f: f32) -> Self {
        self.scaled_xy(f, f)
    }

    /// The box scaled by `fx` across and `fy` down (for an image resized to another shape).
    pub fn scaled_xy(&self, fx: f32, fy: f32) -> Self {
        Self { x: self.x * fx, y: self.y * fy, w: self.w * fx, h: self.h * fy }
    }

    /// Intersection over union with `other`.
    pub fn iou(&self, other: &BBox) -> f32 {
        let ix = ((self.x + self.w).min(other.x + other.w) - self.x.max(other.x)).max(0.0);
        let iy = ((self.y + self.h).min(other.y + other.h) - self.y.max(other.y)).max(0.0);
        let inter = ix * iy;
        let union = self.w * self.h + other.w * other.h - inter;
        if union <= 0.0 {
            0.0
        } else {
            inter / union
        }
    }
}

/// A box with a name (`"digit"`, `"cow"`, `"red circle"` ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabeledBox {
    /// What the box holds.
    pub label: String,
    /// Where it is.
    #[serde(flatten)]
    pub bbox: BBox,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_fill_what_they_should() {
        let mut img = Image::filled(10, 10, 3, 0);
        img.fill_rect(BBox::new(2.0, 3.0, 4.0, 2.0), [255, 0, 0]);
        let red = img.data.chunks(3).filter(|p| p[0] == 255).count();
        assert_eq!(red, 8);
        assert_eq!(img.get(3, 2, 0), 255);
        assert_eq!(img.get(5, 2, 0), 0);
        let mut c = Image::filled(20, 20, 1, 0);
        c.fill_ellipse(BBox::centred(10.0, 10.0, 5.0, 5.0), [255; 3]);
        let area = c.data.iter().filter(|&&v| v == 255).count() as f32;
        assert!((area - std::f32::consts::PI * 25.0).abs() < 8.0, "{area}");
        let mut t = Image::filled(20, 20, 1, 0);
        t.fill_triangle([(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)], [255; 3]);
        let area = t.data.iter().filter(|&&v| v == 255).count() as f32;
        assert!((area - 50.0).abs() < 8.0, "{area}");
    }

    #[test]
    fn png_roundtrip() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| DataError::io("tmp", e))?;
        let mut img = Image::filled(5, 7, 3, 10);
        img.put(1, 2, [1, 2, 3]);
        let p = dir.path().join("a.png");
        img.save_png(&p)?;
        assert_eq!(Image::load(&p, false)?, img);
        Ok(())
    }

    #[test]
    fn iou_of_identical_and_disjoint_boxes() {
        let a = BBox::new(0.0, 0.0, 2.0, 2.0);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&BBox::new(5.0, 5.0, 1.0, 1.0)), 0.0);
    }
}

//! MNIST digits on larger canvases: translated and cluttered MNIST ("Recurrent Models of Visual
//! Attention", Mnih et al. 2014) and MNIST pairs ("Multiple Object Recognition with Visual
//! Attention", Ba et al. 2015).

use rand::Rng;
use serde::{Deserialize, Serialize};

use gaze_tensor::Seed;

use crate::error::{DataError, Result};
use crate::image::{BBox, Image, LabeledBox};
use crate::mnist::LabeledImages;

/// Settings of a translated / cluttered MNIST canvas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CanvasConfig {
    /// Side of the square canvas in pixels (60 or 100 in the RAM paper).
    pub canvas: usize,
    /// Number of clutter crops (0: translated MNIST; 4 for 60x60, 8 for 100x100).
    pub distractors: usize,
    /// Side of each clutter crop (8 in the RAM paper).
    pub crop: usize,
}

impl Default for CanvasConfig {
    /// Translated MNIST, 60x60 (RAM paper, section 4.1).
    fn default() -> Self {
        Self { canvas: 60, distractors: 0, crop: 8 }
    }
}

impl CanvasConfig {
    /// Translated MNIST on a 60x60 canvas.
    pub fn translated_60() -> Self {
        Self::default()
    }
    /// Cluttered MNIST, 60x60 with 4 crops of 8x8.
    pub fn cluttered_60() -> Self {
        Self { canvas: 60, distractors: 4, crop: 8 }
    }
    /// Cluttered MNIST, 100x100 with 8 crops of 8x8.
    pub fn cluttered_100() -> Self {
        Self { canvas: 100, distractors: 8, crop: 8 }
    }
}

/// One digit on a canvas.
#[derive(Debug, Clone, PartialEq)]
pub struct DigitSample {
    /// The grey canvas.
    pub image: Image,
    /// The digit's class.
    pub label: u8,
    /// `boxes[0]` is the digit (its ink), then one `"clutter"` box per crop.
    pub boxes: Vec<LabeledBox>,
}

/// The box of the non-zero pixels of a `rows x cols` image placed at (`y`, `x`); the whole patch
/// when it is blank.
pub fn ink_box(pixels: &[u8], rows: usize, cols: usize, y: usize, x: usize) -> BBox {
    let (mut y0, mut y1, mut x0, mut x1) = (rows, 0, cols, 0);
    for r in 0..rows {
        for c in 0..cols {
            if pixels[r * cols + c] > 0 {
                y0 = y0.min(r);
                y1 = y1.max(r + 1);
                x0 = x0.min(c);
                x1 = x1.max(c + 1);
            }
        }
    }
    if y1 == 0 {
        return BBox::new(x as f32, y as f32, cols as f32, rows as f32);
    }
    BBox::new((x + x0) as f32, (y + y0) as f32, (x1 - x0) as f32, (y1 - y0) as f32)
}

fn digit_image(source: &LabeledImages, i: usize) -> Result<Image> {
    let px =
        source.image(i).ok_or_else(|| DataError::config("index", format!("digit {i} of a set of {}", source.len())))?;
    Image::grey(source.rows, source.cols, px.to_vec())
}

/// Translated or cluttered MNIST over a source set of digits: sample `i` is digit `i` of the
/// source at a uniformly random place, plus the configured clutter crops.
#[derive(Debug, Clone)]
pub struct MnistCanvas<'a> {
    cfg: CanvasConfig,
    source: &'a LabeledImages,
    seed: Seed,
}

impl<'a> MnistCanvas<'a> {
    /// Checks the settings against the source digits.
    pub fn new(cfg: CanvasConfig, source: &'a LabeledImages, seed: Seed) -> Result<Self> {
        if source.is_empty() {
            return Err(DataError::config("source", "no digits to place"));
        }
        if cfg.canvas < source.rows || cfg.canvas < source.cols {
            return Err(DataError::config(
                "canvas",
                format!("{} is smaller than the {}x{} digits", cfg.canvas, source.rows, source.cols),
            ));
        }
        if cfg.distractors > 0 && (cfg.crop == 0 || cfg.crop > source.rows.min(source.cols) || cfg.crop > cfg.canvas) {
            return Err(DataError::config(
                "crop",
                format!("{} must be between 1 and the digit size {}", cfg.crop, source.rows.min(source.cols)),
            ));
        }
        if cfg.distractors > 0 && source.len() < 2 {
            return Err(DataError::config("source", "clutter needs at least two digits"));
        }
        Ok(Self { cfg, source, seed })
    }

    /// Number of samples (one per source digit).
    pub fn len(&self) -> usize {
        self.source.len()
    }

    /// Whether the source is empty.
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    /// Sample `i`.
    pub fn sample(&self, i: usize) -> Result<DigitSample> {
        let mut rng = self.seed.index(i as u64).rng();
        let (rows, cols, n) = (self.source.rows, self.source.cols, self.cfg.canvas);
        let mut canvas = Image::filled(n, n, 1, 0);
        let mut boxes = vec![];
        let mut clutter = vec![];
        for _ in 0..self.cfg.distractors {
            let mut j = rng.random_range(0..self.source.len() - 1);
            if j >= i % self.source.len() {
                j += 1; // another digit than the target
            }
            let other = digit_image(self.source, j)?;
            let c = self.cfg.crop;
            let (cy, cx) = (rng.random_range(0..=rows - c), rng.random_range(0..=cols - c));
            let mut crop = Image::filled(c, c, 1, 0);
            for y in 0..c {
                for x in 0..c {
                    crop.data[y * c + x] = other.data[(cy + y) * cols + cx + x];
                }
            }
            let (py, px) = (rng.random_range(0..=n - c), rng.random_range(0..=n - c));
            canvas.paste_max(&crop, py as i64, px as i64);
            clutter.push(LabeledBox {
                label: "clutter".into(),
                bbox: BBox::new(px as f32, py as f32, c as f32, c as f32),
            });
        }
        let digit = digit_image(self.source, i)?;
        let (y, x) = (rng.random_range(0..=n - rows), rng.random_range(0..=n - cols));
        canvas.paste_max(&digit, y as i64, x as i64);
        boxes.push(LabeledBox { label: "digit".into(), bbox: ink_box(&digit.data, rows, cols, y, x) });
        boxes.extend(clutter);
        Ok(DigitSample { image: canvas, label: self.source.labels[i], boxes })
    }
}

/// Settings of MNIST pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairsConfig {
    /// Side of the square canvas (100 in the DRAM paper).
    pub canvas: usize,
}

impl Default for PairsConfig {
    /// Two digits on a 100x100 canvas (DRAM paper, section 4.2).
    fn default() -> Self {
        Self { canvas: 100 }
    }
}

/// Two digits on a canvas.
#[derive(Debug, Clone, PartialEq)]
pub struct PairSample {
    /// The grey canvas.
    pub image: Image,
    /// The two classes in reading order (left to right).
    pub digits: [u8; 2],
    /// `digits[0] + digits[1]` (0..=18).
    pub sum: u8,
    /// The ink box of each digit, in reading order.
    pub boxes: Vec<LabeledBox>,
}

/// MNIST pairs: sample `i` puts digit `i` of the source and a random other digit side by side
/// (their 28x28 patches never share a column, so reading order is left to right), each at a
/// random height.
#[derive(Debug, Clone)]
pub struct MnistPairs<'a> {
    cfg: PairsConfig,
    source: &'a LabeledImages,
    seed: Seed,
}

impl<'a> MnistPairs<'a> {
    /// Checks that two digits fit side by side.
    pub fn new(cfg: PairsConfig, source: &'a LabeledImages, seed: Seed) -> Result<Self> {
        if cfg.canvas < 2 * source.cols || cfg.canvas < source.rows {
            return Err(DataError::config(
                "canvas",
                format!("{} cannot hold two {}x{} digits side by side", cfg.canvas, source.rows, source.cols),
            ));
        }
        if source.len() < 2 {
            return Err(DataError::config("source", "pairs need at least two digits"));
        }
        Ok(Self { cfg, source, seed })
    }

    /// Number of samples (one per source digit).
    pub fn len(&self) -> usize {
        self.source.len()
    }

    /// Whether the source is empty.
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    /// Sample `i`.
    pub fn sample(&self, i: usize) -> Result<PairSample> {
        let mut rng = self.seed.index(i as u64).rng();
        let (rows, cols, n) = (self.source.rows, self.source.cols, self.cfg.canvas);
        let mut j = rng.random_range(0..self.source.len() - 1);
        if j >= i {
            j += 1;
        }
        // Left patch starts in [0, n - 2*cols], the right one after it ends.
        let x0 = rng.random_range(0..=n - 2 * cols);
        let x1 = rng.random_range(x0 + cols..=n - cols);
        let (y0, y1) = (rng.random_range(0..=n - rows), rng.random_range(0..=n - rows));
        let (left, right) = if rng.random_bool(0.5) { (i, j) } else { (j, i) };
        let mut canvas = Image::filled(n, n, 1, 0);
        let mut boxes = vec![];
        for (k, y, x) in [(left, y0, x0), (right, y1, x1)] {
            let d = digit_image(self.source, k)?;
            canvas.paste_max(&d, y as i64, x as i64);
            boxes.push(LabeledBox {
                label: format!("digit {}", self.source.labels[k]),
                bbox: ink_box(&d.data, rows, cols, y, x),
            });
        }
        let digits = [self.source.labels[left], self.source.labels[right]];
        Ok(PairSample { image: canvas, digits, sum: digits[0] + digits[1], boxes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mnist::Mnist;

    #[test]
    fn translated_digit_is_inside_and_equals_the_source() -> Result<()> {
        let m = Mnist::fixture()?;
        let g = MnistCanvas::new(CanvasConfig::translated_60(), &m.test, Seed(3))?;
        for i in 0..50 {
            let s = g.sample(i)?;
            assert_eq!(s.label, m.test.labels[i]);
            let b = s.boxes[0].bbox;
            assert!(b.inside(60, 60), "{b:?}");
            // Independent recomputation: the canvas's ink equals the source digit's ink.
            let ink: u32 = s.image.data.iter().map(|&v| u32::from(v)).sum();
            let src: u32 = m.test.image(i).unwrap_or_default().iter().map(|&v| u32::from(v)).sum();
            assert_eq!(ink, src);
            let tight = ink_box(&s.image.data, 60, 60, 0, 0);
            assert_eq!(tight, b);
        }
        Ok(())
    }

    #[test]
    fn cluttered_has_its_crops_and_is_deterministic() -> Result<()> {
        let m = Mnist::fixture()?;
        let g = MnistCanvas::new(CanvasConfig::cluttered_100(), &m.test, Seed(9))?;
        let a = g.sample(4)?;
        assert_eq!(a.boxes.len(), 9);
        assert!(a.boxes.iter().all(|b| b.bbox.inside(100, 100)));
        assert_eq!(a, g.sample(4)?);
        let other = MnistCanvas::new(CanvasConfig::cluttered_100(), &m.test, Seed(10))?;
        assert_ne!(a.image, other.sample(4)?.image);
        Ok(())
    }

    #[test]
    fn impossible_settings_are_errors() -> Result<()> {
        let m = Mnist::fixture()?;
        let small = CanvasConfig { canvas: 20, ..CanvasConfig::default() };
        assert!(MnistCanvas::new(small, &m.test, Seed(0)).is_err());
        let crop = CanvasConfig { crop: 40, ..CanvasConfig::cluttered_60() };
        assert!(MnistCanvas::new(crop, &m.test, Seed(0))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("crop"));
        assert!(MnistPairs::new(PairsConfig { canvas: 50 }, &m.test, Seed(0)).is_err());
        Ok(())
    }

    #[test]
    fn pairs_read_left_to_right_and_sum() -> Result<()> {
        let m = Mnist::fixture()?;
        let g = MnistPairs::new(PairsConfig::default(), &m.test, Seed(1))?;
        let mut swapped = 0;
        for i in 0..60 {
            let s = g.sample(i)?;
            assert_eq!(s.sum, s.digits[0] + s.digits[1]);
            let (a, b) = (s.boxes[0].bbox, s.boxes[1].bbox);
            assert!(a.inside(100, 100) && b.inside(100, 100));
            assert!(a.x + a.w <= b.x, "left digit ends before the right begins: {a:?} {b:?}");
            assert!(s.digits.contains(&m.test.labels[i]));
            if s.digits[1] == m.test.labels[i] && s.digits[0] != m.test.labels[i] {
                swapped += 1;
            }
        }
        assert!(swapped > 5, "digit i should land on either side");
        Ok(())
    }
}

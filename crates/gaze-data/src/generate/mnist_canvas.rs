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

    /// Sample `i`, composed as DeepMind's `mnist_cluttered.lua` does: each clutter crop (an 8x8
    /// crop of a random digit of the source, which may be digit `i` itself) is *added* to the
    /// black canvas and clipped at 255, then the digit is added on top and clipped. The digit's
    /// place is drawn first, so the same sample without clutter has the digit at the same place.
    pub fn sample(&self, i: usize) -> Result<DigitSample> {
        let mut rng = self.seed.index(i as u64).rng();
        let (rows, cols, n) = (self.source.rows, self.source.cols, self.cfg.canvas);
        let (y, x) = (rng.random_range(0..=n - rows), rng.random_range(0..=n - cols));
        let mut canvas = Image::filled(n, n, 1, 0);
        let mut boxes = vec![];
        let mut clutter = vec![];
        for _ in 0..self.cfg.distractors {
            let other = digit_image(self.source, rng.random_range(0..self.source.len()))?;
            let c = self.cfg.crop;
            let (cy, cx) = (rng.random_range(0..=rows - c), rng.random_range(0..=cols - c));
            let mut crop = Image::filled(c, c, 1, 0);
            for y in 0..c {
                for x in 0..c {
                    crop.data[y * c + x] = other.data[(cy + y) * cols + cx + x];
                }
            }
            let (py, px) = (rng.random_range(0..=n - c), rng.random_range(0..=n - c));
            canvas.paste_add(&crop, py as i64, px as i64);
            clutter.push(LabeledBox {
                label: "clutter".into(),
                bbox: BBox::new(px as f32, py as f32, c as f32, c as f32),
            });
        }
        let digit = digit_image(self.source, i)?;
        canvas.paste_add(&digit, y as i64, x as i64);
        boxes.push(LabeledBox { label: "digit".into(), bbox: ink_box(&digit.data, rows, cols, y, x) });
        boxes.extend(clutter);
        Ok(DigitSample { image: canvas, label: self.source.labels[i], boxes })
    }
}

/// Settings of MNIST pairs (and, with another `digits`, of more digits side by side).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairsConfig {
    /// Side of the square canvas (100 in the DRAM paper).
    pub canvas: usize,
    /// Digits per canvas, side by side in reading order (2: a pair).
    pub digits: usize,
    /// Clutter crops added before the digits (0: none).
    pub distractors: usize,
    /// Side of each clutter crop.
    pub crop: usize,
}

impl Default for PairsConfig {
    /// Two digits on a 100x100 canvas, no clutter (DRAM paper, section 4.2).
    fn default() -> Self {
        Self { canvas: 100, digits: 2, distractors: 0, crop: 8 }
    }
}

/// Classes of an unordered pair of digits: every {a, b} with a <= b.
pub const PAIR_CLASSES: usize = 55;

/// The class of the unordered pair {a, b} of digits 0..=9, in 0..55: pairs ordered by their
/// smaller digit, then the larger (as DeepMind's generator's `combine` target counts them).
pub fn pair_class(a: u8, b: u8) -> u8 {
    let (lo, hi) = (a.min(b), a.max(b));
    lo * (21 - lo) / 2 + (hi - lo)
}

/// Digits on a canvas.
#[derive(Debug, Clone, PartialEq)]
pub struct PairSample {
    /// The grey canvas.
    pub image: Image,
    /// The classes in reading order (left to right).
    pub digits: Vec<u8>,
    /// The sum of the digits (0..=18 for a pair).
    pub sum: u8,
    /// The ink box of each digit, in reading order, then one `"clutter"` box per crop.
    pub boxes: Vec<LabeledBox>,
}

impl PairSample {
    /// The unordered pair's class in 0..55 ([`pair_class`]); None unless there are two digits.
    pub fn pair(&self) -> Option<u8> {
        match self.digits[..] {
            [a, b] => Some(pair_class(a, b)),
            _ => None,
        }
    }
}

/// MNIST pairs: sample `i` puts digit `i` of the source and random other digits of the same
/// source side by side (their 28x28 patches never share a column, so reading order is left to
/// right), each at a random height, digit `i` in a random slot. Clutter crops (8x8 pieces of random
/// digits of the source) are added first, then the digits, each clipped at 255.
#[derive(Debug, Clone)]
pub struct MnistPairs<'a> {
    cfg: PairsConfig,
    source: &'a LabeledImages,
    seed: Seed,
}

impl<'a> MnistPairs<'a> {
    /// Checks that the digits fit side by side.
    pub fn new(cfg: PairsConfig, source: &'a LabeledImages, seed: Seed) -> Result<Self> {
        if cfg.digits == 0 {
            return Err(DataError::config("digits", "a canvas needs at least one digit"));
        }
        if cfg.canvas < cfg.digits * source.cols || cfg.canvas < source.rows {
            return Err(DataError::config(
                "canvas",
                format!(
                    "{} cannot hold {} {}x{} digits side by side",
                    cfg.canvas, cfg.digits, source.rows, source.cols
                ),
            ));
        }
        if cfg.distractors > 0 && (cfg.crop == 0 || cfg.crop > source.rows.min(source.cols)) {
            return Err(DataError::config(
                "crop",
                format!("{} must be between 1 and the digit size {}", cfg.crop, source.rows.min(source.cols)),
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
        let (rows, cols, n, k) = (self.source.rows, self.source.cols, self.cfg.canvas, self.cfg.digits);
        let mut others: Vec<usize> = (1..k)
            .map(|_| {
                let j = rng.random_range(0..self.source.len() - 1);
                if j >= i {
                    j + 1
                } else {
                    j
                }
            })
            .collect();
        // Patch d starts after patch d - 1 ends and leaves room for the k - 1 - d after it.
        let mut xs = Vec::with_capacity(k);
        for d in 0..k {
            let lo = xs.last().map_or(0, |&x: &usize| x + cols);
            xs.push(rng.random_range(lo..=n - (k - d) * cols));
        }
        let ys: Vec<usize> = (0..k).map(|_| rng.random_range(0..=n - rows)).collect();
        let slot = match k {
            1 => 0,
            2 => usize::from(!rng.random_bool(0.5)),
            _ => rng.random_range(0..k),
        };
        others.insert(slot, i);
        let mut canvas = Image::filled(n, n, 1, 0);
        let mut clutter = vec![];
        for _ in 0..self.cfg.distractors {
            let other = digit_image(self.source, rng.random_range(0..self.source.len()))?;
            let c = self.cfg.crop;
            let (cy, cx) = (rng.random_range(0..=rows - c), rng.random_range(0..=cols - c));
            let mut crop = Image::filled(c, c, 1, 0);
            for y in 0..c {
                crop.data[y * c..(y + 1) * c]
                    .copy_from_slice(&other.data[(cy + y) * cols + cx..(cy + y) * cols + cx + c]);
            }
            let (py, px) = (rng.random_range(0..=n - c), rng.random_range(0..=n - c));
            canvas.paste_add(&crop, py as i64, px as i64);
            clutter.push(LabeledBox {
                label: "clutter".into(),
                bbox: BBox::new(px as f32, py as f32, c as f32, c as f32),
            });
        }
        let mut boxes = vec![];
        for (&d, (&y, &x)) in others.iter().zip(ys.iter().zip(&xs)) {
            let img = digit_image(self.source, d)?;
            canvas.paste_add(&img, y as i64, x as i64);
            boxes.push(LabeledBox {
                label: format!("digit {}", self.source.labels[d]),
                bbox: ink_box(&img.data, rows, cols, y, x),
            });
        }
        boxes.extend(clutter);
        let digits: Vec<u8> = others.iter().map(|&d| self.source.labels[d]).collect();
        let sum = digits.iter().sum();
        Ok(PairSample { image: canvas, digits, sum, boxes })
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
        // Clutter is added under the digit: without it the digit sits at the same place, and
        // every pixel of the cluttered canvas is at least the bare one's, brighter where strokes
        // overlap (added and clipped, not the brighter of the two).
        let bare =
            MnistCanvas::new(CanvasConfig { distractors: 0, ..CanvasConfig::cluttered_100() }, &m.test, Seed(9))?;
        let mut summed = 0;
        for i in 0..40 {
            let (c, b) = (g.sample(i)?, bare.sample(i)?);
            assert_eq!(c.boxes[0], b.boxes[0]);
            assert!(c.image.data.iter().zip(&b.image.data).all(|(c, b)| c >= b));
            summed += c.image.data.iter().zip(&b.image.data).filter(|(c, b)| **c > **b && **b > 0).count();
        }
        assert!(summed > 0, "somewhere clutter overlaps a stroke and adds to it");
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
        assert!(MnistPairs::new(PairsConfig { canvas: 50, ..PairsConfig::default() }, &m.test, Seed(0)).is_err());
        let three = PairsConfig { canvas: 80, digits: 3, ..PairsConfig::default() };
        let e = MnistPairs::new(three, &m.test, Seed(0)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("cannot hold 3 28x28 digits"), "{e}");
        let none = PairsConfig { digits: 0, ..PairsConfig::default() };
        assert!(MnistPairs::new(none, &m.test, Seed(0)).is_err());
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
            assert_eq!(s.boxes.len(), 2, "no clutter by default");
            if s.digits[1] == m.test.labels[i] && s.digits[0] != m.test.labels[i] {
                swapped += 1;
            }
        }
        assert!(swapped > 5, "digit i should land on either side");
        Ok(())
    }

    #[test]
    fn pair_classes_count_unordered_pairs() {
        let mut seen = std::collections::BTreeSet::new();
        for a in 0..10u8 {
            for b in 0..10u8 {
                assert_eq!(pair_class(a, b), pair_class(b, a));
                seen.insert(pair_class(a, b));
            }
        }
        assert_eq!(seen.len(), PAIR_CLASSES);
        assert_eq!(seen.iter().max().copied(), Some(PAIR_CLASSES as u8 - 1));
        assert_eq!((pair_class(0, 0), pair_class(0, 9), pair_class(1, 1), pair_class(9, 9)), (0, 9, 10, 54));
    }

    #[test]
    fn digits_and_clutter_are_added_and_clipped() -> Result<()> {
        let m = Mnist::fixture()?;
        let cfg = PairsConfig { canvas: 100, digits: 3, distractors: 8, crop: 8 };
        let g = MnistPairs::new(cfg, &m.test, Seed(4))?;
        let mut slots = [0usize; 3];
        for i in 0..40 {
            let s = g.sample(i)?;
            assert_eq!(s.digits.len(), 3);
            assert_eq!(s.boxes.len(), 3 + 8);
            assert_eq!(u32::from(s.sum), s.digits.iter().map(|&d| u32::from(d)).sum::<u32>());
            assert_eq!(s.pair(), None);
            for w in s.boxes[..3].windows(2) {
                assert!(w[0].bbox.x + w[0].bbox.w <= w[1].bbox.x, "reading order: {:?}", w);
            }
            assert!(s.boxes[3..].iter().all(|b| b.label == "clutter" && b.bbox.inside(100, 100)));
            if let Some(k) = s.digits.iter().position(|&d| d == m.test.labels[i]) {
                slots[k] += 1;
            }
            // The clutter is drawn after the digits' places: the same sample without it holds the
            // same digits at the same places, and adding clutter never darkens a pixel.
            let bare = MnistPairs::new(PairsConfig { distractors: 0, ..g.cfg.clone() }, &m.test, Seed(4))?.sample(i)?;
            assert_eq!((&bare.digits, &bare.boxes[..]), (&s.digits, &s.boxes[..3]));
            assert!(s.image.data.iter().zip(&bare.image.data).all(|(c, b)| c >= b));
            assert!(
                s.image.data.iter().map(|&v| u32::from(v)).sum::<u32>()
                    > bare.image.data.iter().map(|&v| u32::from(v)).sum::<u32>()
            );
        }
        assert!(slots.iter().all(|&c| c > 3), "digit i lands in every slot: {slots:?}");
        // Adding is not keeping the brighter pixel: where two strokes overlap the sum shows.
        let mut a = Image::filled(2, 2, 1, 100);
        a.paste_add(&Image::filled(1, 1, 1, 200), 0, 0);
        a.paste_add(&Image::filled(1, 1, 1, 50), 1, 1);
        assert_eq!(a.data, [255, 100, 100, 150]);
        Ok(())
    }
}

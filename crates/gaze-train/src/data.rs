//! Turns a [`DataConfig`] into train / validation / test image sets.

use gaze_data::generate::MnistCanvas;
use gaze_data::{LabeledImages, Mnist};
use gaze_tensor::Seed;

use crate::config::{DataConfig, MnistData};
use crate::error::Result;

/// Image classification data, split.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Training images.
    pub train: LabeledImages,
    /// Validation images.
    pub val: LabeledImages,
    /// Test images.
    pub test: LabeledImages,
    /// (channels, height, width).
    pub input: (usize, usize, usize),
    /// Number of classes.
    pub classes: usize,
    /// Where the data came from, for reports.
    pub description: String,
}

fn digits(m: &MnistData) -> Result<(LabeledImages, LabeledImages, LabeledImages, String)> {
    let mnist = Mnist::load(&m.source)?;
    let val = ((mnist.train.len() as f64) * m.val_fraction).round() as usize;
    let (mut train, val) = mnist.train_val(val.max(1))?;
    if m.train_limit > 0 {
        train = train.take(m.train_limit);
    }
    let test = if m.test_limit > 0 { mnist.test.take(m.test_limit) } else { mnist.test };
    let desc = format!("{:?}: {} train / {} val / {} test digits", m.source, train.len(), val.len(), test.len());
    Ok((train, val, test, desc))
}

/// Loads or generates the data of `cfg`; generated sets use `seed.stream("data/<split>")`.
pub fn prepare(cfg: &DataConfig, seed: Seed) -> Result<Prepared> {
    match cfg {
        DataConfig::Mnist(m) => {
            let (train, val, test, description) = digits(m)?;
            let input = (1, train.rows, train.cols);
            Ok(Prepared { train, val, test, input, classes: 10, description })
        }
        DataConfig::MnistCanvas(c) => {
            let (train, val, test, desc) = digits(&c.digits)?;
            let gen = |set: &LabeledImages, split: &str| -> Result<LabeledImages> {
                let g = MnistCanvas::new(c.canvas.clone(), set, seed.stream(&format!("data/{split}")))?;
                let mut out =
                    LabeledImages { rows: c.canvas.canvas, cols: c.canvas.canvas, pixels: vec![], labels: vec![] };
                for i in 0..g.len() {
                    let s = g.sample(i)?;
                    out.pixels.extend_from_slice(&s.image.data);
                    out.labels.push(s.label);
                }
                Ok(out)
            };
            let (train, val, test) = (gen(&train, "train")?, gen(&val, "val")?, gen(&test, "test")?);
            let description = format!(
                "{}x{} canvas, {} clutter crops, from {desc}",
                c.canvas.canvas, c.canvas.canvas, c.canvas.distractors
            );
            Ok(Prepared { input: (1, c.canvas.canvas, c.canvas.canvas), train, val, test, classes: 10, description })
        }
    }
}

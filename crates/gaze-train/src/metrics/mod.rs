//! What a run measures, one metric per file. Evaluation runs the model over a split, hands each
//! batch to every metric its task asks for ([`for_task`]) and collects what they measured; it
//! names no model. A metric sees the rows of a batch ([`Rows`]: what was predicted, what was
//! true, what the model attended) and says what applies to it: a metric whose inputs a model or
//! data set lacks (glimpses, boxes, question kinds) measures nothing and reports nothing.
//!
//! - [`accuracy`]: percent right (images, answers), and error.
//! - [`question_kinds`]: VQA accuracy per question kind, relational and not, and for hard
//!   attention the cells kept and whether the question's objects were among them.
//! - [`hard_attention`]: cells kept and the head's MFLOPs per question (the cost of HAN's choice).
//! - [`glimpse_coverage`]: whether a glimpse covered the object (RAM on generated canvases).
//! - [`grounding`]: the share of attention mass inside the objects' boxes, and the pointing game.
//! - [`word_grounding`]: the same for each word of a sequence that names an object, at its step.
//! - [`sequence`]: sequence error (the whole sequence right) and token error.
//! - [`bleu`]: corpus BLEU-1..4.

pub mod accuracy;
pub mod bleu;
pub mod glimpse_coverage;
pub mod grounding;
pub mod hard_attention;
pub mod question_kinds;
pub mod sequence;
pub mod word_grounding;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// What a run's data asks of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// One class per image.
    Classify,
    /// One answer per question about an image.
    Answer,
    /// A token sequence per image (digits in reading order); `bleu` for text (captions).
    Sequence {
        /// Score the sequences with BLEU (natural-language references).
        bleu: bool,
    },
}

impl Task {
    /// The metric a run's best checkpoint follows unless the experiment names another
    /// (`train.select`), as measured on the validation split.
    pub fn main_metric(&self) -> &'static str {
        match self {
            Task::Classify | Task::Answer => "val_acc_pct",
            Task::Sequence { bleu: false } => "val_sequence_error_pct",
            Task::Sequence { bleu: true } => "val_bleu4",
        }
    }
}

/// Whether a larger value of metric `name` is better (errors and losses: smaller is better).
pub fn higher_is_better(name: &str) -> bool {
    !(name.contains("error") || name.contains("loss"))
}

/// The metrics of `task`.
pub fn for_task(task: Task) -> Vec<Box<dyn Metric>> {
    match task {
        Task::Classify => vec![
            Box::new(accuracy::Accuracy::default()),
            Box::new(glimpse_coverage::GlimpseCoverage::default()),
            Box::new(grounding::Grounding::default()),
        ],
        Task::Answer => vec![
            Box::new(accuracy::Accuracy::default()),
            Box::new(question_kinds::QuestionKinds::default()),
            Box::new(hard_attention::HardAttentionCost::default()),
            Box::new(grounding::Grounding::default()),
        ],
        Task::Sequence { bleu } => {
            let mut m: Vec<Box<dyn Metric>> = vec![
                Box::new(sequence::SequenceError::default()),
                Box::new(word_grounding::WordGrounding::default()),
                Box::new(glimpse_coverage::ObjectGlimpses::default()),
            ];
            if bleu {
                m.push(Box::new(bleu::Bleu::default()));
            }
            m
        }
    }
}

/// What a model predicted for a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Predicted {
    /// A class (or answer).
    Class(u32),
    /// A decoded token sequence (without `BOS` / `EOS`).
    Tokens(Vec<u32>),
}

/// What was true of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Truth {
    /// The class; None for an answer outside the training answers (always wrong).
    Class(Option<u32>),
    /// The reference sequences (several for a caption), without `BOS` / `EOS`; the first is the
    /// one sequence and token error compare with.
    Tokens(Vec<Vec<u32>>),
}

/// A box as fractions of the image's width and height: (x0, y0, x1, y1).
pub type FracBox = [f32; 4];

/// What a row is, beside its prediction.
#[derive(Debug, Clone)]
pub struct Row {
    /// The truth.
    pub truth: Truth,
    /// Question kind (`shape`, `closest` ...; empty when the data has none).
    pub kind: String,
    /// Relational question.
    pub relational: bool,
    /// The objects the row is about (the digit of a canvas, a question's focus objects, the
    /// digits of a pair), as boxes; empty when the data names none.
    pub boxes: Vec<FracBox>,
    /// The centre of each box, as fractions (x, y): computed in pixels and then divided, as the
    /// glimpse and focus measures always have (the mean of a box's fractional edges can differ in
    /// the last bit, which moves a centre lying on a cell or patch edge).
    pub centres: Vec<(f32, f32)>,
    /// For each token of the first reference sequence, the box (index into `boxes`) it names
    /// (a colour or shape word of a caption, a digit of a pair); empty when the data does not say.
    pub word_boxes: Vec<Option<usize>>,
}

/// One row's attention at each step, `[step][y][x]`.
pub type StepMaps = Vec<Vec<Vec<f32>>>;

/// Where a model looked, per row, as plain numbers.
#[derive(Debug, Clone)]
pub enum Looked {
    /// Weights over a grid laid over the image, `maps[row][y][x]`; `hard` for kept-cell masks
    /// (0/1). Maps over several steps are summed over the steps.
    Grid {
        /// The maps.
        maps: Vec<Vec<Vec<f32>>>,
        /// Kept cells of a hard attention.
        hard: bool,
    },
    /// Glimpse centres per row and step in [-1, 1], and the finest patch's side in pixels.
    Glimpses {
        /// `centres[row][step]`.
        centres: Vec<Vec<(f32, f32)>>,
        /// The finest patch.
        patch: usize,
        /// Glimpses per named object (0: one path for the whole answer).
        per_object: usize,
        /// Leading glimpses the policy did not choose.
        fixed: usize,
        /// Pixels one glimpse reads: the squares of every scale's side.
        pixels: usize,
    },
}

/// One evaluated batch, as the metrics see it.
pub struct Rows<'a> {
    /// What each row is.
    pub rows: &'a [Row],
    /// What the model predicted for each row.
    pub predicted: &'a [Predicted],
    /// Where it looked, when it says.
    pub looked: Option<&'a Looked>,
    /// Sequence models: the attention at each step while reading the first reference
    /// (teacher-forced), when the model attends.
    pub steps: Option<&'a [StepMaps]>,
    /// The model's statistics on the batch (means over its rows).
    pub stats: &'a [(String, f64)],
    /// (height, width) of the images.
    pub image_hw: (usize, usize),
    /// Where the cells of a (gh, gw) map lie on the images, when not tiling them evenly (the
    /// model's [`gaze_zoo::Model::cell_frame`]); None: every grid tiles them evenly.
    pub frame_of: Option<FrameOf<'a>>,
}

/// A model's [`gaze_zoo::Model::cell_frame`] for the batch's images: a map's (gh, gw) to where
/// its cells lie (None: evenly).
pub type FrameOf<'a> = &'a dyn Fn((usize, usize)) -> Option<gaze_zoo::CellFrame>;

/// Results by name: `scores` are measured on every split and named with its prefix (`acc_pct`
/// becomes `val_acc_pct`, `test_acc_pct`); `facts` are properties of the test run named as they
/// are (`glimpsed_digit_pct`, `cells_kept_pct`); `per_kind` is the per-question-kind table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Split-prefixed results.
    pub scores: BTreeMap<String, f64>,
    /// Results named as they are.
    pub facts: BTreeMap<String, f64>,
    /// Per question kind (VQA).
    pub per_kind: BTreeMap<String, KindSummary>,
}

/// Test results for one question kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KindSummary {
    /// Percent right.
    pub acc_pct: f64,
    /// Questions of this kind.
    pub questions: u64,
    /// Mean percent of grid cells kept (hard attention).
    pub kept_pct: Option<f64>,
    /// Percent of questions (with named focus objects) whose every focus object's centre cell
    /// was kept (hard attention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub focus_kept_pct: Option<f64>,
    /// Accuracy on those questions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_focus_kept_pct: Option<f64>,
    /// Accuracy on the others (a focus object's centre cell was dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_focus_missed_pct: Option<f64>,
}

/// One measure, fed batch by batch.
pub trait Metric: Send {
    /// Takes in one batch.
    fn update(&mut self, batch: &Rows) -> Result<()>;
    /// Writes what was measured (nothing when nothing applied).
    fn finish(&self, into: &mut Measured);
}

/// Correct and total counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Right answers.
    pub correct: u64,
    /// Questions (or images).
    pub total: u64,
}

impl Tally {
    /// Counts one row.
    pub fn add(&mut self, right: bool) {
        self.total += 1;
        self.correct += u64::from(right);
    }

    /// Percent right (0 when empty).
    pub fn pct(&self) -> f64 {
        100.0 * self.correct as f64 / self.total.max(1) as f64
    }
}

/// Rows split into those that met a condition (`a`) and the others (`b`), as percentages rounded
/// to 4 places: the share of `a`, and the accuracy on each side (None for an empty side).
/// None when there are no rows.
pub fn split_pcts((a, b): &(Tally, Tally)) -> Option<(f64, Option<f64>, Option<f64>)> {
    let n = a.total + b.total;
    (n > 0).then(|| {
        let acc = |t: &Tally| (t.total > 0).then(|| round4(t.pct()));
        (round4(100.0 * a.total as f64 / n as f64), acc(a), acc(b))
    })
}

/// `x` rounded to 4 decimal places.
pub fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Whether a row's prediction is right (a class equal to a known truth).
pub fn class_right(p: &Predicted, t: &Truth) -> bool {
    matches!((p, t), (Predicted::Class(p), Truth::Class(Some(t))) if p == t)
}

#[cfg(test)]
mod tests {
    use super::{Predicted, Row, Rows};

    /// A batch of predictions alone (no maps, no statistics, 1x1 images), for the metrics' tests.
    pub(crate) fn plain<'a>(rows: &'a [Row], predicted: &'a [Predicted]) -> Rows<'a> {
        Rows { rows, predicted, looked: None, steps: None, stats: &[], image_hw: (1, 1), frame_of: None }
    }
}

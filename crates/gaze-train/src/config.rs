//! Experiment files: `experiments/<name>.toml` = `{ name, seed, model, data, optim, train, targets }`.
//!
//! Unknown keys and wrong types are errors from the TOML reader that name the key and line;
//! impossible values (batch 0, a negative learning rate ...) are [`TrainError::Config`] naming
//! the file and the dotted key.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use gaze_data::generate::{BarnConfig, CanvasConfig, CaptionConfig, PairsConfig, SortOfClevrConfig};
use gaze_data::MnistSource;
use gaze_zoo::{ModelConfig, Search};

use crate::error::{Result, TrainError};

/// One experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// The experiment's name (also its folder under `runs/`).
    pub name: String,
    /// The one seed every random draw derives from.
    #[serde(default)]
    pub seed: u64,
    /// The data the targets were set for: the start (12 or more hex digits) of the test split's
    /// SHA-256 as a run records it in `data.json`. A run on other data (a copied experiment
    /// pointed at another data set) shows the targets as the original data's and compares
    /// nothing. None: the targets hold for any data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets_data: Option<String>,
    /// The model, by `type`.
    pub model: ModelConfig,
    /// The data, by `type`.
    pub data: DataConfig,
    /// The optimiser.
    #[serde(default)]
    pub optim: OptimConfig,
    /// The training loop.
    #[serde(default)]
    pub train: TrainConfig,
    /// Targets by metric name, as `"<= 1.0"` or `">= 98"`; written beside results.
    #[serde(default)]
    pub targets: BTreeMap<String, String>,
}

/// Whether an experiment's targets hold for the data a run read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetsFor {
    /// The targets were set for this data (or for any data).
    ThisData,
    /// The targets were set for other data: the test split's SHA-256 they name.
    OtherData(String),
}

/// Where the data comes from, by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataConfig {
    /// MNIST-like digits: training file split into train / val, test file as test.
    Mnist(MnistData),
    /// Translated or cluttered MNIST generated from the digits (train from the training file).
    MnistCanvas(CanvasData),
    /// Two digits on a canvas, to be read left to right as a sequence (MNIST pairs).
    MnistPairs(PairsData),
    /// Generated barn-scene VQA.
    BarnVqa(BarnData),
    /// Generated Sort-of-CLEVR.
    SortOfClevr(ClevrData),
    /// Any folder in the generic VQA format (`images/`, `questions.jsonl`).
    VqaFolder(FolderData),
    /// Generated shape scenes with every correct caption.
    ShapeCaptions(CaptionsData),
    /// Any caption folder (`images/` with `captions.jsonl`, or the Karpathy JSON layout).
    CaptionFolder(CaptionFolderData),
    /// A CIFAR-10 or CIFAR-100 folder in the binary format (`data_batch_*.bin` / `train.bin`).
    Cifar(CifarData),
}

/// A CIFAR binary folder: its training file(s) split into train / val, its test file as test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CifarData {
    /// The folder (see `gaze_data::cifar`).
    pub path: std::path::PathBuf,
    /// Fraction of the training images held out for validation, from the end.
    pub val_fraction: f64,
    /// Use at most this many training images (after the split); 0: all.
    pub train_limit: usize,
    /// Use at most this many test images; 0: all.
    pub test_limit: usize,
}

impl Default for CifarData {
    /// 45k / 5k / 10k for CIFAR's 50k / 10k.
    fn default() -> Self {
        Self { path: std::path::PathBuf::new(), val_fraction: 0.1, train_limit: 0, test_limit: 0 }
    }
}

/// Generated shape-scene captions: images per split (each with all its correct captions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptionsData {
    /// The generator.
    pub captions: CaptionConfig,
    /// Training images.
    pub train_images: usize,
    /// Validation images.
    pub val_images: usize,
    /// Test images.
    pub test_images: usize,
    /// Train on a caption in any order, drawn each time an image is seen, rather than on the one
    /// that names the shapes in reading order (evaluation scores against every order either way).
    pub any_order: bool,
}

impl Default for CaptionsData {
    fn default() -> Self {
        Self {
            captions: CaptionConfig::default(),
            train_images: 10_000,
            val_images: 1_000,
            test_images: 2_000,
            any_order: false,
        }
    }
}

/// A caption folder: its own splits when it has them, else random fractions of its images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptionFolderData {
    /// The folder (see `gaze_data::caption` for the layouts read).
    pub path: std::path::PathBuf,
    /// Images are resized to this [height, width].
    pub size: [usize; 2],
    /// Fraction of images for validation (folders without their own splits).
    pub val_fraction: f64,
    /// Fraction of images for test (folders without their own splits).
    pub test_fraction: f64,
    /// Words seen fewer times in the training captions become `<unk>`.
    pub min_count: usize,
    /// Training captions longer than this many words are left out (references for BLEU are kept
    /// whole); decoding stops after this many words.
    pub max_words: usize,
}

impl Default for CaptionFolderData {
    fn default() -> Self {
        Self {
            path: "data/captions".into(),
            size: [224, 224],
            val_fraction: 0.1,
            test_fraction: 0.1,
            min_count: 5,
            max_words: 20,
        }
    }
}

/// Barn-scene VQA: scenes per split (each with `barn.questions_per_scene` questions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BarnData {
    /// The generator.
    pub barn: BarnConfig,
    /// Training scenes.
    pub train_scenes: usize,
    /// Validation scenes.
    pub val_scenes: usize,
    /// Test scenes.
    pub test_scenes: usize,
    /// Longest question kept, in words.
    pub max_words: usize,
}

impl Default for BarnData {
    fn default() -> Self {
        Self { barn: BarnConfig::default(), train_scenes: 8000, val_scenes: 500, test_scenes: 500, max_words: 12 }
    }
}

/// Sort-of-CLEVR: images per split (each with its relational and non-relational questions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClevrData {
    /// The generator.
    pub clevr: SortOfClevrConfig,
    /// Training images.
    pub train_images: usize,
    /// Validation images.
    pub val_images: usize,
    /// Test images.
    pub test_images: usize,
    /// Longest question kept, in words.
    pub max_words: usize,
}

impl Default for ClevrData {
    /// The Relation Networks split: 9,800 train / 200 test images (here 200 val as well).
    fn default() -> Self {
        Self {
            clevr: SortOfClevrConfig::default(),
            train_images: 9800,
            val_images: 200,
            test_images: 200,
            max_words: 12,
        }
    }
}

/// A VQA folder, split by image into train / val / test (seeded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FolderData {
    /// The folder (`images/`, `questions.jsonl` or `questions.json`).
    pub path: std::path::PathBuf,
    /// Images are resized to this [height, width].
    pub size: [usize; 2],
    /// Fraction of images for validation.
    pub val_fraction: f64,
    /// Fraction of images for test.
    pub test_fraction: f64,
    /// Longest question kept, in words.
    pub max_words: usize,
}

impl Default for FolderData {
    fn default() -> Self {
        Self { path: "data/vqa".into(), size: [64, 64], val_fraction: 0.1, test_fraction: 0.1, max_words: 16 }
    }
}

/// MNIST settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MnistData {
    /// `auto` (GAZE_DATA_DIR, else the embedded fixture), `env_or_hub`, `fixture`, `hub`, or `{ dir = "..." }`.
    pub source: MnistSource,
    /// Fraction of the training file held out for validation, from its end (1/12: 55k / 5k).
    pub val_fraction: f64,
    /// Use at most this many training digits (after the split); 0: all.
    pub train_limit: usize,
    /// Use at most this many test digits; 0: all.
    pub test_limit: usize,
}

impl Default for MnistData {
    fn default() -> Self {
        Self { source: MnistSource::Auto, val_fraction: 1.0 / 12.0, train_limit: 0, test_limit: 0 }
    }
}

/// Translated / cluttered MNIST settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CanvasData {
    /// The digits.
    pub digits: MnistData,
    /// The canvas.
    pub canvas: CanvasConfig,
    /// Draw new placements (and clutter) of the training digits every epoch, as the RAM paper's
    /// on-the-fly data; validation and test canvases stay fixed. Off: one fixed training set.
    pub fresh_each_epoch: bool,
}

/// MNIST pairs settings: every digit of a split is paired with another of the same split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PairsData {
    /// The digits.
    pub digits: MnistData,
    /// The canvas.
    pub pairs: PairsConfig,
    /// What a model predicts of a canvas.
    pub target: PairsTarget,
    /// Draw new pairs (partners, places, clutter) for the training digits every epoch; validation
    /// and test pairs stay fixed. Off: one fixed training set.
    pub fresh_each_epoch: bool,
}

/// What a model predicts of an MNIST-pairs canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairsTarget {
    /// The digits in reading order, as the token sequence `<d1> <d2> <eos>`.
    #[default]
    Sequence,
    /// The sum of the digits, one class of 0..=9 x digits (19 for a pair).
    Sum,
    /// The unordered pair, one of 55 classes (two digits only).
    Pair,
}

/// Optimiser settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// `adamw` or `sgd`.
    pub kind: OptimKind,
    /// Base learning rate.
    pub lr: f64,
    /// Decoupled weight decay (AdamW) or L2 (SGD).
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// AdamW beta1.
    pub beta1: f64,
    /// AdamW beta2.
    pub beta2: f64,
    /// AdamW epsilon.
    pub eps: f64,
    /// Clip gradients to this global L2 norm (0: no clipping).
    pub clip_norm: f64,
    /// Clip by parameter group instead of globally: each entry lists name prefixes (for example
    /// `[["locator."]]`); the parameters a group's prefixes match form that group, every other
    /// parameter one more group, and each group's gradient is scaled to L2 norm at most
    /// `clip_norm` on its own. Empty: one global norm.
    pub clip_groups: Vec<Vec<String>>,
    /// Learning-rate schedule.
    pub schedule: Schedule,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            kind: OptimKind::Adamw,
            lr: 1e-3,
            weight_decay: 0.0,
            momentum: 0.9,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip_norm: 0.0,
            clip_groups: Vec::new(),
            schedule: Schedule::Constant,
        }
    }
}

/// Optimiser kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimKind {
    /// Adam with decoupled weight decay.
    Adamw,
    /// Stochastic gradient descent with momentum.
    Sgd,
}

/// Learning-rate schedules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        /// Epochs between decays.
        every: usize,
        /// Decay factor.
        gamma: f64,
    },
    /// Multiply by `factor` when validation accuracy has not improved for `patience` epochs.
    Plateau {
        /// Epochs without improvement before a cut.
        patience: usize,
        /// Cut factor.
        factor: f64,
    },
    /// Cosine from the base rate to `min_lr` over all steps.
    Cosine {
        /// Final rate.
        min_lr: f64,
    },
    /// Multiply by `gamma` at every epoch's end, never below `min_lr` (`lr * gamma^epoch`,
    /// floored).
    Exponential {
        /// Decay factor per epoch.
        gamma: f64,
        /// Floor of the rate.
        #[serde(default)]
        min_lr: f64,
    },
}

/// Training-loop settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Examples per evaluation batch.
    pub eval_batch_size: usize,
    /// Also save the `last` checkpoint every this many steps (0: only at epoch ends).
    pub checkpoint_every: u64,
    /// Log a step line to metrics.jsonl every this many steps.
    pub log_every: u64,
    /// CPU threads (0: all cores). `--threads` overrides.
    pub threads: usize,
    /// Test images drawn with their attention in the report.
    pub pictures: usize,
    /// Training images are shifted by up to this many pixels in x and y (uniform, seeded per
    /// step; zeros fill in); 0: no augmentation.
    pub augment_shift: usize,
    /// Each training batch is split into this many shards, whose forward and backward passes
    /// run on their own threads, their gradients combined into the batch's (data parallelism;
    /// see `gaze_train::shard`). 1: one pass on the calling thread. With `threads = 1` each
    /// shard keeps to one core. Not for models with batch norm.
    pub shards: usize,
    /// The validation metric the `best` checkpoint follows (`val_acc_pct`, `val_bleu4`,
    /// `val_sequence_error_pct` ...; errors and losses count lower as better). Default: the
    /// task's main metric (accuracy for classes and answers, sequence error, BLEU-4 for text).
    pub select: Option<String>,
    /// How sequence models decode in evaluation (`{ type = "greedy" }` or `{ type = "beam",
    /// width = 3 }`).
    pub decode: Search,
    /// Start from another run's parameters: a run folder (its `best` checkpoint), a
    /// `.safetensors` file, or `{ experiment = "NAME" }`, the newest finished run of that
    /// experiment under the runs folder. Every parameter of the same name and shape is copied;
    /// the others (a classifier for other classes, say) keep their seeded initialisation, and
    /// the run says which. Not read when a run resumes (its checkpoint has everything).
    pub init_from: Option<InitFrom>,
}

/// Where `train.init_from` takes parameters from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitFrom {
    /// A run folder or a `.safetensors` file.
    Path(std::path::PathBuf),
    /// The newest finished run (one with `summary.json` and a `best` checkpoint) of an experiment,
    /// under the runs folder the new run is written to.
    Experiment {
        /// The experiment's name.
        experiment: String,
    },
}

impl InitFrom {
    /// The run folder or file this names, for runs written under `runs_root`: for an experiment,
    /// its newest finished run (run folders sort by their start time), or an error saying how to
    /// make one.
    pub fn resolve(&self, runs_root: &std::path::Path) -> std::result::Result<std::path::PathBuf, String> {
        match self {
            InitFrom::Path(p) => Ok(p.clone()),
            InitFrom::Experiment { experiment } => {
                let dir = runs_root.join(experiment);
                let mut runs: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
                    .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                    .unwrap_or_default();
                runs.retain(|r| r.join("summary.json").is_file() && r.join("checkpoints/best.safetensors").is_file());
                runs.sort();
                runs.pop().ok_or_else(|| {
                    format!(
                        "train.init_from: no finished run of `{experiment}` in {}: train it first \
                         (`cargo xtask experiment {experiment}` with the same --runs)",
                        dir.display()
                    )
                })
            }
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 64,
            eval_batch_size: 500,
            checkpoint_every: 0,
            log_every: 20,
            threads: 0,
            pictures: 16,
            augment_shift: 0,
            shards: 1,
            select: None,
            decode: Search::Greedy,
            init_from: None,
        }
    }
}

/// The dotted key (`train.epochs`) and 1-based line of the TOML entry around byte `at`: the
/// table header above it plus the key on its line (for an unknown field the span is the key itself).
pub(crate) fn key_at(text: &str, at: usize) -> (String, usize) {
    let at = at.min(text.len());
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let line_text = text[start..end].trim();
    let line_no = text[..start].matches('\n').count() + 1;
    let section = text[..start].lines().rev().find_map(|l| {
        l.trim()
            .strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
            .map(|t| t.trim_matches(['[', ']']).trim().to_string())
    });
    let key = match line_text.split_once('=') {
        Some((k, _)) => k.trim().to_string(),
        None if line_text.starts_with('[') => return (line_text.trim_matches(['[', ']']).to_string(), line_no),
        None => line_text.to_string(),
    };
    (section.map_or(key.clone(), |s| format!("{s}.{key}")), line_no)
}

fn bad(path: &Path, key: &str, reason: impl Into<String>) -> TrainError {
    TrainError::Config { path: path.into(), key: key.into(), reason: reason.into() }
}

/// The settings every data-set folder shares: split fractions in (0, 1) with a sum below 1 (for
/// folders without their own splits) and an image size of at least 1x1.
fn check_folder(path: &Path, val_fraction: f64, test_fraction: f64, size: [usize; 2]) -> Result<()> {
    let ok = |x: f64| x > 0.0 && x < 1.0;
    if !ok(val_fraction) || !ok(test_fraction) || val_fraction + test_fraction >= 1.0 {
        return Err(bad(
            path,
            "data.val_fraction/test_fraction",
            format!("{val_fraction} and {test_fraction} must be in (0, 1) with a sum below 1"),
        ));
    }
    if size[0] == 0 || size[1] == 0 {
        return Err(bad(path, "data.size", "height and width must be at least 1"));
    }
    Ok(())
}

impl ExperimentConfig {
    /// Whether the targets hold for data whose test split has SHA-256 `test_sha256` (hex).
    pub fn targets_for(&self, test_sha256: &str) -> TargetsFor {
        match &self.targets_data {
            Some(t) if !test_sha256.starts_with(t.as_str()) => TargetsFor::OtherData(t.clone()),
            _ => TargetsFor::ThisData,
        }
    }

    /// The targets a run on data with test split `test_sha256` is measured against: all of them,
    /// or none when they were set for other data.
    pub fn targets_here(&self, test_sha256: &str) -> BTreeMap<String, String> {
        match self.targets_for(test_sha256) {
            TargetsFor::ThisData => self.targets.clone(),
            TargetsFor::OtherData(_) => BTreeMap::new(),
        }
    }

    /// The config without its targets: what a run computes depends on nothing else.
    pub fn without_targets(&self) -> Self {
        Self { targets: BTreeMap::new(), targets_data: None, ..self.clone() }
    }

    /// Parses TOML text; `path` names the source in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| {
            let (key, line) = e.span().map_or(("-".to_string(), 0), |s| key_at(text, s.start));
            let reason = if line > 0 { format!("{} (line {line})", e.message()) } else { e.message().to_string() };
            bad(path, &key, reason)
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Reads and checks an experiment file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::from_toml(&text, path)
    }

    /// The config as TOML (what a run records as `config.toml`).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| TrainError::Other(format!("serialising the config: {e}")))
    }

    /// Checks values no type can: positive sizes and rates, fractions in range.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let (o, t) = (&self.optim, &self.train);
        if let Some(d) = &self.targets_data {
            if d.len() < 12 || !d.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
                return Err(bad(
                    path,
                    "targets_data",
                    format!("{d:?} is not the start of a SHA-256 (12 or more lower-case hex digits, from data.json)"),
                ));
            }
        }
        if self.name.trim().is_empty() {
            return Err(bad(path, "name", "must not be empty"));
        }
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if !self.name.chars().all(plain) || self.name.starts_with('.') {
            return Err(bad(
                path,
                "name",
                format!(
                    "{:?} must be a plain name (letters, digits, '-', '_', '.', not starting with '.'): it names \
                     the run's folder under --runs",
                    self.name
                ),
            ));
        }
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return Err(bad(path, "optim.lr", format!("{} must be a positive number", o.lr)));
        }
        if !(o.weight_decay >= 0.0 && o.weight_decay.is_finite()) {
            return Err(bad(path, "optim.weight_decay", format!("{} must be a finite number >= 0", o.weight_decay)));
        }
        if !(o.eps > 0.0 && o.eps.is_finite()) {
            return Err(bad(path, "optim.eps", format!("{} must be a positive number", o.eps)));
        }
        if !(0.0..1.0).contains(&o.momentum) {
            return Err(bad(path, "optim.momentum", format!("{} is not in [0, 1)", o.momentum)));
        }
        if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) {
            return Err(bad(path, "optim.beta1/beta2", "must be in [0, 1)"));
        }
        if !(o.clip_norm >= 0.0 && o.clip_norm.is_finite()) {
            return Err(bad(
                path,
                "optim.clip_norm",
                format!("{} must be a finite number >= 0 (0: no clipping)", o.clip_norm),
            ));
        }
        if !o.clip_groups.is_empty() && o.clip_norm == 0.0 {
            return Err(bad(path, "optim.clip_groups", "needs clip_norm > 0 (the bound of each group)"));
        }
        if let Some(g) = o.clip_groups.iter().position(|g| g.is_empty() || g.iter().any(String::is_empty)) {
            return Err(bad(path, "optim.clip_groups", format!("group {g} is empty or has an empty prefix")));
        }
        match o.schedule {
            Schedule::Exponential { gamma, min_lr }
                if !(gamma > 0.0 && gamma <= 1.0 && (0.0..=o.lr).contains(&min_lr)) =>
            {
                return Err(bad(
                    path,
                    "optim.schedule",
                    format!("exponential needs gamma in (0, 1] (not {gamma}) and min_lr in [0, lr] (not {min_lr})"),
                ))
            }
            Schedule::Step { every, gamma } if every == 0 || !(gamma > 0.0 && gamma <= 1.0) => {
                return Err(bad(
                    path,
                    "optim.schedule",
                    format!("step needs every >= 1 and gamma in (0, 1], not {gamma}"),
                ))
            }
            Schedule::Plateau { factor, .. } if !(factor > 0.0 && factor < 1.0) => {
                return Err(bad(path, "optim.schedule.factor", format!("{factor} is not in (0, 1)")))
            }
            Schedule::Cosine { min_lr } if min_lr < 0.0 || min_lr > o.lr => {
                return Err(bad(path, "optim.schedule.min_lr", format!("{min_lr} is not in [0, lr]")))
            }
            _ => {}
        }
        if t.epochs == 0 {
            return Err(bad(path, "train.epochs", "must be at least 1"));
        }
        if t.batch_size == 0 {
            return Err(bad(path, "train.batch_size", "must be at least 1"));
        }
        if t.shards == 0 || t.shards > t.batch_size {
            return Err(bad(
                path,
                "train.shards",
                format!("{} must be in [1, batch_size = {}]", t.shards, t.batch_size),
            ));
        }
        if t.eval_batch_size == 0 {
            return Err(bad(path, "train.eval_batch_size", "must be at least 1"));
        }
        if let Some(m) = t.select.as_deref().filter(|m| !m.starts_with("val_")) {
            return Err(bad(
                path,
                "train.select",
                format!("`{m}` is not a validation metric (they start with `val_`)"),
            ));
        }
        if t.decode == (Search::Beam { width: 0 }) {
            return Err(bad(path, "train.decode.width", "a beam keeps at least 1 hypothesis"));
        }
        let digits = match &self.data {
            DataConfig::Mnist(m) => Some(m),
            DataConfig::MnistCanvas(c) => Some(&c.digits),
            DataConfig::MnistPairs(p) => {
                if t.augment_shift > 0 {
                    return Err(bad(path, "train.augment_shift", "shifts are for single-digit images; pairs need 0"));
                }
                if p.target == PairsTarget::Pair && p.pairs.digits != 2 {
                    return Err(bad(
                        path,
                        "data.target",
                        format!("\"pair\" names an unordered pair of digits; data.pairs.digits is {}", p.pairs.digits),
                    ));
                }
                Some(&p.digits)
            }
            DataConfig::BarnVqa(b) => {
                if b.train_scenes == 0 || b.val_scenes == 0 || b.test_scenes == 0 {
                    return Err(bad(path, "data.train_scenes/val_scenes/test_scenes", "each must be at least 1"));
                }
                None
            }
            DataConfig::SortOfClevr(c) => {
                if c.train_images == 0 || c.val_images == 0 || c.test_images == 0 {
                    return Err(bad(path, "data.train_images/val_images/test_images", "each must be at least 1"));
                }
                None
            }
            DataConfig::VqaFolder(f) => {
                check_folder(path, f.val_fraction, f.test_fraction, f.size)?;
                None
            }
            DataConfig::ShapeCaptions(c) => {
                if c.train_images == 0 || c.val_images == 0 || c.test_images == 0 {
                    return Err(bad(path, "data.train_images/val_images/test_images", "each must be at least 1"));
                }
                None
            }
            DataConfig::CaptionFolder(f) => {
                check_folder(path, f.val_fraction, f.test_fraction, f.size)?;
                if f.max_words == 0 {
                    return Err(bad(path, "data.max_words", "must be at least 1"));
                }
                None
            }
            DataConfig::Cifar(c) => {
                if !(c.val_fraction > 0.0 && c.val_fraction < 1.0) {
                    return Err(bad(path, "data.val_fraction", format!("{} is not in (0, 1)", c.val_fraction)));
                }
                if t.augment_shift >= 16 {
                    return Err(bad(
                        path,
                        "train.augment_shift",
                        format!("{} moves a 32x32 image out of view", t.augment_shift),
                    ));
                }
                None
            }
        };
        if let Some(digits) = digits {
            if !(digits.val_fraction > 0.0 && digits.val_fraction < 1.0) {
                return Err(bad(path, "data.val_fraction", format!("{} is not in (0, 1)", digits.val_fraction)));
            }
        } else if t.augment_shift > 0 && !matches!(self.data, DataConfig::Cifar(_)) {
            return Err(bad(path, "train.augment_shift", "shifts are for class images; VQA and caption data need 0"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_hold_for_the_data_they_name() -> anyhow::Result<()> {
        let text = GOOD.replace("seed = 3", "seed = 3\ntargets_data = \"0123456789abcdef\"");
        let mut cfg = ExperimentConfig::from_toml(&text, Path::new("t.toml"))?;
        cfg.targets.insert("test_error_pct".into(), "<= 1.0".into());
        assert_eq!(cfg.targets_for("0123456789abcdef00ff"), TargetsFor::ThisData);
        assert_eq!(cfg.targets_here("0123456789abcdef00ff").len(), 1);
        assert_eq!(cfg.targets_for("ffff"), TargetsFor::OtherData("0123456789abcdef".into()));
        assert!(cfg.targets_here("ffff").is_empty(), "another data set's targets are not compared");
        let open = ExperimentConfig { targets_data: None, ..cfg.clone() };
        assert_eq!(open.targets_here("ffff").len(), 1, "unstamped targets hold for any data");
        assert_eq!(cfg.without_targets().to_toml()?, open.without_targets().to_toml()?);
        for bad in ["\"0123\"", "\"0123456789ABCDEF\"", "\"not-hex-at-all!\""] {
            let e = ExperimentConfig::from_toml(
                &GOOD.replace("seed = 3", &format!("seed = 3\ntargets_data = {bad}")),
                Path::new("t.toml"),
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
            assert!(e.contains("targets_data"), "{bad}: {e}");
        }
        Ok(())
    }

    #[test]
    fn init_from_an_experiment_is_its_newest_finished_run() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let from = InitFrom::Experiment { experiment: "dram-pairs".into() };
        let e = from.resolve(root.path()).err().unwrap_or_default();
        assert!(
            e.contains("no finished run of `dram-pairs`") && e.contains("cargo xtask experiment dram-pairs"),
            "{e}"
        );
        for (run, finished) in
            [("20261201T000000Z-s1", true), ("20261203T000000Z-s1", true), ("20261205T000000Z-s1", false)]
        {
            let dir = root.path().join("dram-pairs").join(run);
            std::fs::create_dir_all(dir.join("checkpoints"))?;
            std::fs::write(dir.join("checkpoints/best.safetensors"), b"")?;
            if finished {
                std::fs::write(dir.join("summary.json"), b"{}")?;
            }
        }
        assert_eq!(from.resolve(root.path()), Ok(root.path().join("dram-pairs/20261203T000000Z-s1")));
        // Both forms read from TOML; a path is a path.
        let t: TrainConfig = toml::from_str("init_from = { experiment = \"dram-pairs\" }")?;
        assert_eq!(t.init_from, Some(from));
        let t: TrainConfig = toml::from_str("init_from = \"runs/x\"")?;
        assert_eq!(t.init_from, Some(InitFrom::Path("runs/x".into())));
        Ok(())
    }

    const GOOD: &str = r#"
name = "t"
seed = 3
[model]
type = "convnet"
hidden = 8
[data]
type = "mnist"
source = "fixture"
[optim]
lr = 0.01
[train]
epochs = 1
"#;

    fn err(text: &str) -> String {
        ExperimentConfig::from_toml(text, Path::new("exp.toml")).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn good_config_parses() -> Result<()> {
        let c = ExperimentConfig::from_toml(GOOD, Path::new("exp.toml"))?;
        assert_eq!(c.seed, 3);
        assert_eq!(c.train.batch_size, 64);
        let again = ExperimentConfig::from_toml(&c.to_toml()?, Path::new("x"))?;
        assert_eq!(again, c);
        Ok(())
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = err(&GOOD.replace("lr = 0.01", "lr = 0.01\nlearning_rate = 2"));
        assert!(e.contains("exp.toml") && e.contains("learning_rate"), "{e}");
        let e = err(&GOOD.replace("hidden = 8", "hiden = 8"));
        assert!(e.contains("hiden"), "{e}");
        let e = err(&GOOD.replace("lr = 0.01", "lr = -0.01"));
        assert!(e.contains("exp.toml: `optim.lr`") && e.contains("-0.01"), "{e}");
        let e = err(&GOOD.replace("epochs = 1", "epochs = 1\nbatch_size = 0"));
        assert!(e.contains("`train.batch_size`"), "{e}");
        let e = err(&GOOD.replace("epochs = 1", "epochs = \"one\""));
        assert!(e.contains("exp.toml: `train.epochs`") && e.contains("expected usize"), "{e}");
        let e = err(&GOOD.replace("lr = 0.01", "lr = 0.01\nlearning_rate = 2"));
        assert!(e.contains("`optim.learning_rate`") && e.contains("line"), "{e}");
        let e = err(&GOOD.replace("type = \"convnet\"", "type = \"transformer\""));
        assert!(e.contains("transformer"), "{e}");
        // Optimiser values no type can refuse: each error names its key.
        for (add, key) in [
            ("eps = -1e-8", "optim.eps"),
            ("eps = 0.0", "optim.eps"),
            ("weight_decay = nan", "optim.weight_decay"),
            ("clip_norm = nan", "optim.clip_norm"),
            ("clip_norm = inf", "optim.clip_norm"),
            ("schedule = { type = \"step\", every = 2, gamma = 1.5 }", "optim.schedule"),
            ("schedule = { type = \"exponential\", gamma = 0.0 }", "optim.schedule"),
            ("schedule = { type = \"exponential\", gamma = 0.98, min_lr = 1.0 }", "optim.schedule"),
            ("clip_groups = [[\"locator.\"]]", "optim.clip_groups"),
            ("clip_norm = 5\nclip_groups = [[]]", "optim.clip_groups"),
        ] {
            let e = err(&GOOD.replace("lr = 0.01", &format!("lr = 0.01\n{add}")));
            assert!(e.contains(&format!("`{key}`")), "{add}: {e}");
        }
        assert!(err(&GOOD.replace("lr = 0.01", "lr = 0.01\nschedule = { type = \"step\", every = 2, gamma = 1.0 }"))
            .is_empty());
        let fine = "lr = 0.01\nclip_norm = 5\nclip_groups = [[\"locator.\"]]\nschedule = { type = \"exponential\", gamma = 0.98 }";
        assert!(err(&GOOD.replace("lr = 0.01", fine)).is_empty());
    }

    #[test]
    fn a_run_name_is_a_plain_name() {
        let name = |n: &str| {
            let text =
                GOOD.lines().map(|l| if l.starts_with("name = ") { format!("name = {n:?}") } else { l.to_string() });
            err(&text.collect::<Vec<_>>().join("\n"))
        };
        for bad in ["../../escape", "/tmp/x", "a/b", ".hidden", "two words", "a\\b"] {
            let e = name(bad);
            assert!(e.contains("`name`") && e.contains("plain name"), "{bad}: {e}");
        }
        for good in ["exp", "ram-cluttered-100", "v1.2_b"] {
            assert!(name(good).is_empty(), "{good}: {}", name(good));
        }
    }
}

//! Sharing a trained model: `gaze export RUN DIR` writes, in the layout model repositories on the
//! Hugging Face hub use, what another user needs to run it without its data:
//!
//! - `model.safetensors`: the parameters (the run's `best` checkpoint, or `last`), nothing else;
//! - `config.json`: the experiment (model, data and training settings), the input size, the
//!   output (class names, or the vocabulary a sequence model writes), the data it was trained
//!   on, its test metrics and the command and revision that made it ([`Card`]);
//! - `README.md`: a model card for people.
//!
//! `gaze infer DIR image.png` runs such a folder ([`load`]), and with the `hub` feature a model
//! repository on the hub (`gaze infer OWNER/NAME image.png`, [`fetch`]); a model that answers questions
//! carries its question vocabulary and answers, and is asked with `--question`. Exporting reads
//! only the run folder (its config, `data.json` and checkpoint), never the data.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::ExperimentConfig;
use crate::error::{Result, TrainError};
use crate::record::RunSummary;
use crate::trainer::{build_model, load_model, Built};

/// The format named in every `config.json` this module writes.
pub const FORMAT: &str = "gaze-export-1";

/// `config.json` of an exported model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Card {
    /// [`FORMAT`].
    pub format: String,
    /// The experiment the model was trained by.
    pub experiment: ExperimentConfig,
    /// (channels, height, width) of its input images; others are resized to it.
    pub input: (usize, usize, usize),
    /// Classes, or the output vocabulary of a sequence model (special tokens included).
    pub classes: usize,
    /// Longest output sequence (`EOS` included); 0 for a classifier.
    pub max_steps: usize,
    /// The name of each class (a classifier).
    pub class_names: Vec<String>,
    /// The output vocabulary, in token order (a sequence model).
    pub words: Vec<String>,
    /// Whether the sequences are natural-language text (scored with BLEU).
    pub text: bool,
    /// Question vocabulary size (a model that answers questions; else 0).
    #[serde(default)]
    pub vocab: usize,
    /// Width of the question codes the model reads (0: none; free text has none).
    #[serde(default)]
    pub code_dim: usize,
    /// The question vocabulary and answers of a model that answers questions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub questions: Option<gaze_data::dataset::VqaEncoder>,
    /// The data it was trained and tested on.
    pub data: String,
    /// Its test metrics (empty for an unfinished run).
    pub metrics: BTreeMap<String, f64>,
    /// The revision that trained it.
    pub git_rev: String,
    /// The command that trained it.
    pub command: String,
    /// The checkpoint exported (`best` or `last`).
    pub checkpoint: String,
}

impl Card {
    /// The shape the model is built for.
    pub fn shape(&self) -> gaze_zoo::DataShape {
        let mut s = gaze_zoo::DataShape::images(self.input, self.classes);
        s.max_steps = self.max_steps;
        s.vocab = self.vocab;
        s.code_dim = self.code_dim;
        s
    }
}

/// Whether `dir` holds an exported model.
pub fn is_export(dir: &Path) -> bool {
    dir.join("config.json").is_file() && dir.join("model.safetensors").is_file()
}

/// Exports the run in `run` (its `best` checkpoint, or `last`) to `dir` (created; files in it are
/// replaced). Returns the card written.
pub fn export(run: &Path, dir: &Path, last: bool, device: &Device) -> Result<Card> {
    let (cfg, data, built, checkpoint) = load_model(run, last, device)?;
    let summary = std::fs::read_to_string(run.join("summary.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<RunSummary>(&s).ok());
    let info: serde_json::Value = std::fs::read_to_string(run.join("run.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let field = |k: &str| info.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let card = Card {
        format: FORMAT.into(),
        experiment: cfg.clone(),
        input: data.input,
        classes: data.classes,
        max_steps: data.max_steps,
        class_names: data.class_names.clone(),
        words: data.words.clone(),
        text: data.text,
        vocab: data.vocab,
        code_dim: data.code_dim,
        questions: data.questions.clone(),
        data: data.description.clone(),
        metrics: summary.as_ref().map(|s| s.metrics.clone()).unwrap_or_default(),
        git_rev: summary.as_ref().map_or_else(|| field("git_rev"), |s| s.git_rev.clone()),
        command: summary.as_ref().map_or_else(|| field("command"), |s| s.command.clone()),
        checkpoint: checkpoint.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let tensors: Vec<(String, Tensor)> =
        built.vars.sorted_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None)
        .map_err(|e| TrainError::Other(format!("{}: {e}", dir.display())))?;
    gaze_data::write_atomic(&dir.join("model.safetensors"), &bytes)?;
    let json = serde_json::to_string_pretty(&card).map_err(|e| TrainError::Other(e.to_string()))?;
    gaze_data::write_atomic(&dir.join("config.json"), json.as_bytes())?;
    gaze_data::write_atomic(&dir.join("README.md"), model_card(&card).as_bytes())?;
    Ok(card)
}

/// The model card (`README.md`).
fn model_card(c: &Card) -> String {
    let e = &c.experiment;
    let model = toml::to_string(&e.model).unwrap_or_default();
    let mut md = format!(
        "---\nlibrary_name: gaze\ntags:\n- visual-attention\n---\n\n# {}\n\nA model trained with \
         gaze (visual-attention models in Rust, on candle).\n\n\
         - data: {}\n- input: {} channel(s), {}x{} pixels (other images are resized)\n- output: {}\n\
         - trained by: `{}` at revision `{}` (checkpoint `{}`)\n\n",
        e.name,
        c.data,
        c.input.0,
        c.input.1,
        c.input.2,
        if c.max_steps > 0 {
            format!("a token sequence of at most {} tokens over {} words", c.max_steps, c.words.len())
        } else {
            format!("one of {} classes", c.classes)
        },
        c.command,
        c.git_rev,
        c.checkpoint
    );
    md += "## Use\n\n```sh\ngaze infer THIS_FOLDER image.png   # prints the answer, draws where it looked\n```\n\n";
    if !c.metrics.is_empty() {
        md += "## Test metrics\n\n| metric | value |\n|---|---|\n";
        for (k, v) in &c.metrics {
            md += &format!("| {k} | {v} |\n");
        }
        md += "\n";
    }
    md += &format!("## Model\n\n```toml\n{model}```\n");
    md
}

/// Whether `arg` reads as a hub repository id (`owner/name`, optionally `@revision`) rather than a
/// folder: it names no existing path, and has one slash between two plain names.
pub fn is_hub_id(arg: &str) -> bool {
    let id = arg.split_once('@').map_or(arg, |(id, _)| id);
    let plain = |s: &str| {
        !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    !Path::new(arg).exists() && id.split_once('/').is_some_and(|(o, n)| plain(o) && plain(n))
}

/// A hub model repository `owner/name` (optionally `@revision`), opened once for the files read
/// from it: from the local hub cache, or fetched into it (only the cache when `offline`).
#[cfg(feature = "hub")]
pub struct HubRepo {
    repo: String,
    model: hf_hub::HFRepositorySync<hf_hub::RepoTypeModel>,
    revision: Option<String>,
    offline: bool,
}

#[cfg(feature = "hub")]
impl HubRepo {
    /// Opens `repo`; a name that is not `OWNER/NAME` or a client that cannot start is an error.
    pub fn open(repo: &str, offline: bool) -> Result<Self> {
        let (id, revision) = repo.split_once('@').map_or((repo, None), |(id, r)| (id, Some(r.to_string())));
        let (owner, name) = id
            .split_once('/')
            .ok_or_else(|| TrainError::Other(format!("{repo}: a hub repository is named OWNER/NAME")))?;
        let client =
            hf_hub::HFClientSync::new().map_err(|e| TrainError::Other(format!("Hugging Face hub client: {e}")))?;
        Ok(Self { repo: repo.to_string(), model: client.model(owner, name), revision, offline })
    }

    /// The local path of `file`; the error names the repository and the file.
    pub fn file(&self, file: &str) -> Result<std::path::PathBuf> {
        self.model
            .download_file()
            .filename(file)
            .maybe_revision(self.revision.clone())
            .local_files_only(self.offline)
            .send()
            .map_err(|e| {
                TrainError::Other(format!(
                    "{}: could not get {file} from the Hugging Face hub{} ({e})",
                    self.repo,
                    if self.offline { " cache (HF_HUB_OFFLINE is set)" } else { "" }
                ))
            })
    }
}

/// One file of the hub model repository `repo`, for a caller that reads only that file
/// ([`HubRepo`] for several).
#[cfg(feature = "hub")]
pub fn hub_file(repo: &str, file: &str, offline: bool) -> Result<std::path::PathBuf> {
    HubRepo::open(repo, offline)?.file(file)
}

/// Fetches an exported model (`config.json`, `model.safetensors`, and its card when there) from
/// the Hugging Face hub repository `repo` (`owner/name`, optionally `@revision`) into the local
/// hub cache, and returns the folder that holds them, ready for [`load`]. With `HF_HUB_OFFLINE`
/// set only the cache is read.
#[cfg(feature = "hub")]
pub fn fetch(repo: &str) -> Result<std::path::PathBuf> {
    fetch_from(repo, gaze_data::mnist::hub_offline())
}

/// [`fetch`] with the offline switch given rather than read from the environment.
#[cfg(feature = "hub")]
pub fn fetch_from(repo: &str, offline: bool) -> Result<std::path::PathBuf> {
    let hub = HubRepo::open(repo, offline)?;
    let mut dir = None;
    for (file, needed) in [("config.json", true), ("model.safetensors", true), ("README.md", false)] {
        match hub.file(file) {
            Ok(path) => dir = path.parent().map(Path::to_path_buf),
            Err(e) if needed => {
                return Err(TrainError::Other(format!("{e}; an exported folder on disk runs the same way")))
            }
            Err(_) => {}
        }
    }
    dir.ok_or_else(|| TrainError::Other(format!("{repo}: the hub gave no folder")))
}

/// An exported model, ready to run.
pub struct Exported {
    /// Its card.
    pub card: Card,
    /// The model with its parameters.
    pub built: Built,
}

/// Loads an exported folder: the card, then the model built from it with every parameter read
/// from `model.safetensors` as a checkpoint's are (a missing or misshapen one is an error naming
/// it).
pub fn load(dir: &Path, device: &Device) -> Result<Exported> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let card: Card = serde_json::from_str(&text).map_err(|e| TrainError::Other(format!("{}: {e}", path.display())))?;
    if card.format != FORMAT {
        return Err(TrainError::Other(format!(
            "{}: format `{}`, this gaze reads `{FORMAT}`",
            path.display(),
            card.format
        )));
    }
    let built = build_model(&card.experiment, &card.shape(), device)?;
    let weights = dir.join("model.safetensors");
    let loaded = crate::checkpoint::load(&weights, device)?;
    crate::checkpoint::restore_vars(&built.vars, &loaded, &weights)?;
    Ok(Exported { card, built })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_told_from_folders() {
        assert!(is_hub_id("someone/mnist-ram") && is_hub_id("someone/mnist-ram@v1"));
        for not in ["runs/x/y", "/abs/path", "one", "a/", "/b", "../x", "a b/c"] {
            assert!(!is_hub_id(not), "{not}");
        }
        let dir = tempfile::tempdir().ok();
        let here = dir.as_ref().map(|d| d.path().display().to_string()).unwrap_or_default();
        assert!(!is_hub_id(&here), "an existing folder is a folder");
    }

    #[cfg(feature = "hub")]
    #[test]
    fn offline_a_model_not_in_the_cache_is_an_error_naming_it() {
        let e = fetch_from("gaze-no-such-owner/no-such-model", true).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("gaze-no-such-owner/no-such-model") && e.contains("config.json"), "{e}");
    }
}

//! The training loop: epochs of seeded shuffled batches, named loss terms, checkpoints, resume,
//! evaluation, and the run folder that records it all.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, D};
use serde::{Deserialize, Serialize};

use gaze_data::{Batcher, LabeledImages};
use gaze_tensor::{Seed, SeededVarMap};
use gaze_zoo::{Batch, Model};

use crate::checkpoint::{self, TrainState};
use crate::config::{ExperimentConfig, Schedule};
use crate::data::{self, Examples, Prepared};
use crate::error::{Result, TrainError};
use crate::optim::{scheduled_lr, Optimizer};
use crate::shard;

/// How to run (beyond the experiment file).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Folder under which `<name>/<timestamp>-s<seed>/` is made (default `runs`).
    pub runs_root: Option<PathBuf>,
    /// Continue the run in this folder from its `checkpoints/last.safetensors`.
    pub resume: Option<PathBuf>,
    /// Stop (after saving the `last` checkpoint) once this many global steps are done.
    pub stop_after_steps: Option<u64>,
    /// No progress bars.
    pub quiet: bool,
    /// Fault injection for tests: the `classify` term becomes NaN at this step.
    pub inject_nan_at_step: Option<u64>,
    /// The command that started the run, recorded in its summary.
    pub command: Option<String>,
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    /// The experiment.
    pub name: String,
    /// The run folder.
    pub run_dir: PathBuf,
    /// Final metrics by name (`test_acc_pct`, `test_error_pct`, `val_acc_pct` ...).
    pub metrics: BTreeMap<String, f64>,
    /// Wall-clock seconds of the whole run (this process and any it resumed).
    pub wall_s: f64,
    /// Training examples per second (training steps only).
    pub samples_per_s: f64,
    /// Global steps done.
    pub steps: u64,
    /// Whether the run stopped before its last epoch (`stop_after_steps`).
    pub stopped_early: bool,
    /// Git revision of the code.
    pub git_rev: String,
    /// The command that started it.
    pub command: String,
    /// When it finished (UTC, RFC 3339).
    pub date: String,
    /// Where the data came from.
    pub data: String,
    /// Test-set means of the model's statistics (attention entropy per step ...).
    #[serde(default)]
    pub stats: BTreeMap<String, f64>,
    /// Test accuracy and cells kept per question kind (VQA).
    #[serde(default)]
    pub per_kind: BTreeMap<String, KindSummary>,
}

/// Test results for one question kind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

/// A model with its variables.
pub struct Built {
    /// The model.
    pub model: Box<dyn Model>,
    /// Its parameters.
    pub vars: SeededVarMap,
}

/// Builds the model of `cfg` for data of `shape`, parameters from `seed.stream("init")`.
pub fn build_model(cfg: &ExperimentConfig, shape: &gaze_zoo::DataShape, device: &Device) -> Result<Built> {
    let vars = SeededVarMap::new(Seed(cfg.seed).stream("init"));
    let model = gaze_zoo::build(&cfg.model, shape, vars.builder(device))?;
    Ok(Built { model, vars })
}

/// The git revision of the working tree (`+dirty` when it has changes), or `unknown`. The
/// results table (`experiments/RESULTS.md`) is left out of the check: finished experiments write
/// it, so a run started while another one's row is not yet committed is not marked dirty.
pub fn git_rev() -> String {
    git_rev_in(Path::new("."))
}

/// [`git_rev`] of the repository holding `dir`.
pub fn git_rev_in(dir: &Path) -> String {
    let out = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match out(&["rev-parse", "--short=10", "HEAD"]) {
        Some(rev) => {
            let status = [
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":(top)",
                ":(top,exclude)experiments/RESULTS.md",
            ];
            if out(&status).is_some_and(|s| !s.is_empty()) {
                format!("{rev}+dirty")
            } else {
                rev
            }
        }
        None => "unknown".into(),
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ` (UTC), without a date crate.
pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil-from-days (H. Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
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

/// A training batch whose images are shifted by up to `max` pixels each way (uniform per image,
/// drawn from `rng`), zeros filling in.
pub fn shifted_batch(
    set: &LabeledImages,
    idx: &[usize],
    max: usize,
    rng: &mut gaze_tensor::seed::Rng,
    device: &Device,
) -> Result<Batch> {
    use rand::Rng as _;
    let (h, w) = (set.rows, set.cols);
    let m = max as i64;
    let mut shifted = LabeledImages {
        rows: h,
        cols: w,
        pixels: Vec::with_capacity(idx.len() * h * w),
        labels: Vec::with_capacity(idx.len()),
    };
    for &i in idx {
        let src = set.image(i).ok_or_else(|| TrainError::Other(format!("image {i} of {}", set.len())))?;
        let (dy, dx) = (rng.random_range(-m..=m), rng.random_range(-m..=m));
        for y in 0..h as i64 {
            for x in 0..w as i64 {
                let (sy, sx) = (y - dy, x - dx);
                let v = if sy < 0 || sx < 0 || sy >= h as i64 || sx >= w as i64 {
                    0
                } else {
                    src[(sy as usize) * w + sx as usize]
                };
                shifted.pixels.push(v);
            }
        }
        shifted.labels.push(set.labels[i]);
    }
    Examples::Images { set: shifted, centres: vec![] }.batch(&(0..idx.len()).collect::<Vec<_>>(), device)
}

/// Accuracy, mean loss per term and every prediction of `model` on `set`.
pub struct Evaluation {
    /// Percent correct (answers outside the training answer set count as wrong).
    pub acc_pct: f64,
    /// Mean total loss.
    pub loss: f64,
    /// Mean of each term.
    pub terms: BTreeMap<String, f64>,
    /// The predicted class of each row (image, or question in example order).
    pub predictions: Vec<u32>,
    /// Mean of each statistic the model reports (attention entropy per step ...).
    pub stats: BTreeMap<String, f64>,
    /// Accuracy per question kind (VQA).
    pub by_kind: BTreeMap<String, Tally>,
    /// Accuracy on relational and non-relational questions (VQA).
    pub relational: (Tally, Tally),
    /// Questions whose true answer is outside the training answer set.
    pub unknown_answers: u64,
    /// Mean percent of grid cells kept per question kind (hard attention).
    pub kept_by_kind: BTreeMap<String, f64>,
    /// Per question kind (hard attention, questions with focus objects): the tallies of the
    /// questions whose every focus object's centre cell was kept, and of the others.
    pub focus_by_kind: BTreeMap<String, (Tally, Tally)>,
    /// Glimpse models on images whose digit position is known: the tallies of the images where
    /// the finest patch of a glimpse after the first covered the digit's centre
    /// ([`glimpse_covers`]), and of the others.
    pub digit_glimpsed: (Tally, Tally),
    /// Rows per second of the forward passes alone.
    pub samples_per_s: f64,
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

/// Whether the grid cells (a (rows, cols) 0/1 mask) holding every point (x, y), given as
/// fractions of the image's width and height, are kept.
pub fn focus_cells_kept(mask: &[Vec<f32>], points: &[(f32, f32)]) -> bool {
    let (rows, cols) = (mask.len(), mask.first().map_or(0, Vec::len));
    let cell = |f: f32, n: usize| ((f.clamp(0.0, 1.0) * n as f32) as usize).min(n.saturating_sub(1));
    points
        .iter()
        .all(|&(x, y)| mask.get(cell(y, rows)).and_then(|row| row.get(cell(x, cols))).is_some_and(|&v| v > 0.5))
}

/// Evaluates `model` on `set` in batches (eval mode, draws from `seed`).
pub fn evaluate(model: &dyn Model, set: &Examples, batch: usize, seed: Seed, device: &Device) -> Result<Evaluation> {
    let mut rng = seed.rng();
    let (mut loss, mut terms, mut preds) = (0f64, BTreeMap::new(), Vec::with_capacity(set.rows()));
    let mut stats: BTreeMap<String, f64> = BTreeMap::new();
    let (mut all, mut by_kind, mut rel, mut nonrel) =
        (Tally::default(), BTreeMap::new(), Tally::default(), Tally::default());
    let mut kept: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    let mut focus_by_kind: BTreeMap<String, (Tally, Tally)> = BTreeMap::new();
    let mut digit_glimpsed = (Tally::default(), Tally::default());
    let (mut unknown, mut forward_s) = (0u64, 0f64);
    // VQA examples carry ~10-20 questions each: batch by questions, not images.
    let per = if set.is_empty() { 1 } else { (set.rows() / set.len()).max(1) };
    let images_per_batch = (batch / per).max(1);
    for idx in Batcher::new((0..set.len()).collect(), images_per_batch, false)? {
        let b = set.batch(&idx, device)?;
        let info = set.row_info(&idx);
        let t0 = Instant::now();
        let out = model.forward(&b, false, &mut rng)?;
        let p = out.logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        forward_s += t0.elapsed().as_secs_f64();
        let t = b.targets.to_vec1::<u32>()?;
        let masks = match &out.attention {
            Some(gaze_zoo::AttentionMap::Cells { mask, .. }) => Some(mask.to_vec3::<f32>()?),
            _ => None,
        };
        let glimpses = match &out.attention {
            Some(gaze_zoo::AttentionMap::Glimpses { centres, sizes, .. }) => {
                let hw = (b.images.dim(2)?, b.images.dim(3)?);
                sizes.first().map(|&patch| (centres, patch, hw))
            }
            _ => None,
        };
        for (r, (pred, truth)) in p.iter().zip(&t).enumerate() {
            let ri = info.get(r);
            let known = ri.is_none_or(|i| i.known);
            let ok = known && pred == truth;
            unknown += u64::from(!known);
            let add = |tally: &mut Tally| {
                tally.total += 1;
                tally.correct += u64::from(ok);
            };
            add(&mut all);
            if let (Some((centres, patch, hw)), Some(&digit)) = (glimpses, ri.and_then(|i| i.focus.first())) {
                let path = centres.get(r).map_or(&[][..], Vec::as_slice);
                add(if glimpse_covers(path, patch, hw, digit) { &mut digit_glimpsed.0 } else { &mut digit_glimpsed.1 });
            }
            if let Some(i) = ri.filter(|i| !i.kind.is_empty()) {
                add(by_kind.entry(i.kind.clone()).or_default());
                add(if i.relational { &mut rel } else { &mut nonrel });
                if let Some(m) = masks.as_ref().and_then(|m| m.get(r)) {
                    if !i.focus.is_empty() {
                        let e = focus_by_kind.entry(i.kind.clone()).or_default();
                        add(if focus_cells_kept(m, &i.focus) { &mut e.0 } else { &mut e.1 });
                    }
                    let cells = m.iter().map(Vec::len).sum::<usize>().max(1);
                    let share = m.iter().flatten().sum::<f32>() / cells as f32;
                    let e = kept.entry(i.kind.clone()).or_insert((0.0, 0));
                    e.0 += 100.0 * f64::from(share);
                    e.1 += 1;
                }
            }
        }
        preds.extend(p);
        let n = t.len() as f64;
        loss += f64::from(out.total_loss()?.to_scalar::<f32>()?) * n;
        for (name, v) in &out.losses {
            *terms.entry(name.clone()).or_insert(0.0) += f64::from(v.to_scalar::<f32>()?) * n;
        }
        for (name, v) in &out.stats {
            *stats.entry(name.clone()).or_insert(0.0) += f64::from(v.to_scalar::<f32>()?) * n;
        }
    }
    let n = all.total.max(1) as f64;
    terms.values_mut().for_each(|v: &mut f64| *v /= n);
    stats.values_mut().for_each(|v: &mut f64| *v = round4(*v / n));
    Ok(Evaluation {
        acc_pct: all.pct(),
        loss: loss / n,
        terms,
        predictions: preds,
        stats,
        by_kind,
        relational: (rel, nonrel),
        unknown_answers: unknown,
        kept_by_kind: kept.into_iter().map(|(k, (s, c))| (k, round4(s / c.max(1) as f64))).collect(),
        focus_by_kind,
        digit_glimpsed,
        samples_per_s: all.total as f64 / forward_s.max(1e-9),
    })
}

fn append_jsonl(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| TrainError::io(path, e))?;
    writeln!(f, "{value}").map_err(|e| TrainError::io(path, e))
}

/// Drops metric lines written after `step` (they are redone after a resume).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    gaze_data::write_atomic(path, body.as_bytes()).map_err(TrainError::from)
}

/// The run's wall time before this process, from the state it resumes at (a new run: 0): the
/// checkpoint's count, or, from a checkpoint written before it kept one, the larger of a finished
/// run's summary and the training time alone (a lower bound: it leaves out evaluation).
fn wall_before(state: &TrainState, summary_wall_s: Option<f64>) -> f64 {
    if state.wall_seconds > 0.0 {
        state.wall_seconds
    } else {
        summary_wall_s.unwrap_or(0.0).max(state.train_seconds)
    }
}

/// A resume continues the run its folder recorded: the folder's `config.toml`, read with today's
/// defaults, must equal `cfg`, or the run would silently mix two configs. The error names the
/// first setting that differs.
fn check_resumed_config(cfg: &ExperimentConfig, run_dir: &Path) -> Result<()> {
    let path = run_dir.join("config.toml");
    if !path.is_file() {
        return Err(TrainError::Config {
            path,
            key: "-".into(),
            reason: "no such file: a run folder to resume records its config here".into(),
        });
    }
    let (was, now) = (ExperimentConfig::load(&path)?.to_toml()?, cfg.to_toml()?);
    if was == now {
        return Ok(());
    }
    // The first line that differs (when one config is the other plus lines: the first extra one),
    // and its dotted key, read as `config::key_at` reads a parse error's.
    let i = was.lines().zip(now.lines()).take_while(|(a, b)| a == b).count();
    let (a, b) = (was.lines().nth(i), now.lines().nth(i));
    let text = if a.is_some() { &was } else { &now };
    let (key, _) = crate::config::key_at(text, text.lines().take(i).map(|l| l.len() + 1).sum());
    let (a, b) = (a.unwrap_or("(nothing)"), b.unwrap_or("(nothing)"));
    Err(TrainError::Config {
        path,
        key,
        reason: format!(
            "the run was made with another config (`{}` there, `{}` in this one); resume it with the config it recorded",
            a.trim(),
            b.trim()
        ),
    })
}

/// Trains `cfg` and writes its run folder; returns the summary.
pub fn run(cfg: &ExperimentConfig, opts: &RunOptions) -> Result<RunSummary> {
    let started = Instant::now();
    if let Some(dir) = &opts.resume {
        check_resumed_config(cfg, dir)?;
    }
    let device = Device::Cpu;
    let seed = Seed(cfg.seed);
    let data = data::prepare(&cfg.data, seed)?;
    let run_dir = match &opts.resume {
        Some(d) => d.clone(),
        None => {
            let root = opts.runs_root.clone().unwrap_or_else(|| PathBuf::from("runs"));
            let stamp = now_utc().replace([':', '-'], "");
            let mut dir = root.join(&cfg.name).join(format!("{stamp}-s{}", cfg.seed));
            let mut k = 1;
            while dir.exists() {
                dir = root.join(&cfg.name).join(format!("{stamp}-s{}-{k}", cfg.seed));
                k += 1;
            }
            dir
        }
    };
    let ckpt_dir = run_dir.join("checkpoints");
    std::fs::create_dir_all(&ckpt_dir).map_err(|e| TrainError::io(&ckpt_dir, e))?;
    let metrics_path = run_dir.join("metrics.jsonl");
    let git = git_rev();
    let command = opts.command.clone().unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "));
    if opts.resume.is_none() {
        // The run records itself before step 1.
        gaze_data::write_atomic(&run_dir.join("config.toml"), cfg.to_toml()?.as_bytes())?;
        let info =
            serde_json::json!({ "git_rev": git, "command": command, "started": now_utc(), "data": data.description });
        gaze_data::write_atomic(&run_dir.join("run.json"), info.to_string().as_bytes())?;
    }

    let mut built = build_model(cfg, &data.shape(), &device)?;
    let trainable: Vec<_> = built.vars.sorted_vars().into_iter().filter(|(n, _)| !shard::is_running_stat(n)).collect();
    let mut opt = Optimizer::new(&cfg.optim, trainable)?;
    let last_path = ckpt_dir.join("last.safetensors");
    let best_path = ckpt_dir.join("best.safetensors");
    let mut st = TrainState { lr: cfg.optim.lr, best_val_acc: -1.0, ..TrainState::default() };
    if opts.resume.is_some() {
        let loaded = checkpoint::load(&last_path, &device)?;
        checkpoint::restore_vars(&built.vars, &loaded, &last_path)?;
        opt.load_state(&|k| loaded.tensors.get(k).cloned(), loaded.state.opt_t, loaded.state.lr)?;
        st = loaded.state;
        truncate_metrics(&metrics_path, st.step)?;
    }
    let summary_wall = std::fs::read_to_string(run_dir.join("summary.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<RunSummary>(&s).ok())
        .map(|s| s.wall_s);
    let wall_before = wall_before(&st, summary_wall);
    let wall_now = || wall_before + started.elapsed().as_secs_f64();

    let bs = cfg.train.batch_size;
    let train_idx: Vec<usize> = (0..data.train.len()).collect();
    let steps_per_epoch = train_idx.len().div_ceil(bs) as u64;
    let total_steps = steps_per_epoch * cfg.train.epochs as u64;
    let model = built.model.as_mut();
    let mut stopped_early = false;
    let shards = cfg.train.shards.max(1);
    shard::check_model(&cfg.name, shards, &built.vars.sorted_vars())?;

    'epochs: while st.epoch < cfg.train.epochs {
        let fresh = data.train_for_epoch(st.epoch, seed)?;
        let train_set = fresh.as_ref().unwrap_or(&data.train);
        let mut batches = Batcher::shuffled(train_idx.clone(), bs, false, seed.stream("shuffle"), st.epoch as u64)?;
        batches.skip_batches(st.batch_in_epoch);
        let bar = progress_bar(
            opts.quiet,
            steps_per_epoch,
            st.batch_in_epoch as u64,
            &format!("{} epoch {}/{}", cfg.name, st.epoch + 1, cfg.train.epochs),
        );
        for idx in batches {
            let t0 = Instant::now();
            // One shard: the whole batch, with the step's streams. More: consecutive parts of it,
            // each with its own sub-streams (see `shard`).
            let parts = shard::parts(&idx, shards);
            let sub = |s: Seed, j: usize| if shards == 1 { s } else { s.index(j as u64) };
            let mut shard_batches = Vec::with_capacity(parts.len());
            let mut rngs = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                shard_batches.push(match train_set.as_images() {
                    Some(images) if cfg.train.augment_shift > 0 => {
                        let mut aug = sub(seed.stream("augment").index(st.step), j).rng();
                        shifted_batch(images, part, cfg.train.augment_shift, &mut aug, &device)?
                    }
                    _ => train_set.batch(part, &device)?,
                });
                rngs.push(sub(seed.stream("sampling").index(st.step), j).rng());
            }
            model.set_progress(st.step as f64 / total_steps.max(1) as f64);
            let poison = opts.inject_nan_at_step == Some(st.step + 1);
            let passes = match shard::passes(&*model, &shard_batches, rngs, st.step + 1, poison) {
                Ok(p) => p,
                Err(e) => {
                    bar.abandon();
                    return Err(e);
                }
            };
            let term_values = shard::combined_terms(&passes);
            opt.lr = scheduled_lr(&cfg.optim, st.step, total_steps, steps_per_epoch, opt.lr);
            let info = opt.step_grads(shard::combined_grads(opt.vars(), &passes)?)?;
            let (mut correct, mut targets_len) = (0u64, 0usize);
            for (p, b) in passes.iter().zip(&shard_batches) {
                let preds = p.output.logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
                let targets = b.targets.to_vec1::<u32>()?;
                correct += preds.iter().zip(&targets).filter(|(a, b)| a == b).count() as u64;
                targets_len += targets.len();
            }
            let n = targets_len as u64;
            st.step += 1;
            st.batch_in_epoch += 1;
            st.opt_t = opt.t;
            st.lr = opt.lr;
            st.examples += n;
            st.train_seconds += t0.elapsed().as_secs_f64();
            let total: f64 = term_values.values().sum();
            st.partial.loss += total * n as f64;
            for (k, v) in &term_values {
                *st.partial.terms.entry(k.clone()).or_insert(0.0) += v * n as f64;
            }
            st.partial.correct += correct;
            st.partial.count += n;
            let sps = st.examples as f64 / st.train_seconds.max(1e-9);
            bar.set_position(st.batch_in_epoch as u64);
            bar.set_message(format!(
                "loss {:.4} acc {:.1}% {:.0} samples/s",
                st.partial.loss / st.partial.count as f64,
                100.0 * st.partial.correct as f64 / st.partial.count as f64,
                sps
            ));
            if st.step % cfg.train.log_every.max(1) == 0 {
                let stats = shard::combined_stats(&passes)?;
                append_jsonl(
                    &metrics_path,
                    &serde_json::json!({
                        "kind": "step", "step": st.step, "epoch": st.epoch, "loss": total, "terms": term_values,
                        "acc_pct": 100.0 * correct as f64 / n as f64, "lr": st.lr, "grad_norm": info.grad_norm,
                        "stats": stats,
                    }),
                )?;
            }
            if cfg.train.checkpoint_every > 0 && st.step % cfg.train.checkpoint_every == 0 {
                st.wall_seconds = wall_now();
                checkpoint::save(&last_path, &built.vars, Some(&opt), &st)?;
            }
            if opts.stop_after_steps.is_some_and(|s| st.step >= s) {
                st.wall_seconds = wall_now();
                checkpoint::save(&last_path, &built.vars, Some(&opt), &st)?;
                bar.abandon_with_message(format!("stopped after step {}", st.step));
                stopped_early = true;
                break 'epochs;
            }
        }
        bar.finish();
        // End of epoch: validate, schedule, record, checkpoint.
        let val = evaluate(&*model, &data.val, cfg.train.eval_batch_size, seed.stream("eval"), &device)?;
        let p = std::mem::take(&mut st.partial);
        let cnt = p.count.max(1) as f64;
        let improved = val.acc_pct > st.best_val_acc;
        if let Schedule::Plateau { patience, factor } = cfg.optim.schedule {
            st.plateau_bad = if improved { 0 } else { st.plateau_bad + 1 };
            if st.plateau_bad > patience {
                opt.lr *= factor;
                st.lr = opt.lr;
                st.plateau_bad = 0;
            }
        }
        let line = serde_json::json!({
            "kind": "epoch", "step": st.step, "epoch": st.epoch + 1,
            "train_loss": p.loss / cnt, "train_acc_pct": 100.0 * p.correct as f64 / cnt,
            "train_terms": p.terms.iter().map(|(k, v)| (k.clone(), v / cnt)).collect::<BTreeMap<_, _>>(),
            "val_loss": val.loss, "val_acc_pct": val.acc_pct, "val_stats": val.stats, "lr": st.lr,
            "samples_per_s": st.examples as f64 / st.train_seconds.max(1e-9),
        });
        append_jsonl(&metrics_path, &line)?;
        if !opts.quiet {
            eprintln!("epoch {}: train loss {:.4}, val acc {:.2}%", st.epoch + 1, p.loss / cnt, val.acc_pct);
        }
        st.epoch += 1;
        st.batch_in_epoch = 0;
        st.wall_seconds = wall_now();
        if improved {
            st.best_val_acc = val.acc_pct;
            checkpoint::save(&best_path, &built.vars, None, &st)?;
        }
        checkpoint::save(&last_path, &built.vars, Some(&opt), &st)?;
    }

    let mut metrics = BTreeMap::new();
    let mut test_stats = BTreeMap::new();
    let mut per_kind = BTreeMap::new();
    if !stopped_early {
        // Test the best-on-validation parameters.
        if best_path.is_file() {
            let loaded = checkpoint::load(&best_path, &device)?;
            checkpoint::restore_vars(&built.vars, &loaded, &best_path)?;
        }
        // The trained model, as `load_run` reads it back.
        model.set_progress(1.0);
        let val = evaluate(&*model, &data.val, cfg.train.eval_batch_size, seed.stream("eval"), &device)?;
        let test = evaluate(&*model, &data.test, cfg.train.eval_batch_size, seed.stream("eval"), &device)?;
        metrics.insert("val_acc_pct".to_string(), round4(val.acc_pct));
        metrics.insert("test_acc_pct".to_string(), round4(test.acc_pct));
        metrics.insert("test_error_pct".to_string(), round4(100.0 - test.acc_pct));
        metrics.insert("test_loss".to_string(), round4(test.loss));
        if !test.by_kind.is_empty() {
            let (rel, nonrel) = test.relational;
            if rel.total > 0 {
                metrics.insert("test_acc_rel_pct".to_string(), round4(rel.pct()));
                metrics.insert("test_acc_nonrel_pct".to_string(), round4(nonrel.pct()));
            }
            metrics.insert("test_unknown_answers".to_string(), test.unknown_answers as f64);
            metrics.insert("infer_samples_per_s".to_string(), test.samples_per_s.round());
            for key in ["cells_kept_pct", "head_mflops", "at_cap_pct"] {
                if let Some(v) = test.stats.get(key) {
                    metrics.insert(key.to_string(), *v);
                }
            }
        }
        if let Some((share, on, off)) = split_pcts(&test.digit_glimpsed) {
            metrics.insert("glimpsed_digit_pct".to_string(), share);
            for (key, acc) in [("test_acc_glimpsed_pct", on), ("test_acc_not_glimpsed_pct", off)] {
                if let Some(acc) = acc {
                    metrics.insert(key.to_string(), acc);
                }
            }
        }
        test_stats = test.stats.clone();
        for (kind, t) in &test.by_kind {
            let kept_pct = test.kept_by_kind.get(kind).copied();
            let focus = test.focus_by_kind.get(kind).and_then(split_pcts);
            per_kind.insert(
                kind.clone(),
                KindSummary {
                    acc_pct: round4(t.pct()),
                    questions: t.total,
                    kept_pct,
                    focus_kept_pct: focus.map(|(share, _, _)| share),
                    acc_focus_kept_pct: focus.and_then(|(_, kept, _)| kept),
                    acc_focus_missed_pct: focus.and_then(|(_, _, missed)| missed),
                },
            );
        }
        crate::report::pictures(&*model, &data, &test, cfg, &run_dir, &device)?;
        // Leave `last` as the final parameters of training, as saved at the last epoch end.
    }
    let summary = RunSummary {
        name: cfg.name.clone(),
        run_dir: run_dir.clone(),
        metrics,
        wall_s: round4(wall_now()),
        samples_per_s: round4(st.examples as f64 / st.train_seconds.max(1e-9)),
        steps: st.step,
        stopped_early,
        git_rev: git,
        command,
        date: now_utc(),
        data: data.description.clone(),
        stats: test_stats,
        per_kind,
    };
    let json = serde_json::to_string_pretty(&summary).map_err(|e| TrainError::Other(e.to_string()))?;
    gaze_data::write_atomic(&run_dir.join("summary.json"), json.as_bytes())?;
    if !stopped_early {
        crate::report::write(cfg, &summary, &run_dir)?;
    }
    Ok(summary)
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn progress_bar(quiet: bool, len: u64, pos: u64, prefix: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix.to_string());
    bar.set_position(pos);
    bar
}

/// Loads a run's config and best (else last) parameters, for `eval` and `infer`.
pub fn load_run(run_dir: &Path, device: &Device) -> Result<(ExperimentConfig, Prepared, Built)> {
    let cfg = ExperimentConfig::load(&run_dir.join("config.toml"))?;
    let data = data::prepare(&cfg.data, Seed(cfg.seed))?;
    let mut built = build_model(&cfg, &data.shape(), device)?;
    built.model.set_progress(1.0);
    let best = run_dir.join("checkpoints/best.safetensors");
    let path = if best.is_file() { best } else { run_dir.join("checkpoints/last.safetensors") };
    let loaded = checkpoint::load(&path, device)?;
    checkpoint::restore_vars(&built.vars, &loaded, &path)?;
    Ok((cfg, data, built))
}

/// The softmax probabilities of one image batch (b, c, h, w) -> (b, classes), and the model output.
pub fn predict(model: &dyn Model, images: &Tensor, seed: Seed) -> Result<(Vec<Vec<f32>>, gaze_zoo::Output)> {
    let b = images.dim(0)?;
    let targets = Tensor::zeros(b, candle_core::DType::U32, images.device())?;
    let out = model.forward(&Batch::images(images.clone(), targets), false, &mut seed.rng())?;
    let probs = candle_nn::ops::softmax(&out.logits, D::Minus1)?.to_vec2::<f32>()?;
    Ok((probs, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_run_counts_the_wall_time_before_it() {
        let fresh = TrainState::default();
        assert_eq!(wall_before(&fresh, None), 0.0);
        let kept = TrainState { wall_seconds: 1234.5, train_seconds: 1000.0, ..TrainState::default() };
        assert_eq!(wall_before(&kept, Some(99.0)), 1234.5);
        // A checkpoint from before `wall_seconds`: the training time is a lower bound.
        let old = TrainState { train_seconds: 1000.0, ..TrainState::default() };
        assert_eq!(wall_before(&old, None), 1000.0);
        assert_eq!(wall_before(&old, Some(1500.0)), 1500.0);
    }

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

    #[test]
    fn focus_cells_are_found_by_their_centres() {
        // a 2x3 grid keeping the top-left and bottom-right cells
        let mask = vec![vec![1.0, 0.0, 0.0], vec![0.0, 0.0, 1.0]];
        assert!(focus_cells_kept(&mask, &[(0.1, 0.2)]));
        assert!(focus_cells_kept(&mask, &[(0.1, 0.2), (0.9, 0.9)]));
        assert!(!focus_cells_kept(&mask, &[(0.1, 0.2), (0.5, 0.9)]), "the bottom-middle cell is dropped");
        assert!(!focus_cells_kept(&mask, &[(0.9, 0.2)]), "top-right is dropped");
        // edges and points outside the image fall in the border cells
        assert!(focus_cells_kept(&mask, &[(1.0, 1.0), (-0.5, 0.0)]));
        assert!(focus_cells_kept(&mask, &[]), "no focus: nothing to miss");
    }

    #[test]
    fn git_rev_is_dirty_for_code_changes_but_not_for_the_results_table() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let git = |args: &[&str]| -> anyhow::Result<()> {
            let ok = std::process::Command::new("git").arg("-C").arg(dir.path()).args(args).output()?.status.success();
            anyhow::ensure!(ok, "git {args:?} failed");
            Ok(())
        };
        git(&["init", "-q"])?;
        std::fs::create_dir(dir.path().join("experiments"))?;
        std::fs::write(dir.path().join("experiments/RESULTS.md"), "| a |\n")?;
        std::fs::write(dir.path().join("model.rs"), "fn f() {}\n")?;
        git(&["add", "."])?;
        git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one"])?;
        let clean = git_rev_in(dir.path());
        assert!(clean.len() == 10 && !clean.contains("dirty"), "{clean}");
        std::fs::write(dir.path().join("experiments/RESULTS.md"), "| a |\n| b |\n")?;
        assert_eq!(git_rev_in(&dir.path().join("experiments")), clean, "a new results row is not a code change");
        std::fs::write(dir.path().join("model.rs"), "fn g() {}\n")?;
        assert_eq!(git_rev_in(&dir.path().join("experiments")), format!("{clean}+dirty"));
        Ok(())
    }

    #[test]
    fn shifts_move_the_digit_and_keep_its_ink() -> Result<()> {
        let set = LabeledImages {
            rows: 4,
            cols: 4,
            pixels: (0..16).map(|i| if i == 5 { 200 } else { 0 }).collect(),
            labels: vec![3],
        };
        let mut seen = std::collections::HashSet::new();
        for s in 0..40 {
            let b = shifted_batch(&set, &[0], 1, &mut Seed(s).rng(), &Device::Cpu)?;
            let px = b.images.flatten_all()?.to_vec1::<f32>()?;
            let on: Vec<usize> = (0..16).filter(|&i| px[i] > 0.0).collect();
            assert_eq!(on.len(), 1, "the one pixel stays inside a 1-pixel shift");
            let (y, x) = (on[0] / 4, on[0] % 4);
            assert!(y.abs_diff(1) <= 1 && x.abs_diff(1) <= 1);
            seen.insert(on[0]);
            assert_eq!(b.targets.to_vec1::<u32>()?, vec![3]);
        }
        assert!(seen.len() >= 7, "shifts vary: {seen:?}");
        Ok(())
    }
}

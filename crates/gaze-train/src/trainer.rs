//! The run loop: epochs of seeded shuffled batches, named loss terms, checkpoints and resume, a
//! validation pass per epoch ([`crate::evaluate`]), and the run folder that records it all
//! ([`crate::record`], [`crate::report`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;

use gaze_data::Batcher;
use gaze_tensor::{Seed, SeededVarMap};
use gaze_zoo::{Mode, Model, Search, Targets};

use crate::checkpoint::{self, TrainState};
use crate::config::{ExperimentConfig, Schedule};
use crate::data::{self, Prepared};
use crate::error::{Result, TrainError};
use crate::evaluate::{evaluate, top_classes};
use crate::metrics::{self, class_right, round4, Task};
use crate::optim::{scheduled_lr, Optimizer};
use crate::record::{git_rev, now_utc, RunSummary};
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

/// The revision a resumed run reports: the one it started at (its `run.json`), and the one that
/// resumes it when they differ ("START (resumed at NOW)"), so a results row never names only code
/// that trained part of the run. Each resume at a new revision is also appended to `run.json`.
fn resumed_revision(run_dir: &Path, now: &str) -> Result<String> {
    let path = run_dir.join("run.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(now.to_string()) };
    let mut info: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| TrainError::Other(format!("{}: {e}", path.display())))?;
    let started = info.get("git_rev").and_then(|v| v.as_str()).unwrap_or(now).to_string();
    let first = started.split_whitespace().next().unwrap_or(now).to_string();
    if first == now {
        return Ok(now.to_string());
    }
    if let Some(obj) = info.as_object_mut() {
        let resumed = obj.entry("resumed_at").or_insert_with(|| serde_json::json!([]));
        if let Some(list) = resumed.as_array_mut() {
            if list.last().and_then(|v| v.get("git_rev")).and_then(|v| v.as_str()) != Some(now) {
                list.push(serde_json::json!({ "git_rev": now, "at": now_utc() }));
                gaze_data::write_atomic(&path, info.to_string().as_bytes())?;
            }
        }
    }
    Ok(format!("{first} (resumed at {now})"))
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
    // Targets do not change what a run computes: a resume may bring others.
    let (was, now) = (ExperimentConfig::load(&path)?.without_targets().to_toml()?, cfg.without_targets().to_toml()?);
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

/// Adds the checkpoint a run started from to its `run.json`.
fn note_init_from(run_dir: &Path, file: &Path) -> Result<()> {
    let path = run_dir.join("run.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let mut info: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| TrainError::Other(format!("{}: {e}", path.display())))?;
    if let Some(obj) = info.as_object_mut() {
        obj.insert("init_from".into(), serde_json::json!(file.display().to_string()));
    }
    gaze_data::write_atomic(&path, info.to_string().as_bytes()).map_err(TrainError::from)
}

/// A resume continues on the data the run recorded (`data.json`; a run made before runs recorded
/// their data is not checked): another data set, or other digits in the same folder, is an error
/// naming the split that differs and both sources.
fn check_resumed_data(now: &data::DataRecord, run_dir: &Path) -> Result<()> {
    let Some(was) = data::DataRecord::load(run_dir)? else { return Ok(()) };
    let pairs = [("train", &was.sha256.train, &now.sha256.train), ("val", &was.sha256.val, &now.sha256.val)];
    if let Some((split, _, _)) = pairs.iter().find(|(_, a, b)| a != b) {
        return Err(TrainError::Other(format!(
            "{}: the run was trained on {}, but its {split} split now reads differently ({}); resume it with the \
             data it recorded (`--data-dir` for an IDX folder)",
            run_dir.join(data::DATA_RECORD).display(),
            was.description,
            now.description
        )));
    }
    was.check_same_test(now, run_dir)
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
    data.check()?;
    let (_, h, w) = data.input;
    if cfg.train.augment_shift > 0 && 2 * cfg.train.augment_shift >= h.min(w) {
        return Err(TrainError::Config {
            path: PathBuf::from(&cfg.name),
            key: "train.augment_shift".into(),
            reason: format!("{} pixels moves a {h}x{w} image out of view", cfg.train.augment_shift),
        });
    }
    let record = data.record();
    if let Some(dir) = &opts.resume {
        check_resumed_data(&record, dir)?;
    }
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
    let mut git = git_rev();
    let command = opts.command.clone().unwrap_or_else(|| {
        // The data folder is part of how the run was made: say it as the shell would.
        let args = std::env::args().collect::<Vec<_>>().join(" ");
        match std::env::var_os(gaze_data::mnist::DATA_DIR_ENV).filter(|d| !d.is_empty()) {
            Some(d) => format!("{}={} {args}", gaze_data::mnist::DATA_DIR_ENV, d.to_string_lossy()),
            None => args,
        }
    });
    if opts.resume.is_none() {
        // The run records itself before step 1.
        gaze_data::write_atomic(&run_dir.join("config.toml"), cfg.to_toml()?.as_bytes())?;
        let info =
            serde_json::json!({ "git_rev": git, "command": command, "started": now_utc(), "data": data.description });
        gaze_data::write_atomic(&run_dir.join("run.json"), info.to_string().as_bytes())?;
    }
    if opts.resume.is_none() || !run_dir.join(data::DATA_RECORD).is_file() {
        record.save(&run_dir)?;
    }

    let built = build_model(cfg, &data.shape(), &device)?;
    if opts.resume.is_none() {
        for (prefix, source) in built.model.pretrained() {
            let done = crate::pretrained::load(&built.vars, &prefix, &source, &device)?;
            if !opts.quiet {
                eprintln!(
                    "loaded {} parameters `{prefix}*` from {} ({} of its tensors unused)",
                    done.filled,
                    done.file.display(),
                    done.unused
                );
            }
        }
    }
    if let (Some(from), None) = (&cfg.train.init_from, &opts.resume) {
        let root = opts.runs_root.clone().unwrap_or_else(|| PathBuf::from("runs"));
        let from = from.resolve(&root).map_err(TrainError::Other)?;
        let done = checkpoint::init_from(&built.vars, &from, &device)?;
        note_init_from(&run_dir, &done.file)?;
        if !opts.quiet {
            eprintln!(
                "initialised {} of {} parameters from {}{}",
                done.copied.len(),
                done.copied.len() + done.kept.len(),
                done.file.display(),
                if done.kept.is_empty() {
                    String::new()
                } else {
                    let kept: Vec<String> = done.kept.iter().map(|(n, why)| format!("{n} ({why})")).collect();
                    format!("; seeded as usual: {}", kept.join(", "))
                }
            );
        }
    }
    let frozen = built.model.frozen();
    let trainable: Vec<_> = built
        .vars
        .sorted_vars()
        .into_iter()
        .filter(|(n, _)| !shard::is_running_stat(n) && !frozen.iter().any(|p| n.starts_with(p.as_str())))
        .collect();
    let mut opt = Optimizer::new(&cfg.optim, trainable)?;
    let last_path = ckpt_dir.join("last.safetensors");
    let best_path = ckpt_dir.join("best.safetensors");
    let mut st = TrainState { lr: cfg.optim.lr, ..TrainState::default() };
    let task = data.val.task();
    let select = cfg.train.select.clone().unwrap_or_else(|| task.main_metric().to_string());
    let higher = metrics::higher_is_better(&select);
    let eval_how = |progress: f64| (progress, cfg.train.decode, data.max_steps.max(1));
    if opts.resume.is_some() {
        // Temp files of writes a killed process never finished.
        let stale =
            gaze_data::remove_stale_temps(&run_dir) + gaze_data::remove_stale_temps(&run_dir.join("checkpoints"));
        if stale > 0 && !opts.quiet {
            eprintln!("removed {stale} unfinished temporary file(s) from {}", run_dir.display());
        }
        let loaded = checkpoint::load(&last_path, &device)?;
        checkpoint::restore_vars(&built.vars, &loaded, &last_path)?;
        opt.load_state(&|k| loaded.tensors.get(k).cloned(), loaded.state.opt_t, loaded.state.lr)?;
        st = loaded.state;
        truncate_metrics(&metrics_path, st.step)?;
        git = resumed_revision(&run_dir, &git)?;
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
    let model: &dyn Model = built.model.as_ref();
    let mut stopped_early = false;
    let shards = cfg.train.shards.max(1);
    shard::check_model(&cfg.name, shards, &built.vars.sorted_vars())?;
    // This sitting's speed, for the time estimates.
    let (sitting_step0, sitting_secs0) = (st.step, st.train_seconds);
    let mut estimate_said = false;

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
                let mut aug = sub(seed.stream("augment").index(st.step), j).rng();
                shard_batches.push(train_set.training_batch(part, cfg.train.augment_shift, &mut aug, &device)?);
                rngs.push(sub(seed.stream("sampling").index(st.step), j).rng());
            }
            let mode = Mode::train(st.step as f64 / total_steps.max(1) as f64);
            let poison = opts.inject_nan_at_step == Some(st.step + 1);
            let passes = match shard::passes(model, &shard_batches, rngs, mode, st.step + 1, poison) {
                Ok(p) => p,
                Err(e) => {
                    bar.abandon();
                    return Err(kept(e, &last_path));
                }
            };
            let term_values = shard::combined_terms(&passes);
            opt.lr = scheduled_lr(&cfg.optim, st.step, total_steps, steps_per_epoch, opt.lr);
            let info = match opt.step_grads(shard::combined_grads(opt.vars(), &passes)?) {
                Ok(info) => info,
                Err(e) => {
                    bar.abandon();
                    return Err(kept(e, &last_path));
                }
            };
            let (mut correct, mut targets_len) = (0u64, 0usize);
            for (p, b) in passes.iter().zip(&shard_batches) {
                let (c, n) = train_correct(&p.output, &b.targets)?;
                correct += c;
                targets_len += n;
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
            let per_step = (st.train_seconds - sitting_secs0) / (st.step - sitting_step0).max(1) as f64;
            let run_left = per_step * total_steps.saturating_sub(st.step) as f64;
            if !estimate_said && !opts.quiet && st.step - sitting_step0 == ESTIMATE_AFTER_STEPS {
                estimate_said = true;
                bar.println(format!(
                    "at {:.0} ms a step: about {} an epoch, {} of training left ({} steps; evaluation not counted)",
                    1e3 * per_step,
                    human_duration(per_step * steps_per_epoch as f64),
                    human_duration(run_left),
                    total_steps.saturating_sub(st.step)
                ));
            }
            bar.set_position(st.batch_in_epoch as u64);
            bar.set_message(format!(
                "loss {:.4} {} {:.1}% {:.0} samples/s, run ~{} left",
                st.partial.loss / st.partial.count as f64,
                if matches!(task, Task::Sequence { .. }) { "tokens right" } else { "acc" },
                100.0 * st.partial.correct as f64 / st.partial.count as f64,
                sps,
                human_duration(run_left)
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
        let progress = st.step as f64 / total_steps.max(1) as f64;
        let val =
            evaluate(model, &data.val, cfg.train.eval_batch_size, eval_how(progress), seed.stream("eval"), &device)?;
        let val_named = val.named("val");
        let value = *val_named.get(&select).ok_or_else(|| TrainError::Config {
            path: std::path::PathBuf::from(format!("experiments/{}.toml", cfg.name)),
            key: "train.select".into(),
            reason: format!(
                "`{select}` is not measured on this data; the validation metrics are {}",
                val_named.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })?;
        let p = std::mem::take(&mut st.partial);
        let cnt = p.count.max(1) as f64;
        let improved = st.best_value.is_none_or(|b| if higher { value > b } else { value < b });
        if let Schedule::Plateau { patience, factor } = cfg.optim.schedule {
            st.plateau_bad = if improved { 0 } else { st.plateau_bad + 1 };
            if st.plateau_bad > patience {
                opt.lr *= factor;
                st.lr = opt.lr;
                st.plateau_bad = 0;
            }
        }
        let mut line = serde_json::json!({
            "kind": "epoch", "step": st.step, "epoch": st.epoch + 1,
            "train_loss": p.loss / cnt, "train_acc_pct": 100.0 * p.correct as f64 / cnt,
            "train_terms": p.terms.iter().map(|(k, v)| (k.clone(), v / cnt)).collect::<BTreeMap<_, _>>(),
            "val_loss": val.loss, "val_stats": val.stats, "lr": st.lr,
            "samples_per_s": st.examples as f64 / st.train_seconds.max(1e-9),
        });
        if let Some(obj) = line.as_object_mut() {
            for (k, v) in val_named.iter().filter(|(k, _)| k.as_str() != "val_loss") {
                obj.insert(k.clone(), serde_json::json!(v));
            }
        }
        append_jsonl(&metrics_path, &line)?;
        if !opts.quiet {
            eprintln!("epoch {}: train loss {:.4}, {select} {value:.2}", st.epoch + 1, p.loss / cnt);
        }
        st.epoch += 1;
        st.batch_in_epoch = 0;
        st.wall_seconds = wall_now();
        if improved {
            st.best_value = Some(value);
            checkpoint::save(&best_path, &built.vars, None, &st)?;
        }
        checkpoint::save(&last_path, &built.vars, Some(&opt), &st)?;
    }

    let mut metrics = BTreeMap::new();
    let mut test_stats = BTreeMap::new();
    let mut per_kind = BTreeMap::new();
    if !stopped_early {
        // Test the best-on-validation parameters, as a trained model (progress 1, as `load_run`).
        if best_path.is_file() {
            let loaded = checkpoint::load(&best_path, &device)?;
            checkpoint::restore_vars(&built.vars, &loaded, &best_path)?;
        }
        let bs = cfg.train.eval_batch_size;
        let val = evaluate(model, &data.val, bs, eval_how(1.0), seed.stream("eval"), &device)?;
        let test = evaluate(model, &data.test, bs, eval_how(1.0), seed.stream("eval"), &device)?;
        if let Some(v) = val.named("val").get(&select) {
            metrics.insert(select.clone(), *v);
        }
        metrics.extend(test.named("test"));
        metrics.extend(test.measured.facts.clone());
        // Attention read off afterwards, graded as the trained maps are (models with a CNN).
        let cam = crate::evaluate::grad_cam_grounding(model, &data.test, bs, &device)?;
        metrics.extend(cam.scores.iter().map(|(k, v)| (format!("test_{k}"), *v)));
        // Models that attend at several layers: each layer's map graded alike, on validation
        // too (where the map to show can be chosen without reading the test split).
        for (split, set) in [("val", &data.val), ("test", &data.test)] {
            let layers = crate::evaluate::layer_grounding(model, set, bs, &device)?;
            metrics.extend(layers.scores.iter().map(|(k, v)| (format!("{split}_{k}"), *v)));
        }
        // Captions decoded by beam search are also read greedily, to show what the beam adds.
        if task == (Task::Sequence { bleu: true }) && cfg.train.decode != Search::Greedy {
            let how = (1.0, Search::Greedy, data.max_steps.max(1));
            let greedy = evaluate(model, &data.test, bs, how, seed.stream("eval"), &device)?;
            for (k, v) in greedy.named("test").into_iter().filter(|(k, _)| k.contains("bleu")) {
                metrics.insert(format!("{k}_greedy"), v);
            }
        }
        if task == Task::Answer {
            metrics.insert("infer_samples_per_s".to_string(), test.samples_per_s.round());
        }
        test_stats = test.stats.clone();
        per_kind = test.measured.per_kind.clone();
        crate::report::pictures(model, &data, &test, cfg, &run_dir, &device)?;
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

/// A divergence error told what is left to resume from: the last checkpoint written (every one
/// written holds finite values), or none.
fn kept(e: TrainError, last: &Path) -> TrainError {
    match e {
        TrainError::NonFinite { step, what, value, .. } => {
            let kept = match checkpoint::load(last, &Device::Cpu) {
                Ok(c) => format!("{} (step {}) is the last good checkpoint", last.display(), c.state.step),
                Err(_) => "with no checkpoint written yet".to_string(),
            };
            TrainError::NonFinite { step, what, value, kept }
        }
        other => other,
    }
}

/// Rows right in a training pass (classes, or tokens under teacher forcing) and rows counted.
fn train_correct(out: &gaze_zoo::Output, targets: &Targets) -> Result<(u64, usize)> {
    match targets {
        Targets::Classes(t) | Targets::Answers(t) => {
            let truth = t.to_vec1::<u32>()?;
            let right = top_classes(out)?
                .iter()
                .zip(&truth)
                .filter(|(p, &t)| class_right(p, &crate::metrics::Truth::Class(Some(t))))
                .count();
            Ok((right as u64, truth.len()))
        }
        Targets::Sequences { tokens, lengths } => {
            // The share of real tokens whose teacher-forced prediction is right, in rows' worth.
            let pred = out.scores.tensor().argmax(candle_core::D::Minus1)?.to_vec2::<u32>()?;
            let (truth, lens) = (tokens.to_vec2::<u32>()?, lengths.to_vec1::<u32>()?);
            let (mut right, mut total) = (0usize, 0usize);
            for ((p, t), &l) in pred.iter().zip(&truth).zip(&lens) {
                let l = l as usize;
                right += p.iter().zip(t).take(l).filter(|(a, b)| a == b).count();
                total += l;
            }
            let rows = lens.len();
            Ok(((right as f64 / total.max(1) as f64 * rows as f64).round() as u64, rows))
        }
    }
}

/// Steps timed before the first estimate of the epoch's and the run's time is printed.
const ESTIMATE_AFTER_STEPS: u64 = 20;

/// A duration for people: "45 s", "12 min", "2 h 05 min".
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=89 => format!("{s} s"),
        90..=5399 => format!("{} min", (s + 30) / 60),
        _ => {
            let m = (s + 30) / 60;
            format!("{} h {:02} min", m / 60, m % 60)
        }
    }
}

fn progress_bar(quiet: bool, len: u64, pos: u64, prefix: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed}, epoch ~{eta} left, {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix.to_string());
    bar.set_position(pos);
    bar
}

/// Loads a finished (or interrupted) run: its config, its data and its model with the `best`
/// checkpoint, or with `last` when `last` is asked for. A missing `best` is an error that says
/// so (training writes it after the first epoch), not a silent fall back to `last`. The data is
/// read again and must be the data the run recorded (its test split's checksum in `data.json`):
/// another source is an error naming both, unless `other_data` says it is meant. Returns the
/// config, the data, the model and the checkpoint read.
pub fn load_run(
    run_dir: &Path,
    last: bool,
    other_data: bool,
    device: &Device,
) -> Result<(ExperimentConfig, Prepared, Built, PathBuf)> {
    let cfg = ExperimentConfig::load(&run_dir.join("config.toml"))?;
    let path = checkpoint_of(run_dir, last)?;
    let data = data::prepare(&cfg.data, Seed(cfg.seed))?;
    if let (Some(was), false) = (data::DataRecord::load(run_dir)?, other_data) {
        was.check_same_test(&data.record(), run_dir)?;
    }
    let built = build_model(&cfg, &data.shape(), device)?;
    let loaded = checkpoint::load(&path, device)?;
    checkpoint::restore_vars(&built.vars, &loaded, &path)?;
    Ok((cfg, data, built, path))
}

/// Loads a run's model without its data: the config, what the run recorded of its data
/// (`data.json`: input size, class names, vocabulary), the model with the `best` (or `last`)
/// checkpoint, and that checkpoint's path. A run made before runs recorded their data reads its
/// data once to learn the same.
pub fn load_model(
    run_dir: &Path,
    last: bool,
    device: &Device,
) -> Result<(ExperimentConfig, data::DataRecord, Built, PathBuf)> {
    let cfg = ExperimentConfig::load(&run_dir.join("config.toml"))?;
    let path = checkpoint_of(run_dir, last)?;
    let record = match data::DataRecord::load(run_dir)? {
        Some(r) => r,
        None => data::prepare(&cfg.data, Seed(cfg.seed))?.record(),
    };
    let built = build_model(&cfg, &record.shape(), device)?;
    let loaded = checkpoint::load(&path, device)?;
    checkpoint::restore_vars(&built.vars, &loaded, &path)?;
    Ok((cfg, record, built, path))
}

/// The `best` (or `last`) checkpoint of a run; an error when it is missing.
fn checkpoint_of(run_dir: &Path, last: bool) -> Result<PathBuf> {
    let name = if last { "last" } else { "best" };
    let path = run_dir.join(format!("checkpoints/{name}.safetensors"));
    if !path.is_file() {
        return Err(TrainError::Other(format!(
            "{}: no {name} checkpoint{}",
            path.display(),
            if last { "" } else { " (the run ended before its first epoch?); --last reads the latest parameters" }
        )));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_resumed_at_another_revision_names_both() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let info = dir.path().join("run.json");
        std::fs::write(&info, r#"{"git_rev":"aaaa","command":"x"}"#)?;
        assert_eq!(resumed_revision(dir.path(), "aaaa")?, "aaaa");
        assert_eq!(resumed_revision(dir.path(), "bbbb")?, "aaaa (resumed at bbbb)");
        assert_eq!(resumed_revision(dir.path(), "bbbb")?, "aaaa (resumed at bbbb)");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&info)?)?;
        assert_eq!(v["git_rev"], "aaaa", "the start is kept");
        assert_eq!(v["resumed_at"].as_array().map(Vec::len), Some(1), "one entry per new revision: {v}");
        assert_eq!(v["resumed_at"][0]["git_rev"], "bbbb");
        // A run folder without run.json (made by hand) reports the current revision.
        assert_eq!(resumed_revision(&dir.path().join("none"), "cccc")?, "cccc");
        Ok(())
    }

    #[test]
    fn durations_read_as_seconds_minutes_or_hours() {
        assert_eq!(human_duration(0.4), "0 s");
        assert_eq!(human_duration(89.0), "89 s");
        assert_eq!(human_duration(90.0), "2 min");
        assert_eq!(human_duration(1799.0), "30 min");
        assert_eq!(human_duration(5400.0), "1 h 30 min");
        assert_eq!(human_duration(7265.0), "2 h 01 min");
        assert_eq!(human_duration(-3.0), "0 s");
    }

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
}

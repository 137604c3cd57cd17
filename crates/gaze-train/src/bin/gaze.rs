//! The `gaze` binary: train, evaluate, run on an image, and show a run.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{Device, Tensor};
use clap::{Parser, Subcommand};
use gaze_data::Image;
use gaze_tensor::Seed;
use gaze_train::evaluate::{evaluate, predict};
use gaze_train::{export, report, trainer, ExperimentConfig, RunOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "gaze", about = "Train visual-attention models and see where they look")]
struct Cli {
    /// CPU threads (default: the experiment's `train.threads`, else all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Folder of the four MNIST IDX files (sets GAZE_DATA_DIR for this command; recorded with a run).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// A split of a run's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Split {
    /// The validation split.
    Val,
    /// The test split.
    Test,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train an experiment file; writes runs/<name>/<timestamp>-s<seed>/.
    Train {
        /// The experiment file.
        config: Option<PathBuf>,
        /// Continue the run in this folder from its last checkpoint.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Folder for runs.
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
        /// Train with this seed instead of the experiment's (every random draw follows it; the
        /// run folder ends in -s<seed>): for the spread of a result over seeds.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Evaluate a run's best checkpoint on its test set (or, with `--split val`, its validation set).
    Eval {
        /// The run folder.
        run: PathBuf,
        /// Read the `last` checkpoint (the latest parameters) instead of `best`.
        #[arg(long)]
        last: bool,
        /// Evaluate on the data as it reads now even when it is not the data the run recorded
        /// (by default that is refused: the scores would be of other data).
        #[arg(long)]
        other_data: bool,
        /// The split to score: `test`, or `val` to compare settings without reading the test
        /// split (every measure the test split gets, grounding included).
        #[arg(long, value_enum, default_value_t = Split::Test)]
        split: Split,
    },
    /// Classify an image (or, for a sequence model, read it: a caption, digits) with a run's
    /// model and write a picture of where it looked (one per word for a sequence).
    Infer {
        /// The run folder, a folder written by `gaze export`, or (built with the `hub` feature) a
        /// Hugging Face hub repository holding one (`OWNER/NAME`, optionally `@REVISION`).
        run: PathBuf,
        /// The image (PNG); resized to the model's input.
        image: PathBuf,
        /// Where to write the overlay (default: <image>.attention.png).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Read the `last` checkpoint instead of `best`.
        #[arg(long)]
        last: bool,
        /// For a VQA run: the question to answer about the image.
        #[arg(long)]
        question: Option<String>,
        /// Also write Grad-CAM of the predicted class (models with a CNN) to <image>.gradcam.png:
        /// attention read off the trained network, beside the model's own.
        #[arg(long)]
        gradcam: bool,
    },
    /// Write a trained model where another user can run it without its data: model.safetensors,
    /// config.json (the experiment, input size, class names or vocabulary, metrics) and a
    /// README.md model card, as model repositories on the Hugging Face hub lay them out.
    Export {
        /// The run folder.
        run: PathBuf,
        /// The folder to write.
        dir: PathBuf,
        /// Export the `last` checkpoint instead of `best`.
        #[arg(long)]
        last: bool,
    },
    /// Compare runs: the settings in which their configs differ, their metrics side by side, and
    /// their validation curves in one chart.
    Compare {
        /// Two or more run folders.
        #[arg(num_args = 2.., required = true)]
        runs: Vec<PathBuf>,
        /// Where to draw the curves (PNG).
        #[arg(long, default_value = "compare.png")]
        out: PathBuf,
    },
    /// Print a run's summary and the files it wrote.
    Show {
        /// The run folder.
        run: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    gaze_train::keep_freed_memory();
    let cli = Cli::parse();
    if let Some(d) = &cli.data_dir {
        #[allow(unsafe_code)]
        // Safe: set before any thread is spawned.
        unsafe {
            std::env::set_var(gaze_data::mnist::DATA_DIR_ENV, d);
        }
    }
    let device = Device::Cpu;
    match cli.cmd {
        Cmd::Train { config, resume, runs, quiet, seed } => {
            let path = match (&config, &resume) {
                (Some(c), _) => c.clone(),
                (None, Some(r)) => r.join("config.toml"),
                (None, None) => anyhow::bail!("give an experiment file, or --resume RUN_DIR"),
            };
            let mut cfg = ExperimentConfig::load(&path)?;
            if let Some(s) = seed {
                cfg.seed = s;
            }
            gaze_train::set_threads(cli.threads.unwrap_or(cfg.train.threads));
            let opts = RunOptions { runs_root: Some(runs), resume, quiet, ..RunOptions::default() };
            let s = gaze_train::run(&cfg, &opts)?;
            println!("{}", serde_json::to_string_pretty(&s.metrics)?);
            println!("run: {}", s.run_dir.display());
        }
        Cmd::Eval { run, last, other_data, split } => {
            gaze_train::set_threads(cli.threads.unwrap_or(0));
            let (cfg, data, built, checkpoint) = trainer::load_run(&run, last, other_data, &device)?;
            println!("checkpoint: {}", checkpoint.display());
            let how = (1.0, cfg.train.decode, data.max_steps.max(1));
            let (name, set) = match split {
                Split::Test => ("test", &data.test),
                Split::Val => ("val", &data.val),
            };
            let e = evaluate(
                built.model.as_ref(),
                set,
                cfg.train.eval_batch_size,
                how,
                Seed(cfg.seed).stream("eval"),
                &device,
            )?;
            match (e.score("acc_pct"), e.score("sequence_error_pct")) {
                (_, Some(err)) if e.score("bleu4").is_some() => println!(
                    "{}: {name} BLEU-4 {:.2} (captions unlike every reference {err:.2}%), loss {:.4}, on {}",
                    cfg.name,
                    e.score("bleu4").unwrap_or_default(),
                    e.loss,
                    data.description
                ),
                (Some(acc), _) => println!(
                    "{}: {name} accuracy {acc:.2}% (error {:.2}%), loss {:.4}, on {}",
                    cfg.name,
                    100.0 - acc,
                    e.loss,
                    data.description
                ),
                (None, Some(err)) => {
                    println!(
                        "{}: {name} sequence error {err:.2}%, loss {:.4}, on {}",
                        cfg.name, e.loss, data.description
                    )
                }
                _ => println!("{}: {name} loss {:.4}, on {}", cfg.name, e.loss, data.description),
            }
            for (k, v) in e.named(name).iter().chain(&e.measured.facts) {
                println!("  {k:<28} {v}");
            }
            if !e.loss.is_finite() {
                anyhow::bail!(
                    "{}: the {name} loss is {} with these parameters: the run diverged before this checkpoint was \
                     written; its figures mean nothing",
                    checkpoint.display(),
                    e.loss
                );
            }
            if let gaze_train::data::Examples::Images { set, .. } = set {
                if let Some(c) = report::Confusion::of_images(set, &e.predictions, data.classes)? {
                    print!("{}", c.describe(&data.class_names));
                }
            }
            if !e.measured.per_kind.is_empty() {
                println!("per question kind (accuracy %, questions, cells kept %, focus kept %, accuracy focus kept / missed %):");
                let pct = |p: Option<f64>| p.map_or("-".into(), |p| format!("{p:.1}"));
                for (kind, k) in &e.measured.per_kind {
                    println!(
                        "  {kind:<14} {:>6.2} {:>6} {:>6} {:>6} {:>6} / {}",
                        k.acc_pct,
                        k.questions,
                        pct(k.kept_pct),
                        pct(k.focus_kept_pct),
                        pct(k.acc_focus_kept_pct),
                        pct(k.acc_focus_missed_pct)
                    );
                }
            }
        }
        Cmd::Infer { run, image, out, last, question, gradcam } => {
            gaze_train::set_threads(cli.threads.unwrap_or(0));
            let out = out.unwrap_or_else(|| image.with_extension("attention.png"));
            let ask = Ask { image: &image, out: &out, question, gradcam, device: &device };
            let run = match run.to_str().filter(|r| export::is_hub_id(r)) {
                #[cfg(feature = "hub")]
                Some(id) => export::fetch(id)?,
                #[cfg(not(feature = "hub"))]
                Some(id) => anyhow::bail!(
                    "{id} is not a folder here; as a Hugging Face hub repository it needs gaze built with the hub \
                     (`cargo run --release -p gaze-train --features hub --bin gaze -- infer {id} IMAGE`)"
                ),
                None => run,
            };
            if export::is_export(&run) {
                let e = export::load(&run, &device)?;
                let c = &e.card;
                let what = Reads::of(c.max_steps, &c.words, c.text, c.questions.as_ref(), c.code_dim, &c.class_names);
                let how = (e.card.input, e.card.max_steps, e.card.experiment.train.decode);
                infer(e.built.model.as_ref(), how, &what, &ask)?;
            } else {
                // Only the run folder is read: its config, checkpoint and `data.json`.
                let (cfg, data, built, _) = trainer::load_model(&run, last, &device)?;
                let d = &data;
                let what = Reads::of(d.max_steps, &d.words, d.text, d.questions.as_ref(), d.code_dim, &d.class_names);
                infer(built.model.as_ref(), (data.input, data.max_steps, cfg.train.decode), &what, &ask)?;
            }
        }
        Cmd::Export { run, dir, last } => {
            let card = export::export(&run, &dir, last, &device)?;
            println!(
                "exported {} ({}) to {}: model.safetensors, config.json, README.md",
                card.experiment.name,
                card.checkpoint,
                dir.display()
            );
        }
        Cmd::Compare { runs, out } => compare(&runs, &out)?,
        Cmd::Show { run } => {
            let s = std::fs::read_to_string(run.join("summary.json"))
                .with_context(|| format!("{} has no summary.json (unfinished?)", run.display()))?;
            let s: gaze_train::RunSummary = serde_json::from_str(&s)?;
            println!(
                "{} ({} steps, {:.1} s, {:.0} samples/s, git {})",
                s.name, s.steps, s.wall_s, s.samples_per_s, s.git_rev
            );
            for (k, v) in &s.metrics {
                println!("  {k:<16} {v}");
            }
            for f in [
                "report.md",
                "curves.png",
                "attention/test_right.png",
                "attention/test_wrong.png",
                "metrics.jsonl",
                "checkpoints/best.safetensors",
                "checkpoints/last.safetensors",
            ] {
                let p = run.join(f);
                if p.exists() {
                    println!("  {}", p.display());
                }
            }
        }
    }
    Ok(())
}

/// `gaze compare`: configs diffed, metrics side by side (the test metrics of finished runs, else
/// the last epoch's), validation curves overlaid.
fn compare(runs: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    let label = |r: &Path| r.file_name().map_or_else(|| r.display().to_string(), |n| n.to_string_lossy().into_owned());
    let mut configs = vec![];
    let mut metrics: Vec<std::collections::BTreeMap<String, f64>> = vec![];
    let mut names = vec![];
    for r in runs {
        let path = r.join("config.toml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("{} is not a run folder", r.display()))?;
        let cfg: toml::Value = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let name = cfg.get("name").and_then(|n| n.as_str()).unwrap_or_default().to_string();
        names.push(format!("{name}/{}", label(r)));
        configs.push(cfg);
        let finished = std::fs::read_to_string(r.join("summary.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<gaze_train::RunSummary>(&s).ok())
            .map(|s| s.metrics);
        let m = finished.unwrap_or_else(|| {
            let text = std::fs::read_to_string(r.join("metrics.jsonl")).unwrap_or_default();
            let last = text
                .lines()
                .rev()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["kind"] == "epoch");
            last.and_then(|v| v.as_object().cloned())
                .map(|o| {
                    o.into_iter()
                        .filter(|(k, _)| k.starts_with("val_") || k == "epoch")
                        .filter_map(|(k, v)| Some((k, v.as_f64()?)))
                        .collect()
                })
                .unwrap_or_default()
        });
        metrics.push(m);
    }
    for (i, n) in names.iter().enumerate() {
        println!("[{}] {n}", i + 1);
    }
    let diff = gaze_train::report::config_differences(&configs);
    if diff.is_empty() {
        println!("settings: the same in every run");
    } else {
        println!("settings that differ:");
        for (k, vals) in &diff {
            println!("  {k:<32} {}", vals.iter().map(|v| format!("{v:>14}")).collect::<Vec<_>>().join(" "));
        }
    }
    println!("metrics (test for finished runs, else the last epoch's validation):");
    let keys: std::collections::BTreeSet<&String> = metrics.iter().flat_map(|m| m.keys()).collect();
    for k in keys {
        let vals: Vec<String> =
            metrics.iter().map(|m| m.get(k).map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))).collect();
        println!("  {k:<32} {}", vals.iter().map(|v| format!("{v:>14}")).collect::<Vec<_>>().join(" "));
    }
    // The first validation metric every run logged, each run's series read once.
    let found = ["val_acc_pct", "val_bleu4", "val_sequence_error_pct", "val_loss"].into_iter().find_map(|k| {
        let curves: Vec<report::Curve> =
            names.iter().zip(runs).map(|(n, r)| (n.clone(), report::epoch_series(r, k))).collect();
        curves.iter().all(|c| !c.1.is_empty()).then_some((k, curves))
    });
    match found {
        Some((k, curves)) => {
            report::compare_curves(&curves, k, out)?;
            println!("curves of {k}: {}", out.display());
        }
        None => println!("no validation metric every run logged: no curves drawn"),
    }
    Ok(())
}

/// What a model gives for an image.
enum Reads {
    /// A class, by name.
    Classes(Vec<String>),
    /// A token sequence spelt with the split's words.
    Sequences(gaze_train::data::SequenceSplit),
    /// The answer to a question (the question vocabulary and answers; true when the model reads
    /// question codes).
    Answers(gaze_data::dataset::VqaEncoder, bool),
}

impl Reads {
    /// What a model of this output reads, from what its run or export recorded: a token
    /// sequence (`max_steps` > 0), an answer to a question, or a class.
    fn of(
        max_steps: usize,
        words: &[String],
        text: bool,
        questions: Option<&gaze_data::dataset::VqaEncoder>,
        code_dim: usize,
        class_names: &[String],
    ) -> Self {
        if max_steps > 0 {
            Reads::Sequences(gaze_train::data::SequenceSplit {
                images: vec![],
                references: vec![],
                word_boxes: vec![],
                objects: vec![],
                words: std::sync::Arc::new(words.to_vec()),
                text,
            })
        } else if let Some(q) = questions {
            Reads::Answers(q.clone(), code_dim > 0)
        } else {
            Reads::Classes(class_names.to_vec())
        }
    }
}

/// What `gaze infer` was asked.
struct Ask<'a> {
    image: &'a Path,
    out: &'a Path,
    question: Option<String>,
    gradcam: bool,
    device: &'a Device,
}

/// `gaze infer`: runs `model` on the image (resized to `input`), prints what it gives and draws
/// where it looked.
fn infer(
    model: &dyn gaze_zoo::Model,
    (input, max_steps, search): ((usize, usize, usize), usize, gaze_zoo::Search),
    what: &Reads,
    a: &Ask,
) -> anyhow::Result<()> {
    let (image, out, device) = (a.image, a.out, a.device);
    let (c, h, w) = input;
    let img = Image::load(image, c == 1).with_context(|| format!("reading {}", image.display()))?.resize(h, w);
    let pixels: Vec<f32> = img.data.iter().map(|&v| f32::from(v) / 255.0).collect();
    let x = Tensor::from_vec(pixels, (1, h, w, c), device)?.permute((0, 3, 1, 2))?.contiguous()?;
    if let Reads::Sequences(seqs) = what {
        // A sequence model: read the image, print what it read, draw a picture per word.
        let batch = gaze_zoo::Batch {
            images: x,
            targets: gaze_zoo::Targets::Sequences {
                tokens: Tensor::zeros((1, 1), candle_core::DType::U32, device)?,
                lengths: Tensor::zeros(1, candle_core::DType::U32, device)?,
            },
            questions: None,
        };
        let d = model.decode(&batch, search, max_steps.max(1), &mut Seed(0).rng())?;
        let tokens = d.tokens.first().cloned().unwrap_or_default();
        println!("{}", seqs.spell(&tokens));
        let image_hw = (batch.images.dim(2)?, batch.images.dim(3)?);
        let frame_of = |grid| model.cell_frame(grid, image_hw);
        let picture = report::decoded_strip(&img, &d, 0, seqs, Some(&frame_of))?;
        picture.save_png(out)?;
        println!("attention per word: {}", out.display());
        return Ok(());
    }
    if let Reads::Answers(v, codes) = what {
        // A VQA model: answer the question about the image, draw what it looked at.
        let Some(q) = &a.question else {
            anyhow::bail!("this run answers questions about images: give one with --question \"...\"");
        };
        if *codes {
            anyhow::bail!(
                "this model reads the generator's question codes, which free text does not have: ask it \
                     through `gaze eval` on its data"
            );
        }
        let (ids, len) = v.encode_question(q);
        let t = ids.len();
        let batch = gaze_zoo::Batch {
            images: x,
            targets: gaze_zoo::Targets::Answers(Tensor::zeros(1, candle_core::DType::U32, device)?),
            questions: Some(gaze_zoo::Questions {
                image: Tensor::zeros(1, candle_core::DType::U32, device)?,
                tokens: Tensor::from_vec(ids, (1, t), device)?,
                lengths: Tensor::from_vec(vec![len], 1, device)?,
                codes: None,
            }),
        };
        let o = model.forward(&batch, gaze_zoo::Mode::eval(), &mut Seed(0).rng())?;
        let best = o.scores.classes()?.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
        let answer = best.first().and_then(|&c| v.answers.name(c)).unwrap_or("?");
        println!("{answer}");
        let image_hw = (batch.images.dim(2)?, batch.images.dim(3)?);
        let frame_of = |grid| model.cell_frame(grid, image_hw);
        let (overlay, _) = report::render_attention(&img, o.attention.as_ref(), 0, Some(&frame_of))?;
        overlay.upscale((224 / w.max(1)).max(1)).save_png(out)?;
        println!("overlay: {}", out.display());
        return Ok(());
    }
    let (probs, out_) = predict(model, &x, Seed(0))?;
    let p = &probs[0];
    let (best, conf) = p.iter().enumerate().fold((0, 0f32), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
    let name = match what {
        Reads::Classes(names) => names.get(best).cloned().unwrap_or_else(|| best.to_string()),
        _ => best.to_string(),
    };
    println!("class {name} (p = {conf:.3})");
    let image_hw = (x.dim(2)?, x.dim(3)?);
    let frame_of = |grid| model.cell_frame(grid, image_hw);
    let (overlay, _) = report::render_attention(&img, out_.attention.as_ref(), 0, Some(&frame_of))?;
    // glimpse paths come back already scaled up (`drawn` x); other maps at the image's size,
    // and a strip of per-step maps is as high as one image: scale one image's width to ~224 px
    let drawn = (overlay.height / h.max(1)).max(1);
    overlay.upscale((224 / (w * drawn).max(1)).max(1)).save_png(out)?;
    println!("overlay: {}", out.display());
    if a.gradcam {
        let Some(cam) = gaze_zoo::explain::grad_cam(model, &x, None)? else {
            anyhow::bail!("this model has no convolutional feature map for Grad-CAM");
        };
        let map = gaze_zoo::AttentionMap::Grid { weights: cam, title: "Grad-CAM".into() };
        let (shown, _) = report::render_attention(&img, Some(&map), 0, Some(&frame_of))?;
        let path = image.with_extension("gradcam.png");
        shown.upscale((224 / w.max(1)).max(1)).save_png(&path)?;
        println!("Grad-CAM of class {name}: {}", path.display());
    }
    Ok(())
}

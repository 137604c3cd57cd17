//! `cargo xtask bench <what>`: timings measured in one process, printed as a table and written as
//! JSON under `runs/bench/`: a model's training step split into forward, backward and optimiser,
//! and its inference latency (`convnet`, `ram`, or any experiment by name), or each ConvNet layer
//! alone (`layers`). `bench suite` and `bench compare` are the fixed set CI compares with
//! `benchmarks/baseline.json` (see [`suite`]).

use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use clap::Args;
use gaze_tensor::{Seed, SeededVarMap};
use gaze_train::config::OptimConfig;
use gaze_train::optim::Optimizer;
use gaze_zoo::{Batch, Mode};

#[derive(Args)]
pub struct BenchArgs {
    /// What to time: `convnet` (the MNIST baseline), `ram` (ram-mnist-28), an experiment's name
    /// (its model's training step, split into its parts, and inference), or `layers` (each ConvNet
    /// layer alone).
    what: String,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 64, 128])]
    batch: Vec<usize>,
    /// Timed repetitions per measurement (after 3 warm-up steps).
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// CPU threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The training step's batch split into this many shards, each on its own thread (the
    /// trainer's `train.shards`); forward and backward columns stay one pass over the batch.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Where to write the JSON rows (default `runs/bench/<name>.json`); for `suite`, the suite's
    /// JSON (default `runs/bench/suite.json`); for `compare`, the suite JSON to compare.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// `compare`: the accepted figures.
    #[arg(long, default_value = "benchmarks/baseline.json")]
    baseline: std::path::PathBuf,
    /// `compare`: a row fails when its step takes more than (1 + margin) times the baseline's,
    /// on its first measurement and again when re-timed.
    #[arg(long, default_value_t = 0.3)]
    margin: f64,
}

fn time<T>(reps: usize, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    let t = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0 / reps as f64)
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    match a.what.as_str() {
        "suite" => return crate::suite::run_suite(a.json.as_deref(), a.reps),
        "compare" => return crate::suite::compare(a.json.as_deref(), &a.baseline, a.margin, a.reps),
        _ => {}
    }
    gaze_train::set_threads(a.threads);
    if a.what == "layers" {
        return layers(&a);
    }
    // `convnet` is the MNIST baseline; any other name is an experiment file's model.
    let name = match a.what.as_str() {
        "convnet" => "mnist-convnet",
        "ram" => "ram-mnist-28",
        other => other,
    };
    let path = crate::experiment::root().join("experiments").join(format!("{name}.toml"));
    let cfg = gaze_train::ExperimentConfig::load(&path).with_context(|| {
        format!("`{}` is neither `layers` nor an experiment (see `cargo xtask experiment --list`)", a.what)
    })?;
    // Real examples from the experiment's `--quick` data (embedded digits, or a few generated
    // scenes), so VQA models get real questions; timings do not depend on the pixel values.
    let data = gaze_train::data::prepare(&cfg.clone().quick().data, Seed(cfg.seed))?;
    let dev = Device::Cpu;
    let mut rows = vec![];
    let per = (data.train.rows() / data.train.len().max(1)).max(1);
    println!("model of `{name}`, input {:?}, {} (rows: images, or questions)", data.input, data.description);
    println!("| batch | forward ms | forward+backward ms | optimizer ms | step ms | train samples/s | inference ms | inference samples/s | threads | shards |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &want in &a.batch {
        let vm = SeededVarMap::new(Seed(0));
        let model = gaze_zoo::build(&cfg.model, &data.shape(), vm.builder(&dev))?;
        gaze_train::shard::check_model(name, a.shards, &vm.sorted_vars())?;
        let images = want.div_ceil(per).min(data.train.len()).max(1);
        let idx: Vec<usize> = (0..images).collect();
        let batch: Batch = data.train.batch(&idx, &dev)?;
        let b = batch.targets.rows()?;
        let mut opt = Optimizer::new(&OptimConfig::default(), vm.sorted_vars())?;
        let mut rng = Seed(2).rng();
        let fwd = time(a.reps, || {
            Ok(model.forward(&batch, Mode::train(0.0), &mut rng)?.total_loss()?.to_scalar::<f32>()?)
        })?;
        let fb = time(a.reps, || Ok(model.forward(&batch, Mode::train(0.0), &mut rng)?.total_loss()?.backward()?))?;
        let grads = model.forward(&batch, Mode::train(0.0), &mut rng)?.total_loss()?.backward()?;
        let optm = time(a.reps, || Ok(opt.step(&grads)?))?;
        let step = if a.shards > 1 {
            let parts: Vec<Batch> = gaze_train::shard::parts(&idx, a.shards)
                .into_iter()
                .map(|c| data.train.batch(c, &dev))
                .collect::<Result<_, _>>()?;
            let mut s = 0u64;
            time(a.reps, || {
                s += 1;
                let rngs = (0..parts.len()).map(|j| Seed(2).index(s).index(j as u64).rng()).collect();
                let passes = gaze_train::shard::passes(model.as_ref(), &parts, rngs, Mode::train(0.0), s, false)?;
                let grads = gaze_train::shard::combined_grads(opt.vars(), &passes)?;
                Ok(opt.step_grads(grads)?)
            })?
        } else {
            time(a.reps, || {
                let g = model.forward(&batch, Mode::train(0.0), &mut rng)?.total_loss()?.backward()?;
                Ok(opt.step(&g)?)
            })?
        };
        let infer = time(a.reps, || {
            Ok(model
                .forward(&batch, Mode::eval(), &mut rng)?
                .scores
                .tensor()
                .argmax(1)?
                .flatten_all()?
                .to_vec1::<u32>()?)
        })?;
        let sps = b as f64 / (step / 1000.0);
        let isps = b as f64 / (infer / 1000.0);
        println!(
            "| {b} | {fwd:.2} | {fb:.2} | {optm:.2} | {step:.2} | {sps:.0} | {infer:.3} | {isps:.0} | {} | {} |",
            a.threads, a.shards
        );
        rows.push(serde_json::json!({"model": name, "batch": b, "forward_ms": fwd, "forward_backward_ms": fb,
            "optimizer_ms": optm, "step_ms": step, "samples_per_s": sps, "inference_ms": infer,
            "inference_samples_per_s": isps, "threads": a.threads, "shards": a.shards}));
    }
    let out = a.json.clone().unwrap_or_else(|| crate::experiment::root().join(format!("runs/bench/{name}.json")));
    gaze_data::write_atomic(&out, serde_json::to_string_pretty(&rows)?.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Forward and forward+backward time of each kind of layer of the ConvNet baseline, alone.
fn layers(a: &BenchArgs) -> anyhow::Result<()> {
    use candle_core::Var;
    use rand::Rng;
    let dev = Device::Cpu;
    let b = a.batch.first().copied().unwrap_or(64);
    let mut r = Seed(1).rng();
    let mut t = |shape: &[usize]| -> anyhow::Result<Var> {
        let n: usize = shape.iter().product();
        Ok(Var::from_vec((0..n).map(|_| r.random::<f32>() - 0.5).collect::<Vec<_>>(), shape, &dev)?)
    };
    let (x1, w1) = (t(&[b, 1, 28, 28])?, t(&[32, 1, 3, 3])?);
    let (x2, w2) = (t(&[b, 32, 14, 14])?, t(&[64, 32, 3, 3])?);
    let (p1, p2) = (t(&[b, 32, 28, 28])?, t(&[b, 64, 14, 14])?);
    let (f, fw) = (t(&[b, 3136])?, t(&[128, 3136])?);
    type Case<'a> = (&'a str, Box<dyn Fn() -> candle_core::Result<Tensor> + 'a>);
    let cases: Vec<Case> = vec![
        ("conv1 candle", Box::new(|| x1.as_tensor().conv2d(w1.as_tensor(), 1, 1, 1, 1))),
        ("conv2 candle", Box::new(|| x2.as_tensor().conv2d(w2.as_tensor(), 1, 1, 1, 1))),
        ("conv1 gaze", Box::new(|| gaze_tensor::conv::conv2d(x1.as_tensor(), w1.as_tensor(), None, 1, 1))),
        ("conv2 gaze", Box::new(|| gaze_tensor::conv::conv2d(x2.as_tensor(), w2.as_tensor(), None, 1, 1))),
        ("pool1 gaze", Box::new(|| gaze_tensor::ops::max_pool2d(p1.as_tensor(), 2))),
        ("pool1 candle", Box::new(|| p1.as_tensor().max_pool2d(2))),
        ("pool2 gaze", Box::new(|| gaze_tensor::ops::max_pool2d(p2.as_tensor(), 2))),
        ("relu 32x28x28", Box::new(|| p1.as_tensor().relu())),
        ("fc 3136->128", Box::new(|| f.as_tensor().matmul(&fw.as_tensor().t()?))),
    ];
    println!("| layer (batch {b}) | forward ms | forward+backward ms |");
    println!("|---|---|---|");
    for (name, op) in &cases {
        let fwd = time(a.reps, || Ok(op()?.sum_all()?.to_scalar::<f32>()?))?;
        let fb = time(a.reps, || Ok(op()?.sum_all()?.backward()?))?;
        println!("| {name} | {fwd:.2} | {fb:.2} |");
    }
    Ok(())
}

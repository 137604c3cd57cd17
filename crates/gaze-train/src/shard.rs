//! Data-parallel training steps: a batch split into shards, each shard's forward and backward
//! pass run on its own thread, and the gradients combined into the whole batch's.
//!
//! Every loss term of gaze's models is a mean over the batch's examples (or over its questions,
//! or its examples' glimpse steps, in proportion to them). The gradient of the whole batch's
//! loss is then the mean of the shards' gradients weighted by their shares of the batch's
//! targets, which is what [`combined_grads`] computes: the same update as one pass over the
//! whole batch, up to floating-point summation order. Each shard draws its random numbers from
//! its own seeded stream, so a sharded run is reproducible bit for bit, but it does not draw the
//! same numbers as an unsharded run. Batch norm would normalise each shard by its own statistics
//! (and update its running statistics from two threads), so the trainer refuses shards for
//! models that have it.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use gaze_tensor::seed::Rng;
use gaze_zoo::{Batch, Mode, Model, Output};

use crate::error::{Result, TrainError};

/// Whether a variable is batch norm's running statistics (kept, not trained).
pub fn is_running_stat(name: &str) -> bool {
    name.contains("running_")
}

/// Refuses `shards > 1` for a model (`name`) whose variables include batch norm's running
/// statistics: each shard would be normalised by its own statistics.
pub fn check_model(name: &str, shards: usize, vars: &[(String, Var)]) -> Result<()> {
    if shards > 1 && vars.iter().any(|(n, _)| is_running_stat(n)) {
        return Err(TrainError::Other(format!(
            "{name}: `train.shards` = {shards}: the model has batch norm, which would normalise each shard by its own \
             statistics; use shards = 1"
        )));
    }
    Ok(())
}

/// The consecutive parts of a batch's indices its shards take (one shard: the whole batch).
pub fn parts(idx: &[usize], shards: usize) -> Vec<&[usize]> {
    if shards <= 1 {
        vec![idx]
    } else {
        idx.chunks(idx.len().div_ceil(shards).max(1)).collect()
    }
}

/// One shard's forward and backward pass.
pub struct Pass {
    /// The shard's share of the batch's targets (the shares sum to 1).
    pub weight: f64,
    /// The model's output on the shard.
    pub output: Output,
    /// The shard's loss terms by name.
    pub terms: BTreeMap<String, f64>,
    /// The gradients of the shard's total loss.
    pub grads: GradStore,
}

/// Forward and backward on one shard. `poison` makes the `classify` term NaN (the trainer's fault
/// injection); a non-finite term is an error naming `step` and the term, before any backward.
fn pass(model: &dyn Model, batch: &Batch, rng: &mut Rng, mode: Mode, step: u64, poison: bool) -> Result<Pass> {
    let mut output = model.forward(batch, mode, rng)?;
    if poison {
        for (name, t) in output.losses.iter_mut() {
            if name == "classify" {
                *t = (&*t * f64::NAN)?;
            }
        }
    }
    let mut terms = BTreeMap::new();
    for (name, t) in &output.losses {
        let v = t.to_scalar::<f32>()?;
        if !v.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                what: format!("loss term `{name}`"),
                value: v,
                kept: String::new(),
            });
        }
        terms.insert(name.clone(), f64::from(v));
    }
    let grads = output.total_loss()?.backward()?;
    Ok(Pass { weight: 1.0, output, terms, grads })
}

/// Runs one pass per batch, each batch with its rng; several batches run on one thread each, one
/// batch on the calling thread. `step` (1-based) names the step in errors; `poison` the first
/// shard's `classify` term (fault injection). Passes come back in batch order, weighted by their
/// shares of the targets.
pub fn passes(
    model: &dyn Model,
    batches: &[Batch],
    rngs: Vec<Rng>,
    mode: Mode,
    step: u64,
    poison: bool,
) -> Result<Vec<Pass>> {
    if batches.len() != rngs.len() || batches.is_empty() {
        return Err(TrainError::Other(format!(
            "shards: {} batches and {} random streams (need as many, at least one)",
            batches.len(),
            rngs.len()
        )));
    }
    let mut out = if batches.len() == 1 {
        let mut rng = rngs.into_iter().next().ok_or_else(|| TrainError::Other("shards: no stream".into()))?;
        vec![pass(model, &batches[0], &mut rng, mode, step, poison)?]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = batches
                .iter()
                .zip(rngs)
                .enumerate()
                .map(|(j, (b, mut rng))| s.spawn(move || pass(model, b, &mut rng, mode, step, poison && j == 0)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| TrainError::Other(format!("step {step}: a shard's thread panicked")))?)
                .collect::<Result<Vec<_>>>()
        })?
    };
    let counts = batches.iter().map(|b| b.targets.rows()).collect::<candle_core::Result<Vec<_>>>()?;
    let total = counts.iter().sum::<usize>().max(1) as f64;
    for (p, n) in out.iter_mut().zip(counts) {
        p.weight = n as f64 / total;
    }
    Ok(out)
}

/// The whole batch's gradient of each of `vars`: the passes' gradients weighted by their shares
/// (one pass: its gradients as they are). `None` where no pass has a gradient.
pub fn combined_grads(vars: &[(String, Var)], passes: &[Pass]) -> Result<Vec<Option<Tensor>>> {
    if let [one] = passes {
        return Ok(vars.iter().map(|(_, v)| one.grads.get(v).cloned()).collect());
    }
    let mut out = Vec::with_capacity(vars.len());
    for (_, v) in vars {
        let mut sum: Option<Tensor> = None;
        for p in passes {
            if let Some(g) = p.grads.get(v) {
                let g = (g * p.weight)?;
                sum = Some(match sum {
                    Some(s) => (s + g)?,
                    None => g,
                });
            }
        }
        out.push(sum);
    }
    Ok(out)
}

/// The passes' loss terms, weighted by their shares.
pub fn combined_terms(passes: &[Pass]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for p in passes {
        for (k, v) in &p.terms {
            *out.entry(k.clone()).or_insert(0.0) += v * p.weight;
        }
    }
    out
}

/// The passes' scalar statistics, weighted by their shares.
pub fn combined_stats(passes: &[Pass]) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for p in passes {
        for (k, v) in &p.output.stats {
            *out.entry(k.clone()).or_insert(0.0) += f64::from(v.to_scalar::<f32>()?) * p.weight;
        }
    }
    Ok(out)
}

//! Optimisers whose whole state can be saved and restored (candle-nn's keep theirs private, so a
//! resumed run could not continue exactly): AdamW and SGD with momentum, global-norm clipping,
//! or clipping per parameter group, and learning-rate schedules.

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::config::{OptimConfig, OptimKind, Schedule};
use crate::error::{Result, TrainError};

/// An optimiser over named variables, with its moments as tensors.
#[derive(Debug)]
pub struct Optimizer {
    cfg: OptimConfig,
    vars: Vec<(String, Var)>,
    /// First moment (AdamW) or momentum buffer (SGD), per variable.
    m: Vec<Tensor>,
    /// Second moment (AdamW), per variable.
    v: Vec<Tensor>,
    /// Clipping group of each variable (all 0 without `clip_groups`; the last group holds the
    /// variables no prefix matches).
    group: Vec<usize>,
    /// Updates applied so far.
    pub t: u64,
    /// The learning rate of the next update.
    pub lr: f64,
}

/// What one update did.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// Global gradient L2 norm before clipping.
    pub grad_norm: f32,
}

impl Optimizer {
    /// An optimiser over `vars` (name-sorted for a stable order). Errors: a `clip_groups` prefix
    /// that matches no variable, or a variable that two groups claim.
    pub fn new(cfg: &OptimConfig, mut vars: Vec<(String, Var)>) -> Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        let m = vars.iter().map(|(_, v)| zeros(v)).collect::<candle_core::Result<Vec<_>>>()?;
        let v = vars.iter().map(|(_, v)| zeros(v)).collect::<candle_core::Result<Vec<_>>>()?;
        let group = clip_groups(&cfg.clip_groups, &vars)?;
        Ok(Self { cfg: cfg.clone(), vars, m, v, group, t: 0, lr: cfg.lr })
    }

    /// The variables updated, name-sorted: the order [`Optimizer::step_grads`] takes.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Applies one update from `grads`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<StepInfo> {
        let gs: Vec<Option<Tensor>> = self.vars.iter().map(|(_, v)| grads.get(v).cloned()).collect();
        self.step_grads(gs)
    }

    /// Applies one update from one gradient per variable, in [`Optimizer::vars`] order (`None`:
    /// left alone).
    pub fn step_grads(&mut self, gs: Vec<Option<Tensor>>) -> Result<StepInfo> {
        if gs.len() != self.vars.len() {
            return Err(TrainError::Other(format!(
                "optimizer: {} gradients for {} variables",
                gs.len(),
                self.vars.len()
            )));
        }
        let groups = self.group.iter().max().map_or(1, |g| g + 1);
        let mut sq = vec![0f32; groups];
        for (g, k) in gs.iter().zip(&self.group) {
            if let Some(g) = g {
                sq[*k] += g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            }
        }
        let norm = sq.iter().sum::<f32>().sqrt();
        if !norm.is_finite() {
            // Nothing is updated: the parameters stay those of the previous step.
            let what = "the gradient norm".to_string();
            return Err(TrainError::NonFinite { step: self.t + 1, what, value: norm, kept: String::new() });
        }
        // One scale per group (one group without `clip_groups`: the global norm).
        let scales: Vec<f64> = sq
            .iter()
            .map(|s| {
                let n = f64::from(s.sqrt());
                if self.cfg.clip_norm > 0.0 && n > self.cfg.clip_norm {
                    self.cfg.clip_norm / n
                } else {
                    1.0
                }
            })
            .collect();
        self.t += 1;
        let (lr, wd) = (self.lr, self.cfg.weight_decay);
        for (i, g) in gs.into_iter().enumerate() {
            let Some(g) = g else { continue };
            let scale = scales[self.group[i]];
            // Gradients can carry autograd history; moments kept from step to step must not, or
            // every step would keep the previous steps' graphs alive.
            let g = if scale != 1.0 { (g * scale)?.detach() } else { g.detach() };
            let var = &self.vars[i].1;
            let theta = var.as_tensor();
            match self.cfg.kind {
                OptimKind::Adamw => {
                    let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
                    let m = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
                    let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                    let c1 = 1.0 - b1.powi(self.t as i32);
                    let c2 = 1.0 - b2.powi(self.t as i32);
                    let update = ((&m / c1)? / ((&v / c2)?.sqrt()? + self.cfg.eps)?)?;
                    let decayed = if wd > 0.0 { (theta * (1.0 - lr * wd))? } else { theta.clone() };
                    var.set(&(decayed - (update * lr)?)?)?;
                    self.m[i] = m.detach();
                    self.v[i] = v.detach();
                }
                OptimKind::Sgd => {
                    let g = if wd > 0.0 { (g + (theta * wd)?)? } else { g };
                    let buf = ((&self.m[i] * self.cfg.momentum)? + g)?;
                    var.set(&(theta - (&buf * lr)?)?)?;
                    self.m[i] = buf.detach();
                }
            }
        }
        // A finite gradient can still step a parameter past f32's range (a learning rate far too
        // large): that is divergence too, and no checkpoint may hold it.
        for (name, var) in &self.vars {
            let peak = var.as_tensor().abs()?.max_all()?.to_scalar::<f32>()?;
            if !peak.is_finite() {
                let what = format!("parameter `{name}`");
                return Err(TrainError::NonFinite { step: self.t, what, value: peak, kept: String::new() });
            }
        }
        Ok(StepInfo { grad_norm: norm })
    }

    /// The optimiser's tensors by name (`optim.m.<var>`, `optim.v.<var>`), for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.push((format!("optim.m.{name}"), self.m[i].clone()));
            out.push((format!("optim.v.{name}"), self.v[i].clone()));
        }
        out
    }

    /// Restores moments from checkpoint tensors; every variable must have both.
    pub fn load_state(&mut self, get: &dyn Fn(&str) -> Option<Tensor>, t: u64, lr: f64) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (slot, key) in [(0, format!("optim.m.{name}")), (1, format!("optim.v.{name}"))] {
                let tensor = get(&key).ok_or_else(|| TrainError::Other(format!("checkpoint lacks `{key}`")))?;
                if tensor.dims() != var.as_tensor().dims() {
                    return Err(TrainError::Other(format!(
                        "checkpoint `{key}` has shape {:?}, the model {:?}",
                        tensor.dims(),
                        var.dims()
                    )));
                }
                if slot == 0 {
                    self.m[i] = tensor;
                } else {
                    self.v[i] = tensor;
                }
            }
        }
        self.t = t;
        self.lr = lr;
        Ok(())
    }
}

/// The clipping group of each of `vars` (name-sorted): the index of the group whose prefix
/// matches, or `groups.len()` for the rest; all 0 without groups.
fn clip_groups(groups: &[Vec<String>], vars: &[(String, Var)]) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(vars.len());
    for (name, _) in vars {
        let claims: Vec<usize> =
            (0..groups.len()).filter(|&k| groups[k].iter().any(|p| name.starts_with(p.as_str()))).collect();
        match claims[..] {
            [] => out.push(groups.len()),
            [k] => out.push(k),
            _ => {
                return Err(TrainError::Other(format!(
                    "optim.clip_groups: parameter `{name}` matches groups {claims:?}; each parameter belongs to one"
                )))
            }
        }
    }
    for (k, prefixes) in groups.iter().enumerate() {
        for p in prefixes {
            if !vars.iter().any(|(n, _)| n.starts_with(p.as_str())) {
                let some: Vec<&str> = vars.iter().take(6).map(|(n, _)| n.as_str()).collect();
                return Err(TrainError::Other(format!(
                    "optim.clip_groups: prefix `{p}` of group {k} matches no parameter (they are named like {some:?})"
                )));
            }
        }
    }
    Ok(out)
}

/// The learning rate of step `step` (0-based) of `total` under a step, exponential or cosine
/// schedule; plateau and constant schedules keep `current` (plateau cuts happen at epoch ends).
pub fn scheduled_lr(cfg: &OptimConfig, step: u64, total: u64, steps_per_epoch: u64, current: f64) -> f64 {
    match cfg.schedule {
        Schedule::Constant | Schedule::Plateau { .. } => current,
        Schedule::Step { every, gamma } => {
            let epoch = step / steps_per_epoch.max(1);
            cfg.lr * gamma.powi((epoch / every as u64) as i32)
        }
        Schedule::Exponential { gamma, min_lr } => {
            let epoch = step / steps_per_epoch.max(1);
            (cfg.lr * gamma.powf(epoch as f64)).max(min_lr)
        }
        Schedule::Cosine { min_lr } => gaze_tensor::ops::half_cosine(cfg.lr, min_lr, step as f64 / total.max(1) as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adamw_matches_a_hand_computed_step() -> Result<()> {
        let v = Var::from_vec(vec![1.0f32, -2.0], 2, &Device::Cpu)?;
        let cfg = OptimConfig { lr: 0.1, weight_decay: 0.5, ..OptimConfig::default() };
        let mut o = Optimizer::new(&cfg, vec![("w".into(), v.clone())])?;
        let loss = (v.as_tensor() * 3.0)?.sum_all()?; // grad = 3 everywhere
        o.step(&loss.backward()?)?;
        // m_hat = 3, v_hat = 9 -> update = 3 / (3 + eps) ~ 1; theta = theta*(1 - 0.05) - 0.1
        let got = v.as_tensor().to_vec1::<f32>()?;
        assert!((got[0] - (0.95 - 0.1)).abs() < 1e-5 && (got[1] - (-1.9 - 0.1)).abs() < 1e-5, "{got:?}");
        Ok(())
    }

    #[test]
    fn a_step_past_f32_range_or_a_non_finite_gradient_is_divergence() -> Result<()> {
        // A finite gradient whose step overflows the parameter: the error names it.
        let v = Var::from_vec(vec![3e38f32, 0.0], 2, &Device::Cpu)?;
        let cfg = OptimConfig { kind: OptimKind::Sgd, lr: 1e38, momentum: 0.0, ..OptimConfig::default() };
        let mut o = Optimizer::new(&cfg, vec![("w".into(), v.clone())])?;
        let e = o.step(&(v.as_tensor() * -1.0)?.sum_all()?.backward()?).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("step 1: parameter `w` is inf")), "{e:?}");
        // A NaN gradient: nothing moves.
        let v = Var::from_vec(vec![1.0f32, 2.0], 2, &Device::Cpu)?;
        let mut o = Optimizer::new(&OptimConfig::default(), vec![("w".into(), v.clone())])?;
        let e = o.step(&(v.as_tensor() * f64::NAN)?.sum_all()?.backward()?).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("step 1: the gradient norm is NaN")), "{e:?}");
        assert_eq!(v.as_tensor().to_vec1::<f32>()?, vec![1.0, 2.0]);
        Ok(())
    }

    #[test]
    fn sgd_momentum_and_clipping() -> Result<()> {
        let v = Var::from_vec(vec![0.0f32, 0.0], 2, &Device::Cpu)?;
        let cfg =
            OptimConfig { kind: OptimKind::Sgd, lr: 1.0, momentum: 0.5, clip_norm: 1.0, ..OptimConfig::default() };
        let mut o = Optimizer::new(&cfg, vec![("w".into(), v.clone())])?;
        let loss = (v.as_tensor() * 3.0)?.sum_all()?; // grad (3, 3), norm 4.24 -> clipped to 1
        let info = o.step(&loss.backward()?)?;
        assert!((info.grad_norm - 18f32.sqrt()).abs() < 1e-4);
        let after1 = v.as_tensor().to_vec1::<f32>()?;
        let c = 1.0 / 2f32.sqrt();
        assert!((after1[0] + c).abs() < 1e-5, "{after1:?}");
        let loss = (v.as_tensor() * 3.0)?.sum_all()?;
        o.step(&loss.backward()?)?;
        let after2 = v.as_tensor().to_vec1::<f32>()?;
        assert!((after2[0] - (-c - 1.5 * c)).abs() < 1e-5, "{after2:?}");
        Ok(())
    }

    #[test]
    fn state_holds_no_autograd_history() -> Result<()> {
        // Moments that track ops would chain every step's graph to the next (a memory leak).
        let w = Var::from_vec(vec![1.0f32, 2.0], 2, &Device::Cpu)?;
        for kind in [OptimKind::Adamw, OptimKind::Sgd] {
            let mut o = Optimizer::new(&OptimConfig { kind, ..OptimConfig::default() }, vec![("w".into(), w.clone())])?;
            for _ in 0..2 {
                let loss = (w.as_tensor().sqr()? * w.as_tensor())?.sum_all()?; // grads depend on w
                o.step(&loss.backward()?)?;
            }
            assert!(o.state_tensors().iter().all(|(_, t)| !t.track_op()), "{kind:?}");
        }
        Ok(())
    }

    #[test]
    fn schedules() {
        let cos = OptimConfig { lr: 1.0, schedule: Schedule::Cosine { min_lr: 0.0 }, ..OptimConfig::default() };
        assert!((scheduled_lr(&cos, 0, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!((scheduled_lr(&cos, 50, 100, 10, 1.0) - 0.5).abs() < 1e-12);
        let st = OptimConfig { lr: 1.0, schedule: Schedule::Step { every: 2, gamma: 0.1 }, ..OptimConfig::default() };
        assert!((scheduled_lr(&st, 25, 100, 10, 1.0) - 0.1).abs() < 1e-12);
        // x0.98 per epoch (10 steps each), floored at 0.9: epoch 2 -> 0.9604, epoch 9 -> 0.9.
        let ex = OptimConfig {
            lr: 1.0,
            schedule: Schedule::Exponential { gamma: 0.98, min_lr: 0.9 },
            ..OptimConfig::default()
        };
        assert_eq!(scheduled_lr(&ex, 9, 100, 10, 1.0), 1.0);
        assert!((scheduled_lr(&ex, 25, 100, 10, 1.0) - 0.9604).abs() < 1e-12);
        assert_eq!(scheduled_lr(&ex, 95, 100, 10, 1.0), 0.9);
    }

    /// Two groups, each clipped to its own norm: a huge policy gradient does not shrink the
    /// others' (as one global norm would), and each group's step is at most the bound.
    #[test]
    fn clipping_by_group_bounds_each_group_alone() -> Result<()> {
        let dev = Device::Cpu;
        let vars = || -> Result<Vec<(String, Var)>> {
            Ok(vec![
                ("locator.weight".into(), Var::from_vec(vec![0.0f32; 2], 2, &dev)?),
                ("core.weight".into(), Var::from_vec(vec![0.0f32; 2], 2, &dev)?),
                ("classifier.weight".into(), Var::from_vec(vec![0.0f32; 1], 1, &dev)?),
            ])
        };
        // Gradients: locator (30, 40), norm 50; core (0.3, 0.4) and classifier (0.2): norm ~0.54.
        let step = |groups: Vec<Vec<String>>| -> Result<(f32, Vec<Vec<f32>>)> {
            let v = vars()?;
            let cfg = OptimConfig {
                kind: OptimKind::Sgd,
                lr: 1.0,
                momentum: 0.0,
                clip_norm: 1.0,
                clip_groups: groups,
                ..OptimConfig::default()
            };
            let mut o = Optimizer::new(&cfg, v.clone())?;
            let gs = o
                .vars()
                .iter()
                .map(|(n, _)| {
                    let g: Vec<f32> = match n.as_str() {
                        "locator.weight" => vec![30.0, 40.0],
                        "core.weight" => vec![0.3, 0.4],
                        _ => vec![0.2],
                    };
                    let len = g.len();
                    Tensor::from_vec(g, len, &dev).map(Some)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let info = o.step_grads(gs)?;
            let after = v.iter().map(|(_, v)| v.as_tensor().to_vec1::<f32>()).collect::<candle_core::Result<_>>()?;
            Ok((info.grad_norm, after))
        };
        let norm = |x: &[f32]| x.iter().map(|v| v * v).sum::<f32>().sqrt();
        let (global_norm, global) = step(vec![])?;
        let (grouped_norm, grouped) = step(vec![vec!["locator.".into()]])?;
        // The logged norm is the global one before clipping either way.
        assert!((global_norm - (2500.29f32).sqrt()).abs() < 1e-3 && global_norm == grouped_norm);
        // Global: the whole step has norm 1, the core's part nearly vanishes.
        let all: Vec<f32> = global.iter().flatten().copied().collect();
        assert!((norm(&all) - 1.0).abs() < 1e-5 && norm(&global[1]) < 0.02, "{global:?}");
        // By group: the locator's step has norm 1; the rest (norm ~0.54 < 1) is not scaled.
        assert!((norm(&grouped[0]) - 1.0).abs() < 1e-5, "{grouped:?}");
        assert_eq!((grouped[1].clone(), grouped[2].clone()), (vec![-0.3, -0.4], vec![-0.2]));
        // A prefix that names nothing, and a parameter two groups claim, are errors.
        let bad = |groups: Vec<Vec<&str>>| {
            let groups = groups.into_iter().map(|g| g.into_iter().map(String::from).collect()).collect();
            let cfg = OptimConfig { clip_norm: 1.0, clip_groups: groups, ..OptimConfig::default() };
            Optimizer::new(&cfg, vars().unwrap_or_default()).err().map(|e| e.to_string()).unwrap_or_default()
        };
        let e = bad(vec![vec!["policy."]]);
        assert!(e.contains("prefix `policy.` of group 0 matches no parameter"), "{e}");
        let e = bad(vec![vec!["core."], vec!["core.w"]]);
        assert!(e.contains("`core.weight` matches groups [0, 1]"), "{e}");
        Ok(())
    }
}

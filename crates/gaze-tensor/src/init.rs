//! Seeded parameter initialisation.
//!
//! candle's CPU random number generator cannot be seeded, so a `VarMap` filled through candle's
//! own `Init` gives different weights every run. [`SeededVarMap`] is a VarBuilder backend that
//! creates each variable from its own seeded stream, `seed.stream(name)`, so a parameter's
//! initial value depends only on the seed and its name (not on creation order), identical across
//! runs and processes.
//!
//! Weight hints of kind `Kaiming` are drawn as PyTorch's default for `Linear` and `Conv2d`
//! (`kaiming_uniform_(a = sqrt(5))`, i.e. uniform in `±1/sqrt(fan_in)`); `Uniform`, `Randn`
//! and `Const` hints are honoured as given.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::seed::Seed;

/// A VarMap whose new variables are drawn from seeded streams.
#[derive(Clone)]
pub struct SeededVarMap {
    map: VarMap,
    seed: Seed,
}

impl std::fmt::Debug for SeededVarMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeededVarMap").field("seed", &self.seed).finish_non_exhaustive()
    }
}

/// The initial values of a parameter of `shape` under `init`, drawn from `seed`.
pub fn init_values(shape: &Shape, init: Init, seed: Seed) -> Result<Vec<f32>> {
    let n = shape.elem_count();
    let mut rng = seed.rng();
    let uniform = |lo: f64, up: f64, rng: &mut crate::seed::Rng| -> Result<Vec<f32>> {
        if !(lo.is_finite() && up.is_finite()) {
            // candle's layers bound their init by 1 / sqrt(inputs): a layer with no inputs.
            return Err(candle_core::Error::Msg(format!(
                "init: a parameter of shape {:?} would be drawn from [{lo}, {up}): does a layer have 0 inputs \
                 (a width or channel count of 0 in the config)?",
                shape.dims()
            )));
        }
        Ok((0..n).map(|_| if up > lo { rng.random_range(lo..up) as f32 } else { lo as f32 }).collect())
    };
    Ok(match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Uniform { lo, up } => uniform(lo, up, &mut rng)?,
        Init::Randn { mean, stdev } => {
            let d = Normal::new(mean, stdev.abs()).map_err(|e| candle_core::Error::Msg(format!("init: {e}")))?;
            (0..n).map(|_| d.sample(&mut rng) as f32).collect()
        }
        Init::Kaiming { .. } => {
            let dims = shape.dims();
            let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
            let bound = 1.0 / (fan_in as f64).sqrt();
            uniform(-bound, bound, &mut rng)?
        }
    })
}

impl SeededVarMap {
    /// An empty map drawing from `seed` (normally `experiment_seed.stream("init")`).
    pub fn new(seed: Seed) -> Self {
        Self { map: VarMap::new(), seed }
    }

    /// The underlying VarMap (for optimisers and safetensors load / save).
    pub fn var_map(&self) -> &VarMap {
        &self.map
    }

    /// A VarBuilder over this map, f32 on `device`.
    pub fn builder(&self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, device.clone())
    }

    /// All variables sorted by name (a stable order for optimisers and checks).
    pub fn sorted_vars(&self) -> Vec<(String, Var)> {
        let data = match self.map.data().lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = match self.map.data().lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(v) = data.get(name) {
            let t = v.as_tensor();
            if t.shape() != &s {
                return Err(candle_core::Error::Msg(format!(
                    "parameter `{name}` exists with shape {:?}, asked for {:?}",
                    t.dims(),
                    s.dims()
                )));
            }
            return t.to_dtype(dtype);
        }
        let values = init_values(&s, h, self.seed.stream(name))?;
        let var = Var::from_tensor(&Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?)?;
        let t = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _dev: &Device) -> Result<Tensor> {
        let data = match self.map.data().lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        match data.get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype),
            None => Err(candle_core::Error::CannotFindTensor { path: name.to_string() }.bt()),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match self.map.data().lock() {
            Ok(d) => d.contains_key(name),
            Err(poisoned) => poisoned.into_inner().contains_key(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_any_order() -> Result<()> {
        let a = SeededVarMap::new(Seed(3));
        let b = SeededVarMap::new(Seed(3));
        let (va, vb) = (a.builder(&Device::Cpu), b.builder(&Device::Cpu));
        let la = candle_nn::linear(4, 3, va.pp("x"))?;
        let _other = candle_nn::linear(2, 2, vb.pp("y"))?; // created first in b
        let lb = candle_nn::linear(4, 3, vb.pp("x"))?;
        assert_eq!(la.weight().to_vec2::<f32>()?, lb.weight().to_vec2::<f32>()?);
        let c = SeededVarMap::new(Seed(4));
        let lc = candle_nn::linear(4, 3, c.builder(&Device::Cpu).pp("x"))?;
        assert_ne!(la.weight().to_vec2::<f32>()?, lc.weight().to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn kaiming_is_pytorch_default_bound() -> Result<()> {
        let v = init_values(&Shape::from((64, 100)), candle_nn::init::DEFAULT_KAIMING_NORMAL, Seed(1))?;
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(max <= 0.1 && max > 0.09, "{max}");
        let conv = init_values(&Shape::from((8, 4, 3, 3)), candle_nn::init::DEFAULT_KAIMING_NORMAL, Seed(1))?;
        let bound = 1.0 / 36f32.sqrt();
        assert!(conv.iter().all(|x| x.abs() <= bound));
        Ok(())
    }

    #[test]
    fn a_layer_with_no_inputs_is_an_error_not_a_panic() {
        // candle's linear layer bounds its bias by 1 / sqrt(inputs): infinite for 0 inputs.
        let m = SeededVarMap::new(Seed(1));
        let e = candle_nn::linear(0, 3, m.builder(&Device::Cpu).pp("x")).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("0 inputs")), "{e:?}");
    }
}

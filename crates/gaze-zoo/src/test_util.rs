//! Helpers shared by the models' unit tests.

use candle_core::Result;
use candle_nn::Optimizer as _;

use gaze_tensor::seed::Rng;
use gaze_tensor::SeededVarMap;

use crate::model::{Batch, Mode, Model, Output};

/// Fits `model` (whose variables live in `vm`) to one fixed batch: one forward, `steps` AdamW steps at
/// `lr` on the total loss (training mode at progress 0), one more forward. Both measured forwards run
/// in `mode`. Returns the first and the last output, for the caller to compare.
pub(crate) fn fit_fixed_batch(
    model: &dyn Model,
    vm: &SeededVarMap,
    batch: &Batch,
    steps: usize,
    lr: f64,
    mode: Mode,
    rng: &mut Rng,
) -> Result<(Output, Output)> {
    let vars = vm.sorted_vars().into_iter().map(|(_, v)| v).collect();
    let mut opt = candle_nn::optim::AdamW::new_lr(vars, lr)?;
    let first = model.forward(batch, mode, rng)?;
    for _ in 0..steps {
        opt.backward_step(&model.forward(batch, Mode::train(0.0), rng)?.total_loss()?)?;
    }
    Ok((first, model.forward(batch, mode, rng)?))
}

/// The total loss of an output as a number.
pub(crate) fn total(out: &Output) -> Result<f32> {
    out.total_loss()?.to_scalar::<f32>()
}

/// The names of the variables of `vm` that `loss`'s gradient reaches (a non-zero gradient).
pub(crate) fn touched(vm: &SeededVarMap, loss: &candle_core::Tensor) -> Result<Vec<String>> {
    let grads = loss.backward()?;
    let mut names = vec![];
    for (name, v) in vm.sorted_vars() {
        if let Some(g) = grads.get(v.as_tensor()) {
            if g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0 {
                names.push(name);
            }
        }
    }
    Ok(names)
}

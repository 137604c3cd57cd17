//! Helpers shared by the models' unit tests.

use candle_core::Result;
use candle_nn::Optimizer as _;

use gaze_tensor::seed::Rng;
use gaze_tensor::SeededVarMap;

use crate::model::{Batch, Model, Output};

/// Fits `model` (whose variables live in `vm`) to one fixed batch: one forward, `steps` AdamW steps at
/// `lr` on the total loss, one more forward. Both measured forwards run in training mode when `train`,
/// else in evaluation mode. Returns the first and the last output, for the caller to compare.
pub(crate) fn fit_fixed_batch(
    model: &dyn Model,
    vm: &SeededVarMap,
    batch: &Batch,
    steps: usize,
    lr: f64,
    train: bool,
    rng: &mut Rng,
) -> Result<(Output, Output)> {
    let vars = vm.sorted_vars().into_iter().map(|(_, v)| v).collect();
    let mut opt = candle_nn::optim::AdamW::new_lr(vars, lr)?;
    let first = model.forward(batch, train, rng)?;
    for _ in 0..steps {
        opt.backward_step(&model.forward(batch, true, rng)?.total_loss()?)?;
    }
    Ok((first, model.forward(batch, train, rng)?))
}

/// The total loss of an output as a number.
pub(crate) fn total(out: &Output) -> Result<f32> {
    out.total_loss()?.to_scalar::<f32>()
}

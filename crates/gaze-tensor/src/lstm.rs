//! An LSTM cell for models that step it themselves (RAM's core), built for candle's CPU autograd.
//!
//! The maths, parameter names, shapes and initialisation are those of `candle_nn::LSTM` (and
//! PyTorch's `nn.LSTM`, "Long Short-Term Memory", Hochreiter and Schmidhuber, 1997): gates
//! `[i, f, g, o] = W_ih x + b_ih + W_hh h + b_hh`, `c' = sigmoid(f) c + sigmoid(i) tanh(g)`,
//! `h' = sigmoid(o) tanh(c')`, so a checkpoint of either loads into the other. What differs is the
//! graph autograd walks at every step. `candle_nn::LSTM::step` multiplies by the transposed weights
//! (whose gradients are then added back transposed, a strided copy of each weight at every step),
//! broadcasts two biases (each reduced over the batch in the backward pass), and cuts the gates
//! into four views (each padded back to the full width with zeros in the backward pass). Here:
//! - [`LstmCell::weights`] lays the weights out once per forward pass as one contiguous
//!   `(1 + in + hidden, 4 hidden)` matrix, `[b_ih + b_hh; W_ih^T; W_hh^T]`, shared by every step;
//! - a step is one matrix product `[1, x, h] W` (the first step, from the zero state, multiplies
//!   `[1, x]` by the matrix's first `1 + in` rows);
//! - the gate non-linearities and the cell update are two fused operations ([`lstm_cell`],
//!   [`lstm_hidden`]) with hand-written gradients.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::ops::{contiguous_f32, with_values};

fn err(m: String) -> candle_core::Error {
    candle_core::Error::Msg(m)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// tanh through one `exp` (`1 - 2 / (e^{2x} + 1)`, exact at both tails): libm's `tanhf` goes
/// through `expm1f` and took a fifth of a RAM training step when these operations called it.
/// The absolute error stays within a few float ulps of 1.
fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / ((2.0 * x).exp() + 1.0)
}

/// Checks gates (b, 4h) against a state tensor (b, h); returns (b, h).
fn check(gates: &Shape, state: &Shape, what: &str) -> Result<(usize, usize)> {
    let (b, g4) = gates.dims2()?;
    let (sb, h) = state.dims2()?;
    if sb != b || g4 != 4 * h {
        return Err(err(format!("lstm: gates {gates:?} do not fit {what} {state:?} (want (b, 4h) and (b, h))")));
    }
    Ok((b, h))
}

/// The forward pass of a gate operation: `rule(gate row, j, state[j]) -> out[j]` for every row of
/// gates (b, 4h) and state (b, h).
fn gate_forward(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    rule: impl Fn(&[f32], usize, f32) -> f32,
) -> Result<(CpuStorage, Shape)> {
    let (b, h) = check(l1.shape(), l2.shape(), "the cell state")?;
    let (z, c) = (contiguous_f32(s1, l1, "lstm gates")?, contiguous_f32(s2, l2, "lstm cell state")?);
    let mut out = vec![0f32; b * h];
    for r in 0..b {
        let zr = &z[r * 4 * h..(r + 1) * 4 * h];
        for (j, o) in out[r * h..(r + 1) * h].iter_mut().enumerate() {
            *o = rule(zr, j, c[r * h + j]);
        }
    }
    Ok((CpuStorage::F32(out), Shape::from((b, h))))
}

/// The backward pass of a gate operation: `rule(gate row, j, state[j], d out[j], d gate row) ->
/// d state[j]`, which writes the gates' gradients it has into the row; gives (d gates, d state).
fn gate_backward(
    gates: &Tensor,
    c: &Tensor,
    grad: &Tensor,
    rule: impl Fn(&[f32], usize, f32, f32, &mut [f32]) -> f32,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (b, h) = check(gates.shape(), c.shape(), "the cell state")?;
    let (mut dz, mut dc) = (vec![0f32; b * 4 * h], vec![0f32; b * h]);
    with_values(gates, "lstm", |z| {
        with_values(c, "lstm", |cv| {
            with_values(grad, "lstm", |d| {
                for r in 0..b {
                    let (zr, dzr) = (&z[r * 4 * h..(r + 1) * 4 * h], &mut dz[r * 4 * h..(r + 1) * 4 * h]);
                    for j in 0..h {
                        dc[r * h + j] = rule(zr, j, cv[r * h + j], d[r * h + j], dzr);
                    }
                }
                Ok(())
            })
        })
    })?;
    let dev = gates.device();
    Ok((Some(Tensor::from_vec(dz, (b, 4 * h), dev)?), Some(Tensor::from_vec(dc, (b, h), dev)?)))
}

/// `c' = sigmoid(f) c + sigmoid(i) tanh(g)` from gates and the previous cell state.
struct CellUpdate;

impl CustomOp2 for CellUpdate {
    fn name(&self) -> &'static str {
        "gaze-lstm-cell"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = l2.shape().dims().last().copied().unwrap_or(0);
        gate_forward(s1, l1, s2, l2, |z, j, c| sigmoid(z[h + j]) * c + sigmoid(z[j]) * tanh(z[2 * h + j]))
    }

    fn bwd(
        &self,
        gates: &Tensor,
        c: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let h = c.dims().last().copied().unwrap_or(0);
        gate_backward(gates, c, grad, |z, j, c, d, dz| {
            let (i, f, g) = (sigmoid(z[j]), sigmoid(z[h + j]), tanh(z[2 * h + j]));
            dz[j] = d * g * i * (1.0 - i);
            dz[h + j] = d * c * f * (1.0 - f);
            dz[2 * h + j] = d * i * (1.0 - g * g);
            d * f
        })
    }
}

/// `h' = sigmoid(o) tanh(c')` from gates and the new cell state.
struct HiddenUpdate;

impl CustomOp2 for HiddenUpdate {
    fn name(&self) -> &'static str {
        "gaze-lstm-hidden"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = l2.shape().dims().last().copied().unwrap_or(0);
        gate_forward(s1, l1, s2, l2, |z, j, c| sigmoid(z[3 * h + j]) * tanh(c))
    }

    fn bwd(
        &self,
        gates: &Tensor,
        c: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let h = c.dims().last().copied().unwrap_or(0);
        gate_backward(gates, c, grad, |z, j, c, d, dz| {
            let (o, t) = (sigmoid(z[3 * h + j]), tanh(c));
            dz[3 * h + j] = d * t * o * (1.0 - o);
            d * o * (1.0 - t * t)
        })
    }
}

/// The new cell state from the gates (b, 4h), in the order i, f, g, o, and the previous cell
/// state c (b, h): `sigmoid(f) c + sigmoid(i) tanh(g)`, (b, h). Differentiable in both.
pub fn lstm_cell(gates: &Tensor, c: &Tensor) -> Result<Tensor> {
    gates.contiguous()?.apply_op2(&c.contiguous()?, CellUpdate)
}

/// The new hidden state from the gates (b, 4h) and the new cell state c (b, h):
/// `sigmoid(o) tanh(c)`, (b, h). Differentiable in both.
pub fn lstm_hidden(gates: &Tensor, c: &Tensor) -> Result<Tensor> {
    gates.contiguous()?.apply_op2(&c.contiguous()?, HiddenUpdate)
}

/// An LSTM state.
#[derive(Debug, Clone)]
pub struct LstmState {
    /// Hidden state (b, hidden).
    pub h: Tensor,
    /// Cell state (b, hidden).
    pub c: Tensor,
}

/// An LSTM cell's parameters, named and initialised as `candle_nn::lstm(in, hidden,
/// LSTMConfig::default(), vb)`: `weight_ih_l0` (4h, in), `weight_hh_l0` (4h, h), `bias_ih_l0`,
/// `bias_hh_l0` (4h).
#[derive(Debug, Clone)]
pub struct LstmCell {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    input: usize,
    hidden: usize,
}

impl LstmCell {
    /// A cell reading `input` features into `hidden` units.
    pub fn new(input: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let kaiming = candle_nn::init::DEFAULT_KAIMING_UNIFORM;
        let zero = candle_nn::Init::Const(0.0);
        Ok(Self {
            w_ih: vb.get_with_hints((4 * hidden, input), "weight_ih_l0", kaiming)?,
            w_hh: vb.get_with_hints((4 * hidden, hidden), "weight_hh_l0", kaiming)?,
            b_ih: vb.get_with_hints(4 * hidden, "bias_ih_l0", zero)?,
            b_hh: vb.get_with_hints(4 * hidden, "bias_hh_l0", zero)?,
            input,
            hidden,
        })
    }

    /// Hidden width.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// The weights laid out for stepping: build once per forward pass and step with it; the
    /// gradients of every step reach the parameters through this one layout.
    pub fn weights(&self) -> Result<LstmWeights> {
        let bias = (&self.b_ih + &self.b_hh)?.unsqueeze(0)?;
        let w = Tensor::cat(&[bias, self.w_ih.t()?, self.w_hh.t()?], 0)?.contiguous()?;
        Ok(LstmWeights { first: w.narrow(0, 0, 1 + self.input)?, w, input: self.input, hidden: self.hidden })
    }
}

/// [`LstmCell`] weights as one matrix `[b; W_ih^T; W_hh^T]`, (1 + in + h, 4h).
#[derive(Debug, Clone)]
pub struct LstmWeights {
    w: Tensor,
    /// The first 1 + in rows: the step from the zero state, where `W_hh h` vanishes.
    first: Tensor,
    input: usize,
    hidden: usize,
}

impl LstmWeights {
    /// One step. Shapes: x (b, in), state (b, h) each or None (the zero state) -> the new state.
    pub fn step(&self, x: &Tensor, state: Option<&LstmState>) -> Result<LstmState> {
        let (b, i) = x.dims2()?;
        if i != self.input {
            return Err(err(format!("lstm: input {:?} has {i} features, the cell reads {}", x.dims(), self.input)));
        }
        let ones = Tensor::ones((b, 1), x.dtype(), x.device())?;
        let (gates, c) = match state {
            None => {
                let gates = Tensor::cat(&[&ones, x], 1)?.matmul(&self.first)?;
                (gates, Tensor::zeros((b, self.hidden), x.dtype(), x.device())?)
            }
            Some(s) => (Tensor::cat(&[&ones, x, &s.h], 1)?.matmul(&self.w)?, s.c.clone()),
        };
        let c = lstm_cell(&gates, &c)?;
        let h = lstm_hidden(&gates, &c)?;
        Ok(LstmState { h, c })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::grad_check;
    use crate::{Seed, SeededVarMap};
    use candle_core::{Device, Var};
    use candle_nn::rnn::{LSTMConfig, RNN};
    use rand::Rng as _;

    fn random(shape: (usize, usize), seed: u64, scale: f32) -> Result<Tensor> {
        let mut r = Seed(seed).rng();
        let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| scale * (r.random::<f32>() * 2.0 - 1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn matches_candle_lstm_in_values_and_gradients() -> Result<()> {
        let (b, input, hidden, steps) = (5, 7, 6, 3);
        let vm = SeededVarMap::new(Seed(11));
        let vb = vm.builder(&Device::Cpu);
        let reference = candle_nn::lstm(input, hidden, LSTMConfig::default(), vb.pp("core"))?;
        let cell = LstmCell::new(input, hidden, vb.pp("core"))?;
        assert_eq!(vm.sorted_vars().len(), 4, "both read the same four parameters");
        // Non-zero biases, so that their layout is exercised too.
        for (name, v) in vm.sorted_vars() {
            if name.contains("bias") {
                v.set(&random((1, 4 * hidden), 12 + name.len() as u64, 0.5)?.squeeze(0)?)?;
            }
        }
        let xs: Vec<Var> =
            (0..steps).map(|t| Var::from_tensor(&random((b, input), t as u64, 1.0)?)).collect::<Result<_>>()?;
        let probe = random((b, hidden), 99, 1.0)?;
        let loss = |h: &Tensor, c: &Tensor| -> Result<Tensor> { (h * &probe)?.sum_all()? + c.sqr()?.sum_all()? };

        let mut s = reference.zero_state(b)?;
        for x in &xs {
            s = reference.step(x.as_tensor(), &s)?;
        }
        let want = loss(s.h(), s.c())?;
        let w = cell.weights()?;
        let mut state: Option<LstmState> = None;
        for x in &xs {
            state = Some(w.step(x.as_tensor(), state.as_ref())?);
        }
        let Some(state) = state else { panic!("three steps") };
        assert!(max_diff(&state.h, s.h())? < 1e-5 && max_diff(&state.c, s.c())? < 1e-5);
        let got = loss(&state.h, &state.c)?;

        let (gw, gg) = (want.backward()?, got.backward()?);
        let mut compared = 0;
        let tracked = vm.sorted_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone()));
        for (name, t) in tracked.chain(xs.iter().enumerate().map(|(i, x)| (format!("x{i}"), x.as_tensor().clone()))) {
            let (Some(a), Some(b)) = (gw.get(&t), gg.get(&t)) else { panic!("no gradient for {name}") };
            let d = max_diff(a, b)?;
            assert!(d < 1e-4, "{name}: gradients differ by {d}");
            compared += 1;
        }
        assert_eq!(compared, 4 + steps);
        Ok(())
    }

    #[test]
    fn fused_updates_pass_finite_difference_checks() -> Result<()> {
        let (gates, c) = (random((3, 8), 1, 2.0)?, random((3, 2), 2, 1.5)?);
        let weights = random((3, 2), 3, 1.0)?;
        for (name, op) in [("cell", lstm_cell as fn(&Tensor, &Tensor) -> Result<Tensor>), ("hidden", lstm_hidden)] {
            let by_gates = grad_check(|g| (op(g, &c)? * &weights)?.sum_all(), &gates, 1e-2)?;
            let by_state = grad_check(|s| (op(&gates, s)? * &weights)?.sum_all(), &c, 1e-2)?;
            assert!(by_gates < 2e-3 && by_state < 2e-3, "{name}: {by_gates} {by_state}");
        }
        Ok(())
    }

    #[test]
    fn wrong_shapes_are_named() -> Result<()> {
        let e = lstm_cell(&random((3, 8), 1, 1.0)?, &random((3, 3), 2, 1.0)?).err().map(|e| e.to_string());
        assert!(e.as_deref().unwrap_or_default().contains("do not fit the cell state"), "{e:?}");
        let vm = SeededVarMap::new(Seed(0));
        let w = LstmCell::new(4, 2, vm.builder(&Device::Cpu))?.weights()?;
        let e = w.step(&random((3, 5), 1, 1.0)?, None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("5 features, the cell reads 4"), "{e}");
        Ok(())
    }
}

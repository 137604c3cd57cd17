//! Tensor operations that no single gaze crate owns.
//!
//! - [`seed`]: one experiment seed, named sub-streams (`init`, `sampling`, `data`, ...), and
//!   reproducible `rand` generators derived from them. candle's CPU random number generator cannot
//!   be seeded, so every random draw in gaze comes from here.
//! - [`init`]: a seeded VarBuilder backend, so initial weights are reproducible.
//! - [`sample`]: categorical and Gaussian draws with log-probabilities and entropies.
//! - [`ops`]: presence (squared L2 per cell), top-k masks, masked softmax.
//! - [`glimpse`]: batched multi-scale glimpse extraction (RAM's retina), differentiable in the image.
//! - [`conv`]: 2-d convolution as one matrix product per pass (unfold, product, fold), forward and
//!   backward.
//! - [`lstm`]: an LSTM cell (candle's maths and parameters) with a cheaper autograd graph per step.
//! - [`relational`]: a relation network head's pair sums, pair pooling and bias additions as fused
//!   operations (their backward passes avoid candle's strided reductions).
//! - [`testing`]: finite-difference gradient checks.

pub mod conv;
pub mod glimpse;
pub mod init;
pub mod lstm;
pub mod ops;
pub mod relational;
pub mod sample;
pub mod seed;
pub mod testing;

pub use glimpse::{glimpses, GlimpseSpec};
pub use init::SeededVarMap;
pub use seed::Seed;

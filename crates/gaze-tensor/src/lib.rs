//! Tensor operations that no single gaze crate owns.
//!
//! - [`seed`]: one experiment seed, named sub-streams (`init`, `sampling`, `data`, ...), and
//!   reproducible `rand` generators derived from them. candle's CPU random number generator cannot
//!   be seeded, so every random draw in gaze comes from here.
//! - [`init`]: a seeded VarBuilder backend, so initial weights are reproducible.

pub mod init;
pub mod seed;

pub use init::SeededVarMap;
pub use seed::Seed;

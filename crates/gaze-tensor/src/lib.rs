//! Tensor operations that no single gaze crate owns.
//!
//! - [`seed`]: one experiment seed, named sub-streams (`init`, `sampling`, `data`, ...), and
//!   reproducible `rand` generators derived from them. candle's CPU random number generator cannot
//!   be seeded, so every random draw in gaze comes from here.

pub mod seed;

pub use seed::Seed;

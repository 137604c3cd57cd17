//! gaze's cross-crate tests, as one binary (one link against the whole stack instead of one per
//! file): data generators and loaders, determinism, the trainer end to end, VQA, captions.

mod captions;
mod common;
mod data;
mod determinism;
mod dram;
mod ltpa;
mod sequence;
mod train;
mod vqa;

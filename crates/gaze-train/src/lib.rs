//! Training for gaze.
//!
//! - [`config`]: experiment files (`{ name, seed, model, data, optim, train, targets }`).
//! - [`data`]: the splits, their task, batches and augmentation.
//! - [`trainer`]: the run loop — seeded shuffles, named loss terms, divergence guard, checkpoints and
//!   exact resume — and the run folder `runs/<name>/<timestamp>-s<seed>/`.
//! - [`evaluate`]: a model over a split, measured by the [`metrics`] its task asks for.
//! - [`record`]: what a run says of itself (`summary.json`: revision, command, metrics).
//! - [`optim`]: AdamW and SGD whose state is saved, clipping, schedules.
//! - [`pretrained`]: weights a model asks for, read when a run starts.
//! - [`checkpoint`]: atomic safetensors checkpoints; [`shard`]: data-parallel steps.
//! - [`report`]: attention pictures, curves and `report.md`; [`results`]: `experiments/RESULTS.md`.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod evaluate;
pub mod export;
pub mod metrics;
pub mod optim;
pub mod pretrained;
pub mod record;
pub mod report;
pub mod results;
pub mod shard;
pub mod trainer;

pub use config::ExperimentConfig;
pub use error::{Result, TrainError};
pub use record::RunSummary;
pub use trainer::{run, RunOptions};

impl ExperimentConfig {
    /// The `--quick` version of an experiment: one epoch on a few hundred digits of the embedded
    /// fixture, for smoke checks and tests. Its numbers mean nothing and are never recorded.
    pub fn quick(mut self) -> Self {
        let shrink = |m: &mut config::MnistData| {
            m.source = gaze_data::MnistSource::Fixture;
            m.train_limit = 256;
            m.test_limit = 128;
        };
        match &mut self.data {
            config::DataConfig::Mnist(m) => shrink(m),
            config::DataConfig::MnistCanvas(c) => shrink(&mut c.digits),
            config::DataConfig::MnistPairs(p) => shrink(&mut p.digits),
            config::DataConfig::Cifar(c) => (c.train_limit, c.test_limit) = (256, 128),
            config::DataConfig::BarnVqa(b) => {
                (b.train_scenes, b.val_scenes, b.test_scenes) = (96, 16, 16);
            }
            config::DataConfig::SortOfClevr(c) => {
                (c.train_images, c.val_images, c.test_images) = (48, 8, 8);
            }
            config::DataConfig::ShapeCaptions(c) => {
                (c.train_images, c.val_images, c.test_images) = (96, 16, 16);
            }
            config::DataConfig::VqaFolder(_) | config::DataConfig::CaptionFolder(_) => {}
        }
        self.train.epochs = 1;
        self.train.pictures = self.train.pictures.min(4);
        self
    }
}

/// Keeps memory freed to mimalloc (the allocator of gaze's binaries) mapped for reuse instead of
/// returning it to the OS after a delay (mimalloc's `purge_delay` option set to -1, never). A
/// training step frees and re-allocates the same large tensors; with purging on, a step longer
/// than the delay page-faults them in afresh every time. Measured with `cargo xtask bench
/// rn-sort-of-clevr --batch 320` (625 pairs per question): 2.5 to 7.4 s per step, changing as the
/// process ran, with purging; 2.4 to 2.8 s without. Call at the start of a binary; harmless under
/// another allocator.
pub fn keep_freed_memory() {
    // `mi_option_purge_delay` is entry 15 of `mi_option_t` in mimalloc 2 and 3; the Rust
    // bindings do not name it.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // Safe: sets one integer option, which mimalloc reads when it schedules a purge.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
    }
}

/// At most four threads a core: more only makes a run slower, and a typo (`threads = 100000`)
/// would start that many. A larger request is clamped with a warning; 0 stays "as many as there
/// are cores".
pub fn bounded_threads(n: usize, cores: usize) -> usize {
    let most = 4 * cores.max(1);
    if n > most {
        eprintln!("warning: {n} threads asked for on {cores} cores; using {most}");
        most
    } else {
        n
    }
}

/// Sets the number of CPU threads candle uses (0: leave the default), at most
/// [`bounded_threads`]. Call before any tensor work: the thread pool reads `RAYON_NUM_THREADS`
/// once.
pub fn set_threads(n: usize) {
    let n = bounded_threads(n, std::thread::available_parallelism().map_or(1, |c| c.get()));
    if n > 0 {
        // Safe here: called at the start of a binary, before any thread is spawned.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn threads_are_bounded_by_four_a_core() {
        assert_eq!(super::bounded_threads(100_000, 2), 8);
        assert_eq!(super::bounded_threads(8, 2), 8);
        assert_eq!(super::bounded_threads(3, 2), 3);
        assert_eq!(super::bounded_threads(0, 2), 0);
        assert_eq!(super::bounded_threads(5, 0), 4);
    }
}

//! Seeded data generators. Sample `i` of a generator depends only on the generator's settings,
//! its seed and `i` (its random draws come from `seed.index(i)`), so a data set can be made
//! lazily, in any order, and the same seed always gives the same bytes.
//!
//! Every sample carries the ground-truth boxes of its objects so that later work can score where
//! attention lands. The exact specifications are in `datasets/README.md`.

pub mod barn;
pub mod captions;
pub mod mnist_canvas;
pub mod sort_of_clevr;

pub use barn::{BarnConfig, BarnVqa};
pub use captions::{Caption, CaptionConfig, CaptionSample, ShapeCaptions};
pub use mnist_canvas::{
    pair_class, CanvasConfig, DigitSample, MnistCanvas, MnistPairs, PairSample, PairsConfig, PAIR_CLASSES,
};
pub use sort_of_clevr::{SortOfClevr, SortOfClevrConfig};

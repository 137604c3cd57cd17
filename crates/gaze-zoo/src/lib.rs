//! gaze's models, one per file, and the interface the trainer drives them through.
//!
//! A model takes a [`Batch`] of tensors and returns an [`Output`]: logits, its loss terms by name
//! (train and eval share one loss), and what it attended to, for the trainer to draw.
//! Models are chosen by the tagged enum [`ModelConfig`].

pub mod convnet_classifier;
pub mod han;
pub mod model;
pub mod ram;
pub mod soft_attention_mnist;
#[cfg(test)]
mod test_util;

pub use convnet_classifier::{ConvNetClassifier, ConvNetClassifierConfig};
pub use han::{Han, HanConfig, Head, PairNorm, QuestionInput, Selection};
pub use model::{build, AttentionMap, Batch, DataShape, Model, ModelConfig, Output, Questions};
pub use ram::{Core, EvalPath, Ram, RamConfig, Start};
pub use soft_attention_mnist::{Relation, SoftAttentionMnist, SoftAttentionMnistConfig};

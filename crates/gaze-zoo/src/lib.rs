//! gaze's models, one per file, and the interface the trainer drives them through.
//!
//! A model takes a [`Batch`] of tensors and returns an [`Output`]: scores (per class, or per step
//! and token), its loss terms by name (train and eval share one loss), and what it attended to,
//! for the trainer to draw. Sequence models also decode without teacher forcing
//! ([`Model::decode`], greedy or beam search from [`decode`]). Models are chosen by the tagged
//! enum [`ModelConfig`] in [`registry`].

pub mod convnet_classifier;
pub mod decode;
pub mod dram;
pub mod explain;
pub mod han;
pub mod learn_to_pay_attention;
pub mod model;
pub mod ram;
pub mod registry;
pub mod relation_net;
pub mod show_attend_tell;
pub mod soft_attention_mnist;
#[cfg(test)]
mod test_util;

pub use convnet_classifier::{ConvNetClassifier, ConvNetClassifierConfig};
pub use dram::{Dram, DramConfig};
pub use gaze_encoders::{CellAxis, CellFrame};
pub use han::{Han, HanConfig, Head, PairNorm, QuestionInput, Selection};
pub use learn_to_pay_attention::{LearnToPayAttention, LtpaConfig, LtpaHead};
pub use model::{
    tokens, AttentionMap, Batch, DataShape, Decoded, Mode, Model, Output, Questions, Scores, Search, Targets,
};
pub use ram::{Core, EvalPath, Ram, RamConfig, Start};
pub use registry::{build, ModelConfig};
pub use relation_net::{RelationHead, RelationNet, RelationNetConfig};
pub use show_attend_tell::{Looking, Query, ShowAttendTell, ShowAttendTellConfig};
pub use soft_attention_mnist::{Relation, SoftAttentionMnist, SoftAttentionMnistConfig};

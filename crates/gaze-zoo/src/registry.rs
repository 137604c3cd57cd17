//! The registry of model types: one variant per model, chosen by `type` in the experiment file,
//! and one `match` that builds it. Adding a model is one variant and one line here.

use candle_core::Result;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::convnet_classifier::{ConvNetClassifier, ConvNetClassifierConfig};
use crate::dram::{Dram, DramConfig};
use crate::han::{Han, HanConfig};
use crate::learn_to_pay_attention::{LearnToPayAttention, LtpaConfig};
use crate::model::{DataShape, Model};
use crate::ram::{Ram, RamConfig};
use crate::relation_net::{RelationNet, RelationNetConfig};
use crate::show_attend_tell::{ShowAttendTell, ShowAttendTellConfig};
use crate::soft_attention_mnist::{SoftAttentionMnist, SoftAttentionMnistConfig};

/// Every model, by `type` in the experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelConfig {
    /// A plain ConvNet classifier (no attention; the baseline).
    Convnet(ConvNetClassifierConfig),
    /// Elementary soft attention on MNIST (conv volume + LSTM key, three relations).
    SoftAttentionMnist(SoftAttentionMnistConfig),
    /// The recurrent attention model (glimpses, recurrent core, REINFORCE location policy).
    Ram(RamConfig),
    /// Hard-attention VQA (HAN / AdaHAN, soft and all-cells references).
    Han(HanConfig),
    /// The Relation Network: its relational head on every CNN cell (HAN's all-cells reference).
    RelationNet(RelationNetConfig),
    /// Show, Attend and Tell: a CNN grid read by an LSTM with soft, hard or no attention, one
    /// token per step (sequence targets: captions, digits in reading order).
    ShowAttendTell(ShowAttendTellConfig),
    /// DRAM: glimpses read by two stacked LSTMs, a context network setting where to look first,
    /// one label per object (several objects per image: the digits of a pair, or their sum).
    Dram(DramConfig),
    /// Learn to Pay Attention: attention estimators on a VGG backbone's blocks, the classifier
    /// reading only the attended vectors (or, with `attention = false`, the same backbone's
    /// global vector: the reference).
    LearnToPayAttention(LtpaConfig),
}

/// Builds the model of `cfg` for data of `shape`: every model is `new(config, shape, vb)`.
pub fn build(cfg: &ModelConfig, shape: &DataShape, vb: VarBuilder) -> Result<Box<dyn Model>> {
    Ok(match cfg {
        ModelConfig::Convnet(c) => Box::new(ConvNetClassifier::new(c, shape, vb)?),
        ModelConfig::SoftAttentionMnist(c) => Box::new(SoftAttentionMnist::new(c, shape, vb)?),
        ModelConfig::Ram(c) => Box::new(Ram::new(c, shape, vb)?),
        ModelConfig::Han(c) => Box::new(Han::new(c, shape, vb)?),
        ModelConfig::RelationNet(c) => Box::new(RelationNet::new(c, shape, vb)?),
        ModelConfig::ShowAttendTell(c) => Box::new(ShowAttendTell::new(c, shape, vb)?),
        ModelConfig::Dram(c) => Box::new(Dram::new(c, shape, vb)?),
        ModelConfig::LearnToPayAttention(c) => Box::new(LearnToPayAttention::new(c, shape, vb)?),
    })
}

//! Encoders shared by gaze's models.
//!
//! - [`convnet`]: a configurable ConvNet (channels, kernel, convs per block, kernel == stride
//!   pooling, optional batch norm; VGG-style blocks) that returns every block's feature map.
//! - [`resnet`]: a ResNet-18 / -34 trunk under torchvision's parameter names (pretrained weights
//!   load as published), returning the grid before the global pooling; [`Backbone`] picks it or
//!   the ConvNet in a model's config.
//! - [`text`]: word embedding + LSTM over padded token ids (last valid state and all states).

pub mod convnet;
pub mod resnet;
pub mod text;

use candle_core::Result;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

pub use convnet::{CellAxis, CellFrame, ConvNet, ConvNetConfig, Padding, Stage};
pub use resnet::{Depth, ResNet, ResNetConfig};
pub use text::{TextEncoder, TextEncoderConfig, TextEncoding};

/// A pretrained image trunk a model may read instead of its own ConvNet, as a config's
/// `encoder = { type = "resnet18", weights = "...", trainable = false }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Backbone {
    /// ResNet-18.
    Resnet18(ResNetConfig),
    /// ResNet-34.
    Resnet34(ResNetConfig),
}

impl Backbone {
    /// The depth and settings.
    pub fn parts(&self) -> (Depth, &ResNetConfig) {
        match self {
            Backbone::Resnet18(c) => (Depth::D18, c),
            Backbone::Resnet34(c) => (Depth::D34, c),
        }
    }

    /// Builds the trunk under `vb`.
    pub fn build(&self, vb: VarBuilder) -> Result<ResNet> {
        let (depth, cfg) = self.parts();
        ResNet::new(depth, cfg, vb)
    }
}

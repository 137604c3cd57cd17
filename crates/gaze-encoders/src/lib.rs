//! Encoders shared by gaze's models.
//!
//! - [`convnet`]: a configurable ConvNet (channels, kernel, convs per block, kernel == stride
//!   pooling, optional batch norm; VGG-style blocks) that returns every block's feature map.
//! - [`text`]: word embedding + LSTM over padded token ids (last valid state and all states).

pub mod convnet;
pub mod text;

pub use convnet::{ConvNet, ConvNetConfig, Padding, Stage};
pub use text::{TextEncoder, TextEncoderConfig, TextEncoding};

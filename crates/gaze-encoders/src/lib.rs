//! Encoders shared by gaze's models.
//!
//! - [`convnet`]: a configurable ConvNet (channels, kernel, kernel == stride pooling, optional
//!   batch norm) that returns every block's feature map.

pub mod convnet;

pub use convnet::{ConvNet, ConvNetConfig};

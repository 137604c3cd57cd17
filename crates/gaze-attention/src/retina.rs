//! The glimpse sensor of "Recurrent Models of Visual Attention" (Mnih et al. 2014, section 3.1):
//! k concentric patches around a location, each larger one average-pooled to g x g, flattened.
//! Built on [`gaze_tensor::glimpse::glimpses`], which cuts the whole batch at once.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use gaze_tensor::glimpse::{glimpses, GlimpseSpec, Integral};

/// Settings of [`Retina`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetinaConfig {
    /// Patch side g.
    pub patch: usize,
    /// Number of scales k.
    pub scales: usize,
    /// Scale factor s.
    pub factor: usize,
}

impl Default for RetinaConfig {
    /// The 28x28 MNIST setting: one 8x8 patch (the public reimplementations' default).
    fn default() -> Self {
        Self { patch: 8, scales: 1, factor: 2 }
    }
}

impl RetinaConfig {
    /// For tests.
    pub fn tiny() -> Self {
        Self { patch: 2, scales: 2, factor: 2 }
    }

    /// Length of a flattened glimpse for `channels` channels: k * c * g * g.
    pub fn output_len(&self, channels: usize) -> usize {
        self.scales * channels * self.patch * self.patch
    }
}

/// The glimpse sensor (no parameters).
#[derive(Debug, Clone)]
pub struct Retina {
    spec: GlimpseSpec,
}

impl Retina {
    /// A retina.
    pub fn new(cfg: &RetinaConfig) -> Self {
        Self { spec: GlimpseSpec { patch: cfg.patch, scales: cfg.scales, factor: cfg.factor } }
    }

    /// Shapes: images (b, c, h, w), locs (b, 2) in [-1, 1] -> (b, k * c * g * g).
    pub fn forward(&self, images: &Tensor, locs: &Tensor) -> Result<Tensor> {
        glimpses(images, locs, &self.spec)?.flatten_from(1)
    }

    /// [`Retina::forward`] from a summed-area table of the images built once for every glimpse
    /// step of a forward pass. Shapes: locs (b, 2) -> (b, k * c * g * g).
    pub fn forward_integral(&self, images: &Integral, locs: &Tensor) -> Result<Tensor> {
        images.glimpses(locs, &self.spec)?.flatten_from(1)
    }

    /// The patches unflattened. Shapes: -> (b, k, c, g, g).
    pub fn patches(&self, images: &Tensor, locs: &Tensor) -> Result<Tensor> {
        glimpses(images, locs, &self.spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::rand;
    use candle_core::Device;
    use gaze_tensor::testing::grad_check;

    #[test]
    fn flattened_glimpse_and_gradient() -> Result<()> {
        let r = Retina::new(&RetinaConfig::tiny());
        let img = rand(&[2, 1, 6, 6], 1);
        let locs = Tensor::new(&[[0.0f32, 0.0], [-1.0, 1.0]], &Device::Cpu)?;
        let out = r.forward(&img, &locs)?;
        assert_eq!(out.dims(), &[2, RetinaConfig::tiny().output_len(1)]);
        let wts = rand(&[2, 8], 3);
        assert!(grad_check(|x| (r.forward(x, &locs)? * &wts)?.sum_all(), &img, 1e-2)? < 2e-2);
        let too_big = Retina::new(&RetinaConfig { patch: 8, scales: 2, factor: 2 });
        assert!(too_big.forward(&img, &locs).is_err());
        Ok(())
    }
}

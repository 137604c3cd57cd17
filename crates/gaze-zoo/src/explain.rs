//! Attention read off a trained model afterwards: Grad-CAM ("Grad-CAM: Visual Explanations from
//! Deep Networks via Gradient-based Localization", Selvaraju et al. 2017). For the last
//! convolutional feature map A (k channels) and the score y_c of class c, each channel's weight
//! is its gradient averaged over space, `alpha_k = mean_ij dy_c / dA_kij`, and the map is
//! `ReLU(sum_k alpha_k A_k)`. Works for every model that offers its feature map
//! ([`Model::conv_features`]).

use candle_core::{DType, Result, Tensor, D};

use crate::model::Model;

/// Grad-CAM maps (b, h, w) for `images` (b, c, h', w'), each scaled to sum to 1 (uniform where the
/// map is zero everywhere), for `classes` (one per image; None: each image's predicted class).
/// None when the model has no convolutional feature map.
pub fn grad_cam(model: &dyn Model, images: &Tensor, classes: Option<&[u32]>) -> Result<Option<Tensor>> {
    let Some((feats, logits)) = model.conv_features(images)? else { return Ok(None) };
    let b = logits.dim(0)?;
    let chosen = match classes {
        Some(c) if c.len() == b => Tensor::from_slice(c, b, logits.device())?,
        Some(c) => {
            return Err(candle_core::Error::Msg(format!("grad_cam: {} classes for {b} images", c.len())));
        }
        None => logits.argmax(D::Minus1)?,
    };
    // Rows are independent, so the sum's gradient is each row's own.
    let score = logits.gather(&chosen.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?.sum_all()?;
    let grads = score.backward()?;
    let g = grads.get(&feats).cloned().unwrap_or(feats.zeros_like()?);
    let alpha = g.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?; // (b, k, 1, 1)
    let cam = feats.detach().broadcast_mul(&alpha)?.sum(1)?.relu()?; // (b, h, w)
    let (_, h, w) = cam.dims3()?;
    let total = cam.sum_keepdim(D::Minus1)?.sum_keepdim(D::Minus2)?;
    let uniform = Tensor::full(1.0 / (h * w) as f32, cam.shape(), cam.device())?;
    let empty = total.le(0f32)?.broadcast_as(cam.shape())?;
    let scaled = cam.broadcast_div(&total.maximum(1e-30)?)?;
    Ok(Some(empty.where_cond(&uniform, &scaled)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convnet_classifier::{ConvNetClassifier, ConvNetClassifierConfig};
    use crate::model::DataShape;
    use candle_core::Device;
    use gaze_tensor::{Seed, SeededVarMap};
    use rand::Rng as _;

    /// Grad-CAM against its definition: on a tiny ConvNet, the map equals ReLU(sum_k alpha_k A_k)
    /// with alpha_k the spatial mean of the class score's gradient, found here by finite
    /// differences on the feature map through the model's own head.
    #[test]
    fn grad_cam_weights_channels_by_their_pooled_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let vm = SeededVarMap::new(Seed(0));
        let model = ConvNetClassifier::new(
            &ConvNetClassifierConfig::tiny(),
            &DataShape::images((1, 12, 12), 3),
            vm.builder(&dev),
        )?;
        let mut r = Seed(1).rng();
        let px: Vec<f32> = (0..2 * 144).map(|_| r.random::<f32>()).collect();
        let images = Tensor::from_vec(px, (2, 1, 12, 12), &dev)?;
        let cam = grad_cam(&model, &images, Some(&[1, 2]))?.ok_or_else(|| candle_core::Error::Msg("no map".into()))?;
        let Some((feats, _)) = model.conv_features(&images)? else { panic!("a feature map") };
        let (b, k, h, w) = feats.dims4()?;
        assert_eq!(cam.dims(), [b, h, w]);
        let flat = feats.flatten_all()?.to_vec1::<f32>()?;
        // The head after the features, evaluated on perturbed features.
        let score = |f: &[f32], row: usize, class: usize| -> Result<f32> {
            let t = Tensor::from_slice(f, (b, k, h, w), &dev)?;
            let out = model.head_scores(&t)?;
            Ok(out.to_vec2::<f32>()?[row][class])
        };
        for (row, class) in [(0usize, 1usize), (1, 2)] {
            let mut alpha = vec![0f32; k];
            let eps = 1e-2;
            for (ch, al) in alpha.iter_mut().enumerate() {
                for i in 0..h * w {
                    let at = ((row * k + ch) * h * w) + i;
                    let (mut up, mut down) = (flat.clone(), flat.clone());
                    up[at] += eps;
                    down[at] -= eps;
                    *al += (score(&up, row, class)? - score(&down, row, class)?) / (2.0 * eps);
                }
                *al /= (h * w) as f32;
            }
            let mut want: Vec<f32> = (0..h * w)
                .map(|i| (0..k).map(|ch| alpha[ch] * flat[(row * k + ch) * h * w + i]).sum::<f32>().max(0.0))
                .collect();
            let total: f32 = want.iter().sum();
            want.iter_mut().for_each(|v| *v /= total);
            let got = cam.get(row)?.flatten_all()?.to_vec1::<f32>()?;
            for (g, wv) in got.iter().zip(&want) {
                assert!((g - wv).abs() < 2e-3, "row {row}: {g} vs {wv}");
            }
        }
        Ok(())
    }
}

//! A 2-D Gaussian window over the grid of cells: the hidden state gives its mean, scales and
//! correlation through Linear(hidden -> 5) (the elementary soft attention tutorial's second
//! variant). Cell (r, c) sits at ((c + 0.5) / gw * 2 - 1, (r + 0.5) / gh * 2 - 1) in [-1, 1]^2;
//! its weight is exp(-Q / 2) with Q the bivariate-normal quadratic form, normalised over cells.

use std::f64::consts::LN_2;

use candle_core::{Result, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::{check_fq, shape_err, weighted_sum, Attend, Attended};

/// Settings of [`GaussianWindow`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GaussianWindowConfig {
    /// Grid rows.
    pub grid_h: usize,
    /// Grid columns.
    pub grid_w: usize,
    /// Width of the cells.
    pub feat_dim: usize,
    /// Width of the query.
    pub query_dim: usize,
    /// Smallest scale (in [-1, 1] units), added to softplus of the raw scale.
    pub min_scale: f64,
    /// Scale of the window when the linear map outputs zero (its starting width): the raw scale
    /// is offset so that `min_scale + softplus(0 + offset) = init_scale`. The default,
    /// `min_scale + ln 2`, means no offset; smaller values start with sharper windows.
    pub init_scale: f64,
}

impl Default for GaussianWindowConfig {
    fn default() -> Self {
        Self { grid_h: 14, grid_w: 14, feat_dim: 12, query_dim: 196, min_scale: 0.05, init_scale: 0.05 + LN_2 }
    }
}

impl GaussianWindowConfig {
    /// Small sizes for tests.
    pub fn tiny() -> Self {
        Self { grid_h: 3, grid_w: 4, feat_dim: 3, query_dim: 2, min_scale: 0.05, init_scale: 0.05 + LN_2 }
    }
}

/// A Gaussian window over the grid.
#[derive(Debug, Clone)]
pub struct GaussianWindow {
    cfg: GaussianWindowConfig,
    params: Linear,
    xs: Tensor,
    ys: Tensor,
    /// Added to the raw scales (inverse softplus of `init_scale - min_scale`).
    scale_offset: f64,
}

impl GaussianWindow {
    /// Parameter `params` (query -> 5: mean x, mean y, scale x, scale y, correlation).
    pub fn new(cfg: &GaussianWindowConfig, vb: VarBuilder) -> Result<Self> {
        let excess = cfg.init_scale - cfg.min_scale;
        if !(cfg.min_scale > 0.0 && excess > 0.0 && excess.is_finite()) {
            return Err(candle_core::Error::Msg(format!(
                "GaussianWindow: init_scale {} must be finite and larger than min_scale {} > 0",
                cfg.init_scale, cfg.min_scale
            )));
        }
        let (gh, gw) = (cfg.grid_h, cfg.grid_w);
        let mut xs = Vec::with_capacity(gh * gw);
        let mut ys = Vec::with_capacity(gh * gw);
        for r in 0..gh {
            for c in 0..gw {
                xs.push(((c as f32 + 0.5) / gw as f32) * 2.0 - 1.0);
                ys.push(((r as f32 + 0.5) / gh as f32) * 2.0 - 1.0);
            }
        }
        let dev = vb.device().clone();
        Ok(Self {
            cfg: cfg.clone(),
            params: candle_nn::linear(cfg.query_dim, 5, vb.pp("params"))?,
            xs: Tensor::from_vec(xs, (1, gh * gw), &dev)?,
            ys: Tensor::from_vec(ys, (1, gh * gw), &dev)?,
            scale_offset: if (excess - LN_2).abs() < 1e-12 { 0.0 } else { excess.exp_m1().ln() }, // inverse softplus
        })
    }

    /// Mean (b, 2) in [-1, 1], scales (b, 2) > 0, correlation (b, 1) in (-1, 1) from the query.
    pub fn window_params(&self, query: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let p = self.params.forward(query)?;
        let mean = p.narrow(1, 0, 2)?.tanh()?;
        let mut raw = p.narrow(1, 2, 2)?;
        if self.scale_offset != 0.0 {
            raw = (raw + self.scale_offset)?;
        }
        let scale = ((raw.exp()? + 1.0)?.log()? + self.cfg.min_scale)?; // softplus
        let rho = (p.narrow(1, 4, 1)?.tanh()? * 0.95)?;
        Ok((mean, scale, rho))
    }

    /// Weights over the grid from explicit parameters. Shapes: mean (b, 2), scale (b, 2),
    /// rho (b, 1) -> (b, n).
    pub fn weights(&self, mean: &Tensor, scale: &Tensor, rho: &Tensor) -> Result<Tensor> {
        let dx = self.xs.broadcast_sub(&mean.narrow(1, 0, 1)?)?.broadcast_div(&scale.narrow(1, 0, 1)?)?;
        let dy = self.ys.broadcast_sub(&mean.narrow(1, 1, 1)?)?.broadcast_div(&scale.narrow(1, 1, 1)?)?;
        let cross = (dx.mul(&dy)?.broadcast_mul(rho)? * 2.0)?;
        let one_minus = (1.0 - rho.sqr()?)?;
        let q = ((dx.sqr()? + dy.sqr()?)? - cross)?.broadcast_div(&one_minus)?;
        // softmax(-q / 2) is the normalised window, computed stably
        candle_nn::ops::softmax(&(q * -0.5)?, D::Minus1)
    }
}

impl Attend for GaussianWindow {
    fn attend(&self, feats: &Tensor, query: &Tensor) -> Result<Attended> {
        let (_, n, _) = check_fq("GaussianWindow", feats, query, self.cfg.feat_dim, self.cfg.query_dim)?;
        if n != self.cfg.grid_h * self.cfg.grid_w {
            return Err(shape_err(
                "GaussianWindow",
                format!("{n} cells given, the grid is {}x{}", self.cfg.grid_h, self.cfg.grid_w),
            ));
        }
        let (mean, scale, rho) = self.window_params(query)?;
        let weights = self.weights(&mean, &scale, &rho)?;
        Ok(Attended { context: weighted_sum(feats, &weights)?, weights })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{rand, rows_sum_to_one};
    use candle_core::Device;
    use gaze_tensor::testing::grad_check;
    use gaze_tensor::{Seed, SeededVarMap};

    #[test]
    fn window_peaks_at_its_mean() -> Result<()> {
        let vm = SeededVarMap::new(Seed(0));
        let cfg = GaussianWindowConfig { grid_h: 5, grid_w: 6, ..GaussianWindowConfig::tiny() };
        let g = GaussianWindow::new(&cfg, vm.builder(&Device::Cpu))?;
        let dev = Device::Cpu;
        for (r, c, rho) in [(0usize, 0usize, 0.0f32), (2, 3, 0.5), (4, 5, -0.7), (1, 4, 0.9)] {
            let (mx, my) = ((c as f32 + 0.5) / 6.0 * 2.0 - 1.0, (r as f32 + 0.5) / 5.0 * 2.0 - 1.0);
            let w = g.weights(
                &Tensor::new(&[[mx, my]], &dev)?,
                &Tensor::new(&[[0.3f32, 0.2]], &dev)?,
                &Tensor::new(&[[rho]], &dev)?,
            )?;
            rows_sum_to_one(&w);
            let row = w.to_vec2::<f32>()?.remove(0);
            let argmax = row.iter().enumerate().fold(0, |a, (i, &v)| if v > row[a] { i } else { a });
            assert_eq!(argmax, r * 6 + c, "mean at cell ({r}, {c})");
        }
        Ok(())
    }

    #[test]
    fn attends_and_gradients_check() -> Result<()> {
        let vm = SeededVarMap::new(Seed(1));
        let g = GaussianWindow::new(&GaussianWindowConfig::tiny(), vm.builder(&Device::Cpu))?;
        let (f, q) = (rand(&[2, 12, 3], 1), rand(&[2, 2], 2));
        rows_sum_to_one(&g.attend(&f, &q)?.weights);
        let wts = rand(&[2, 3], 5);
        assert!(grad_check(|x| (g.attend(x, &q)?.context * &wts)?.sum_all(), &f, 1e-2)? < 2e-2);
        assert!(grad_check(|x| (g.attend(&f, x)?.context * &wts)?.sum_all(), &q, 1e-2)? < 2e-2);
        Ok(())
    }
}

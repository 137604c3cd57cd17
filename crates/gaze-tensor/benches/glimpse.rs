//! Batched glimpse extraction (crop and pool; summed-area tables, built per call or kept) against
//! a per-sample loop (the public PyTorch RAM's way), at batch 128: RAM's MNIST
//! setting (28x28, one 8x8 patch), its cluttered settings (60x60, three 12x12 scales; 100x100,
//! four). Run: `cargo bench -p gaze-tensor`.
#![allow(missing_docs)]

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use gaze_tensor::glimpse::{glimpses, glimpses_loop, GlimpseSpec, Integral};
use gaze_tensor::Seed;
use rand::Rng;

fn bench(c: &mut Criterion) {
    let mut rng = Seed(0).rng();
    for (name, side, spec) in [
        ("mnist28_8x8x1", 28usize, GlimpseSpec { patch: 8, scales: 1, factor: 2 }),
        ("cluttered60_12x12x3", 60, GlimpseSpec { patch: 12, scales: 3, factor: 2 }),
        ("cluttered100_12x12x4", 100, GlimpseSpec { patch: 12, scales: 4, factor: 2 }),
    ] {
        let b = 128;
        let px: Vec<f32> = (0..b * side * side).map(|_| rng.random::<f32>()).collect();
        let Ok(images) = Tensor::from_vec(px, (b, 1, side, side), &Device::Cpu) else { return };
        let locs: Vec<f32> = (0..2 * b).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
        let Ok(locs) = Tensor::from_vec(locs, (b, 2), &Device::Cpu) else { return };
        let mut g = c.benchmark_group(name);
        g.bench_function("crop_and_pool", |bch| bch.iter(|| glimpses(&images, &locs, &spec)));
        g.bench_function("summed_area_with_table", |bch| bch.iter(|| Integral::new(&images)?.glimpses(&locs, &spec)));
        // A forward pass glimpses one batch several times: the table built once.
        let Ok(table) = Integral::new(&images) else { return };
        g.bench_function("summed_area_table_kept", |bch| bch.iter(|| table.glimpses(&locs, &spec)));
        g.bench_function("per_sample_loop", |bch| bch.iter(|| glimpses_loop(&images, &locs, &spec)));
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

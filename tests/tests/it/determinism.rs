//! The same seed gives bit-identical initial parameters and random draws in two processes:
//! this test re-runs itself as a child process and compares fingerprints.

use candle_core::{Device, Tensor};
use gaze_attention::{AdditiveAttention, AdditiveConfig};
use gaze_data::generate::{SortOfClevr, SortOfClevrConfig};
use gaze_tensor::{sample, Seed, SeededVarMap};
use gaze_zoo::{ConvNetClassifier, ConvNetClassifierConfig};

fn fnv(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h = (*h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
}

fn fingerprint() -> anyhow::Result<u64> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let vm = SeededVarMap::new(Seed(2024).stream("init"));
    ConvNetClassifier::new(
        &ConvNetClassifierConfig::tiny(),
        &gaze_zoo::DataShape::images((1, 12, 12), 10),
        vm.builder(&Device::Cpu).pp("net"),
    )?;
    AdditiveAttention::new(&AdditiveConfig::tiny(), vm.builder(&Device::Cpu).pp("att"))?;
    for (name, v) in vm.sorted_vars() {
        fnv(&mut h, name.as_bytes());
        for x in v.as_tensor().flatten_all()?.to_vec1::<f32>()? {
            fnv(&mut h, &x.to_bits().to_le_bytes());
        }
    }
    let mut rng = Seed(2024).stream("sampling").rng();
    let probs = Tensor::new(&[[0.2f32, 0.3, 0.5], [0.6, 0.2, 0.2]], &Device::Cpu)?;
    for _ in 0..50 {
        for i in sample::categorical_sample(&probs, &mut rng)?.to_vec1::<u32>()? {
            fnv(&mut h, &i.to_le_bytes());
        }
    }
    let mean = Tensor::zeros((4, 2), candle_core::DType::F32, &Device::Cpu)?;
    for x in sample::gaussian_sample(&mean, 0.1, &mut rng)?.flatten_all()?.to_vec1::<f32>()? {
        fnv(&mut h, &x.to_bits().to_le_bytes());
    }
    let scene = SortOfClevr::new(SortOfClevrConfig::default(), Seed(2024).stream("data"))?.scene(3)?;
    fnv(&mut h, &scene.image.data);
    Ok(h)
}

#[test]
fn same_seed_same_bits_in_two_processes() -> anyhow::Result<()> {
    let mine = fingerprint()?;
    if std::env::var_os("GAZE_DETERMINISM_CHILD").is_some() {
        println!("FINGERPRINT={mine:016x}");
        return Ok(());
    }
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["--exact", "determinism::same_seed_same_bits_in_two_processes", "--nocapture", "--test-threads=1"])
        .env("GAZE_DETERMINISM_CHILD", "1")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // libtest may print the test's name on the same line, before the fingerprint
    let theirs = text
        .lines()
        .find_map(|l| l.split_once("FINGERPRINT=").map(|(_, f)| f.get(..16).unwrap_or(f)))
        .ok_or_else(|| anyhow::anyhow!("child printed no fingerprint: {text}"))?;
    assert_eq!(theirs, format!("{mine:016x}"));
    // and the fingerprint depends on the seed (it would not catch anything otherwise)
    let other = SeededVarMap::new(Seed(2025).stream("init"));
    ConvNetClassifier::new(
        &ConvNetClassifierConfig::tiny(),
        &gaze_zoo::DataShape::images((1, 12, 12), 10),
        other.builder(&Device::Cpu).pp("net"),
    )?;
    let vm = SeededVarMap::new(Seed(2024).stream("init"));
    ConvNetClassifier::new(
        &ConvNetClassifierConfig::tiny(),
        &gaze_zoo::DataShape::images((1, 12, 12), 10),
        vm.builder(&Device::Cpu).pp("net"),
    )?;
    let w = |m: &SeededVarMap| m.sorted_vars()[0].1.as_tensor().flatten_all().and_then(|t| t.to_vec1::<f32>());
    assert_ne!(w(&other)?, w(&vm)?);
    Ok(())
}

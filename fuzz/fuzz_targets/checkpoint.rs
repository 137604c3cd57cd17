//! A checkpoint file of arbitrary bytes: its tensors (their checksum checked) or an error naming
//! the file, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("last.safetensors");
    if std::fs::write(&path, bytes).is_err() {
        return;
    }
    if let Err(e) = gaze_train::checkpoint::load(&path, &candle_core::Device::Cpu) {
        assert!(e.to_string().contains("last.safetensors"), "{e}");
    }
});

//! A CIFAR binary file of arbitrary bytes, read as CIFAR-10 and as CIFAR-100: whole records or
//! an error, never a panic.
#![no_main]

use gaze_data::cifar::{read_file, CifarKind};

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("data_batch_1.bin");
    if std::fs::write(&path, bytes).is_err() {
        return;
    }
    for kind in [CifarKind::Ten, CifarKind::Hundred] {
        if let Ok(set) = read_file(&path, kind) {
            assert_eq!(set.pixels.len(), set.labels.len() * 3072);
        }
    }
});

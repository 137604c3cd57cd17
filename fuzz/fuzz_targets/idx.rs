//! IDX images and labels (MNIST's format) from arbitrary bytes: parsed or refused, never a panic.
#![no_main]

use std::path::Path;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let path = Path::new("fuzz-idx-ubyte");
    if let Ok(images) = gaze_data::idx::parse_images(bytes, path) {
        // What was parsed fits in what was given.
        assert!(images.pixels.len() <= bytes.len());
    }
    if let Ok(labels) = gaze_data::idx::parse_labels(bytes, path) {
        assert!(labels.len() <= bytes.len());
    }
});

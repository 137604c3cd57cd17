//! A `.gz` file of arbitrary bytes read with a cap: its contents, or an error, and never more
//! than the cap inflated (a gzip bomb is refused before it is allocated).
#![no_main]

const CAP: u64 = 1 << 20;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("train-images-idx3-ubyte.gz");
    if std::fs::write(&path, bytes).is_err() {
        return;
    }
    if let Ok(out) = gaze_data::idx::read_maybe_gzipped_capped(&path, CAP) {
        assert!(out.len() as u64 <= CAP);
    }
});

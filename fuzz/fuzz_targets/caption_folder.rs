//! A caption folder in each layout gaze reads (`captions.jsonl`, `captions.json`, a Karpathy
//! `dataset_*.json`, picked by the first byte) holding arbitrary bytes: a set or an error.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Some((&pick, text)) = bytes.split_first() else { return };
    let Ok(dir) = tempfile::tempdir() else { return };
    let images = dir.path().join("images");
    if std::fs::create_dir_all(&images).is_err()
        || gaze_data::Image::filled(4, 4, 3, 128).save_png(&images.join("a.png")).is_err()
    {
        return;
    }
    let name = ["captions.jsonl", "captions.json", "dataset_flickr8k.json"][usize::from(pick) % 3];
    if std::fs::write(dir.path().join(name), text).is_err() {
        return;
    }
    if let Ok(set) = gaze_data::caption::CaptionSet::read_folder(dir.path(), Some((8, 8))) {
        assert!(set.records.iter().all(|r| r.image < set.images.len()));
    }
});

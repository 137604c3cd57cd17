//! A VQA folder whose `questions.jsonl` (or `questions.json`, by the first byte) holds arbitrary
//! bytes, beside one small image: a set or an error, never a panic, never a file outside it.
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
    let name = if pick % 2 == 0 { "questions.jsonl" } else { "questions.json" };
    if std::fs::write(dir.path().join(name), text).is_err() {
        return;
    }
    if let Ok(set) = gaze_data::vqa::VqaSet::read_folder(dir.path(), Some((8, 8))) {
        assert!(set.records.iter().all(|r| r.image < set.images.len()));
    }
});

//! (Built with `--features hub`.) The hub path offline: with an empty hub cache and HF_HUB_OFFLINE set, loading MNIST from the
//! hub is a clear error that says how to use a folder — and makes no network call. (Its own test
//! binary: it sets process environment variables.)

#[test]
fn offline_without_cache_says_how_to_use_a_folder() -> anyhow::Result<()> {
    let cache = tempfile::tempdir()?;
    // Safe: this test binary runs this one test, before any other thread reads the environment.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("HF_HUB_CACHE", cache.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let e = gaze_data::Mnist::from_hub().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        e.contains("not in the Hugging Face hub cache") && e.contains("GAZE_DATA_DIR") && e.contains("--data-dir"),
        "{e}"
    );
    let e = gaze_data::Mnist::load(&gaze_data::MnistSource::EnvOrHub).err().map(|e| e.to_string());
    // EnvOrHub uses GAZE_DATA_DIR when set (CI sets it); otherwise it is the same hub error.
    if std::env::var_os("GAZE_DATA_DIR").is_none() {
        assert!(e.unwrap_or_default().contains("GAZE_DATA_DIR"));
    }
    Ok(())
}

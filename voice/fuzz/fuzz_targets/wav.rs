//! WAV files given to `jarvis listen --file`: any bytes decode or fail, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(audio) = jarvis_voice::audio::decode_wav(data) {
        assert!(audio.samples.iter().all(|s| s.is_finite() || s.is_nan()));
    }
});

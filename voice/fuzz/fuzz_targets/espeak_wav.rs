//! espeak-ng's output, parsed by hand (its header's sizes are unset when streaming).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = jarvis_voice::tts::parse_espeak_wav(data);
});

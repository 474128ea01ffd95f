//! The model's streamed text, cut into sentences for speech: any text in any pieces, no panic,
//! and nothing lost but whitespace.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut s = jarvis_voice::tts::Sentences::new();
    let mut out = String::new();
    for (i, piece) in text.split_inclusive(|c: char| c.is_whitespace()).enumerate() {
        for sentence in s.push(piece) {
            out.push_str(&sentence);
        }
        if i % 7 == 0 {
            let _ = jarvis_voice::tts::speakable(piece);
        }
    }
    if let Some(rest) = s.finish() {
        out.push_str(&rest);
    }
    let strip = |t: &str| t.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    assert_eq!(strip(&out), strip(&text));
});

//! A CTranslate2 model file (what `jarvis models import DIR` reads from a user's directory) and
//! its vocabulary: converting arbitrary bytes returns an error or a file, never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first bytes are the vocabulary's length, then the vocabulary, then the model.
    let (vocab_len, rest) = match data.split_first() {
        Some((n, rest)) => (usize::from(*n) * 4, rest),
        None => return,
    };
    let (vocab, model) = rest.split_at(vocab_len.min(rest.len()));
    let vocab = String::from_utf8_lossy(vocab);
    if let Ok(model) = jarvis_inference::whisper_ggml::Ct2Model::parse(model) {
        std::hint::black_box(model);
    }
    let _ = jarvis_inference::whisper_ggml::convert(model, &vocab);
});

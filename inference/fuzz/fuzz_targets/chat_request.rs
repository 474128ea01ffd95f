//! Bodies of `/v1/chat/completions` from any local program: a checked request or an OpenAI-shaped
//! error, never a panic; a request always has messages and at least one token to generate.
#![no_main]
use jarvis_inference::openai::parse_chat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_chat(data, &["m".to_owned()]) {
        Ok(chat) => {
            assert!(!chat.request.messages.is_empty());
            assert!(chat.request.sampling.max_tokens > 0);
            assert!(chat.request.sampling.stop.len() <= 4);
        }
        Err(error) => {
            assert!(error.status == 400 || error.status == 404);
            assert!(!error.message.is_empty());
        }
    }
});

//! The voice front end of Jarvis, from samples to a turn and from an answer back to samples.
//!
//! Each stage is a small piece with one job, and the ones that decide things are sans-IO:
//! - [`audio`]: WAV in and out, mono 16 kHz conversion (pure functions).
//! - [`device`]: the microphone and the speaker (cpal), each stream on a thread of its own.
//! - [`echo`]: echo cancellation (NLMS) and an echo gate, so the answer is not heard as the user.
//! - [`playback`]: the answer's playback timeline, shared by the speaker and the listener.
//! - [`onnx`]: loads onnxruntime at run time (the `ort` crate's `load-dynamic`), once per process.
//! - [`vad`]: silero voice activity, one probability per 32 ms.
//! - [`wake`]: the openWakeWord pipeline (melspectrogram → embedding → wake-word model), one score
//!   per 80 ms, with the shipped "hey jarvis" model or one the user provides.
//! - [`turn`]: the sans-IO state machine that turns those numbers into a turn: woken, speech
//!   started, end of utterance (with the audio to transcribe), or given up.
//! - [`pipeline`]: the async shell of one listening turn (feeding, speculative transcripts).
//! - [`stt`]: the async client of `jarvis-stt-worker` (whisper.cpp runs in its own process).
//! - [`tts`]: Piper (ONNX) when its voice is installed, else espeak-ng; [`tts::Sentences`] cuts a
//!   streaming answer into sentences so speech starts at the first one.

pub mod audio;
pub mod device;
pub mod echo;
pub mod listener;
pub mod onnx;
pub mod pipeline;
pub mod playback;
pub mod stt;
pub mod tts;
pub mod turn;
pub mod vad;
pub mod wake;

/// What went wrong in the voice front end.
#[derive(Debug, thiserror::Error)]
pub enum VoiceError {
    /// onnxruntime could not be loaded, or a model could not be loaded or run.
    #[error("{0}")]
    Onnx(String),
    /// A model file is missing or not what it should be.
    #[error("{0}")]
    Model(String),
    /// An audio file could not be read or written.
    #[error("{0}")]
    Audio(String),
    /// Text to speech failed.
    #[error("{0}")]
    Speech(String),
}

/// Results of this crate.
pub type Result<T, E = VoiceError> = std::result::Result<T, E>;

/// The request without the wake phrase that may open it: "Hey Jarvis, what time is it?" →
/// "what time is it?". Whisper spells the phrase variously ("Jarvis", "Javis", "Cage Arvis"), so
/// a word within two letters of "jarvis" among the first three ends it.
pub fn strip_wake_phrase(transcript: &str) -> &str {
    let mut rest = transcript.trim_start();
    for _ in 0..3 {
        let word_end = rest
            .find(|c: char| c.is_whitespace() || ",.!?:;".contains(c))
            .unwrap_or(rest.len());
        let (word, after) = rest.split_at(word_end);
        let letters: String = word
            .chars()
            .filter(char::is_ascii_alphabetic)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let after = after.trim_start_matches(|c: char| c.is_whitespace() || ",.!:;-".contains(c));
        if letters.len() >= 4 && edit_distance(&letters, "jarvis") <= 2 {
            return after;
        }
        if after.is_empty() || letters.len() > 5 {
            break;
        }
        rest = after;
    }
    transcript.trim()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row.first().copied().unwrap_or(0);
        if let Some(first) = row.first_mut() {
            *first = i + 1;
        }
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row.get(j + 1).copied().unwrap_or(0);
            let insert = row.get(j).copied().unwrap_or(0) + 1;
            if let Some(cell) = row.get_mut(j + 1) {
                *cell = substitute.min(previous + 1).min(insert);
            }
        }
    }
    row.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::strip_wake_phrase;

    #[test]
    fn the_wake_phrase_is_taken_off_the_request() {
        assert_eq!(
            strip_wake_phrase("Hey Jarvis, what is the capital of France?"),
            "what is the capital of France?"
        );
        assert_eq!(
            strip_wake_phrase(" hey, Jarvis. What time is it"),
            "What time is it"
        );
        assert_eq!(strip_wake_phrase("Hey Javis what time"), "what time");
        assert_eq!(strip_wake_phrase("Jarvis!"), "");
        assert_eq!(
            strip_wake_phrase("Cage Arvis, who wrote Romeo and Juliet"),
            "who wrote Romeo and Juliet"
        );
        // A long first word is the request itself.
        assert_eq!(
            strip_wake_phrase("Remind Jarvis owners"),
            "Remind Jarvis owners"
        );
        assert_eq!(
            strip_wake_phrase("What is the capital of France?"),
            "What is the capital of France?"
        );
        assert_eq!(
            strip_wake_phrase("Hey there, how are you"),
            "Hey there, how are you"
        );
        assert_eq!(strip_wake_phrase(""), "");
    }
}

//! Speech to text with whisper.cpp (through whisper-rs), tuned for short spoken requests.
//!
//! Whisper's encoder always sees 30 s of audio unless told otherwise; a spoken question is 1–5 s,
//! so most of that work is padding. [`audio_ctx_for`] sizes the encoder's context to the clip
//! with headroom (too small a context makes whisper repeat itself, testing.md), and the decoder
//! is greedy, single-segment, without timestamps, and capped in tokens.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result};
use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
};

/// Samples per second of every input.
pub const SAMPLE_RATE: usize = 16_000;
/// Whisper's full encoder context: 30 s at 50 frames per second.
const FULL_CTX: usize = 1500;

/// The encoder context for `samples` of audio: 50 frames per second plus 64 of headroom,
/// rounded up to a multiple of 64, at most the model's 1500.
pub fn audio_ctx_for(samples: usize) -> usize {
    let frames = samples.div_ceil(SAMPLE_RATE / 50) + 64;
    frames.div_ceil(64).saturating_mul(64).min(FULL_CTX)
}

/// A transcript and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub text: String,
    pub audio_ms: u64,
    pub decode_ms: u64,
}

/// A loaded model with one decoding state.
pub struct Transcriber {
    state: WhisperState,
    threads: i32,
}

impl Transcriber {
    /// Loads a whisper.cpp (ggml) model.
    ///
    /// # Errors
    /// When the file is missing or not a whisper.cpp model.
    pub fn load(model: &Path, threads: usize) -> Result<Self> {
        // Without a log backend this drops whisper.cpp's and ggml's logging.
        whisper_rs::install_logging_hooks();
        let ctx = WhisperContext::new_with_params(model, WhisperContextParameters::default())
            .with_context(|| format!("loading the whisper model {}", model.display()))?;
        let state = ctx.create_state().context("creating a whisper state")?;
        Ok(Self {
            state,
            threads: i32::try_from(threads.max(1)).unwrap_or(4),
        })
    }

    fn params(&self, samples: usize, full_context: bool) -> FullParams<'static, 'static> {
        let mut p = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        p.set_n_threads(self.threads);
        p.set_language(Some("en"));
        p.set_translate(false);
        p.set_no_context(true);
        p.set_single_segment(true);
        p.set_no_timestamps(true);
        p.set_token_timestamps(false);
        p.set_print_special(false);
        p.set_print_progress(false);
        p.set_print_realtime(false);
        p.set_print_timestamps(false);
        p.set_suppress_blank(true);
        p.set_temperature_inc(0.0);
        if !full_context {
            p.set_audio_ctx(i32::try_from(audio_ctx_for(samples)).unwrap_or(0));
            // About 4 tokens a second of speech; a runaway decode stops there.
            let seconds = samples.div_ceil(SAMPLE_RATE);
            p.set_max_tokens(i32::try_from(16 + 8 * seconds).unwrap_or(0));
        }
        p
    }

    /// Transcribes mono 16 kHz samples in `[-1, 1]`, with the encoder context sized to the clip.
    ///
    /// # Errors
    /// When whisper fails (for example on empty audio).
    pub fn transcribe(&mut self, samples: &[f32]) -> Result<Transcript> {
        self.run(samples, false)
    }

    /// Whisper with its default 30 s context: the reference a benchmark compares against.
    ///
    /// # Errors
    /// When whisper fails.
    pub fn transcribe_full_context(&mut self, samples: &[f32]) -> Result<Transcript> {
        self.run(samples, true)
    }

    fn run(&mut self, samples: &[f32], full_context: bool) -> Result<Transcript> {
        let start = Instant::now();
        let params = self.params(samples.len(), full_context);
        self.state
            .full(params, samples)
            .context("whisper could not transcribe the audio")?;
        let mut text = String::new();
        for segment in self.state.as_iter() {
            text.push_str(&segment.to_str_lossy().context("reading a segment")?);
        }
        Ok(Transcript {
            text: trim_repetition(text.trim()),
            audio_ms: (samples.len() * 1000 / SAMPLE_RATE) as u64,
            decode_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// Whisper sometimes loops when the encoder context is short: "What time is it? What time is
/// it? What time" (testing.md). Cuts the text at the first sentence that repeats an earlier one.
pub fn trim_repetition(text: &str) -> String {
    let normal = |s: &str| {
        s.chars()
            .filter(|c| c.is_alphanumeric() || c.is_whitespace())
            .flat_map(char::to_lowercase)
            .collect::<String>()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut seen: Vec<String> = Vec::new();
    let mut kept = 0;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        let end = i + c.len_utf8();
        let last = end == text.len();
        if matches!(c, '.' | '?' | '!') || last {
            let sentence = normal(text.get(start..end).unwrap_or_default());
            // A repeat, or the unfinished start of one.
            let repeats = !sentence.is_empty()
                && seen
                    .iter()
                    .any(|s| *s == sentence || (last && s.starts_with(&sentence)));
            if repeats {
                break;
            }
            seen.push(sentence);
            kept = end;
            start = end;
        }
    }
    text.get(..kept).unwrap_or(text).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_looping_transcript_is_cut_at_the_first_repeat() {
        assert_eq!(
            trim_repetition(
                "Hey Jarvis, what is the capital I'm France? Hey Jarvis, what is the capital I'm France? Hey Jarvis, what is the capital I"
            ),
            "Hey Jarvis, what is the capital I'm France?"
        );
        assert_eq!(trim_repetition("Go. Go. Go."), "Go.");
        assert_eq!(
            trim_repetition("It is late. It is time to go."),
            "It is late. It is time to go."
        );
        assert_eq!(
            trim_repetition("no punctuation at all"),
            "no punctuation at all"
        );
        assert_eq!(trim_repetition(""), "");
    }

    #[test]
    fn the_context_fits_the_clip_with_headroom() {
        assert_eq!(audio_ctx_for(0), 64);
        // 2.9 s: 145 frames + 64 = 209 → 256 (testing.md: 256 worked, 192 looped on short clips).
        assert_eq!(audio_ctx_for(46_400), 256);
        assert_eq!(audio_ctx_for(16_000 * 5), 320);
        assert_eq!(audio_ctx_for(16_000 * 60), 1500);
    }
}

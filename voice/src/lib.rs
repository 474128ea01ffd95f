//! The voice front end of Jarvis, from samples to a turn and from an answer back to samples.
//!
//! Each stage is a small piece with one job, and the ones that decide things are sans-IO:
//! - [`audio`]: WAV in and out, mono 16 kHz conversion (pure functions).
//! - [`onnx`]: loads onnxruntime at run time (the `ort` crate's `load-dynamic`), once per process.
//! - [`vad`]: silero voice activity, one probability per 32 ms.
//! - [`wake`]: the openWakeWord pipeline (melspectrogram → embedding → wake-word model), one score
//!   per 80 ms, with the shipped "hey jarvis" model or one the user provides.
//! - [`turn`]: the sans-IO state machine that turns those numbers into a turn: woken, speech
//!   started, end of utterance (with the audio to transcribe), or given up.
//! - [`stt`]: the async client of `jarvis-stt-worker` (whisper.cpp runs in its own process).
//! - [`tts`]: Piper (ONNX) when its voice is installed, else espeak-ng; [`tts::Sentences`] cuts a
//!   streaming answer into sentences so speech starts at the first one.

pub mod audio;
pub mod listener;
pub mod onnx;
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

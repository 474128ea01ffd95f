//! The speech-to-text worker's protocol: JSON lines over the worker's stdin and stdout, like the
//! language-model worker's ([`crate::protocol`]), in a process of its own because whisper.cpp and
//! llama.cpp cannot share a binary (testing.md).
//!
//! The node sends `{"type":"transcribe","id":1,"pcm":"…","partial":false}` where `pcm` is
//! base64 of 16 kHz mono signed 16-bit little-endian samples (`partial`: the utterance is still
//! growing; the worker may decode faster and less carefully). The worker answers each with
//! `{"type":"transcript","id":1,"text":"…","audio_ms":…,"decode_ms":…,"partial":false}` or
//! `{"type":"error","id":1,"message":"…"}`, after a first `{"type":"ready",…}`. End of input,
//! or `{"type":"shutdown"}`, stops it.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The sample rate of every sample on this protocol.
pub const SAMPLE_RATE: u32 = 16_000;
/// The longest line either side accepts: about 6 minutes of audio.
pub const MAX_LINE: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    Transcribe {
        id: u64,
        /// base64 of i16 little-endian samples, 16 kHz mono.
        pcm: String,
        #[serde(default)]
        partial: bool,
    },
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Ready {
        model: String,
        load_ms: u64,
    },
    Transcript {
        id: u64,
        text: String,
        audio_ms: u64,
        decode_ms: u64,
        #[serde(default)]
        partial: bool,
    },
    Error {
        id: Option<u64>,
        message: String,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LineError {
    #[error("line of {0} bytes exceeds the limit of {MAX_LINE}")]
    TooLong(usize),
    #[error("malformed line: {0}")]
    Malformed(String),
    #[error("the audio is not base64 of 16-bit samples: {0}")]
    Audio(String),
}

/// Reads one command line.
///
/// # Errors
/// When the line is too long or not a command.
pub fn decode_command(line: &str) -> Result<Command, LineError> {
    if line.len() > MAX_LINE {
        return Err(LineError::TooLong(line.len()));
    }
    serde_json::from_str(line).map_err(|e| LineError::Malformed(e.to_string()))
}

/// Reads one event line.
///
/// # Errors
/// When the line is too long or not an event.
pub fn decode_event(line: &str) -> Result<Event, LineError> {
    if line.len() > MAX_LINE {
        return Err(LineError::TooLong(line.len()));
    }
    serde_json::from_str(line).map_err(|e| LineError::Malformed(e.to_string()))
}

/// One line (with its newline) for any message.
pub fn encode<T: Serialize>(message: &T) -> String {
    let mut line = serde_json::to_string(message).unwrap_or_else(|e| {
        format!(r#"{{"type":"error","id":null,"message":"cannot encode: {e}"}}"#)
    });
    line.push('\n');
    line
}

/// Samples → the `pcm` field.
pub fn pcm_to_base64(samples: &[i16]) -> String {
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The `pcm` field → samples in `[-1, 1]`, as whisper wants them.
///
/// # Errors
/// When it is not base64, or not a whole number of samples.
pub fn pcm_from_base64(pcm: &str) -> Result<Vec<f32>, LineError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(pcm)
        .map_err(|e| LineError::Audio(e.to_string()))?;
    if bytes.len() % 2 != 0 {
        return Err(LineError::Audio(format!(
            "{} bytes is not a whole number of samples",
            bytes.len()
        )));
    }
    Ok(pcm_from_bytes(&bytes))
}

/// 16-bit little-endian samples → samples in `[-1, 1]` (a trailing odd byte is ignored).
pub fn pcm_from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|c| {
            f32::from(i16::from_le_bytes([
                c.first().copied().unwrap_or(0),
                c.get(1).copied().unwrap_or(0),
            ])) / 32768.0
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_events_round_trip() {
        let samples = [0i16, 1, -1, i16::MAX, i16::MIN, 1234];
        let command = Command::Transcribe {
            id: 7,
            pcm: pcm_to_base64(&samples),
            partial: true,
        };
        let line = encode(&command);
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        assert_eq!(decode_command(line.trim_end()).unwrap(), command);
        let Command::Transcribe { pcm, .. } = command else {
            unreachable!()
        };
        let back = pcm_from_base64(&pcm).unwrap();
        assert_eq!(back.len(), samples.len());
        assert_eq!(back[3], 32767.0 / 32768.0);
        assert_eq!(back[4], -1.0);
        let event = Event::Transcript {
            id: 7,
            text: "hello".into(),
            audio_ms: 1000,
            decode_ms: 50,
            partial: false,
        };
        assert_eq!(decode_event(encode(&event).trim_end()).unwrap(), event);
    }

    #[test]
    fn bad_lines_are_errors() {
        assert!(matches!(decode_command("{"), Err(LineError::Malformed(_))));
        assert!(matches!(
            decode_command(r#"{"type":"transcribe","id":1}"#),
            Err(LineError::Malformed(_))
        ));
        assert!(matches!(pcm_from_base64("AAA"), Err(LineError::Audio(_))));
        assert!(matches!(pcm_from_base64("AA=="), Err(LineError::Audio(_))));
        let long = "x".repeat(MAX_LINE + 1);
        assert_eq!(
            decode_command(&long).unwrap_err(),
            LineError::TooLong(MAX_LINE + 1)
        );
    }
}

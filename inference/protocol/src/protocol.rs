//! The worker protocol: what the node and an engine worker process (`jarvis-llm-worker`) say to
//! each other over the worker's stdin and stdout, one JSON object per line.
//!
//! Why lines of JSON: the worker is ours, started by the node, and the payloads are text; lines are
//! easy to read in a log and to type by hand when debugging a model (`jarvis-llm-worker --model M`
//! and then a `generate` line). Every line is bounded ([`MAX_LINE`]) on both sides, so a confused
//! peer cannot make the other side buffer without limit.

use serde::{Deserialize, Serialize};

/// The longest line either side accepts, in bytes (a request carries the whole conversation).
pub const MAX_LINE: usize = 4 * 1024 * 1024;

/// One chat message, as the model's chat template takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_owned(),
            content: content.into(),
        }
    }
}

/// How to sample; the defaults are the ones OpenAI documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// The most tokens to generate.
    pub max_tokens: u32,
    /// 0 samples greedily.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this.
    pub top_p: f32,
    /// A seed makes sampling repeatable; none draws one.
    pub seed: Option<u32>,
    /// Generation stops before the first of these strings, which is not returned.
    pub stop: Vec<String>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            max_tokens: 512,
            temperature: 1.0,
            top_p: 1.0,
            seed: None,
            stop: Vec::new(),
        }
    }
}

/// What the node sends to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Start generating an answer to `messages`; the worker answers with events carrying `id`.
    Generate {
        /// Chosen by the node, unique among the requests in flight.
        id: u64,
        /// The conversation, oldest first.
        messages: Vec<ChatMessage>,
        /// How to sample.
        sampling: Sampling,
        /// The answer so far, which the model continues (an answer resumed here after the GPU
        /// peer making it went away). Empty for a new answer.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        prefix: String,
    },
    /// Stop generating `id` and free its slot; the worker answers with `done` (`cancelled`).
    Cancel {
        /// The request to stop.
        id: u64,
    },
    /// Finish: stop every request and exit.
    Shutdown,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn, or a stop string came.
    Stop,
    /// `max_tokens` or the context ran out.
    Length,
    /// The node cancelled it.
    Cancelled,
}

impl FinishReason {
    /// The name OpenAI's API uses (`cancelled` has none there; it is never sent to a client).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

/// What kind of failure a request met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The prompt does not fit the model's context.
    ContextLengthExceeded,
    /// The request could not be understood (for instance an unknown role in a template).
    InvalidRequest,
    /// The engine failed (or its process died).
    Engine,
}

/// What a worker says to the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The model is loaded; requests may come.
    Ready {
        /// The model's file name.
        model: String,
        /// Context length of each slot, in tokens.
        n_ctx: u32,
        /// How many requests the worker generates at once.
        slots: u32,
        /// The compute devices llama.cpp found (`CPU`, `CUDA0`, `Vulkan0`…: name, what it is,
        /// memory), the CPU's last: which backends this build of the worker has.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        devices: Vec<String>,
    },
    /// The prompt of `id` is evaluated and its first token is on the way.
    Started {
        /// The request.
        id: u64,
        /// Tokens in the prompt (after the chat template).
        prompt_tokens: u32,
        /// Of those, how many were already in the KV cache (a shared start with an earlier
        /// request) and were not read again.
        #[serde(default)]
        cached_tokens: u32,
    },
    /// Text generated for `id` (one token or a few; never a partial UTF-8 character).
    Token {
        /// The request.
        id: u64,
        /// The text.
        text: String,
    },
    /// `id` ended; its slot is free.
    Done {
        /// The request.
        id: u64,
        /// Why.
        finish_reason: FinishReason,
        /// Tokens in the prompt.
        prompt_tokens: u32,
        /// Tokens generated.
        completion_tokens: u32,
        /// From the worker receiving the request to the first token, in milliseconds.
        ttft_ms: f64,
        /// From the first token to the last, in milliseconds.
        generation_ms: f64,
    },
    /// `id` failed (or, with no id, the worker did).
    Error {
        /// The request, if the failure is one request's.
        id: Option<u64>,
        /// What kind of failure.
        kind: ErrorKind,
        /// What happened, for a person.
        message: String,
    },
}

/// A line that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// Longer than [`MAX_LINE`].
    #[error("a worker protocol line of {0} bytes is longer than the limit of {MAX_LINE}")]
    TooLong(usize),
    /// Not the JSON of a message.
    #[error("not a worker protocol message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads one line (without its newline) as a message of type `T`.
///
/// # Errors
/// [`LineError`] when the line is too long or is not such a message.
pub fn decode<T: serde::de::DeserializeOwned>(line: &[u8]) -> Result<T, LineError> {
    if line.len() > MAX_LINE {
        return Err(LineError::TooLong(line.len()));
    }
    Ok(serde_json::from_slice(line)?)
}

/// Writes a message as one line, newline included.
///
/// # Errors
/// Only if `T`'s serialisation fails, which it does not for the types here.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_events_round_trip_as_single_lines() {
        let command = Command::Generate {
            id: 7,
            messages: vec![ChatMessage::new("user", "line one\nline two")],
            sampling: Sampling {
                stop: vec!["\n\n".into()],
                ..Sampling::default()
            },
            prefix: "The answer: ".into(),
        };
        let line = encode(&command).unwrap();
        assert_eq!(
            line.iter().filter(|b| **b == b'\n').count(),
            1,
            "one line, newline escaped"
        );
        let back: Command = decode(line.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(back, command);

        let event = Event::Done {
            id: 7,
            finish_reason: FinishReason::Length,
            prompt_tokens: 10,
            completion_tokens: 3,
            ttft_ms: 1.5,
            generation_ms: 20.0,
        };
        let line = encode(&event).unwrap();
        let back: Event = decode(line.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn bad_lines_are_errors_not_panics() {
        assert!(decode::<Event>(b"").is_err());
        assert!(decode::<Event>(b"{\"type\":\"token\"}").is_err());
        assert!(decode::<Command>(b"{\"type\":\"launch_missiles\"}").is_err());
        let long = vec![b' '; MAX_LINE + 1];
        assert!(matches!(decode::<Event>(&long), Err(LineError::TooLong(_))));
    }
}

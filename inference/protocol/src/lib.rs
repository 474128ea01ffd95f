//! The inference workers' side of the line, sans-IO: what the node and `jarvis-llm-worker` /
//! `jarvis-stt-worker` exchange over the worker's stdin and stdout, and the text handling both
//! sides share. A worker links this and its engine, nothing else of ours: no async runtime, no
//! HTTP, no archives (checked by `tidy`).
//!
//! - [`protocol`]: the language-model worker's commands and events (one JSON object a line).
//! - [`stt_protocol`]: the speech worker's (audio as base64).
//! - [`text`]: UTF-8 reassembly of token pieces and stop strings held back across pieces.

pub mod protocol;
pub mod stt_protocol;
pub mod text;

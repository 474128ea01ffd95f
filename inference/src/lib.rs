//! Inference for the Jarvis node, with no engine linked in.
//!
//! - [`protocol`], [`stt_protocol`], [`text`]: the workers' line protocols and the text both
//!   sides share, from `jarvis-inference-protocol` (all a worker links of ours).
//! - [`sched`]: the sans-IO fair queue that orders requests between clients.
//! - [`supervisor`]: the async shell that runs a worker process, feeds it through bounded queues,
//!   and restarts it when it dies.
//! - [`models`]: the model cache (`jarvis models list | pull | import`).
//! - [`metrics`]: queue depth, time to first token, tokens per second, requests by outcome.
//! - [`openai`]: the OpenAI chat-completions request, checked, sans-IO.
//! - [`upstream`]: an OpenAI-compatible server as a GPU peer's engine: its request, its
//!   streamed answer and its load, sans-IO.
//! - [`offload`]: answers on the org's GPU peers: the stream protocol, the choice of a peer,
//!   the local-or-offload policy, sans-IO.

pub mod metrics;
pub mod models;
pub mod offload;
pub mod openai;
pub mod sched;
pub mod supervisor;
pub mod upstream;
pub mod whisper_ggml;

pub use jarvis_inference_protocol::{protocol, stt_protocol, text};

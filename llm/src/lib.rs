//! The llama.cpp engine of Jarvis: continuous batching over a few slots, the model's own chat
//! template, streaming text with stop strings, cancellation between steps.
//!
//! Only the `jarvis-llm-worker` binary links this crate (and so llama.cpp); the node talks to that
//! process through `jarvis_inference`, which is why nothing here is async.

pub mod direct;
pub mod engine;

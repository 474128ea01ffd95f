//! One answer, from the engine's stream to the client's screen and into the conversation.
//!
//! Text goes to the client token by token; the conversation (a CRDT document, each edit a sealed
//! change that is stored and synced) gets it in pieces every [`FLUSH`], so the user's other
//! devices watch the answer grow without one change per token. If the client goes away (Ctrl-C on
//! `jarvis ask`, a closed SSE stream) the answer is cancelled and the engine freed at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jarvis_crdt::Status;
use jarvis_inference::protocol::{FinishReason, Sampling};
use jarvis_inference::supervisor::{Generation, Summary, Update};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// How often streamed text is written to the conversation.
pub const FLUSH: Duration = Duration::from_millis(200);

/// How `jarvis ask` samples: greedily (the same question gets the same answer), briefly.
pub fn ask_sampling() -> Sampling {
    Sampling {
        max_tokens: 256,
        temperature: 0.0,
        ..Sampling::default()
    }
}

/// How an answer ended.
#[derive(Debug)]
pub struct Finished {
    /// All the text.
    pub text: String,
    /// `Done`, `Cancelled` or `Failed`.
    pub status: Status,
    /// The engine's account, when it finished.
    pub summary: Option<Summary>,
    /// Why it failed.
    pub error: Option<String>,
}

impl Finished {
    /// The timings stored with the message and returned by `jarvis ask --json` (milliseconds,
    /// plus token counts and speed, which the conversation stores alongside).
    pub fn timings(&self) -> BTreeMap<String, u64> {
        let mut timings = BTreeMap::new();
        if let Some(s) = &self.summary {
            timings.insert("time_to_first_token".into(), millis(s.ttft));
            timings.insert("generation".into(), millis(s.generation));
            timings.insert("prompt_tokens".into(), u64::from(s.prompt_tokens));
            timings.insert("completion_tokens".into(), u64::from(s.completion_tokens));
            // Whole tokens per second (the CRDT stores integers).
            timings.insert(
                "tokens_per_second".into(),
                s.tokens_per_second().round() as u64,
            );
        }
        timings
    }

    /// The answer's part of `jarvis ask --json`.
    pub fn json(&self, model: &str, route: &crate::offload::Where) -> Value {
        json!({
            "answer": self.text,
            "status": self.status.as_str(),
            "model": model,
            "where": route.as_json(),
            "offload": route.detail(),
            "timings_ms": self.timings(),
            "error": self.error,
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Reads `generation` to its end. Each piece of text goes to `client` (wrapped by `wrap`) as it
/// comes; if the client has gone the answer is cancelled. Every [`FLUSH`] the text so far goes
/// to `flush` (the conversation), and whatever is left at the end.
pub async fn run<T, Flush>(
    mut generation: Generation,
    client: Option<&mpsc::Sender<T>>,
    wrap: impl Fn(String) -> T,
    mut flush: impl FnMut(String) -> Flush,
) -> Finished
where
    Flush: std::future::Future<Output = ()>,
{
    let mut text = String::new();
    let mut unflushed = String::new();
    let mut last_flush = Instant::now();
    let mut summary = None;
    let mut error = None;
    let status = loop {
        let update = match client {
            Some(client) => tokio::select! {
                update = generation.updates.recv() => update,
                () = client.closed() => break Status::Cancelled,
            },
            None => generation.updates.recv().await,
        };
        match update {
            None => {
                error = Some("the engine stopped before the answer was complete".to_owned());
                break Status::Failed;
            }
            Some(Update::Started { .. }) => {}
            Some(Update::Token(piece)) => {
                text.push_str(&piece);
                unflushed.push_str(&piece);
                if let Some(client) = client
                    && client.send(wrap(piece)).await.is_err()
                {
                    break Status::Cancelled;
                }
                if last_flush.elapsed() >= FLUSH {
                    flush(std::mem::take(&mut unflushed)).await;
                    last_flush = Instant::now();
                }
            }
            Some(Update::Done(done)) => {
                let status = if done.finish_reason == FinishReason::Cancelled {
                    Status::Cancelled
                } else {
                    Status::Done
                };
                summary = Some(done);
                break status;
            }
            Some(Update::Failed { message, .. }) => {
                error = Some(message);
                break Status::Failed;
            }
        }
    };
    // Dropping the generation (below, on return) cancels it in the engine if it still runs.
    drop(generation);
    if !unflushed.is_empty() {
        flush(unflushed).await;
    }
    Finished {
        text,
        status,
        summary,
        error,
    }
}

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
use tokio::sync::{mpsc, oneshot};

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
    /// A held answer's confirmation: the timings it came with.
    pub confirmed: Option<BTreeMap<String, u64>>,
    /// A held answer that was never confirmed: nothing of it was written.
    pub discarded: bool,
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

/// A speculative answer's hold: nothing is written to the conversation until `confirm` gives
/// the timings to store with it; if it is dropped instead, or `until` passes first, the answer is
/// cancelled and nothing was written.
#[derive(Debug)]
pub struct Hold {
    pub confirm: oneshot::Receiver<BTreeMap<String, u64>>,
    pub until: Instant,
}

/// How a hold ended.
enum Held {
    Confirmed(BTreeMap<String, u64>),
    Dropped,
}

async fn held(hold: &mut Option<Hold>) -> Held {
    match hold {
        Some(h) => tokio::select! {
            confirmed = &mut h.confirm => confirmed.map_or(Held::Dropped, Held::Confirmed),
            () = tokio::time::sleep_until(h.until.into()) => Held::Dropped,
        },
        None => std::future::pending().await,
    }
}

async fn closed<T>(client: Option<&mpsc::Sender<T>>) {
    match client {
        Some(client) => client.closed().await,
        None => std::future::pending().await,
    }
}

/// Reads `generation` to its end. Each piece of text goes to `client` (wrapped by `wrap`) as it
/// comes; if the client has gone the answer is cancelled. Every [`FLUSH`] the text so far goes
/// to `flush` (the conversation), and whatever is left at the end. With a `hold`, nothing goes to
/// `flush` until it is confirmed (the timings it gave are in [`Finished::confirmed`]); a hold
/// that is never confirmed cancels the answer, flushing nothing.
pub async fn run<T, Flush>(
    mut generation: Generation,
    client: Option<&mpsc::Sender<T>>,
    wrap: impl Fn(String) -> T,
    mut flush: impl FnMut(String) -> Flush,
    mut hold: Option<Hold>,
) -> Finished
where
    Flush: std::future::Future<Output = ()>,
{
    let mut text = String::new();
    let mut unflushed = String::new();
    let mut last_flush = Instant::now();
    let mut summary = None;
    let mut error = None;
    let mut confirmed = None;
    let status = loop {
        let update = tokio::select! {
            update = generation.updates.recv() => update,
            () = closed(client) => break Status::Cancelled,
            outcome = held(&mut hold) => {
                hold = None;
                match outcome {
                    Held::Confirmed(timings) => {
                        confirmed = Some(timings);
                        if !unflushed.is_empty() {
                            flush(std::mem::take(&mut unflushed)).await;
                            last_flush = Instant::now();
                        }
                        continue;
                    }
                    Held::Dropped => break Status::Cancelled,
                }
            }
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
                if hold.is_none() && last_flush.elapsed() >= FLUSH {
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
    // Written whole, or still waiting for its confirmation (or the client going away).
    let discarded = if hold.is_some() {
        tokio::select! {
            outcome = held(&mut hold) => match outcome {
                Held::Confirmed(timings) => {
                    confirmed = Some(timings);
                    false
                }
                Held::Dropped => true,
            },
            () = closed(client) => true,
        }
    } else {
        false
    };
    if !discarded && !unflushed.is_empty() {
        flush(unflushed).await;
    }
    Finished {
        text,
        status: if discarded { Status::Cancelled } else { status },
        summary,
        error,
        confirmed,
        discarded,
    }
}

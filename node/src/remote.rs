//! Asking a node that runs in another process, through its local API (`POST /v1/ask`): what
//! `jarvis ask` and `jarvis listen` use while `jarvis up` runs.

// `serde_json::Value[...]` with a string key returns `Null` for a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::local_api::Client;

/// Asks the running node, streaming: each piece of the answer goes to `on_piece` as it comes.
/// `timings` (a voice turn's, from before the question) are stored with the answer; `model`
/// names a model of the org's GPU peers to answer with.
pub async fn ask_node(
    client: &Client,
    text: &str,
    conversation: Option<String>,
    model: Option<&str>,
    timings: BTreeMap<String, u64>,
    on_piece: impl FnMut(&str),
) -> Result<Value> {
    let mut body = json!({ "text": text, "conversation": conversation, "stream": true, "timings_ms": timings });
    if let (Some(model), Some(fields)) = (model, body.as_object_mut()) {
        fields.insert("model".into(), model.into());
    }
    stream_answer(client, &body, None, on_piece).await
}

/// Asks the running node for a held answer (`"hold": true`): generated and streamed to
/// `on_piece` at once, but saved only once [`confirm`]ed with the ticket sent to `ticket` (which
/// comes before the first piece). Dropping the future before that drops the answer.
pub async fn ask_node_held(
    client: &Client,
    text: &str,
    conversation: Option<String>,
    ticket: tokio::sync::oneshot::Sender<String>,
    on_piece: impl FnMut(&str),
) -> Result<Value> {
    let body = json!({ "text": text, "conversation": conversation, "stream": true, "hold": true });
    stream_answer(client, &body, Some(ticket), on_piece).await
}

/// POSTs `body` to `/v1/ask` and reads the answer's events: the ticket of a held answer to
/// `ticket`, each piece to `on_piece`; returns the `done` event's answer.
async fn stream_answer(
    client: &Client,
    body: &Value,
    mut ticket: Option<tokio::sync::oneshot::Sender<String>>,
    mut on_piece: impl FnMut(&str),
) -> Result<Value> {
    let mut final_answer = None;
    client
        .post_events("/v1/ask", body, |event, data| match event {
            "start" => {
                let start: Value = serde_json::from_str(data).unwrap_or_default();
                if let (Some(t), Some(tx)) = (start["ticket"].as_str(), ticket.take()) {
                    let _ = tx.send(t.to_owned());
                }
            }
            "token" => {
                let piece: Value = serde_json::from_str(data).unwrap_or_default();
                on_piece(piece["text"].as_str().unwrap_or_default());
            }
            "done" => final_answer = serde_json::from_str(data).ok(),
            _ => {}
        })
        .await?;
    crate::ask::kept(final_answer.context("the node ended the answer early")?)
}

/// Keeps a held answer ([`ask_node_held`]), storing `timings` with it.
pub async fn confirm(client: &Client, ticket: &str, timings: &BTreeMap<String, u64>) -> Result<()> {
    client
        .post(
            "/v1/ask/confirm",
            &json!({ "ticket": ticket, "timings_ms": timings }),
        )
        .await?;
    Ok(())
}

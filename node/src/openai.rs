//! The OpenAI-compatible part of the local API, so editors, scripts and chat front-ends that
//! speak OpenAI's API (as Ollama and LM Studio users do) can use the node's model:
//!
//! ```text
//! GET  /v1/models             the model this node serves
//! POST /v1/chat/completions   streaming (SSE, `data: [DONE]` at the end) or not
//! ```
//!
//! Same bearer token as the rest of the API (`jarvis token`; OpenAI clients send it as their API
//! key). Errors come in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so
//! client libraries raise their usual exceptions. These requests are not saved to conversations:
//! the tools that send them keep their own history.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jarvis_inference::protocol::{ChatMessage, ErrorKind, FinishReason, Sampling};
use jarvis_inference::sched::Full;
use jarvis_inference::supervisor::{Request, SubmitError, Update};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::api::{AppState, authorized, engine_problem};

/// The largest request body: a long conversation, well within the worker protocol's line limit.
const MAX_BODY: usize = 2 * 1024 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// An error in OpenAI's shape.
fn oai_error(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    param: Option<&str>,
    message: &str,
) -> Response {
    (
        status,
        Json(json!({
            "error": { "message": message, "type": kind, "param": param, "code": code }
        })),
    )
        .into_response()
}

fn unauthorized() -> Response {
    oai_error(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        Some("invalid_api_key"),
        None,
        "Missing or wrong API key: use the node's token (`jarvis token`) as the bearer token / api_key.",
    )
}

fn bad_request(message: &str, param: Option<&str>) -> Response {
    oai_error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        None,
        param,
        message,
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.engine.model_name(),
            "object": "model",
            "created": 0,
            "owned_by": "jarvis",
        }],
    }))
    .into_response()
}

/// Message content: a string, or (newer clients) a list of parts of which the text ones count.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    user: Option<String>,
}

/// Checks a request and turns it into the engine's terms.
// The error is the HTTP response itself, handed straight back to axum: boxing it buys nothing.
#[allow(clippy::result_large_err)]
fn to_request(body: ChatRequest, model: &str) -> Result<(Request, bool, bool), Response> {
    if body.model != model {
        return Err(oai_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            Some("model"),
            &format!(
                "The model `{}` does not exist on this node; it serves `{model}` (GET /v1/models).",
                body.model
            ),
        ));
    }
    if body.n.is_some_and(|n| n != 1) {
        return Err(bad_request("Only n = 1 is supported.", Some("n")));
    }
    if body.messages.is_empty() {
        return Err(bad_request(
            "`messages` must hold at least one message.",
            Some("messages"),
        ));
    }
    let mut messages = Vec::with_capacity(body.messages.len());
    for (i, m) in body.messages.into_iter().enumerate() {
        let role = if m.role == "developer" {
            "system".to_owned()
        } else {
            m.role
        };
        if !crate::answer::valid_role(&role) {
            return Err(bad_request(
                &format!(
                    "messages[{i}].role must be system, developer, user or assistant, not {role:?}."
                ),
                Some("messages"),
            ));
        }
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(text)) => text,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    if part.kind != "text" {
                        return Err(bad_request(
                            &format!(
                                "messages[{i}] has a {:?} part; this model reads text only.",
                                part.kind
                            ),
                            Some("messages"),
                        ));
                    }
                    text.push_str(part.text.as_deref().unwrap_or_default());
                }
                text
            }
        };
        if content.contains('\0') {
            return Err(bad_request(
                &format!("messages[{i}].content holds a NUL character."),
                Some("messages"),
            ));
        }
        messages.push(ChatMessage { role, content });
    }
    let temperature = body.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(bad_request(
            "temperature must be between 0 and 2.",
            Some("temperature"),
        ));
    }
    let top_p = body.top_p.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&top_p) || top_p == 0.0 {
        return Err(bad_request(
            "top_p must be above 0 and at most 1.",
            Some("top_p"),
        ));
    }
    let stop = match body.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) if v.len() <= 4 => v,
        Some(Stop::Many(_)) => return Err(bad_request("At most 4 stop sequences.", Some("stop"))),
    };
    let max_tokens = body
        .max_completion_tokens
        .or(body.max_tokens)
        .unwrap_or(1024);
    if max_tokens == 0 {
        return Err(bad_request(
            "max_tokens must be at least 1.",
            Some("max_tokens"),
        ));
    }
    let sampling = Sampling {
        max_tokens,
        temperature,
        top_p,
        // OpenAI seeds are 64-bit; llama.cpp's are 32-bit.
        seed: body.seed.map(|s| (s as u64 & u64::from(u32::MAX)) as u32),
        stop,
    };
    let include_usage = body.stream_options.is_some_and(|o| o.include_usage);
    let request = Request {
        client: body.user.unwrap_or_else(|| "openai".to_owned()),
        messages,
        sampling,
    };
    Ok((request, body.stream, include_usage))
}

fn failure(kind: ErrorKind, message: &str) -> Response {
    match kind {
        ErrorKind::ContextLengthExceeded => oai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("context_length_exceeded"),
            Some("messages"),
            message,
        ),
        ErrorKind::InvalidRequest => bad_request(message, Some("messages")),
        ErrorKind::Engine => oai_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            None,
            message,
        ),
    }
}

fn submit_error(error: &SubmitError) -> Response {
    match error {
        SubmitError::Full(Full::Total(_) | Full::Client(_)) => oai_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            None,
            &error.to_string(),
        ),
        SubmitError::Unavailable(_) | SubmitError::Stopped => oai_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            None,
            None,
            &error.to_string(),
        ),
    }
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => {
            let status = rejection.status();
            return oai_error(
                status,
                "invalid_request_error",
                None,
                None,
                &rejection.body_text(),
            );
        }
    };
    let body: ChatRequest = match serde_json::from_value(body) {
        Ok(body) => body,
        Err(e) => {
            return bad_request(
                &format!("The request is not a chat completion request: {e}."),
                None,
            );
        }
    };
    let (request, stream, include_usage) = match to_request(body, state.engine.model_name()) {
        Ok(parts) => parts,
        Err(response) => return response,
    };
    if let Some(problem) = engine_problem(&state.engine).await {
        return oai_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            None,
            None,
            &problem,
        );
    }
    let mut generation = match state.engine.submit(request).await {
        Ok(generation) => generation,
        Err(e) => return submit_error(&e),
    };
    let id = format!(
        "chatcmpl-{}",
        hex::encode(jarvis_identity::keys::random_bytes::<12>())
    );
    let model = state.engine.model_name().to_owned();
    let created = unix_now();
    // Wait for the prompt to be read, so that a prompt that does not fit is a 400, not a stream
    // that fails after its headers went out.
    let first = match generation.updates.recv().await {
        Some(Update::Started { .. }) => None,
        Some(Update::Failed { kind, message }) => return failure(kind, &message),
        Some(other) => Some(other),
        None => return failure(ErrorKind::Engine, "the engine stopped"),
    };
    if !stream {
        let mut text = String::new();
        let mut pending = first;
        loop {
            let update = match pending.take() {
                Some(update) => Some(update),
                None => generation.updates.recv().await,
            };
            match update {
                Some(Update::Token(piece)) => text.push_str(&piece),
                Some(Update::Started { .. }) => {}
                Some(Update::Done(summary)) => {
                    return Json(json!({
                        "id": id,
                        "object": "chat.completion",
                        "created": created,
                        "model": model,
                        "system_fingerprint": null,
                        "choices": [{
                            "index": 0,
                            "message": { "role": "assistant", "content": text },
                            "logprobs": null,
                            "finish_reason": finish_reason(summary.finish_reason),
                        }],
                        "usage": {
                            "prompt_tokens": summary.prompt_tokens,
                            "completion_tokens": summary.completion_tokens,
                            "total_tokens": summary.prompt_tokens + summary.completion_tokens,
                        },
                    }))
                    .into_response();
                }
                Some(Update::Failed { kind, message }) => return failure(kind, &message),
                None => return failure(ErrorKind::Engine, "the engine stopped"),
            }
        }
    }
    // Streaming: chunks as OpenAI sends them. Dropping the response (the client went away) drops
    // the channel, which ends the forwarding task, which drops the generation: cancelled.
    let (tx, rx) = mpsc::channel::<Event>(256);
    let chunk = move |delta: Value, finish: Option<&str>| {
        Event::default().data(
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": null,
                "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
            })
            .to_string(),
        )
    };
    tokio::spawn(async move {
        if tx
            .send(chunk(json!({ "role": "assistant", "content": "" }), None))
            .await
            .is_err()
        {
            return;
        }
        let mut pending = first;
        loop {
            let update = match pending.take() {
                Some(update) => Some(update),
                None => tokio::select! {
                    update = generation.updates.recv() => update,
                    () = tx.closed() => return,
                },
            };
            let event = match update {
                Some(Update::Token(piece)) => chunk(json!({ "content": piece }), None),
                Some(Update::Started { .. }) => continue,
                Some(Update::Done(summary)) => {
                    let _ = tx
                        .send(chunk(json!({}), Some(finish_reason(summary.finish_reason))))
                        .await;
                    if include_usage {
                        let usage = json!({
                            "id": "usage", "object": "chat.completion.chunk", "choices": [],
                            "usage": {
                                "prompt_tokens": summary.prompt_tokens,
                                "completion_tokens": summary.completion_tokens,
                                "total_tokens": summary.prompt_tokens + summary.completion_tokens,
                            },
                        });
                        let _ = tx.send(Event::default().data(usage.to_string())).await;
                    }
                    let _ = tx.send(Event::default().data("[DONE]")).await;
                    return;
                }
                Some(Update::Failed { message, .. }) => {
                    let error = json!({ "error": { "message": message, "type": "server_error", "param": null, "code": null } });
                    let _ = tx.send(Event::default().data(error.to_string())).await;
                    return;
                }
                None => return,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, std::convert::Infallible>(event), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

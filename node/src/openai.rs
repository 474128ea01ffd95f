//! The OpenAI-compatible part of the local API, so editors, scripts and chat front-ends that
//! speak OpenAI's API (as Ollama and LM Studio users do) can use the node's model:
//!
//! ```text
//! GET  /v1/models             the model this node serves, and those of its org's GPU peers
//! POST /v1/chat/completions   streaming (SSE, `data: [DONE]` at the end) or not; answered here
//!                             or on a GPU peer as the user's setting says (a GPU peer's model
//!                             only there), with an ask's failover
//! ```
//!
//! Same bearer token as the rest of the API (`jarvis token`; OpenAI clients send it as their API
//! key). Errors come in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so
//! client libraries raise their usual exceptions. These requests are not saved to conversations:
//! the tools that send them keep their own history.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jarvis_inference::openai::{ApiError, ChatCompletion, bad_request, parse_chat};
use jarvis_inference::protocol::{ErrorKind, FinishReason};
use jarvis_inference::sched::Full;
use jarvis_inference::supervisor::{SubmitError, Update};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::api_state::{AppState, authorized};
use crate::llm::engine_problem;

/// The largest request body: a long conversation, well within the worker protocol's line limit.
const MAX_BODY: usize = 2 * 1024 * 1024;

pub fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        // The key is checked before the body is read (#20, low).
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

async fn require_key(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if authorized(&state, request.headers()) {
        next.run(request).await
    } else {
        unauthorized()
    }
}

fn unauthorized() -> Response {
    api_error(&ApiError::new(
        401,
        "invalid_request_error",
        Some("invalid_api_key"),
        None,
        "Missing or wrong API key: use the node's token (`jarvis token`) as the bearer token / api_key.",
    ))
}

fn api_error(error: &ApiError) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(error.body())).into_response()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The models a request may name: this node's own, then those of the org's GPU peers in reach
/// (used as the user's setting allows).
fn served_models(state: &AppState) -> Vec<String> {
    let local = state.asking.engine.model_name().to_owned();
    let mut models = vec![local.clone()];
    models.extend(
        state
            .asking
            .offload
            .models()
            .into_iter()
            .filter(|m| *m != local),
    );
    models
}

async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let local = state.asking.engine.model_name().to_owned();
    let data: Vec<Value> = served_models(&state)
        .into_iter()
        .map(|id| {
            let owned_by = if id == local {
                "jarvis"
            } else {
                "jarvis-gpu-peer"
            };
            json!({ "id": id, "object": "model", "created": 0, "owned_by": owned_by })
        })
        .collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

fn failure(kind: ErrorKind, message: &str) -> Response {
    match kind {
        ErrorKind::ContextLengthExceeded => api_error(&ApiError::new(
            400,
            "invalid_request_error",
            Some("context_length_exceeded"),
            Some("messages"),
            message,
        )),
        ErrorKind::InvalidRequest => api_error(&bad_request(message, Some("messages"))),
        ErrorKind::Engine => api_error(&ApiError::new(500, "server_error", None, None, message)),
    }
}

fn submit_error(error: &SubmitError) -> Response {
    match error {
        SubmitError::Full(Full::Total(_) | Full::Client(_)) => api_error(&ApiError::new(
            429,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            None,
            &error.to_string(),
        )),
        SubmitError::Unavailable(_) | SubmitError::Stopped => api_error(&ApiError::new(
            503,
            "server_error",
            None,
            None,
            &error.to_string(),
        )),
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
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            return api_error(&ApiError::new(
                status.as_u16(),
                "invalid_request_error",
                None,
                None,
                &rejection.body_text(),
            ));
        }
    };
    let ChatCompletion {
        request,
        stream,
        include_usage,
        model,
    } = match parse_chat(&body, &served_models(&state)) {
        Ok(chat) => chat,
        Err(e) => return api_error(&e),
    };
    // A model of the org's GPU peers goes to one of them; this node's own, where the user's
    // setting says (here, or a GPU peer), with the same failover as an ask.
    let asking = &state.asking;
    let pinned = (model != asking.engine.model_name()).then(|| model.clone());
    let local_only = asking.offload.policy() == jarvis_inference::offload::Policy::Local
        || !asking.offload.available();
    if pinned.is_none()
        && local_only
        && let Some(problem) = engine_problem(&asking.engine).await
    {
        return api_error(&ApiError::new(503, "server_error", None, None, &problem));
    }
    let mut generation = match asking
        .offload
        .submit_for(&asking.engine, request, pinned)
        .await
    {
        Ok(routed) => routed.generation,
        Err(e) => return submit_error(&e),
    };
    let id = format!(
        "chatcmpl-{}",
        hex::encode(jarvis_identity::keys::random_bytes::<12>())
    );
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

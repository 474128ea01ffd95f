//! The local HTTP API on 127.0.0.1, for the desktop app, scripts and the CLI's own commands
//! (`status`, `ask`, `conversations`, `show`). Every request carries the per-install bearer token
//! (`jarvis token`); the node writes where it listens to `api.json` in its home.
//!
//! ```text
//! GET  /v1/status                  the node, its peers and how each is connected
//! GET  /v1/conversations           the synced conversations
//! GET  /v1/conversations/{id}      one conversation's messages
//! POST /v1/ask {text, conversation?, stream?}   answered by the local model
//! GET  /v1/models                  OpenAI-compatible (see openai.rs)
//! POST /v1/chat/completions        OpenAI-compatible, streaming or not
//! GET  /v1/events                 server-sent events (conversation changes, peers)
//! GET  /metrics                    Prometheus text format
//! GET  /                           the UI, and its own routes (see ui.rs)
//! ```
//!
//! Browsers may call it only from the UI's own origin (`ui::same_origin`): a web page elsewhere
//! cannot drive the node even if it learnt the token.

use std::collections::BTreeMap;

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jarvis_crdt::DocId;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::home::Home;

use crate::api_state::{AppState, authorized};
use crate::ask::{Answer, AnswerEvent, AskError, Asking, MAX_ASK_BYTES, Question};
use crate::local_api::{API_FILE, ApiInfo, token};
use crate::node::Command;

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn ask_node<T>(
    state: &AppState,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    state
        .commands
        .send(make(tx))
        .await
        .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down"))?;
    rx.await
        .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down"))
}

async fn status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (see `jarvis token`)",
        );
    }
    match ask_node(&state, Command::Status).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// `jarvis token --rotate`: a new token, written to the home and used from now on; the old one
/// stops working at once (clients configured with it need the new one).
async fn rotate_token(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "missing or wrong bearer token (see `jarvis token`)" })),
        )
            .into_response();
    }
    let home = match jarvis_home::Home::locate(Some(state.ui.home.clone())) {
        Ok(home) => home,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({ "error": e.to_string() })),
            )
                .into_response();
        }
    };
    match crate::local_api::new_token(&home) {
        Ok(token) => {
            if let Ok(mut current) = state.token.write() {
                current.clone_from(&token);
            }
            Json(json!({ "token": token })).into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": format!("cannot write the new token: {e:#}") })),
        )
            .into_response(),
    }
}

/// `POST /v1/devices/reload`: a command recorded a device of this user in `devices.json`; the
/// node shares every conversation key with it now (`crate::siblings`).
async fn reload_devices(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (see `jarvis token`)",
        );
    }
    match ask_node(&state, Command::ReloadDevices).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
        Err(r) => r,
    }
}

async fn metrics_handler(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (see `jarvis token`)",
        );
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Server-sent events: one JSON object per event (`{"type": "conversation", "id": …}` when a
/// conversation changed here or arrived from another device; `{"type": "peer", …}` when a peer
/// is authenticated or refused). A client that falls behind skips what it missed and gets a
/// `{"type": "lagged", "missed": n}` event, so a slow reader never slows the node.
async fn events_handler(State(state): State<AppState>, headers: HeaderMap) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    if !authorized(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (see `jarvis token`)",
        );
    }
    /// Counts the stream in `jarvis_event_streams` while it lives.
    struct Following(prometheus_client::metrics::gauge::Gauge);
    impl Drop for Following {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    let receiver = state.events.subscribe();
    state.metrics.event_streams.inc();
    let following = Following(state.metrics.event_streams.clone());
    let mut stop = state.stop.clone();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let stream = futures::stream::unfold(
        (receiver, following),
        |(mut receiver, following)| async move {
            let value = match receiver.recv().await {
                Ok(value) => value,
                Err(RecvError::Lagged(missed)) => json!({ "type": "lagged", "missed": missed }),
                Err(RecvError::Closed) => return None,
            };
            let event = Event::default().data(value.to_string());
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (receiver, following),
            ))
        },
    );
    // A comment first: the response (and a browser's `onopen`) starts at once instead of at the
    // first event.
    let opened = futures::stream::once(async {
        Ok::<_, std::convert::Infallible>(Event::default().comment("connected"))
    });
    let stream = futures::StreamExt::take_until(futures::StreamExt::chain(opened, stream), stopped);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn conversations(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (see `jarvis token`)",
        );
    }
    match ask_node(&state, Command::Conversations).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (see `jarvis token`)",
        );
    }
    let Ok(doc) = id.parse::<DocId>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "a conversation id is 32 hex characters",
        );
    };
    match ask_node(&state, |tx| Command::Show(doc, tx)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => error(StatusCode::NOT_FOUND, &e),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct AskRequest {
    text: String,
    conversation: Option<String>,
    /// Server-sent events (`start`, `token`…, then `done`) instead of one JSON answer.
    #[serde(default)]
    stream: bool,
    /// Timings of what came before the question (a voice turn's wake, end of speech and
    /// transcript), stored with the answer's own.
    #[serde(default)]
    timings_ms: BTreeMap<String, u64>,
    /// Speculative (with `stream`): the answer streams at once, but neither the question nor
    /// the answer is saved until `POST /v1/ask/confirm` names the `ticket` of the `start` event;
    /// closing the stream first (or not confirming within [`crate::ask::HOLD_FOR`]) drops both.
    #[serde(default)]
    hold: bool,
    /// A model of the org's GPU peers to answer with (`GET /v1/models` lists them).
    #[serde(default)]
    model: Option<String>,
}

/// `POST /v1/ask/confirm`: keep a held answer.
#[derive(Deserialize)]
struct ConfirmRequest {
    ticket: String,
    /// Timings to store with the answer (a voice turn's, known once its end is certain).
    #[serde(default)]
    timings_ms: BTreeMap<String, u64>,
}

/// How an [`AskError`] is said over HTTP: the status, and for a question saved without an
/// answer, its reply fields along with the error.
fn ask_error(e: AskError) -> Response {
    let status = match &e {
        AskError::BadText => StatusCode::BAD_REQUEST,
        AskError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
        AskError::TooManyHeld => StatusCode::TOO_MANY_REQUESTS,
        AskError::NoSuchTicket => StatusCode::NOT_FOUND,
        AskError::Saved { .. } | AskError::Unavailable(_) | AskError::Stopping => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    let message = e.to_string();
    match e {
        AskError::Saved { mut reply, .. } => {
            if let Some(fields) = reply.as_object_mut() {
                fields.insert("error".into(), json!(message));
            }
            (status, Json(reply)).into_response()
        }
        _ => error(status, &message),
    }
}

/// POST /v1/ask: saves the question, answers it with the local model or a GPU peer (streamed
/// with `"stream": true`), and saves the answer with its model and timings ([`Asking::ask`]).
/// With no model the question is still saved and synced, and the answer is a 503 saying why.
/// With `"hold": true`, a held answer ([`Asking::ask_held`]).
async fn ask(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<AskRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !authorized(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (see `jarvis token`)",
        );
    }
    let Ok(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected JSON {\"text\": \"…\", \"conversation\": optional id, \"stream\": optional bool}",
        );
    };
    let conversation = match body
        .conversation
        .as_deref()
        .map(str::parse::<DocId>)
        .transpose()
    {
        Ok(c) => c,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "a conversation id is 32 hex characters",
            );
        }
    };
    let question = Question {
        text: body.text,
        conversation,
        timings_ms: body.timings_ms,
        model: body.model,
    };
    if body.hold {
        if !body.stream {
            return error(
                StatusCode::BAD_REQUEST,
                "\"hold\" needs \"stream\": true (a held answer streams while it waits to be confirmed)",
            );
        }
        return match state.asking.ask_held(question).await {
            Ok((ticket, events)) => event_stream(json!({ "held": true, "ticket": ticket }), events),
            Err(e) => ask_error(e),
        };
    }
    match state.asking.ask(question, body.stream).await {
        Ok(Answer::Streaming { start, events }) => event_stream(start, events),
        Ok(Answer::Whole(done)) => match done.await {
            Ok(body) => Json(body).into_response(),
            Err(_) => ask_error(AskError::Stopping),
        },
        Err(e) => ask_error(e),
    }
}

/// An answer's server-sent events: `start` (with `start`'s fields), then a `token` event for
/// each piece and `done` with the answer.
fn event_stream(start: Value, events: mpsc::Receiver<AnswerEvent>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let start = Event::default().event("start").data(start.to_string());
    let rest = futures::stream::unfold(events, |mut rx| async move {
        let event = match rx.recv().await? {
            AnswerEvent::Token(text) => Event::default()
                .event("token")
                .data(json!({ "text": text }).to_string()),
            AnswerEvent::Done(body) => Event::default().event("done").data(body.to_string()),
        };
        Some((event, rx))
    });
    let stream = futures::StreamExt::map(
        futures::StreamExt::chain(futures::stream::once(async move { start }), rest),
        Ok::<_, std::convert::Infallible>,
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// POST /v1/ask/confirm: keeps a held answer ([`Asking::confirm`]): its question and answer are
/// saved, the answer streaming on to the stream that holds it.
async fn confirm(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<ConfirmRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !authorized(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (see `jarvis token`)",
        );
    }
    let Ok(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected JSON {\"ticket\": \"…\", \"timings_ms\": optional {name: ms}}",
        );
    };
    match state.asking.confirm(&body.ticket, body.timings_ms) {
        Ok(()) => Json(json!({ "confirmed": true })).into_response(),
        Err(e) => ask_error(e),
    }
}

/// What the API serves from: the node's command queue and events, the engine, the UI's share.
pub struct Parts {
    pub commands: mpsc::Sender<Command>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub events: tokio::sync::broadcast::Sender<Value>,
    /// Where questions are answered (the voice loop in this process shares it).
    pub asking: Asking,
    /// Fires when the node stops.
    pub stop: tokio::sync::watch::Receiver<bool>,
    pub ui: std::sync::Arc<crate::ui_state::UiState>,
}

/// Binds the API and records where in `api.json`. Returns the bound address and the server
/// future (which ends when `stop` fires).
pub async fn serve(
    home: &Home,
    addr: SocketAddr,
    parts: Parts,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()> + use<>)> {
    let Parts {
        commands,
        metrics,
        events,
        asking,
        stop,
        ui,
    } = parts;
    if !addr.ip().is_loopback() {
        bail!("the local API only listens on a loopback address (127.0.0.1 or ::1), not {addr}");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the local API (is another node running? try --api 127.0.0.1:0)"))?;
    let bound = listener.local_addr()?;
    let state = AppState {
        token: std::sync::Arc::new(std::sync::RwLock::new(token(home)?)),
        commands,
        metrics,
        events,
        asking,
        stop: stop.clone(),
        ui,
        port: bound.port(),
    };
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/conversations", get(conversations))
        .route("/v1/conversations/{id}", get(show))
        .route("/v1/ask", post(ask))
        .route("/v1/ask/confirm", post(confirm))
        .route("/v1/events", get(events_handler))
        .route(crate::siblings::RELOAD_PATH, post(reload_devices))
        .route("/v1/token/rotate", post(rotate_token))
        .route("/metrics", get(metrics_handler))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::ui::require_token,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_ASK_BYTES + 4096))
        .merge(crate::openai::routes(&state))
        .merge(crate::ui::routes(&state))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::ui::same_origin,
        ))
        .with_state(state);
    let info = ApiInfo {
        addr: bound,
        pid: std::process::id(),
    };
    home.write_atomic(API_FILE, &serde_json::to_vec_pretty(&info)?, false)?;
    let mut stop = stop;
    let server = async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        // Streamed tokens are small writes: without TCP_NODELAY, Nagle's algorithm holds each one
        // back until the previous is acknowledged.
        let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
            let _ = stream.set_nodelay(true);
        });
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "the local API stopped");
        }
    };
    Ok((bound, server))
}

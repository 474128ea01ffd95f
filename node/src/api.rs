//! The local HTTP API on 127.0.0.1, for the desktop app, scripts and the CLI's own commands
//! (`status`, `ask`, `conversations`, `show`). Every request carries the per-install bearer token
//! (`jarvis token`); the node writes where it listens to `api.json` in its home.
//!
//! ```text
//! GET  /v1/status                  the node, its peers and how each is connected
//! GET  /v1/conversations           the synced conversations
//! GET  /v1/conversations/{id}      one conversation's messages
//! POST /v1/ask {text, conversation?}
//! GET  /v1/events                 server-sent events (conversation changes, peers)
//! GET  /metrics                    Prometheus text format
//! ```

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jarvis_crdt::DocId;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::home::Home;
use crate::node::Command;

const TOKEN_FILE: &str = "api-token";
const API_FILE: &str = "api.json";

/// Where a running node's API is, as written to `api.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiInfo {
    pub addr: SocketAddr,
    pub pid: u32,
}

/// The per-install token: made on first use, kept in the home with mode 0600.
pub fn token(home: &Home) -> Result<String> {
    if let Some(bytes) = home.read_optional(TOKEN_FILE)? {
        let token = String::from_utf8(bytes).context("the API token file is damaged")?;
        return Ok(token.trim().to_owned());
    }
    let token = hex::encode(jarvis_identity::keys::random_bytes::<32>());
    home.write_atomic(TOKEN_FILE, token.as_bytes(), true)?;
    Ok(token)
}

#[derive(Clone)]
struct AppState {
    token: String,
    commands: mpsc::Sender<Command>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    events: tokio::sync::broadcast::Sender<Value>,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let expected = format!("Bearer {}", state.token);
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // Constant-time enough for a local token: compare every byte.
        .is_some_and(|v| {
            v.len() == expected.len()
                && v.bytes()
                    .zip(expected.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
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
    let receiver = state.events.subscribe();
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let value = match receiver.recv().await {
            Ok(value) => value,
            Err(RecvError::Lagged(missed)) => json!({ "type": "lagged", "missed": missed }),
            Err(RecvError::Closed) => return None,
        };
        let event = Event::default().data(value.to_string());
        Some((Ok::<_, std::convert::Infallible>(event), receiver))
    });
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
}

/// The longest message accepted from the API: a pasted document, not a disk image.
const MAX_ASK_BYTES: usize = 256 * 1024;

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
            "expected JSON {\"text\": \"…\", \"conversation\": optional id}",
        );
    };
    if body.text.trim().is_empty() || body.text.len() > MAX_ASK_BYTES {
        return error(
            StatusCode::BAD_REQUEST,
            "the text must be 1 byte to 256 KiB",
        );
    }
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
    match ask_node(&state, |reply| Command::Ask {
        text: body.text,
        conversation,
        reply,
    })
    .await
    {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, &e),
        Err(r) => r,
    }
}

/// Binds the API and records where in `api.json`. Returns the bound address and the server
/// future (which ends when `stop` fires).
pub async fn serve(
    home: &Home,
    addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    events: tokio::sync::broadcast::Sender<Value>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()> + use<>)> {
    if !addr.ip().is_loopback() {
        bail!("the local API only listens on a loopback address (127.0.0.1 or ::1), not {addr}");
    }
    let state = AppState {
        token: token(home)?,
        commands,
        metrics,
        events,
    };
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/conversations", get(conversations))
        .route("/v1/conversations/{id}", get(show))
        .route("/v1/ask", post(ask))
        .route("/v1/events", get(events_handler))
        .route("/metrics", get(metrics_handler))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_ASK_BYTES + 4096))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the local API (is another node running? try --api 127.0.0.1:0)"))?;
    let bound = listener.local_addr()?;
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
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "the local API stopped");
        }
    };
    Ok((bound, server))
}

/// Removes `api.json` when the node stops, so clients do not try a dead address.
pub fn forget(home: &Home) {
    let _ = std::fs::remove_file(home.dir().join(API_FILE));
}

/// A client of a running node's API, for the CLI.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// The running node of `home`, or a clear error.
    pub fn for_home(home: &Home) -> Result<Self> {
        let info: ApiInfo = match home.read_optional(API_FILE)? {
            Some(bytes) => serde_json::from_slice(&bytes).context("api.json is damaged")?,
            None => bail!(
                "no node is running for {}: start one with `jarvis up`",
                home.dir().display()
            ),
        };
        Ok(Self {
            base: format!("http://{}", info.addr),
            token: token(home)?,
            http: reqwest::Client::new(),
        })
    }

    async fn check(response: reqwest::Response) -> Result<Value> {
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .context("the node's answer is not JSON")?;
        if !status.is_success() {
            bail!(
                "{}",
                body.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("the node refused the request")
            );
        }
        Ok(body)
    }

    fn unreachable(e: reqwest::Error) -> anyhow::Error {
        anyhow::anyhow!("cannot reach the running node ({e}); is `jarvis up` still running?")
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(Self::unreachable)?;
        Self::check(response).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(Self::unreachable)?;
        Self::check(response).await
    }
}

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
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::home::Home;
use jarvis_inference::supervisor::{EngineHandle, EngineState, Request};

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
pub(crate) struct AppState {
    token: String,
    commands: mpsc::Sender<Command>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    events: tokio::sync::broadcast::Sender<Value>,
    pub(crate) engine: EngineHandle,
    /// Where answers are made: here or on a GPU peer.
    pub(crate) offload: crate::offload::Offload,
    /// Set when the node stops: event streams end then, or graceful shutdown would wait for
    /// them forever (the state holding the sender lives as long as the server).
    stop: tokio::sync::watch::Receiver<bool>,
    /// The UI's share: voice state, pairing, the admin home.
    pub(crate) ui: std::sync::Arc<crate::ui::UiState>,
    /// The port the API listens on, for the same-origin check.
    pub(crate) port: u16,
    /// Speculative answers waiting to be confirmed.
    held: std::sync::Arc<HeldAnswers>,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

pub(crate) fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
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
    /// closing the stream first (or not confirming within [`HOLD_FOR`]) drops both.
    #[serde(default)]
    hold: bool,
}

/// `POST /v1/ask/confirm`: keep a held answer.
#[derive(Deserialize)]
struct ConfirmRequest {
    ticket: String,
    /// Timings to store with the answer (a voice turn's, known once its end is certain).
    #[serde(default)]
    timings_ms: BTreeMap<String, u64>,
}

/// Held answers at once: a voice turn holds one at a time, so this is plenty for a machine.
const MAX_HELD: usize = 8;
/// How long a held answer waits to be confirmed.
const HOLD_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// Speculative answers waiting for their confirmation, by ticket.
#[derive(Default)]
struct HeldAnswers(std::sync::Mutex<std::collections::HashMap<String, HeldConfirm>>);

type HeldConfirm = oneshot::Sender<BTreeMap<String, u64>>;

impl HeldAnswers {
    /// A new ticket, or `None` when [`MAX_HELD`] are waiting.
    fn add(&self, confirm: HeldConfirm) -> Option<String> {
        let mut held = self.0.lock().ok()?;
        if held.len() >= MAX_HELD {
            return None;
        }
        let ticket = hex::encode(jarvis_identity::keys::random_bytes::<16>());
        held.insert(ticket.clone(), confirm);
        Some(ticket)
    }

    fn take(&self, ticket: &str) -> Option<HeldConfirm> {
        self.0.lock().ok()?.remove(ticket)
    }
}

/// Forgets a held answer's ticket when its task ends, however it ends.
struct Ticket(std::sync::Arc<HeldAnswers>, String);

impl Drop for Ticket {
    fn drop(&mut self) {
        drop(self.0.take(&self.1));
    }
}

/// The longest message accepted from the API: a pasted document, not a disk image.
const MAX_ASK_BYTES: usize = 256 * 1024;

/// How long a question waits for a model that is still loading.
const LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Why the engine cannot answer now, if it cannot.
pub(crate) async fn engine_problem(engine: &EngineHandle) -> Option<String> {
    match engine.wait_ready(LOAD_WAIT).await {
        EngineState::Ready { .. } => None,
        EngineState::Failed(problem) => Some(problem),
        EngineState::Starting => Some("the model is still loading; try again in a moment".into()),
        EngineState::Stopped => Some("the engine has stopped".into()),
    }
}

/// POST /v1/ask: saves the question, answers it with the local model (streamed with
/// `"stream": true`), and saves the answer with its model and timings. With no model the question
/// is still saved and synced, and the answer is a 503 saying why.
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
    // A GPU peer can answer when this machine has no model.
    let problem = match state.offload.available() {
        true => None,
        false => engine_problem(&state.engine).await,
    };
    if body.hold {
        return ask_held(state, body, conversation, problem).await;
    }
    let started = match ask_node(&state, |reply| Command::Ask {
        text: body.text,
        conversation,
        answer: problem.is_none(),
        reply,
    })
    .await
    {
        Ok(Ok(started)) => started,
        Ok(Err(e)) => return error(StatusCode::UNPROCESSABLE_ENTITY, &e),
        Err(r) => return r,
    };
    let no_answer = |reply: Value, why: String| {
        let mut body = reply;
        if let Some(fields) = body.as_object_mut() {
            fields.insert(
                "error".into(),
                json!(format!(
                    "your message is saved, but there is no answer: {why}"
                )),
            );
        }
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    };
    let Some(answer_id) = started.answer_id else {
        return no_answer(started.reply, problem.unwrap_or_default());
    };
    let request = Request {
        client: "ask".into(),
        messages: started.history,
        sampling: crate::answer::ask_sampling(),
        prefix: String::new(),
    };
    let routed = match state.offload.submit(&state.engine, request).await {
        Ok(routed) => routed,
        Err(e) => {
            let _ = state
                .commands
                .send(Command::AnswerDone {
                    doc: started.doc,
                    id: answer_id,
                    status: jarvis_crdt::Status::Failed,
                    model: None,
                    served_by: None,
                    timings_ms: Default::default(),
                })
                .await;
            return no_answer(started.reply, e.to_string());
        }
    };
    let (done_tx, done_rx) = oneshot::channel();
    let task = AnswerTask {
        target: Target {
            commands: state.commands.clone(),
            started: tokio::sync::OnceCell::new_with(Some(Some((
                started.doc,
                answer_id.clone(),
                started.reply.clone(),
            )))),
            question: None,
        },
        model: state.engine.model_name().to_owned(),
        timings_ms: body.timings_ms,
    };
    if body.stream {
        let (events_tx, events_rx) = mpsc::channel(256);
        tokio::spawn(task.run(routed, Some(events_tx), done_tx, None));
        // The answer's message id too, so a client can tell its own answer among the changes
        // `/v1/events` reports.
        let mut start = started.reply.clone();
        if let Some(fields) = start.as_object_mut() {
            fields.insert("answer_id".into(), json!(answer_id));
        }
        return event_stream(start, events_rx);
    }
    tokio::spawn(task.run(routed, None, done_tx, None));
    match done_rx.await {
        Ok(body) => Json(body).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down"),
    }
}

/// An answer's server-sent events: `start` (with `start`'s fields), then what the task sends.
fn event_stream(start: Value, events: mpsc::Receiver<axum::response::sse::Event>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let start = Event::default().event("start").data(start.to_string());
    let rest = futures::stream::unfold(events, |mut rx| async move {
        rx.recv().await.map(|event| (event, rx))
    });
    let stream = futures::StreamExt::map(
        futures::StreamExt::chain(futures::stream::once(async move { start }), rest),
        Ok::<_, std::convert::Infallible>,
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `POST /v1/ask` with `"hold": true`: the answer is generated and streamed from the
/// conversation as it would be with the question added, and nothing is saved until it is
/// confirmed. A voice turn starts one on the words heard at a pause, before it is sure the user
/// has finished, and confirms it once the silence is long enough.
async fn ask_held(
    state: AppState,
    body: AskRequest,
    conversation: Option<DocId>,
    problem: Option<String>,
) -> Response {
    if !body.stream {
        return error(
            StatusCode::BAD_REQUEST,
            "\"hold\" needs \"stream\": true (a held answer streams while it waits to be confirmed)",
        );
    }
    if let Some(problem) = problem {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("no answer (nothing was saved): {problem}"),
        );
    }
    let history = match ask_node(&state, |reply| Command::Preview {
        text: body.text.clone(),
        conversation,
        reply,
    })
    .await
    {
        Ok(Ok(history)) => history,
        Ok(Err(e)) => return error(StatusCode::UNPROCESSABLE_ENTITY, &e),
        Err(r) => return r,
    };
    let (confirm, confirmed) = oneshot::channel();
    let Some(ticket) = state.held.add(confirm) else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("{MAX_HELD} held answers are already waiting; confirm or close one first"),
        );
    };
    let guard = Ticket(std::sync::Arc::clone(&state.held), ticket.clone());
    let request = Request {
        client: "ask".into(),
        messages: history,
        sampling: crate::answer::ask_sampling(),
        prefix: String::new(),
    };
    let routed = match state.offload.submit(&state.engine, request).await {
        Ok(routed) => routed,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no answer (nothing was saved): {e}"),
            );
        }
    };
    let task = AnswerTask {
        target: Target {
            commands: state.commands.clone(),
            started: tokio::sync::OnceCell::new(),
            question: Some((body.text, conversation)),
        },
        model: state.engine.model_name().to_owned(),
        timings_ms: body.timings_ms,
    };
    let hold = crate::answer::Hold {
        confirm: confirmed,
        until: std::time::Instant::now() + HOLD_FOR,
    };
    let (events_tx, events_rx) = mpsc::channel(256);
    let (done_tx, _) = oneshot::channel();
    tokio::spawn(async move {
        task.run(routed, Some(events_tx), done_tx, Some(hold)).await;
        drop(guard);
    });
    event_stream(json!({ "held": true, "ticket": ticket }), events_rx)
}

/// POST /v1/ask/confirm: keeps a held answer (see [`ask_held`]): its question and answer are
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
    let gone = || {
        error(
            StatusCode::NOT_FOUND,
            "no held answer has that ticket: its stream closed, it waited too long, or it was already confirmed",
        )
    };
    let Some(confirm) = state.held.take(&body.ticket) else {
        return gone();
    };
    match confirm.send(body.timings_ms) {
        Ok(()) => Json(json!({ "confirmed": true })).into_response(),
        Err(_) => gone(),
    }
}

/// Where an answer is written: known from the start, or (held) made once it is confirmed.
struct Target {
    commands: mpsc::Sender<Command>,
    /// The conversation, the answer's message id, and the question's reply fields; `None` when
    /// a confirmed answer could not be saved.
    started: tokio::sync::OnceCell<Option<(DocId, String, Value)>>,
    /// A held answer's question and conversation, added when it is confirmed.
    question: Option<(String, Option<DocId>)>,
}

impl Target {
    /// Where the answer goes, adding the question and the answer's message first if held.
    async fn get(&self) -> Option<&(DocId, String, Value)> {
        self.started
            .get_or_init(|| async {
                let (text, conversation) = self.question.clone()?;
                let (reply, started) = oneshot::channel();
                self.commands
                    .send(Command::Ask {
                        text,
                        conversation,
                        answer: true,
                        reply,
                    })
                    .await
                    .ok()?;
                match started.await.ok()? {
                    Ok(s) => Some((s.doc, s.answer_id?, s.reply)),
                    Err(e) => {
                        tracing::warn!("a confirmed answer could not be saved: {e}");
                        None
                    }
                }
            })
            .await
            .as_ref()
    }
}

/// Streams one answer to its client and into the conversation, then records how it ended.
struct AnswerTask {
    target: Target,
    model: String,
    /// Timings from before the question, stored with the answer's own.
    timings_ms: BTreeMap<String, u64>,
}

impl AnswerTask {
    async fn run(
        self,
        routed: crate::offload::Routed,
        client: Option<mpsc::Sender<axum::response::sse::Event>>,
        done: oneshot::Sender<Value>,
        hold: Option<crate::answer::Hold>,
    ) {
        use axum::response::sse::Event;
        let Self {
            target,
            model,
            timings_ms: before,
        } = self;
        let crate::offload::Routed { generation, route } = routed;
        let finished = crate::answer::run(
            generation,
            client.as_ref(),
            |text| {
                Event::default()
                    .event("token")
                    .data(json!({ "text": text }).to_string())
            },
            |text| {
                let target = &target;
                async move {
                    if let Some((doc, id, _)) = target.get().await {
                        let _ = target
                            .commands
                            .send(Command::AnswerChunk {
                                doc: *doc,
                                id: id.clone(),
                                text,
                            })
                            .await;
                    }
                }
            },
            hold,
        )
        .await;
        let send_done = |body: Value| async {
            if let Some(client) = &client {
                let _ = client
                    .send(Event::default().event("done").data(body.to_string()))
                    .await;
            }
            let _ = done.send(body);
        };
        if finished.discarded {
            send_done(json!({ "status": "discarded", "answer": finished.text })).await;
            return;
        }
        let Some((doc, id, reply)) = target.get().await.cloned() else {
            send_done(json!({
                "status": "failed",
                "answer": finished.text,
                "error": "the answer could not be saved (is the node stopping?)",
            }))
            .await;
            return;
        };
        // An offloaded answer names the GPU peer's model.
        let model = finished.summary.as_ref().map_or(model, |s| s.model.clone());
        let route = route.borrow().clone();
        let _ = target
            .commands
            .send(Command::AnswerDone {
                doc,
                id,
                status: finished.status,
                model: Some(model.clone()),
                served_by: route.served_by(),
                timings_ms: before
                    .into_iter()
                    .chain(finished.confirmed.clone().unwrap_or_default())
                    .chain(finished.timings())
                    .collect(),
            })
            .await;
        let mut body = reply;
        if let (Some(fields), Value::Object(answer)) =
            (body.as_object_mut(), finished.json(&model, &route))
        {
            fields.extend(answer);
        }
        send_done(body).await;
    }
}

/// What the API serves from: the node's command queue and events, the engine, the UI's share.
pub struct Parts {
    pub commands: mpsc::Sender<Command>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub events: tokio::sync::broadcast::Sender<Value>,
    pub engine: EngineHandle,
    pub offload: crate::offload::Offload,
    /// Fires when the node stops.
    pub stop: tokio::sync::watch::Receiver<bool>,
    pub ui: std::sync::Arc<crate::ui::UiState>,
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
        engine,
        offload,
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
        token: token(home)?,
        commands,
        metrics,
        events,
        engine,
        offload,
        stop: stop.clone(),
        ui,
        port: bound.port(),
        held: std::sync::Arc::default(),
    };
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/conversations", get(conversations))
        .route("/v1/conversations/{id}", get(show))
        .route("/v1/ask", post(ask))
        .route("/v1/ask/confirm", post(confirm))
        .route("/v1/events", get(events_handler))
        .route(crate::siblings::RELOAD_PATH, post(reload_devices))
        .route("/metrics", get(metrics_handler))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_ASK_BYTES + 4096))
        .merge(crate::openai::routes())
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

/// Where the running node of `home` listens, or a clear error.
fn api_info(home: &Home) -> Result<ApiInfo> {
    match home.read_optional(API_FILE)? {
        Some(bytes) => serde_json::from_slice(&bytes).context("api.json is damaged"),
        None => bail!(
            "no node is running for {}: start one with `jarvis up`",
            home.dir().display()
        ),
    }
}

/// The UI's address, with the token in the fragment (which browsers never send anywhere).
pub fn ui_url(home: &Home) -> Result<String> {
    let info = api_info(home)?;
    Ok(format!("http://{}/#token={}", info.addr, token(home)?))
}

/// Removes `api.json` when the node stops, so clients do not try a dead address.
pub fn forget(home: &Home) {
    let _ = std::fs::remove_file(home.dir().join(API_FILE));
}

/// A client of a running node's API, for the CLI.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// The running node of `home`, or a clear error.
    pub fn for_home(home: &Home) -> Result<Self> {
        let info = api_info(home)?;
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

    /// POSTs `body`; the JSON answer, or the node's error.
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

    /// POSTs `body` and reads server-sent events, calling `on_event(event, data)` for each. A
    /// JSON answer instead (the node refused, or had no model) is passed on as a `done` event if
    /// it names a conversation, and is an error otherwise.
    pub async fn post_events(
        &self,
        path: &str,
        body: &Value,
        mut on_event: impl FnMut(&str, &str),
    ) -> Result<()> {
        let mut response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(Self::unreachable)?;
        let is_stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_stream {
            let status = response.status();
            let body: Value = response
                .json()
                .await
                .context("the node's answer is not JSON")?;
            if body.get("conversation_id").is_some() {
                on_event("done", &body.to_string());
                return Ok(());
            }
            bail!(
                "{}",
                body.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or(&format!("the node refused the request ({status})"))
            );
        }
        let mut buffer = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(Self::unreachable)? {
            buffer.extend_from_slice(&chunk);
            // Events end with a blank line.
            while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&raw);
                let mut event = "message";
                let mut data = String::new();
                for line in text.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event = name.trim();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        if !data.is_empty() {
                            data.push('\n');
                        }
                        data.push_str(value.strip_prefix(' ').unwrap_or(value));
                    }
                }
                if !data.is_empty() {
                    on_event(event, &data);
                }
            }
        }
        Ok(())
    }
}

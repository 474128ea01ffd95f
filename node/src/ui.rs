//! The UI: a web page the node serves on its local API address (embedded in the binary, no build
//! step), and the API routes only the UI needs. The page talks to the node only through the API,
//! with the per-install token it is opened with (`jarvis ui` opens
//! `http://127.0.0.1:PORT/#token=…`; the fragment never reaches the network or the server's log).
//!
//! ```text
//! GET  /  /app.js  /app.css  /icon.svg     the page (no token: it holds no data)
//! GET  /v1/devices                         this user's devices (`jarvis devices --json`)
//! POST /v1/devices/pair {passphrase?}      a pairing code; `paired` / `pair_failed` events follow
//! GET  /v1/local-models                    installed models (`jarvis models list --json`)
//! POST /v1/models/pull {name}              download one; `model_progress`, then `model_pulled` or
//!                                          `model_pull_failed` events
//! GET  /v1/voice                           voice state and mute
//! POST /v1/voice/mute {muted}              mute or unmute the microphone
//! POST /v1/voice/talk                      push-to-talk: listen to a request now, no wake word
//! POST /v1/voice/stop                      stop the answer being spoken
//! GET  /v1/admin/members                   with `jarvis up --admin-home DIR` only
//! POST /v1/admin/invite {user, role?, passphrase}   (the admin passphrase, asked again)
//! POST /v1/admin/revoke {device|user|peer, reason?, passphrase}
//! ```
//!
//! Devices, models and admin actions run this binary's own commands (`jarvis --home … --json`)
//! as child processes: the UI does exactly what the CLI does, through the one tested
//! implementation, and a slow or failing command never blocks the node's event loop.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use zeroize::Zeroizing;

use crate::api_state::{AppState, authorized};

const INDEX: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");
const ICON: &str = include_str!("../ui/icon.svg");

/// The page may load only itself and talk only to its own origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How long one CLI command may take before the UI is told it failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The page (public: it holds no data) and the UI's API routes (token required, checked once
/// for all of them by `require_token`).
pub fn routes(state: &AppState) -> Router<AppState> {
    let api = Router::new()
        .route("/v1/devices", get(devices))
        .route("/v1/devices/pair", post(pair))
        .route("/v1/local-models", get(local_models))
        .route("/v1/models/pull", post(pull_model))
        .route("/v1/voice", get(voice))
        .route("/v1/voice/mute", post(mute))
        .route("/v1/voice/talk", post(talk))
        .route("/v1/voice/stop", post(stop_speaking))
        .route("/v1/admin/members", get(members))
        .route("/v1/admin/invite", post(invite))
        .route("/v1/admin/revoke", post(revoke))
        .route("/v1/settings", get(settings).put(change_settings))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/", get(|| page(INDEX, "text/html; charset=utf-8")))
        .route(
            "/index.html",
            get(|| page(INDEX, "text/html; charset=utf-8")),
        )
        .route(
            "/app.js",
            get(|| page(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route("/app.css", get(|| page(APP_CSS, "text/css; charset=utf-8")))
        .route("/icon.svg", get(|| page(ICON, "image/svg+xml")))
        .merge(api)
}

/// The bearer token, for every UI route (the page itself is public) and every API route: checked
/// before anything reads the request's body (#20, low), which without the token is never read.
pub(crate) async fn require_token(
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

async fn page(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Admin actions (minting invites, revoking) are not done with the node's cached passphrase: the
/// token alone, which any process of this user can read, must not be enough (#20, finding 8).
fn passphrase_again() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "admin actions need the admin passphrase again: send it as \"passphrase\"",
    )
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (see `jarvis token`)",
    )
}

/// `jarvis --home HOME ARGS… --json` as a child process.
fn cli(home: &std::path::Path, args: &[&str], passphrase: &str) -> tokio::process::Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("jarvis"));
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--home")
        .arg(home)
        .arg("--json")
        .args(args)
        .env("JARVIS_PASSPHRASE", passphrase)
        .env_remove("JARVIS_HOME")
        // Its errors are what the UI needs, not a debug log that could fill the pipe.
        .env_remove("JARVIS_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Reads a child's stderr to its end on a task of its own (so a chatty child never blocks on a
/// full pipe), keeping the last 8 KiB: where its error is.
fn drain(stderr: Option<tokio::process::ChildStderr>) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let Some(mut stderr) = stderr else {
            return kept;
        };
        let mut buf = [0u8; 4096];
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stderr, &mut buf).await {
            let Some(read) = buf.get(..n).filter(|r| !r.is_empty()) else {
                break;
            };
            kept.extend_from_slice(read);
            if kept.len() > 8192 {
                kept.drain(..kept.len() - 8192);
            }
        }
        kept
    })
}

/// How long a download may go without progress before it is stopped.
const PULL_IDLE: Duration = Duration::from_secs(120);

/// The last line of a failed command's stderr: its error, which says what to do.
fn failure(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map_or_else(
            || "the command failed".to_owned(),
            |l| l.trim().trim_start_matches("error: ").to_owned(),
        )
}

/// Runs one command and answers with its JSON output, or its error.
async fn run_json(home: &std::path::Path, args: &[&str], passphrase: &str) -> Response {
    let output =
        match tokio::time::timeout(COMMAND_TIMEOUT, cli(home, args, passphrase).output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot run `jarvis {}`: {e}", args.join(" ")),
                );
            }
            Err(_) => {
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("`jarvis {}` took too long", args.join(" ")),
                );
            }
        };
    if !output.status.success() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, &failure(&output.stderr));
    }
    match serde_json::from_slice::<Value>(&output.stdout) {
        Ok(value) => Json(value).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("`jarvis {}` printed no JSON: {e}", args.join(" ")),
        ),
    }
}

async fn devices(State(state): State<AppState>) -> Response {
    run_json(&state.ui.home, &["devices"], &state.ui.passphrase).await
}

async fn local_models(State(state): State<AppState>) -> Response {
    run_json(&state.ui.home, &["models", "list"], &state.ui.passphrase).await
}

#[derive(Deserialize)]
struct PullRequest {
    name: String,
}

/// Starts `jarvis models pull NAME` and answers at once (202); its progress and outcome arrive
/// as events.
async fn pull_model(
    State(state): State<AppState>,
    body: Result<Json<PullRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(PullRequest { name })) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected JSON {\"name\": \"a model from GET /v1/local-models\"}",
        );
    };
    if jarvis_inference::models::catalog(&name).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no model called {name:?} (see `jarvis models list`)"),
        );
    }
    let fresh = state
        .ui
        .pulling
        .lock()
        .map(|mut p| p.insert(name.clone()))
        .unwrap_or(false);
    if !fresh {
        return error(
            StatusCode::CONFLICT,
            &format!("{name} is already downloading"),
        );
    }
    let mut child = match cli(
        &state.ui.home,
        &["models", "pull", &name, "--json-progress"],
        &state.ui.passphrase,
    )
    .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            if let Ok(mut p) = state.ui.pulling.lock() {
                p.remove(&name);
            }
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot start the download: {e}"),
            );
        }
    };
    let events = state.ui.events.clone();
    let pulling = Arc::clone(&state.ui.pulling);
    let model = name.clone();
    tokio::spawn(async move {
        let stderr = drain(child.stderr.take());
        let Some(stdout) = child.stdout.take() else {
            return;
        };
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut pulled = None;
        let mut stalled = false;
        loop {
            let line = match tokio::time::timeout(PULL_IDLE, lines.next_line()).await {
                Ok(Ok(Some(line))) => line,
                Ok(_) => break,
                Err(_) => {
                    stalled = true;
                    let _ = child.start_kill();
                    break;
                }
            };
            let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if fields.remove("event").is_some_and(|e| e == "progress") {
                fields.insert("type".into(), json!("model_progress"));
                let _ = events.send(Value::Object(fields));
            } else {
                fields.insert("type".into(), json!("model_pulled"));
                pulled = Some(Value::Object(fields));
            }
        }
        let ok = child.wait().await.is_ok_and(|s| s.success());
        let err = stderr.await.unwrap_or_default();
        let event = match pulled {
            Some(event) if ok => event,
            _ if stalled => {
                json!({ "type": "model_pull_failed", "name": model, "error": format!("no progress for {}s; stopped", PULL_IDLE.as_secs()) })
            }
            _ => json!({ "type": "model_pull_failed", "name": model, "error": failure(&err) }),
        };
        if let Ok(mut p) = pulling.lock() {
            p.remove(&model);
        }
        let _ = events.send(event);
    });
    (StatusCode::ACCEPTED, Json(json!({ "pulling": name }))).into_response()
}

async fn voice(State(state): State<AppState>) -> Response {
    Json(state.ui.voice.json()).into_response()
}

/// The settings with what each choice means, for the settings screen.
fn settings_json(settings: &crate::settings::Settings) -> Value {
    let voices: Vec<Value> = crate::front_end::voice_choices()
        .into_iter()
        .map(|(value, label)| json!({ "value": value, "label": label }))
        .collect();
    json!({
        "wake_word": settings.wake_word,
        "wake_threshold": settings.wake_threshold,
        "voice": settings.voice,
        "voice_choices": voices,
        "offload": settings.offload.as_str(),
        "offload_choices": [
            { "value": "local", "label": "Only this computer (the default)", "detail": "Conversations never leave your devices; answers use the model here." },
            { "value": "auto", "label": "Automatic", "detail": "Your org's GPU peers answer when they run a larger model, when this computer has no model or is busy, or for long prompts. The question and the conversation so far go to that peer, encrypted in transit, and whoever runs that GPU peer can read them." },
            { "value": "gpu", "label": "Prefer GPU peers", "detail": "Every answer goes to your org's fastest GPU peer when one is reachable (the conversation so far goes with it, encrypted in transit; whoever runs that GPU peer can read it); this computer answers when none is." },
        ],
    })
}

fn home_of(state: &AppState) -> Result<crate::home::Home, Box<Response>> {
    crate::home::Home::locate(Some(state.ui.home.clone()))
        .map_err(|e| Box::new(error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}"))))
}

async fn settings(State(state): State<AppState>) -> Response {
    let home = match home_of(&state) {
        Ok(home) => home,
        Err(r) => return *r,
    };
    match crate::settings::Settings::load(&home) {
        Ok(settings) => Json(settings_json(&settings)).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
    }
}

/// What a change may hold: any subset of the settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsChange {
    offload: Option<String>,
    wake_word: Option<bool>,
    wake_threshold: Option<f32>,
    /// A voice's name, `espeak`, or `default`.
    voice: Option<String>,
}

async fn change_settings(
    State(state): State<AppState>,
    body: Result<Json<SettingsChange>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(change)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected JSON with any of: {\"offload\": \"local\"|\"auto\"|\"gpu\", \"wake_word\": true|false, \"wake_threshold\": 0.05 to 0.95, \"voice\": a name from voice_choices or \"default\"}",
        );
    };
    let _one_at_a_time = state.ui.settings.lock().await;
    let home = match home_of(&state) {
        Ok(home) => home,
        Err(r) => return *r,
    };
    let mut settings = match crate::settings::Settings::load(&home) {
        Ok(settings) => settings,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
    };
    if let Some(offload) = change.offload {
        match offload.parse() {
            Ok(policy) => settings.offload = policy,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        }
    }
    if let Some(enabled) = change.wake_word {
        settings.wake_word = enabled;
    }
    if let Some(threshold) = change.wake_threshold {
        if !crate::settings::WAKE_THRESHOLDS.contains(&threshold) {
            return error(
                StatusCode::BAD_REQUEST,
                "wake_threshold must be between 0.05 (wakes most easily) and 0.95",
            );
        }
        settings.wake_threshold = threshold;
    }
    let voice_changed = change.voice.is_some();
    if let Some(voice) = change.voice {
        if voice == "default" {
            settings.voice = None;
        } else if crate::front_end::voice_choices()
            .iter()
            .any(|(v, _)| *v == voice)
        {
            settings.voice = Some(voice);
        } else {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "there is no voice {voice:?} here: pick one of voice_choices (GET /v1/settings), or \"default\""
                ),
            );
        }
    }
    if let Err(e) = settings.save(&home) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}"));
    }
    // Live: the next answer follows the new policy.
    state.asking.offload.set_policy(settings.offload);
    state
        .ui
        .voice
        .set_wake(settings.wake_word, settings.wake_threshold);
    if voice_changed {
        state.ui.voice.change_voice(settings.voice.clone());
    }
    let _ = state
        .ui
        .events
        .send(json!({ "type": "settings", "offload": settings.offload.as_str() }));
    Json(settings_json(&settings)).into_response()
}

#[derive(Deserialize)]
struct MuteRequest {
    muted: bool,
}

async fn mute(
    State(state): State<AppState>,
    body: Result<Json<MuteRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected JSON {\"muted\": true|false}",
        );
    };
    state.ui.voice.set_muted(body.muted);
    Json(state.ui.voice.json()).into_response()
}

/// Push-to-talk: the next request is listened to without the wake word.
async fn talk(State(state): State<AppState>) -> Response {
    let voice = &state.ui.voice;
    let now = voice.current();
    if now == "off" || now == "starting" {
        return error(
            StatusCode::CONFLICT,
            "voice is not running (see `problem` in GET /v1/voice)",
        );
    }
    if voice.muted() {
        return error(
            StatusCode::CONFLICT,
            "the microphone is muted: unmute it to talk",
        );
    }
    if now != "idle" {
        return error(
            StatusCode::CONFLICT,
            &format!("Jarvis is {now}: talk once it is done (or speak over an answer to stop it)"),
        );
    }
    voice.request_talk();
    Json(voice.json()).into_response()
}

async fn stop_speaking(State(state): State<AppState>) -> Response {
    let voice = &state.ui.voice;
    let now = voice.current();
    if now != "thinking" && now != "speaking" {
        return error(
            StatusCode::CONFLICT,
            &format!("there is no answer to stop (voice is {now})"),
        );
    }
    voice.request_stop();
    Json(voice.json()).into_response()
}

#[derive(Deserialize, Default)]
struct PairRequest {
    passphrase: Option<String>,
}

/// Starts `jarvis devices pair` and answers with its code once printed; the command waits on for
/// the new device, and its outcome arrives as an event.
async fn pair(State(state): State<AppState>, body: Option<Json<PairRequest>>) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let passphrase = body
        .passphrase
        .map_or_else(|| state.ui.passphrase.clone(), Zeroizing::new);
    let mut pairing = state.ui.pairing.lock().await;
    if let Some(previous) = pairing.take() {
        // A new code replaces the old one (dropping the child kills it).
        previous.abort();
    }
    let mut child = match cli(&state.ui.home, &["devices", "pair"], &passphrase).spawn() {
        Ok(child) => child,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot start pairing: {e}"),
            );
        }
    };
    let stderr = drain(child.stderr.take());
    let Some(stdout) = child.stdout.take() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot start pairing");
    };
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(COMMAND_TIMEOUT, lines.next_line()).await;
    let code = match first {
        Ok(Ok(Some(line))) => serde_json::from_str::<Value>(&line).ok(),
        _ => None,
    };
    let Some(code) = code.filter(|c| c.get("code").is_some()) else {
        // Stopped first, so its stderr ends even if it was still waiting.
        let _ = child.start_kill();
        let _ = child.wait().await;
        let err = stderr.await.unwrap_or_default();
        return error(StatusCode::UNPROCESSABLE_ENTITY, &failure(&err));
    };
    let events = state.ui.events.clone();
    *pairing = Some(tokio::spawn(async move {
        let joined = lines.next_line().await;
        let _ = child.wait().await;
        let err = stderr.await.unwrap_or_default();
        let event = match joined {
            Ok(Some(line)) => match serde_json::from_str::<Value>(&line) {
                Ok(Value::Object(mut fields)) => {
                    fields.insert("type".into(), json!("paired"));
                    Value::Object(fields)
                }
                _ => json!({ "type": "pair_failed", "error": failure(&err) }),
            },
            _ => json!({ "type": "pair_failed", "error": failure(&err) }),
        };
        let _ = events.send(event);
    }));
    Json(code).into_response()
}

fn no_admin_home() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "this node has no admin home: start it with `jarvis up --admin-home DIR` on an admin's machine",
    )
}

async fn members(State(state): State<AppState>) -> Response {
    match state.ui.admin_home.as_deref() {
        Some(admin) => run_json(admin, &["admin", "members"], &state.ui.passphrase).await,
        None => no_admin_home(),
    }
}

#[derive(Deserialize)]
struct InviteRequest {
    user: String,
    role: Option<String>,
    passphrase: Option<String>,
}

async fn invite(
    State(state): State<AppState>,
    body: Result<Json<InviteRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected JSON {\"user\": \"name\", \"role\": optional \"member\"|\"admin\"}",
        );
    };
    let Some(admin) = state.ui.admin_home.as_deref() else {
        return no_admin_home();
    };
    let role = body.role.unwrap_or_else(|| "member".to_owned());
    let Some(passphrase) = body.passphrase.map(Zeroizing::new) else {
        return passphrase_again();
    };
    run_json(
        admin,
        &["admin", "invite", "--role", &role, "--", &body.user],
        &passphrase,
    )
    .await
}

#[derive(Deserialize)]
struct RevokeRequest {
    device: Option<String>,
    user: Option<String>,
    peer: Option<String>,
    reason: Option<String>,
    passphrase: Option<String>,
}

async fn revoke(
    State(state): State<AppState>,
    body: Result<Json<RevokeRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let target = match &body {
        Ok(Json(RevokeRequest {
            device: Some(id),
            user: None,
            peer: None,
            ..
        })) => ("--device", id.clone()),
        Ok(Json(RevokeRequest {
            device: None,
            user: Some(name),
            peer: None,
            ..
        })) => ("--user", name.clone()),
        Ok(Json(RevokeRequest {
            device: None,
            user: None,
            peer: Some(id),
            ..
        })) => ("--peer", id.clone()),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "expected JSON with exactly one of \"device\", \"user\", \"peer\", and optional \"reason\"",
            );
        }
    };
    let Some(admin) = state.ui.admin_home.as_deref() else {
        return no_admin_home();
    };
    let (reason, passphrase) = match body {
        Ok(Json(b)) => (b.reason, b.passphrase),
        Err(_) => (None, None),
    };
    let Some(passphrase) = passphrase.map(Zeroizing::new) else {
        return passphrase_again();
    };
    let mut args = vec!["admin", "revoke", target.0, &target.1];
    if let Some(reason) = reason.as_deref() {
        args.extend(["--reason", reason]);
    }
    run_json(admin, &args, &passphrase).await
}

/// Refuses requests a browser sends from another origin (a web page the user visits must not
/// drive the node, token or not) and requests for another host name (DNS rebinding). Requests
/// without an `Origin` header (the CLI, scripts, OpenAI clients) pass.
pub async fn same_origin(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let port = state.port;
    let allowed_host = |host: &str| {
        [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ]
        .iter()
        .any(|h| h == host)
    };
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if !host.is_some_and(allowed_host) {
        return error(
            StatusCode::FORBIDDEN,
            "the local API answers only requests for 127.0.0.1, localhost or [::1]",
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        // (The desktop app's window loads the node's own page, so it has this origin too.)
        let ok = origin
            .to_str()
            .ok()
            .is_some_and(|o| o.strip_prefix("http://").is_some_and(allowed_host));
        if !ok {
            return error(
                StatusCode::FORBIDDEN,
                "requests from other web origins are refused: open the UI with `jarvis ui`",
            );
        }
    }
    next.run(request).await
}

//! The running node's local API, from the outside: where it listens (`api.json`), its token
//! (`api-token`, mode 0600), and an HTTP client for it. What `jarvis listen`, `jarvis ask` and
//! the other commands use to reach a node that runs in another process; the node itself
//! writes `api.json` when its API is up ([`crate::api::serve`]).

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::home::Home;

pub const TOKEN_FILE: &str = "api-token";
pub const API_FILE: &str = "api.json";

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
    new_token(home)
}

/// A new token, written to the home (mode 0600) in place of the old one.
pub fn new_token(home: &Home) -> Result<String> {
    let token = hex::encode(jarvis_identity::keys::random_bytes::<32>());
    home.write_atomic(TOKEN_FILE, token.as_bytes(), true)?;
    Ok(token)
}

/// Where the running node of `home` listens, or a clear error.
fn api_info(home: &Home) -> Result<ApiInfo> {
    let info: ApiInfo = match home.read_optional(API_FILE)? {
        Some(bytes) => serde_json::from_slice(&bytes).context("api.json is damaged")?,
        None => bail!(
            "no node is running for {}: start one with `jarvis up`",
            home.dir().display()
        ),
    };
    // A node that died leaves `api.json` behind, and its port may now be any local program's:
    // the token is not sent there (#20, finding 8).
    if !alive(info.pid) {
        bail!(
            "no node is running for {} (the one that wrote api.json, process {}, has stopped): start one with `jarvis up`",
            home.dir().display(),
            info.pid
        );
    }
    Ok(info)
}

/// Whether process `pid` exists (one we may not signal exists too).
fn alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Some(pid) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return false;
        };
        match rustix::process::test_kill_process(pid) {
            Ok(()) => true,
            Err(e) => e == rustix::io::Errno::PERM,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
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

/// The running node's client, or `None` when no node runs on this home (then commands work on
/// the store directly).
pub fn running(home: &Home) -> Result<Option<Client>> {
    home.load()?;
    match home.read_optional(API_FILE)? {
        Some(bytes) => {
            let info: ApiInfo = serde_json::from_slice(&bytes).context("api.json is damaged")?;
            // Left behind by a node that stopped: as if none ran.
            if !alive(info.pid) {
                return Ok(None);
            }
            Ok(Some(Client::for_home(home)?))
        }
        None => Ok(None),
    }
}

/// Runs `f` to completion on a runtime of its own (for commands outside the node's).
pub fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

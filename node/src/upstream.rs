//! A GPU peer's engine that is an OpenAI-compatible server the org already runs (vLLM, SGLang,
//! TGI, llama.cpp's `llama-server`, Ollama): `jarvis gpu up --backend openai=URL`. The shell of
//! [`jarvis_inference::upstream`], which reads what the server sends.
//!
//! - Each answer is one streamed `/v1/chat/completions` request, read into the same
//!   [`Update`]s the built-in engine gives, so the offload protocol does not know the difference.
//!   The device going away (the [`Generation`]'s receiver dropped) drops the HTTP response at
//!   once: the connection closes and the server cancels the request (llama-server and vLLM
//!   both stop generating for a client that disconnected).
//! - Its load, for the devices' choice of peer, is read every [`LOAD_EVERY`] from
//!   llama-server's `/slots`, else the server's Prometheus `/metrics` (vLLM, llama-server with
//!   `--metrics`, SGLang, TGI), else it is this peer's own count of answers in flight.
//! - At most `limit` answers are sent to the server at once (`--slots`; else llama-server's own
//!   slot count from `/slots`; else [`DEFAULT_CONCURRENCY`]); the rest wait here in the same fair
//!   queue as the built-in engine's ([`jarvis_inference::sched::FairQueue`]): users take turns and
//!   a spoken turn goes first. A waiting answer whose device goes away leaves the queue.
//! - The API key (`--backend-key-file`) is sent as a bearer token and never logged.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jarvis_inference::protocol::{ErrorKind, FinishReason};
use jarvis_inference::sched::FairQueue;
use jarvis_inference::supervisor::{Generation, Request, Summary, Update};
use jarvis_inference::upstream::{self, Busy, Event, Events, Flavor};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

/// How often the server's load is read.
pub const LOAD_EVERY: Duration = Duration::from_secs(1);
/// How long the server may take to answer a request's headers, or to send the next chunk.
const IDLE: Duration = Duration::from_secs(120);
/// How long a connection may take to open.
const CONNECT: Duration = Duration::from_secs(5);
/// How much of an error answer is read.
const MAX_ERROR_BYTES: usize = 16 * 1024;
/// Answers sent to a server at once when neither the operator nor the server says how many it
/// runs (a vLLM-class server batches far more than this; `--slots` raises it).
pub const DEFAULT_CONCURRENCY: u32 = 64;
/// Answers that may wait here in all, and per user.
const QUEUE: usize = 256;
const PER_USER: usize = 64;

/// Where the server is and how to talk to it.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Its base URL (`http://host:8000` or `…/v1`).
    pub url: String,
    /// The API key, if it wants one.
    pub key: Option<Zeroizing<String>>,
    /// The model to ask for (default: the first it lists).
    pub model: Option<String>,
    /// Answers to send it at once (default: its own slot count where it says, else
    /// [`DEFAULT_CONCURRENCY`]).
    pub slots: Option<u32>,
    /// Answers beyond `slots` that only spoken turns may send (where the server says how many
    /// it runs, they come out of its count instead).
    pub voice_slots: u32,
}

/// Who may send an answer to the server now, and who waits.
struct Admission {
    waiting: FairQueue<String, Waiter>,
    running: u32,
    /// Answers at the server at once, spoken turns included.
    limit: u32,
    /// Of those, how many typed and API answers may be (the rest are kept for spoken turns).
    typed: u32,
}

impl Admission {
    /// The next waiting answer that may go now, counted as running.
    fn next(&mut self) -> Option<Waiter> {
        let (_, waiter) = if self.running < self.typed {
            self.waiting.pop()?
        } else if self.running < self.limit {
            self.waiting.pop_urgent()?
        } else {
            return None;
        };
        self.running += 1;
        Some(waiter)
    }
}

/// An answer waiting for its turn: told to go through `go`.
struct Waiter {
    id: u64,
    go: tokio::sync::oneshot::Sender<()>,
}

/// The server, as a GPU peer's engine.
pub struct Upstream {
    client: reqwest::Client,
    /// The base URL without a trailing `/` or `/v1`.
    base: String,
    key: Option<Zeroizing<String>>,
    model: String,
    /// The model's size in bytes, where the server says (else 0: unknown).
    model_bytes: u64,
    /// Answers this peer has in flight there.
    in_flight: Arc<AtomicU32>,
    /// What the server last said about its load, and what it is.
    seen: Mutex<(Option<Busy>, Flavor)>,
    /// Whether it answered the last time it was asked.
    reachable: AtomicBool,
    next_id: AtomicU64,
    admission: Mutex<Admission>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// The base URL as given, without a trailing `/` or `/v1`.
fn base_of(url: &str) -> Result<String> {
    let parsed = reqwest::Url::parse(url).with_context(|| {
        format!("`{url}` is not a URL; e.g. --backend openai=http://127.0.0.1:8000")
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("`{url}`: the backend is reached over http or https");
    }
    let trimmed = url.trim_end_matches('/');
    Ok(trimmed.strip_suffix("/v1").unwrap_or(trimmed).to_owned())
}

/// Reads at most `max` bytes of a response body.
async fn bounded_body(mut response: reqwest::Response, max: usize) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        if body.len() + chunk.len() > max {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

impl Upstream {
    /// Reaches the server (its `/v1/models`) and settles the model to ask for.
    pub async fn connect(config: UpstreamConfig) -> Result<Arc<Self>> {
        let base = base_of(&config.url)?;
        // A connection per request: with pooled ones, `jarvis-bench offload` measured the first
        // token 4.6 ms later than llama-server asked directly (median of four runs), with a
        // connection each 2.4 ms; a connect on a LAN costs a fraction of a millisecond, and an
        // idle connection the server closed is never written to.
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT)
            .pool_max_idle_per_host(0)
            .build()
            .context("setting up the HTTP client")?;
        let upstream = Self {
            client,
            base,
            key: config.key,
            model: String::new(),
            model_bytes: 0,
            in_flight: Arc::new(AtomicU32::new(0)),
            seen: Mutex::new((None, Flavor::Other)),
            reachable: AtomicBool::new(true),
            next_id: AtomicU64::new(1),
            admission: Mutex::new(Admission {
                waiting: FairQueue::new(QUEUE, PER_USER),
                running: 0,
                limit: DEFAULT_CONCURRENCY,
                typed: DEFAULT_CONCURRENCY,
            }),
        };
        let models = upstream
            .get("/v1/models")
            .await
            .with_context(|| format!("cannot reach the backend at {}", upstream.base))?;
        let listed = upstream::parse_models(&models).with_context(|| {
            format!(
                "{}/v1/models did not answer with a model list: is it an OpenAI-compatible server?",
                upstream.base
            )
        })?;
        let model = match config.model {
            Some(model) => {
                if !listed.is_empty() && !listed.iter().any(|m| m.id == model) {
                    let ids: Vec<&str> = listed.iter().map(|m| m.id.as_str()).collect();
                    bail!(
                        "the backend does not serve `{model}`; it lists: {}",
                        ids.join(", ")
                    );
                }
                model
            }
            None => listed.first().map(|m| m.id.clone()).with_context(|| {
                format!(
                    "{} lists no model; name one with --backend-model",
                    upstream.base
                )
            })?,
        };
        let model_bytes = listed
            .iter()
            .find(|m| m.id == model)
            .and_then(|m| m.bytes)
            .unwrap_or(0);
        let upstream = Arc::new(Self {
            model,
            model_bytes,
            ..upstream
        });
        upstream.read_load().await;
        let served = upstream.seen_lock().0.and_then(|busy| busy.slots);
        {
            let mut admission = upstream.admission_lock();
            let voice = config.voice_slots.min(64);
            (admission.typed, admission.limit) = match (config.slots, served) {
                (Some(slots), _) => (slots.max(1), slots.max(1).saturating_add(voice)),
                // The server's own count is its ceiling: the places for spoken turns come out
                // of it (typed answers keep at least one).
                (None, Some(slots)) => (slots.saturating_sub(voice).max(1), slots.max(1)),
                (None, None) => (
                    DEFAULT_CONCURRENCY,
                    DEFAULT_CONCURRENCY.saturating_add(voice),
                ),
            };
        }
        Ok(upstream)
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// The model's size in bytes, where the server says (0: unknown).
    pub fn model_bytes(&self) -> u64 {
        self.model_bytes
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    fn seen_lock(&self) -> std::sync::MutexGuard<'_, (Option<Busy>, Flavor)> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn admission_lock(&self) -> std::sync::MutexGuard<'_, Admission> {
        self.admission
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether an answer asked for now (a spoken turn's: `voice`) would wait here for its
    /// turn.
    pub fn would_wait(&self, voice: bool) -> bool {
        let admission = self.admission_lock();
        let cap = if voice {
            admission.limit
        } else {
            admission.typed
        };
        admission.running >= cap || !self.reachable.load(Ordering::Relaxed)
    }

    /// Answers waiting here for their turn: (spoken turns, the rest).
    pub fn queued(&self) -> (usize, usize) {
        let admission = self.admission_lock();
        let voice = admission.waiting.urgent_len();
        (voice, admission.waiting.len().saturating_sub(voice))
    }

    /// Typed and API answers sent to the server at once (spoken turns may add a few more).
    pub fn concurrency(&self) -> u32 {
        self.admission_lock().typed
    }

    /// Waits for this answer's turn to be sent to the server (at once while fewer than the
    /// limit are); `None` when the device went away first, or the queue is full (then said on
    /// `tx`).
    async fn turn(
        self: &Arc<Self>,
        id: u64,
        request: &Request,
        tx: &mpsc::Sender<Update>,
    ) -> Option<Turn> {
        let go = {
            let mut admission = self.admission_lock();
            let cap = if request.voice {
                admission.limit
            } else {
                admission.typed
            };
            if admission.running < cap {
                admission.running += 1;
                return Some(Turn(Arc::clone(self)));
            }
            let (go, wait) = tokio::sync::oneshot::channel();
            let waiter = Waiter { id, go };
            let queued = if request.voice {
                admission
                    .waiting
                    .push_urgent(request.client.clone(), waiter)
            } else {
                admission.waiting.push(request.client.clone(), waiter)
            };
            if let Err(full) = queued {
                drop(admission);
                let _ = tx.try_send(Update::Failed {
                    kind: ErrorKind::Engine,
                    message: full.to_string(),
                });
                return None;
            }
            wait
        };
        let mut go = go;
        tokio::select! {
            went = &mut go => went.ok().map(|()| Turn(Arc::clone(self))),
            () = tx.closed() => {
                // Gone while waiting: out of the queue; if its turn came meanwhile (the
                // receiver is still alive, so `release` could hand it over), handed on.
                let mut admission = self.admission_lock();
                let removed = admission.waiting.remove(|w| w.id == id).is_some();
                drop(admission);
                if !removed && go.try_recv().is_ok() {
                    drop(Turn(Arc::clone(self)));
                }
                None
            }
        }
    }

    /// An answer's turn ended: the next waiting one goes (its device still there), else the
    /// place is free.
    fn release(&self) {
        let mut admission = self.admission_lock();
        admission.running = admission.running.saturating_sub(1);
        while let Some(waiter) = admission.next() {
            if waiter.go.send(()).is_ok() {
                return;
            }
            // Its device went away meanwhile: the place is free again.
            admission.running = admission.running.saturating_sub(1);
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => builder.bearer_auth(key.as_str()),
            None => builder,
        }
    }

    /// A small GET: its body, bounded, if it answered 2xx within a few seconds.
    async fn get(&self, path: &str) -> Result<Vec<u8>> {
        let response = self
            .request(reqwest::Method::GET, path)
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            bail!("{path} answered {status}");
        }
        bounded_body(response, upstream::MAX_LOAD_BYTES)
            .await
            .with_context(|| format!("{path} answered more than it should"))
    }

    /// Reads the server's load once: `llama-server`'s `/slots` (which also say how many it
    /// has), else its Prometheus metrics; notes whether it answered at all.
    async fn read_load(&self) {
        let seen = match self.get("/slots").await {
            Ok(body) => upstream::parse_slots(&body).map(|busy| (Some(busy), Flavor::LlamaServer)),
            Err(_) => None,
        };
        let seen = match seen {
            Some(seen) => Some(seen),
            None => match self.get("/metrics").await {
                Ok(page) => {
                    upstream::parse_metrics(&page).map(|(busy, flavor)| (Some(busy), flavor))
                }
                Err(_) => None,
            },
        };
        let reachable = match &seen {
            Some(_) => true,
            None => self.get("/v1/models").await.is_ok(),
        };
        self.reachable.store(reachable, Ordering::Relaxed);
        let mut last = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *last = seen.unwrap_or((None, last.1));
    }

    /// Reads the load every [`LOAD_EVERY`], for as long as the peer runs.
    pub async fn watch_load(self: Arc<Self>) {
        loop {
            tokio::time::sleep(LOAD_EVERY).await;
            self.read_load().await;
        }
    }

    /// (slots, busy, ready) for the load reports: the server's own figures where it gives
    /// them; otherwise this peer's answers in flight, against `slots`.
    pub fn load(&self, slots: u32) -> (u32, u32, bool) {
        let mine = self.in_flight.load(Ordering::Relaxed);
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
        let (slots, busy) = match seen {
            Some(busy) => (busy.slots.unwrap_or(slots), busy.in_flight().max(mine)),
            None => (slots, mine),
        };
        (slots, busy, self.reachable.load(Ordering::Relaxed))
    }

    /// Which engine it is, as far as its metrics say.
    pub fn flavor(&self) -> Flavor {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
    }

    /// Asks for one answer, streamed as the built-in engine's [`Update`]s. Dropping the
    /// receiver cancels it upstream.
    pub fn submit(self: &Arc<Self>, request: Request) -> Generation {
        let (tx, updates) = mpsc::channel(64);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let this = Arc::clone(self);
        let guard = InFlight::take(&self.in_flight);
        // The answer's wait here and its request to the server, in the caller's trace.
        let span = tracing::info_span!("backend", model = %self.model, url = %self.base);
        let work = async move {
            let _guard = guard;
            let Some(_turn) = this.turn(id, &request, &tx).await else {
                return;
            };
            let outcome = tokio::select! {
                outcome = this.stream(&request, &tx) => outcome,
                // The device went away: the response (and its connection) is dropped here.
                () = tx.closed() => return,
            };
            if let Err((kind, message)) = outcome {
                tracing::debug!(%message, "the backend's answer failed");
                let _ = tx.send(Update::Failed { kind, message }).await;
            }
        };
        tokio::spawn(tracing::Instrument::instrument(work, span));
        Generation { id, updates }
    }

    async fn stream(
        &self,
        request: &Request,
        tx: &mpsc::Sender<Update>,
    ) -> Result<(), (ErrorKind, String)> {
        let submitted = Instant::now();
        let engine = |e: String| (ErrorKind::Engine, e);
        let body = upstream::chat_body(request, &self.model);
        let mut post = self
            .request(reqwest::Method::POST, "/v1/chat/completions")
            .json(&body);
        // The server's own tracing (vLLM, SGLang and TGI read W3C trace context) joins the
        // trace: this request's span where this peer exports, else what the device sent.
        if let Some(traceparent) = jarvis_telemetry::traceparent(&tracing::Span::current())
            .or_else(|| request.traceparent.clone())
        {
            post = post.header("traceparent", traceparent);
        }
        let response = tokio::time::timeout(IDLE, post.send())
            .await
            .map_err(|_| engine("the backend did not answer in time".into()))?
            .map_err(|e| engine(format!("the backend is unreachable: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            let said = bounded_body(response, MAX_ERROR_BYTES)
                .await
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .chars()
                        .take(500)
                        .collect::<String>()
                })
                .unwrap_or_default();
            let kind = if said.contains("context") && said.contains("exceed") {
                ErrorKind::ContextLengthExceeded
            } else if status.is_client_error() {
                ErrorKind::InvalidRequest
            } else {
                ErrorKind::Engine
            };
            return Err((kind, format!("the backend answered {status}: {said}")));
        }
        let mut response = response;
        let mut events = Events::default();
        let mut started = false;
        let mut first_token: Option<Instant> = None;
        let mut last_token = Instant::now();
        let mut tokens = 0u32;
        let mut finish = None;
        let mut usage = None;
        let mut done = false;
        loop {
            let chunk = tokio::time::timeout(IDLE, response.chunk())
                .await
                .map_err(|_| engine("the backend stopped sending".into()))?
                .map_err(|e| engine(format!("the backend's stream broke: {e}")))?;
            let Some(chunk) = chunk else {
                // Closed without `[DONE]`: complete only if it said why it finished.
                if finish.is_some() {
                    break;
                }
                return Err(engine("the backend closed the stream mid-answer".into()));
            };
            for event in events.push(&chunk).map_err(|e| engine(e.to_string()))? {
                if !started {
                    started = true;
                    // The prompt's size is known only at the end (usage); 0 until then.
                    let _ = tx.send(Update::Started { prompt_tokens: 0 }).await;
                }
                match event {
                    Event::Text(text) if !text.is_empty() => {
                        let now = Instant::now();
                        first_token.get_or_insert(now);
                        last_token = now;
                        tokens = tokens.saturating_add(1);
                        if tx.send(Update::Token(text)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Event::Text(_) => {}
                    Event::Finished(reason) => finish = Some(reason),
                    Event::Usage {
                        prompt_tokens,
                        completion_tokens,
                    } => usage = Some((prompt_tokens, completion_tokens)),
                    Event::Done => {
                        finish.get_or_insert(FinishReason::Stop);
                        done = true;
                    }
                    Event::Failed(message) => return Err(engine(message)),
                }
            }
            if done || (finish.is_some() && usage.is_some()) {
                break;
            }
        }
        let (prompt_tokens, completion_tokens) = usage.unwrap_or((0, tokens));
        let summary = Summary {
            finish_reason: finish.unwrap_or(FinishReason::Stop),
            prompt_tokens,
            completion_tokens,
            ttft: first_token.map_or(Duration::ZERO, |t| t.duration_since(submitted)),
            generation: first_token.map_or(Duration::ZERO, |t| last_token.duration_since(t)),
            model: self.model.clone(),
        };
        let _ = tx.send(Update::Done(summary)).await;
        Ok(())
    }
}

/// An answer's place among those sent to the server; dropping it hands the place on.
struct Turn(Arc<Upstream>);

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// One answer in flight; dropping it counts it out.
struct InFlight(Arc<AtomicU32>);

impl InFlight {
    fn take(count: &Arc<AtomicU32>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(count))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_base_url_is_taken_with_or_without_v1() {
        assert_eq!(
            base_of("http://127.0.0.1:8000/v1/").unwrap(),
            "http://127.0.0.1:8000"
        );
        assert_eq!(
            base_of("https://vllm.acme.example").unwrap(),
            "https://vllm.acme.example"
        );
        assert!(base_of("127.0.0.1:8000").is_err());
        assert!(base_of("ftp://x").is_err());
    }
}

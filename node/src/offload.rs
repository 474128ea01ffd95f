//! Answers on the org's GPU peers: the node's async shell around the sans-IO core in
//! [`jarvis_inference::offload`].
//!
//! The node task tells [`Offload`] which authenticated GPU peers are connected; a background task
//! ([`Offload::watch_loads`]) asks each for its model and load every few seconds; and
//! [`Offload::submit`] answers a request where the policy says: here, through the local engine,
//! or on the GPU peer expected to finish first, over a libp2p stream. If that peer fails
//! mid-answer the answer goes on from the text already received, on another GPU peer or here
//! (the model continues the same answer: `Request::prefix`). Either way the caller gets one
//! [`Generation`], so everything downstream (streaming to the client, saving to the
//! conversation) is the same for a local and an offloaded answer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::io::{AsyncReadExt, AsyncWriteExt};
use jarvis_inference::offload::{
    self as core, Ask, Candidate, Frames, Load, Local, MAX_EVENT, Policy, Rejoin, Reply,
};
use jarvis_inference::protocol::ErrorKind;
use jarvis_inference::supervisor::{
    EngineHandle, EngineState, Generation, Request, SubmitError, Summary, Update,
};
use libp2p::{PeerId, StreamProtocol};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, watch};

/// How often GPU peers are asked for their load.
const LOAD_EVERY: Duration = Duration::from_secs(5);
/// How long opening a stream and a load report may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest silence from a GPU peer while it makes an answer (a queued request waits for a
/// slot; a working one sends a token every few tens of milliseconds).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest pause in an answer once it streams: a peer that stops mid-answer (its process
/// died, its network went) is given up on this soon, not after the transport's idle timeout.
const STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Peers tried for one answer before it is finished here.
const MAX_PEERS_PER_ANSWER: usize = 2;
/// The longest piece of text one token may be (the longest tokens of common vocabularies are
/// runs of spaces or punctuation well under this), and the most an answer may average per token.
const MAX_TOKEN_BYTES: usize = 256;
const AVERAGE_TOKEN_BYTES: usize = 32;
/// Tries of one peer whose stream closed before it said anything, and the pause before each
/// (times the try's number).
const DROPPED_RETRIES: u32 = 3;
const DROPPED_BACKOFF: Duration = Duration::from_millis(20);
/// Updates buffered between the stream and the answer's reader.
const UPDATES: usize = 64;

pub fn protocol() -> StreamProtocol {
    StreamProtocol::new(core::PROTOCOL)
}

/// Whether `ask` asks the peer to say it is busy rather than queue it.
fn ask_bounces(ask: &Ask) -> bool {
    matches!(ask, Ask::Generate { bounce: true, .. })
}

/// Where an answer was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Where {
    /// Here.
    Local,
    /// On a GPU peer.
    Peer { id: PeerId, name: String },
    /// Started on a GPU peer that failed, and finished here.
    Resumed {
        from: PeerId,
        name: String,
        reason: String,
    },
}

impl Where {
    /// `where` in `jarvis ask --json`: `local` or the GPU peer's id.
    pub fn as_json(&self) -> Value {
        match self {
            Self::Local | Self::Resumed { .. } => json!("local"),
            Self::Peer { id, .. } => json!(id.to_string()),
        }
    }

    /// What the conversation keeps of where the answer was made: the GPU peer's name (and that
    /// it failed, if this machine finished the answer).
    pub fn served_by(&self) -> Option<String> {
        match self {
            Self::Local => None,
            Self::Peer { name, .. } => Some(name.clone()),
            Self::Resumed { name, .. } => {
                Some(format!("{name} (failed; finished on the author device)"))
            }
        }
    }

    /// More about an offloaded answer, for `--json` and the UI (none for a local one).
    pub fn detail(&self) -> Value {
        match self {
            Self::Local => Value::Null,
            Self::Peer { id, name } => json!({ "peer_id": id.to_string(), "name": name }),
            Self::Resumed { from, name, reason } => {
                json!({ "peer_id": from.to_string(), "name": name, "failed": reason, "finished": "local" })
            }
        }
    }
}

/// An answer under way, and where it is being made (which can change once, if a peer fails).
pub struct Routed {
    pub generation: Generation,
    pub route: watch::Receiver<Where>,
}

/// How one attempt on a GPU peer ended, for its record.
enum Attempt {
    /// The answer came (done, or refused by the model for a reason that holds anywhere).
    Answered,
    /// Nobody reads it any more (the client went away): says nothing about the peer.
    Abandoned,
    /// The peer failed; the answer goes on elsewhere.
    Failed(String),
    /// Every slot there was taken (asked not to wait): its load now. Nothing was generated.
    Busy(Load),
    /// The stream closed before the peer said anything: it never took the request (a peer
    /// drops streams that arrive faster than it takes them). Worth another try.
    Dropped,
}

struct GpuPeer {
    /// Which connection of the peer this entry is for: a peer that left and came back is a new
    /// entry, and answers of the old one do not touch it.
    epoch: u64,
    name: String,
    candidate: Candidate<PeerId>,
    answers: u64,
    failures: u64,
    last_used: Option<u64>,
    last_error: Option<String>,
}

struct Inner {
    control: Mutex<libp2p_stream::Control>,
    peers: Mutex<BTreeMap<PeerId, GpuPeer>>,
    policy: RwLock<Policy>,
    /// The local model file's size, for [`Policy::Auto`].
    local_model_bytes: u64,
    joined: Notify,
    epochs: std::sync::atomic::AtomicU64,
}

/// The offload service (cheap to clone).
#[derive(Clone)]
pub struct Offload {
    inner: Arc<Inner>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Offload {
    pub fn new(control: libp2p_stream::Control, policy: Policy, local_model_bytes: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                control: Mutex::new(control),
                peers: Mutex::new(BTreeMap::new()),
                policy: RwLock::new(policy),
                local_model_bytes,
                joined: Notify::new(),
                epochs: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    fn control(&self) -> libp2p_stream::Control {
        lock(&self.inner.control).clone()
    }

    pub fn policy(&self) -> Policy {
        *self
            .inner
            .policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_policy(&self, policy: Policy) {
        *self
            .inner
            .policy
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = policy;
    }

    /// An authenticated GPU peer connected.
    pub fn joined(&self, peer: PeerId, name: String) {
        let epoch = self
            .inner
            .epochs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.inner.peers).entry(peer).or_insert(GpuPeer {
            epoch,
            name,
            candidate: Candidate::new(peer),
            answers: 0,
            failures: 0,
            last_used: None,
            last_error: None,
        });
        self.inner.joined.notify_one();
    }

    /// A GPU peer disconnected.
    pub fn left(&self, peer: &PeerId) {
        lock(&self.inner.peers).remove(peer);
    }

    /// Whether a GPU peer could answer now (so a node without a model of its own still can).
    /// The models the org's GPU peers in reach serve now (ready, reported), once each.
    pub fn models(&self) -> Vec<String> {
        let peers = lock(&self.inner.peers);
        let mut models: Vec<String> = peers
            .values()
            .filter_map(|p| p.candidate.load.as_ref())
            .filter(|l| l.ready)
            .map(|l| l.model.clone())
            .collect();
        models.sort();
        models.dedup();
        models
    }

    pub fn available(&self) -> bool {
        self.policy() != Policy::Local && self.could_answer()
    }

    /// Whether a GPU peer could answer now if the policy let it.
    pub fn could_answer(&self) -> bool {
        lock(&self.inner.peers)
            .values()
            .any(|p| p.candidate.expected_ms().is_some())
    }

    /// The policy and the GPU peers, for `status` and the UI.
    pub fn status(&self) -> Value {
        let peers: Vec<Value> = lock(&self.inner.peers)
            .iter()
            .map(|(id, p)| {
                let load = p.candidate.load.as_ref();
                json!({
                    "peer_id": id.to_string(),
                    "name": p.name,
                    "model": load.map(|l| l.model.clone()),
                    "backend": load.map(|l| l.backend.clone()).filter(|b| !b.is_empty()),
                    // A peer's word, shown as it is: bounded like the model's name.
                    "accelerator": load
                        .map(|l| l.accelerator.chars().take(128).collect::<String>())
                        .filter(|a| !a.is_empty()),
                    "model_bytes": load.map(|l| l.model_bytes),
                    "ready": load.is_some_and(|l| l.ready),
                    "slots": load.map(|l| l.slots),
                    "busy": load.map(|l| l.busy),
                    "in_flight": p.candidate.in_flight,
                    "rtt_ms": p.candidate.rtt_ms.round(),
                    "expected_ms": p.candidate.expected_ms().map(f64::round),
                    "answers": p.answers,
                    "failures": p.failures,
                    "last_used": p.last_used,
                    "last_error": p.last_error,
                })
            })
            .collect();
        json!({ "policy": self.policy().as_str(), "gpu_peers": peers })
    }

    /// Asks every GPU peer for its load now and then, until `stop` fires.
    pub async fn watch_loads(self, mut stop: watch::Receiver<bool>) {
        loop {
            let peers: Vec<PeerId> = lock(&self.inner.peers).keys().copied().collect();
            for peer in peers {
                let started = Instant::now();
                let result = tokio::time::timeout(OPEN_TIMEOUT * 2, self.ask_load(peer)).await;
                let mut all = lock(&self.inner.peers);
                let Some(state) = all.get_mut(&peer) else {
                    continue;
                };
                match result {
                    Ok(Ok(load)) => {
                        state.candidate.rtt_ms = started.elapsed().as_secs_f64() * 1_000.0;
                        state.candidate.load = Some(load);
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "no load report");
                        state.candidate.load = None;
                        state.last_error = Some(e);
                    }
                    Err(_) => {
                        state.candidate.load = None;
                        state.last_error = Some("no load report in 10 s".into());
                    }
                }
            }
            tokio::select! {
                _ = stop.changed() => return,
                () = self.inner.joined.notified() => {}
                () = tokio::time::sleep(LOAD_EVERY) => {}
            }
        }
    }

    async fn ask_load(&self, peer: PeerId) -> Result<Load, String> {
        let mut stream =
            tokio::time::timeout(OPEN_TIMEOUT, self.control().open_stream(peer, protocol()))
                .await
                .map_err(|_| "opening a stream timed out".to_owned())?
                .map_err(|e| e.to_string())?;
        stream
            .write_all(&core::encode(&Ask::Load))
            .await
            .map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let mut frames = Frames::new(MAX_EVENT);
        let mut buf = [0u8; 4096];
        loop {
            if let Some(reply) = frames.next_frame::<Reply>().map_err(|e| e.to_string())? {
                return match reply {
                    Reply::Load(load) => Ok(load),
                    Reply::Failed { message, .. } => Err(message),
                    _ => Err("the peer answered a load request with something else".into()),
                };
            }
            let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the peer closed the stream".into());
            }
            frames.push(buf.get(..n).unwrap_or_default());
        }
    }

    /// The GPU peer for an answer, or none to answer here. `model`: a model the request names
    /// that this device does not run (only the peers serving it are candidates).
    fn pick(
        &self,
        engine: &EngineHandle,
        prompt_chars: usize,
        excluded: &[PeerId],
        model: Option<&str>,
    ) -> Option<(PeerId, String, u64)> {
        let chosen = self.choice(engine, prompt_chars, excluded, model)?;
        let mut peers = lock(&self.inner.peers);
        let state = peers.get_mut(&chosen)?;
        state.candidate.in_flight += 1;
        state.last_used = Some(unix_now());
        Some((chosen, state.name.clone(), state.epoch))
    }

    /// The name of a GPU peer (empty if it left).
    fn name_of(&self, peer: PeerId) -> String {
        lock(&self.inner.peers)
            .get(&peer)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    }

    /// GPU peers that could answer now (ready; serving `model` if one is named), but those in
    /// `excluded`.
    fn serving_peers(&self, model: Option<&str>, excluded: &[PeerId]) -> usize {
        lock(&self.inner.peers)
            .iter()
            .filter(|(id, _)| !excluded.contains(id))
            .filter(|(_, p)| p.candidate.expected_ms().is_some())
            .filter(|(_, p)| {
                model.is_none_or(|m| p.candidate.load.as_ref().is_some_and(|l| l.model == m))
            })
            .count()
    }

    /// The GPU peer [`Offload::pick`] would choose now (none: answer here), without taking it.
    fn choice(
        &self,
        engine: &EngineHandle,
        prompt_chars: usize,
        excluded: &[PeerId],
        model: Option<&str>,
    ) -> Option<PeerId> {
        let (ready, slots) = match engine.state() {
            EngineState::Ready { slots, .. } => (true, slots),
            _ => (false, 0),
        };
        let local = Local {
            ready,
            model_bytes: self.inner.local_model_bytes,
            saturated: ready && engine.busy() >= slots,
        };
        let candidates: Vec<Candidate<PeerId>> = lock(&self.inner.peers)
            .values()
            .map(|p| p.candidate.clone())
            .collect();
        // Among peers that look equally quick, one at random: devices whose (seconds-old)
        // reports say the same peers are idle spread over them. No secret is at stake.
        let draw = getrandom::u64().unwrap_or_else(|_| unix_now());
        let chosen = match model {
            Some(model) => {
                core::choose_serving(self.policy(), model, &candidates, excluded, draw)?.peer
            }
            None => {
                core::choose(
                    self.policy(),
                    local,
                    prompt_chars,
                    &candidates,
                    excluded,
                    draw,
                )?
                .peer
            }
        };
        Some(chosen)
    }

    fn finished(&self, peer: PeerId, epoch: u64, took: Duration, attempt: &Attempt) {
        let mut peers = lock(&self.inner.peers);
        let Some(state) = peers.get_mut(&peer).filter(|s| s.epoch == epoch) else {
            return;
        };
        // A dropped request is tried again on the same peer: still in flight there.
        if matches!(attempt, Attempt::Dropped) {
            return;
        }
        state.candidate.in_flight = state.candidate.in_flight.saturating_sub(1);
        let took_ms = took.as_secs_f64() * 1_000.0;
        match attempt {
            Attempt::Answered => {
                state.candidate.record(took_ms, false);
                state.answers += 1;
            }
            Attempt::Abandoned | Attempt::Dropped => {}
            // What it says now is fresher than its last report.
            Attempt::Busy(load) => state.candidate.load = Some(load.clone()),
            Attempt::Failed(e) => {
                state.candidate.record(took_ms, true);
                state.failures += 1;
                state.last_error = Some(e.clone());
            }
        }
    }

    /// Starts answering `request`: here, or on a GPU peer if the policy says so.
    ///
    /// # Errors
    /// When it is to be answered here and the local engine cannot take it.
    pub async fn submit(
        &self,
        engine: &EngineHandle,
        request: Request,
    ) -> Result<Routed, SubmitError> {
        self.submit_for(engine, request, None).await
    }

    /// [`Offload::submit`] for `model`, when the request names a model of the org's GPU peers
    /// that this device does not run: one of the peers serving it answers (the quickest), as
    /// the policy allows; if they fail mid-answer, the answer is finished here.
    ///
    /// # Errors
    /// As [`Offload::submit`]; and [`SubmitError::Unavailable`] when no GPU peer serves `model`
    /// now, or the policy keeps answers on this device.
    pub async fn submit_for(
        &self,
        engine: &EngineHandle,
        request: Request,
        model: Option<String>,
    ) -> Result<Routed, SubmitError> {
        let chars = request.messages.iter().map(|m| m.content.len()).sum();
        let Some((peer, name, epoch)) = self.pick(engine, chars, &[], model.as_deref()) else {
            if let Some(model) = model {
                return Err(SubmitError::Unavailable(
                    if self.policy() == Policy::Local {
                        format!(
                            "`{model}` runs on the org's GPU peers, and this device's setting keeps answers here (Settings → \"Where answers are made\")"
                        )
                    } else {
                        format!("no GPU peer serves `{model}` now")
                    },
                ));
            }
            let generation = engine.submit(request).await?;
            let (_, route) = watch::channel(Where::Local);
            return Ok(Routed { generation, route });
        };
        let (updates_tx, updates) = mpsc::channel(UPDATES);
        let (route_tx, route) = watch::channel(Where::Peer { id: peer, name });
        let this = self.clone();
        let engine = engine.clone();
        // The answer's span: its attempts on GPU peers are its children, and each peer's work
        // joins the trace through the `traceparent` its request carries.
        let span = tracing::info_span!(
            "offload",
            policy = self.policy().as_str(),
            model = model.as_deref().unwrap_or_default(),
            voice = request.voice,
        );
        let work = async move {
            this.answer_remotely((peer, epoch), request, model, engine, updates_tx, route_tx)
                .await;
        };
        tokio::spawn(tracing::Instrument::instrument(work, span));
        Ok(Routed {
            generation: Generation { id: 0, updates },
            route,
        })
    }

    /// Makes the answer on `first`, then (if peers fail) on others, then here; every update goes
    /// to `updates`. Stops when the reader of `updates` goes away (the stream then closes, which
    /// cancels the answer on the peer).
    async fn answer_remotely(
        self,
        (first, first_epoch): (PeerId, u64),
        mut request: Request,
        model: Option<String>,
        engine: EngineHandle,
        updates: mpsc::Sender<Update>,
        route: watch::Sender<Where>,
    ) {
        let submitted = Instant::now();
        let mut text = String::new();
        let mut tried = vec![first];
        // Peers that said every slot was taken: the answer goes to one with a free slot if any
        // has one, else waits at the quickest (its last try is sent without `bounce`).
        let mut full: Vec<PeerId> = Vec::new();
        let (mut peer, mut epoch) = (first, first_epoch);
        let mut rejoin = Rejoin::default();
        let mut tokens = 0u32;
        let mut dropped = 0u32;
        // When every peer said it was full: a second one, where the request waits too.
        let mut also: Option<(PeerId, u64)> = None;
        let reason = loop {
            let started = Instant::now();
            let chars = request.messages.iter().map(|m| m.content.len()).sum();
            // A request not yet begun asks a peer that has not said it is full to say so rather
            // than queue it, if there is another peer to go to (a spoken turn: full even of
            // the places kept for spoken turns).
            let bounce = text.is_empty()
                && !full.contains(&peer)
                && self.serving_peers(model.as_deref(), &tried) > 0;
            let peers: Vec<PeerId> = [peer].into_iter().chain(also.map(|a| a.0)).collect();
            let (at, attempt) = self
                .stream_answer(
                    &peers,
                    &request,
                    bounce,
                    submitted,
                    (&mut text, &mut tokens, &mut rejoin),
                    (&updates, &route),
                )
                .await;
            if let Some((other, other_epoch)) = also.take() {
                // The one that did not start gave its place up.
                let (lost, lost_epoch) = if at == 0 {
                    (other, other_epoch)
                } else {
                    let lost = (peer, epoch);
                    (peer, epoch) = (other, other_epoch);
                    if !tried.contains(&peer) {
                        tried.push(peer);
                    }
                    // Said where it is now (when both failed, too: the last error was this one's).
                    let name = self.name_of(peer);
                    route.send_replace(Where::Peer { id: peer, name });
                    lost
                };
                self.finished(lost, lost_epoch, started.elapsed(), &Attempt::Abandoned);
                tried.retain(|p| *p != lost);
            }
            self.finished(peer, epoch, started.elapsed(), &attempt);
            let reason = match attempt {
                Attempt::Answered | Attempt::Abandoned => return,
                Attempt::Dropped if dropped < DROPPED_RETRIES => {
                    dropped += 1;
                    tokio::time::sleep(DROPPED_BACKOFF * dropped).await;
                    continue;
                }
                Attempt::Dropped => {
                    let reason = "it closed the stream before answering, again".to_owned();
                    self.finished(
                        peer,
                        epoch,
                        started.elapsed(),
                        &Attempt::Failed(reason.clone()),
                    );
                    reason
                }
                Attempt::Busy(_) => {
                    full.push(peer);
                    tried.retain(|p| *p != peer);
                    let excluded: Vec<PeerId> = tried.iter().chain(&full).copied().collect();
                    // One that has not said it is full; else (all full) the two expected to
                    // finish first by what they said (the shortest queues): it waits in both.
                    let next = match self.pick(&engine, chars, &excluded, model.as_deref()) {
                        Some(next) => Some(next),
                        None => {
                            let best = self.pick(&engine, chars, &tried, model.as_deref());
                            if let Some((best, _, _)) = &best {
                                let without: Vec<PeerId> =
                                    tried.iter().chain([best]).copied().collect();
                                also = self
                                    .pick(&engine, chars, &without, model.as_deref())
                                    .map(|(id, _, e)| (id, e));
                            }
                            best
                        }
                    };
                    let Some((next, name, next_epoch)) = next else {
                        break "every GPU peer was busy and none could take it".to_owned();
                    };
                    (peer, epoch) = (next, next_epoch);
                    if !tried.contains(&next) {
                        tried.push(next);
                    }
                    route.send_replace(Where::Peer { id: next, name });
                    continue;
                }
                Attempt::Failed(reason) => reason,
            };
            tracing::warn!(%peer, %reason, received = text.len(), "GPU peer failed mid-answer");
            // The rest of the answer: from what was received, within what is left of its length.
            (request.prefix, rejoin) = core::resume_from(&text);
            request.sampling.max_tokens = request.sampling.max_tokens.saturating_sub(tokens).max(1);
            tokens = 0;
            let chars = request.messages.iter().map(|m| m.content.len()).sum();
            match (tried.len() < MAX_PEERS_PER_ANSWER)
                .then(|| self.pick(&engine, chars, &tried, model.as_deref()))
                .flatten()
            {
                Some((next, name, next_epoch)) => {
                    tried.push(next);
                    (peer, epoch) = (next, next_epoch);
                    route.send_replace(Where::Peer { id: next, name });
                }
                None => break reason,
            }
        };
        let name = match &*route.borrow() {
            Where::Peer { name, .. } => name.clone(),
            _ => String::new(),
        };
        route.send_replace(Where::Resumed {
            from: peer,
            name,
            reason: reason.clone(),
        });
        // Finish here, continuing from what was received.
        let mut generation = match engine.submit(request).await {
            Ok(generation) => generation,
            Err(e) => {
                let _ = updates
                    .send(Update::Failed {
                        kind: ErrorKind::Engine,
                        message: format!(
                            "the GPU peer failed ({reason}) and this machine cannot finish the answer: {e}"
                        ),
                    })
                    .await;
                return;
            }
        };
        loop {
            let update = tokio::select! {
                update = generation.updates.recv() => update,
                () = updates.closed() => return,
            };
            let update = match update {
                Some(Update::Token(piece)) => match rejoin.piece(piece) {
                    piece if piece.is_empty() => continue,
                    piece => Update::Token(piece),
                },
                Some(update) => update,
                None => return,
            };
            if updates.send(update).await.is_err() {
                return;
            }
        }
    }

    /// One attempt on one peer. `text` collects what was received, `tokens` counts its pieces.
    /// One attempt: on `peers[0]`; or, given two (every peer is full), on both at once, the
    /// answer taken from whichever starts first and the other cancelled (its place in that
    /// queue given up). `bounce`: ask the peer to say [`Reply::Busy`] rather than wait for a
    /// slot. Returns which peer it was, and how it went.
    async fn stream_answer(
        &self,
        peers: &[PeerId],
        request: &Request,
        bounce: bool,
        submitted: Instant,
        (text, tokens, rejoin): (&mut String, &mut u32, &mut Rejoin),
        (updates, route): (&mpsc::Sender<Update>, &watch::Sender<Where>),
    ) -> (usize, Attempt) {
        let span = tracing::info_span!(
            "gpu_peer",
            peer = %peers.first().map(ToString::to_string).unwrap_or_default(),
            also = peers.len() > 1,
            bounce,
        );
        let ask = Ask::Generate {
            messages: request.messages.clone(),
            sampling: request.sampling.clone(),
            prefix: request.prefix.clone(),
            voice: request.voice,
            bounce: bounce && peers.len() == 1,
            traceparent: jarvis_telemetry::traceparent(&span),
        };
        let attempt = async {
            let (at, stream, first, unsent) = match peers {
                [peer] => {
                    let (stream, unsent) = self.ask_peer(*peer, &ask).await?;
                    (0, stream, Vec::new(), unsent)
                }
                _ => {
                    let won = self.first_to_start(peers, &ask).await?;
                    // Said before any of the answer is passed on.
                    if let Some(&peer) = peers.get(won.0).filter(|_| won.0 > 0) {
                        let name = self.name_of(peer);
                        route.send_replace(Where::Peer { id: peer, name });
                    }
                    won
                }
            };
            let read = self
                .read_answer(
                    stream,
                    request,
                    ask_bounces(&ask),
                    submitted,
                    &first,
                    (text, tokens, rejoin),
                    updates,
                )
                .await;
            Ok::<_, (usize, String)>((
                at,
                match (read, unsent) {
                    (Err(read), Some(unsent)) => Err(format!("{unsent} ({read})")),
                    (read, _) => read,
                },
            ))
        };
        let attempt = tracing::Instrument::instrument(attempt, span);
        tokio::select! {
            result = attempt => match result {
                Ok((at, Ok(attempt))) => (at, attempt),
                Ok((at, Err(reason))) | Err((at, reason)) => (at, Attempt::Failed(reason)),
            },
            () = updates.closed() => (0, Attempt::Abandoned),
        }
    }

    /// Opens a stream to `peer` and sends `ask`; the stream, and why sending failed if it did:
    /// a peer that answers at once (busy, or a refusal) and closes its side can stop our
    /// sending before the flush sees the request acknowledged, and its reply still counts.
    async fn ask_peer(
        &self,
        peer: PeerId,
        ask: &Ask,
    ) -> Result<(libp2p::Stream, Option<String>), (usize, String)> {
        let mut stream =
            tokio::time::timeout(OPEN_TIMEOUT, self.control().open_stream(peer, protocol()))
                .await
                .map_err(|_| (0, "opening a stream to it timed out".to_owned()))?
                .map_err(|e| (0, e.to_string()))?;
        // A peer that does not read its request is given up on like a silent one.
        let send = async {
            stream.write_all(&core::encode(ask)).await?;
            stream.flush().await
        };
        let sent = tokio::time::timeout(OPEN_TIMEOUT, send)
            .await
            .map_err(|_| (0, "it did not take the request".to_owned()))?;
        Ok((
            stream,
            sent.err().map(|e| format!("sending the request: {e}")),
        ))
    }

    /// Sends `ask` to each of `peers` and waits for the first to say anything (it has taken the
    /// request: a slot freed there); the others' streams are closed, which takes the request
    /// out of their queues. Late binding, as Sparrow's scheduler does it: a request waits in
    /// two queues and runs in whichever moves first, so no peer idles while another has a
    /// queue. Returns the winner's index, its stream, and the bytes read from it.
    async fn first_to_start(
        &self,
        peers: &[PeerId],
        ask: &Ask,
    ) -> Result<(usize, libp2p::Stream, Vec<u8>, Option<String>), (usize, String)> {
        use futures::FutureExt;
        let tries = peers.iter().enumerate().map(|(at, &peer)| {
            async move {
                let (mut stream, unsent) =
                    self.ask_peer(peer, ask).await.map_err(|(_, e)| (at, e))?;
                // It wins once it starts the answer (`Started` or a first piece); a refusal or
                // a failure loses, and the other goes on waiting.
                let mut frames = Frames::new(MAX_EVENT);
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 8192];
                loop {
                    let n = tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf))
                        .await
                        .map_err(|_| {
                            (
                                at,
                                format!("it went silent for {} s", IDLE_TIMEOUT.as_secs()),
                            )
                        })?
                        .map_err(|e| (at, format!("the stream broke: {e}")))?;
                    if n == 0 {
                        let reason = unsent.unwrap_or_else(|| "it closed the stream".to_owned());
                        return Err((at, reason));
                    }
                    let bytes = buf.get(..n).unwrap_or_default();
                    seen.extend_from_slice(bytes);
                    // Load reports are all it may send before starting; a few frames' worth.
                    if seen.len() > 2 * MAX_EVENT {
                        return Err((at, "it sent too much before starting".to_owned()));
                    }
                    frames.push(bytes);
                    while let Some(reply) = frames
                        .next_frame::<Reply>()
                        .map_err(|e| (at, e.to_string()))?
                    {
                        match reply {
                            Reply::Started { .. } | Reply::Token { .. } | Reply::Done { .. } => {
                                return Ok((at, stream, seen, None));
                            }
                            Reply::Load(_) => {}
                            Reply::Failed { message, .. } => return Err((at, message)),
                            Reply::Busy(_) => {
                                return Err((at, "it said it was busy, unasked".to_owned()));
                            }
                        }
                    }
                }
            }
            .boxed()
        });
        futures::future::select_ok(tries)
            .await
            .map(|(won, _others)| won)
    }

    /// Reads the peer's replies into `updates` until the answer ends.
    #[allow(clippy::too_many_arguments)]
    async fn read_answer(
        &self,
        mut stream: libp2p::Stream,
        request: &Request,
        bounce: bool,
        submitted: Instant,
        first: &[u8],
        (text, tokens, rejoin): (&mut String, &mut u32, &mut Rejoin),
        updates: &mpsc::Sender<Update>,
    ) -> Result<Attempt, String> {
        let mut frames = Frames::new(MAX_EVENT);
        frames.push(first);
        let mut buf = [0u8; 8192];
        let mut first_token = None;
        let mut heard = !first.is_empty();
        // Whether anything of this attempt was passed on (a Busy is taken only before).
        let mut said = false;
        loop {
            while let Some(reply) = frames.next_frame::<Reply>().map_err(|e| e.to_string())? {
                let update = match reply {
                    Reply::Started { prompt_tokens } => Update::Started { prompt_tokens },
                    Reply::Token { text: piece } => {
                        first_token.get_or_insert_with(Instant::now);
                        // One piece per token: a peer sending more than was asked for is
                        // broken (or worse), and is not let grow the answer without end.
                        *tokens += 1;
                        if *tokens > request.sampling.max_tokens.saturating_add(8) {
                            return Err("it sent more than the answer's length".into());
                        }
                        // Nor in bytes: a token is a few characters, not the frame's limit.
                        if piece.len() > MAX_TOKEN_BYTES {
                            return Err(format!("it sent a token of {} bytes", piece.len()));
                        }
                        let piece = rejoin.piece(piece);
                        if piece.is_empty() {
                            continue;
                        }
                        let allowed = usize::try_from(request.sampling.max_tokens)
                            .unwrap_or(usize::MAX)
                            .saturating_mul(AVERAGE_TOKEN_BYTES)
                            .saturating_add(4096);
                        if text.len().saturating_add(piece.len()) > allowed {
                            return Err("it sent more text than the answer's length allows".into());
                        }
                        text.push_str(&piece);
                        Update::Token(piece)
                    }
                    Reply::Done {
                        finish_reason,
                        prompt_tokens,
                        completion_tokens,
                        generation_ms,
                        model,
                    } => Update::Done(Summary {
                        finish_reason,
                        prompt_tokens,
                        completion_tokens,
                        ttft: first_token
                            .unwrap_or_else(Instant::now)
                            .saturating_duration_since(submitted),
                        generation: Duration::from_secs_f64(generation_ms.max(0.0) / 1_000.0),
                        model,
                    }),
                    // The engine broke on the peer: go on elsewhere; and a prompt too long for
                    // its context may fit another's (or this machine's) before anything was
                    // said. An invalid request would be refused anywhere: pass it on.
                    Reply::Failed {
                        kind: ErrorKind::Engine,
                        message,
                    } => return Err(message),
                    Reply::Failed {
                        kind: ErrorKind::ContextLengthExceeded,
                        message,
                    } if text.is_empty() => return Err(message),
                    Reply::Failed { kind, message } => Update::Failed { kind, message },
                    Reply::Load(_) => continue,
                    // Only before anything was said, and only if asked.
                    Reply::Busy(load) if bounce && !said && *tokens == 0 => {
                        return Ok(Attempt::Busy(load));
                    }
                    Reply::Busy(_) => return Err("it said it was busy mid-answer".into()),
                };
                let last = matches!(update, Update::Done(_) | Update::Failed { .. });
                said = true;
                if updates.send(update).await.is_err() {
                    return Ok(Attempt::Abandoned);
                }
                if last {
                    return Ok(Attempt::Answered);
                }
            }
            let patience = if first_token.is_some() {
                STALL_TIMEOUT
            } else {
                IDLE_TIMEOUT
            };
            let read = tokio::time::timeout(patience, stream.read(&mut buf)).await;
            let n = read
                .map_err(|_| format!("it went silent for {} s", patience.as_secs()))?
                .map_err(|e| format!("the stream broke: {e}"))?;
            if n == 0 {
                if !heard {
                    return Ok(Attempt::Dropped);
                }
                return Err("it closed the stream before the answer was complete".into());
            }
            heard = true;
            frames.push(buf.get(..n).unwrap_or_default());
        }
    }
}

//! `jarvis gpu up`: this machine as a GPU peer of the org. One model, loaded once and shared by
//! every user (continuous batching in the engine worker, a fair queue per user in the
//! supervisor), served over the mesh on `/jarvis/infer/1` ([`jarvis_inference::offload`]).
//!
//! The same gate as a node's: both sides present their certificate chains (`/jarvis/auth/1`),
//! and a stream is served only to a peer whose chain verified against the org root and the
//! revocations: a device of the org (any user). Each answer is one stream; the peer closing it
//! cancels the answer and frees its slot at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use jarvis_identity::hello::Checked;
use jarvis_identity::{CertKind, RevocationSet, Verified};
use jarvis_inference::metrics::EngineMetrics;
use jarvis_inference::offload::{self as core, Ask, Frames, Load, MAX_REQUEST, Reply};
use jarvis_inference::protocol::ErrorKind;
use jarvis_inference::supervisor::{EngineHandle, EngineState, Generation, Request, Update};
use jarvis_mesh::admission::{self, Admission, Answer, Reason};
use libp2p::request_response::{self, Message};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::home::{Home, HomeKind, KeyFile, Passphrase, now};
use crate::mesh::{GpuBehaviour, GpuBehaviourEvent, Hello};
use crate::output::Output;

/// Streams served at once (answers in flight and queued, and load reports), from
/// authenticated devices: beyond it a new stream is refused with a message rather than left
/// waiting.
const MAX_STREAMS: usize = 256;
/// How often admission's deadlines (a silent peer, a refused one's grace) are looked at.
const TICK: Duration = Duration::from_millis(500);
/// Streams one device may have at once (so one device cannot take every slot).
const MAX_STREAMS_PER_PEER: usize = 16;
/// Streams waiting for their peer's hello to be checked (a device may open its first stream
/// before we have checked its hello); beyond it, refused.
const MAX_PENDING: usize = 64;
/// How long a peer has, after opening a stream, to be authenticated and to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stream answered at once (busy) is kept open for the device to let go of it.
const LINGER: Duration = Duration::from_secs(2);
/// How long one write may wait for a device that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The built-in engine's requests generated at once, unless `--slots` says.
const DEFAULT_SLOTS: u32 = 4;

/// The peers whose chains verified, with what they are.
type Gate = Arc<Mutex<HashMap<PeerId, Verified>>>;

fn gate_lock(gate: &Gate) -> std::sync::MutexGuard<'_, HashMap<PeerId, Verified>> {
    gate.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What `jarvis gpu up` runs with (the CLI's `GpuUpArgs`, without the parsing).
#[derive(Debug, Clone)]
pub struct GpuConfig {
    /// The GGUF model to serve (default: `JARVIS_MODEL` or the catalog's default).
    pub model: Option<std::path::PathBuf>,
    /// Requests generated at once (continuous batching; the built-in engine's default 4; with a
    /// backend, answers sent to it at once).
    pub slots: Option<u32>,
    /// Places kept for spoken turns beyond `slots` (a voice question starts at once while
    /// typed ones queue).
    pub voice_slots: u32,
    /// Addresses to listen on (empty: QUIC and TCP on every interface, port 4011).
    pub listen: Vec<Multiaddr>,
    /// Do not announce this peer with mDNS.
    pub no_mdns: bool,
    /// Tokens of context per slot (built-in engine).
    pub ctx: Option<u32>,
    /// Layers of the model offloaded to the GPU (built-in engine, in a GPU build).
    pub gpu_layers: Option<u32>,
    /// An OpenAI-compatible server to front instead of the built-in engine.
    pub backend: Option<crate::upstream::UpstreamConfig>,
    /// Serve `/metrics` and `/health` here.
    pub metrics: Option<std::net::SocketAddr>,
    /// Label per-user metrics with user names (else pseudonyms of their keys).
    pub metrics_user_names: bool,
}

/// What answers: the built-in llama.cpp engine, or a server the org already runs.
#[derive(Clone)]
enum Backend {
    Engine(EngineHandle),
    Upstream(Arc<crate::upstream::Upstream>),
}

impl Backend {
    fn model_name(&self) -> String {
        match self {
            Self::Engine(engine) => engine.model_name().to_owned(),
            Self::Upstream(upstream) => upstream.model().to_owned(),
        }
    }

    /// What `status` and the up line say about the model and where it runs.
    fn describe(&self) -> serde_json::Value {
        match self {
            Self::Engine(engine) => {
                let mut status = crate::llm::model_status(engine);
                if let Some(fields) = status.as_object_mut() {
                    fields.insert("backend".into(), "llama.cpp".into());
                }
                status
            }
            Self::Upstream(upstream) => json!({
                "name": upstream.model(),
                "state": if upstream.load(upstream.concurrency()).2 { "ready" } else { "unavailable" },
                "backend": "openai",
                "url": upstream.url(),
            }),
        }
    }

    /// (slots, busy, ready).
    fn load(&self) -> (u32, u32, bool) {
        match self {
            // The places kept for spoken turns are not offered to the devices' choice.
            Self::Engine(engine) => match engine.state() {
                EngineState::Ready { slots, .. } => (
                    slots.saturating_sub(engine.voice_slots()).max(1),
                    engine.busy(),
                    true,
                ),
                _ => (0, engine.busy(), false),
            },
            // Where the server does not say how many it runs: as many as are sent to it.
            Self::Upstream(upstream) => upstream.load(upstream.concurrency()),
        }
    }

    /// Answers waiting for a slot: (spoken turns, the rest).
    fn queued(&self) -> (usize, usize) {
        match self {
            Self::Engine(engine) => {
                let metrics = engine.metrics();
                let all = usize::try_from(metrics.queue_depth.get()).unwrap_or(0);
                let voice = usize::try_from(metrics.queue_depth_voice.get()).unwrap_or(0);
                (voice, all.saturating_sub(voice))
            }
            Self::Upstream(upstream) => upstream.queued(),
        }
    }

    /// Whether a request sent now would wait for a slot (a spoken turn's, `voice`, may take
    /// the places kept for spoken turns too).
    fn would_wait(&self, voice: bool) -> bool {
        match self {
            Self::Engine(engine) if voice => match engine.state() {
                EngineState::Ready { slots, .. } => engine.running() >= slots,
                _ => true,
            },
            Self::Engine(_) => {
                let (slots, busy, ready) = self.load();
                !ready || busy >= slots
            }
            Self::Upstream(upstream) => upstream.would_wait(voice),
        }
    }

    async fn submit(&self, request: Request) -> Result<Generation, String> {
        match self {
            Self::Engine(engine) => engine.submit(request).await.map_err(|e| e.to_string()),
            Self::Upstream(upstream) => Ok(upstream.submit(request)),
        }
    }

    async fn shutdown(&self) {
        if let Self::Engine(engine) = self {
            engine.shutdown().await;
        }
    }
}

pub fn run(home: Home, out: Output, args: GpuConfig) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(up(home, out, args))
}

async fn up(home: Home, out: Output, args: GpuConfig) -> Result<()> {
    let state = home.load().with_context(|| {
        format!(
            "{} is not a GPU peer's home: run `jarvis gpu request`, have an admin run `jarvis admin enroll --role gpu`, then `jarvis gpu install BUNDLE`",
            home.dir().display()
        )
    })?;
    if state.kind != HomeKind::Gpu {
        bail!(
            "{} is a {:?} home, not a GPU peer's (use another --home, or `jarvis up` for a device)",
            home.dir().display(),
            state.kind
        );
    }
    let (Some(org), Some(chain)) = (state.org()?, state.chain()?) else {
        bail!(
            "this GPU peer is not enrolled yet: give the request (`jarvis gpu request`) to an admin, then run `jarvis gpu install BUNDLE`"
        );
    };
    let passphrase = Passphrase::get("this GPU peer's keys")?;
    let key = home.unseal_key(KeyFile::Identity, &passphrase)?.signing;
    let mut revocations = home.revocations(&org.root)?;
    let verified = chain
        .verify(&org.root, now(), &revocations)
        .context("this GPU peer's certificate is not valid")?;
    if verified.subject != key.public() {
        bail!("this home's key does not match its certificate; the home is damaged");
    }
    let engine_metrics = EngineMetrics::default();
    let (backend, model_bytes) = match args.backend.clone() {
        Some(config) => {
            let upstream = crate::upstream::Upstream::connect(config).await?;
            tokio::spawn(Arc::clone(&upstream).watch_load());
            let bytes = upstream.model_bytes();
            (Backend::Upstream(upstream), bytes)
        }
        None => {
            let engine = crate::llm::start_gpu_engine(
                engine_metrics.clone(),
                args.model.clone(),
                Some(args.slots.unwrap_or(DEFAULT_SLOTS).min(64)),
                args.voice_slots,
                args.ctx,
                args.gpu_layers,
            );
            let model_bytes = args
                .model
                .as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .map_or_else(crate::llm::model_bytes, |m| m.len());
            (Backend::Engine(engine), model_bytes)
        }
    };
    let keypair = key
        .to_libp2p_keypair()
        .context("deriving the libp2p identity")?;
    let mdns = !args.no_mdns;
    // Every admitted peer (devices and relays): the revocations protocol is served only to
    // them.
    let members = jarvis_mesh::gate::AdmittedPeers::default();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .context("setting up TCP")?
        .with_quic_config(jarvis_mesh::limits::quic_config)
        .with_behaviour(|key| {
            GpuBehaviour::new(key, mdns, &members)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .context("setting up the behaviour")?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(60))
                .with_substream_upgrade_protocol_override(jarvis_mesh::wire::NEGOTIATION)
        })
        .build();
    let listen: Vec<Multiaddr> = if args.listen.is_empty() {
        vec![
            "/ip4/0.0.0.0/udp/4011/quic-v1".parse()?,
            "/ip4/0.0.0.0/tcp/4011".parse()?,
        ]
    } else {
        args.listen.clone()
    };
    for address in &listen {
        swarm.listen_on(address.clone()).with_context(|| {
            format!("cannot listen on {address} (is another GPU peer running? use --listen)")
        })?;
    }
    let peer_id = *swarm.local_peer_id();
    let gate: Gate = Arc::new(Mutex::new(HashMap::new()));
    let mut incoming = swarm
        .behaviour()
        .stream
        .new_control()
        .accept(crate::offload::protocol())
        .context("registering the inference protocol")?;
    let metrics = Arc::new(crate::gpu_metrics::GpuMetrics::new(
        matches!(backend, Backend::Engine(_)).then_some(&engine_metrics),
        args.metrics_user_names,
    ));
    let (reported, busy, ready) = backend.load();
    metrics.set_load(reported, busy, ready, backend.describe());
    {
        let backend = backend.clone();
        metrics.watch_queues(move || backend.queued());
    }
    let metrics_address = match args.metrics {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot serve metrics on {address}"))?;
            let bound = listener.local_addr()?;
            tokio::spawn(crate::gpu_metrics::serve(listener, Arc::clone(&metrics)));
            Some(bound.to_string())
        }
        None => None,
    };
    let server = Server {
        metrics: Arc::clone(&metrics),
        backend: backend.clone(),
        gate: gate.clone(),
        model_bytes,
        streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        pending: Arc::new(Semaphore::new(MAX_PENDING)),
        per_peer: Arc::new(Mutex::new(HashMap::new())),
    };
    // Serving is all a GPU peer does: a model that cannot load ends it, with the reason. A
    // large one still loading after a minute is served once it is ready.
    let model_state = match &backend {
        Backend::Engine(engine) => match engine.wait_ready(Duration::from_secs(60)).await {
            EngineState::Ready { .. } => "ready",
            EngineState::Failed(problem) => {
                engine.shutdown().await;
                bail!("cannot serve {}: {problem}", engine.model_name());
            }
            _ => "loading",
        },
        Backend::Upstream(_) => "ready",
    };
    let backend_line = match &backend {
        Backend::Engine(_) => "built-in llama.cpp".to_owned(),
        Backend::Upstream(upstream) => format!("{} (OpenAI-compatible)", upstream.url()),
    };
    tracing::info!(%peer_id, org = %org.name, name = %verified.name, "GPU peer up");
    let at_once = match &backend {
        Backend::Engine(_) => args.slots.unwrap_or(DEFAULT_SLOTS).min(64),
        Backend::Upstream(upstream) => upstream.concurrency(),
    };
    out.emit(
        &json!({
            "event": "up",
            "peer_id": peer_id.to_string(),
            "org_id": org.root.to_string(),
            "name": verified.name.as_str(),
            "model": backend.describe(),
            "slots": at_once,
            "metrics": metrics_address,
        }),
        || {
            format!(
                "Jarvis GPU peer up.\n  peer:    {peer_id} `{}`\n  org:     {} ({})\n  model:   {} ({model_state}), {} at once\n  backend: {backend_line}\nDevices reach it on the local network (mDNS) or with `jarvis up --peer ADDRESS`; the addresses follow. Press Ctrl-C to stop.",
                verified.name,
                org.name,
                org.root,
                backend.model_name(),
                at_once,
            )
        },
    );
    let mut shutdown = crate::shutdown::Shutdown::install()?;
    // Sealed for the org (the revocations themselves go to admitted peers only).
    let own_hello =
        |revocations: &RevocationSet| Hello::new(chain.clone(), revocations).encode(&org.root);
    // The org's relays (from the bundle): the GPU peer reports its model and load to their
    // directory, where devices on other networks find it.
    let relay_addresses: Vec<Multiaddr> =
        org.relays.iter().filter_map(|a| a.parse().ok()).collect();
    let mut relays: HashSet<PeerId> = HashSet::new();
    let mut listening: Vec<String> = Vec::new();
    // The mesh's admission core; the GPU peer's policy: devices may ask, the org's relays list
    // us, nothing else (other GPU peers, admins) is served.
    let mut admission = Admission::new();
    let mut policy = |_: &PeerId, checked: &Checked| match checked.verified.kind {
        CertKind::Device | CertKind::Relay => Ok(()),
        kind => Err(Reason::NotServed(format!(
            "a {kind} may not ask a GPU peer for answers"
        ))),
    };
    // Streams are taken by a task of their own: libp2p-stream holds one new stream at a time
    // for its taker and drops any other that arrives before it is taken (upstream
    // rust-libp2p#5651), so a burst of devices asking at once must not wait for this loop.
    let acceptor = {
        let server = server.clone();
        tokio::spawn(async move {
            while let Some((peer, stream)) = incoming.next().await {
                server.accept(peer, stream);
            }
        })
    };
    let mut beat = tokio::time::interval(jarvis_mesh::directory::HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.wait() => break,
            _ = tick.tick() => {
                admission.handle_timeout(std::time::Instant::now());
                let (reported, busy, ready) = backend.load();
                metrics.set_load(reported, busy, ready, backend.describe());
            }
            _ = beat.tick() => {
                for address in &relay_addresses {
                    let connected = jarvis_mesh::wire::peer_of(address).is_some_and(|p| swarm.is_connected(&p));
                    if !connected && let Err(e) = swarm.dial(address.clone()) {
                        tracing::debug!(%address, error = %e, "cannot dial the relay");
                    }
                }
                let heartbeat = server.heartbeat(&listening);
                for relay in &relays {
                    swarm.behaviour_mut().directory.send_request(relay, heartbeat.clone());
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    let address = address.with_p2p(peer_id).unwrap_or_else(|a| a);
                    if listening.len() < jarvis_mesh::directory::MAX_ADDRESSES {
                        listening.push(address.to_string());
                    }
                    out.emit(&json!({ "event": "listening", "address": address.to_string() }), || {
                        format!("  listening on {address}")
                    });
                }
                SwarmEvent::ConnectionEstablished { peer_id: peer, .. } => {
                    admission.connected(peer, std::time::Instant::now());
                }
                SwarmEvent::ConnectionClosed { peer_id: peer, num_established: 0, .. } => {
                    admission.closed(&peer);
                    members.set(peer, false);
                    gate_lock(&gate).remove(&peer);
                    relays.remove(&peer);
                }
                SwarmEvent::Behaviour(GpuBehaviourEvent::Directory(request_response::Event::Message {
                    peer,
                    message: Message::Response { response, .. },
                    ..
                })) => {
                    if let Ok(jarvis_mesh::directory::Response::Refused { reason }) =
                        jarvis_mesh::directory::decode(&response)
                    {
                        tracing::warn!(%peer, %reason, "the relay refused our heartbeat");
                    }
                }
                SwarmEvent::Behaviour(GpuBehaviourEvent::Mdns(libp2p::mdns::Event::Discovered(found))) => {
                    // Devices find GPU peers; the GPU peer needs no one, so nothing is dialled.
                    tracing::trace!(found = found.len(), "mDNS");
                }
                SwarmEvent::Behaviour(GpuBehaviourEvent::Auth(request_response::Event::Message { peer, message, .. })) => {
                    let context = admission::Context {
                        root: &org.root,
                        revocations: &mut revocations,
                        unix: now(),
                        policy: &mut policy,
                    };
                    match message {
                        Message::Request { request, channel, .. } => {
                            let answer = admission.on_request(peer, &request, context, std::time::Instant::now());
                            let response = match answer {
                                Answer::Hello => own_hello(&revocations),
                                Answer::Refusal(refusal) => refusal,
                            };
                            if swarm.behaviour_mut().auth.send_response(channel, response).is_err() {
                                admission.answer_failed(&peer);
                            }
                        }
                        Message::Response { response, .. } => admission.on_response(peer, &response, context),
                    }
                }
                SwarmEvent::Behaviour(GpuBehaviourEvent::Auth(request_response::Event::InboundFailure { peer, .. })) => {
                    admission.answer_failed(&peer);
                }
                SwarmEvent::Behaviour(GpuBehaviourEvent::Revocations(request_response::Event::Message { peer, message, .. })) => {
                    let (bytes, channel) = match message {
                        Message::Request { request, channel, .. } => (request, Some(channel)),
                        Message::Response { response, .. } => (response, None),
                    };
                    let context = admission::Context {
                        root: &org.root,
                        revocations: &mut revocations,
                        unix: now(),
                        policy: &mut policy,
                    };
                    if let Err(e) = admission.on_revocations(peer, &bytes, context) {
                        tracing::debug!(%peer, error = %e, "revocations not taken");
                    }
                    if let Some(channel) = channel {
                        let _ = swarm.behaviour_mut().revocations.send_response(channel, revocations.encode());
                    }
                }
                _ => {}
            },
        }
        // What admission decided, carried out.
        while let Some(event) = admission.poll() {
            match event {
                admission::Event::SendHello(peer) => {
                    let hello = own_hello(&revocations);
                    swarm.behaviour_mut().auth.send_request(&peer, hello);
                }
                admission::Event::Admitted { peer, verified, .. } => {
                    members.set(peer, true);
                    swarm.behaviour_mut().revocations.set_open(peer, true);
                    if verified.kind == CertKind::Device {
                        tracing::info!(%peer, user = ?verified.user.as_ref().map(ToString::to_string), "device authenticated");
                        gate_lock(&gate).insert(peer, verified);
                    }
                }
                admission::Event::ExchangeRevocations(peer) => {
                    swarm
                        .behaviour_mut()
                        .revocations
                        .send_request(&peer, revocations.encode());
                }
                // A relay that answered our hello has admitted us: report to it now.
                admission::Event::AcceptedUs(peer) => {
                    let relay = admission
                        .verified(&peer)
                        .filter(|v| v.kind == CertKind::Relay);
                    if let Some(verified) = relay
                        && relays.insert(peer)
                    {
                        tracing::info!(%peer, name = %verified.name, "joined the relay's directory");
                        let heartbeat = server.heartbeat(&listening);
                        swarm
                            .behaviour_mut()
                            .directory
                            .send_request(&peer, heartbeat);
                    }
                }
                admission::Event::Refused { peer, refusal } => {
                    tracing::warn!(%peer, reason = %refusal, "peer refused");
                    members.set(peer, false);
                    swarm.behaviour_mut().revocations.set_open(peer, false);
                    gate_lock(&gate).remove(&peer);
                    relays.remove(&peer);
                }
                admission::Event::Disconnect(peer) => {
                    let _ = swarm.disconnect_peer_id(peer);
                }
                admission::Event::RevocationsLearned { .. } => {
                    if let Err(e) = home.save_revocations(&revocations) {
                        tracing::warn!(error = %e, "cannot save revocations");
                    }
                }
            }
        }
    }
    tracing::info!("GPU peer stopping");
    acceptor.abort();
    backend.shutdown().await;
    out.emit(&json!({ "event": "stopped" }), || {
        "Stopped cleanly.".to_owned()
    });
    Ok(())
}

/// What serving a stream needs.
#[derive(Clone)]
struct Server {
    metrics: Arc<crate::gpu_metrics::GpuMetrics>,
    backend: Backend,
    gate: Gate,
    model_bytes: u64,
    streams: Arc<Semaphore>,
    pending: Arc<Semaphore>,
    /// Streams open per device.
    per_peer: Arc<Mutex<HashMap<PeerId, usize>>>,
}

/// One of a device's streams; dropping it gives the place back.
struct PeerSlot {
    peer: PeerId,
    counts: Arc<Mutex<HashMap<PeerId, usize>>>,
}

impl PeerSlot {
    fn take(counts: &Arc<Mutex<HashMap<PeerId, usize>>>, peer: PeerId) -> Option<Self> {
        let mut all = counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = all.entry(peer).or_insert(0);
        if *n >= MAX_STREAMS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(Self {
            peer,
            counts: Arc::clone(counts),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut all = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = all.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                all.remove(&self.peer);
            }
        }
    }
}

/// Writes one frame, giving up on a device that does not read.
async fn send<W: futures::AsyncWrite + Unpin>(
    writer: &mut W,
    reply: &Reply,
) -> std::io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&core::encode(reply)))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "the device does not read")
        })?
}

impl Server {
    /// Takes a stream: only an authenticated device's, within its share and the total, is
    /// served; a peer whose hello is not checked yet waits (among a bounded few).
    fn accept(&self, peer: PeerId, stream: libp2p::Stream) {
        let Ok(pending) = self.pending.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many streams waiting for authentication; refusing one");
            tokio::spawn(refuse(stream, "this GPU peer is busy; try again"));
            return;
        };
        let server = self.clone();
        tokio::spawn(async move {
            let verified = server.authenticated(peer).await;
            drop(pending);
            let Some(verified) = verified else {
                tracing::warn!(%peer, "stream from a peer that is not an authenticated device");
                let _ = refuse(
                    stream,
                    "not authenticated: this GPU peer serves the org's devices",
                )
                .await;
                return;
            };
            let Some(slot) = PeerSlot::take(&server.per_peer, peer) else {
                let _ = refuse(stream, "too many requests from this device at once").await;
                return;
            };
            let Ok(permit) = server.streams.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many streams; refusing one");
                let _ = refuse(
                    stream,
                    "this GPU peer is serving too many requests; try again",
                )
                .await;
                return;
            };
            if let Err(e) = server.serve(verified, stream).await {
                tracing::debug!(%peer, error = %e, "stream ended");
            }
            drop((permit, slot));
        });
    }

    /// Waits (briefly) for the peer's hello to be checked: a device may open its stream as soon
    /// as it has checked ours, before we have checked its.
    async fn authenticated(&self, peer: PeerId) -> Option<Verified> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            if let Some(v) = gate_lock(&self.gate).get(&peer) {
                return Some(v.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A heartbeat for the relays' directory: where we listen, the model, the load.
    fn heartbeat(&self, listening: &[String]) -> Vec<u8> {
        let load = self.load();
        jarvis_mesh::directory::encode(&jarvis_mesh::directory::Request::Heartbeat {
            addresses: listening.to_vec(),
            gpu: Some(jarvis_mesh::directory::GpuLoad {
                model: load
                    .model
                    .chars()
                    .take(jarvis_mesh::directory::MAX_MODEL_LEN)
                    .collect(),
                model_bytes: load.model_bytes,
                slots: load.slots,
                busy: load.busy,
                ready: load.ready,
            }),
        })
    }

    fn load(&self) -> Load {
        let (slots, busy, ready) = self.backend.load();
        Load {
            model: self.backend.model_name(),
            model_bytes: self.model_bytes,
            slots,
            busy,
            ready,
            backend: match self.backend {
                Backend::Engine(_) => "llama.cpp".to_owned(),
                Backend::Upstream(_) => "openai".to_owned(),
            },
            accelerator: match &self.backend {
                Backend::Engine(engine) => engine.devices().into_iter().next().unwrap_or_default(),
                Backend::Upstream(_) => String::new(),
            },
        }
    }

    async fn serve(&self, verified: Verified, stream: libp2p::Stream) -> std::io::Result<()> {
        let (mut reader, mut writer) = stream.split();
        let mut frames = Frames::new(MAX_REQUEST);
        let mut buf = vec![0u8; 64 * 1024];
        let ask = tokio::time::timeout(REQUEST_TIMEOUT, async {
            loop {
                match frames.next_frame::<Ask>() {
                    Ok(Some(ask)) => return Ok(ask),
                    Ok(None) => {}
                    // Bytes that are not a request: the device's request is wrong, not us.
                    Err(e) => return Err((ErrorKind::InvalidRequest, e.to_string())),
                }
                let n = reader
                    .read(&mut buf)
                    .await
                    .map_err(|e| (ErrorKind::Engine, e.to_string()))?;
                if n == 0 {
                    return Err((
                        ErrorKind::Engine,
                        "the stream closed before a request".to_owned(),
                    ));
                }
                frames.push(buf.get(..n).unwrap_or_default());
            }
        })
        .await
        .unwrap_or_else(|_| Err((ErrorKind::Engine, "no request in time".to_owned())));
        let (messages, sampling, prefix, voice, bounce, traceparent) = match ask {
            Ok(Ask::Load) => {
                send(&mut writer, &Reply::Load(self.load())).await?;
                return writer.close().await;
            }
            Ok(Ask::Generate {
                messages,
                sampling,
                prefix,
                voice,
                bounce,
                traceparent,
            }) => (messages, sampling, prefix, voice, bounce, traceparent),
            Err((kind, message)) => {
                send(&mut writer, &Reply::Failed { kind, message }).await?;
                return writer.close().await;
            }
        };
        // Asked not to wait, and it would: the device tries another peer.
        if bounce && self.backend.would_wait(voice) {
            self.metrics.bounced();
            send(&mut writer, &Reply::Busy(self.load())).await?;
            writer.close().await?;
            // Until the device has read it and let go: stopping our reading side at once can
            // fail the device's sending of the request it is still flushing.
            let _ = tokio::time::timeout(LINGER, reader.read(&mut buf)).await;
            return Ok(());
        }
        // Fair between users: the supervisor's queue takes turns between clients, a spoken
        // turn's ahead of typed ones (a few per user at most).
        let client = client_name(&verified);
        // This answer's span here, in the device's trace where it sent one; what it sent is
        // passed on to the backend only if it is a valid trace context.
        let span = tracing::info_span!("serve", model = %self.backend.model_name(), voice);
        let traceparent =
            traceparent.filter(|t| jarvis_telemetry::adopt(&span, t) || jarvis_telemetry::valid(t));
        let request = Request {
            client,
            messages,
            sampling,
            prefix,
            voice,
            traceparent,
        };
        let submitted = tracing::Instrument::instrument(self.backend.submit(request), span.clone());
        let mut generation = match submitted.await {
            Ok(g) => g,
            Err(message) => {
                self.metrics
                    .answered("refused", (&client_name(&verified), &client_key(&verified)));
                let reply = Reply::Failed {
                    kind: ErrorKind::Engine,
                    message,
                };
                send(&mut writer, &reply).await?;
                return writer.close().await;
            }
        };
        let user = (client_name(&verified), client_key(&verified));
        let asked = std::time::Instant::now();
        let mut first = true;
        let mut closed = [0u8; 1];
        loop {
            // Whichever comes first: the next piece of the answer, or the device closing the
            // stream (the answer is then cancelled: `generation` is dropped on return).
            let update = tokio::select! {
                update = generation.updates.recv() => update,
                _ = reader.read(&mut closed) => {
                    self.metrics.answered("cancelled", (&user.0, &user.1));
                    return Ok(());
                }
            };
            let reply = match update {
                None => Reply::Failed {
                    kind: ErrorKind::Engine,
                    message: "the engine stopped".into(),
                },
                Some(Update::Started { prompt_tokens }) => Reply::Started { prompt_tokens },
                Some(Update::Token(text)) => {
                    if std::mem::take(&mut first) {
                        self.metrics.first_token(asked.elapsed().as_secs_f64());
                    }
                    Reply::Token { text }
                }
                Some(Update::Done(s)) => {
                    self.metrics.speed(s.tokens_per_second());
                    let outcome = match s.finish_reason {
                        jarvis_inference::protocol::FinishReason::Length => "length",
                        _ => "done",
                    };
                    self.metrics.answered(outcome, (&user.0, &user.1));
                    Reply::Done {
                        finish_reason: s.finish_reason,
                        prompt_tokens: s.prompt_tokens,
                        completion_tokens: s.completion_tokens,
                        generation_ms: s.generation.as_secs_f64() * 1_000.0,
                        model: s.model,
                    }
                }
                Some(Update::Failed { kind, message }) => Reply::Failed { kind, message },
            };
            if matches!(reply, Reply::Failed { .. }) {
                self.metrics.answered("failed", (&user.0, &user.1));
            }
            let last = matches!(reply, Reply::Done { .. } | Reply::Failed { .. });
            send(&mut writer, &reply).await?;
            if last {
                return writer.close().await;
            }
        }
    }
}

fn client_name(verified: &Verified) -> String {
    verified
        .user
        .as_ref()
        .map_or_else(|| verified.name.to_string(), ToString::to_string)
}

fn client_key(verified: &Verified) -> String {
    verified
        .user_key
        .map_or_else(|| verified.subject.to_string(), |k| k.to_string())
}

/// Says why a stream is not served. As an engine failure: the device then asks elsewhere.
async fn refuse(mut stream: libp2p::Stream, message: &str) -> std::io::Result<()> {
    let reply = Reply::Failed {
        kind: ErrorKind::Engine,
        message: message.to_owned(),
    };
    send(&mut stream, &reply).await?;
    stream.close().await
}

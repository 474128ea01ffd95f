//! The node daemon: one task that owns the libp2p swarm, the replica (sled store) and the sync
//! sessions, driven by one closed set of events.
//!
//! ```text
//!   swarm events ─┐
//!   API commands ─┼─▶ Node::run (select, biased: shutdown first) ─▶ swarm requests
//!   resync tick  ─┤                                              ─▶ replica (durable writes)
//!   shutdown     ─┘                                              ─▶ command replies (oneshot)
//! ```
//!
//! Everything the node holds is behind this one task, so there are no locks; the local API talks
//! to it through a bounded channel with a oneshot reply per command.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use jarvis_crdt::store::sled::SledStore;
use jarvis_crdt::{DocId, Replica, Session, SyncMessage};
use jarvis_identity::{
    CertChain, CertKind, Name, OrgInfo, PublicKey, RevocationSet, SecretKey, Verified,
};
use jarvis_mesh::admission::{self, Admission, Answer, Refusal};
use jarvis_mesh::relays::RelayPool;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, Message};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::conversations;
use crate::home::{Home, now};
use crate::mesh::{Behaviour, BehaviourEvent, Hello};

/// How often sessions are polled for their resync timers.
const TICK: Duration = Duration::from_millis(500);
/// Redial backoff for `--peer` addresses: doubling from 1 s to 30 s.
const REDIAL_MIN: Duration = Duration::from_secs(1);
const REDIAL_MAX: Duration = Duration::from_secs(30);
/// Commands queued from the API before callers wait.
pub const COMMAND_QUEUE: usize = 64;
/// Events buffered per API subscriber; a slower subscriber skips ahead (it is told how many it
/// missed) rather than holding the node back.
pub const EVENT_QUEUE: usize = 256;

/// What the node needs to know about itself.
pub struct NodeIdentity {
    pub org: OrgInfo,
    pub chain: CertChain,
    pub device_key: SecretKey,
    pub age: jarvis_identity::age::x25519::Identity,
    pub user: Name,
    /// The user's key: a peer is this user's device when its chain names this key (a name
    /// alone proves nothing: a second invite for the same name makes another user).
    pub user_key: PublicKey,
}

/// How the node answers: its local engine, and the GPU peers through `offload`, whose
/// streams ride the swarm's `stream` behaviour.
pub struct Answering {
    pub engine: jarvis_inference::supervisor::EngineHandle,
    pub offload: crate::offload::Offload,
    pub stream: libp2p_stream::Behaviour,
}

pub struct NodeConfig {
    pub listen: Vec<Multiaddr>,
    pub peers: Vec<Multiaddr>,
    pub mdns: bool,
}

/// Requests from the local API.
pub enum Command {
    Status(oneshot::Sender<Value>),
    Conversations(oneshot::Sender<Value>),
    Show(DocId, oneshot::Sender<Result<Value, String>>),
    /// Adds the user's message, and (with `answer`) an empty assistant message to stream into.
    Ask {
        text: String,
        conversation: Option<DocId>,
        answer: bool,
        reply: oneshot::Sender<Result<AskStarted, String>>,
    },
    /// The conversation as the model would see it with `text` added, adding nothing (for a
    /// speculative answer, saved only once confirmed).
    Preview {
        text: String,
        conversation: Option<DocId>,
        reply: oneshot::Sender<Result<Vec<jarvis_inference::protocol::ChatMessage>, String>>,
    },
    /// More text of an answer.
    AnswerChunk {
        doc: DocId,
        id: String,
        text: String,
    },
    /// An answer ended.
    AnswerDone {
        doc: DocId,
        id: String,
        status: jarvis_crdt::Status,
        model: Option<String>,
        /// The GPU peer that made it, if one did.
        served_by: Option<String>,
        timings_ms: BTreeMap<String, u64>,
    },
    /// A command recorded a sibling in `devices.json`: read it again and share every document
    /// key with the new ones (`{shared_with, documents}`), sent once the key records are durable.
    ReloadDevices(ValueReply),
}

/// What `Ask` did: the reply so far, and where the answer goes.
pub struct AskStarted {
    /// `conversation_id` and `message_id` of the question.
    pub reply: Value,
    pub doc: DocId,
    /// The assistant message to stream into (none when no answer was asked for).
    pub answer_id: Option<String>,
    /// The conversation as the model sees it.
    pub history: Vec<jarvis_inference::protocol::ChatMessage>,
}

/// Everything that can wake the node.
enum Event {
    Swarm(Box<SwarmEvent<BehaviourEvent>>),
    Command(Command),
    Tick,
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Path {
    Direct,
    HolePunched,
    Relayed,
}

struct Peer {
    path: Path,
    address: Option<Multiaddr>,
    /// Why the peer (a relay) last refused what we sent on this connection: rate limit, full
    /// quota. Kept until the peer reconnects (an empty acknowledgement may be for a message that
    /// was never at risk, such as an announcement).
    last_refusal: Option<String>,
    session: Option<Session>,
}

struct Redial {
    address: Multiaddr,
    next: Instant,
    backoff: Duration,
    /// A relay (one of the org's, or one a circuit address goes through), not a `--peer`.
    relay: bool,
    /// Its index among the org's relays (from the bundle), which are used one at a time
    /// ([`RelayPool`]).
    org: Option<usize>,
    /// Why the last dial failed, or why the peer refused us, until it admits us (`status`:
    /// `dialing`).
    error: Option<DialProblem>,
}

/// Why an address this node keeps dialling is not in use.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DialProblem {
    /// The dial failed.
    Unreachable(String),
    /// The peer there refused this device, and said why.
    RefusedUs(String),
    /// The peer there was reached, and is not a member this device accepts.
    NotAccepted(String),
}

impl DialProblem {
    fn of(refusal: &Refusal) -> Self {
        match refusal {
            Refusal::ByPeer(reason) => Self::RefusedUs(reason.clone()),
            other => Self::NotAccepted(other.to_string()),
        }
    }

    /// What `status` says (`dialing[].problem`), for the CLI and the UI to branch on.
    fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::RefusedUs(_) => "refused-us",
            Self::NotAccepted(_) => "not-accepted",
        }
    }

    fn reason(&self) -> &str {
        match self {
            Self::Unreachable(r) | Self::RefusedUs(r) | Self::NotAccepted(r) => r,
        }
    }
}

impl std::fmt::Display for DialProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(reason) => f.write_str(reason),
            Self::RefusedUs(reason) => write!(f, "the peer refused us: {reason}"),
            Self::NotAccepted(reason) => write!(f, "reached, but not accepted here: {reason}"),
        }
    }
}

impl Node {
    /// The peer id of the org relay in use.
    fn current_relay(&self) -> Option<PeerId> {
        let index = self.relay_pool.current()?;
        self.redials
            .iter()
            .find(|r| r.org == Some(index))
            .and_then(Redial::peer)
    }

    /// Moves on from the org relay in use when it has been down too long.
    fn check_relay(&mut self, now: Instant) {
        let up = self.current_relay().is_some_and(|peer| {
            self.swarm.is_connected(&peer) && self.admission.accepted_us(&peer)
        });
        let next = self.relay_pool.tick(now, up);
        self.use_relay(next, "it did not answer");
    }

    /// Dials the org relay `next` at once (when the pool moved to it).
    fn use_relay(&mut self, next: Option<usize>, why: &str) {
        let Some(index) = next else {
            return;
        };
        if let Some(redial) = self.redials.iter_mut().find(|r| r.org == Some(index)) {
            tracing::info!(relay = %redial.address, "moving to the next relay of the org: {why}");
            redial.next = Instant::now();
        }
    }
}

impl Redial {
    /// The peer the address reaches: its last `/p2p/` (in a relayed address
    /// `…/p2p/RELAY/p2p-circuit/p2p/PEER` the first one is the relay).
    fn peer(&self) -> Option<PeerId> {
        jarvis_mesh::wire::peer_of(&self.address)
    }
}

/// A circuit address to listen on (`…/p2p/RELAY/p2p-circuit`): a reservation on that relay,
/// so peers elsewhere can reach this node through it. The relay serves reservations only to
/// peers that passed its gate, so the reservation is asked for once the relay has authenticated
/// us (and we it), and asked for again whenever the relay ends it.
struct CircuitListen {
    address: Multiaddr,
    relay: PeerId,
    listener: Option<libp2p::core::transport::ListenerId>,
    next: Instant,
    backoff: Duration,
}

/// The relay a circuit address goes through, and the address of the relay itself (what comes
/// before `/p2p-circuit`), if `address` is one.
fn circuit_relay(address: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut relay = Multiaddr::empty();
    let mut id = None;
    for p in address.iter() {
        match p {
            Protocol::P2pCircuit => return id.map(|id| (id, relay)),
            Protocol::P2p(peer) => {
                id = Some(peer);
                relay.push(p);
            }
            _ => relay.push(p),
        }
    }
    None
}

/// This device and its siblings: the keys whose changes, key records and snapshots it takes.
fn writers(me: PublicKey, devices: &crate::siblings::Siblings) -> Vec<PublicKey> {
    std::iter::once(me).chain(devices.keys().copied()).collect()
}

/// A dial error short enough for `status` and the UI (libp2p's lists every address tried).
fn short_error(error: &impl std::fmt::Display) -> String {
    let text = error.to_string();
    match text.char_indices().nth(240) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or_default()),
        None => text,
    }
}

pub struct Node {
    swarm: Swarm<Behaviour>,
    identity: NodeIdentity,
    home: Home,
    replica: Replica<SledStore>,
    revocations: RevocationSet,
    /// Who each connected peer is, and whether it is let in: the mesh's one admission core.
    admission: Admission,
    /// The admitted peers, as the gates in front of `sync` and `directory` see them.
    admitted_peers: jarvis_mesh::gate::AdmittedPeers,
    /// What this node keeps per connected peer beyond admission: the path, the sync session.
    peers: HashMap<PeerId, Peer>,
    /// The user's other devices, recorded or met: every document key is wrapped to them
    /// (`devices.json`, [`crate::siblings`]).
    devices: crate::siblings::Siblings,
    redials: Vec<Redial>,
    /// Which of the org's relays is in use: one at a time, the next when it fails.
    relay_pool: RelayPool,
    /// The org's relays the pool indexes: the bundle's, then those learned (`relays.json`).
    org_relays: Vec<Multiaddr>,
    learned_relays: crate::learned_relays::LearnedRelays,
    circuits: Vec<CircuitListen>,
    api_addr: String,
    /// Addresses actually listened on, with this node's peer id: what others dial.
    listening: Vec<Multiaddr>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    events: tokio::sync::broadcast::Sender<Value>,
    /// The user's devices synced with (for `jarvis devices`), written out on the tick when it
    /// changed rather than on every message.
    seen: BTreeMap<String, crate::siblings::SeenDevice>,
    seen_dirty: bool,
    /// The local inference engine (for `status`).
    engine: jarvis_inference::supervisor::EngineHandle,
    /// The GPU peers answers can go to (told who connects).
    offload: crate::offload::Offload,
    /// The group commit in progress, while commands are handled.
    group: Option<Group>,
    /// When heartbeats last went to the relays.
    last_heartbeat: Option<Instant>,
    /// Each relay's latest directory: this user's other devices and the org's GPU peers online.
    directory: HashMap<PeerId, jarvis_mesh::directory::Directory>,
    /// GPU peers from a directory dialled lately (not dialled again for [`GPU_REDIAL`]).
    gpu_dials: HashMap<PeerId, Instant>,
    /// Changes per conversation since this node last snapshotted it.
    since_snapshot: HashMap<DocId, u32>,
}

/// A conversation is compacted into a snapshot after this many changes (an answer streams in
/// as a change every 200 ms, so a long conversation makes thousands).
const SNAPSHOT_EVERY: u32 = 512;

/// How long before a GPU peer listed by a relay, dialled and not connected, is dialled again.
const GPU_REDIAL: Duration = Duration::from_secs(30);

/// Commands handled together, made durable by one flush.
const GROUP_MAX: usize = 64;

/// Where the answer to an `Ask` command goes.
type AskReply = oneshot::Sender<Result<AskStarted, String>>;
type ValueReply = oneshot::Sender<Result<Value, String>>;

/// What waits for a group commit's flush.
#[derive(Default)]
struct Group {
    replies: Vec<(AskReply, Result<AskStarted, String>)>,
    /// Other replies that wait for the flush.
    values: Vec<(ValueReply, Result<Value, String>)>,
    unsent: Vec<(PeerId, Vec<SyncMessage>)>,
}

/// Relayed if either end of the connection is a circuit address (a dialer sees it in the remote
/// address, a listener in its local one).
fn path_of(endpoint: &libp2p::core::ConnectedPoint) -> Path {
    let circuit = |a: &Multiaddr| a.iter().any(|p| matches!(p, Protocol::P2pCircuit));
    let relayed = match endpoint {
        libp2p::core::ConnectedPoint::Dialer { address, .. } => circuit(address),
        libp2p::core::ConnectedPoint::Listener {
            local_addr,
            send_back_addr,
        } => circuit(local_addr) || circuit(send_back_addr),
    };
    if relayed { Path::Relayed } else { Path::Direct }
}

fn ms(t: jarvis_identity::UnixTime) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX).saturating_mul(1000)
}

impl Node {
    pub fn new(
        home: Home,
        identity: NodeIdentity,
        config: &NodeConfig,
        api_addr: String,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
        events: tokio::sync::broadcast::Sender<Value>,
        answering: Answering,
    ) -> Result<Self> {
        let Answering {
            engine,
            offload,
            stream,
        } = answering;
        let keypair = identity
            .device_key
            .to_libp2p_keypair()
            .context("deriving the libp2p identity")?;
        let mdns = config.mdns;
        let admitted_peers = jarvis_mesh::gate::AdmittedPeers::default();
        let gates = admitted_peers.clone();
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default().nodelay(true),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .context("setting up TCP")?
            .with_quic_config(|c| {
                let mut c = jarvis_mesh::limits::quic_config(c);
                // A relay (or peer) that died without a word is noticed within 4 s, so the
                // device moves to the next relay of the fleet well within 10 s (the idle
                // timeout of a connection is the smaller of both ends').
                c.max_idle_timeout = 4_000;
                c.keep_alive_interval = Duration::from_millis(1_500);
                c
            })
            .with_relay_client(libp2p::noise::Config::new, libp2p::yamux::Config::default)
            .context("setting up the relay client")?
            .with_behaviour(|key, relay| {
                Behaviour::new(key, relay, mdns, stream, &gates)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            })
            .context("setting up the behaviour")?
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(Duration::from_secs(60))
                    .with_substream_upgrade_protocol_override(jarvis_mesh::wire::NEGOTIATION)
            })
            .build();
        let mut circuits = Vec::new();
        let mut circuit_relays = Vec::new();
        for address in &config.listen {
            if let Some((relay, relay_address)) = circuit_relay(address) {
                circuits.push(CircuitListen {
                    address: address.clone(),
                    relay,
                    listener: None,
                    next: Instant::now(),
                    backoff: REDIAL_MIN,
                });
                circuit_relays.push(relay_address);
                continue;
            }
            swarm
                .listen_on(address.clone())
                .with_context(|| format!("cannot listen on {address}"))?;
        }
        let store_dir = home.dir().join("store");
        let store = SledStore::open(&store_dir).with_context(|| {
            format!(
                "opening the store at {} (is another node running on this home?)",
                store_dir.display()
            )
        })?;
        let mut replica =
            Replica::open_device(store, identity.device_key_clone(), identity.age.clone())
                .context("loading conversations from the store")?;
        let revocations = home.revocations(&identity.org.root)?;
        let mut devices = crate::siblings::load(&home)?;
        devices.retain(|k, _| !revocations.is_key_revoked(k));
        // Only this user's devices write: what anyone else signs (a relay's own key record, a
        // stranger's change) is dropped before it is stored.
        replica.set_writers(writers(identity.device_key.public(), &devices));
        let seen = match home.read_optional(crate::siblings::SEEN_FILE)? {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            None => BTreeMap::new(),
        };
        // The org's relays (from the bundle or invite this device joined with) are dialled
        // like --peer addresses.
        let mut relays: Vec<Multiaddr> = identity
            .org
            .relays
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        // And the instances of the fleet learned since from the directory, checked again.
        let mut learned_relays = crate::learned_relays::LearnedRelays::load(&home);
        for (peer, address) in learned_relays.usable(&identity.org.root, now(), &revocations) {
            if !relays
                .iter()
                .any(|r| jarvis_mesh::wire::peer_of(r) == Some(peer))
            {
                relays.push(address);
            }
        }
        learned_relays.save(&home);
        // The relays of circuit addresses (listened on or dialled) are dialled themselves, so
        // that they admit us before we ask them for a reservation or a circuit.
        for relay in config
            .peers
            .iter()
            .filter_map(|a| circuit_relay(a).map(|r| r.1))
        {
            if !circuit_relays.contains(&relay) {
                circuit_relays.push(relay);
            }
        }
        circuit_relays.retain(|a| !relays.contains(a));
        let redials = config
            .peers
            .iter()
            .map(|a| (a, false, None))
            .chain(relays.iter().enumerate().map(|(i, a)| (a, true, Some(i))))
            .chain(circuit_relays.iter().map(|a| (a, true, None)))
            .map(|(address, relay, org)| Redial {
                address: address.clone(),
                next: Instant::now(),
                backoff: REDIAL_MIN,
                relay,
                org,
                error: None,
            })
            .collect();
        // Each device prefers its own relay of the fleet, so the org's devices spread over them.
        let relay_pool = RelayPool::new(swarm.local_peer_id(), &relays, Instant::now());
        Ok(Self {
            org_relays: relays,
            learned_relays,
            swarm,
            identity,
            home,
            replica,
            revocations,
            admission: Admission::new(),
            admitted_peers,
            peers: HashMap::new(),
            devices,
            redials,
            relay_pool,
            circuits,
            api_addr,
            listening: Vec::new(),
            metrics,
            events,
            seen,
            seen_dirty: false,
            engine,
            offload,
            group: None,
            last_heartbeat: None,
            directory: HashMap::new(),
            gpu_dials: HashMap::new(),
            since_snapshot: HashMap::new(),
        })
    }

    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Runs until `shutdown` fires. Every acknowledged change was stored durably before it was
    /// acknowledged, so stopping at any point loses none.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: &mut crate::shutdown::Shutdown,
    ) -> Result<()> {
        self.refresh_documents_gauge();
        // Siblings recorded while this node was stopped get the keys of what was written before.
        self.share_pending();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                biased;
                () = shutdown.wait() => Event::Shutdown,
                Some(command) = commands.recv() => Event::Command(command),
                event = self.swarm.select_next_some() => Event::Swarm(Box::new(event)),
                _ = tick.tick() => Event::Tick,
            };
            match event {
                Event::Shutdown => break,
                Event::Command(command) => {
                    // Group commit: the commands already waiting are handled together and
                    // their writes made durable with one flush; replies and sync messages
                    // go out after it.
                    self.group = Some(Group::default());
                    self.replica.begin_batch();
                    self.on_command(command);
                    for _ in 1..GROUP_MAX {
                        match commands.try_recv() {
                            Ok(command) => self.on_command(command),
                            Err(_) => break,
                        }
                    }
                    self.commit();
                }
                Event::Swarm(event) => self.on_swarm(*event),
                Event::Tick => {
                    self.metrics.peers_connected.set(
                        i64::try_from(self.swarm.connected_peers().count()).unwrap_or(i64::MAX),
                    );
                    self.on_tick();
                }
            }
        }
        tracing::info!("node stopping");
        Ok(())
    }

    /// Ends a group commit: flushes, then sends what waited for it.
    fn commit(&mut self) {
        let flushed = self.replica.end_batch();
        let Some(group) = self.group.take() else {
            return;
        };
        match flushed {
            Ok(()) => {
                for (reply, result) in group.replies {
                    let _ = reply.send(result);
                }
                for (reply, value) in group.values {
                    let _ = reply.send(value);
                }
                for (peer, messages) in group.unsent {
                    self.send_sync(peer, Ok(messages));
                }
            }
            Err(e) => {
                // Not durable, so not acknowledged; sessions resend what peers lack on resync.
                tracing::error!(error = %e, "cannot make local changes durable");
                for (reply, _) in group.replies {
                    let _ = reply.send(Err(format!("the change was not saved: {e}")));
                }
                for (reply, _) in group.values {
                    let _ = reply.send(Err(format!("the keys were not saved: {e}")));
                }
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        // The silent (no hello within the deadline) and the refused whose grace is over go.
        self.admission.handle_timeout(now);
        self.drive_admission();
        if self.seen_dirty {
            self.seen_dirty = false;
            if let Ok(bytes) = serde_json::to_vec_pretty(&self.seen)
                && let Err(e) = self
                    .home
                    .write_atomic(crate::siblings::SEEN_FILE, &bytes, false)
            {
                tracing::warn!(error = %e, "cannot save peers.json");
            }
        }
        let admission = &self.admission;
        // A peer reached through a relay is dialled once the relay has admitted us: it opens
        // circuits only for peers that passed its gate.
        let relay_ready = |address: &Multiaddr| {
            circuit_relay(address).is_none_or(|(relay, _)| admission.accepted_us(&relay))
        };
        let pool = &self.relay_pool;
        for redial in &mut self.redials {
            // The org's relays in reserve are not dialled while the one in use serves.
            let standby = redial.org.is_some_and(|i| pool.is_standby(i));
            if standby || redial.next > now || !relay_ready(&redial.address) {
                continue;
            }
            let already = redial.peer().is_some_and(|id| self.swarm.is_connected(&id));
            if !already {
                if let Err(e) = self.swarm.dial(redial.address.clone()) {
                    tracing::debug!(address = %redial.address, error = %e, "dial failed");
                    redial.error = Some(DialProblem::Unreachable(short_error(&e)));
                }
                redial.next = now + redial.backoff;
                redial.backoff = (redial.backoff * 2).min(REDIAL_MAX);
            } else {
                redial.backoff = REDIAL_MIN;
            }
        }
        self.check_relay(now);
        self.reserve_circuits(now);
        if self
            .last_heartbeat
            .is_none_or(|t| now.duration_since(t) >= jarvis_mesh::directory::HEARTBEAT)
        {
            self.heartbeat(now);
        }
        let now_ms = u64::try_from(ms(now_unix())).unwrap_or(0);
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            let out = match self.peers.get_mut(&peer).and_then(|p| p.session.as_mut()) {
                Some(session) => session.poll(now_ms, &self.replica),
                None => continue,
            };
            self.send_sync(peer, out);
        }
    }

    /// Tells each relay that admitted us that this device is online and where it listens; each
    /// answers with its directory.
    fn heartbeat(&mut self, now: Instant) {
        let relays: Vec<PeerId> = self
            .admission
            .admitted()
            .filter(|(id, v)| v.kind == CertKind::Relay && self.admission.accepted_us(id))
            .map(|(id, _)| *id)
            .collect();
        if relays.is_empty() {
            return;
        }
        self.last_heartbeat = Some(now);
        let beat = jarvis_mesh::directory::encode(&jarvis_mesh::directory::Request::Heartbeat {
            addresses: self
                .listening
                .iter()
                .take(jarvis_mesh::directory::MAX_ADDRESSES)
                .map(ToString::to_string)
                .filter(|a| a.len() <= jarvis_mesh::directory::MAX_ADDRESS_LEN)
                .collect(),
            gpu: None,
        });
        for relay in relays {
            self.swarm
                .behaviour_mut()
                .directory
                .send_request(&relay, beat.clone());
        }
    }

    /// A relay's directory: kept for `status`; the GPU peers in it that we are not connected to
    /// are dialled (at the addresses they reported), so a device finds them across networks.
    fn on_directory(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        use jarvis_mesh::directory::{Response, decode};
        let (relay, bytes) = match event {
            request_response::Event::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            } => (peer, response),
            // Nobody asks a device for its directory.
            request_response::Event::Message {
                peer,
                message: Message::Request { .. },
                ..
            } => {
                tracing::debug!(%peer, "directory request to a device; ignored");
                return;
            }
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "heartbeat failed");
                return;
            }
            _ => return,
        };
        let directory = match decode::<Response>(&bytes) {
            Ok(Response::Directory(d)) => d,
            Ok(Response::Refused { reason }) => {
                tracing::warn!(%relay, %reason, "the relay refused our heartbeat");
                return;
            }
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(%relay, error = %e, "an unreadable directory");
                return;
            }
        };
        self.learn_siblings(&directory.devices);
        self.learn_relays(&directory.relays);
        let now = Instant::now();
        for gpu in &directory.gpus {
            let Ok(peer) = gpu.peer_id.parse::<PeerId>() else {
                continue;
            };
            if peer == self.peer_id()
                || self.swarm.is_connected(&peer)
                || self
                    .gpu_dials
                    .get(&peer)
                    .is_some_and(|t| now.duration_since(*t) < GPU_REDIAL)
            {
                continue;
            }
            let addresses: Vec<Multiaddr> = gpu
                .addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect();
            if addresses.is_empty() {
                continue;
            }
            tracing::info!(%peer, name = %gpu.name, "dialling a GPU peer the relay lists");
            self.gpu_dials.insert(peer, now);
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addresses)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, error = %e, "cannot dial the GPU peer");
            }
        }
        self.gpu_dials
            .retain(|_, t| now.duration_since(*t) < GPU_REDIAL);
        self.directory.insert(relay, directory);
    }

    /// This user's other devices, as a relay lists them with their certificate chains: each
    /// chain is checked here (the org root, the revocations, the same user *key*, a device with
    /// an encryption key), so a relay can leave a device out but cannot make one up. A device
    /// new to this one is met: it may write here, and every conversation key is shared with it,
    /// though the two never connected.
    fn learn_siblings(&mut self, entries: &[jarvis_mesh::directory::Entry]) {
        let me = self.identity.device_key.public();
        for entry in entries {
            let Some(hex_chain) = &entry.chain else {
                continue;
            };
            let Some(chain) = hex::decode(hex_chain)
                .ok()
                .and_then(|bytes| jarvis_identity::CertChain::decode(&bytes).ok())
            else {
                tracing::debug!(name = %entry.name, "an unreadable chain in the directory");
                continue;
            };
            let Some(leaf) = chain.leaf() else {
                continue;
            };
            let key = leaf.subject();
            if key == me || self.devices.get(&key).is_some_and(|d| d.keys_shared) {
                continue;
            }
            let verified = match chain.verify(&self.identity.org.root, now(), &self.revocations) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(name = %entry.name, error = %e, "a device the relay lists does not check out");
                    continue;
                }
            };
            let Some(recipient) = leaf.age_recipient().filter(|r| !r.is_empty()) else {
                continue;
            };
            if verified.kind == CertKind::Device
                && verified.user_key == Some(self.identity.user_key)
            {
                tracing::info!(name = %verified.name, "met a device of this user through the relay's directory");
                self.meet_device(key, recipient.to_owned(), verified.name.as_str());
            }
        }
    }

    /// The org's relay instances a directory lists: those new to this device (checked by
    /// [`crate::learned_relays`]) join the pool in reserve, or in use if this device prefers
    /// one of them, and are kept for the next start.
    fn learn_relays(&mut self, listed: &[jarvis_mesh::directory::Entry]) {
        if listed.is_empty() {
            return;
        }
        let known: std::collections::HashSet<PeerId> = self
            .org_relays
            .iter()
            .filter_map(jarvis_mesh::wire::peer_of)
            .collect();
        let new = self.learned_relays.learn(
            listed,
            |p| known.contains(p),
            &self.identity.org.root,
            now(),
            &self.revocations,
        );
        self.learned_relays.save(&self.home);
        if new.is_empty() {
            return;
        }
        let added_from = self.org_relays.len();
        for (peer, address) in new {
            tracing::info!(%peer, %address, "learned a relay of the org from the directory");
            self.redials.push(Redial {
                address: address.clone(),
                next: Instant::now(),
                backoff: REDIAL_MIN,
                relay: true,
                org: Some(self.org_relays.len()),
                error: None,
            });
            self.org_relays.push(address);
        }
        let me = self.peer_id();
        let moved = self
            .relay_pool
            .reorder(&me, &self.org_relays, added_from, Instant::now());
        self.use_relay(moved, "this device prefers a new instance of the fleet");
    }

    /// Asks for the circuit reservations not held, on relays that have authenticated us.
    fn reserve_circuits(&mut self, now: Instant) {
        for circuit in &mut self.circuits {
            let admitted = self.admission.accepted_us(&circuit.relay)
                && self
                    .admission
                    .verified(&circuit.relay)
                    .is_some_and(|v| v.kind == CertKind::Relay);
            if circuit.listener.is_some() || !admitted || circuit.next > now {
                continue;
            }
            match self.swarm.listen_on(circuit.address.clone()) {
                Ok(id) => {
                    tracing::info!(address = %circuit.address, "asking the relay for a reservation");
                    circuit.listener = Some(id);
                }
                Err(e) => {
                    tracing::warn!(address = %circuit.address, error = %e, "cannot listen through the relay");
                }
            }
            circuit.next = now + circuit.backoff;
            circuit.backoff = (circuit.backoff * 2).min(REDIAL_MAX);
        }
    }

    fn send_sync(
        &mut self,
        peer: PeerId,
        out: Result<Vec<SyncMessage>, jarvis_crdt::sync::SyncError>,
    ) {
        match out {
            // Nothing written in a group commit leaves before it is durable.
            Ok(messages) if self.group.is_some() => {
                if let Some(group) = &mut self.group {
                    group.unsent.push((peer, messages));
                }
            }
            Ok(messages) => {
                for m in messages {
                    self.metrics.sync_messages_sent.inc();
                    self.swarm
                        .behaviour_mut()
                        .sync
                        .send_request(&peer, m.encode());
                }
            }
            Err(e) => tracing::warn!(%peer, error = %e, "sync session failed"),
        }
    }

    /// Our hello, sealed for the org (the revocations themselves go only to admitted peers, on
    /// their own protocol).
    fn hello(&self) -> Vec<u8> {
        Hello::new(self.identity.chain.clone(), &self.revocations).encode(&self.identity.org.root)
    }

    fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                let me = self.peer_id();
                self.listening
                    .push(address.with_p2p(me).unwrap_or_else(|a| a));
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some(circuit) = self
                    .circuits
                    .iter_mut()
                    .find(|c| c.listener == Some(listener_id))
                {
                    // Refused (not admitted yet, or the relay is full) or ended with the
                    // connection: asked for again on a later tick, with backoff.
                    tracing::info!(address = %circuit.address, ?reason, "relay reservation ended");
                    circuit.listener = None;
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listening
                    .retain(|a| !a.to_string().starts_with(&address.to_string()));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let address = endpoint.get_remote_address().clone();
                let path = path_of(&endpoint);
                let peer = self.peers.entry(peer_id).or_insert(Peer {
                    path,
                    address: Some(address.clone()),
                    last_refusal: None,
                    session: None,
                });
                // A direct connection next to a relayed one (a hole punch, or a dial that found
                // a route): traffic now goes the direct way, and `status` shows where.
                if peer.path == Path::Relayed && path == Path::Direct {
                    peer.path = Path::Direct;
                    peer.address = Some(address);
                }
                self.admission.connected(peer_id, Instant::now());
                self.drive_admission();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                if self.current_relay() == Some(peer_id) {
                    let next = self.relay_pool.lost(Instant::now());
                    self.use_relay(next, "its connection closed");
                }
                self.peers.remove(&peer_id);
                self.admission.closed(&peer_id);
                self.admitted_peers.set(peer_id, false);
                self.offload.left(&peer_id);
                self.directory.remove(&peer_id);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer_id),
                error,
                ..
            } => {
                for redial in &mut self.redials {
                    if redial.peer() == Some(peer_id) && !self.swarm.is_connected(&peer_id) {
                        redial.error = Some(DialProblem::Unreachable(short_error(&error)));
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Auth(event)) => self.on_auth(event),
            SwarmEvent::Behaviour(BehaviourEvent::Revocations(event)) => {
                self.on_revocations(event);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => self.on_sync(event),
            SwarmEvent::Behaviour(BehaviourEvent::Directory(event)) => self.on_directory(event),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(libp2p::mdns::Event::Discovered(found))) => {
                for (peer, address) in found {
                    if !self.swarm.is_connected(&peer) {
                        let _ = self
                            .swarm
                            .dial(address.with_p2p(peer).unwrap_or_else(|a| a));
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(event)) => match event.result {
                Ok(_) => {
                    tracing::info!(peer = %event.remote_peer_id, "hole punched: direct connection");
                    if let Some(peer) = self.peers.get_mut(&event.remote_peer_id) {
                        peer.path = Path::HolePunched;
                    }
                }
                // The relayed connection keeps working; a NAT that maps each destination to a
                // new port (symmetric) cannot be punched.
                Err(e) => {
                    tracing::info!(peer = %event.remote_peer_id, error = %e, "hole punch failed; staying relayed");
                }
            },
            _ => {}
        }
    }

    /// A peer's hello (a request, answered on `channel`) or its answer to ours, through the
    /// mesh's admission core. Every member of the org may in; what each is served is decided
    /// per protocol (sync only with this user's devices and the org's relays).
    fn on_hello(
        &mut self,
        peer: PeerId,
        bytes: &[u8],
        channel: Option<request_response::ResponseChannel<Vec<u8>>>,
    ) {
        let context = admission::Context {
            root: &self.identity.org.root,
            revocations: &mut self.revocations,
            unix: now(),
            policy: &mut admission::any_member,
        };
        match channel {
            Some(channel) => {
                // Answered with our hello only when the peer proved membership.
                let answer = self
                    .admission
                    .on_request(peer, bytes, context, Instant::now());
                let response = match answer {
                    Answer::Hello => self.hello(),
                    Answer::Refusal(refusal) => refusal,
                };
                let sent = self
                    .swarm
                    .behaviour_mut()
                    .auth
                    .send_response(channel, response)
                    .is_ok();
                if !sent {
                    self.admission.answer_failed(&peer);
                }
            }
            None => self.admission.on_response(peer, bytes, context),
        }
        self.drive_admission();
    }

    /// Carries out what the admission core decided.
    fn drive_admission(&mut self) {
        while let Some(event) = self.admission.poll() {
            match event {
                admission::Event::SendHello(peer) => {
                    let hello = self.hello();
                    self.swarm.behaviour_mut().auth.send_request(&peer, hello);
                }
                admission::Event::Admitted {
                    peer,
                    verified,
                    age_recipient,
                    ..
                } => {
                    self.open_gates(peer, true);
                    self.admitted(peer, &verified, age_recipient);
                }
                admission::Event::AcceptedUs(peer) => {
                    let relay = self
                        .admission
                        .verified(&peer)
                        .is_some_and(|v| v.kind == CertKind::Relay);
                    if relay {
                        // Admitted by a relay: reserve circuits and join its directory now.
                        self.reserve_circuits(Instant::now());
                        self.heartbeat(Instant::now());
                    }
                }
                admission::Event::Refused { peer, refusal } => {
                    self.open_gates(peer, false);
                    self.refused(peer, &refusal);
                }
                admission::Event::Disconnect(peer) => {
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
                admission::Event::ExchangeRevocations(peer) => {
                    let set = self.revocations.encode();
                    self.swarm
                        .behaviour_mut()
                        .revocations
                        .send_request(&peer, set);
                }
                admission::Event::RevocationsLearned { from, added } => {
                    tracing::info!(peer = %from, added, "learned revocations");
                    if let Err(e) = self.home.save_revocations(&self.revocations) {
                        tracing::warn!(error = %e, "cannot save revocations");
                    }
                    self.rotate_after_revocation();
                }
            }
        }
    }

    /// Opens (admitted) or closes (refused) the gates in front of the protocols only members
    /// are served: until then a peer's sync and directory requests are not even read.
    fn open_gates(&mut self, peer: PeerId, open: bool) {
        self.admitted_peers.set(peer, open);
        let behaviour = self.swarm.behaviour_mut();
        behaviour.sync.set_open(peer, open);
        behaviour.directory.set_open(peer, open);
        behaviour.revocations.set_open(peer, open);
    }

    /// A peer let in: this user's devices (and the org's relays, which hold this user's sealed
    /// changes for the devices that are away) start syncing; a GPU peer may take questions.
    fn admitted(&mut self, peer: PeerId, verified: &Verified, age_recipient: Option<String>) {
        let same_user_device =
            verified.kind == CertKind::Device && verified.user_key == Some(self.identity.user_key);
        if same_user_device && let Some(recipient) = age_recipient {
            self.meet_device(verified.subject, recipient, verified.name.as_str());
        }
        let syncs = same_user_device || verified.kind == CertKind::Relay;
        tracing::info!(%peer, kind = %verified.kind, name = %verified.name, same_user_device, "peer authenticated");
        for redial in &mut self.redials {
            if redial.peer() == Some(peer) {
                redial.error = None;
            }
        }
        self.metrics.peers_authenticated.inc();
        let _ = self.events.send(json!({
            "type": "peer",
            "peer_id": peer.to_string(),
            "state": "authenticated",
            "name": verified.name.as_str(),
            "own_device": same_user_device,
        }));
        if verified.kind == CertKind::Gpu {
            self.offload.joined(peer, verified.name.to_string());
        }
        if syncs && let Some(state) = self.peers.get_mut(&peer) {
            let mut session = Session::new();
            let now_ms = u64::try_from(ms(now_unix())).unwrap_or(0);
            let out = session.start(now_ms, &self.replica);
            state.session = Some(session);
            self.send_sync(peer, out);
        }
    }

    /// A peer refused, by us or by it (revoked while connected, too): nothing more is served to
    /// it or asked of it, and its user hears why.
    fn refused(&mut self, peer: PeerId, refusal: &Refusal) {
        tracing::warn!(%peer, reason = %refusal, "peer refused");
        self.metrics.peers_refused.inc();
        let _ = self.events.send(json!({
            "type": "peer",
            "peer_id": peer.to_string(),
            "state": "refused",
            "reason": refusal.to_string(),
        }));
        if let Some(state) = self.peers.get_mut(&peer) {
            state.session = None;
        }
        self.offload.left(&peer);
        // Kept past the disconnect for the addresses we keep dialling (a relay that refuses
        // this device is a problem its user must hear of).
        for redial in &mut self.redials {
            if redial.peer() == Some(peer) {
                redial.error = Some(DialProblem::of(refusal));
            }
        }
    }

    fn on_auth(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                Message::Request {
                    request, channel, ..
                } => self.on_hello(peer, &request, Some(channel)),
                Message::Response { response, .. } => self.on_hello(peer, &response, None),
            },
            // Our refusal could not be sent: the refused peer has nothing to wait for.
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "auth answer failed");
                self.admission.answer_failed(&peer);
                self.drive_admission();
            }
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "auth request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// A revocation set from an admitted peer (its request, answered with ours, or its answer to
    /// ours), merged through the admission core.
    fn on_revocations(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        let context = admission::Context {
            root: &self.identity.org.root,
            revocations: &mut self.revocations,
            unix: now(),
            policy: &mut admission::any_member,
        };
        jarvis_mesh::exchange::on_revocations_event(
            event,
            &mut self.swarm.behaviour_mut().revocations,
            &mut self.admission,
            context,
        );
        self.drive_admission();
    }

    /// A device of this user was revoked: forget it, and start a new key epoch for every document,
    /// wrapped only to the devices that remain, so it cannot read anything written from now on.
    fn rotate_after_revocation(&mut self) {
        let revoked: Vec<PublicKey> = self
            .devices
            .keys()
            .filter(|k| self.revocations.is_key_revoked(k))
            .copied()
            .collect();
        let user_revoked = self.revocations.is_user_revoked(&self.identity.user);
        if revoked.is_empty() || user_revoked {
            return;
        }
        for key in &revoked {
            self.devices.remove(key);
            self.update_writers();
            // A revoked peer that is still connected loses its session at once.
            if let Ok(peer) = key.to_libp2p_peer_id() {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
        }
        self.save_devices();
        let recipients = self.recipients();
        for doc in self.replica.docs().unwrap_or_default() {
            match self.replica.rotate(doc, &recipients) {
                Ok(record) => self.fan_out_key(&record),
                Err(e) => tracing::debug!(%doc, error = %e, "cannot rotate"),
            }
        }
        tracing::info!(
            devices = revoked.len(),
            "rotated document keys after a revocation"
        );
    }

    /// Writes `devices.json`: this node's view merged over the file's, so a sibling that a
    /// command recorded meanwhile is kept (and picked up by [`Node::reload_devices`]).
    fn save_devices(&mut self) {
        let on_disk = crate::siblings::load(&self.home).unwrap_or_default();
        let revocations = &self.revocations;
        crate::siblings::merge_into(&mut self.devices, on_disk, |k| {
            revocations.is_key_revoked(k)
        });
        self.update_writers();
        if let Err(e) = crate::siblings::save(&self.home, &self.devices) {
            tracing::warn!(error = %e, "cannot save devices.json");
        }
    }

    /// A device of this user: remember its encryption key, and give it every document key.
    fn meet_device(&mut self, key: PublicKey, recipient: String, name: &str) {
        if key == self.identity.device_key.public()
            || self
                .devices
                .get(&key)
                .is_some_and(|d| d.recipient == recipient && d.keys_shared)
        {
            return;
        }
        self.devices.insert(
            key,
            crate::siblings::Sibling {
                recipient,
                name: name.to_owned(),
                keys_shared: false,
            },
        );
        self.share_pending();
    }

    /// Reads `devices.json` again (a command recorded a sibling: `jarvis devices approve`,
    /// `pair`, `join`) and shares every document key with the siblings new to this node.
    fn reload_devices(&mut self) -> Result<Value, String> {
        let on_disk = crate::siblings::load(&self.home).map_err(|e| format!("{e:#}"))?;
        let revocations = &self.revocations;
        crate::siblings::merge_into(&mut self.devices, on_disk, |k| {
            revocations.is_key_revoked(k)
        });
        let (shared_with, documents) = self.share_pending();
        Ok(json!({ "shared_with": shared_with, "documents": documents }))
    }

    /// Wraps every key of every document again, to every sibling, if any sibling has not been
    /// given them yet (recorded while this node was stopped, by a command, or met just now);
    /// the new key records go to every connected peer (the org's relays keep them for the
    /// siblings that are away). Returns who was new and how many documents were shared.
    fn share_pending(&mut self) -> (Vec<String>, usize) {
        let me = self.identity.device_key.public();
        self.devices.remove(&me);
        self.update_writers();
        let pending: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| !d.keys_shared)
            .map(|(k, _)| k.to_string())
            .collect();
        if pending.is_empty() {
            return (pending, 0);
        }
        let recipients = self.recipients();
        let mut documents = 0;
        let mut failed = false;
        for doc in self.replica.docs().unwrap_or_default() {
            match self.replica.share_keys(doc, &recipients) {
                Ok(records) => {
                    documents += 1;
                    for record in &records {
                        self.fan_out_key(record);
                    }
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(%doc, error = %e, "cannot share a document's keys with a new device");
                }
            }
        }
        if !failed {
            for d in self.devices.values_mut() {
                d.keys_shared = true;
            }
        }
        tracing::info!(
            devices = pending.len(),
            documents,
            "shared document keys with new devices"
        );
        self.save_devices();
        (pending, documents)
    }

    /// Who may write to this device's conversations: itself and its siblings, as they are now.
    fn update_writers(&mut self) {
        let writers = writers(self.identity.device_key.public(), &self.devices);
        self.replica.set_writers(writers);
    }

    fn recipients(&self) -> Vec<jarvis_identity::age::x25519::Recipient> {
        let mut out = vec![self.identity.age.to_public()];
        out.extend(
            self.devices
                .values()
                .filter_map(|d| d.recipient.parse().ok()),
        );
        out
    }

    fn fan_out_key(&mut self, record: &jarvis_crdt::KeyRecord) {
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            if let Some(session) = self.peers.get_mut(&peer).and_then(|p| p.session.as_mut()) {
                let out = session.on_new_key(record);
                self.send_sync(peer, Ok(out));
            }
        }
    }

    /// Counts changes per conversation; one that has grown by [`SNAPSHOT_EVERY`] changes since
    /// its last snapshot here is compacted into a new snapshot, offered to the org's relays,
    /// which drop the history it covers (their storage stays bounded; a device that lacks the
    /// history gets the snapshot).
    fn maybe_snapshot(&mut self, changes: &[jarvis_crdt::SealedChange]) {
        let mut due = Vec::new();
        for change in changes {
            let doc = change.header().doc;
            let n = self.since_snapshot.entry(doc).or_default();
            *n += 1;
            if *n >= SNAPSHOT_EVERY {
                *n = 0;
                due.push(doc);
            }
        }
        for doc in due {
            let snapshot = match self.replica.snapshot(doc) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%doc, error = %e, "cannot snapshot");
                    continue;
                }
            };
            tracing::info!(%doc, bytes = snapshot.len(), "conversation compacted into a snapshot");
            let relays: Vec<PeerId> = self
                .admission
                .admitted()
                .filter(|(_, v)| v.kind == CertKind::Relay)
                .map(|(id, _)| *id)
                .collect();
            for relay in relays {
                if let Some(session) = self.peers.get_mut(&relay).and_then(|p| p.session.as_mut()) {
                    let out = session.on_new_snapshot(&snapshot);
                    self.send_sync(relay, Ok(out));
                }
            }
        }
    }

    fn fan_out(&mut self, except: Option<PeerId>, changes: &[jarvis_crdt::SealedChange]) {
        self.maybe_snapshot(changes);
        let peers: Vec<PeerId> = self
            .peers
            .keys()
            .copied()
            .filter(|p| Some(*p) != except)
            .collect();
        for peer in peers {
            let mut out = Vec::new();
            if let Some(session) = self.peers.get_mut(&peer).and_then(|p| p.session.as_mut()) {
                for change in changes {
                    match session.on_new_change(change, &self.replica) {
                        Ok(m) => out.extend(m),
                        Err(e) => tracing::warn!(%peer, error = %e, "push failed"),
                    }
                }
            }
            self.send_sync(peer, Ok(out));
        }
    }

    fn on_sync(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        let request_response::Event::Message { peer, message, .. } = event else {
            return;
        };
        let (request, channel) = match message {
            Message::Request {
                request, channel, ..
            } => (request, channel),
            // The peer's acknowledgement: empty once stored; a relay says why when it is not
            // (rate limit, full quota). The session sends it again on its next resync.
            Message::Response { response, .. } => {
                if !response.is_empty() {
                    let reason = String::from_utf8_lossy(&response).into_owned();
                    tracing::warn!(%peer, %reason, "changes not taken");
                    if let Some(state) = self.peers.get_mut(&peer) {
                        state.last_refusal = Some(reason);
                    }
                }
                return;
            }
        };
        // The gate: only an authenticated device of this user (or an org relay) is served. A peer whose hello we
        // have not finished checking is not answered yet (its resync timer will ask again); one
        // that is known and not allowed is disconnected.
        let verified = self.admission.verified(&peer);
        let name = verified.map(|v| v.name.to_string());
        // `peers.json` is for `jarvis devices`: the user's devices, not the org's relays.
        let own_device = verified.is_some_and(|v| v.kind == CertKind::Device);
        let known = verified.is_some() || self.admission.refusal(&peer).is_some();
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(session) = state.session.as_mut() else {
            if known {
                tracing::warn!(%peer, "sync request from a peer that is not a device of this user");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            let _ = self
                .swarm
                .behaviour_mut()
                .sync
                .send_response(channel, Vec::new());
            return;
        };
        let message = match SyncMessage::decode(&request) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "malformed sync message");
                return;
            }
        };
        let now_ms = u64::try_from(ms(now_unix())).unwrap_or(0);
        self.metrics.sync_messages_received.inc();
        if own_device {
            let seen = self.seen.entry(peer_key_string(&peer)).or_default();
            if let Some(name) = name {
                seen.name = name;
            }
            seen.last_sync = Some(now_unix().0);
            self.seen_dirty = true;
        }
        // One group commit for everything the message carries (up to a batch of changes).
        self.replica.begin_batch();
        let result = session.handle(message, now_ms, &mut self.replica);
        if let Err(e) = self.replica.end_batch() {
            // Nothing is acknowledged: the peer sends it again after the next resync.
            tracing::error!(%peer, error = %e, "cannot make received changes durable");
            return;
        }
        // Stored durably (or refused) before the transport acknowledgement goes back.
        let _ = self
            .swarm
            .behaviour_mut()
            .sync
            .send_response(channel, Vec::new());
        match result {
            Ok(out) => {
                for doc in &out.received.changed {
                    self.announce_conversation(*doc);
                }
                let stored = out.received.stored.clone();
                self.metrics.changes_stored.inc_by(stored.len() as u64);
                if !stored.is_empty() {
                    self.refresh_documents_gauge();
                }
                self.send_sync(peer, Ok(out.send));
                // Keys first, so the other peers can open the changes as they come.
                for record in &out.received.keys {
                    self.fan_out_key(record);
                }
                self.fan_out(Some(peer), &stored);
            }
            Err(e) => tracing::warn!(%peer, error = %e, "sync message refused"),
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::ReloadDevices(reply) => {
                let value = self.reload_devices();
                match &mut self.group {
                    Some(group) => group.values.push((reply, value)),
                    None => {
                        let _ = reply.send(value);
                    }
                }
            }
            Command::Conversations(reply) => {
                let _ = reply.send(self.conversations());
            }
            Command::Show(doc, reply) => {
                let _ = reply.send(self.show(doc));
            }
            Command::Preview {
                text,
                conversation,
                reply,
            } => {
                let doc = match conversation {
                    Some(id) => match self.replica.doc(id) {
                        Some(doc) => Some(doc),
                        None => {
                            let _ = reply.send(Err(format!("no conversation {id}")));
                            return;
                        }
                    },
                    None => None,
                };
                let _ = reply.send(Ok(conversations::history_with(doc, Some(&text))));
            }
            Command::Ask {
                text,
                conversation,
                answer,
                reply,
            } => {
                let result = self
                    .ask(&text, conversation, answer)
                    .map_err(|e| format!("{e:#}"));
                match &mut self.group {
                    Some(group) => group.replies.push((reply, result)),
                    None => {
                        let _ = reply.send(result);
                    }
                }
            }
            Command::AnswerChunk { doc, id, text } => {
                match conversations::stream_answer(&mut self.replica, doc, &id, &text) {
                    Ok(change) => self.fan_out(None, &[change]),
                    Err(e) => tracing::warn!(%doc, error = %e, "cannot store streamed text"),
                }
                self.announce_conversation(doc);
            }
            Command::AnswerDone {
                doc,
                id,
                status,
                model,
                served_by,
                timings_ms,
            } => {
                match conversations::finish_answer(
                    &mut self.replica,
                    doc,
                    &id,
                    status,
                    model.as_deref(),
                    served_by.as_deref(),
                    &timings_ms,
                ) {
                    Ok(change) => self.fan_out(None, &[change]),
                    Err(e) => tracing::warn!(%doc, error = %e, "cannot store the end of an answer"),
                }
                self.announce_conversation(doc);
            }
        }
    }

    fn status(&self) -> Value {
        let peers: Vec<Value> = self
            .peers
            .iter()
            .map(|(id, p)| {
                let verified = self.admission.verified(id);
                let role = verified.map(|v| match v.kind {
                    CertKind::Device if v.user_key == Some(self.identity.user_key) => "own-device",
                    CertKind::Device => "device",
                    CertKind::Relay => "relay",
                    CertKind::Gpu => "gpu",
                    CertKind::Admin => "admin",
                    CertKind::User | CertKind::Invite => "user",
                });
                json!({
                    "peer_id": id.to_string(),
                    "role": role,
                    "name": verified.map(|v| v.name.to_string()),
                    "user": verified.and_then(|v| v.user.as_ref().map(ToString::to_string)),
                    "path": p.path,
                    "address": p.address.as_ref().map(ToString::to_string),
                    "authenticated": verified.is_some(),
                    "refused": self.admission.refusal(id).map(ToString::to_string),
                    "last_refusal": p.last_refusal,
                    "syncing": p.session.is_some(),
                })
            })
            .collect();
        let listen: Vec<String> = self.listening.iter().map(ToString::to_string).collect();
        // The addresses this node keeps dialling (`--peer`, the org's relays), and why each
        // cannot be reached, if it cannot.
        let dialing: Vec<Value> = self
            .redials
            .iter()
            .map(|r| {
                json!({
                    "address": r.address.to_string(),
                    "kind": if r.relay { "relay" } else { "peer" },
                    // One of the org's relays kept in reserve: dialled when the one in use fails.
                    "standby": r.org.is_some_and(|i| self.relay_pool.is_standby(i)),
                    "connected": r.peer().is_some_and(|id| self.swarm.is_connected(&id)),
                    // The whole sentence, and its parts to branch on: `problem` is
                    // `unreachable`, `refused-us` or `not-accepted`.
                    "error": r.error.as_ref().map(ToString::to_string),
                    "problem": r.error.as_ref().map(DialProblem::kind),
                    "reason": r.error.as_ref().map(DialProblem::reason),
                })
            })
            .collect();
        json!({
            "dialing": dialing,
            "device_id": self.peer_id().to_string(),
            "org_id": self.identity.org.root.to_string(),
            "user": self.identity.user.as_str(),
            "peers": peers,
            "listen": listen,
            "api": self.api_addr,
            "documents": self.replica.docs().map(|d| d.len()).unwrap_or(0),
            "revocations": self.revocations.len(),
            // What this device could not read and set aside instead of failing (changes that
            // do not open with their epoch's key, documents whose store did not load).
            // And what it dropped: signed by a key that is not one of this user's devices, or a
            // key record for an epoch it cannot take yet.
            "quarantined": self.replica.quarantine().map_or_else(
                || json!({ "changes": 0, "documents": [], "unknown_writers": 0, "epoch_gaps": 0 }),
                |q| json!({
                    "changes": q.changes.len(),
                    "documents": q.docs.iter().map(|(doc, why)| json!({ "id": doc.to_string(), "error": why })).collect::<Vec<_>>(),
                    "unknown_writers": q.unknown_writers,
                    "epoch_gaps": q.epoch_gaps,
                }),
            ),
            "models": [crate::llm::model_status(&self.engine)],
            "offload": self.offload.status(),
            "directory": self.directory_status(),
        })
    }

    /// What the relays list: this user's other devices online and the org's GPU peers (each
    /// once, however many relays list it).
    fn directory_status(&self) -> Value {
        let mut devices = BTreeMap::new();
        let mut gpus = BTreeMap::new();
        for directory in self.directory.values() {
            for d in &directory.devices {
                devices.entry(d.peer_id.clone()).or_insert_with(
                    || json!({ "peer_id": d.peer_id, "name": d.name, "addresses": d.addresses }),
                );
            }
            for g in &directory.gpus {
                gpus.entry(g.peer_id.clone()).or_insert_with(|| {
                    json!({
                        "peer_id": g.peer_id,
                        "name": g.name,
                        "addresses": g.addresses,
                        "model": g.gpu.as_ref().map(|l| l.model.clone()),
                        "slots": g.gpu.as_ref().map(|l| l.slots),
                        "busy": g.gpu.as_ref().map(|l| l.busy),
                    })
                });
            }
        }
        json!({
            "devices": devices.into_values().collect::<Vec<_>>(),
            "gpus": gpus.into_values().collect::<Vec<_>>(),
        })
    }

    fn conversation_summary(&self, id: DocId) -> Option<Value> {
        conversations::summary(&self.replica, id)
    }

    /// Counting documents scans the store, so the gauge is refreshed when a document may have
    /// been added (a local conversation, or changes stored from a peer), not on the timer.
    fn refresh_documents_gauge(&self) {
        let count = self.replica.docs().map(|d| d.len()).unwrap_or(0);
        self.metrics
            .documents
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Tells API subscribers that a conversation changed. Nobody listening is fine.
    fn announce_conversation(&self, id: DocId) {
        if let Some(summary) = self.conversation_summary(id) {
            let mut event = summary;
            if let Some(fields) = event.as_object_mut() {
                fields.insert("type".into(), json!("conversation"));
            }
            let _ = self.events.send(event);
        }
    }

    fn conversations(&self) -> Value {
        conversations::list(&self.replica)
    }

    fn show(&self, id: DocId) -> Result<Value, String> {
        conversations::show(&self.replica, id)
    }

    /// Adds the user's message to a conversation (a new one if none is given) and, with
    /// `answer`, an empty assistant message for the answer to stream into; syncs both.
    fn ask(&mut self, text: &str, conversation: Option<DocId>, answer: bool) -> Result<AskStarted> {
        let recipients = self.recipients();
        let mut added =
            conversations::add_user_message(&mut self.replica, &recipients, text, conversation)?;
        // Only an answer needs the history (read before its empty message is added).
        let history = if answer {
            self.replica
                .doc(added.doc)
                .map(conversations::history)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let answer_id = if answer {
            let (id, change) = conversations::start_answer(&mut self.replica, added.doc)?;
            added.changes.push(change);
            Some(id)
        } else {
            None
        };
        if let Some(key) = &added.key {
            self.fan_out_key(key);
        }
        self.fan_out(None, &added.changes);
        if added.key.is_some() {
            self.refresh_documents_gauge();
        }
        self.announce_conversation(added.doc);
        Ok(AskStarted {
            reply: added.reply,
            doc: added.doc,
            answer_id,
            history,
        })
    }
}

/// A peer's id as `jarvis devices` and `whoami` write it (the same text as its `PeerId`).
fn peer_key_string(peer: &PeerId) -> String {
    peer.to_string()
}

fn now_unix() -> jarvis_identity::UnixTime {
    now()
}

impl NodeIdentity {
    fn device_key_clone(&self) -> SecretKey {
        SecretKey::from_seed(&self.device_key.seed())
    }
}

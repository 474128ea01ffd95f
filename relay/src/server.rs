//! The relay server: the libp2p shell around [`crate::hub`].
//!
//! One task owns the swarm, the hub (over one sled database, a namespace per user) and the
//! revocation set, driven by one closed set of events, as the node is:
//!
//! ```text
//!   swarm events ─┐
//!   tick (500 ms) ┼─▶ Relay::run (select, biased: shutdown first) ─▶ swarm requests
//!   shutdown     ─┘                                               ─▶ hub (durable writes)
//! ```
//!
//! Admission is the mesh's one core ([`jarvis_mesh::admission`]); the relay's policy adds the
//! invite check (a device whose invite another user claimed first is refused), and what it does
//! on admission: devices get their user's store, every member the gated identify, ping and
//! circuit relay. The relay answers every hello with its own, which carries the revocations it
//! holds, so each peer gets the org's revocations on admission; revocations learned from a
//! hello are pushed to every other member at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use jarvis_crdt::store::sled::{Db, SledStore};

use crate::store::{RelayStore, StoreChoice};
use jarvis_home::Home;
use jarvis_identity::hello::{Checked, Hello};
use jarvis_identity::{CertChain, CertKind, OrgInfo, RevocationSet, SecretKey, Verified};
use jarvis_mesh::admission::{self, Admission, Answer, Reason};
use jarvis_mesh::boxed::Boxed;
use jarvis_mesh::directory::{
    self, DIRECTORY_PROTOCOL, MAX_DIRECTORY_BYTES, MembersReport, Request, Response,
};
use jarvis_mesh::gate::Gated;
use jarvis_mesh::wire::{self, MAX_SYNC_BYTES, SYNC_PROTOCOL};
use libp2p::request_response::{self, Message};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, ping, relay};

use crate::hub::{Hub, Limits};
use crate::listing::Listing;
use crate::roster::{ClaimCheck, Roster};

/// Streams a peer may have open at once on one QUIC connection: above what a device's sync
/// window, directory and hello use together.
const MAX_STREAMS_PER_CONNECTION: u32 = 32;
/// Swarm events handled in a row, at most, while sync messages wait.
const MAX_EVENTS_BEFORE_ROUND: usize = 32;
/// Connections that may wait to prove who they are at once, from all addresses together.
const MAX_UNPROVEN: usize = 512;
/// Connections to PostgreSQL one instance keeps open at most (the loop writes through one at
/// a time; the rest serve `/health` and reads during a batch).
const PG_CONNECTIONS: usize = 4;
/// The store's page cache.
const STORE_CACHE_BYTES: u64 = 64 * 1024 * 1024;

const TICK: Duration = Duration::from_millis(500);
/// In a fleet, the directory is shared through the database every this many ticks (2 s).
const DIRECTORY_SHARE_TICKS: u32 = 4;

/// What a share of the directory gives back: whether this instance's rows were written, and
/// the other instances' rows (record, milliseconds since heard).
type SharedDirectory = (
    Result<(), jarvis_crdt::store::StoreError>,
    Result<Vec<(Vec<u8>, u64)>, jarvis_crdt::store::StoreError>,
);

/// Who the relay is: its org, its certificate chain (relay role) and its key.
pub struct RelayIdentity {
    pub org: OrgInfo,
    pub chain: CertChain,
    pub key: SecretKey,
}

pub struct Config {
    pub listen: Vec<Multiaddr>,
    /// Where members reach this instance (`--external`), listed in the directory so devices
    /// learn the fleet's instances; when empty, the addresses it listens on (loopback last).
    pub external: Vec<Multiaddr>,
    pub limits: Limits,
    /// Connections from one IP that may wait to prove who they are at once.
    pub max_unproven_per_ip: usize,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Where users' data lives: the home's sled database, or PostgreSQL.
    pub store: StoreChoice,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// Connections per peer and in all, and those of peers not admitted yet per address.
    limits: libp2p::connection_limits::Behaviour,
    strangers: jarvis_mesh::limits::Strangers,
    relay: relay::Behaviour,
    identify: Gated<identify::Behaviour>,
    ping: Gated<ping::Behaviour>,
    auth: request_response::Behaviour<wire::Frames>,
    /// Read only for admitted peers: a stranger's sync or directory request is not read at all.
    sync: Gated<request_response::Behaviour<wire::Frames>>,
    directory: Gated<request_response::Behaviour<wire::Frames>>,
    /// Revocation sets, exchanged with admitted peers only.
    revocations: Gated<request_response::Behaviour<wire::Frames>>,
}

/// What the relay reports as it runs (one JSON line each on stdout).
pub trait Report {
    fn event(&mut self, event: serde_json::Value);
}

impl<F: FnMut(serde_json::Value)> Report for F {
    fn event(&mut self, event: serde_json::Value) {
        self(event)
    }
}

pub struct Relay {
    swarm: Swarm<Boxed<Behaviour>>,
    identity: RelayIdentity,
    revocations: RevocationSet,
    hub: Hub<PeerId, RelayStore>,
    db: Db,
    /// Who each connected peer is, and whether it is let in (devices, GPU peers, admins).
    admission: Admission,
    /// The certificate chains of the admitted devices (hex), handed to their user's other
    /// devices in the directory.
    chains: HashMap<PeerId, String>,
    /// The same peers, as the circuit relay's gate sees them.
    admitted: Admitted,
    /// Devices and GPU peers online, from their heartbeats, and the fleet's relay instances.
    listing: Listing<PeerId>,
    /// Whether the operator said where members reach us (else the listen addresses are listed).
    external_given: bool,
    /// Members ever admitted, and invite claims.
    roster: Roster,
    /// Where the revocation set is kept.
    home: Home,
    started: Instant,
    /// Where `jarvis-relay status` reads the running relay's state, and what was last written.
    status_path: PathBuf,
    last_status: Option<serde_json::Value>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Sync messages received and not handled yet, per peer, served in turn.
    inbox: Inbox<request_response::ResponseChannel<Vec<u8>>>,
    /// In a fleet (PostgreSQL): what the other instances store, as they announce it.
    heard: Option<tokio::sync::mpsc::Receiver<crate::pg::Heard>>,
    /// This instance's number in those announcements (from its key: one key per instance).
    instance: u64,
    /// The fleet's database, when the relay runs on one: revocations are shared through it.
    pg: Option<crate::pg::Pg>,
    /// The hub's stores on it, whose reads are kept until another instance says it wrote.
    grouped: Option<crate::pg::Grouped>,
    /// Members of the directory written to the fleet's database, with the heartbeat written.
    published: HashMap<PeerId, u64>,
    /// A share of the directory with the fleet in flight (off the loop): whether it was
    /// written, and the other instances' rows.
    sharing: Option<tokio::task::JoinHandle<SharedDirectory>>,
    /// Ticks so far.
    ticks: u32,
}

/// A sync message waiting, with where its acknowledgement goes (`C`: a response channel).
type Waiting<C> = (Vec<u8>, C);
/// A sync message received from a peer, waiting.
type Received = Waiting<request_response::ResponseChannel<Vec<u8>>>;

/// Received sync messages, queued per peer and taken round-robin: one message from each peer
/// with something waiting per round, all of a round made durable with one flush. A device with
/// many messages in flight (a flood) then delays the others by one message each round, not by
/// its whole queue. Each queue is bounded here, whatever the transport allows (a peer can open
/// several connections): at most [`MAX_QUEUED`] messages and [`MAX_QUEUED_BYTES`] per peer; past
/// that a message is answered at once with "slow down" and not kept.
///
/// A peer over its rate is throttled, not answered with a refusal: its message goes back to the
/// head of its queue and the peer is parked until its bucket holds enough again. Its streams
/// stay open meanwhile, so a flooder ends up sending at its rate and no faster, and the relay
/// does no work for what waits.
struct Inbox<C> {
    queues: HashMap<PeerId, std::collections::VecDeque<Waiting<C>>>,
    turn: std::collections::VecDeque<PeerId>,
    parked: HashMap<PeerId, Instant>,
    /// Bytes waiting per peer (the sum of its queue's messages).
    bytes: HashMap<PeerId, usize>,
}

/// The most sync messages, and bytes, waiting for one peer.
const MAX_QUEUED: usize = 64;
const MAX_QUEUED_BYTES: usize = 16 << 20;

impl<C> Default for Inbox<C> {
    fn default() -> Self {
        Self {
            queues: HashMap::new(),
            turn: std::collections::VecDeque::new(),
            parked: HashMap::new(),
            bytes: HashMap::new(),
        }
    }
}

impl<C> Inbox<C> {
    /// Queues a message, or hands it back if the peer already has as much waiting as it may.
    fn push(&mut self, peer: PeerId, waiting: Waiting<C>) -> Result<(), Waiting<C>> {
        let queue = self.queues.entry(peer).or_default();
        let bytes = self.bytes.entry(peer).or_default();
        if queue.len() >= MAX_QUEUED || bytes.saturating_add(waiting.0.len()) > MAX_QUEUED_BYTES {
            if queue.is_empty() {
                self.queues.remove(&peer);
                self.bytes.remove(&peer);
            }
            return Err(waiting);
        }
        if queue.is_empty() {
            self.turn.push_back(peer);
        }
        *bytes += waiting.0.len();
        queue.push_back(waiting);
        Ok(())
    }

    /// The messages and bytes waiting for `peer`.
    #[cfg(test)]
    fn waiting(&self, peer: &PeerId) -> (usize, usize) {
        (
            self.queues
                .get(peer)
                .map_or(0, std::collections::VecDeque::len),
            self.bytes.get(peer).copied().unwrap_or(0),
        )
    }

    /// Puts messages back at the head of their peer's queue, in their order, and parks the
    /// peer until `until`.
    fn park(&mut self, peer: PeerId, waiting: Vec<Waiting<C>>, until: Instant) {
        let queue = self.queues.entry(peer).or_default();
        if queue.is_empty() {
            self.turn.push_back(peer);
        }
        let bytes = self.bytes.entry(peer).or_default();
        for w in waiting.into_iter().rev() {
            *bytes += w.0.len();
            queue.push_front(w);
        }
        self.parked.insert(peer, until);
    }

    fn ready(&self, peer: &PeerId, now: Instant) -> bool {
        self.parked.get(peer).is_none_or(|until| *until <= now)
    }

    /// Whether some peer has a message to take now.
    fn has_ready(&self, now: Instant) -> bool {
        self.turn.iter().any(|p| self.ready(p, now))
    }

    /// When the first parked peer may go on.
    fn next_wake(&self) -> Option<Instant> {
        self.parked.values().min().copied()
    }

    /// One message from each waiting peer that is not parked, in turn (at most `max`).
    fn round(&mut self, max: usize, now: Instant) -> Vec<(PeerId, Waiting<C>)> {
        let mut out = Vec::new();
        for _ in 0..self.turn.len() {
            if out.len() >= max {
                break;
            }
            let Some(peer) = self.turn.pop_front() else {
                break;
            };
            if !self.ready(&peer, now) {
                self.turn.push_back(peer);
                continue;
            }
            self.parked.remove(&peer);
            let Some(queue) = self.queues.get_mut(&peer) else {
                continue;
            };
            for _ in 0..PER_PEER_PER_ROUND {
                match queue.pop_front() {
                    Some(waiting) => {
                        if let Some(bytes) = self.bytes.get_mut(&peer) {
                            *bytes = bytes.saturating_sub(waiting.0.len());
                        }
                        out.push((peer, waiting));
                    }
                    None => break,
                }
            }
            if queue.is_empty() {
                self.queues.remove(&peer);
                self.bytes.remove(&peer);
            } else {
                self.turn.push_back(peer);
            }
        }
        out
    }

    /// A peer gone: what it sent and was not handled is dropped (never acknowledged).
    fn forget(&mut self, peer: &PeerId) {
        self.queues.remove(peer);
        self.bytes.remove(peer);
        self.parked.remove(peer);
        self.turn.retain(|p| p != peer);
    }
}

/// The most messages one round takes (and one flush covers), and from one peer.
const ROUND_MAX: usize = 256;
const PER_PEER_PER_ROUND: usize = 4;
/// The least a throttled peer waits.
const MIN_THROTTLE: Duration = Duration::from_millis(25);

/// The peers that passed the gate, shared with the circuit relay behaviour, which consults it
/// before serving a reservation or opening a circuit (libp2p's relay serves both on its own
/// protocol, which would otherwise answer a stranger before its hello is checked), and with the
/// gates in front of identify, ping, sync and the directory.
type Admitted = jarvis_mesh::gate::AdmittedPeers;

/// How long a relayed circuit may last and how much it may carry: enough for two devices to
/// sync and to hole-punch (after which they talk directly), not a free tunnel.
pub const MAX_CIRCUIT_DURATION: Duration = Duration::from_secs(30 * 60);
pub const MAX_CIRCUIT_BYTES: u64 = 64 * 1024 * 1024;

/// libp2p's circuit relay limits, with admission checked first: a peer that has not passed the
/// gate gets neither a reservation nor a circuit (it is told "resource limit exceeded", and asks
/// again once admitted).
fn circuit_config(admitted: &Admitted) -> relay::Config {
    let mut config = relay::Config {
        max_reservations: 16_384,
        max_reservations_per_peer: 4,
        max_circuits: 4_096,
        max_circuits_per_peer: 16,
        max_circuit_duration: MAX_CIRCUIT_DURATION,
        max_circuit_bytes: MAX_CIRCUIT_BYTES,
        ..relay::Config::default()
    };
    let gate = |admitted: Admitted| {
        move |peer: PeerId, _: &Multiaddr, _: Instant| admitted.contains(&peer)
    };
    config
        .reservation_rate_limiters
        .insert(0, Box::new(gate(admitted.clone())));
    config
        .circuit_src_rate_limiters
        .insert(0, Box::new(gate(admitted.clone())));
    config
}

/// The file the running relay keeps its status in.
pub const STATUS_FILE: &str = "status.json";

/// A sled tree namespace for a user: hex of the name, so no name can reach another's trees.
fn namespace(user: &jarvis_identity::Name) -> String {
    format!("user/{}/", hex::encode(user.as_str()))
}

/// The user a namespace belongs to ([`namespace`] read back).
fn user_of_namespace(ns: &str) -> Option<jarvis_identity::Name> {
    let hex = ns.strip_prefix("user/")?.strip_suffix('/')?;
    let name = String::from_utf8(hex::decode(hex).ok()?).ok()?;
    jarvis_identity::Name::new(&name).ok()
}

/// Waits for the next announcement, or for ever when there is no listener.
async fn next_heard(
    heard: &mut Option<tokio::sync::mpsc::Receiver<crate::pg::Heard>>,
) -> Option<crate::pg::Heard> {
    match heard {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

impl Relay {
    /// Opens the store in the relay's home and listens.
    pub fn new(
        identity: RelayIdentity,
        revocations: RevocationSet,
        home: Home,
        config: &Config,
    ) -> Result<Self> {
        let data = home.dir().to_path_buf();
        let db =
            jarvis_crdt::store::sled::open_db_with_cache(&data.join("store"), STORE_CACHE_BYTES)
                .with_context(|| {
                    format!(
                        "opening the relay's store in {} (is another relay running on this home?)",
                        data.display()
                    )
                })?;
        let mut roster = Roster::open(&db).context("opening the relay's member roster")?;
        let key = identity.key.public().to_bytes();
        let instance = u64::from_le_bytes([
            key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
        ]);
        let mut heard = None;
        let mut fleet = None;
        let mut grouped = None;
        let open: crate::hub::OpenStore<RelayStore> = match &config.store {
            StoreChoice::Sled => {
                let opener = db.clone();
                Box::new(move |user| {
                    SledStore::open_in(&opener, &namespace(user)).map(RelayStore::Sled)
                })
            }
            StoreChoice::Postgres(url) => {
                let pg = crate::pg::Pg::connect(url, PG_CONNECTIONS)
                    .context("connecting to the PostgreSQL store")?
                    // Only this org's data, members and revocations: a database may hold several.
                    .for_org(&identity.org.root);
                config.metrics.set_database(pg.clone());
                // Claims and members are the fleet's, not this instance's.
                roster = Roster::postgres(pg.clone());
                fleet = Some(pg.clone());
                // The other instances' writes reach this one's devices at once.
                heard = Some(pg.listen());
                // One transaction, and one COMMIT, per round, whatever the users in it.
                let group = pg.group(instance);
                grouped = Some(group.clone());
                Box::new(move |user| {
                    Ok(RelayStore::Postgres(Box::new(
                        group.store(&namespace(user)),
                    )))
                })
            }
        };
        let hub = Hub::new(config.limits, open);
        let keypair = identity
            .key
            .to_libp2p_keypair()
            .context("deriving the libp2p identity")?;
        let admitted = Admitted::default();
        let admitted_for_relay = admitted.clone();
        let admitted_for_limits = admitted.clone();
        let max_unproven_per_ip = config.max_unproven_per_ip;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default().nodelay(true),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .context("setting up TCP")?
            .with_quic_config(|mut c| {
                // quinn keeps state for every stream a peer may open, per connection: 256 (the
                // default) costs about 20 KiB per idle device.
                c.max_concurrent_stream_limit = MAX_STREAMS_PER_CONNECTION;
                // What a peer may have in flight before we read it (`mesh::limits`).
                jarvis_mesh::limits::quic_config(c)
            })
            .with_behaviour(|key| {
                Boxed(Behaviour {
                    // An org's devices, a few connections each; an office behind one address
                    // is not limited (only peers not admitted yet are counted per address).
                    limits: jarvis_mesh::limits::connection_limits(50_000, 1024),
                    strangers: jarvis_mesh::limits::Strangers::new(
                        admitted_for_limits.clone(),
                        max_unproven_per_ip,
                        MAX_UNPROVEN.max(max_unproven_per_ip),
                    ),
                    relay: relay::Behaviour::new(
                        key.public().to_peer_id(),
                        circuit_config(&admitted_for_relay),
                    ),
                    // Served to admitted peers only: they tell our addresses and protocols.
                    identify: Gated::new(
                        identify::Behaviour::new(identify::Config::new(
                            "/jarvis-relay/1.0.0".into(),
                            key.public(),
                        )),
                        admitted.check(),
                    ),
                    ping: Gated::new(ping::Behaviour::new(ping::Config::new()), admitted.check()),
                    auth: wire::auth_behaviour(Duration::from_secs(10)),
                    revocations: Gated::new(wire::revocations_behaviour(), admitted.check()),
                    sync: Gated::new(
                        wire::behaviour(SYNC_PROTOCOL, MAX_SYNC_BYTES, Duration::from_secs(60)),
                        admitted.check(),
                    ),
                    directory: Gated::new(
                        wire::behaviour(
                            DIRECTORY_PROTOCOL,
                            MAX_DIRECTORY_BYTES,
                            Duration::from_secs(30),
                        ),
                        admitted.check(),
                    ),
                })
            })
            .context("setting up the relay")?
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(Duration::from_secs(120))
                    .with_substream_upgrade_protocol_override(jarvis_mesh::wire::NEGOTIATION)
            })
            .build();
        for address in &config.listen {
            swarm
                .listen_on(address.clone())
                .with_context(|| format!("cannot listen on {address}"))?;
        }
        let me = *swarm.local_peer_id();
        let mut listing = Listing::default();
        listing.set_own(crate::listing::Shared {
            peer_id: me.to_string(),
            gpu_peer: false,
            relay: true,
            name: identity
                .chain
                .leaf()
                .map(|c| c.name().to_string())
                .unwrap_or_default(),
            user: None,
            addresses: Vec::new(),
            gpu: None,
            chain: Some(hex::encode(identity.chain.encode())),
            seen_ms_ago: 0,
        });
        for address in &config.external {
            listing.add_own_address(address.clone().with_p2p(me).unwrap_or_else(|a| a));
        }
        Ok(Self {
            swarm,
            identity,
            revocations,
            hub,
            db,
            admission: Admission::new(),
            chains: HashMap::new(),
            admitted,
            listing,
            external_given: !config.external.is_empty(),
            roster,
            home,
            started: Instant::now(),
            status_path: data.join(STATUS_FILE),
            last_status: None,
            metrics: std::sync::Arc::clone(&config.metrics),
            inbox: Inbox::default(),
            heard,
            instance,
            pg: fleet,
            grouped,
            published: HashMap::new(),
            sharing: None,
            ticks: 0,
        })
    }

    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Our hello, sealed for the org (the revocations themselves go only to admitted peers, on
    /// their own protocol).
    fn hello(&self) -> Vec<u8> {
        Hello::new(self.identity.chain.clone(), &self.revocations).encode(&self.identity.org.root)
    }

    /// Runs until `shutdown` completes. Every acknowledged change was durable before it was
    /// acknowledged, so stopping (or being killed) at any point loses none.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
        report: &mut dyn Report,
    ) -> Result<()> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        self.metrics.set_running(true);
        // Swarm events handled since the last round of sync messages.
        let mut streak = 0usize;
        loop {
            // Arrivals first, then timers, then a round of the waiting sync messages: a sustained
            // flood of messages cannot starve the gate or the timers. Nor can a flood of events
            // (strangers connecting, opening streams, being refused) starve the members' messages:
            // after `MAX_EVENTS_BEFORE_ROUND` events in a row, waiting messages go first.
            let ready = self.inbox.has_ready(Instant::now());
            if ready && streak >= MAX_EVENTS_BEFORE_ROUND {
                streak = 0;
                self.round();
                continue;
            }
            let wake = self.inbox.next_wake();
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                event = self.swarm.select_next_some() => {
                    streak += 1;
                    self.on_swarm(event, report);
                }
                _ = tick.tick() => self.on_tick(),
                heard = next_heard(&mut self.heard) => self.on_heard(heard),
                () = std::future::ready(()), if ready => {
                    streak = 0;
                    self.round();
                }
                () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now).into()), if wake.is_some() => {
                    streak = 0;
                    self.round();
                }
            }
        }
        self.metrics.set_running(false);
        self.db.flush_async().await.context("flushing the store")?;
        self.write_status(false);
        Ok(())
    }

    /// What `jarvis-relay status` shows.
    pub fn status(&self, running: bool) -> serde_json::Value {
        let per_user = self.hub.stored_bytes();
        serde_json::json!({
            "peer_id": self.peer_id().to_string(),
            "pid": std::process::id(),
            "running": running,
            "connections": self.swarm.connected_peers().count(),
            "devices": self.hub.connections(),
            "stored_bytes": per_user.values().sum::<u64>(),
            "stored_bytes_per_user": per_user
                .iter()
                .map(|(user, bytes)| (user.to_string(), *bytes))
                .collect::<std::collections::BTreeMap<_, _>>(),
            "quota_bytes": self.hub.limits().quota_bytes,
            "revocations": self.revocations.len(),
            "online_devices": self.listing.counts().0,
            "gpu_peers": self.listing.counts().1,
        })
    }

    /// Keeps the status file current (written when it changes, atomically).
    fn write_status(&mut self, running: bool) {
        let status = self.status(running);
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let tmp = self.status_path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&status)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &self.status_path));
        match written {
            Ok(()) => self.last_status = Some(status),
            Err(e) => tracing::warn!(error = %e, "cannot write the status file"),
        }
    }

    fn on_tick(&mut self) {
        self.admission.handle_timeout(Instant::now());
        self.drive_admission();
        let now_ms = self.now_ms();
        self.listing.expire(now_ms);
        self.ticks = self.ticks.wrapping_add(1);
        self.shared_directory(now_ms);
        if self.ticks.is_multiple_of(DIRECTORY_SHARE_TICKS) {
            self.share_directory(now_ms);
        }
        let out = self.hub.poll(now_ms);
        self.send(out);
        self.write_status(true);
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics
            .connections
            .set(gauge(self.swarm.connected_peers().count()));
        self.metrics.devices.set(gauge(self.hub.connections()));
        self.metrics.revocations.set(gauge(self.revocations.len()));
        for (user, bytes) in self.hub.stored_bytes() {
            self.metrics
                .stored_bytes
                .get_or_create(&crate::metrics::User {
                    user: user.to_string(),
                })
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// What another instance of the fleet stored: pushed to this instance's devices of that
    /// user. Missed announcements make every session resync at once.
    fn on_heard(&mut self, heard: Option<crate::pg::Heard>) {
        match heard {
            None => {
                tracing::warn!(
                    "the fleet listener stopped: other instances' writes arrive on resync only"
                );
                self.heard = None;
            }
            Some(crate::pg::Heard::Missed) => {
                tracing::info!(
                    "announcements from the fleet may have been missed: resyncing every device"
                );
                if let Some(grouped) = &self.grouped {
                    grouped.forget_all();
                }
                self.share_revocations();
                let out = self.hub.resync_all(self.now_ms());
                self.send(out);
            }
            Some(crate::pg::Heard::Revocations { from }) => {
                if from != self.instance {
                    self.share_revocations();
                }
            }
            Some(crate::pg::Heard::Stored(stored)) => {
                if stored.from == self.instance {
                    return;
                }
                if let Some(grouped) = &self.grouped {
                    grouped.forget(&stored.ns, stored.docs());
                }
                self.metrics.announcements_heard.inc();
                let Some(user) = user_of_namespace(&stored.ns) else {
                    tracing::debug!(ns = %stored.ns, "an announcement for no user");
                    return;
                };
                let out =
                    self.hub
                        .stored_elsewhere(&user, &stored.changes, &stored.keys, stored.grew);
                self.send(out);
            }
        }
    }

    fn send(&mut self, messages: Vec<(PeerId, jarvis_crdt::SyncMessage)>) {
        self.metrics
            .messages_forwarded
            .inc_by(messages.len() as u64);
        for (peer, m) in messages {
            self.swarm
                .behaviour_mut()
                .sync
                .send_request(&peer, m.encode());
        }
    }

    fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>, report: &mut dyn Report) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                // A relay is meant to be reachable where it listens: offer these addresses in
                // reservations (the relay serves no reservation without one).
                self.swarm.add_external_address(address.clone());
                let me = self.peer_id();
                if !self.external_given {
                    self.listing
                        .add_own_address(address.clone().with_p2p(me).unwrap_or_else(|a| a));
                }
                report.event(serde_json::json!({
                    "event": "listening",
                    "address": address.with_p2p(me).unwrap_or_else(|a| a).to_string(),
                }));
            }
            // A member's further connections (a GPU peer's, an admin's, not only a device's)
            // are admitted already: no second hello is awaited from them.
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                self.admission.connected(peer_id, Instant::now());
                self.drive_admission();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.admission.closed(&peer_id);
                self.forget(peer_id);
            }
            // A refusal that could not be sent: nothing to wait for. One that was sent is left
            // to the refused peer to act on (it disconnects when it reads it); "sent" means
            // handed to QUIC, and closing the connection now could drop it unsent.
            SwarmEvent::Behaviour(BehaviourEvent::Auth(
                request_response::Event::InboundFailure { peer, .. },
            )) => {
                self.admission.answer_failed(&peer);
                self.drive_admission();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Auth(event)) => self.on_auth(event),
            SwarmEvent::Behaviour(BehaviourEvent::Revocations(event)) => self.on_revocations(event),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => self.on_sync(event),
            SwarmEvent::Behaviour(BehaviourEvent::Directory(event)) => self.on_directory(event),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => {
                tracing::debug!(?event, "circuit relay");
            }
            _ => {}
        }
    }

    /// A peer's hello (a request, answered on `channel`) or its answer to ours, through the
    /// admission core with the relay's policy: a device's invite must not have been claimed by
    /// another user.
    fn on_hello(
        &mut self,
        peer: PeerId,
        bytes: &[u8],
        channel: Option<request_response::ResponseChannel<Vec<u8>>>,
    ) {
        // Spans of the relay's work (exported to a collector where one is configured).
        let _span = tracing::info_span!("hello", %peer, bytes = bytes.len()).entered();
        let now = jarvis_home::now();
        let roster = &mut self.roster;
        let mut policy = |peer: &PeerId, checked: &Checked| {
            if checked.verified.kind != CertKind::Device {
                return Ok(());
            }
            match roster.check_claim(*peer, &checked.verified, &checked.chain, now.0) {
                Ok(ClaimCheck::Fine) => Ok(()),
                Ok(ClaimCheck::Refused(reason)) => Err(Reason::InviteClaimed(reason)),
                Err(e) => Err(Reason::CannotCheck(format!(
                    "the relay cannot check the invite: {e}"
                ))),
            }
        };
        let context = admission::Context {
            root: &self.identity.org.root,
            revocations: &mut self.revocations,
            unix: now,
            policy: &mut policy,
        };
        match channel {
            Some(channel) => {
                // The refused peer is told why (its user sees it in `jarvis status`).
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
        // Refused as revoked (a signed claim is one way): see whether it was a claimant.
        if let Some(admission::Refusal::ByUs(Reason::Hello(e))) = self.admission.refusal(&peer)
            && e.is_revoked()
        {
            self.note_refused_claim(peer, bytes, now);
        }
        self.drive_admission();
    }

    /// A device refused by a signed claim record (another user key claimed its invite) was
    /// refused by its chain check, before the policy that records claims: recorded here, so the
    /// admin still sees who tried. Only refused hellos pay for this second look.
    fn note_refused_claim(&mut self, peer: PeerId, bytes: &[u8], now: jarvis_identity::UnixTime) {
        let root = self.identity.org.root;
        let Ok(hello) = Hello::decode(bytes, &root) else {
            return;
        };
        let Some((serial, _, user_key)) = jarvis_mesh::directory::invite_of(&hello.chain) else {
            return;
        };
        if self
            .revocations
            .claim_of(serial)
            .is_none_or(|owner| owner == user_key)
        {
            return;
        }
        // Its own chain, over its own connection: a copied chain says nothing of who tried.
        let Ok(verified) = hello.chain.verify_structure(&root, Some(now)) else {
            return;
        };
        if verified.subject.to_libp2p_peer_id().ok() != Some(peer) {
            return;
        }
        if let Err(e) = self
            .roster
            .note_refused_claim(peer, &verified, &hello.chain, now.0)
        {
            tracing::warn!(error = %e, "cannot record the refused claim");
        }
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
                    chain,
                    ..
                } => {
                    if verified.kind == CertKind::Device {
                        self.chains.insert(peer, hex::encode(chain.encode()));
                    }
                    self.admitted(peer, verified);
                }
                admission::Event::AcceptedUs(_) => {}
                admission::Event::Refused { peer, refusal } => {
                    tracing::warn!(%peer, reason = %refusal, "peer refused");
                    self.metrics.refused(refusal.label());
                    self.forget(peer);
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
                    self.on_new_revocations(added, from);
                }
            }
        }
    }

    /// A peer let in: recorded, served identify, ping and the circuit relay, and a device its
    /// user's store.
    fn admitted(&mut self, peer: PeerId, verified: Verified) {
        let at = jarvis_home::now().0;
        if let Err(e) = self.roster.admitted(peer, &verified, at) {
            tracing::warn!(error = %e, "cannot record the member");
        }
        tracing::info!(%peer, kind = %verified.kind, name = %verified.name, "peer admitted");
        self.admitted.set(peer, true);
        let behaviour = self.swarm.behaviour_mut();
        behaviour.identify.set_open(peer, true);
        behaviour.ping.set_open(peer, true);
        behaviour.sync.set_open(peer, true);
        behaviour.directory.set_open(peer, true);
        behaviour.revocations.set_open(peer, true);
        if verified.kind == CertKind::Device
            && !self.hub.is_admitted(&peer)
            && let Some(user) = verified.user
        {
            match self.hub.admit(peer, user, self.now_ms()) {
                Ok(out) => self.send(out),
                Err(e) => {
                    self.admission
                        .refuse_now(peer, Reason::CannotCheck(e.to_string()));
                    self.drive_admission();
                }
            }
        }
    }

    /// In a fleet: takes the revocations the other instances hold (each record verified
    /// against the org root and merged as a peer's would be), enforces them on this instance's
    /// members at once, and adds to the shared table what only this instance holds.
    fn share_revocations(&mut self) {
        let Some(pg) = self.pg.clone() else {
            return;
        };
        let now = jarvis_home::now();
        match pg.revocations_all() {
            Ok(records) => {
                let mut theirs = RevocationSet::new(self.identity.org.root);
                for bytes in records {
                    let record = jarvis_identity::Revocation::decode(&bytes)
                        .map_err(|e| e.to_string())
                        .and_then(|r| theirs.insert(r).map_err(|e| e.to_string()));
                    if let Err(e) = record {
                        tracing::warn!(error = %e, "a revocation in the fleet's database does not verify: skipped");
                    }
                }
                match self.revocations.merge_received(&theirs, now) {
                    Ok(0) => {}
                    Ok(added) => {
                        tracing::info!(
                            added,
                            total = self.revocations.len(),
                            "revocations learned from the fleet"
                        );
                        self.admission.learned_revocations(&self.revocations);
                        self.drive_admission();
                        if let Err(e) = self.home.save_revocations(&self.revocations) {
                            tracing::error!(error = %e, "cannot save the revocation set");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot merge the fleet's revocations"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the fleet's revocations"),
        }
        let mine: Vec<([u8; 32], Vec<u8>)> = self
            .revocations
            .iter()
            .map(|r| (r.id(), r.encode()))
            .collect();
        if let Err(e) = pg.revocations_add(&mine, self.instance) {
            tracing::warn!(error = %e, "cannot share revocations with the fleet");
        }
    }

    /// In a fleet: writes this instance's part of the directory (what changed since the last
    /// time; members gone are removed) and reads the other instances', so each instance lists
    /// the org's members wherever they are connected. A failure is logged and tried again.
    fn share_directory(&mut self, now_ms: u64) {
        let Some(pg) = self.pg.clone() else {
            return;
        };
        // One share at a time; the next waits for the tick after this one is done.
        if self.sharing.is_some() {
            return;
        }
        let unix = crate::pg::unix_ms();
        let expiry = i64::try_from(jarvis_mesh::directory::EXPIRY.as_millis()).unwrap_or(i64::MAX);
        let mut online = Vec::new();
        let mut here = std::collections::HashSet::new();
        for (peer, mut shared, last_ms) in self.listing.shared(now_ms) {
            here.insert(peer);
            if self.published.get(&peer) == Some(&last_ms) {
                continue;
            }
            shared.chain = self.chains.get(&peer).cloned();
            let Ok(record) = serde_json::to_vec(&shared) else {
                continue;
            };
            let seen_at = unix.saturating_sub(i64::try_from(shared.seen_ms_ago).unwrap_or(0));
            online.push((peer.to_string(), record, seen_at));
            self.published.insert(peer, last_ms);
        }
        let gone: Vec<PeerId> = self
            .published
            .keys()
            .filter(|p| !here.contains(*p))
            .copied()
            .collect();
        for peer in &gone {
            self.published.remove(peer);
        }
        let gone: Vec<String> = gone.iter().map(ToString::to_string).collect();
        // This instance itself, every time: the row's age is how the others know it is up.
        if let Some(record) = self.listing.own().and_then(|o| serde_json::to_vec(o).ok()) {
            online.push((self.peer_id().to_string(), record, unix));
        }
        // The database's round trips (a transaction and its commit) run off the relay's loop,
        // which goes on serving sync messages; `shared_directory` takes the answer.
        let instance = self.instance;
        self.sharing = Some(tokio::task::spawn_blocking(move || {
            let published = pg.directory_publish(instance, &online, &gone, 2 * expiry);
            let others = pg.directory_others(instance, expiry);
            (published, others)
        }));
    }

    /// The fleet's part of the directory, once a share is done: the other instances' members.
    fn shared_directory(&mut self, now_ms: u64) {
        let Some(sharing) = self.sharing.take_if(|s| s.is_finished()) else {
            return;
        };
        let Some(Ok((published, others))) = futures::FutureExt::now_or_never(sharing) else {
            tracing::warn!("sharing the directory with the fleet failed");
            self.published.clear();
            return;
        };
        if let Err(e) = published {
            tracing::warn!(error = %e, "cannot share the directory with the fleet");
            // Everything is written again next time.
            self.published.clear();
        }
        match others {
            Ok(rows) => {
                let remote = rows
                    .into_iter()
                    .filter_map(|(record, ago)| {
                        let mut shared: crate::listing::Shared =
                            serde_json::from_slice(&record).ok()?;
                        shared.seen_ms_ago = ago;
                        Some(shared)
                    })
                    .collect();
                self.listing.set_remote(remote, now_ms);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the fleet's directory"),
        }
    }

    /// Revocations learned (from an admin publishing them, or any peer that knew more): kept.
    /// The admission core has refused and disconnected the peers they cover already, and pushes
    /// the set to every other member ([`admission::Event::ExchangeRevocations`]).
    fn on_new_revocations(&mut self, added: usize, from: PeerId) {
        tracing::info!(%from, added, total = self.revocations.len(), "revocations learned");
        if let Err(e) = self.home.save_revocations(&self.revocations) {
            tracing::error!(error = %e, "cannot save the revocation set");
        }
        // The fleet's other instances disconnect the revoked at once too.
        self.share_revocations();
    }

    /// A revocation set from an admitted peer (its request, answered with ours, or its answer to
    /// ours), merged through the admission core.
    fn on_revocations(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        // No one is admitted here: the policy is not consulted.
        let context = admission::Context {
            root: &self.identity.org.root,
            revocations: &mut self.revocations,
            unix: jarvis_home::now(),
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

    /// A peer refused or gone: nothing of ours is served to it any more.
    fn forget(&mut self, peer: PeerId) {
        self.chains.remove(&peer);
        self.admitted.set(peer, false);
        let behaviour = self.swarm.behaviour_mut();
        behaviour.identify.set_open(peer, false);
        behaviour.ping.set_open(peer, false);
        behaviour.sync.set_open(peer, false);
        behaviour.directory.set_open(peer, false);
        behaviour.revocations.set_open(peer, false);
        self.listing.left(&peer);
        self.inbox.forget(&peer);
        self.hub.leave(&peer);
    }

    fn on_auth(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        let request_response::Event::Message { peer, message, .. } = event else {
            return;
        };
        match message {
            Message::Request {
                request, channel, ..
            } => self.on_hello(peer, &request, Some(channel)),
            Message::Response { response, .. } => self.on_hello(peer, &response, None),
        }
    }

    /// Heartbeats (answered with the directory the member may see) and an admin's member report.
    fn on_directory(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        let request_response::Event::Message {
            peer,
            message: Message::Request {
                request, channel, ..
            },
            ..
        } = event
        else {
            return;
        };
        let now_ms = self.now_ms();
        let response = match (
            self.admission.verified(&peer),
            directory::decode::<Request>(&request),
        ) {
            (None, _) => Response::Refused {
                reason: "not admitted: say hello first".to_owned(),
            },
            (Some(_), Err(reason)) => Response::Refused { reason },
            (Some(who), Ok(Request::Heartbeat { addresses, gpu })) => {
                let who = who.clone();
                match self.listing.heartbeat(peer, &who, addresses, gpu, now_ms) {
                    Ok(()) => {
                        let mut view = self.listing.view(&peer, &who, now_ms);
                        for entry in &mut view.devices {
                            // Those admitted here; those at other instances came with theirs.
                            if let Some(chain) = entry
                                .peer_id
                                .parse::<PeerId>()
                                .ok()
                                .and_then(|p| self.chains.get(&p).cloned())
                            {
                                entry.chain = Some(chain);
                            }
                        }
                        Response::Directory(view)
                    }
                    Err(reason) => Response::Refused { reason },
                }
            }
            (Some(who), Ok(Request::Members)) if who.kind == CertKind::Admin => {
                let connected: std::collections::HashSet<String> = self
                    .admission
                    .admitted()
                    .map(|(p, _)| p.to_string())
                    .collect();
                match self.roster.report(|id| connected.contains(id)) {
                    Ok((members, claims)) => Response::Members(MembersReport { members, claims }),
                    Err(e) => Response::Refused {
                        reason: format!("the relay cannot read its roster now: {e}"),
                    },
                }
            }
            (Some(who), Ok(Request::Members)) => Response::Refused {
                reason: format!("only an admin may list the members, not a {}", who.kind),
            },
        };
        if let Response::Refused { reason } = &response {
            tracing::info!(%peer, %reason, "directory request refused");
        }
        let _ = self
            .swarm
            .behaviour_mut()
            .directory
            .send_response(channel, directory::encode(&response));
    }

    fn on_sync(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        let request_response::Event::Message { peer, message, .. } = event else {
            return;
        };
        let _span = tracing::info_span!("sync", %peer).entered();
        let Message::Request {
            request, channel, ..
        } = message
        else {
            // A device's answer to what we sent: empty when it stored it, else its reason.
            return;
        };
        if !self.hub.is_admitted(&peer) {
            // Not answered: a peer still authenticating asks again on its resync timer; one
            // that is not a device of this org is disconnected by the gate.
            return;
        }
        if let Err((_, channel)) = self.inbox.push(peer, (request, channel)) {
            // Not kept: the device's session sends it again once what waits is taken.
            let refusal = crate::hub::Refusal::RateLimited {
                retry_after_ms: u64::try_from(MIN_THROTTLE.as_millis()).unwrap_or(u64::MAX),
            };
            self.metrics.refused(refusal.reason());
            let _ = self
                .swarm
                .behaviour_mut()
                .sync
                .send_response(channel, refusal.to_string().into_bytes());
        }
    }

    /// Takes one waiting message from each peer in turn, makes them all durable with one
    /// flush, then acknowledges them (or says why not) and sends what they caused.
    fn round(&mut self) {
        let now_ms = self.now_ms();
        let now = Instant::now();
        let mut taken = Vec::new();
        // Peers found over their rate in this round: what they sent waits, in order, until
        // their bucket allows it (and at least a moment, so a throttled peer does not cost a
        // flush of its own many times a second).
        let mut throttled: HashMap<PeerId, (Instant, Vec<Received>)> = HashMap::new();
        for (peer, (request, channel)) in self.inbox.round(ROUND_MAX, now) {
            if let Some((_, held)) = throttled.get_mut(&peer) {
                held.push((request, channel));
                continue;
            }
            let handled = self.hub.take(peer, &request, now_ms);
            if let Err(crate::hub::Refusal::RateLimited { retry_after_ms }) = handled.result {
                self.metrics.refused("rate-limited");
                let wait = Duration::from_millis(retry_after_ms).max(MIN_THROTTLE);
                throttled.insert(peer, (now + wait, vec![(request, channel)]));
                continue;
            }
            taken.push((peer, channel, handled));
        }
        for (peer, (until, held)) in throttled {
            self.inbox.park(peer, held, until);
        }
        let committed = self.hub.commit();
        for (peer, channel, handled) in taken {
            self.metrics.changes_stored.inc_by(handled.stored as u64);
            // The transport acknowledgement: empty once durable; otherwise the reason, so the
            // device can say why its changes are not getting through.
            let result = match (&handled.result, &committed) {
                (Ok(()), Ok(())) => Ok(()),
                (Ok(()), Err(e)) => Err(crate::hub::Refusal::Store(e.to_string())),
                (Err(refusal), _) => Err(refusal.clone()),
            };
            let response = match &result {
                Ok(()) => Vec::new(),
                Err(refusal) => {
                    tracing::info!(%peer, reason = refusal.reason(), "sync message refused: {refusal}");
                    self.metrics.refused(refusal.reason());
                    refusal.to_string().into_bytes()
                }
            };
            let _ = self
                .swarm
                .behaviour_mut()
                .sync
                .send_response(channel, response);
            if result.is_ok() {
                self.send(handled.send);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// #20 finding 9: what one peer can have waiting at the relay is bounded, by count and by
    /// bytes, however many streams and connections it opens (before, the queue grew with every
    /// message the transport let through).
    #[test]
    fn one_peer_cannot_fill_the_inbox() {
        let mut inbox: Inbox<()> = Inbox::default();
        let flooder = PeerId::random();
        let other = PeerId::random();
        for _ in 0..MAX_QUEUED {
            assert!(inbox.push(flooder, (vec![0; 10], ())).is_ok());
        }
        assert!(inbox.push(flooder, (vec![0; 10], ())).is_err());
        assert_eq!(inbox.waiting(&flooder), (MAX_QUEUED, MAX_QUEUED * 10));
        // Others are not affected, and a big message counts by its bytes.
        assert!(inbox.push(other, (vec![0; MAX_QUEUED_BYTES], ())).is_ok());
        assert!(inbox.push(other, (vec![0; 1], ())).is_err());

        // Taking messages makes room again, and the byte count follows.
        let now = Instant::now();
        let taken = inbox.round(ROUND_MAX, now);
        assert_eq!(taken.len(), PER_PEER_PER_ROUND + 1);
        assert_eq!(
            inbox.waiting(&flooder),
            (
                MAX_QUEUED - PER_PEER_PER_ROUND,
                (MAX_QUEUED - PER_PEER_PER_ROUND) * 10
            )
        );
        assert_eq!(inbox.waiting(&other), (0, 0));
        assert!(inbox.push(flooder, (vec![0; 10], ())).is_ok());
        inbox.forget(&flooder);
        assert_eq!(inbox.waiting(&flooder), (0, 0));
    }
}

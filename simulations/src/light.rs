//! The light device model: the org, network and scenarios of [`crate::world`] with each device
//! reduced to counters, so that 100,000 devices or more run in a minute.
//!
//! What is kept from the full model: the same writes (the same Poisson process and working-day
//! curve), the same links ([`crate::net`], one ordered stream per direction), the same
//! connection generations, partitions, relay loss and devices put away, and the sync protocol's
//! shape — a hello answered with what the device lacks, changes sent as written, an
//! acknowledgement once stored, fan-out to the user's other connected devices, and on a shared
//! database an announcement to the instances that hold another of the user's devices.
//!
//! What is replaced, and said so in the report:
//! - a device's replica is a vector of counters (how many of each writer's changes it holds);
//!   the relay's store is one counter per writer (changes arrive in order on an ordered stream,
//!   so a contiguous count is the whole state);
//! - message sizes are the real encodings' sizes, measured once at start with the real code
//!   ([`Sizes::measure`]);
//! - cryptography is a cost model ([`Costs`]) from `jarvis-bench crdt-seal` and
//!   `identity-verify`: a device pays the seal before a change leaves and a verify and open for
//!   each change it takes; a relay instance is a server of `relay_cores` cores that pays a
//!   signature check per change and a chain check per hello, so its messages queue when it is
//!   busy, and its CPU share over time is reported.

use serde::Serialize;

use jarvis_crdt::doc::{Doc, NewMessage, Role, Status};
use jarvis_crdt::store::MemStore;
use jarvis_crdt::{HaveKind, Replica, SyncMessage, VersionVector};
use jarvis_identity::revocation::{Revocation, RevocationTarget};
use jarvis_identity::{SecretKey, UnixTime};

use crate::engine::{Draws, Histogram, MINUTE, MS, Micros, Queue, SECOND};
use crate::net::{Link, LinkModel};
use crate::world::{
    BuildError, DB_NOTIFY, MESSAGE, Shape, Tally, Traffic, WARM_UP, greased, next_write,
};

/// What the cryptography costs on the machine, from `jarvis-bench` (see the module's notes).
#[derive(Debug, Clone, Serialize)]
pub struct Costs {
    /// Sealing one change: encrypt and sign (`crdt-seal`'s sealed changes per second).
    pub seal_us: f64,
    /// One ed25519 signature check (`identity-verify`'s chain of four signatures, ÷ 4).
    pub signature_verify_us: f64,
    /// A device's whole certificate chain, checked once per hello (`identity-verify`).
    pub chain_verify_us: f64,
    /// What a relay instance spends per change beyond the signature check (transport,
    /// decoding, storage, fan-out): 0 unless measured (`jarvis-bench sim-validate` measures
    /// it from the real relay's CPU time).
    pub relay_change_us: f64,
    /// Cores per relay instance.
    pub relay_cores: u32,
    /// Where the figures came from.
    pub source: String,
}

/// Why `--costs` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CostError {
    #[error(
        "{path}: no `{metric}` figure of `{bench}`: write it there with `jarvis-bench {bench} --json >> {path}`"
    )]
    Missing {
        path: String,
        bench: &'static str,
        metric: &'static str,
    },
    #[error("{path}, line {line}: not a jarvis-bench figure: {error}")]
    Json {
        path: String,
        line: usize,
        error: serde_json::Error,
    },
}

impl Costs {
    /// `jarvis-bench crdt-seal --quick --json` and `identity-verify --quick --json` on the
    /// 2-core development machine (AMD EPYC, 2026-12-07): 58,136 changes/s, 6,475 chains/s.
    pub fn measured_here() -> Self {
        Self::from_rates(
            58_135.9,
            6_475.2,
            "jarvis-bench crdt-seal and identity-verify (--quick) on the 2-core development machine, 2026-12-07",
        )
    }

    fn from_rates(sealed_per_s: f64, chains_per_s: f64, source: &str) -> Self {
        let chain_verify_us = 1e6 / chains_per_s.max(1.0);
        Self {
            seal_us: 1e6 / sealed_per_s.max(1.0),
            signature_verify_us: chain_verify_us / 4.0,
            chain_verify_us,
            relay_change_us: 0.0,
            relay_cores: 2,
            source: source.to_owned(),
        }
    }

    /// From `jarvis-bench … --json` output (one figure per line; other lines are skipped).
    pub fn from_bench_output(path: &str, text: &str) -> Result<Self, CostError> {
        #[derive(serde::Deserialize)]
        struct Figure {
            bench: String,
            metric: String,
            ours: f64,
        }
        let mut figures = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if !line.trim_start().starts_with('{') {
                continue;
            }
            let figure: Figure = serde_json::from_str(line).map_err(|error| CostError::Json {
                path: path.to_owned(),
                line: i + 1,
                error,
            })?;
            figures.push(figure);
        }
        let find = |bench: &'static str, metric: &'static str| {
            figures
                .iter()
                .find(|f| f.bench == bench && f.metric == metric)
                .map(|f| f.ours)
                .ok_or_else(|| CostError::Missing {
                    path: path.to_owned(),
                    bench,
                    metric,
                })
        };
        Ok(Self::from_rates(
            find("crdt-seal", "sealed_changes_per_sec")?,
            find("identity-verify", "chain_verifications_per_sec")?,
            &format!("jarvis-bench crdt-seal and identity-verify, from {path}"),
        ))
    }

    /// What a device pays per change it takes: a signature check and an open (the AEAD is
    /// charged at the whole seal's cost, an upper bound).
    fn receive_us(&self) -> f64 {
        self.signature_verify_us + self.seal_us
    }
}

/// Sizes on the wire, in bytes, measured from the real encodings.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sizes {
    /// A `Changes` message carrying one change of the 72-character message every write appends.
    pub change: u32,
    /// A `Have` (hello or acknowledgement) naming every device of the user and a key.
    pub have: u32,
    /// A key record wrapped to the user's devices (without age's grease).
    pub key_record: u32,
    /// A revocation record signed by the org root.
    pub revocation: u32,
}

impl Sizes {
    /// Seals, encodes and measures one of each with the project's own code.
    pub fn measure(devices_per_user: u32) -> Result<Self, BuildError> {
        let seed = |i: u32| {
            let mut s = [0u8; 32];
            s[..4].copy_from_slice(&(i + 1).to_le_bytes());
            s
        };
        let ages: Vec<_> = (0..devices_per_user)
            .map(|_| age::x25519::Identity::generate())
            .collect();
        let recipients: Vec<_> = ages.iter().map(age::x25519::Identity::to_public).collect();
        let publics: Vec<_> = (0..devices_per_user)
            .map(|i| SecretKey::from_seed(&seed(i)).public())
            .collect();
        let age = ages.into_iter().next().ok_or(BuildError::Empty)?;
        let mut replica = Replica::device(MemStore::new(), SecretKey::from_seed(&seed(0)), age);
        replica.set_writers(publics.iter().copied());
        let (doc, record, _) = replica.create(
            |me| Doc::create_conversation(me, "a day's questions", 0),
            &recipients,
        )?;
        let sealed = replica.edit(doc, |d, me| {
            d.append(
                NewMessage {
                    id: "m0-2",
                    role: Role::User,
                    text: MESSAGE,
                    status: Status::Done,
                    now_ms: 600_000,
                },
                me,
            )
        })?;
        let change = SyncMessage::Changes {
            doc,
            changes: vec![sealed],
        }
        .encode()
        .len();
        let mut vector = VersionVector::new();
        for (i, key) in publics.iter().enumerate() {
            vector.set(*key, 1_000 + i as u64);
        }
        let have = SyncMessage::Have {
            doc,
            vector,
            keys: vec![record.id()],
            kind: HaveKind::Ack,
        }
        .encode()
        .len();
        let encoded = record.encode();
        let key_record = encoded.len() - greased(&encoded);
        let root = SecretKey::from_seed(&seed(u32::MAX - 1));
        let revocation = Revocation::issue(
            RevocationTarget::Key(publics.first().copied().ok_or(BuildError::Empty)?),
            "device lost",
            UnixTime(1_800_000_000),
            None,
            &root,
        )
        .map_err(|e| BuildError::Measure(e.to_string()))?
        .encode()
        .len();
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(Self {
            change: n(change),
            have: n(have),
            key_record: n(key_record),
            revocation: n(revocation),
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Up {
    Hello,
    /// The device's own changes `from..=to`; `sent_at` when it was one change sent as written
    /// (its acknowledgement is timed).
    Changes {
        from: u32,
        to: u32,
        sent_at: Option<Micros>,
    },
    Keys {
        epoch: u32,
    },
}

#[derive(Debug, Clone, Copy)]
enum Down {
    /// The answer to a hello, after what the device lacked: how many of its own changes are
    /// stored, the user's newest key epoch, and whether the revocations come with it.
    Welcome {
        own_stored: u32,
        epoch: u32,
        revocations: bool,
    },
    Changes {
        writer: u32,
        from: u32,
        to: u32,
    },
    Ack {
        sent_at: Option<Micros>,
    },
    Revocations,
    Keys {
        epoch: u32,
    },
}

#[derive(Debug)]
enum Event {
    Write(u32),
    Connect(u32),
    Up {
        device: u32,
        generation: u32,
        message: Up,
    },
    Down {
        device: u32,
        generation: u32,
        message: Down,
    },
    /// Another instance stored this for `user` (the shared database's notification).
    Announce {
        relay: u16,
        user: u32,
        message: Down,
    },
    Cut(u16),
    Heal(u16),
    Away(u32),
    Return(u32),
    Kill(u16),
    Revoke,
    /// A relay instance hears of the revocations through the database.
    Learn(u16),
}

const K_UP: u64 = 1 << 56;
const K_DOWN: u64 = 2 << 56;
const K_WRITE: u64 = 3 << 56;
const K_SITE: u64 = 6 << 56;
const K_CONNECT: u64 = 7 << 56;
const K_ANNOUNCE: u64 = 8 << 56;
const K_KILL: u64 = 9 << 56;
const K_AWAY: u64 = 10 << 56;
const K_REVOKE: u64 = 11 << 56;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    Off,
    /// Hello sent, no welcome yet: its writes wait.
    Hello,
    Live,
}

#[derive(Debug)]
struct Device {
    user: u32,
    relay: u16,
    site: u16,
    generation: u32,
    conn: Conn,
    sealed: u32,
    epoch: u32,
    writes: u64,
    connects: u64,
    away: bool,
    revoked: bool,
    /// Holds the revocation records.
    knows: bool,
    up: Link,
    down: Link,
}

#[derive(Debug)]
struct Relay {
    alive: bool,
    /// When each core is free again.
    cores: Vec<Micros>,
    busy_us: u64,
    busy_at_last_sample: u64,
    connections: u64,
    stored_bytes: u64,
    knows_revocations: bool,
}

impl Relay {
    /// Runs `cost_us` of work arriving at `now` on the first free core: when it is done.
    fn serve(&mut self, now: Micros, cost_us: f64) -> Micros {
        let cost = cost_us.round() as Micros;
        self.busy_us += cost;
        let Some(core) = self.cores.iter_mut().min() else {
            return now + cost;
        };
        let done = (*core).max(now) + cost;
        *core = done;
        done
    }
}

/// Changes outstanding when a partition healed or a device came back.
#[derive(Debug)]
struct Backlog {
    /// Each writer's sealed count at that moment.
    snapshot: Vec<u32>,
    size: u64,
    left: u64,
    since: Micros,
    cleared: Option<Micros>,
}

/// The mass revocation, as it spreads.
#[derive(Debug)]
struct Revoking {
    at: Micros,
    targets: Vec<u32>,
    relays_knew: Vec<Option<Micros>>,
    /// Revocation → each other device holding the records.
    spread: Histogram,
    /// Per user with a revoked device: devices still on the old key epoch, and whether one has
    /// started the rotation.
    left: Vec<u32>,
    rotating: Vec<bool>,
    /// Revocation → every remaining device of a user on the new epoch.
    rotated: Histogram,
    refused: u64,
}

/// What the relay fleet looked like at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at_s: f64,
    pub connections: Vec<u64>,
    /// Busy share of each instance's cores since the previous sample.
    pub cpu: Vec<f64>,
    pub storage_bytes: Vec<u64>,
}

/// The revocation figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RevocationReport {
    pub at_s: f64,
    pub revoked_devices: usize,
    pub users_affected: usize,
    /// Revocation → the last relay instance refusing the revoked devices.
    pub all_relays_refuse_after_ms: Option<f64>,
    /// Revocation → each other device holding the records.
    pub spread_ms: crate::engine::Quantiles,
    pub devices_unaware_at_end: u64,
    /// Revocation → all remaining devices of an affected user on a new key epoch.
    pub key_rotated_ms: crate::engine::Quantiles,
    pub users_not_rotated_at_end: u64,
    pub connections_refused: u64,
}

/// The org in the light model.
pub struct LightWorld {
    queue: Queue<Event>,
    draws: Draws,
    pub link: LinkModel,
    pub shape: Shape,
    pub traffic: Traffic,
    pub costs: Costs,
    pub sizes: Sizes,
    devices: Vec<Device>,
    /// Each device's write times (its change `seq` was written at `written[device][seq - 1]`).
    written: Vec<Vec<Micros>>,
    /// `has[device * devices_per_user + slot]`: how many of that writer's changes it holds.
    has: Vec<u32>,
    /// Per writer: how many of its changes the relay fleet has stored.
    stored: Vec<u32>,
    /// Per device: the connection generation its relay admitted (0: none).
    attached: Vec<u32>,
    /// Per user: the newest key epoch stored.
    user_epoch: Vec<u32>,
    relays: Vec<Relay>,
    cut: Vec<bool>,
    announcements: u64,
    writing_until: Micros,
    connected: u64,
    last_sample: Micros,
    backlog: Option<Backlog>,
    revoking: Option<Revoking>,
    /// Write → arrival at each other device of the user.
    pub latencies: Histogram,
    /// A change sent as written → its acknowledgement back at the device.
    pub acks: Histogram,
    pub tally: Tally,
    /// Changes that arrived ahead of one missing (must be 0 on ordered streams).
    pub gaps: u64,
    pub moved: u64,
    pub series: Vec<Sample>,
}

impl LightWorld {
    /// Builds the org; devices connect over the warm-up and write from its end.
    pub fn new(
        seed: u64,
        shape: Shape,
        traffic: Traffic,
        link: LinkModel,
        writing_until: Micros,
        costs: Costs,
    ) -> Result<Self, BuildError> {
        if shape.users == 0 || shape.devices_per_user == 0 || shape.relays == 0 {
            return Err(BuildError::Empty);
        }
        let sizes = Sizes::measure(shape.devices_per_user)?;
        let sites = shape.sites.max(1);
        let dpu = shape.devices_per_user;
        let count = shape.users as usize * dpu as usize;
        let devices = (0..count as u32)
            .map(|index| {
                let user = index / dpu;
                let spread = if shape.shared_database { index } else { user };
                Device {
                    user,
                    relay: (spread % u32::from(shape.relays)) as u16,
                    site: (user % u32::from(sites)) as u16,
                    generation: 0,
                    conn: Conn::Off,
                    // Each user's first device created the conversation (its change 1).
                    sealed: u32::from(index % dpu == 0),
                    epoch: 0,
                    writes: 0,
                    connects: 0,
                    away: false,
                    revoked: false,
                    knows: false,
                    up: Link::default(),
                    down: Link::default(),
                }
            })
            .collect();
        let written = (0..count)
            .map(|i| {
                if i % dpu as usize == 0 {
                    vec![0]
                } else {
                    Vec::new()
                }
            })
            .collect();
        let relays = (0..shape.relays)
            .map(|_| Relay {
                alive: true,
                cores: vec![0; costs.relay_cores.max(1) as usize],
                busy_us: 0,
                busy_at_last_sample: 0,
                connections: 0,
                stored_bytes: 0,
                knows_revocations: false,
            })
            .collect();
        let mut world = Self {
            queue: Queue::default(),
            draws: Draws::new(seed),
            link,
            shape,
            traffic,
            costs,
            sizes,
            devices,
            written,
            has: vec![0; count * dpu as usize],
            stored: vec![0; count],
            attached: vec![0; count],
            user_epoch: vec![0; shape.users as usize],
            relays,
            cut: vec![false; usize::from(sites)],
            announcements: 0,
            writing_until,
            connected: 0,
            last_sample: 0,
            backlog: None,
            revoking: None,
            latencies: Histogram::default(),
            acks: Histogram::default(),
            tally: Tally::default(),
            gaps: 0,
            moved: 0,
            series: Vec::new(),
        };
        // A user's first device holds its own first change.
        for (i, h) in world.has.iter_mut().enumerate() {
            let (device, slot) = (i / dpu as usize, i % dpu as usize);
            if slot == 0 && device % dpu as usize == 0 {
                *h = 1;
            }
        }
        for device in 0..count as u32 {
            let key = K_CONNECT | u64::from(device);
            let at = (world.draws.unit(key, 0) * WARM_UP as f64) as Micros;
            world.queue.at(at, (key, 0), Event::Connect(device));
            world.schedule_write(device, WARM_UP);
        }
        Ok(world)
    }

    pub fn now(&self) -> Micros {
        self.queue.now()
    }

    pub fn events_run(&self) -> u64 {
        self.queue.ran
    }

    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    fn dpu(&self) -> u32 {
        self.shape.devices_per_user
    }

    /// Cuts `site` off from the relays at `at`, and heals it at `heal`.
    pub fn partition(&mut self, site: u16, at: Micros, heal: Micros) {
        let key = K_SITE | u64::from(site);
        self.queue.at(at, (key, 0), Event::Cut(site));
        self.queue.at(heal, (key, 1), Event::Heal(site));
    }

    /// Puts `device` away from `from` to `until`, then brings it back.
    pub fn away(&mut self, device: u32, from: Micros, until: Micros) {
        let key = K_AWAY | u64::from(device);
        self.queue.at(from, (key, 0), Event::Away(device));
        self.queue.at(until, (key, 1), Event::Return(device));
    }

    /// Loses relay instance `relay` at `at`: its devices reconnect to another.
    pub fn lose_relay(&mut self, relay: u16, at: Micros) {
        self.queue
            .at(at, (K_KILL | u64::from(relay), 0), Event::Kill(relay));
    }

    /// At `at` the admin revokes `targets`: the records reach relay instance 0 at once and the
    /// others through the database.
    pub fn revoke(&mut self, at: Micros, targets: Vec<u32>) {
        let users = self.shape.users as usize;
        self.revoking = Some(Revoking {
            at,
            targets,
            relays_knew: vec![None; self.relays.len()],
            spread: Histogram::default(),
            left: vec![0; users],
            rotating: vec![false; users],
            rotated: Histogram::default(),
            refused: 0,
        });
        self.queue.at(at, (K_REVOKE, 0), Event::Revoke);
    }

    /// Runs every event due up to `until`.
    pub fn run_until(&mut self, until: Micros) {
        while let Some(event) = self.queue.next(until) {
            self.step(event);
        }
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Write(device) => self.write(device),
            Event::Connect(device) => self.connect(device),
            Event::Up {
                device,
                generation,
                message,
            } => self.at_relay(device, generation, message),
            Event::Down {
                device,
                generation,
                message,
            } => self.at_device(device, generation, message),
            Event::Announce {
                relay,
                user,
                message,
            } => self.announced(relay, user, message),
            Event::Cut(site) => self.cut_site(site),
            Event::Heal(site) => self.heal_site(site),
            Event::Away(device) => {
                if let Some(d) = self.devices.get_mut(device as usize) {
                    d.away = true;
                }
                self.disconnect(device);
            }
            Event::Return(device) => self.come_back(device),
            Event::Kill(relay) => self.kill_relay(relay),
            Event::Revoke => self.revoke_now(),
            Event::Learn(relay) => self.relay_learns(relay),
        }
    }

    fn schedule_write(&mut self, device: u32, from: Micros) {
        let Some(d) = self.devices.get_mut(device as usize) else {
            return;
        };
        let stream = K_WRITE | u64::from(device);
        if let Some((at, n)) = next_write(
            &self.draws,
            &self.traffic,
            stream,
            &mut d.writes,
            from,
            self.writing_until,
        ) {
            self.queue.at(at, (stream, n), Event::Write(device));
        }
    }

    fn write(&mut self, device: u32) {
        let now = self.queue.now();
        self.schedule_write(device, now);
        let dpu = self.dpu() as usize;
        // Slot 0 is the user's first device, whose change 1 created the conversation.
        let holds_doc = self.has.get(device as usize * dpu).copied().unwrap_or(0) > 0;
        let Some(d) = self.devices.get_mut(device as usize) else {
            return;
        };
        if d.away {
            return;
        }
        if !holds_doc {
            // The user's conversation has not reached it yet.
            self.tally.writes_before_the_doc_arrived += 1;
            return;
        }
        d.sealed += 1;
        let seq = d.sealed;
        let live = d.conn == Conn::Live;
        if let Some(w) = self.written.get_mut(device as usize) {
            w.push(now);
        }
        if let Some(h) = self
            .has
            .get_mut(device as usize * dpu + device as usize % dpu)
        {
            *h = seq;
        }
        self.tally.changes_written += 1;
        if live {
            let leaves = now + self.costs.seal_us.round() as Micros;
            self.send_up(
                device,
                Up::Changes {
                    from: seq,
                    to: seq,
                    sent_at: Some(now),
                },
                leaves,
            );
        }
    }

    fn up_bytes(&self, message: Up) -> u64 {
        match message {
            Up::Hello => u64::from(self.sizes.have),
            Up::Changes { from, to, .. } => {
                u64::from(to.saturating_sub(from) + 1) * u64::from(self.sizes.change)
            }
            Up::Keys { .. } => u64::from(self.sizes.key_record),
        }
    }

    fn down_bytes(&self, message: Down) -> u64 {
        let revocations = || {
            self.revoking.as_ref().map_or(0, |r| {
                r.targets.len() as u64 * u64::from(self.sizes.revocation)
            })
        };
        match message {
            Down::Welcome {
                epoch,
                revocations: with,
                ..
            } => {
                u64::from(self.sizes.have)
                    + if with { revocations() } else { 0 }
                    + if epoch > 0 {
                        u64::from(self.sizes.key_record)
                    } else {
                        0
                    }
            }
            Down::Changes { from, to, .. } => {
                u64::from(to.saturating_sub(from) + 1) * u64::from(self.sizes.change)
            }
            Down::Ack { .. } => u64::from(self.sizes.have),
            Down::Revocations => revocations(),
            Down::Keys { .. } => u64::from(self.sizes.key_record),
        }
    }

    fn send_up(&mut self, device: u32, message: Up, at: Micros) {
        let bytes = self.up_bytes(message);
        let Some(d) = self.devices.get_mut(device as usize) else {
            return;
        };
        let stream = K_UP | u64::from(device);
        let (arrives, n) =
            d.up.send_ordered(&self.link, &self.draws, stream, at, bytes as usize);
        let generation = d.generation;
        self.tally.messages_up += 1;
        self.tally.bytes_up += bytes;
        self.queue.at(
            arrives,
            (stream, n),
            Event::Up {
                device,
                generation,
                message,
            },
        );
    }

    fn send_down(&mut self, device: u32, message: Down, at: Micros) {
        let bytes = self.down_bytes(message);
        let Some(d) = self.devices.get_mut(device as usize) else {
            return;
        };
        let stream = K_DOWN | u64::from(device);
        let (arrives, n) = d
            .down
            .send_ordered(&self.link, &self.draws, stream, at, bytes as usize);
        let generation = d.generation;
        self.tally.messages_down += 1;
        self.tally.bytes_down += bytes;
        self.queue.at(
            arrives,
            (stream, n),
            Event::Down {
                device,
                generation,
                message,
            },
        );
    }

    /// Whether `device` is admitted on this connection at `relay`.
    fn attached_at(&self, device: u32, relay: u16) -> bool {
        self.devices.get(device as usize).is_some_and(|d| {
            d.relay == relay
                && d.conn != Conn::Off
                && self.attached.get(device as usize) == Some(&d.generation)
        })
    }

    fn user_devices(&self, user: u32) -> std::ops::Range<u32> {
        user * self.dpu()..(user + 1) * self.dpu()
    }

    fn at_relay(&mut self, device: u32, generation: u32, message: Up) {
        let now = self.queue.now();
        let Some(d) = self.devices.get(device as usize) else {
            return;
        };
        if d.generation != generation || d.conn == Conn::Off {
            self.tally.dropped_with_connection += 1;
            return;
        }
        let (r, user, revoked) = (d.relay, d.user, d.revoked);
        let Some(relay) = self.relays.get_mut(usize::from(r)) else {
            return;
        };
        if !relay.alive {
            self.tally.dropped_with_connection += 1;
            return;
        }
        if revoked && relay.knows_revocations {
            self.tally.refused_by_relay += 1;
            if let Some(rv) = self.revoking.as_mut() {
                rv.refused += 1;
            }
            self.disconnect(device);
            return;
        }
        match message {
            Up::Hello => {
                let done = relay.serve(now, self.costs.chain_verify_us);
                relay.connections += 1;
                let with_revocations = relay.knows_revocations;
                self.connected += 1;
                self.tally.connections_peak = self.tally.connections_peak.max(self.connected);
                if let Some(a) = self.attached.get_mut(device as usize) {
                    *a = generation;
                }
                let dpu = self.dpu();
                for writer in self.user_devices(user) {
                    if writer == device {
                        continue;
                    }
                    let held = self
                        .has
                        .get((device * dpu + writer % dpu) as usize)
                        .copied()
                        .unwrap_or(0);
                    let stored = self.stored.get(writer as usize).copied().unwrap_or(0);
                    if stored > held {
                        self.send_down(
                            device,
                            Down::Changes {
                                writer,
                                from: held + 1,
                                to: stored,
                            },
                            done,
                        );
                    }
                }
                let own_stored = self.stored.get(device as usize).copied().unwrap_or(0);
                let epoch = self.user_epoch.get(user as usize).copied().unwrap_or(0);
                let knows = self.devices.get(device as usize).is_some_and(|d| d.knows);
                self.send_down(
                    device,
                    Down::Welcome {
                        own_stored,
                        epoch,
                        revocations: with_revocations && !knows,
                    },
                    done,
                );
            }
            Up::Changes { from, to, sent_at } => {
                if self.attached.get(device as usize) != Some(&generation) {
                    self.tally.dropped_with_connection += 1;
                    return;
                }
                let count = to.saturating_sub(from) + 1;
                let done = relay.serve(
                    now,
                    f64::from(count)
                        * (self.costs.signature_verify_us + self.costs.relay_change_us),
                );
                let Some(stored) = self.stored.get_mut(device as usize) else {
                    return;
                };
                let old = *stored;
                if from > old + 1 {
                    self.gaps += 1;
                    return;
                }
                if to > old {
                    *stored = to;
                    relay.stored_bytes += u64::from(to - old) * u64::from(self.sizes.change);
                }
                self.send_down(device, Down::Ack { sent_at }, done);
                if to > old {
                    self.fan_out(
                        r,
                        user,
                        Down::Changes {
                            writer: device,
                            from: old + 1,
                            to,
                        },
                        done,
                    );
                }
            }
            Up::Keys { epoch } => {
                let done = relay.serve(now, self.costs.signature_verify_us);
                relay.stored_bytes += u64::from(self.sizes.key_record);
                if let Some(e) = self.user_epoch.get_mut(user as usize) {
                    *e = (*e).max(epoch);
                }
                self.send_down(device, Down::Ack { sent_at: None }, done);
                self.fan_out(r, user, Down::Keys { epoch }, done);
            }
        }
    }

    /// Sends `message` to the user's other devices on `relay`, and announces it to the other
    /// instances holding one of them (the database's notification).
    fn fan_out(&mut self, relay: u16, user: u32, message: Down, at: Micros) {
        self.deliver_on(relay, user, message, at);
        if !self.shape.shared_database {
            return;
        }
        let mut elsewhere: Vec<u16> = Vec::new();
        for device in self.user_devices(user) {
            let Some(d) = self.devices.get(device as usize) else {
                continue;
            };
            if d.relay != relay && d.conn != Conn::Off && !elsewhere.contains(&d.relay) {
                elsewhere.push(d.relay);
            }
        }
        for other in elsewhere {
            self.announcements += 1;
            self.queue.at(
                at + DB_NOTIFY,
                (K_ANNOUNCE | u64::from(other), self.announcements),
                Event::Announce {
                    relay: other,
                    user,
                    message,
                },
            );
        }
    }

    /// `message` to each device of `user` admitted at `relay` that does not already have it.
    fn deliver_on(&mut self, relay: u16, user: u32, message: Down, at: Micros) {
        for device in self.user_devices(user) {
            let skip = match message {
                Down::Changes { writer, .. } => writer == device,
                Down::Keys { epoch } => self
                    .devices
                    .get(device as usize)
                    .is_some_and(|d| d.epoch >= epoch),
                _ => false,
            };
            if !skip && self.attached_at(device, relay) {
                self.send_down(device, message, at);
            }
        }
    }

    fn announced(&mut self, relay: u16, user: u32, message: Down) {
        if self.relays.get(usize::from(relay)).is_some_and(|r| r.alive) {
            let now = self.queue.now();
            self.deliver_on(relay, user, message, now);
        }
    }

    fn at_device(&mut self, device: u32, generation: u32, message: Down) {
        let now = self.queue.now();
        let Some(d) = self.devices.get_mut(device as usize) else {
            return;
        };
        if d.generation != generation || d.conn == Conn::Off {
            self.tally.dropped_with_connection += 1;
            return;
        }
        match message {
            Down::Welcome {
                own_stored,
                epoch,
                revocations,
            } => {
                d.conn = Conn::Live;
                let sealed = d.sealed;
                if revocations {
                    self.learn(device);
                }
                self.set_epoch(device, epoch);
                if sealed > own_stored {
                    self.send_up(
                        device,
                        Up::Changes {
                            from: own_stored + 1,
                            to: sealed,
                            sent_at: None,
                        },
                        now,
                    );
                }
            }
            Down::Changes { writer, from, to } => self.take(device, writer, from, to),
            Down::Ack { sent_at } => {
                if let Some(sent) = sent_at {
                    self.acks.record(now.saturating_sub(sent));
                }
            }
            Down::Revocations => self.learn(device),
            Down::Keys { epoch } => self.set_epoch(device, epoch),
        }
    }

    /// `device` takes `writer`'s changes `from..=to`.
    fn take(&mut self, device: u32, writer: u32, from: u32, to: u32) {
        let now = self.queue.now();
        let dpu = self.dpu();
        let Some(held) = self.has.get_mut((device * dpu + writer % dpu) as usize) else {
            return;
        };
        if from > *held + 1 {
            self.gaps += 1;
            return;
        }
        if to <= *held {
            return;
        }
        let first = *held + 1;
        *held = to;
        let receive = self.costs.receive_us();
        let written = self.written.get(writer as usize);
        let backlog_target = self
            .backlog
            .as_ref()
            .and_then(|b| b.snapshot.get(writer as usize).copied())
            .unwrap_or(0);
        for (k, seq) in (first..=to).enumerate() {
            let at = written
                .and_then(|w| w.get(seq as usize - 1))
                .copied()
                .unwrap_or(now);
            // What was written before the warm-up's end (a conversation's creation) is not
            // measured, as in the full model.
            if at >= WARM_UP {
                let ready = now + ((k + 1) as f64 * receive).round() as Micros;
                self.latencies.record(ready.saturating_sub(at));
                self.tally.deliveries += 1;
            }
        }
        if let Some(b) = self.backlog.as_mut()
            && b.left > 0
            && first <= backlog_target
        {
            let counted = u64::from(backlog_target.min(to) - first + 1);
            b.left = b.left.saturating_sub(counted);
            if b.left == 0 {
                b.cleared = Some(now);
            }
        }
    }

    fn learn(&mut self, device: u32) {
        let now = self.queue.now();
        let Some(d) = self.devices.get_mut(device as usize) else {
            return;
        };
        if d.knows {
            return;
        }
        d.knows = true;
        let (user, revoked, live) = (d.user, d.revoked, d.conn == Conn::Live);
        let Some(rv) = self.revoking.as_mut() else {
            return;
        };
        rv.spread.record(now.saturating_sub(rv.at));
        // The first remaining device of an affected user to hear of it rotates the key.
        let affected = rv.left.get(user as usize).copied().unwrap_or(0) > 0;
        let Some(rotating) = rv.rotating.get_mut(user as usize) else {
            return;
        };
        if affected && !revoked && live && !*rotating {
            *rotating = true;
            let epoch = self.user_epoch.get(user as usize).copied().unwrap_or(0) + 1;
            self.set_epoch(device, epoch);
            self.send_up(device, Up::Keys { epoch }, now);
        }
    }

    fn set_epoch(&mut self, device: u32, epoch: u32) {
        let now = self.queue.now();
        let Some(d) = self.devices.get_mut(device as usize) else {
            return;
        };
        if epoch <= d.epoch {
            return;
        }
        d.epoch = epoch;
        let (user, revoked) = (d.user, d.revoked);
        if let Some(rv) = self.revoking.as_mut()
            && !revoked
            && let Some(left) = rv.left.get_mut(user as usize)
            && *left > 0
        {
            *left -= 1;
            if *left == 0 {
                rv.rotated.record(now.saturating_sub(rv.at));
            }
        }
    }

    fn connect(&mut self, device: u32) {
        let now = self.queue.now();
        let Some(d) = self.devices.get_mut(device as usize) else {
            return;
        };
        let relay_alive = self
            .relays
            .get(usize::from(d.relay))
            .is_some_and(|r| r.alive);
        if d.conn != Conn::Off
            || d.away
            || self.cut.get(usize::from(d.site)).copied().unwrap_or(false)
            || !relay_alive
        {
            return;
        }
        d.generation += 1;
        d.connects += 1;
        d.conn = Conn::Hello;
        self.tally.connects += 1;
        self.send_up(device, Up::Hello, now);
    }

    fn disconnect(&mut self, device: u32) {
        let Some(d) = self.devices.get_mut(device as usize) else {
            return;
        };
        if d.conn == Conn::Off {
            return;
        }
        if self.attached.get(device as usize) == Some(&d.generation) {
            if let Some(r) = self.relays.get_mut(usize::from(d.relay)) {
                r.connections = r.connections.saturating_sub(1);
            }
            self.connected = self.connected.saturating_sub(1);
        }
        d.generation += 1;
        d.conn = Conn::Off;
    }

    /// Reconnects `device` within its backoff (up to 5 s).
    fn reconnect_soon(&mut self, device: u32) {
        let now = self.queue.now();
        let connects = self.devices.get(device as usize).map_or(0, |d| d.connects);
        let key = K_CONNECT | u64::from(device);
        let delay = (self.draws.unit(key, connects) * 5.0 * SECOND as f64) as Micros;
        self.queue
            .at(now + delay, (key, connects), Event::Connect(device));
    }

    fn on_site(&self, site: u16) -> Vec<u32> {
        (0..self.devices.len() as u32)
            .filter(|&i| self.devices.get(i as usize).is_some_and(|d| d.site == site))
            .collect()
    }

    fn cut_site(&mut self, site: u16) {
        if let Some(cut) = self.cut.get_mut(usize::from(site)) {
            *cut = true;
        }
        for device in self.on_site(site) {
            self.disconnect(device);
        }
    }

    fn heal_site(&mut self, site: u16) {
        if let Some(cut) = self.cut.get_mut(usize::from(site)) {
            *cut = false;
        }
        self.start_backlog();
        for device in self.on_site(site) {
            self.reconnect_soon(device);
        }
    }

    fn come_back(&mut self, device: u32) {
        let now = self.queue.now();
        if let Some(d) = self.devices.get_mut(device as usize) {
            d.away = false;
        }
        self.start_backlog();
        let connects = self.devices.get(device as usize).map_or(0, |d| d.connects);
        self.queue.at(
            now,
            (K_CONNECT | u64::from(device), connects),
            Event::Connect(device),
        );
    }

    /// From now, counts down what some device of a user still lacks of what was written.
    fn start_backlog(&mut self) {
        let now = self.queue.now();
        let snapshot: Vec<u32> = self.devices.iter().map(|d| d.sealed).collect();
        let dpu = self.dpu();
        let mut size = 0u64;
        for (device, d) in self.devices.iter().enumerate() {
            if d.revoked {
                continue;
            }
            for writer in self.user_devices(d.user) {
                let held = self
                    .has
                    .get(device * dpu as usize + (writer % dpu) as usize)
                    .copied()
                    .unwrap_or(0);
                let target = snapshot.get(writer as usize).copied().unwrap_or(0);
                size += u64::from(target.saturating_sub(held));
            }
        }
        self.backlog = Some(Backlog {
            snapshot,
            size,
            left: size,
            since: now,
            cleared: (size == 0).then_some(now),
        });
    }

    fn kill_relay(&mut self, relay: u16) {
        let Some(r) = self.relays.get_mut(usize::from(relay)) else {
            return;
        };
        r.alive = false;
        let survivor = (0..self.relays.len() as u16)
            .find(|&s| self.relays.get(usize::from(s)).is_some_and(|r| r.alive));
        let on_it: Vec<u32> = (0..self.devices.len() as u32)
            .filter(|&i| {
                self.devices
                    .get(i as usize)
                    .is_some_and(|d| d.relay == relay)
            })
            .collect();
        for device in on_it {
            self.disconnect(device);
            let Some(survivor) = survivor else {
                continue;
            };
            if let Some(d) = self.devices.get_mut(device as usize) {
                d.relay = survivor;
            }
            self.moved += 1;
            self.reconnect_soon(device);
        }
    }

    fn revoke_now(&mut self) {
        let Some(rv) = self.revoking.as_mut() else {
            return;
        };
        let targets = rv.targets.clone();
        for &t in &targets {
            if let Some(d) = self.devices.get_mut(t as usize) {
                d.revoked = true;
            }
        }
        for &t in &targets {
            let Some(user) = self.devices.get(t as usize).map(|d| d.user) else {
                continue;
            };
            let remaining = self
                .user_devices(user)
                .filter(|&o| self.devices.get(o as usize).is_some_and(|d| !d.revoked))
                .count() as u32;
            if let Some(rv) = self.revoking.as_mut()
                && let Some(left) = rv.left.get_mut(user as usize)
            {
                *left = remaining;
            }
        }
        let now = self.queue.now();
        self.relay_learns(0);
        for relay in 1..self.relays.len() as u16 {
            self.queue.at(
                now + DB_NOTIFY,
                (K_REVOKE | u64::from(relay), 1),
                Event::Learn(relay),
            );
        }
    }

    /// `relay` holds the revocations: it drops the revoked devices' connections and sends the
    /// records to every other device it has admitted.
    fn relay_learns(&mut self, relay: u16) {
        let now = self.queue.now();
        let count = self.revoking.as_ref().map_or(0, |r| r.targets.len());
        let Some(r) = self.relays.get_mut(usize::from(relay)) else {
            return;
        };
        if !r.alive || r.knows_revocations {
            return;
        }
        r.knows_revocations = true;
        // Each record's signature is checked once.
        let done = r.serve(now, count as f64 * self.costs.signature_verify_us);
        if let Some(rv) = self.revoking.as_mut()
            && let Some(knew) = rv.relays_knew.get_mut(usize::from(relay))
        {
            *knew = Some(now);
        }
        for device in 0..self.devices.len() as u32 {
            if !self.attached_at(device, relay) {
                continue;
            }
            let Some(d) = self.devices.get(device as usize) else {
                continue;
            };
            if d.revoked {
                self.disconnect(device);
                if let Some(rv) = self.revoking.as_mut() {
                    rv.refused += 1;
                }
                self.tally.refused_by_relay += 1;
            } else if !d.knows {
                self.send_down(device, Down::Revocations, done);
            }
        }
    }

    /// Records the fleet's connections, CPU and storage now (called between steps).
    pub fn sample(&mut self) {
        let now = self.queue.now();
        let span = now.saturating_sub(self.last_sample).max(1) as f64;
        self.last_sample = now;
        let cores = f64::from(self.costs.relay_cores.max(1));
        let mut sample = Sample {
            at_s: now as f64 / SECOND as f64,
            connections: Vec::new(),
            cpu: Vec::new(),
            storage_bytes: Vec::new(),
        };
        for r in &mut self.relays {
            sample.connections.push(r.connections);
            sample
                .cpu
                .push((r.busy_us - r.busy_at_last_sample) as f64 / (span * cores));
            r.busy_at_last_sample = r.busy_us;
            sample.storage_bytes.push(r.stored_bytes);
        }
        self.series.push(sample);
    }

    /// What each receiver should hold of each writer: all it sealed, or for a revoked writer
    /// what the fleet stored.
    fn target(&self, writer: u32) -> u32 {
        self.devices.get(writer as usize).map_or(0, |w| {
            if w.revoked {
                self.stored.get(writer as usize).copied().unwrap_or(0)
            } else {
                w.sealed
            }
        })
    }

    /// (devices missing something, changes missing) over the devices not revoked.
    pub fn unconverged(&self) -> (usize, u64) {
        let dpu = self.dpu();
        let (mut devices, mut changes) = (0, 0u64);
        for (device, d) in self.devices.iter().enumerate() {
            if d.revoked {
                continue;
            }
            let mut missing = 0;
            for writer in self.user_devices(d.user) {
                let held = self
                    .has
                    .get(device * dpu as usize + (writer % dpu) as usize)
                    .copied()
                    .unwrap_or(0);
                missing += u64::from(self.target(writer).saturating_sub(held));
            }
            if missing > 0 {
                devices += 1;
                changes += missing;
            }
        }
        (devices, changes)
    }

    /// Changes devices sealed that the fleet's store does not hold (revoked devices' left out).
    pub fn missing_from_database(&self) -> u64 {
        self.devices
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.revoked)
            .map(|(i, d)| {
                u64::from(
                    d.sealed
                        .saturating_sub(self.stored.get(i).copied().unwrap_or(0)),
                )
            })
            .sum()
    }

    /// From the last heal or return until all then outstanding had arrived.
    pub fn healed_in(&self) -> Option<Micros> {
        let b = self.backlog.as_ref()?;
        Some(b.cleared?.saturating_sub(b.since))
    }

    pub fn backlog_at_return(&self) -> u64 {
        self.backlog.as_ref().map_or(0, |b| b.size)
    }

    pub fn relay_storage(&self) -> Vec<u64> {
        let all: Vec<u64> = self.relays.iter().map(|r| r.stored_bytes).collect();
        if self.shape.shared_database {
            vec![all.iter().sum()]
        } else {
            all
        }
    }

    pub fn relay_connections(&self) -> Vec<u64> {
        self.relays.iter().map(|r| r.connections).collect()
    }

    /// The revocation's figures, once it has happened.
    pub fn revocation_report(&self) -> Option<RevocationReport> {
        let rv = self.revoking.as_ref()?;
        let ms = |us: Micros| us as f64 / MS as f64;
        let all_relays = rv
            .relays_knew
            .iter()
            .zip(&self.relays)
            .filter(|(_, r)| r.alive)
            .map(|(k, _)| *k)
            .collect::<Option<Vec<Micros>>>()
            .and_then(|v| v.into_iter().max())
            .map(|t| ms(t.saturating_sub(rv.at)));
        let unaware = self
            .devices
            .iter()
            .filter(|d| !d.revoked && !d.knows)
            .count() as u64;
        let affected = rv
            .targets
            .iter()
            .filter_map(|&t| self.devices.get(t as usize).map(|d| d.user))
            .collect::<std::collections::BTreeSet<u32>>();
        Some(RevocationReport {
            at_s: rv.at as f64 / SECOND as f64,
            revoked_devices: rv.targets.len(),
            users_affected: affected.len(),
            all_relays_refuse_after_ms: all_relays,
            spread_ms: rv.spread.quantiles(),
            devices_unaware_at_end: unaware,
            key_rotated_ms: rv.rotated.quantiles(),
            users_not_rotated_at_end: rv.left.iter().filter(|&&l| l > 0).count() as u64,
            connections_refused: rv.refused,
        })
    }

    /// The revocation's spread, as values at evenly spaced ranks (µs), for a plot.
    pub fn revocation_spread(&self) -> Vec<u64> {
        self.revoking
            .as_ref()
            .map_or_else(Vec::new, |r| r.spread.ranks(2_000))
    }

    /// The org's devices whose user is `user % every == 0`, last device of each: a departing
    /// team's laptops.
    pub fn every_nth_users_last_device(&self, every: u32) -> Vec<u32> {
        (0..self.shape.users)
            .filter(|u| u % every.max(1) == 0)
            .map(|u| (u + 1) * self.dpu() - 1)
            .collect()
    }

    /// Puts a `share` of the devices away at a random time in `[from, until)` and back at a
    /// random time in `[until, back_by)` (laptops shut, phones without signal).
    pub fn some_away(&mut self, share: f64, from: Micros, until: Micros, back_by: Micros) {
        const STREAM: u64 = 0x0FF_0000_0000_0000;
        for device in 0..self.devices.len() as u32 {
            if self.draws.unit(STREAM, u64::from(device) * 3) >= share {
                continue;
            }
            let span = |a: Micros, b: Micros, k: u64| {
                a + (self.draws.unit(STREAM, u64::from(device) * 3 + k) * (b - a) as f64) as Micros
            };
            let (leave, back) = (span(from, until, 1), span(until, back_by, 2));
            self.away(device, leave, back);
        }
    }

    /// Minutes between samples for a run of `hours`.
    pub fn sample_every(hours: u64) -> Micros {
        if hours > 24 { 60 * MINUTE } else { MINUTE }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    #[test]
    fn costs_come_from_jarvis_bench_output_and_say_what_is_missing() {
        let text = "sealing…\n{\"bench\":\"crdt-seal\",\"metric\":\"sealed_changes_per_sec\",\"ours\":50000.0,\"reference\":1.0,\"ratio\":1.0,\"goal\":null,\"unit\":\"changes/s\"}\n{\"bench\":\"identity-verify\",\"metric\":\"chain_verifications_per_sec\",\"ours\":4000.0,\"reference\":null,\"ratio\":null,\"goal\":null,\"unit\":\"chains/s\"}\n";
        let costs = Costs::from_bench_output("costs.jsonl", text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(costs.seal_us, 20.0);
        assert_eq!(costs.chain_verify_us, 250.0);
        assert_eq!(costs.signature_verify_us, 62.5);
        let missing = Costs::from_bench_output(
            "c",
            text.lines().take(2).collect::<Vec<_>>().join("\n").as_str(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string());
        assert_eq!(
            missing,
            Err("c: no `chain_verifications_per_sec` figure of `identity-verify`: write it there with `jarvis-bench identity-verify --json >> c`".into())
        );
        assert!(Costs::from_bench_output("c", "{not json").is_err());
    }

    #[test]
    fn sizes_are_the_real_encodings() {
        let sizes = Sizes::measure(3).unwrap_or_else(|e| panic!("{e}"));
        // A change carries the 72-character message, sealed and signed (64), with its header.
        assert!(sizes.change > 72 + 64, "{sizes:?}");
        assert!(sizes.have > 3 * 32, "three devices' keys: {sizes:?}");
        assert!(
            sizes.key_record > sizes.have && sizes.revocation > 64,
            "{sizes:?}"
        );
        assert_eq!(
            Sizes::measure(3).map(|s| s.key_record).ok(),
            Some(sizes.key_record),
            "without age's grease, a key record's size is fixed"
        );
    }
}

/// What [`probe`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct Probed {
    /// Write → arrival at the user's other devices.
    pub convergence_ms: crate::engine::Quantiles,
    /// A change sent as written → its acknowledgement.
    pub ack_ms: crate::engine::Quantiles,
    /// The busiest relay core share over the run.
    pub relay_cpu: f64,
}

/// A small steady run for comparing with a real one (`jarvis-bench sim-validate`): `users` ×
/// `devices_per_user` on one relay instance, each device writing `changes_per_device_per_hour`
/// at the day's peak over `link`, measured for `seconds` after the warm-up.
pub fn probe(
    seed: u64,
    users: u32,
    devices_per_user: u32,
    changes_per_device_per_hour: f64,
    link: LinkModel,
    costs: Costs,
    seconds: u64,
) -> Result<Probed, BuildError> {
    let end = WARM_UP + seconds * SECOND;
    let shape = Shape {
        users,
        devices_per_user,
        relays: 1,
        sites: 1,
        shared_database: false,
    };
    let traffic = Traffic {
        changes_per_device_per_hour,
        // The peak of the working day's curve: writes are not thinned.
        start_hour: 10.5,
    };
    let mut world = LightWorld::new(seed, shape, traffic, link, end, costs)?;
    world.run_until(end + 5 * SECOND);
    world.sample();
    let relay_cpu = world
        .series
        .iter()
        .flat_map(|s| s.cpu.iter().copied())
        .fold(0.0, f64::max);
    Ok(Probed {
        convergence_ms: world.latencies.quantiles(),
        ack_ms: world.acks.quantiles(),
        relay_cpu,
    })
}

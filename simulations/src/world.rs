//! The simulated org: devices with real replicas and real sync sessions, relay instances running
//! the real relay hub, and the modelled network between them (see [`crate::net`]).
//!
//! Everything a device or relay does is the project's own code: [`Replica::edit`] seals and signs
//! each change (real ChaCha20-Poly1305 and Ed25519), [`Session`] decides what to send,
//! [`Hub`] stores, rate-limits, acknowledges and fans out, and every message crosses the
//! modelled network encoded, as bytes, and is decoded by the receiver as untrusted input. Only
//! time is virtual: the work takes wall time, not simulated time (the report says so).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use jarvis_crdt::doc::{Doc, NewMessage, Role, Status};
use jarvis_crdt::store::MemStore;
use jarvis_crdt::{DocId, KeyId, Replica, Session, Store, SyncMessage};
use jarvis_identity::{Name, PublicKey, SecretKey};
use jarvis_relay::hub::{Hub, Limits};

use crate::engine::{Draws, HOUR, MS, Micros, Queue, SECOND};
use crate::net::{Link, LinkModel};
use crate::store::SimStore;

/// Who is in the org and where.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Shape {
    pub users: u32,
    pub devices_per_user: u32,
    pub relays: u16,
    /// Sites (offices, homes) the users are spread over; a partition cuts one off.
    pub sites: u16,
    /// The instances share one database (as on PostgreSQL), a user's devices are spread over
    /// them, and what one instance stores is announced to the others; else each instance has
    /// its own storage and all of a user's devices use one instance.
    pub shared_database: bool,
}

/// How much the devices write.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Traffic {
    /// Changes a device writes per hour at the day's peak (a question, then an answer streaming
    /// in, is several changes).
    pub changes_per_device_per_hour: f64,
    /// The hour of day the run starts at (the load follows a working day's curve).
    pub start_hour: f64,
}

/// A working day's load, 0..=1, by hour of day: quiet at night, rising from 7, a peak mid
/// morning and mid afternoon, a dip at lunch.
pub fn diurnal(hour: f64) -> f64 {
    let h = hour.rem_euclid(24.0);
    let bump = |centre: f64, width: f64| (-((h - centre) / width).powi(2)).exp();
    (0.05 + 0.95 * bump(10.5, 2.0).max(bump(15.0, 2.2)) - 0.25 * bump(12.5, 0.6)).clamp(0.02, 1.0)
}

/// A device's next write after `from` (before `until`): a Poisson process at the peak rate,
/// thinned by the time of day. `counter` counts the draws of `stream` used so far; returns the
/// time and the write's number (unique for the stream, to key its event).
pub fn next_write(
    draws: &Draws,
    traffic: &Traffic,
    stream: u64,
    counter: &mut u64,
    from: Micros,
    until: Micros,
) -> Option<(Micros, u64)> {
    let mean = HOUR as f64 / traffic.changes_per_device_per_hour.max(1e-9);
    let mut at = from;
    loop {
        let n = *counter;
        *counter += 1;
        at += draws.exponential(stream, n * 2, mean) as Micros;
        if at >= until {
            return None;
        }
        let hour = traffic.start_hour + at as f64 / HOUR as f64;
        if draws.unit(stream, n * 2 + 1) < diurnal(hour) {
            return Some((at, n));
        }
    }
}

#[derive(Debug)]
enum Event {
    Write {
        device: u32,
    },
    ToRelay {
        device: u32,
        generation: u32,
        bytes: Vec<u8>,
    },
    ToDevice {
        device: u32,
        generation: u32,
        bytes: Vec<u8>,
    },
    DeviceTimer {
        device: u32,
        generation: u32,
    },
    RelayTimer {
        relay: u16,
    },
    Cut {
        site: u16,
    },
    /// The device is put away (its user does not use it) until `Return`.
    Away {
        device: u32,
    },
    Return {
        device: u32,
    },
    Heal {
        site: u16,
    },
    Connect {
        device: u32,
    },
    /// Another instance stored these for `user` (the shared database's notification).
    Announce {
        relay: u16,
        user: u32,
        changes: Vec<(DocId, PublicKey, u64, u64)>,
        keys: Vec<(DocId, KeyId)>,
    },
    KillRelay {
        relay: u16,
    },
}

// Event-key kinds (the high bits of the key's first half): see `engine` on determinism.
const K_UP: u64 = 1 << 56;
const K_DOWN: u64 = 2 << 56;
const K_WRITE: u64 = 3 << 56;
const K_TIMER: u64 = 4 << 56;
const K_RELAY: u64 = 5 << 56;
const K_SITE: u64 = 6 << 56;
const K_CONNECT: u64 = 7 << 56;
const K_ANNOUNCE: u64 = 8 << 56;
const K_KILL: u64 = 9 << 56;
const K_AWAY: u64 = 10 << 56;

/// From one instance's commit to the others' hearing of it through the database.
pub(crate) const DB_NOTIFY: Micros = 5 * MS;

/// Users' rows in the database the instances share.
type Database = Arc<Mutex<BTreeMap<Name, Arc<Mutex<MemStore>>>>>;

/// What every write appends (72 characters).
pub(crate) const MESSAGE: &str =
    "What's on my calendar after lunch, and can you move the review to Friday?";

/// Devices connect during this time at the start; writing starts after it.
pub const WARM_UP: Micros = 10 * SECOND;

/// How often each relay instance runs its sessions' timers.
const RELAY_TICK: Micros = SECOND;

struct Device {
    user: u32,
    site: u16,
    relay: u16,
    key: PublicKey,
    replica: Replica<MemStore>,
    session: Option<Session>,
    generation: u32,
    up: Link,
    down: Link,
    writes: u64,
    timers: u64,
    connects: u64,
    /// Changes this device sealed (its own sequence numbers run 1..=sealed).
    sealed: u64,
    /// Put away: it neither connects nor writes.
    away: bool,
}

/// Figures gathered while running.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Tally {
    pub changes_written: u64,
    /// Writes skipped because the device did not yet hold its user's conversation.
    pub writes_before_the_doc_arrived: u64,
    /// (change, other device of its user) pairs delivered.
    pub deliveries: u64,
    pub messages_up: u64,
    pub messages_down: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub refused_by_relay: u64,
    pub malformed: u64,
    pub session_errors: u64,
    pub dropped_with_connection: u64,
    pub connects: u64,
    pub connections_peak: u64,
}

/// The org, its network, and its clock.
pub struct World {
    queue: Queue<Event>,
    draws: Draws,
    pub link: LinkModel,
    pub shape: Shape,
    pub traffic: Traffic,
    devices: Vec<Device>,
    relays: Vec<Hub<u32, SimStore>>,
    alive: Vec<bool>,
    database: Option<Database>,
    announcements: u64,
    /// Devices moved to another instance when theirs was lost.
    pub moved: u64,
    users: Vec<(Name, DocId)>,
    actors: HashMap<PublicKey, u32>,
    /// The grease in each user's key record (see [`greased`]), left out of the storage counted.
    key_grease: HashMap<Name, u64>,
    /// (writer, seq) → (written at, other devices still to receive it).
    pending: HashMap<(u32, u64), (Micros, u32)>,
    /// Write → arrival at each other device of the user, µs.
    pub latencies: Vec<u64>,
    cut: Vec<bool>,
    /// Changes still undelivered when the last partition healed, and when they all arrived.
    backlog: HashSet<(u32, u64)>,
    backlog_size: usize,
    healed: Option<Micros>,
    backlog_cleared: Option<Micros>,
    writing_until: Micros,
    pub tally: Tally,
    connected: u64,
}

/// Why the world could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the org needs at least one user, one device per user and one relay")]
    Empty,
    #[error(transparent)]
    Replica(#[from] jarvis_crdt::replica::ReplicaError),
    #[error(transparent)]
    Name(#[from] jarvis_identity::encoding::DecodeError),
    #[error("measuring the real encodings' sizes: {0}")]
    Measure(String),
}

impl World {
    /// Builds the org: keys from the seed, each user's conversation created on their first
    /// device (its key wrapped to all of them), every device connecting in the first seconds.
    pub fn new(
        seed: u64,
        shape: Shape,
        traffic: Traffic,
        link: LinkModel,
        writing_until: Micros,
    ) -> Result<Self, BuildError> {
        if shape.users == 0 || shape.devices_per_user == 0 || shape.relays == 0 {
            return Err(BuildError::Empty);
        }
        let draws = Draws::new(seed);
        let sites = shape.sites.max(1);
        let mut devices = Vec::new();
        let mut users = Vec::new();
        let mut actors = HashMap::new();
        let pending = HashMap::new();
        let mut key_grease = HashMap::new();
        for user in 0..shape.users {
            let first = devices.len() as u32;
            let mut keys = Vec::new();
            let mut ages = Vec::new();
            for d in 0..shape.devices_per_user {
                let secret = SecretKey::from_seed(&draws.seed32(0xDE1CE, u64::from(first + d)));
                keys.push(secret);
                ages.push(age::x25519::Identity::generate());
            }
            let recipients: Vec<_> = ages.iter().map(age::x25519::Identity::to_public).collect();
            let publics: Vec<PublicKey> = keys.iter().map(SecretKey::public).collect();
            let site = (user % u32::from(sites)) as u16;
            let mut doc = None;
            let mut grease = 0;
            for (d, (secret, age)) in keys.into_iter().zip(ages).enumerate() {
                let index = first + d as u32;
                let key = secret.public();
                let mut replica = Replica::device(MemStore::new(), secret, age);
                replica.set_writers(publics.iter().copied());
                let mut sealed = 0;
                if d == 0 {
                    let (id, record, _) = replica.create(
                        |me| Doc::create_conversation(me, "a day's questions", 0),
                        &recipients,
                    )?;
                    doc = Some(id);
                    grease = greased(&record.encode());
                    sealed = 1;
                }
                actors.insert(key, index);
                // Spread over the instances device by device where they share a database,
                // else user by user.
                let spread = if shape.shared_database { index } else { user };
                let relay = (spread % u32::from(shape.relays)) as u16;
                devices.push(Device {
                    user,
                    site,
                    relay,
                    key,
                    replica,
                    session: None,
                    generation: 0,
                    up: Link::default(),
                    down: Link::default(),
                    writes: 0,
                    timers: 0,
                    connects: 0,
                    sealed,
                    away: false,
                });
            }
            let name = Name::new(&format!("user-{user}"))?;
            key_grease.insert(name.clone(), grease as u64);
            users.push((name, doc.ok_or(BuildError::Empty)?));
        }
        let database: Option<Database> = shape.shared_database.then(Database::default);
        let relays = (0..shape.relays)
            .map(|_| {
                let database = database.clone();
                Hub::new(
                    Limits::default(),
                    Box::new(move |user: &Name| {
                        Ok(match &database {
                            Some(db) => SimStore::Shared(Arc::clone(
                                db.lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .entry(user.clone())
                                    .or_default(),
                            )),
                            None => SimStore::Own(MemStore::new()),
                        })
                    }),
                )
            })
            .collect();
        let mut world = Self {
            queue: Queue::default(),
            draws,
            link,
            shape,
            traffic,
            devices,
            relays,
            alive: vec![true; usize::from(shape.relays)],
            database,
            announcements: 0,
            moved: 0,
            users,
            actors,
            key_grease,
            pending,
            latencies: Vec::new(),
            cut: vec![false; usize::from(sites)],
            backlog: HashSet::new(),
            backlog_size: 0,
            healed: None,
            backlog_cleared: None,
            writing_until,
            tally: Tally::default(),
            connected: 0,
        };
        for device in 0..world.devices.len() as u32 {
            // Devices come up over the warm-up; they write (and the convergence of what they
            // write is measured) from its end.
            let at =
                (world.draws.unit(K_CONNECT | u64::from(device), 0) * WARM_UP as f64) as Micros;
            world.queue.at(
                at,
                (K_CONNECT | u64::from(device), 0),
                Event::Connect { device },
            );
            world.schedule_write(device, WARM_UP);
        }
        for relay in 0..shape.relays {
            world.queue.at(
                RELAY_TICK,
                (K_RELAY | u64::from(relay), 0),
                Event::RelayTimer { relay },
            );
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

    /// Cuts `site` off from the relays at `at`, and heals it at `heal`.
    pub fn partition(&mut self, site: u16, at: Micros, heal: Micros) {
        let key = K_SITE | u64::from(site);
        self.queue.at(at, (key, 0), Event::Cut { site });
        self.queue.at(heal, (key, 1), Event::Heal { site });
    }

    /// Loses relay instance `relay` at `at`: its devices reconnect to another.
    pub fn lose_relay(&mut self, relay: u16, at: Micros) {
        self.queue.at(
            at,
            (K_KILL | u64::from(relay), 0),
            Event::KillRelay { relay },
        );
    }

    /// Puts `device` away from `from` to `until` (offline, not written on), then brings it back.
    pub fn away(&mut self, device: u32, from: Micros, until: Micros) {
        let key = K_AWAY | u64::from(device);
        self.queue.at(from, (key, 0), Event::Away { device });
        self.queue.at(until, (key, 1), Event::Return { device });
    }

    /// The device is back: what the others wrote meanwhile is its backlog (see
    /// [`World::healed_in`]).
    fn come_back(&mut self, device: u32) {
        let now = self.queue.now();
        if let Some(d) = self.devices.get_mut(device as usize) {
            d.away = false;
        }
        self.healed = Some(now);
        self.backlog = self.pending.keys().copied().collect();
        self.backlog_size = self.backlog.len();
        self.backlog_cleared = self.backlog.is_empty().then_some(now);
        let connects = self.devices.get(device as usize).map_or(0, |d| d.connects);
        self.queue.at(
            now,
            (K_CONNECT | u64::from(device), connects),
            Event::Connect { device },
        );
    }

    /// Changes waiting for a device put away when it came back.
    pub fn backlog_at_return(&self) -> usize {
        self.backlog_size
    }

    /// Runs every event due up to `until`.
    pub fn run_until(&mut self, until: Micros) {
        while let Some(event) = self.queue.next(until) {
            self.step(event);
        }
    }

    fn now_ms(&self) -> u64 {
        self.queue.now() / MS
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Write { device } => self.write(device),
            Event::ToRelay {
                device,
                generation,
                bytes,
            } => self.at_relay(device, generation, &bytes),
            Event::ToDevice {
                device,
                generation,
                bytes,
            } => self.at_device(device, generation, &bytes),
            Event::DeviceTimer { device, generation } => self.device_timer(device, generation),
            Event::RelayTimer { relay } => self.relay_timer(relay),
            Event::Cut { site } => self.cut_site(site),
            Event::Heal { site } => self.heal_site(site),
            Event::Connect { device } => self.connect(device),
            Event::Announce {
                relay,
                user,
                changes,
                keys,
            } => self.announced(relay, user, &changes, &keys),
            Event::KillRelay { relay } => self.kill_relay(relay),
            Event::Away { device } => {
                if let Some(d) = self.devices.get_mut(device as usize) {
                    d.away = true;
                }
                self.disconnect(device);
            }
            Event::Return { device } => self.come_back(device),
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
            self.queue.at(at, (stream, n), Event::Write { device });
        }
    }

    fn write(&mut self, device: u32) {
        let now = self.queue.now();
        self.schedule_write(device, now);
        let Some(d) = self.devices.get_mut(device as usize) else {
            return;
        };
        if d.away {
            return;
        }
        let Some((_, doc)) = self.users.get(d.user as usize) else {
            return;
        };
        let doc = *doc;
        if d.replica.doc(doc).is_none() {
            self.tally.writes_before_the_doc_arrived += 1;
            return;
        }
        let id = format!("m{device}-{}", d.sealed + 1);
        let text = MESSAGE;
        let sealed = d.replica.edit(doc, |doc, me| {
            doc.append(
                NewMessage {
                    id: &id,
                    role: Role::User,
                    text,
                    status: Status::Done,
                    now_ms: (now / MS) as i64,
                },
                me,
            )
        });
        let Ok(sealed) = sealed else {
            self.tally.session_errors += 1;
            return;
        };
        d.sealed += 1;
        self.tally.changes_written += 1;
        let others = self.shape.devices_per_user - 1;
        if others > 0 {
            self.pending
                .insert((device, sealed.header().seq), (now, others));
        }
        let Some(session) = d.session.as_mut() else {
            return;
        };
        match session.on_new_change(&sealed, &d.replica) {
            Ok(messages) => self.send_up(device, messages),
            Err(_) => self.tally.session_errors += 1,
        }
    }

    fn send_up(&mut self, device: u32, messages: Vec<SyncMessage>) {
        for message in &messages {
            self.transmit(device, true, message);
        }
    }

    fn send_down(&mut self, device: u32, message: &SyncMessage) {
        self.transmit(device, false, message);
    }

    /// Puts `message` on `device`'s connection, toward the relay (`up`) or from it.
    fn transmit(&mut self, device: u32, up: bool, message: &SyncMessage) {
        let now = self.queue.now();
        let Some(d) = self.devices.get_mut(device as usize) else {
            return;
        };
        if d.session.is_none() {
            return;
        }
        let bytes = message.encode();
        // Only key records carry age's grease (see [`greased`]).
        let wire = match message {
            SyncMessage::Keys { .. } => bytes.len() - greased(&bytes),
            _ => bytes.len(),
        };
        let (kind, link) = if up {
            (K_UP, &mut d.up)
        } else {
            (K_DOWN, &mut d.down)
        };
        let stream = kind | u64::from(device);
        let (at, n) = link.send(&self.link, &self.draws, stream, now, wire);
        let generation = d.generation;
        let event = if up {
            self.tally.messages_up += 1;
            self.tally.bytes_up += wire as u64;
            Event::ToRelay {
                device,
                generation,
                bytes,
            }
        } else {
            self.tally.messages_down += 1;
            self.tally.bytes_down += wire as u64;
            Event::ToDevice {
                device,
                generation,
                bytes,
            }
        };
        self.queue.at(at, (stream, n), event);
    }

    fn current(&self, device: u32, generation: u32) -> bool {
        self.devices
            .get(device as usize)
            .is_some_and(|d| d.generation == generation && d.session.is_some())
    }

    fn at_relay(&mut self, device: u32, generation: u32, bytes: &[u8]) {
        if !self.current(device, generation) {
            self.tally.dropped_with_connection += 1;
            return;
        }
        let now_ms = self.now_ms();
        let Some(relay) = self.devices.get(device as usize).map(|d| d.relay) else {
            return;
        };
        let Some(hub) = self.relays.get_mut(usize::from(relay)) else {
            return;
        };
        let handled = hub.handle(device, bytes, now_ms);
        if handled.result.is_err() {
            self.tally.refused_by_relay += 1;
        }
        for (peer, message) in handled.send {
            self.send_down(peer, &message);
        }
        if handled.result.is_ok() && self.database.is_some() {
            self.announce(relay, device, bytes);
        }
    }

    /// What instance `from` just stored for `device`'s user, told to the other instances after
    /// the database's notification delay (the real fleet's announcements: ids only, the rows
    /// are read back from the shared store).
    fn announce(&mut self, from: u16, device: u32, bytes: &[u8]) {
        let Some(user) = self.devices.get(device as usize).map(|d| d.user) else {
            return;
        };
        let (changes, keys) = match SyncMessage::decode(bytes) {
            Ok(SyncMessage::Changes { doc, changes }) => (
                changes
                    .iter()
                    .map(|c| {
                        let h = c.header();
                        (doc, h.actor, h.seq, h.seq)
                    })
                    .collect(),
                Vec::new(),
            ),
            Ok(SyncMessage::Keys { doc, keys }) => {
                (Vec::new(), keys.iter().map(|k| (doc, k.id())).collect())
            }
            _ => return,
        };
        let at = self.queue.now() + DB_NOTIFY;
        for relay in 0..self.relays.len() as u16 {
            if relay == from || !self.alive.get(usize::from(relay)).copied().unwrap_or(false) {
                continue;
            }
            self.announcements += 1;
            self.queue.at(
                at,
                (K_ANNOUNCE | u64::from(relay), self.announcements),
                Event::Announce {
                    relay,
                    user,
                    changes: changes.clone(),
                    keys: keys.clone(),
                },
            );
        }
    }

    fn announced(
        &mut self,
        relay: u16,
        user: u32,
        changes: &[(DocId, PublicKey, u64, u64)],
        keys: &[(DocId, KeyId)],
    ) {
        if !self.alive.get(usize::from(relay)).copied().unwrap_or(false) {
            return;
        }
        let Some((name, _)) = self.users.get(user as usize) else {
            return;
        };
        let Some(hub) = self.relays.get_mut(usize::from(relay)) else {
            return;
        };
        for (peer, message) in hub.stored_elsewhere(name, changes, keys, 0) {
            self.send_down(peer, &message);
        }
    }

    fn kill_relay(&mut self, relay: u16) {
        let Some(alive) = self.alive.get_mut(usize::from(relay)) else {
            return;
        };
        *alive = false;
        let survivor = (0..self.relays.len() as u16)
            .find(|&r| self.alive.get(usize::from(r)).copied().unwrap_or(false));
        let now = self.queue.now();
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
            let Some(d) = self.devices.get_mut(device as usize) else {
                continue;
            };
            d.relay = survivor;
            self.moved += 1;
            // The device notices the lost connection and dials the next instance it knows
            // within its backoff (up to 5 s).
            let key = K_CONNECT | u64::from(device);
            let delay = (self.draws.unit(key, d.connects) * 5.0 * SECOND as f64) as Micros;
            self.queue
                .at(now + delay, (key, d.connects), Event::Connect { device });
        }
    }

    /// Changes some device sealed that the shared database does not hold (0 without one).
    pub fn missing_from_database(&self) -> u64 {
        let Some(db) = &self.database else {
            return 0;
        };
        let db = db.lock().unwrap_or_else(PoisonError::into_inner);
        self.devices
            .iter()
            .map(|d| {
                let Some((name, doc)) = self.users.get(d.user as usize) else {
                    return 0;
                };
                let held = db
                    .get(name)
                    .and_then(|store| {
                        store
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .vector(*doc)
                            .ok()
                    })
                    .map_or(0, |v| v.get(&d.key));
                d.sealed.saturating_sub(held)
            })
            .sum()
    }

    fn at_device(&mut self, device: u32, generation: u32, bytes: &[u8]) {
        if !self.current(device, generation) {
            self.tally.dropped_with_connection += 1;
            return;
        }
        let now = self.queue.now();
        let now_ms = self.now_ms();
        let Ok(message) = SyncMessage::decode(bytes) else {
            self.tally.malformed += 1;
            return;
        };
        let Some(d) = self.devices.get_mut(device as usize) else {
            return;
        };
        let Some(session) = d.session.as_mut() else {
            return;
        };
        let output = match session.handle(message, now_ms, &mut d.replica) {
            Ok(output) => output,
            Err(_) => {
                self.tally.session_errors += 1;
                return;
            }
        };
        for change in &output.received.stored {
            let h = change.header();
            let Some(&writer) = self.actors.get(&h.actor) else {
                continue;
            };
            let key = (writer, h.seq);
            if let Some((written, left)) = self.pending.get_mut(&key) {
                self.latencies.push(now.saturating_sub(*written));
                self.tally.deliveries += 1;
                *left -= 1;
                if *left == 0 {
                    self.pending.remove(&key);
                    if self.backlog.remove(&key) && self.backlog.is_empty() {
                        self.backlog_cleared = Some(now);
                    }
                }
            }
        }
        self.send_up(device, output.send);
    }

    fn schedule_timer(&mut self, device: u32) {
        let Some(d) = self.devices.get_mut(device as usize) else {
            return;
        };
        let Some(due_ms) = d.session.as_ref().and_then(Session::poll_timeout) else {
            return;
        };
        let n = d.timers;
        d.timers += 1;
        let generation = d.generation;
        self.queue.at(
            due_ms * MS,
            (K_TIMER | u64::from(device), n),
            Event::DeviceTimer { device, generation },
        );
    }

    fn device_timer(&mut self, device: u32, generation: u32) {
        if !self.current(device, generation) {
            return;
        }
        let now_ms = self.now_ms();
        let Some(d) = self.devices.get_mut(device as usize) else {
            return;
        };
        let Some(session) = d.session.as_mut() else {
            return;
        };
        match session.poll(now_ms, &d.replica) {
            Ok(messages) => self.send_up(device, messages),
            Err(_) => self.tally.session_errors += 1,
        }
        self.schedule_timer(device);
    }

    fn relay_timer(&mut self, relay: u16) {
        if !self.alive.get(usize::from(relay)).copied().unwrap_or(false) {
            return;
        }
        let now = self.queue.now();
        let now_ms = self.now_ms();
        if let Some(hub) = self.relays.get_mut(usize::from(relay)) {
            for (peer, message) in hub.poll(now_ms) {
                self.send_down(peer, &message);
            }
        }
        let n = now / RELAY_TICK;
        self.queue.at(
            now + RELAY_TICK,
            (K_RELAY | u64::from(relay), n + 1),
            Event::RelayTimer { relay },
        );
    }

    fn connect(&mut self, device: u32) {
        let now_ms = self.now_ms();
        let Some(d) = self.devices.get_mut(device as usize) else {
            return;
        };
        if d.session.is_some()
            || d.away
            || self.cut.get(usize::from(d.site)).copied().unwrap_or(false)
            || !self
                .alive
                .get(usize::from(d.relay))
                .copied()
                .unwrap_or(false)
        {
            return;
        }
        let Some((user, _)) = self.users.get(d.user as usize) else {
            return;
        };
        let Some(hub) = self.relays.get_mut(usize::from(d.relay)) else {
            return;
        };
        d.generation += 1;
        d.connects += 1;
        self.tally.connects += 1;
        let Ok(from_relay) = hub.admit(device, user.clone(), now_ms) else {
            self.tally.refused_by_relay += 1;
            return;
        };
        let mut session = Session::new();
        let Ok(to_relay) = session.start(now_ms, &d.replica) else {
            self.tally.session_errors += 1;
            return;
        };
        d.session = Some(session);
        self.connected += 1;
        self.tally.connections_peak = self.tally.connections_peak.max(self.connected);
        for (peer, message) in from_relay {
            self.send_down(peer, &message);
        }
        self.send_up(device, to_relay);
        self.schedule_timer(device);
    }

    fn disconnect(&mut self, device: u32) {
        let Some(d) = self.devices.get_mut(device as usize) else {
            return;
        };
        if d.session.take().is_none() {
            return;
        }
        d.generation += 1;
        self.connected -= 1;
        if let Some(hub) = self.relays.get_mut(usize::from(d.relay)) {
            hub.leave(&device);
        }
    }

    fn at_site(&self, site: u16) -> Vec<u32> {
        (0..self.devices.len() as u32)
            .filter(|&i| self.devices.get(i as usize).is_some_and(|d| d.site == site))
            .collect()
    }

    fn cut_site(&mut self, site: u16) {
        if let Some(cut) = self.cut.get_mut(usize::from(site)) {
            *cut = true;
        }
        for device in self.at_site(site) {
            self.disconnect(device);
        }
    }

    fn heal_site(&mut self, site: u16) {
        if let Some(cut) = self.cut.get_mut(usize::from(site)) {
            *cut = false;
        }
        let now = self.queue.now();
        self.healed = Some(now);
        self.backlog = self.pending.keys().copied().collect();
        self.backlog_cleared = self.backlog.is_empty().then_some(now);
        for device in self.at_site(site) {
            // Each device notices within its reconnection backoff (up to 5 s).
            let connects = self.devices.get(device as usize).map_or(0, |d| d.connects);
            let key = K_CONNECT | u64::from(device);
            let delay = (self.draws.unit(key, connects) * 5.0 * SECOND as f64) as Micros;
            self.queue
                .at(now + delay, (key, connects), Event::Connect { device });
        }
    }

    /// Whether every user's devices hold the same history, all of it: each device's vector
    /// has every change each of its user's devices sealed. Returns the devices that do not.
    pub fn unconverged(&self) -> Vec<u32> {
        let mut behind = Vec::new();
        for (index, d) in self.devices.iter().enumerate() {
            let Some((_, doc)) = self.users.get(d.user as usize) else {
                continue;
            };
            let vector = d.replica.vector(*doc).unwrap_or_default();
            let complete = self
                .devices
                .iter()
                .filter(|o| o.user == d.user)
                .all(|o| vector.get(&o.key) == o.sealed);
            if !complete {
                behind.push(index as u32);
            }
        }
        behind
    }

    /// How long after the last heal every change then undelivered had arrived everywhere
    /// (`None`: no heal, or not all arrived).
    pub fn healed_in(&self) -> Option<Micros> {
        Some(self.backlog_cleared?.saturating_sub(self.healed?))
    }

    /// Changes not yet at every other device of their user.
    pub fn undelivered(&self) -> usize {
        self.pending.len()
    }

    /// Bytes each relay instance stores, summed over its users (key records without their
    /// grease: see [`greased`]).
    pub fn relay_storage(&self) -> Vec<u64> {
        if let Some(db) = &self.database {
            let total = db
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(user, store)| {
                    let bytes = store
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .stored_bytes()
                        .unwrap_or(0);
                    bytes.saturating_sub(self.key_grease.get(user).copied().unwrap_or(0))
                })
                .sum();
            return vec![total];
        }
        self.relays
            .iter()
            .map(|hub| {
                hub.stored_bytes()
                    .iter()
                    .filter(|(_, bytes)| **bytes > 0)
                    .map(|(user, bytes)| {
                        bytes.saturating_sub(self.key_grease.get(user).copied().unwrap_or(0))
                    })
                    .sum()
            })
            .collect()
    }

    /// Admitted connections at each relay instance now.
    pub fn relay_connections(&self) -> Vec<u64> {
        self.relays
            .iter()
            .map(|hub| hub.connections() as u64)
            .collect()
    }
}

/// Bytes of age "grease" in `encoded` (a key record, or a message carrying some).
///
/// age adds to every header a stanza of random tag, arguments and body length (0 to ~200
/// bytes), so a key record's size differs on every run. Counting it would make two runs of one
/// seed differ, so the simulator counts bytes on the wire and in storage without it: the
/// stanza from its `-> …-grease` line up to the next stanza (`\n-> `) or the header's end
/// (`\n---`).
pub fn greased(encoded: &[u8]) -> usize {
    const TAG: &[u8] = b"-grease";
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let mut total = 0;
    let mut rest = encoded;
    while let Some(tag) = find(rest, TAG) {
        let (before, after) = rest.split_at(tag);
        // The stanza's start: the last "-> " before its tag (tags and arguments hold no
        // spaces, so none falls between).
        let start = before
            .windows(3)
            .rposition(|w| w == b"-> ")
            .unwrap_or(before.len());
        let end = [find(after, b"\n-> "), find(after, b"\n---")]
            .into_iter()
            .flatten()
            .min()
            .map_or(after.len(), |e| e + 1);
        total += before.len() - start + end;
        rest = after.get(end..).unwrap_or_default();
    }
    total
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    #[test]
    fn grease_is_measured_from_its_line_to_the_next_stanza() {
        let header = b"age-encryption.org/v1\n-> X25519 abc\nBODY\n-> x}-grease a b\nQUJD\n-> X25519 def\nBODY\n--- mac\n";
        assert_eq!(greased(header), "-> x}-grease a b\nQUJD\n".len());
        let last = b"age-encryption.org/v1\n-> X25519 abc\nBODY\n-> q-grease\n\n--- mac";
        assert_eq!(greased(last), "-> q-grease\n\n".len());
        assert_eq!(greased(b"no grease here"), 0);
    }

    #[test]
    fn key_records_weigh_the_same_without_their_grease() {
        // Ten wraps of one key to the same recipients: sizes differ, sizes less grease do not.
        let ages: Vec<_> = (0..3).map(|_| age::x25519::Identity::generate()).collect();
        let recipients: Vec<_> = ages.iter().map(age::x25519::Identity::to_public).collect();
        let author = SecretKey::from_seed(&[7; 32]);
        let key = jarvis_crdt::envelope::DocKey::generate();
        let doc = DocId([1; 16]);
        let sizes: std::collections::BTreeSet<(usize, usize)> = (0..10)
            .map(|_| {
                let record =
                    jarvis_crdt::envelope::KeyRecord::wrap(doc, 0, &key, &recipients, &author)
                        .unwrap_or_else(|e| panic!("wrap: {e}"));
                let bytes = record.encode();
                (bytes.len(), bytes.len() - greased(&bytes))
            })
            .collect();
        let without: std::collections::BTreeSet<usize> = sizes.iter().map(|s| s.1).collect();
        assert_eq!(without.len(), 1, "{sizes:?}");
        assert!(
            sizes.len() > 1,
            "age adds grease of random length: {sizes:?}"
        );
    }
}

//! The sync protocol, as a sans-IO state machine per peer session.
//!
//! Holdings are version vectors. Each side says what it has (`Have`); the other sends what is
//! missing (`Keys` first, then a `Snapshot` if the peer is empty and one exists, then `Changes`
//! in bounded batches), and every batch received is answered with a `Have` once it is durably
//! stored, which both acknowledges it and asks for more. New changes are pushed live. A `Have`
//! of kind `Announce` (sent at start and on the resync timer) is authoritative and resets what
//! the sender is believed to hold, which is how lost messages are recovered; see [`HaveKind`].
//!
//! ```
//! use jarvis_crdt::{doc::Doc, replica::Replica, store::MemStore, sync::Session};
//! use jarvis_identity::SecretKey;
//!
//! // Two devices of one user; the first makes a conversation.
//! let (ka, kb) = (SecretKey::generate(), SecretKey::generate());
//! let (aa, ab) = (age::x25519::Identity::generate(), age::x25519::Identity::generate());
//! let recipients = [aa.to_public(), ab.to_public()];
//! let mut a = Replica::device(MemStore::new(), ka, aa);
//! let mut b = Replica::device(MemStore::new(), kb, ab);
//! let (id, _, _) = a.create(|me| Doc::create_conversation(me, "hello", 0), &recipients)?;
//!
//! // Sync them in a plain loop until nothing is left to say.
//! let (mut sa, mut sb) = (Session::new(), Session::new());
//! let mut to_b = sa.start(0, &a)?;
//! let mut to_a = sb.start(0, &b)?;
//! while !to_a.is_empty() || !to_b.is_empty() {
//!     let mut next_b = Vec::new();
//!     for m in to_a.drain(..) { next_b.extend(sa.handle(m, 0, &mut a)?.send); }
//!     let mut next_a = Vec::new();
//!     for m in to_b.drain(..) { next_a.extend(sb.handle(m, 0, &mut b)?.send); }
//!     to_b = next_b;
//!     to_a = next_a;
//! }
//! assert_eq!(b.doc(id).unwrap().title()?, "hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};

use jarvis_identity::encoding::{DecodeError, Reader, Writer};
use thiserror::Error;

use crate::envelope::{KeyId, KeyRecord, MAX_SNAPSHOT_BYTES, SealedChange, SealedSnapshot};
use crate::ids::{DocId, VersionVector};
use crate::replica::{Received, Replica, ReplicaError};
use crate::store::Store;

const MESSAGE_VERSION: u8 = 1;
/// Changes per `Changes` message.
pub const MAX_BATCH_CHANGES: usize = 512;
/// Bytes of sealed changes per `Changes` message (a batch always carries at least one change).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Unacknowledged `Changes` messages per document per session: flow control, so a peer catching
/// up on a long history is fed at the rate it stores, with bounded memory on both sides.
pub const WINDOW: usize = 4;
/// Largest message accepted: a snapshot plus framing.
pub const MAX_MESSAGE_BYTES: usize = MAX_SNAPSHOT_BYTES + 4096;
/// Key records per `Keys` message.
const MAX_KEYS: usize = 1024;
/// How often a session re-announces its holdings, recovering anything lost: 2 × a slow
/// round trip plus headroom.
pub const RESYNC_MS: u64 = 5_000;
/// Every this many resyncs, every document is announced, settled or not (once a minute).
pub const FULL_RESYNC_EVERY: u64 = 12;

/// Why a `Have` is sent, which decides how the receiver treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaveKind {
    /// At session start and on the resync timer: authoritative. The receiver resets what it
    /// believes the sender holds, sends what is missing, and answers with a `Request` if the
    /// sender has something it lacks.
    Announce,
    /// After storing a batch: merged with what the receiver already sent, and frees a window slot.
    Ack,
    /// "I lack what you announced; this is exactly what I hold." Authoritative, never answered
    /// with another `Have`, so announcements cannot ping-pong.
    Request,
}

/// What peers say to each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncMessage {
    /// What the sender holds of `doc`.
    Have {
        doc: DocId,
        vector: VersionVector,
        keys: Vec<KeyId>,
        kind: HaveKind,
    },
    Changes {
        doc: DocId,
        changes: Vec<SealedChange>,
    },
    Keys {
        doc: DocId,
        keys: Vec<KeyRecord>,
    },
    Snapshot {
        snapshot: SealedSnapshot,
    },
}

impl SyncMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(MESSAGE_VERSION);
        match self {
            Self::Have {
                doc,
                vector,
                keys,
                kind,
            } => {
                w.u8(1);
                doc.write(&mut w);
                vector.write(&mut w);
                w.u16(u16::try_from(keys.len()).unwrap_or(u16::MAX));
                for id in keys {
                    w.fixed(id);
                }
                w.u8(match kind {
                    HaveKind::Announce => 0,
                    HaveKind::Ack => 1,
                    HaveKind::Request => 2,
                });
            }
            Self::Changes { doc, changes } => {
                w.u8(2);
                doc.write(&mut w);
                w.u16(u16::try_from(changes.len()).unwrap_or(u16::MAX));
                for change in changes {
                    change.write(&mut w);
                }
            }
            Self::Keys { doc, keys } => {
                w.u8(3);
                doc.write(&mut w);
                w.u16(u16::try_from(keys.len()).unwrap_or(u16::MAX));
                for key in keys {
                    key.write(&mut w);
                }
            }
            Self::Snapshot { snapshot } => {
                w.u8(4);
                snapshot.write(&mut w);
            }
        }
        w.finish()
    }

    /// Decodes one message from a peer: bounded, strict, never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::TooLong {
                what: "sync message",
                len: bytes.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        let mut r = Reader::new(bytes);
        r.version("sync message", MESSAGE_VERSION)?;
        let message = match r.u8("message type")? {
            1 => {
                let doc = DocId::read(&mut r)?;
                let vector = VersionVector::read(&mut r)?;
                let keys = read_list(&mut r, "key list", MAX_KEYS, |r| r.array::<16>("key id"))?;
                let kind = match r.u8("have kind")? {
                    0 => HaveKind::Announce,
                    1 => HaveKind::Ack,
                    2 => HaveKind::Request,
                    other => return Err(DecodeError::invalid("have kind", format!("{other}"))),
                };
                Self::Have {
                    doc,
                    vector,
                    keys,
                    kind,
                }
            }
            2 => {
                let doc = DocId::read(&mut r)?;
                let changes = read_list(&mut r, "change batch", MAX_BATCH_CHANGES, |r| {
                    let change = SealedChange::read(r)?;
                    same_doc(change.header().doc, doc, "change batch")?;
                    Ok(change)
                })?;
                Self::Changes { doc, changes }
            }
            3 => {
                let doc = DocId::read(&mut r)?;
                let keys = read_list(&mut r, "key records", MAX_KEYS, |r| {
                    let key = KeyRecord::read(r)?;
                    same_doc(key.doc, doc, "key records")?;
                    Ok(key)
                })?;
                Self::Keys { doc, keys }
            }
            4 => Self::Snapshot {
                snapshot: SealedSnapshot::read(&mut r)?,
            },
            other => return Err(DecodeError::invalid("message type", format!("{other}"))),
        };
        r.finish("sync message")?;
        Ok(message)
    }
}

/// A `u16`-counted list of at most `max` items.
fn read_list<T>(
    r: &mut Reader<'_>,
    what: &'static str,
    max: usize,
    mut item: impl FnMut(&mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let count = usize::from(r.u16(what)?);
    if count > max {
        return Err(DecodeError::TooLong {
            what,
            len: count,
            max,
        });
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(item(r)?);
    }
    Ok(items)
}

/// Every record in a per-document message must be of that document.
fn same_doc(found: DocId, expected: DocId, what: &'static str) -> Result<(), DecodeError> {
    if found == expected {
        Ok(())
    } else {
        Err(DecodeError::invalid(what, "a record of another document"))
    }
}

#[derive(Debug, Error)]
pub enum SyncError {
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// What handling one input produced: messages for the peer, and what changed locally.
#[derive(Debug, Default)]
pub struct Output {
    pub send: Vec<SyncMessage>,
    pub received: Received,
}

#[derive(Debug, Default)]
struct PeerDoc {
    /// What the peer holds, as far as we know (what it said, plus what we sent since).
    has: VersionVector,
    keys: BTreeSet<KeyId>,
    /// `Changes` and `Snapshot` messages sent and not yet acknowledged.
    in_flight: usize,
    /// Our last announcement of it.
    announced: Option<SyncMessage>,
}

/// One sync session with one peer. Cancel-safe by construction: it is plain data.
#[derive(Debug, Default)]
pub struct Session {
    docs: BTreeMap<DocId, PeerDoc>,
    next_resync_ms: Option<u64>,
    resyncs: u64,
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    fn have<S: Store>(
        replica: &Replica<S>,
        doc: DocId,
        kind: HaveKind,
    ) -> Result<SyncMessage, SyncError> {
        let keys = replica
            .store()
            .keys(doc)
            .map_err(ReplicaError::from)?
            .into_iter()
            .map(|k| k.id())
            .collect();
        Ok(SyncMessage::Have {
            doc,
            vector: replica.vector(doc)?,
            keys,
            kind,
        })
    }

    /// Opens the session: announces every document this replica holds.
    pub fn start<S: Store>(
        &mut self,
        now_ms: u64,
        replica: &Replica<S>,
    ) -> Result<Vec<SyncMessage>, SyncError> {
        self.resyncs = 0;
        self.announce(now_ms, replica, true)
    }

    /// Announces the documents not settled with the peer — ours changed since we last
    /// announced it, something sent is unacknowledged, or the peer may lack something we hold —
    /// or all of them when `all`. A settled document's announcement would only repeat the last
    /// one (it was 90% of the sync messages of a simulated org day).
    fn announce<S: Store>(
        &mut self,
        now_ms: u64,
        replica: &Replica<S>,
        all: bool,
    ) -> Result<Vec<SyncMessage>, SyncError> {
        self.next_resync_ms = Some(now_ms + RESYNC_MS);
        let mut out = Vec::new();
        for doc in replica.docs()? {
            let have = Self::have(replica, doc, HaveKind::Announce)?;
            let peer = self.docs.entry(doc).or_default();
            let settled = peer.in_flight == 0
                && peer.announced.as_ref() == Some(&have)
                && match &have {
                    SyncMessage::Have { vector, keys, .. } => {
                        peer.has.dominates(vector) && keys.iter().all(|k| peer.keys.contains(k))
                    }
                    _ => false,
                };
            if all || !settled {
                peer.announced = Some(have.clone());
                out.push(have);
            }
        }
        Ok(out)
    }

    /// When [`Self::poll`] next has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.next_resync_ms
    }

    /// Timer: re-announce (authoritatively) the documents not settled with the peer, and every
    /// [`FULL_RESYNC_EVERY`] times all of them, so anything lost is resent.
    pub fn poll<S: Store>(
        &mut self,
        now_ms: u64,
        replica: &Replica<S>,
    ) -> Result<Vec<SyncMessage>, SyncError> {
        match self.next_resync_ms {
            Some(due) if now_ms >= due => {
                self.resyncs += 1;
                let all = self.resyncs.is_multiple_of(FULL_RESYNC_EVERY);
                self.announce(now_ms, replica, all)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// A message from the peer.
    pub fn handle<S: Store>(
        &mut self,
        message: SyncMessage,
        _now_ms: u64,
        replica: &mut Replica<S>,
    ) -> Result<Output, SyncError> {
        let mut out = Output::default();
        match message {
            SyncMessage::Have {
                doc,
                vector,
                keys,
                kind,
            } => {
                let peer = self.docs.entry(doc).or_default();
                let mut we_lack = false;
                if kind == HaveKind::Ack {
                    peer.has.merge(&vector);
                    peer.keys.extend(keys);
                    peer.in_flight = peer.in_flight.saturating_sub(1);
                } else {
                    if kind == HaveKind::Announce {
                        let mine = replica.vector(doc)?;
                        let my_keys: BTreeSet<KeyId> = replica
                            .store()
                            .keys(doc)
                            .map_err(ReplicaError::from)?
                            .into_iter()
                            .map(|k| k.id())
                            .collect();
                        we_lack =
                            !mine.dominates(&vector) || keys.iter().any(|k| !my_keys.contains(k));
                    }
                    peer.has = vector;
                    peer.keys = keys.into_iter().collect();
                    peer.in_flight = 0;
                }
                self.fill(doc, replica, &mut out.send)?;
                if we_lack {
                    out.send.push(Self::have(replica, doc, HaveKind::Request)?);
                }
            }
            SyncMessage::Changes { doc, changes } => {
                out.received = replica.receive_changes(&changes)?;
                let peer = self.docs.entry(doc).or_default();
                for c in &changes {
                    let h = c.header();
                    if peer.has.get(&h.actor) + 1 == h.seq {
                        peer.has.set(h.actor, h.seq);
                    }
                }
                // Durably stored: acknowledge, which also asks for what we still lack.
                out.send.push(Self::have(replica, doc, HaveKind::Ack)?);
            }
            SyncMessage::Keys { doc, keys } => {
                out.received = replica.receive_keys(&keys)?;
                let peer = self.docs.entry(doc).or_default();
                peer.keys.extend(keys.iter().map(KeyRecord::id));
            }
            SyncMessage::Snapshot { snapshot } => {
                let doc = snapshot.doc;
                out.received = replica.receive_snapshot(&snapshot)?;
                self.docs
                    .entry(doc)
                    .or_default()
                    .has
                    .merge(&snapshot.vector);
                out.send.push(Self::have(replica, doc, HaveKind::Ack)?);
            }
        }
        Ok(out)
    }

    /// A change this replica just stored (a local edit, or one received from another peer):
    /// pushed at once if the peer is known to be ready for it and the window allows. A document
    /// this session has not spoken about yet is announced instead.
    pub fn on_new_change<S: Store>(
        &mut self,
        change: &SealedChange,
        replica: &Replica<S>,
    ) -> Result<Vec<SyncMessage>, SyncError> {
        let h = change.header();
        let Some(peer) = self.docs.get_mut(&h.doc) else {
            self.docs.entry(h.doc).or_default();
            return Ok(vec![Self::have(replica, h.doc, HaveKind::Announce)?]);
        };
        if peer.has.get(&h.actor) + 1 != h.seq || peer.in_flight >= WINDOW {
            return Ok(Vec::new());
        }
        peer.has.set(h.actor, h.seq);
        peer.in_flight += 1;
        Ok(vec![SyncMessage::Changes {
            doc: h.doc,
            changes: vec![change.clone()],
        }])
    }

    /// A snapshot this replica just made: offered to the peer at once (a relay then drops the
    /// history it covers, so its storage stays bounded).
    pub fn on_new_snapshot(&mut self, snapshot: &SealedSnapshot) -> Vec<SyncMessage> {
        let peer = self.docs.entry(snapshot.doc).or_default();
        peer.has.merge(&snapshot.vector);
        peer.in_flight += 1;
        vec![SyncMessage::Snapshot {
            snapshot: snapshot.clone(),
        }]
    }

    /// A key record this replica just stored: pushed to the peer if it lacks it.
    pub fn on_new_key(&mut self, record: &KeyRecord) -> Vec<SyncMessage> {
        let peer = self.docs.entry(record.doc).or_default();
        if peer.keys.insert(record.id()) {
            vec![SyncMessage::Keys {
                doc: record.doc,
                keys: vec![record.clone()],
            }]
        } else {
            Vec::new()
        }
    }

    /// Sends what the peer lacks of `doc`: keys, then a snapshot if it has nothing, then change
    /// batches up to the window.
    fn fill<S: Store>(
        &mut self,
        doc: DocId,
        replica: &Replica<S>,
        send: &mut Vec<SyncMessage>,
    ) -> Result<(), SyncError> {
        let store = replica.store();
        let peer = self.docs.entry(doc).or_default();
        let missing_keys: Vec<KeyRecord> = store
            .keys(doc)
            .map_err(ReplicaError::from)?
            .into_iter()
            .filter(|k| !peer.keys.contains(&k.id()))
            .collect();
        for chunk in missing_keys.chunks(MAX_KEYS) {
            peer.keys.extend(chunk.iter().map(KeyRecord::id));
            send.push(SyncMessage::Keys {
                doc,
                keys: chunk.to_vec(),
            });
        }
        let mine = replica.vector(doc)?;
        while peer.in_flight < WINDOW {
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            let mut needs_snapshot = false;
            'actors: for (actor, top) in mine.iter() {
                let mut seq = peer.has.get(actor) + 1;
                while seq <= *top {
                    if batch.len() >= MAX_BATCH_CHANGES || bytes >= MAX_BATCH_BYTES {
                        break 'actors;
                    }
                    match store.change(doc, actor, seq).map_err(ReplicaError::from)? {
                        Some(change) => {
                            bytes += change.len();
                            batch.push(change);
                        }
                        // Held only inside our snapshot: the peer needs the snapshot.
                        None => {
                            needs_snapshot = true;
                            break 'actors;
                        }
                    }
                    seq += 1;
                }
            }
            let peer_empty = peer.has.is_empty();
            if needs_snapshot || (peer_empty && batch.len() >= MAX_BATCH_CHANGES) {
                if let Some(snapshot) = store.snapshot(doc).map_err(ReplicaError::from)?
                    && !peer.has.dominates(&snapshot.vector)
                {
                    peer.has.merge(&snapshot.vector);
                    peer.in_flight += 1;
                    send.push(SyncMessage::Snapshot { snapshot });
                    continue;
                }
                if needs_snapshot && batch.is_empty() {
                    // Nothing we can send: our history below the snapshot is gone and the peer
                    // already has the snapshot.
                    break;
                }
            }
            if batch.is_empty() {
                break;
            }
            for c in &batch {
                peer.has.set(c.header().actor, c.header().seq);
            }
            peer.in_flight += 1;
            send.push(SyncMessage::Changes {
                doc,
                changes: batch,
            });
        }
        Ok(())
    }
}

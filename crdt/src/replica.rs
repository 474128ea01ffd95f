//! A replica: the sans-IO holder of one party's sealed data, over a [`Store`].
//!
//! A **device** replica holds the device's keys, opens what it receives, and applies it to its
//! [`Doc`]s; local edits are sealed and stored before they are offered to peers. A **keyless**
//! replica (the relay) verifies signatures and stores ciphertext, and can never open anything.
//! Both answer the sync protocol the same way ([`crate::sync`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jarvis_identity::{PublicKey, SecretKey};
use thiserror::Error;

use crate::doc::{Doc, DocError};
use crate::envelope::{
    ChangeHeader, DocKey, EnvelopeError, KeyRecord, Keyring, SealedChange, SealedSnapshot,
};
use crate::ids::{DocId, VersionVector};
use crate::store::{Put, Store, StoreError};

#[derive(Debug, Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Doc(#[from] DocError),
    #[error("document {0} has used every key epoch: it cannot be rotated again")]
    EpochsExhausted(DocId),
    #[error("this replica holds no keys (a relay): it cannot {0}")]
    Keyless(&'static str),
    #[error("document {0} is not open on this device")]
    UnknownDoc(DocId),
    #[error("no key for document {0}: it cannot be edited here")]
    NoKey(DocId),
}

/// What receiving did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// Newly stored changes, to fan out to other peers.
    pub stored: Vec<SealedChange>,
    /// Newly stored key records, to fan out too (ahead of the changes they open).
    pub keys: Vec<KeyRecord>,
    /// Documents whose readable content changed (device replicas only).
    pub changed: BTreeSet<DocId>,
    /// How many bytes the store grew by, counted as stores count them (encoded records; negative
    /// when a snapshot replaced more history than it weighs), so a relay keeps its quota count
    /// without rescanning the store.
    pub grew_by: i64,
}

/// What a device could not read and set aside instead of failing. A stored change that does
/// not open with its epoch's key, or does not apply, blocks only its own actor's later changes
/// in that document; a document whose stored keys or snapshot do not load when the store is
/// reopened is skipped whole. Either way the device starts and reads everything else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quarantine {
    /// `(doc, actor, seq)` of the changes that do not open or apply.
    pub changes: BTreeSet<(DocId, PublicKey, u64)>,
    /// Documents that did not load when the store was reopened, and why.
    pub docs: BTreeMap<DocId, String>,
    /// Changes, key records and snapshots signed by a key that is not one of the user's
    /// devices ([`Replica::set_writers`]): dropped, not stored, and counted here. A device met
    /// later is offered them again by the peer that holds them.
    pub unknown_writers: u64,
    /// Key records for an epoch more than one past the newest this device holds: not adopted
    /// until the epochs between arrive.
    pub epoch_gaps: u64,
}

struct DeviceKeys {
    key: SecretKey,
    age: age::x25519::Identity,
    keyrings: HashMap<DocId, Keyring>,
    docs: HashMap<DocId, Doc>,
    /// What has been applied to each `Doc`: everything in the store up to this vector.
    applied: HashMap<DocId, VersionVector>,
    quarantine: Quarantine,
}

pub struct Replica<S: Store> {
    store: S,
    device: Option<DeviceKeys>,
    /// The keys allowed to write (the user's current devices); `None` accepts any signer, for
    /// callers that check membership before handing changes over.
    writers: Option<BTreeSet<PublicKey>>,
    /// A keyless replica's snapshots that claim more than it holds yet (a device offers its
    /// snapshot as soon as it makes it, while the changes it covers may still be on their way):
    /// taken once the changes have arrived. At most one per document and
    /// [`MAX_HELD_BACK`] in all; they are only an optimisation, so one dropped costs nothing
    /// but storage until the next snapshot.
    held_back: BTreeMap<DocId, SealedSnapshot>,
}

/// Snapshots a keyless replica holds back at most (in memory).
pub const MAX_HELD_BACK: usize = 256;

impl<S: Store> Replica<S> {
    /// A device's replica.
    pub fn device(store: S, key: SecretKey, age: age::x25519::Identity) -> Self {
        Self {
            store,
            device: Some(DeviceKeys {
                key,
                age,
                keyrings: HashMap::new(),
                docs: HashMap::new(),
                applied: HashMap::new(),
                quarantine: Quarantine::default(),
            }),
            writers: None,
            held_back: BTreeMap::new(),
        }
    }

    /// Reopens a device's replica from its store (after a restart): unwraps every key it is a
    /// recipient of, loads snapshots and applies every stored change it can open. What does
    /// not load is set aside ([`Replica::quarantine`]), never a reason not to start: only the
    /// store itself failing is an error.
    pub fn open_device(
        store: S,
        key: SecretKey,
        age: age::x25519::Identity,
    ) -> Result<Self, ReplicaError> {
        let mut replica = Self::device(store, key, age);
        for doc in replica.store.docs()? {
            match replica.load_doc(doc) {
                Ok(()) => {}
                Err(e @ ReplicaError::Store(_)) => return Err(e),
                Err(e) => {
                    if let Some(device) = replica.device.as_mut() {
                        device.docs.remove(&doc);
                        device.applied.remove(&doc);
                        device.quarantine.docs.insert(doc, e.to_string());
                    }
                }
            }
        }
        Ok(replica)
    }

    fn load_doc(&mut self, doc: DocId) -> Result<(), ReplicaError> {
        // The stored records were verified when they were received: unwrapped, not re-checked
        // or written again.
        self.adopt_keys(doc)?;
        if let Some(snapshot) = self.store.snapshot(doc)? {
            match self.receive_snapshot(&snapshot) {
                // A snapshot of an epoch whose key this device does not hold (yet): what it
                // can open of the changes is applied without it.
                Err(ReplicaError::Envelope(EnvelopeError::NoKey { .. })) => {}
                other => {
                    other?;
                }
            }
        }
        self.catch_up(doc)?;
        Ok(())
    }

    /// What this device set aside instead of failing (device replicas).
    pub fn quarantine(&self) -> Option<&Quarantine> {
        self.device.as_ref().map(|d| &d.quarantine)
    }

    /// A relay's replica: stores and forwards ciphertext, holds no keys.
    pub fn keyless(store: S) -> Self {
        Self {
            store,
            device: None,
            writers: None,
            held_back: BTreeMap::new(),
        }
    }

    /// Restricts who may write to the given device keys (from verified certificate chains).
    pub fn set_writers(&mut self, writers: impl IntoIterator<Item = PublicKey>) {
        self.writers = Some(writers.into_iter().collect());
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn device_key(&self) -> Option<PublicKey> {
        self.device.as_ref().map(|d| d.key.public())
    }

    /// Starts a group commit: changes, keys and snapshots stored from now on become durable
    /// together at [`Replica::end_batch`]. Acknowledge nothing stored in the batch before then.
    pub fn begin_batch(&mut self) {
        self.store.begin_batch();
    }

    /// Makes everything stored since [`Replica::begin_batch`] durable (one sync to disk).
    pub fn end_batch(&mut self) -> Result<(), ReplicaError> {
        Ok(self.store.end_batch()?)
    }

    pub fn docs(&self) -> Result<Vec<DocId>, ReplicaError> {
        Ok(self.store.docs()?)
    }

    pub fn vector(&self, doc: DocId) -> Result<VersionVector, ReplicaError> {
        Ok(self.store.vector(doc)?)
    }

    /// A readable document (device replicas).
    pub fn doc(&self, id: DocId) -> Option<&Doc> {
        self.device.as_ref().and_then(|d| d.docs.get(&id))
    }

    fn device_mut(&mut self, what: &'static str) -> Result<&mut DeviceKeys, ReplicaError> {
        self.device.as_mut().ok_or(ReplicaError::Keyless(what))
    }

    /// Whether `key` may write here; a device counts what it drops.
    fn may_write(&mut self, key: &PublicKey) -> bool {
        let allowed = self.writers.as_ref().is_none_or(|w| w.contains(key));
        if !allowed && let Some(device) = self.device.as_mut() {
            device.quarantine.unknown_writers = device.quarantine.unknown_writers.saturating_add(1);
        }
        allowed
    }

    /// Creates a document on this device: epoch 0's key wrapped to `recipients` (every device of
    /// the user, this one included), and the document's first change. Returns what to send.
    pub fn create(
        &mut self,
        make: impl FnOnce(&PublicKey) -> Result<Doc, DocError>,
        recipients: &[age::x25519::Recipient],
    ) -> Result<(DocId, KeyRecord, SealedChange), ReplicaError> {
        let id = DocId::random();
        let device = self.device_mut("create documents")?;
        let key = DocKey::generate();
        let record = KeyRecord::wrap(id, 0, &key, recipients, &device.key)?;
        let mut doc = make(&device.key.public())?;
        device.keyrings.entry(id).or_default().insert(0, key);
        let (seq, bytes) = doc
            .last_local_change()
            .ok_or(DocError::Missing("first change"))?;
        device.docs.insert(id, doc);
        self.store.put_key(&record)?;
        let sealed = self.seal_local(id, seq, &bytes)?;
        Ok((id, record, sealed))
    }

    /// Makes one local edit to `doc` and returns the sealed change, already stored durably.
    pub fn edit(
        &mut self,
        id: DocId,
        edit: impl FnOnce(&mut Doc, &PublicKey) -> Result<(), DocError>,
    ) -> Result<SealedChange, ReplicaError> {
        let device = self.device_mut("edit")?;
        let me = device.key.public();
        let doc = device
            .docs
            .get_mut(&id)
            .ok_or(ReplicaError::UnknownDoc(id))?;
        if device
            .keyrings
            .get(&id)
            .and_then(Keyring::current)
            .is_none()
        {
            return Err(ReplicaError::NoKey(id));
        }
        edit(doc, &me)?;
        let (seq, bytes) = doc
            .last_local_change()
            .ok_or(DocError::Missing("local change"))?;
        self.seal_local(id, seq, &bytes)
    }

    fn seal_local(
        &mut self,
        id: DocId,
        seq: u64,
        bytes: &[u8],
    ) -> Result<SealedChange, ReplicaError> {
        let device = self.device_mut("seal")?;
        let (epoch, key) = device
            .keyrings
            .get(&id)
            .and_then(Keyring::current)
            .ok_or(ReplicaError::NoKey(id))?;
        let header = ChangeHeader {
            doc: id,
            actor: device.key.public(),
            seq,
            epoch,
        };
        let sealed = SealedChange::seal(header, bytes, key, &device.key)?;
        device.applied.entry(id).or_default().set(header.actor, seq);
        self.store.put_change(&sealed)?;
        Ok(sealed)
    }

    /// Starts a new key epoch for `doc`, wrapped only to `recipients` (the user's devices minus a
    /// revoked one). Everything sealed from now on is unreadable to devices left out.
    pub fn rotate(
        &mut self,
        id: DocId,
        recipients: &[age::x25519::Recipient],
    ) -> Result<KeyRecord, ReplicaError> {
        let device = self.device_mut("rotate keys")?;
        let next = match device.keyrings.get(&id).and_then(Keyring::current) {
            None => 0,
            Some((e, _)) => e.checked_add(1).ok_or(ReplicaError::EpochsExhausted(id))?,
        };
        let key = DocKey::generate();
        let record = KeyRecord::wrap(id, next, &key, recipients, &device.key)?;
        device.keyrings.entry(id).or_default().insert(next, key);
        self.store.put_key(&record)?;
        Ok(record)
    }

    /// Wraps every epoch key this device holds for `doc` again, to `recipients` (the user's
    /// devices, including one that joined after the document was made), so a new device can
    /// read the history. Returns the new records to send.
    pub fn share_keys(
        &mut self,
        id: DocId,
        recipients: &[age::x25519::Recipient],
    ) -> Result<Vec<KeyRecord>, ReplicaError> {
        let device = self.device_mut("share keys")?;
        let epochs: Vec<(u32, DocKey)> = device
            .keyrings
            .get(&id)
            .map(|k| k.iter().map(|(e, key)| (e, key.clone())).collect())
            .unwrap_or_default();
        let mut records = Vec::with_capacity(epochs.len());
        for (epoch, key) in epochs {
            records.push(KeyRecord::wrap(id, epoch, &key, recipients, &device.key)?);
        }
        for record in &records {
            self.store.put_key(record)?;
        }
        Ok(records)
    }

    /// A sealed snapshot of `doc` as this device has it, stored and returned.
    pub fn snapshot(&mut self, id: DocId) -> Result<SealedSnapshot, ReplicaError> {
        let device = self.device_mut("make snapshots")?;
        let doc = device
            .docs
            .get_mut(&id)
            .ok_or(ReplicaError::UnknownDoc(id))?;
        let (epoch, key) = device
            .keyrings
            .get(&id)
            .and_then(Keyring::current)
            .ok_or(ReplicaError::NoKey(id))?;
        let vector = device.applied.get(&id).cloned().unwrap_or_default();
        let saved = doc.save();
        let snapshot = SealedSnapshot::seal(id, epoch, vector, &saved, key, &device.key)?;
        self.store.put_snapshot(&snapshot)?;
        Ok(snapshot)
    }

    /// Receives changes from a peer: verifies, stores durably, and (on a device) opens and
    /// applies what it can. Changes that would leave a gap are dropped; the peer resends them.
    pub fn receive_changes(&mut self, changes: &[SealedChange]) -> Result<Received, ReplicaError> {
        let mut sorted: Vec<&SealedChange> = changes.iter().collect();
        sorted.sort_by_key(|c| (c.header().doc, c.header().actor, c.header().seq));
        let mut received = Received::default();
        for change in sorted {
            change.verify()?;
            // Only the user's devices write: a change from any other key (a relay's own, a
            // stranger's) is dropped before it is stored.
            if !self.may_write(&change.header().actor) {
                continue;
            }
            // A device that holds the epoch's key refuses a change it cannot open before storing
            // it: a stored change that never opens would block its actor's sequence for good.
            if let Some(key) = self.device.as_ref().and_then(|d| {
                d.keyrings
                    .get(&change.header().doc)
                    .and_then(|k| k.get(change.header().epoch))
            }) {
                change.open(key)?;
            }
            if self.store.put_change(change)? == Put::Stored {
                received.grew_by = received
                    .grew_by
                    .saturating_add(byte_count(change.encode().len()));
                received.stored.push(change.clone());
            }
        }
        if self.device.is_none() {
            let docs: BTreeSet<DocId> = received.stored.iter().map(|c| c.header().doc).collect();
            for doc in docs {
                if let Some(snapshot) = self.held_back.remove(&doc) {
                    let taken = self.take_snapshot_keyless(&snapshot)?;
                    received.grew_by = received.grew_by.saturating_add(taken);
                }
            }
        }
        let docs: BTreeSet<DocId> = received.stored.iter().map(|c| c.header().doc).collect();
        for doc in docs {
            if self.catch_up(doc)? {
                received.changed.insert(doc);
            }
        }
        Ok(received)
    }

    /// Receives key records: stored on every replica, unwrapped on a device that is a recipient.
    /// Only records signed by the user's devices are taken ([`Replica::set_writers`]), and a
    /// device adopts an epoch's key only when it holds the epoch before it (or none yet): a
    /// record cannot jump the epoch that new changes are sealed with.
    pub fn receive_keys(&mut self, records: &[KeyRecord]) -> Result<Received, ReplicaError> {
        let mut received = Received::default();
        let mut docs = BTreeSet::new();
        for record in records {
            record.verify()?;
            if !self.may_write(&record.author) {
                continue;
            }
            if self.store.put_key(record)? {
                received.grew_by = received
                    .grew_by
                    .saturating_add(byte_count(record.encode().len()));
                received.keys.push(record.clone());
            }
            docs.insert(record.doc);
        }
        for doc in docs {
            if self.adopt_keys(doc)? && self.catch_up(doc)? {
                received.changed.insert(doc);
            }
        }
        Ok(received)
    }

    /// Unwraps the stored key records of `doc` this device is a recipient of, in epoch order,
    /// each only if it is at most one past the newest epoch held. Whether a key was adopted.
    fn adopt_keys(&mut self, doc: DocId) -> Result<bool, ReplicaError> {
        if self.device.is_none() {
            return Ok(false);
        }
        let mut stored = self.store.keys(doc)?;
        stored.sort_by_key(|r| r.epoch);
        let Some(device) = self.device.as_mut() else {
            return Ok(false);
        };
        let mut adopted = false;
        for record in stored {
            if let Some(writers) = &self.writers
                && !writers.contains(&record.author)
            {
                continue;
            }
            let keyring = device.keyrings.entry(doc).or_default();
            if keyring.get(record.epoch).is_some() {
                continue;
            }
            let newest = keyring.current().map(|(e, _)| e);
            if newest.is_some_and(|e| record.epoch > e.saturating_add(1)) {
                device.quarantine.epoch_gaps = device.quarantine.epoch_gaps.saturating_add(1);
                continue;
            }
            match record.unwrap_key(&device.age) {
                Ok(key) => {
                    keyring.insert(record.epoch, key);
                    adopted = true;
                }
                // Not a recipient: a later epoch this device was left out of.
                Err(EnvelopeError::NotARecipient { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(adopted)
    }

    /// Receives a snapshot: stored; on a device, loaded if it covers more than the device has.
    pub fn receive_snapshot(
        &mut self,
        snapshot: &SealedSnapshot,
    ) -> Result<Received, ReplicaError> {
        snapshot.verify()?;
        let mut received = Received::default();
        if !self.may_write(&snapshot.author) {
            return Ok(received);
        }
        if self.device.is_none() {
            received.grew_by = self.take_snapshot_keyless(snapshot)?;
            return Ok(received);
        }
        self.store.put_snapshot(snapshot)?;
        if let Some(device) = self.device.as_mut() {
            let applied = device.applied.entry(snapshot.doc).or_default();
            if !applied.dominates(&snapshot.vector) {
                let key = device
                    .keyrings
                    .get(&snapshot.doc)
                    .and_then(|k| k.get(snapshot.epoch))
                    .ok_or(EnvelopeError::NoKey {
                        doc: snapshot.doc,
                        epoch: snapshot.epoch,
                    })?;
                let saved = snapshot.open(key)?;
                let me = device.key.public();
                let mut loaded = Doc::load(&me, &saved)?;
                match device.docs.get_mut(&snapshot.doc) {
                    // Merging replays every change one by one; only do it when there is local
                    // state to keep.
                    Some(existing) if !applied.is_empty() => existing.merge(&mut loaded)?,
                    _ => {
                        device.docs.insert(snapshot.doc, loaded);
                    }
                }
                applied.merge(&snapshot.vector);
                received.changed.insert(snapshot.doc);
            }
        }
        if self.catch_up(snapshot.doc)? {
            received.changed.insert(snapshot.doc);
        }
        Ok(received)
    }

    /// A keyless replica (a relay) keeps one snapshot per document and drops the history it
    /// covers, so storage stays bounded. It cannot read snapshots, so it only takes one that
    /// covers everything the one it holds does (replacing a snapshot with one that covers less
    /// would lose the history already dropped), and only once it holds everything the snapshot
    /// claims: a vector raised past what was sent would drop that actor's next changes as
    /// duplicates and compact away history the snapshot need not contain. One that is ahead is
    /// held back until the changes arrive. Returns how much the store grew (negative: shrank).
    fn take_snapshot_keyless(&mut self, snapshot: &SealedSnapshot) -> Result<i64, ReplicaError> {
        let held = self.store.snapshot(snapshot.doc)?;
        let covers_more = held.as_ref().is_none_or(|held| {
            snapshot.vector.dominates(&held.vector) && snapshot.vector != held.vector
        });
        if !covers_more {
            return Ok(0);
        }
        if !self.store.vector(snapshot.doc)?.dominates(&snapshot.vector) {
            // The latest offer replaces what waited (so a bogus one cannot block later ones).
            if self.held_back.len() < MAX_HELD_BACK || self.held_back.contains_key(&snapshot.doc) {
                self.held_back.insert(snapshot.doc, snapshot.clone());
            }
            return Ok(0);
        }
        if !self.store.put_snapshot(snapshot)? {
            return Ok(0);
        }
        let freed = self.store.compact(snapshot.doc)?;
        let replaced = held.map_or(0, |h| h.encode().len());
        Ok(byte_count(snapshot.encode().len())
            .saturating_sub(byte_count(replaced))
            .saturating_sub(i64::try_from(freed).unwrap_or(i64::MAX)))
    }

    /// Applies to the device's document every stored change past what it has applied, actor by
    /// actor, stopping at the first change whose epoch key this device lacks. Returns whether
    /// anything was applied.
    fn catch_up(&mut self, id: DocId) -> Result<bool, ReplicaError> {
        let Some(device) = self.device.as_mut() else {
            return Ok(false);
        };
        let held = self.store.vector(id)?;
        let applied = device.applied.entry(id).or_default();
        let me = device.key.public();
        let mut any = false;
        for (actor, top) in held.iter() {
            let mut next = applied.get(actor) + 1;
            while next <= *top {
                if device.quarantine.changes.contains(&(id, *actor, next)) {
                    break;
                }
                let Some(change) = self.store.change(id, actor, next)? else {
                    break;
                };
                let Some(key) = device
                    .keyrings
                    .get(&id)
                    .and_then(|k| k.get(change.header().epoch))
                else {
                    break;
                };
                // A change stored before its key was known that does not open (or apply) now
                // is set aside: it blocks this actor's later changes here, nothing else.
                let opened = change
                    .open(key)
                    .map_err(ReplicaError::from)
                    .and_then(|bytes| {
                        let doc = device.docs.entry(id).or_insert_with(|| Doc::empty(&me));
                        Ok(doc.apply(actor, next, &bytes)?)
                    });
                if opened.is_err() {
                    device.quarantine.changes.insert((id, *actor, next));
                    break;
                }
                applied.set(*actor, next);
                any = true;
                next += 1;
            }
        }
        Ok(any)
    }
}

/// A length as a signed byte count (lengths here are far below `i64::MAX`).
fn byte_count(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

//! Where sealed changes, key records and snapshots live: the `Store` trait, an in-memory store
//! for tests and simulations, and the sled store (the one module of this crate that touches
//! disk).
//!
//! A store holds only sealed bytes: on a device as on a relay, nothing at rest is plaintext.
//! [`Store::put_change`] keeps each actor's changes gap-free and is durable when it returns, so a
//! replica may acknowledge a change to a peer as soon as the call succeeds. Inside a batch
//! ([`Store::begin_batch`] … [`Store::end_batch`]) durability waits for `end_batch`, which makes
//! everything since `begin_batch` durable at once (a group commit): the caller then holds its
//! acknowledgements until `end_batch` has returned.

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod sled;

use std::collections::{BTreeMap, HashMap};

use jarvis_identity::PublicKey;
use jarvis_identity::encoding::DecodeError;
use thiserror::Error;

use crate::envelope::{KeyId, KeyRecord, SealedChange, SealedSnapshot};
use crate::ids::{DocId, VersionVector};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Io(String),
    #[error("stored bytes are damaged: {0}")]
    Corrupt(#[from] DecodeError),
}

/// What happened to a change offered to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Stored (durably).
    Stored,
    /// Already held.
    Duplicate,
    /// The actor's previous change is missing; refused so the sequence stays gap-free (the peer
    /// resends it after the next vector exchange).
    Gap { have: u64 },
}

pub trait Store {
    /// Stores `change` if it is the actor's next one. Durable when it returns `Stored`.
    fn put_change(&mut self, change: &SealedChange) -> Result<Put, StoreError>;
    fn change(
        &self,
        doc: DocId,
        actor: &PublicKey,
        seq: u64,
    ) -> Result<Option<SealedChange>, StoreError>;
    /// What this store holds of `doc`: the highest gap-free sequence per actor, counting what a
    /// stored snapshot covers.
    fn vector(&self, doc: DocId) -> Result<VersionVector, StoreError>;
    /// Stores a key record; `false` if already held.
    fn put_key(&mut self, record: &KeyRecord) -> Result<bool, StoreError>;
    fn keys(&self, doc: DocId) -> Result<Vec<KeyRecord>, StoreError>;
    /// Replaces the document's snapshot if `snapshot` covers more.
    fn put_snapshot(&mut self, snapshot: &SealedSnapshot) -> Result<bool, StoreError>;
    fn snapshot(&self, doc: DocId) -> Result<Option<SealedSnapshot>, StoreError>;
    /// Drops the stored changes of `doc` that its snapshot covers (the snapshot replaces that
    /// history: a peer lacking them gets the snapshot); returns the bytes freed. Durable when it
    /// returns (or at the end of the batch).
    fn compact(&mut self, doc: DocId) -> Result<u64, StoreError>;
    fn docs(&self) -> Result<Vec<DocId>, StoreError>;
    /// Bytes of sealed data held (quotas, `jarvis-relay status`).
    fn stored_bytes(&self) -> Result<u64, StoreError>;
    /// Until [`Store::end_batch`], puts need not be durable when they return.
    fn begin_batch(&mut self) {}
    /// Makes every put since [`Store::begin_batch`] durable, with one sync to disk.
    fn end_batch(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Decides a put against the vector: the shared gap-free rule of every store.
pub(crate) fn classify(vector: &VersionVector, change: &SealedChange) -> Put {
    let have = vector.get(&change.header().actor);
    let seq = change.header().seq;
    if seq <= have {
        Put::Duplicate
    } else if seq == have + 1 {
        Put::Stored
    } else {
        Put::Gap { have }
    }
}

#[derive(Debug, Default)]
struct MemDoc {
    changes: BTreeMap<(PublicKey, u64), SealedChange>,
    vector: VersionVector,
    keys: BTreeMap<(u32, KeyId), KeyRecord>,
    snapshot: Option<SealedSnapshot>,
}

/// A store in memory: for tests, simulations and benchmarks.
#[derive(Debug, Default)]
pub struct MemStore {
    docs: HashMap<DocId, MemDoc>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemStore {
    fn put_change(&mut self, change: &SealedChange) -> Result<Put, StoreError> {
        let doc = self.docs.entry(change.header().doc).or_default();
        let put = classify(&doc.vector, change);
        if put == Put::Stored {
            let h = change.header();
            doc.changes.insert((h.actor, h.seq), change.clone());
            doc.vector.set(h.actor, h.seq);
        }
        Ok(put)
    }

    fn change(
        &self,
        doc: DocId,
        actor: &PublicKey,
        seq: u64,
    ) -> Result<Option<SealedChange>, StoreError> {
        Ok(self
            .docs
            .get(&doc)
            .and_then(|d| d.changes.get(&(*actor, seq)))
            .cloned())
    }

    fn vector(&self, doc: DocId) -> Result<VersionVector, StoreError> {
        Ok(self
            .docs
            .get(&doc)
            .map(|d| d.vector.clone())
            .unwrap_or_default())
    }

    fn put_key(&mut self, record: &KeyRecord) -> Result<bool, StoreError> {
        let doc = self.docs.entry(record.doc).or_default();
        Ok(doc
            .keys
            .insert((record.epoch, record.id()), record.clone())
            .is_none())
    }

    fn keys(&self, doc: DocId) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(self
            .docs
            .get(&doc)
            .map(|d| d.keys.values().cloned().collect())
            .unwrap_or_default())
    }

    fn put_snapshot(&mut self, snapshot: &SealedSnapshot) -> Result<bool, StoreError> {
        let doc = self.docs.entry(snapshot.doc).or_default();
        let newer = doc
            .snapshot
            .as_ref()
            .is_none_or(|old| !old.vector.dominates(&snapshot.vector));
        if newer {
            doc.vector.merge(&snapshot.vector);
            doc.snapshot = Some(snapshot.clone());
        }
        Ok(newer)
    }

    fn snapshot(&self, doc: DocId) -> Result<Option<SealedSnapshot>, StoreError> {
        Ok(self.docs.get(&doc).and_then(|d| d.snapshot.clone()))
    }

    fn compact(&mut self, doc: DocId) -> Result<u64, StoreError> {
        let Some(d) = self.docs.get_mut(&doc) else {
            return Ok(0);
        };
        let Some(covered) = d.snapshot.as_ref().map(|s| s.vector.clone()) else {
            return Ok(0);
        };
        let mut freed = 0u64;
        d.changes.retain(|(actor, seq), change| {
            let keep = *seq > covered.get(actor);
            if !keep {
                freed += change.encode().len() as u64;
            }
            keep
        });
        Ok(freed)
    }

    fn docs(&self) -> Result<Vec<DocId>, StoreError> {
        let mut docs: Vec<_> = self.docs.keys().copied().collect();
        docs.sort();
        Ok(docs)
    }

    fn stored_bytes(&self) -> Result<u64, StoreError> {
        Ok(self
            .docs
            .values()
            .map(|d| {
                d.changes
                    .values()
                    .map(|c| c.encode().len() as u64)
                    .sum::<u64>()
                    + d.keys
                        .values()
                        .map(|k| k.encode().len() as u64)
                        .sum::<u64>()
                    + d.snapshot.as_ref().map_or(0, |s| s.encode().len() as u64)
            })
            .sum())
    }
}

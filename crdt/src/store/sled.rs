//! The sled store: the embedded default, on devices and single-instance relays.
//!
//! Layout, one tree per kind of record, keys in big-endian so scans come out in order:
//!
//! ```text
//! changes    doc(16) ‖ actor(32) ‖ seq(8)      → sealed change
//! vectors    doc(16) ‖ actor(32)               → seq(8): the gap-free high-water mark
//! keys       doc(16) ‖ epoch(4) ‖ key id(16)   → key record
//! snapshots  doc(16)                           → sealed snapshot
//! ```
//!
//! A change and its vector entry are written in one sled transaction, then the database is
//! flushed before `put_change` returns (or, in a batch, before `end_batch` returns): an
//! acknowledged change survives a crash.

use std::path::Path;

pub use ::sled::Db;
use jarvis_identity::PublicKey;
use sled::Transactional;

use super::{Put, Store, StoreError, classify};
use crate::envelope::{KeyRecord, SealedChange, SealedSnapshot};
use crate::ids::{DocId, VersionVector};

pub struct SledStore {
    db: sled::Db,
    changes: sled::Tree,
    vectors: sled::Tree,
    keys: sled::Tree,
    snapshots: sled::Tree,
    /// In a batch: flushing waits for `end_batch`.
    batching: bool,
    /// Written since the last flush.
    dirty: bool,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn change_key(doc: DocId, actor: &PublicKey, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(56);
    k.extend_from_slice(&doc.0);
    k.extend_from_slice(&actor.to_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn vector_key(doc: DocId, actor: &PublicKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(48);
    k.extend_from_slice(&doc.0);
    k.extend_from_slice(&actor.to_bytes());
    k
}

/// Opens (or creates) a sled database, for [`SledStore::open_in`].
pub fn open_db(path: &Path) -> Result<Db, StoreError> {
    sled::Config::new().path(path).open().map_err(io)
}

/// Opens a sled database whose page cache holds at most `cache_bytes` (sled's default is 1 GB:
/// a relay holding many users' data would grow towards it).
pub fn open_db_with_cache(path: &Path, cache_bytes: u64) -> Result<Db, StoreError> {
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        .open()
        .map_err(io)
}

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_in(&open_db(path)?, "")
    }

    /// A store in the trees `{namespace}changes`, `{namespace}vectors`, … of an open database:
    /// how a relay keeps each user's data apart in one database (one file set, one flush).
    pub fn open_in(db: &sled::Db, namespace: &str) -> Result<Self, StoreError> {
        let tree = |name: &str| db.open_tree(format!("{namespace}{name}")).map_err(io);
        Ok(Self {
            changes: tree("changes")?,
            vectors: tree("vectors")?,
            keys: tree("keys")?,
            snapshots: tree("snapshots")?,
            db: db.clone(),
            batching: false,
            dirty: false,
        })
    }

    /// Durable now, or at the end of the batch.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.batching {
            self.dirty = true;
            return Ok(());
        }
        self.dirty = false;
        self.db.flush().map(drop).map_err(io)
    }
}

impl Store for SledStore {
    fn put_change(&mut self, change: &SealedChange) -> Result<Put, StoreError> {
        let h = *change.header();
        let vkey = vector_key(h.doc, &h.actor);
        let ckey = change_key(h.doc, &h.actor, h.seq);
        let bytes = change.encode();
        let put = (&self.changes, &self.vectors)
            .transaction(|(changes, vectors)| {
                let have = vectors
                    .get(&vkey)?
                    .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                    .map_or(0, u64::from_be_bytes);
                let mut vector = VersionVector::new();
                vector.set(h.actor, have);
                let put = classify(&vector, change);
                if put == Put::Stored {
                    changes.insert(ckey.as_slice(), bytes.as_slice())?;
                    vectors.insert(vkey.as_slice(), &h.seq.to_be_bytes())?;
                }
                Ok(put)
            })
            .map_err(|e: sled::transaction::TransactionError<()>| io(format!("{e:?}")))?;
        if put == Put::Stored {
            self.flush()?;
        }
        Ok(put)
    }

    fn change(
        &self,
        doc: DocId,
        actor: &PublicKey,
        seq: u64,
    ) -> Result<Option<SealedChange>, StoreError> {
        self.changes
            .get(change_key(doc, actor, seq))
            .map_err(io)?
            .map(|v| SealedChange::decode(&v).map_err(StoreError::from))
            .transpose()
    }

    fn vector(&self, doc: DocId) -> Result<VersionVector, StoreError> {
        let mut vector = VersionVector::new();
        for item in self.vectors.scan_prefix(doc.0) {
            let (k, v) = item.map_err(io)?;
            let actor: [u8; 32] = k
                .get(16..48)
                .and_then(|a| a.try_into().ok())
                .ok_or_else(|| io("malformed vector key"))?;
            let actor = PublicKey::from_bytes(actor)?;
            let seq = <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| io("malformed vector value"))?;
            vector.set(actor, seq);
        }
        if let Some(snapshot) = self.snapshot(doc)? {
            vector.merge(&snapshot.vector);
        }
        Ok(vector)
    }

    fn put_key(&mut self, record: &KeyRecord) -> Result<bool, StoreError> {
        let mut k = Vec::with_capacity(36);
        k.extend_from_slice(&record.doc.0);
        k.extend_from_slice(&record.epoch.to_be_bytes());
        k.extend_from_slice(&record.id());
        let new = self.keys.insert(k, record.encode()).map_err(io)?.is_none();
        self.flush()?;
        Ok(new)
    }

    fn keys(&self, doc: DocId) -> Result<Vec<KeyRecord>, StoreError> {
        self.keys
            .scan_prefix(doc.0)
            .map(|item| {
                let (_, v) = item.map_err(io)?;
                KeyRecord::decode(&v).map_err(StoreError::from)
            })
            .collect()
    }

    fn put_snapshot(&mut self, snapshot: &SealedSnapshot) -> Result<bool, StoreError> {
        let newer = self
            .snapshot(snapshot.doc)?
            .is_none_or(|old| !old.vector.dominates(&snapshot.vector));
        if newer {
            // The snapshot's coverage also raises the vectors, so later changes are accepted.
            for (actor, seq) in snapshot.vector.iter() {
                let vkey = vector_key(snapshot.doc, actor);
                let have = self
                    .vectors
                    .get(&vkey)
                    .map_err(io)?
                    .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                    .map_or(0, u64::from_be_bytes);
                if *seq > have {
                    self.vectors.insert(vkey, &seq.to_be_bytes()).map_err(io)?;
                }
            }
            self.snapshots
                .insert(snapshot.doc.0, snapshot.encode())
                .map_err(io)?;
            self.flush()?;
        }
        Ok(newer)
    }

    fn snapshot(&self, doc: DocId) -> Result<Option<SealedSnapshot>, StoreError> {
        self.snapshots
            .get(doc.0)
            .map_err(io)?
            .map(|v| SealedSnapshot::decode(&v).map_err(StoreError::from))
            .transpose()
    }

    fn compact(&mut self, doc: DocId) -> Result<u64, StoreError> {
        let Some(snapshot) = self.snapshot(doc)? else {
            return Ok(0);
        };
        let mut freed = 0u64;
        for (actor, top) in snapshot.vector.iter() {
            let range = change_key(doc, actor, 0)..=change_key(doc, actor, *top);
            let keys: Vec<sled::IVec> = self
                .changes
                .range(range)
                .keys()
                .collect::<Result<_, _>>()
                .map_err(io)?;
            for key in keys {
                if let Some(old) = self.changes.remove(key).map_err(io)? {
                    freed += old.len() as u64;
                }
            }
        }
        if freed > 0 {
            self.flush()?;
        }
        Ok(freed)
    }

    fn docs(&self) -> Result<Vec<DocId>, StoreError> {
        let mut docs = std::collections::BTreeSet::new();
        for item in self.vectors.iter().chain(self.keys.iter()) {
            let (k, _) = item.map_err(io)?;
            if let Some(id) = k.get(..16).and_then(|d| <[u8; 16]>::try_from(d).ok()) {
                docs.insert(DocId(id));
            }
        }
        Ok(docs.into_iter().collect())
    }

    fn begin_batch(&mut self) {
        self.batching = true;
    }

    fn end_batch(&mut self) -> Result<(), StoreError> {
        self.batching = false;
        if self.dirty {
            self.flush()?;
        }
        Ok(())
    }

    fn stored_bytes(&self) -> Result<u64, StoreError> {
        let mut total = 0u64;
        for tree in [&self.changes, &self.snapshots, &self.keys] {
            for item in tree.iter() {
                let (_, v) = item.map_err(io)?;
                total += v.len() as u64;
            }
        }
        Ok(total)
    }
}

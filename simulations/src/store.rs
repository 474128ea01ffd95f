//! The relay instances' storage: each its own, or one database shared by all (as instances on
//! one PostgreSQL share it), so that losing an instance loses none of what it acknowledged.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use jarvis_crdt::envelope::{KeyRecord, SealedChange, SealedSnapshot};
use jarvis_crdt::{DocId, MemStore, Put, Store, StoreError, VersionVector};
use jarvis_identity::PublicKey;

/// A user's store at a relay instance.
pub enum SimStore {
    /// The instance's own.
    Own(MemStore),
    /// A user's rows in the database every instance shares.
    Shared(Arc<Mutex<MemStore>>),
}

/// Either kind, borrowed.
enum Guard<'a> {
    Own(&'a MemStore),
    Shared(MutexGuard<'a, MemStore>),
}

impl std::ops::Deref for Guard<'_> {
    type Target = MemStore;
    fn deref(&self) -> &MemStore {
        match self {
            Self::Own(s) => s,
            Self::Shared(g) => g,
        }
    }
}

impl SimStore {
    fn read(&self) -> Guard<'_> {
        match self {
            Self::Own(s) => Guard::Own(s),
            Self::Shared(s) => Guard::Shared(s.lock().unwrap_or_else(PoisonError::into_inner)),
        }
    }

    fn write<T>(&mut self, f: impl FnOnce(&mut MemStore) -> T) -> T {
        match self {
            Self::Own(s) => f(s),
            Self::Shared(s) => f(&mut s.lock().unwrap_or_else(PoisonError::into_inner)),
        }
    }
}

impl Store for SimStore {
    fn put_change(&mut self, change: &SealedChange) -> Result<Put, StoreError> {
        self.write(|s| s.put_change(change))
    }
    fn change(
        &self,
        doc: DocId,
        actor: &PublicKey,
        seq: u64,
    ) -> Result<Option<SealedChange>, StoreError> {
        self.read().change(doc, actor, seq)
    }
    fn vector(&self, doc: DocId) -> Result<VersionVector, StoreError> {
        self.read().vector(doc)
    }
    fn put_key(&mut self, record: &KeyRecord) -> Result<bool, StoreError> {
        self.write(|s| s.put_key(record))
    }
    fn keys(&self, doc: DocId) -> Result<Vec<KeyRecord>, StoreError> {
        self.read().keys(doc)
    }
    fn put_snapshot(&mut self, snapshot: &SealedSnapshot) -> Result<bool, StoreError> {
        self.write(|s| s.put_snapshot(snapshot))
    }
    fn snapshot(&self, doc: DocId) -> Result<Option<SealedSnapshot>, StoreError> {
        self.read().snapshot(doc)
    }
    fn compact(&mut self, doc: DocId) -> Result<u64, StoreError> {
        self.write(|s| s.compact(doc))
    }
    fn docs(&self) -> Result<Vec<DocId>, StoreError> {
        self.read().docs()
    }
    fn stored_bytes(&self) -> Result<u64, StoreError> {
        self.read().stored_bytes()
    }
}

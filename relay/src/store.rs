//! Where the relay keeps its users' data: the embedded sled database in its home (the default,
//! one instance), or PostgreSQL (`--store postgres://…`), which several instances share. Either
//! way the same [`Store`] behaviour (crdt's conformance suite runs on both) and the same
//! blindness: ciphertext, headers and sizes only.

use jarvis_crdt::envelope::{KeyRecord, SealedChange, SealedSnapshot};
use jarvis_crdt::ids::{DocId, VersionVector};
use jarvis_crdt::store::sled::SledStore;
use jarvis_crdt::store::{Put, Store, StoreError};
use jarvis_identity::PublicKey;

use crate::pg::PgStore;

/// Which database: how `jarvis-relay up --store` is given.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// The sled database in the relay's home.
    Sled,
    /// A PostgreSQL database at this URL (which may carry a password: never printed).
    Postgres(String),
}

impl std::fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sled => f.write_str("Sled"),
            Self::Postgres(_) => f.write_str("Postgres(…)"),
        }
    }
}

impl StoreChoice {
    /// `sled`, or a `postgres://` / `postgresql://` URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "sled" {
            Ok(Self::Sled)
        } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Ok(Self::Postgres(text.to_owned()))
        } else {
            Err("the store is `sled` or a `postgres://user@host:port/database` URL".to_owned())
        }
    }

    /// What to show of it: the kind, never the URL.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sled => "sled",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// One user's data, in whichever database the relay runs on.
pub enum RelayStore {
    Sled(SledStore),
    /// Boxed: a PostgreSQL store holds its batch's pooled connection, a few hundred bytes.
    Postgres(Box<PgStore>),
}

macro_rules! each {
    ($self:ident, $store:ident => $body:expr) => {
        match $self {
            RelayStore::Sled($store) => $body,
            RelayStore::Postgres($store) => $body,
        }
    };
}

impl Store for RelayStore {
    fn put_change(&mut self, change: &SealedChange) -> Result<Put, StoreError> {
        each!(self, s => s.put_change(change))
    }

    fn change(
        &self,
        doc: DocId,
        actor: &PublicKey,
        seq: u64,
    ) -> Result<Option<SealedChange>, StoreError> {
        each!(self, s => s.change(doc, actor, seq))
    }

    fn vector(&self, doc: DocId) -> Result<VersionVector, StoreError> {
        each!(self, s => s.vector(doc))
    }

    fn put_key(&mut self, record: &KeyRecord) -> Result<bool, StoreError> {
        each!(self, s => s.put_key(record))
    }

    fn keys(&self, doc: DocId) -> Result<Vec<KeyRecord>, StoreError> {
        each!(self, s => s.keys(doc))
    }

    fn put_snapshot(&mut self, snapshot: &SealedSnapshot) -> Result<bool, StoreError> {
        each!(self, s => s.put_snapshot(snapshot))
    }

    fn snapshot(&self, doc: DocId) -> Result<Option<SealedSnapshot>, StoreError> {
        each!(self, s => s.snapshot(doc))
    }

    fn compact(&mut self, doc: DocId) -> Result<u64, StoreError> {
        each!(self, s => s.compact(doc))
    }

    fn docs(&self) -> Result<Vec<DocId>, StoreError> {
        each!(self, s => s.docs())
    }

    fn stored_bytes(&self) -> Result<u64, StoreError> {
        each!(self, s => s.stored_bytes())
    }

    fn begin_batch(&mut self) {
        each!(self, s => s.begin_batch())
    }

    fn end_batch(&mut self) -> Result<(), StoreError> {
        each!(self, s => s.end_batch())
    }
}

//! The behaviour every [`Store`] must have, as a suite any implementation runs against itself
//! (feature `conformance`): the in-memory and sled stores in this crate's tests, the relay's
//! PostgreSQL store in the relay's. A new store passes [`run`] before anything relies on it.
//!
//! The suite seals its own records with throwaway keys (a store never opens what it holds), and
//! each check panics with what differed, as a test does.

#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use jarvis_identity::{PublicKey, SecretKey};

use super::{Put, Store};
use crate::envelope::{ChangeHeader, DocKey, KeyRecord, SealedChange, SealedSnapshot};
use crate::ids::{DocId, VersionVector};

/// Opens a store for the suite: a new `n` gives an empty store; for a durable store, `open(n)`
/// again gives the same stored data (the store reopened).
pub trait Opener {
    type Store: Store;
    fn open(&mut self, n: u32) -> Self::Store;
}

impl<S: Store, F: FnMut(u32) -> S> Opener for F {
    type Store = S;
    fn open(&mut self, n: u32) -> S {
        self(n)
    }
}

/// Every check, each on a fresh store (`n` from `first + 1` upwards); with `durable`, also
/// what must survive reopening the store (not for [`super::MemStore`]).
pub fn run(opener: &mut impl Opener, first: u32, durable: bool) {
    let mut n = first;
    let mut next = || {
        n += 1;
        n
    };
    changes_are_gap_free_and_kept(opener, next());
    vectors_are_per_document_and_per_actor(opener, next());
    key_records_are_kept_once(opener, next());
    a_snapshot_replaces_only_an_older_one_and_raises_the_vector(opener, next());
    compacting_frees_what_the_snapshot_covers(opener, next());
    docs_and_stored_bytes_count_everything(opener, next());
    a_batch_reads_its_own_writes(opener, next(), durable);
    if durable {
        what_is_acknowledged_survives_reopening(opener, next());
    }
}

/// A writer of sealed changes for one document.
pub struct Writer {
    pub doc: DocId,
    pub key: SecretKey,
    pub doc_key: DocKey,
}

impl Writer {
    pub fn new(doc: DocId) -> Self {
        Self {
            doc,
            key: SecretKey::generate(),
            doc_key: DocKey::generate(),
        }
    }

    pub fn actor(&self) -> PublicKey {
        self.key.public()
    }

    /// The actor's change number `seq`, `size` bytes of content.
    pub fn change(&self, seq: u64, size: usize) -> SealedChange {
        let header = ChangeHeader {
            doc: self.doc,
            actor: self.actor(),
            seq,
            epoch: 0,
        };
        SealedChange::seal(header, &vec![seq as u8; size], &self.doc_key, &self.key).unwrap()
    }

    pub fn key_record(&self, epoch: u32) -> KeyRecord {
        let recipient = age::x25519::Identity::generate().to_public();
        KeyRecord::wrap(self.doc, epoch, &self.doc_key, &[recipient], &self.key).unwrap()
    }

    pub fn snapshot(&self, vector: VersionVector, size: usize) -> SealedSnapshot {
        SealedSnapshot::seal(
            self.doc,
            0,
            vector,
            &vec![7; size],
            &self.doc_key,
            &self.key,
        )
        .unwrap()
    }
}

fn vector_of(entries: &[(PublicKey, u64)]) -> VersionVector {
    let mut v = VersionVector::new();
    for (actor, seq) in entries {
        v.set(*actor, *seq);
    }
    v
}

fn changes_are_gap_free_and_kept(opener: &mut impl Opener, n: u32) {
    let mut store = opener.open(n);
    let w = Writer::new(DocId::random());
    assert_eq!(store.put_change(&w.change(1, 10)).unwrap(), Put::Stored);
    assert_eq!(store.put_change(&w.change(1, 10)).unwrap(), Put::Duplicate);
    assert_eq!(
        store.put_change(&w.change(3, 10)).unwrap(),
        Put::Gap { have: 1 },
        "a change past a gap is refused"
    );
    assert!(store.change(w.doc, &w.actor(), 3).unwrap().is_none());
    assert_eq!(store.put_change(&w.change(2, 10)).unwrap(), Put::Stored);
    assert_eq!(store.put_change(&w.change(3, 10)).unwrap(), Put::Stored);
    let second = w.change(2, 10);
    let stored = store.change(w.doc, &w.actor(), 2).unwrap().unwrap();
    assert_eq!(stored.header(), second.header());
    assert!(store.change(w.doc, &w.actor(), 4).unwrap().is_none());
    assert!(
        store
            .change(DocId::random(), &w.actor(), 1)
            .unwrap()
            .is_none()
    );
}

fn vectors_are_per_document_and_per_actor(opener: &mut impl Opener, n: u32) {
    let mut store = opener.open(n);
    let doc = DocId::random();
    let a = Writer::new(doc);
    let b = Writer::new(doc);
    let other = Writer::new(DocId::random());
    for seq in 1..=3 {
        store.put_change(&a.change(seq, 5)).unwrap();
    }
    store.put_change(&b.change(1, 5)).unwrap();
    store.put_change(&other.change(1, 5)).unwrap();
    assert_eq!(
        store.vector(doc).unwrap(),
        vector_of(&[(a.actor(), 3), (b.actor(), 1)])
    );
    assert_eq!(
        store.vector(other.doc).unwrap(),
        vector_of(&[(other.actor(), 1)])
    );
    assert!(store.vector(DocId::random()).unwrap().is_empty());
}

fn key_records_are_kept_once(opener: &mut impl Opener, n: u32) {
    let mut store = opener.open(n);
    let w = Writer::new(DocId::random());
    let first = w.key_record(0);
    let second = w.key_record(1);
    assert!(store.put_key(&first).unwrap());
    assert!(!store.put_key(&first).unwrap(), "the same record twice");
    assert!(store.put_key(&second).unwrap());
    let mut ids: Vec<_> = store
        .keys(w.doc)
        .unwrap()
        .iter()
        .map(|k| (k.epoch, k.id()))
        .collect();
    ids.sort();
    let mut want = vec![(0, first.id()), (1, second.id())];
    want.sort();
    assert_eq!(ids, want);
    assert!(store.keys(DocId::random()).unwrap().is_empty());
}

fn a_snapshot_replaces_only_an_older_one_and_raises_the_vector(opener: &mut impl Opener, n: u32) {
    let mut store = opener.open(n);
    let w = Writer::new(DocId::random());
    store.put_change(&w.change(1, 5)).unwrap();
    let covers_five = w.snapshot(vector_of(&[(w.actor(), 5)]), 50);
    assert!(store.put_snapshot(&covers_five).unwrap());
    assert_eq!(
        store.vector(w.doc).unwrap(),
        vector_of(&[(w.actor(), 5)]),
        "what the snapshot covers counts as held"
    );
    assert_eq!(store.put_change(&w.change(4, 5)).unwrap(), Put::Duplicate);
    assert_eq!(store.put_change(&w.change(6, 5)).unwrap(), Put::Stored);
    let older = w.snapshot(vector_of(&[(w.actor(), 2)]), 10);
    assert!(!store.put_snapshot(&older).unwrap(), "an older snapshot");
    assert_eq!(
        store.snapshot(w.doc).unwrap().unwrap().vector,
        covers_five.vector
    );
    let newer = w.snapshot(vector_of(&[(w.actor(), 6)]), 60);
    assert!(store.put_snapshot(&newer).unwrap());
    assert_eq!(store.snapshot(w.doc).unwrap().unwrap().vector, newer.vector);
    assert!(store.snapshot(DocId::random()).unwrap().is_none());
}

fn compacting_frees_what_the_snapshot_covers(opener: &mut impl Opener, n: u32) {
    let mut store = opener.open(n);
    let w = Writer::new(DocId::random());
    let changes: Vec<_> = (1..=4).map(|seq| w.change(seq, 100)).collect();
    for change in &changes {
        store.put_change(change).unwrap();
    }
    assert_eq!(
        store.compact(w.doc).unwrap(),
        0,
        "no snapshot, nothing freed"
    );
    store
        .put_snapshot(&w.snapshot(vector_of(&[(w.actor(), 2)]), 10))
        .unwrap();
    let freed = store.compact(w.doc).unwrap();
    let covered: u64 = changes[..2].iter().map(|c| c.encode().len() as u64).sum();
    assert_eq!(freed, covered, "the two covered changes' encoded bytes");
    assert!(store.change(w.doc, &w.actor(), 2).unwrap().is_none());
    assert!(store.change(w.doc, &w.actor(), 3).unwrap().is_some());
    assert_eq!(store.vector(w.doc).unwrap().get(&w.actor()), 4);
    assert_eq!(store.compact(w.doc).unwrap(), 0, "nothing left to free");
}

fn docs_and_stored_bytes_count_everything(opener: &mut impl Opener, n: u32) {
    let mut store = opener.open(n);
    assert!(store.docs().unwrap().is_empty());
    assert_eq!(store.stored_bytes().unwrap(), 0);
    let a = Writer::new(DocId::random());
    let b = Writer::new(DocId::random());
    let change = a.change(1, 300);
    let key = b.key_record(0);
    let snapshot = b.snapshot(vector_of(&[(b.actor(), 1)]), 200);
    store.put_change(&change).unwrap();
    store.put_key(&key).unwrap();
    store.put_snapshot(&snapshot).unwrap();
    let mut want = vec![a.doc, b.doc];
    want.sort();
    assert_eq!(store.docs().unwrap(), want);
    assert_eq!(
        store.stored_bytes().unwrap(),
        (change.encode().len() + key.encode().len() + snapshot.encode().len()) as u64,
        "stored bytes are the encoded records"
    );
}

fn what_is_acknowledged_survives_reopening(opener: &mut impl Opener, n: u32) {
    let w = Writer::new(DocId::random());
    let key = w.key_record(0);
    {
        let mut store = opener.open(n);
        store.put_change(&w.change(1, 10)).unwrap();
        store.put_change(&w.change(2, 10)).unwrap();
        store.put_key(&key).unwrap();
        store
            .put_snapshot(&w.snapshot(vector_of(&[(w.actor(), 1)]), 10))
            .unwrap();
    }
    let mut store = opener.open(n);
    assert_eq!(store.vector(w.doc).unwrap().get(&w.actor()), 2);
    assert!(store.change(w.doc, &w.actor(), 2).unwrap().is_some());
    assert_eq!(store.keys(w.doc).unwrap().len(), 1);
    assert!(store.snapshot(w.doc).unwrap().is_some());
    assert_eq!(store.put_change(&w.change(3, 10)).unwrap(), Put::Stored);
}

fn a_batch_reads_its_own_writes(opener: &mut impl Opener, n: u32, durable: bool) {
    let w = Writer::new(DocId::random());
    {
        let mut store = opener.open(n);
        store.begin_batch();
        for seq in 1..=5 {
            assert_eq!(store.put_change(&w.change(seq, 10)).unwrap(), Put::Stored);
        }
        assert_eq!(
            store.vector(w.doc).unwrap().get(&w.actor()),
            5,
            "a batch reads its own writes"
        );
        assert_eq!(store.put_change(&w.change(5, 10)).unwrap(), Put::Duplicate);
        store.end_batch().unwrap();
        assert_eq!(store.vector(w.doc).unwrap().get(&w.actor()), 5);
    }
    if durable {
        let store = opener.open(n);
        assert_eq!(
            store.vector(w.doc).unwrap().get(&w.actor()),
            5,
            "the batch is durable at its end"
        );
    }
}

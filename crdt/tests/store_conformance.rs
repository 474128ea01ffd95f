//! The store conformance suite (`jarvis_crdt::store::conformance`) on the stores of this crate:
//! in memory, and sled (reopened through the same database, under a namespace per store as a
//! relay keeps its users).

#![allow(clippy::unwrap_used)]

use jarvis_crdt::store::MemStore;
use jarvis_crdt::store::conformance;
use jarvis_crdt::store::sled::{SledStore, open_db};

#[test]
fn the_memory_store_conforms() {
    conformance::run(&mut |_| MemStore::new(), 0, false);
}

#[test]
fn the_sled_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(&dir.path().join("store")).unwrap();
    conformance::run(
        &mut |n| SledStore::open_in(&db, &format!("suite/{n}/")).unwrap(),
        0,
        true,
    );
}

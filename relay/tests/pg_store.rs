//! The relay's PostgreSQL store on a real, throwaway PostgreSQL cluster: the same conformance
//! suite as the sled and memory stores, and what only a shared database must hold: two relay
//! instances offering the same changes at once store each exactly once, with no gap.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::{Arc, Barrier};

use common::postgres::Cluster;
use jarvis_crdt::DocId;
use jarvis_crdt::store::conformance::{self, Writer};
use jarvis_crdt::store::{Put, Store};
use jarvis_relay::pg::{Heard, Pg, SCHEMA_VERSION, Stored};

#[test]
fn the_postgres_store_conforms() {
    let cluster = Cluster::start();
    let pg = Pg::connect(&cluster.url("postgres"), 4).unwrap();
    assert_eq!(pg.schema_version().unwrap(), SCHEMA_VERSION);
    conformance::run(&mut |n| pg.store(&format!("suite/{n}/")), 0, true);
    // Users are kept apart: one namespace sees nothing of another's.
    let mut alice = pg.store("user/alice/");
    let w = Writer::new(DocId::random());
    alice.put_change(&w.change(1, 10)).unwrap();
    let bob = pg.store("user/bob/");
    assert!(bob.docs().unwrap().is_empty());
    assert!(bob.change(w.doc, &w.actor(), 1).unwrap().is_none());
    assert_eq!(bob.stored_bytes().unwrap(), 0);
}

#[test]
fn migrations_run_once_and_a_second_instance_finds_them_applied() {
    let cluster = Cluster::start();
    let url = cluster.create_database("fleet");
    let first = Pg::connect(&url, 2).unwrap();
    let second = Pg::connect(&url, 2).unwrap();
    assert_eq!(first.migrate().unwrap(), 0, "already applied on connect");
    assert_eq!(second.schema_version().unwrap(), SCHEMA_VERSION);
    assert!(second.healthy());
}

#[test]
fn two_instances_offering_the_same_changes_store_each_once() {
    let cluster = Cluster::start();
    let url = cluster.url("postgres");
    let w = Arc::new(Writer::new(DocId::random()));
    let changes: Arc<Vec<_>> = Arc::new((1..=200).map(|seq| w.change(seq, 64)).collect());
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let pg = Pg::connect(&url, 2).unwrap();
            let changes = Arc::clone(&changes);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut store = pg.store("user/alice/");
                barrier.wait();
                changes
                    .iter()
                    .map(|c| store.put_change(c).unwrap())
                    .collect::<Vec<Put>>()
            })
        })
        .collect();
    let instances: Vec<Vec<Put>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (i, (a, b)) in instances[0].iter().zip(&instances[1]).enumerate() {
        let stored = [a, b].iter().filter(|p| ***p == Put::Stored).count();
        assert_eq!(
            stored,
            1,
            "change {} was stored by {stored} instances ({a:?}, {b:?})",
            i + 1
        );
        for p in [a, b] {
            assert!(
                matches!(p, Put::Stored | Put::Duplicate),
                "a change offered in order is never a gap: {p:?}"
            );
        }
    }
    let pg = Pg::connect(&url, 1).unwrap();
    let store = pg.store("user/alice/");
    assert_eq!(store.vector(w.doc).unwrap().get(&w.actor()), 200);
    let bytes: u64 = changes.iter().map(|c| c.encode().len() as u64).sum();
    assert_eq!(store.stored_bytes().unwrap(), bytes);
}

#[test]
fn a_database_that_goes_away_fails_writes_and_comes_back_without_a_restart() {
    let cluster = Cluster::start();
    let pg = Pg::connect(&cluster.url("postgres"), 2).unwrap();
    let mut store = pg.store("user/alice/");
    let w = Writer::new(DocId::random());
    assert_eq!(store.put_change(&w.change(1, 10)).unwrap(), Put::Stored);
    cluster.stop();
    let refused = store.put_change(&w.change(2, 10));
    assert!(
        refused.is_err(),
        "no database, no acknowledgement: {refused:?}"
    );
    assert!(!pg.healthy());
    // A batch that cannot begin fails at its end too: nothing in it is acknowledged.
    store.begin_batch();
    assert!(store.put_change(&w.change(2, 10)).is_err());
    assert!(store.end_batch().is_err());
    cluster.resume();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let put = loop {
        match store.put_change(&w.change(2, 10)) {
            Ok(put) => break put,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => panic!("the store did not come back: {e}"),
        }
    };
    assert_eq!(put, Put::Stored);
    assert!(pg.healthy());
    assert_eq!(store.vector(w.doc).unwrap().get(&w.actor()), 2);
}

/// A store dropped in the middle of a batch (the hub forgetting a user, a timeout dropping the
/// work) must not hand its open transaction back to the pool: the next user of that connection
/// would write inside it, and what it "stored" would never commit.
#[test]
fn a_transaction_left_open_never_goes_back_to_the_pool() {
    let cluster = Cluster::start();
    let url = cluster.url("postgres");
    // One connection: whatever the dropped batch held is what the next write gets.
    let pg = Pg::connect(&url, 1).unwrap();
    let w = Writer::new(DocId::random());
    {
        let mut store = pg.store("user/alice/");
        store.begin_batch();
        assert_eq!(store.put_change(&w.change(1, 10)).unwrap(), Put::Stored);
        // Dropped without end_batch: the batch's change is not stored.
    }
    let mut store = pg.store("user/alice/");
    assert_eq!(
        store.put_change(&w.change(1, 10)).unwrap(),
        Put::Stored,
        "the abandoned batch's change was rolled back"
    );
    // And this write, outside any batch, is durable: another instance sees it.
    let other = Pg::connect(&url, 1).unwrap();
    assert_eq!(
        other
            .store("user/alice/")
            .vector(w.doc)
            .unwrap()
            .get(&w.actor()),
        1
    );
}

/// What the listener hears next, within a few seconds.
fn hear(heard: &mut tokio::sync::mpsc::Receiver<Heard>) -> Heard {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match heard.try_recv() {
            Ok(h) => return h,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("nothing heard: {e}"),
        }
    }
}

/// A relay's round touches many users; their batches are one transaction on one connection
/// (before, each user's batch held a pooled connection of its own, so a round of more users
/// than the pool has connections waited out the timeout and was refused), committed by the
/// last `end_batch`, and announced to the other instances on commit, by ids only.
#[test]
fn a_group_commit_of_many_users_is_one_transaction_announced_when_it_commits() {
    let cluster = Cluster::start();
    let url = cluster.url("postgres");
    let pg = Pg::connect(&url, 2).unwrap();
    let other = Pg::connect(&url, 1).unwrap();
    let mut heard = other.listen();
    assert!(matches!(hear(&mut heard), Heard::Missed), "listening");

    let group = pg.group(7);
    let users: Vec<(String, Writer)> = (0..10)
        .map(|i| (format!("user/u{i}/"), Writer::new(DocId::random())))
        .collect();
    let mut stores: Vec<_> = users.iter().map(|(ns, _)| group.store(ns)).collect();
    for (store, (_, w)) in stores.iter_mut().zip(&users) {
        store.begin_batch();
        assert_eq!(store.put_change(&w.change(1, 10)).unwrap(), Put::Stored);
        assert_eq!(store.put_change(&w.change(2, 10)).unwrap(), Put::Stored);
    }
    // Not durable, and not announced, until the last member ends.
    let reader = other.store(&users[0].0);
    assert_eq!(
        reader
            .vector(users[0].1.doc)
            .unwrap()
            .get(&users[0].1.actor()),
        0
    );
    for store in &mut stores[..9] {
        store.end_batch().unwrap();
    }
    assert!(heard.try_recv().is_err(), "announced before the commit");
    assert_eq!(
        reader
            .vector(users[0].1.doc)
            .unwrap()
            .get(&users[0].1.actor()),
        0
    );
    stores[9].end_batch().unwrap();
    for (ns, w) in &users {
        assert_eq!(other.store(ns).vector(w.doc).unwrap().get(&w.actor()), 2);
    }
    let mut announced = std::collections::BTreeMap::new();
    while announced.len() < users.len() {
        match hear(&mut heard) {
            Heard::Stored(stored) => {
                assert_eq!(stored.from, 7);
                announced.insert(stored.ns.clone(), stored);
            }
            other => panic!("only what was stored: {other:?}"),
        }
    }
    for (ns, w) in &users {
        let stored = &announced[ns];
        assert_eq!(stored.changes, vec![(w.doc, w.actor(), 1, 2)]);
        let size = w.change(1, 10).encode().len() + w.change(2, 10).encode().len();
        assert_eq!(stored.grew, size as i64);
    }
}

/// Announcements are read as untrusted text: bounded, checked, refused with why.
#[test]
fn a_malformed_announcement_is_refused() {
    for bad in [
        "",
        "{}",
        "not json",
        r#"{"from":1,"ns":"user/61/","changes":[["zz","00",1,1]]}"#,
        r#"{"from":1,"ns":"user/61/","changes":[["00000000000000000000000000000000","00",1,1]]}"#,
    ] {
        assert!(Stored::decode(bad).is_err(), "{bad:?} was taken");
    }
    let long = "x".repeat(9_000);
    assert!(Stored::decode(&long).is_err());
}

/// A user's list of documents stays cached while writes go to documents on it (a resync then
/// reads nothing), and is read again once a write adds a document: it may lag the database (a
/// document another instance added, heard of through its announcement), never lead it.
#[test]
fn the_list_of_documents_is_read_again_only_when_a_write_adds_one() {
    let cluster = Cluster::start();
    let url = cluster.url("postgres");
    let pg = Pg::connect(&url, 2).unwrap();
    let group = pg.group(1);
    let ns = "user/ann/";
    let mut store = group.store(ns);
    let (a, b, c) = (
        Writer::new(DocId::random()),
        Writer::new(DocId::random()),
        Writer::new(DocId::random()),
    );
    let write = |store: &mut jarvis_relay::pg::PgStore, w: &Writer, seq| {
        store.begin_batch();
        assert_eq!(store.put_change(&w.change(seq, 10)).unwrap(), Put::Stored);
        store.end_batch().unwrap();
    };
    write(&mut store, &a, 1);
    assert_eq!(store.docs().unwrap(), vec![a.doc]);
    // Another instance adds a document (its announcement is not heard in this test).
    let mut elsewhere = Pg::connect(&url, 1).unwrap().store(ns);
    assert_eq!(elsewhere.put_change(&b.change(1, 10)).unwrap(), Put::Stored);
    // A write to a listed document: the list is not read again.
    write(&mut store, &a, 2);
    assert_eq!(store.docs().unwrap(), vec![a.doc], "kept, not re-read");
    // A write that adds a document: read again, with the other instance's too.
    write(&mut store, &c, 1);
    let mut all = vec![a.doc, b.doc, c.doc];
    all.sort();
    assert_eq!(store.docs().unwrap(), all);
}

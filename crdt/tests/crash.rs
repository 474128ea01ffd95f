//! Crash safety: a process writing changes to a sled store is killed at random points; every
//! change it acknowledged (its `put_change` returned, or for a group commit, `end_batch`) is
//! there when the store is reopened.
//!
//! The test re-runs its own binary as the writer (`JARVIS_CRASH_WRITER=dir`), reads its
//! acknowledgements from stdout, and kills it with SIGKILL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use jarvis_crdt::envelope::{ChangeHeader, DocKey};
use jarvis_crdt::store::sled::SledStore;
use jarvis_crdt::{DocId, Put, SealedChange, Store};
use jarvis_identity::SecretKey;

const DOC: DocId = DocId([9; 16]);

fn author() -> SecretKey {
    SecretKey::from_seed(&[5; 32])
}

/// The writer process: appends changes forever, printing each acknowledged sequence number.
/// Not a test of its own: `acknowledged_changes_survive_sigkill` runs it with `--ignored`.
#[test]
#[ignore = "helper process started by acknowledged_changes_survive_sigkill"]
fn crash_writer() {
    let dir = std::env::var("JARVIS_CRASH_WRITER").expect("started by the crash test");
    let mut store = SledStore::open(std::path::Path::new(&dir)).unwrap();
    let key = DocKey::generate();
    let me = author();
    let mut seq = store.vector(DOC).unwrap().get(&me.public());
    let mut out = std::io::stdout().lock();
    let mut round = 0usize;
    loop {
        // Every other round a group commit of 2 to 6 changes, acknowledged after `end_batch`.
        round += 1;
        let batch = if round.is_multiple_of(2) {
            2 + round % 5
        } else {
            1
        };
        if batch > 1 {
            store.begin_batch();
        }
        let mut acks = Vec::new();
        for _ in 0..batch {
            seq += 1;
            acks.push(seq);
            put(&mut store, &key, &me, seq);
        }
        if batch > 1 {
            store.end_batch().unwrap();
        }
        for seq in acks {
            writeln!(out, "ack {seq}").unwrap();
        }
        out.flush().unwrap();
    }
}

fn put(store: &mut SledStore, key: &DocKey, me: &SecretKey, seq: u64) {
    let payload = vec![(seq % 251) as u8; 200 + (seq as usize % 3000)];
    let change = SealedChange::seal(
        ChangeHeader {
            doc: DOC,
            actor: me.public(),
            seq,
            epoch: 0,
        },
        &payload,
        key,
        me,
    )
    .unwrap();
    assert_eq!(store.put_change(&change).unwrap(), Put::Stored);
}

#[cfg(unix)]
#[test]
fn acknowledged_changes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let mut acked = 0u64;
    // Kill points vary with the run: after 1..=40 acknowledgements, plus a random delay.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    for round in 0..6u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("JARVIS_CRASH_WRITER", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let kill_after = 1 + (seed.wrapping_mul(round + 7) >> 3) % 40;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        while let Some(Ok(line)) = lines.next() {
            if let Some(n) = line.strip_prefix("ack ") {
                acked = acked.max(n.parse().unwrap());
                seen += 1;
                if seen >= kill_after {
                    break;
                }
            }
        }
        // Let it get some way into its next write, then kill it without warning.
        std::thread::sleep(std::time::Duration::from_micros(
            (seed >> (round + 3)) % 3000,
        ));
        child.kill().unwrap();
        child.wait().unwrap();

        let store = SledStore::open(&path).unwrap();
        let have = store.vector(DOC).unwrap().get(&author().public());
        assert!(
            have >= acked,
            "round {round}: acknowledged {acked}, reopened store has {have}"
        );
        for seq in 1..=acked {
            let change = store.change(DOC, &author().public(), seq).unwrap();
            let change =
                change.unwrap_or_else(|| panic!("round {round}: acknowledged change {seq} lost"));
            change.verify().unwrap();
        }
    }
    assert!(acked >= 6);
}

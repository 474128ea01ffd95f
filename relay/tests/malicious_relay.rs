//! A malicious relay (#20): the org's relay certificate and key, in the hands of an adversary
//! that speaks the mesh's protocols its own way. The devices' conversations must stay readable
//! to them, unreadable to the relay, and unaltered, and every device must keep starting.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::path::Path;

use common::adversary::Adversary;
use common::{jarvis, ok, say, wait_for};
use jarvis_crdt::envelope::{DocKey, KeyRecord};
use jarvis_crdt::{DocId, SyncMessage};
use jarvis_home::{Home, KeyFile};

/// A relay's identity, taken from its enrolled home as a thief would: its key and chain.
fn stolen_relay(home: &Path) -> (jarvis_identity::SecretKey, jarvis_identity::CertChain) {
    let home = Home::locate(Some(home.to_path_buf())).unwrap();
    let key = home.unseal_key(KeyFile::Identity, "pw").unwrap().signing;
    let chain = home.load().unwrap().chain().unwrap().unwrap();
    (key, chain)
}

/// #20, finding 1. Before: devices took any validly signed key record, so the relay (which has
/// every device's age recipient from its hello) offered a key of its own as the next epoch, the
/// device sealed what followed with it, and the relay read it. Now only the user's devices may
/// write key records, changes and snapshots, so the relay's key is dropped (and counted) and the
/// next message is sealed with the devices' own key.
#[test]
fn a_relay_that_injects_a_key_of_its_own_reads_nothing_written_after() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let admin = d.join("admin");
    ok(&admin, &["admin", "init", "--org", "acme"]);
    let token = ok(&admin, &["admin", "invite", "alice"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let laptop = d.join("laptop");
    ok(&laptop, &["join", &token, "--device-name", "laptop"]);
    let root: jarvis_identity::PublicKey = ok(&laptop, &["whoami"])["org_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let relay_home = d.join("relay");
    common::enrol_relay(&admin, &relay_home);
    let (relay_key, relay_chain) = stolen_relay(&relay_home);
    let adversary = Adversary::listen(&relay_key, relay_chain, root);

    let _node = common::node_up(
        jarvis(&laptop),
        &[
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--peer",
            &adversary.address,
        ],
    );
    // The laptop admits the "relay" and syncs with it: it sends its hello (with its age
    // recipient) and, once it writes, the conversation's key record and changes (sealed).
    let conversation = say(&laptop, &["the first secret"]);
    let doc: DocId = conversation.parse().unwrap();
    let (device, recipient) = wait_for("the laptop's hello and its first changes", || {
        let seen = adversary.received();
        let (peer, hello) = seen.hellos.first()?;
        let recipient = hello.chain.leaf()?.age_recipient()?.to_owned();
        seen.sync
            .iter()
            .any(|(_, m)| matches!(m, SyncMessage::Changes { doc: d, .. } if *d == doc))
            .then_some((*peer, recipient))
    });

    // The attack: epoch 1 of the conversation, the relay's own key wrapped to the laptop.
    let relays_key = DocKey::generate();
    let recipient: jarvis_identity::age::x25519::Recipient = recipient.parse().unwrap();
    let injected = KeyRecord::wrap(doc, 1, &relays_key, &[recipient], &relay_key).unwrap();
    let (before, answered) = {
        let seen = adversary.received();
        (seen.sync.len(), seen.answered)
    };
    adversary.send_sync(
        device,
        SyncMessage::Keys {
            doc,
            keys: vec![injected],
        },
    );
    wait_for("the laptop to handle the relay's key record", || {
        (adversary.received().answered > answered).then_some(())
    });

    say(
        &laptop,
        &["the second secret", "--conversation", &conversation],
    );
    let after: Vec<jarvis_crdt::SealedChange> = wait_for("the laptop's next change", || {
        let seen = adversary.received();
        let changes: Vec<_> = seen.sync[before..]
            .iter()
            .filter_map(|(_, m)| match m {
                SyncMessage::Changes { doc: d, changes } if *d == doc => Some(changes.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        (!changes.is_empty()).then_some(changes)
    });
    for change in &after {
        assert_eq!(change.header().epoch, 0, "sealed with the relay's epoch");
        assert!(
            change.open(&relays_key).is_err(),
            "the relay opened what the laptop wrote after the attack"
        );
    }
    // The laptop reads its own conversation as it wrote it.
    let shown = ok(&laptop, &["show", &conversation]);
    let texts: Vec<&str> = shown["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(texts, ["the first secret", "the second secret"]);
    // What was dropped is counted where the user (and a support person) can see it.
    let status = ok(&laptop, &["status"]);
    assert!(
        status["quarantined"]["unknown_writers"].as_u64().unwrap() >= 1,
        "{status}"
    );

    // The rest of the attack list: a change and a snapshot in the relay's own name (the
    // snapshot claiming every actor far past what exists), and the laptop's own changes
    // replayed. Nothing of it changes the conversation, and the laptop still starts.
    let own: Vec<jarvis_crdt::SealedChange> = adversary
        .received()
        .sync
        .iter()
        .filter_map(|(_, m)| match m {
            SyncMessage::Changes { doc: d, changes } if *d == doc => Some(changes.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let mut inflated = jarvis_crdt::VersionVector::new();
    inflated.set(relay_key.public(), 1_000_000);
    for change in &own {
        inflated.set(change.header().actor, 1_000_000);
    }
    let forged_change = jarvis_crdt::SealedChange::seal(
        jarvis_crdt::ChangeHeader {
            doc,
            actor: relay_key.public(),
            seq: 1,
            epoch: 0,
        },
        b"not even automerge",
        &relays_key,
        &relay_key,
    )
    .unwrap();
    let bogus = jarvis_crdt::SealedSnapshot::seal(
        doc,
        0,
        inflated,
        b"none of the history",
        &relays_key,
        &relay_key,
    )
    .unwrap();
    let answered = adversary.received().answered;
    adversary.send_sync(
        device,
        SyncMessage::Changes {
            doc,
            changes: vec![forged_change],
        },
    );
    adversary.send_sync(device, SyncMessage::Snapshot { snapshot: bogus });
    adversary.send_sync(device, SyncMessage::Changes { doc, changes: own });
    wait_for(
        "the laptop to handle the forged change, snapshot and replay",
        || (adversary.received().answered >= answered + 3).then_some(()),
    );
    let dropped = ok(&laptop, &["status"])["quarantined"]["unknown_writers"]
        .as_u64()
        .unwrap();
    assert!(
        dropped >= 3,
        "the forged key, change and snapshot are dropped: {dropped}"
    );
    drop(_node);
    let _node = common::node_up(
        jarvis(&laptop),
        &["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"],
    );
    let shown = ok(&laptop, &["show", &conversation]);
    let texts: Vec<&str> = shown["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(
        texts,
        ["the first secret", "the second secret"],
        "after the attack and a restart"
    );
}

/// #20 finding 6. Before: a node's hello went in clear to whatever it connected to (a stranger
/// found on mDNS, or dialled), with the org root, the user's and device's names, the device's
/// age recipient, and the whole revocation set. Now a hello is sealed for the org and carries
/// no revocations: a stranger reads nothing, and even one that knows the org id (the root)
/// learns no revocations until it has proven it is a member.
#[test]
fn a_stranger_a_node_dials_learns_nothing_from_its_hello() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let admin = d.join("admin");
    ok(&admin, &["admin", "init", "--org", "acme"]);
    ok(&admin, &["admin", "revoke", "--user", "mallory"]);
    let token = ok(&admin, &["admin", "invite", "alice"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let laptop = d.join("laptop");
    ok(&laptop, &["join", &token, "--device-name", "laptop"]);
    // The laptop knows the org's revocation (as it would from any relay).
    std::fs::copy(admin.join("revocations"), laptop.join("revocations")).unwrap();
    let whoami = ok(&laptop, &["whoami"]);
    let root: jarvis_identity::PublicKey = whoami["org_id"].as_str().unwrap().parse().unwrap();

    // A stranger: another org's admin, listening; the laptop is pointed at it.
    let other = d.join("globex");
    ok(&other, &["admin", "init", "--org", "globex"]);
    let (key, chain) = stolen_relay(&other);
    // Given acme's root, so it can try to open what it gets (as one that learned the org id).
    let stranger = Adversary::listen(&key, chain, root);
    let _node = common::node_up(
        jarvis(&laptop),
        &[
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--peer",
            &stranger.address,
        ],
    );
    let seen = wait_for("the laptop's hello to reach the stranger", || {
        let seen = stranger.received();
        (!seen.hellos.is_empty()).then_some(seen)
    });

    let status = ok(&laptop, &["status"]);
    assert_eq!(status["revocations"], 1, "{status}");
    let recipient = seen.hellos[0]
        .1
        .chain
        .leaf()
        .unwrap()
        .age_recipient()
        .unwrap()
        .to_owned();
    let clear: [&[u8]; 5] = [
        b"alice",
        b"laptop",
        b"acme",
        recipient.as_bytes(),
        &root.to_bytes(),
    ];
    let unknown_root = jarvis_identity::SecretKey::generate().public();
    for (_, bytes) in &seen.auth_bytes {
        for secret in clear {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "`{}` went to a stranger in clear",
                String::from_utf8_lossy(secret)
            );
        }
        assert!(jarvis_identity::hello::Hello::decode(bytes, &unknown_root).is_err());
    }
    // No revocations either: a hello carries only their digest, and the set goes only to
    // admitted peers, on a protocol of its own.
    for (_, bytes) in &seen.auth_bytes {
        assert!(bytes.len() < 4096, "a {}-byte hello", bytes.len());
    }
    // And the stranger is refused all the same.
    wait_for("the laptop to refuse the stranger", || {
        let status = ok(&laptop, &["status"]);
        status["peers"]
            .as_array()?
            .iter()
            .any(|p| p["peer_id"] == stranger.peer_id.to_string() && !p["refused"].is_null())
            .then_some(())
    });
}

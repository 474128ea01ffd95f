//! What the encryption promises: a revoked device reads nothing sealed after its revocation; a
//! keyless relay's store holds no plaintext; altered, replayed, misdirected and wrongly-keyed
//! changes are refused.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{Net, devices};
use jarvis_crdt::envelope::{ChangeHeader, DocKey, EnvelopeError, KeyRecord, SealedSnapshot};
use jarvis_crdt::store::sled::SledStore;
use jarvis_crdt::{
    Doc, MemStore, NewMessage, Replica, ReplicaError, Role, SealedChange, Status, Store,
    SyncMessage,
};
use jarvis_identity::SecretKey;

fn say(
    replica: &mut Replica<MemStore>,
    doc: jarvis_crdt::DocId,
    id: &str,
    text: &str,
) -> SealedChange {
    replica
        .edit(doc, |d, me| {
            d.append(
                NewMessage {
                    id,
                    role: Role::User,
                    text,
                    status: Status::Done,
                    now_ms: 1,
                },
                me,
            )
        })
        .unwrap()
}

#[test]
fn a_revoked_device_reads_nothing_sealed_after_revocation() {
    let [a, b, c]: [_; 3] = devices(3).try_into().ok().unwrap();
    let all = [a.age.to_public(), b.age.to_public(), c.age.to_public()];
    let c_age = c.age.clone();
    let mut ra = Replica::device(MemStore::new(), a.key, a.age);
    let mut rb = Replica::device(MemStore::new(), b.key, b.age);
    let mut rc = Replica::device(MemStore::new(), c.key, c.age);

    let (doc, key0, first) = ra
        .create(|me| Doc::create_conversation(me, "t", 0), &all)
        .unwrap();
    let before = say(&mut ra, doc, "1", "before revocation");
    for r in [&mut rb, &mut rc] {
        r.receive_keys(std::slice::from_ref(&key0)).unwrap();
        r.receive_changes(&[first.clone(), before.clone()]).unwrap();
    }
    assert_eq!(
        rc.doc(doc).unwrap().messages().unwrap()[0].text,
        "before revocation"
    );

    // C is revoked: A starts epoch 1, wrapped to A and B only.
    let key1 = ra.rotate(doc, &all[..2]).unwrap();
    let secrets = ["the new plan", "launch on tuesday", "password is swordfish"];
    let after: Vec<SealedChange> = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| say(&mut ra, doc, &format!("s{i}"), s))
        .collect();
    assert!(after.iter().all(|c| c.header().epoch == 1));

    // C is given every ciphertext produced after its revocation, and the new key record.
    assert!(matches!(
        key1.unwrap_key(&c_age),
        Err(EnvelopeError::NotARecipient { .. })
    ));
    rc.receive_keys(std::slice::from_ref(&key1)).unwrap();
    rc.receive_changes(&after).unwrap();
    let c_view = rc.doc(doc).unwrap().messages().unwrap();
    assert_eq!(c_view.len(), 1, "C applied nothing new");
    // No key C has opens any of them.
    let old_key = key0.unwrap_key(&c_age).unwrap();
    for change in &after {
        assert!(matches!(change.open(&old_key), Err(EnvelopeError::Decrypt)));
    }

    // B, still a member, reads everything.
    rb.receive_keys(&[key1]).unwrap();
    rb.receive_changes(&after).unwrap();
    let texts: Vec<String> = rb
        .doc(doc)
        .unwrap()
        .messages()
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(
        texts,
        [
            "before revocation",
            "the new plan",
            "launch on tuesday",
            "password is swordfish"
        ]
    );
}

#[test]
fn the_relay_store_holds_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    // The relay and both devices use real sled stores on disk.
    let [a, b]: [_; 2] = devices(2).try_into().ok().unwrap();
    let relay = SledStore::open(&dir.path().join("relay")).unwrap();
    let device_b = SledStore::open(&dir.path().join("device-b")).unwrap();
    let recipients_ab = [a.age.to_public(), b.age.to_public()];
    let mut net: Net<SledStore> = Net {
        nodes: vec![
            common::Node {
                replica: Replica::keyless(relay),
                sessions: Default::default(),
            },
            common::Node {
                replica: Replica::device(
                    SledStore::open(&dir.path().join("device-a")).unwrap(),
                    a.key,
                    a.age,
                ),
                sessions: Default::default(),
            },
            common::Node {
                replica: Replica::device(device_b, b.key, b.age),
                sessions: Default::default(),
            },
        ],
        queue: Default::default(),
        now_ms: 0,
    };
    net.link(0, 1);
    net.link(0, 2);
    let (doc, key, first) = net.nodes[1]
        .replica
        .create(
            |me| Doc::create_conversation(me, "Top secret title", 0),
            &recipients_ab,
        )
        .unwrap();
    net.start();
    net.fan_out_key(1, &key);
    net.fan_out(1, None, &[first]);
    let secret = "the quarterly numbers are 4711";
    let change = net.nodes[1]
        .replica
        .edit(doc, |d, me| {
            d.append(
                NewMessage {
                    id: "x",
                    role: Role::User,
                    text: secret,
                    status: Status::Done,
                    now_ms: 1,
                },
                me,
            )
        })
        .unwrap();
    net.fan_out(1, None, &[change]);
    net.settle();

    // Device B got it through the relay...
    assert_eq!(
        net.nodes[2].replica.doc(doc).unwrap().messages().unwrap()[0].text,
        secret
    );
    assert!(net.nodes[0].replica.store().stored_bytes().unwrap() > 0);
    drop(net);

    // ...and no file the relay or either device wrote contains the text or the title.
    let mut files = Vec::new();
    #[allow(clippy::items_after_statements)]
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out)
            } else {
                out.push(p)
            }
        }
    }
    // A canary proves the search finds plaintext that sled does hold.
    {
        let canary = sled::open(dir.path().join("canary")).unwrap();
        canary.insert(b"k", secret.as_bytes()).unwrap();
        canary.flush().unwrap();
    }
    walk(dir.path(), &mut files);
    let (canary, files): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|f| f.starts_with(dir.path().join("canary")));
    assert!(
        canary.iter().any(|f| {
            let bytes = std::fs::read(f).unwrap();
            bytes.windows(secret.len()).any(|w| w == secret.as_bytes())
        }),
        "the search cannot see plaintext in a sled file"
    );
    assert!(files.len() > 3);
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for needle in [
            secret.as_bytes(),
            b"Top secret title".as_slice(),
            b"4711".as_slice(),
        ] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds plaintext",
                file.display()
            );
        }
    }
}

#[test]
fn altered_replayed_and_wrongly_keyed_changes_are_refused() {
    let [a, b]: [_; 2] = devices(2).try_into().ok().unwrap();
    let all = [a.age.to_public(), b.age.to_public()];
    let a_pub = a.key.public();
    let mut ra = Replica::device(MemStore::new(), a.key, a.age);
    let mut rb = Replica::device(MemStore::new(), b.key, b.age);
    let (doc, key, first) = ra
        .create(|me| Doc::create_conversation(me, "t", 0), &all)
        .unwrap();
    rb.receive_keys(&[key]).unwrap();

    // A flipped byte anywhere is refused (bad signature or malformed), never a panic.
    let bytes = first.encode();
    for i in (0..bytes.len()).step_by(7) {
        let mut bad = bytes.clone();
        bad[i] ^= 0x40;
        if let Ok(change) = SealedChange::decode(&bad) {
            assert!(
                rb.receive_changes(&[change]).is_err(),
                "flipped byte {i} accepted"
            );
        }
    }
    // Truncated and oversized.
    assert!(SealedChange::decode(&bytes[..bytes.len() - 1]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(SealedChange::decode(&longer).is_err());
    assert!(SyncMessage::decode(&vec![1u8; jarvis_crdt::sync::MAX_MESSAGE_BYTES + 1]).is_err());

    // A change replayed under another sequence number or document fails to open: the header is
    // bound to the ciphertext, and re-signing needs the author's key.
    let stranger = SecretKey::generate();
    let forged_key = DocKey::generate();
    let forged = SealedChange::seal(
        ChangeHeader {
            doc,
            actor: stranger.public(),
            seq: 1,
            epoch: 0,
        },
        b"not automerge",
        &forged_key,
        &stranger,
    )
    .unwrap();
    rb.set_writers([a_pub]);
    // Not one of the user's devices: dropped before it is stored (the rest of the message goes
    // on), and counted.
    let got = rb.receive_changes(&[forged]).unwrap();
    assert!(got.stored.is_empty());
    assert_eq!(rb.quarantine().unwrap().unknown_writers, 1);

    // The real change applies; delivering it again is a no-op.
    let got = rb.receive_changes(std::slice::from_ref(&first)).unwrap();
    assert_eq!(got.stored.len(), 1);
    let again = rb.receive_changes(&[first]).unwrap();
    assert!(again.stored.is_empty());
    assert_eq!(rb.doc(doc).unwrap().title().unwrap(), "t");
}

#[test]
fn a_member_sealing_with_the_wrong_key_is_refused_before_storing() {
    let [a, b]: [_; 2] = devices(2).try_into().ok().unwrap();
    let all = [a.age.to_public(), b.age.to_public()];
    let a_pub = a.key.public();
    let a_key = SecretKey::from_seed(&a.key.seed());
    let mut ra = Replica::device(MemStore::new(), a.key, a.age);
    let mut rb = Replica::device(MemStore::new(), b.key, b.age);
    let (doc, key, first) = ra
        .create(|me| Doc::create_conversation(me, "t", 0), &all)
        .unwrap();
    rb.receive_keys(&[key]).unwrap();
    rb.receive_changes(&[first]).unwrap();
    let wrong = SealedChange::seal(
        ChangeHeader {
            doc,
            actor: a_pub,
            seq: 2,
            epoch: 0,
        },
        b"whatever",
        &DocKey::generate(),
        &a_key,
    )
    .unwrap();
    assert!(matches!(
        rb.receive_changes(&[wrong]),
        Err(ReplicaError::Envelope(EnvelopeError::Decrypt))
    ));
    assert_eq!(rb.vector(doc).unwrap().get(&a_pub), 1, "nothing was stored");
    // The real second change still goes through.
    let real = say(&mut ra, doc, "1", "hi");
    rb.receive_changes(&[real]).unwrap();
    assert_eq!(rb.doc(doc).unwrap().messages().unwrap()[0].text, "hi");
}

#[test]
fn a_device_reopens_its_sled_store_and_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let [a]: [_; 1] = devices(1).try_into().ok().unwrap();
    let seed = *a.key.seed();
    let age_secret = a.age.clone();
    let (doc, before) = {
        let mut ra = Replica::device(
            SledStore::open(&dir.path().join("a")).unwrap(),
            a.key,
            a.age,
        );
        let (doc, _, _) = ra
            .create(
                |me| Doc::create_conversation(me, "kept", 0),
                &[age_secret.to_public()],
            )
            .unwrap();
        for i in 0..20 {
            ra.edit(doc, |d, me| {
                d.append(
                    NewMessage {
                        id: &i.to_string(),
                        role: Role::User,
                        text: "x",
                        status: Status::Done,
                        now_ms: i,
                    },
                    me,
                )
            })
            .unwrap();
        }
        ra.snapshot(doc).unwrap();
        for i in 20..25 {
            ra.edit(doc, |d, me| {
                d.append(
                    NewMessage {
                        id: &i.to_string(),
                        role: Role::User,
                        text: "y",
                        status: Status::Done,
                        now_ms: i,
                    },
                    me,
                )
            })
            .unwrap();
        }
        (doc, ra.doc(doc).unwrap().messages().unwrap())
    };
    let mut ra = Replica::open_device(
        SledStore::open(&dir.path().join("a")).unwrap(),
        SecretKey::from_seed(&seed),
        age_secret,
    )
    .unwrap();
    assert_eq!(ra.doc(doc).unwrap().messages().unwrap(), before);
    // The next local change continues the same actor's sequence.
    let next = ra
        .edit(doc, |d, me| {
            d.append(
                NewMessage {
                    id: "after",
                    role: Role::User,
                    text: "z",
                    status: Status::Done,
                    now_ms: 99,
                },
                me,
            )
        })
        .unwrap();
    assert_eq!(next.header().seq, 27);
    assert_eq!(ra.doc(doc).unwrap().message_count().unwrap(), 26);
}

#[test]
fn keys_are_wrapped_to_the_recipients_in_device_certificates() {
    use jarvis_identity::{CertKind, CertTemplate, Certificate, Name, Roles, UnixTime};
    let user = SecretKey::generate();
    let [a, b]: [_; 2] = devices(2).try_into().ok().unwrap();
    let cert = |d: &common::DeviceSetup, name: &str| {
        Certificate::issue(
            CertTemplate {
                kind: CertKind::Device,
                subject: d.key.public(),
                name: Name::new(name).unwrap(),
                roles: Roles::NONE,
                not_before: UnixTime(0),
                not_after: UnixTime(10),
                age_recipient: Some(d.age.to_public().to_string()),
            },
            &user,
        )
        .unwrap()
    };
    let certs = [cert(&a, "a"), cert(&b, "b")];
    let recipients = jarvis_crdt::envelope::device_recipients(&certs);
    assert_eq!(recipients.len(), 2);
    let record = jarvis_crdt::KeyRecord::wrap(
        jarvis_crdt::DocId([1; 16]),
        0,
        &DocKey::generate(),
        &recipients,
        &a.key,
    )
    .unwrap();
    assert!(record.unwrap_key(&a.age).is_ok());
    assert!(record.unwrap_key(&b.age).is_ok());
    assert!(
        record
            .unwrap_key(&age::x25519::Identity::generate())
            .is_err()
    );
}

/// #20, finding 2: a change stored before its key was known (nobody could check it then) that
/// does not open once the key arrives is set aside, not a failure: the batch that brings the
/// key goes through, the other changes are read, and the device reopens its store and starts
/// (before, `receive_keys` failed with a decryption error and `open_device` failed on every
/// start). The same for a stored snapshot of an epoch the device holds no key for.
#[test]
fn what_does_not_open_is_set_aside_and_the_device_still_starts() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, m]: [_; 3] = devices(3).try_into().ok().unwrap();
    let all = [a.age.to_public(), b.age.to_public()];
    let (b_seed, b_age) = (*b.key.seed(), b.age.clone());
    let m_pub = m.key.public();
    let mut ra = Replica::device(MemStore::new(), a.key, a.age);
    let mut rb = Replica::device(
        SledStore::open(&dir.path().join("b")).unwrap(),
        b.key,
        b.age,
    );
    let (doc, key, first) = ra
        .create(|me| Doc::create_conversation(me, "t", 0), &all)
        .unwrap();
    let hello = say(&mut ra, doc, "1", "hello");

    // Junk under the document's epoch 0, sealed with a key of its own, reaches B first.
    let junk = SealedChange::seal(
        ChangeHeader {
            doc,
            actor: m_pub,
            seq: 1,
            epoch: 0,
        },
        b"junk",
        &DocKey::generate(),
        &m.key,
    )
    .unwrap();
    rb.receive_changes(&[junk]).unwrap();
    // A snapshot of another document at an epoch B will never get a key for.
    let (other, _, _) = ra
        .create(|me| Doc::create_conversation(me, "not for b", 0), &all[..1])
        .unwrap();
    rb.receive_snapshot(&ra.snapshot(other).unwrap()).ok();

    rb.receive_keys(std::slice::from_ref(&key)).unwrap();
    rb.receive_changes(&[first, hello]).unwrap();
    let read = |r: &Replica<SledStore>| r.doc(doc).unwrap().messages().unwrap()[0].text.clone();
    assert_eq!(read(&rb), "hello");
    let set_aside = rb.quarantine().unwrap().changes.clone();
    assert_eq!(set_aside.into_iter().collect::<Vec<_>>(), [(doc, m_pub, 1)]);
    drop(rb);

    let rb = Replica::open_device(
        SledStore::open(&dir.path().join("b")).unwrap(),
        SecretKey::from_seed(&b_seed),
        b_age,
    )
    .expect("the device starts");
    assert_eq!(read(&rb), "hello");
    assert_eq!(rb.quarantine().unwrap().changes.len(), 1);
}

/// #20, finding 1: a relay (it holds every device's age recipient, from their hellos) offers
/// a key of its own as the document's next epoch, then changes and a snapshot sealed with it.
/// Devices take key records, changes and snapshots only from the user's devices, so the next
/// edit is still sealed with the devices' own key, which the relay cannot open.
#[test]
fn a_relay_cannot_give_devices_a_key_of_its_own() {
    let [a, b]: [_; 2] = devices(2).try_into().ok().unwrap();
    let all = [a.age.to_public(), b.age.to_public()];
    let (a_pub, b_pub) = (a.key.public(), b.key.public());
    let mut ra = Replica::device(MemStore::new(), a.key, a.age);
    let mut rb = Replica::device(MemStore::new(), b.key, b.age);
    ra.set_writers([a_pub, b_pub]);
    rb.set_writers([a_pub, b_pub]);
    let (doc, key, first) = ra
        .create(|me| Doc::create_conversation(me, "t", 0), &all)
        .unwrap();
    rb.receive_keys(&[key]).unwrap();
    rb.receive_changes(&[first]).unwrap();

    let relay = SecretKey::generate();
    let relays_key = DocKey::generate();
    let injected = KeyRecord::wrap(doc, 1, &relays_key, &all, &relay).unwrap();
    let got = rb.receive_keys(std::slice::from_ref(&injected)).unwrap();
    assert!(got.keys.is_empty(), "the relay's key record was stored");
    let forged_change = SealedChange::seal(
        ChangeHeader {
            doc,
            actor: relay.public(),
            seq: 1,
            epoch: 1,
        },
        b"not automerge",
        &relays_key,
        &relay,
    )
    .unwrap();
    assert!(
        rb.receive_changes(&[forged_change])
            .unwrap()
            .stored
            .is_empty()
    );
    let snapshot = SealedSnapshot::seal(
        doc,
        1,
        rb.vector(doc).unwrap(),
        b"not a document",
        &relays_key,
        &relay,
    )
    .unwrap();
    assert!(rb.receive_snapshot(&snapshot).unwrap().changed.is_empty());
    assert_eq!(rb.quarantine().unwrap().unknown_writers, 3);

    // The next edit is sealed with epoch 0, the devices' key: the relay's key opens nothing.
    let next = say(&mut rb, doc, "m1", "my secret");
    assert_eq!(next.header().epoch, 0);
    assert!(next.open(&relays_key).is_err());
    ra.receive_changes(&[next]).unwrap();
    assert_eq!(ra.doc(doc).unwrap().messages().unwrap().len(), 1);
}

/// #20, finding 1: even one of the user's devices cannot make another jump epochs (a bug, or a
/// stolen device before its revocation): an epoch's key is adopted only after the one before
/// it, and rotation past the last epoch is an error, never a wrap to 0.
#[test]
fn an_epoch_is_adopted_only_after_the_one_before_it_and_never_wraps() {
    let [a, b, c]: [_; 3] = devices(3).try_into().ok().unwrap();
    let all = [a.age.to_public(), b.age.to_public(), c.age.to_public()];
    let (a_pub, b_pub) = (a.key.public(), b.key.public());
    let a_key = SecretKey::from_seed(&a.key.seed());
    let mut ra = Replica::device(MemStore::new(), a.key, a.age);
    let mut rb = Replica::device(MemStore::new(), b.key, b.age);
    rb.set_writers([a_pub, b_pub]);
    let (doc, key, first) = ra
        .create(|me| Doc::create_conversation(me, "t", 0), &all)
        .unwrap();
    rb.receive_keys(&[key]).unwrap();
    rb.receive_changes(&[first]).unwrap();

    let far = KeyRecord::wrap(doc, u32::MAX, &DocKey::generate(), &all, &a_key).unwrap();
    rb.receive_keys(std::slice::from_ref(&far)).unwrap();
    assert_eq!(rb.quarantine().unwrap().epoch_gaps, 1);
    assert_eq!(say(&mut rb, doc, "m1", "still epoch 0").header().epoch, 0);
    // The next epoch in order is taken (and the far one still is not).
    let next = ra.rotate(doc, &all).unwrap();
    assert_eq!(next.epoch, 1);
    rb.receive_keys(&[next]).unwrap();
    assert_eq!(say(&mut rb, doc, "m2", "epoch 1").header().epoch, 1);

    // A device holding the last epoch (a fresh device takes any first epoch it is given)
    // cannot rotate into a wrap.
    let mut rc = Replica::device(MemStore::new(), c.key, c.age);
    rc.receive_keys(&[far]).unwrap();
    assert!(matches!(
        rc.rotate(doc, &all),
        Err(ReplicaError::EpochsExhausted(d)) if d == doc
    ));
}

//! Encodings round-trip, decoders never panic, and the typed document API reads back what it
//! wrote.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;

use jarvis_crdt::envelope::{ChangeHeader, DocKey, KeyRecord, SealedChange, SealedSnapshot};
use jarvis_crdt::{Doc, DocId, HaveKind, NewMessage, Role, Status, SyncMessage, VersionVector};
use jarvis_identity::SecretKey;
use proptest::prelude::*;

fn key(i: u8) -> SecretKey {
    SecretKey::from_seed(&[i; 32])
}

fn vector() -> impl Strategy<Value = VersionVector> {
    proptest::collection::btree_map(0u8..6, 1u64..1000, 0..6).prop_map(|m| {
        let mut v = VersionVector::new();
        for (k, s) in m {
            v.set(key(k).public(), s);
        }
        v
    })
}

fn sealed() -> impl Strategy<Value = SealedChange> {
    (
        0u8..4,
        1u64..100,
        0u32..3,
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(k, seq, epoch, payload)| {
            SealedChange::seal(
                ChangeHeader {
                    doc: DocId([3; 16]),
                    actor: key(k).public(),
                    seq,
                    epoch,
                },
                &payload,
                &DocKey::generate(),
                &key(k),
            )
            .unwrap()
        })
}

fn message() -> impl Strategy<Value = SyncMessage> {
    let doc = DocId([3; 16]);
    prop_oneof![
        (
            vector(),
            proptest::collection::vec(any::<[u8; 16]>(), 0..4),
            0u8..3
        )
            .prop_map(move |(vector, keys, kind)| SyncMessage::Have {
                doc,
                vector,
                keys,
                kind: match kind {
                    0 => HaveKind::Announce,
                    1 => HaveKind::Ack,
                    _ => HaveKind::Request,
                },
            }),
        proptest::collection::vec(sealed(), 0..5)
            .prop_map(move |changes| SyncMessage::Changes { doc, changes }),
        (0u32..4).prop_map(move |epoch| SyncMessage::Keys {
            doc,
            keys: vec![
                KeyRecord::wrap(
                    doc,
                    epoch,
                    &DocKey::generate(),
                    &[age::x25519::Identity::generate().to_public()],
                    &key(1)
                )
                .unwrap()
            ],
        }),
        (vector(), proptest::collection::vec(any::<u8>(), 0..200)).prop_map(
            move |(vector, saved)| SyncMessage::Snapshot {
                snapshot: SealedSnapshot::seal(
                    doc,
                    0,
                    vector,
                    &saved,
                    &DocKey::generate(),
                    &key(2)
                )
                .unwrap(),
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sync_messages_round_trip(m in message()) {
        let bytes = m.encode();
        prop_assert_eq!(SyncMessage::decode(&bytes).unwrap(), m);
        prop_assert!(SyncMessage::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(SyncMessage::decode(&longer).is_err());
    }

    #[test]
    fn sealed_changes_verify_and_any_flip_breaks_them(c in sealed(), at in any::<prop::sample::Index>()) {
        c.verify().unwrap();
        let mut bytes = c.encode();
        let i = at.index(bytes.len());
        bytes[i] ^= 1;
        if let Ok(d) = SealedChange::decode(&bytes) {
            prop_assert!(d.verify().is_err());
        }
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..800)) {
        let _ = SyncMessage::decode(&bytes);
        let _ = SealedChange::decode(&bytes);
        let _ = KeyRecord::decode(&bytes);
        let _ = SealedSnapshot::decode(&bytes);
    }

    #[test]
    fn messages_read_back_as_written(texts in proptest::collection::vec("[ -~]{0,40}", 1..8), chunks in proptest::collection::vec("[ -~]{1,10}", 0..8)) {
        let me = key(1).public();
        let mut doc = Doc::create_conversation(&me, "t", 0).unwrap();
        for (i, t) in texts.iter().enumerate() {
            doc.append(NewMessage { id: &i.to_string(), role: Role::User, text: t, status: Status::Done, now_ms: i as i64 }, &me).unwrap();
        }
        let last = (texts.len() - 1).to_string();
        for c in &chunks {
            doc.stream(&last, c, 99).unwrap();
        }
        let timings = BTreeMap::from([("end_of_speech_to_transcript".to_owned(), 167u64)]);
        doc.finish(&last, Status::Cancelled, Some("smollm2"), &timings, 100).unwrap();
        let got = doc.messages().unwrap();
        prop_assert_eq!(got.len(), texts.len());
        let l = got.last().unwrap();
        prop_assert_eq!(&l.text, &format!("{}{}", texts.last().unwrap(), chunks.concat()));
        prop_assert_eq!(l.status, Status::Cancelled);
        prop_assert_eq!(l.model.as_deref(), Some("smollm2"));
        prop_assert_eq!(&l.timings_ms, &timings);
        prop_assert_eq!(&l.author, &me.to_string());
        // A saved and reloaded document reads the same.
        let reloaded = Doc::load(&me, &doc.save()).unwrap();
        prop_assert_eq!(reloaded.messages().unwrap(), got);
    }
}

#[test]
fn the_index_lists_conversations_newest_first_and_keeps_settings() {
    let me = key(1).public();
    let mut index = Doc::create_index(&me, 0).unwrap();
    let (a, b) = (DocId([1; 16]), DocId([2; 16]));
    index
        .upsert_conversation(&jarvis_crdt::ConversationEntry {
            id: a,
            title: "first".into(),
            created_at_ms: 1,
            updated_at_ms: 1,
        })
        .unwrap();
    index
        .upsert_conversation(&jarvis_crdt::ConversationEntry {
            id: b,
            title: "second".into(),
            created_at_ms: 2,
            updated_at_ms: 2,
        })
        .unwrap();
    index
        .upsert_conversation(&jarvis_crdt::ConversationEntry {
            id: a,
            title: "first, renamed".into(),
            created_at_ms: 1,
            updated_at_ms: 3,
        })
        .unwrap();
    let list = index.conversations().unwrap();
    assert_eq!(
        list.iter().map(|c| c.title.as_str()).collect::<Vec<_>>(),
        ["first, renamed", "second"]
    );
    assert_eq!(list[0].created_at_ms, 1);
    index.set_setting("voice", "joe", 4).unwrap();
    assert_eq!(index.setting("voice").unwrap().as_deref(), Some("joe"));
    assert_eq!(index.setting("missing").unwrap(), None);
    // Conversation methods on an index are clear errors.
    assert!(index.messages().is_err());
}

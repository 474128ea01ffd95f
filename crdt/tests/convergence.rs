//! Convergence: devices and a keyless relay, random edits, random delivery order, duplication
//! and loss (recovered by the resync timer), always end with identical documents.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::BTreeMap;

use common::{Net, devices};
use jarvis_crdt::{Doc, DocId, MemStore, NewMessage, Role, Status};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append {
        device: usize,
        text: String,
    },
    Stream {
        device: usize,
        pick: usize,
        chunk: String,
    },
    Finish {
        device: usize,
        pick: usize,
    },
    Deliver {
        pick: usize,
    },
    Drop {
        pick: usize,
    },
    Duplicate {
        pick: usize,
    },
    Tick,
}

fn op(n_devices: usize) -> impl Strategy<Value = Op> {
    let d = 1..=n_devices;
    prop_oneof![
        3 => (d.clone(), "[a-z ]{0,12}").prop_map(|(device, text)| Op::Append { device, text }),
        4 => (d.clone(), any::<usize>(), "[a-z ]{1,6}")
            .prop_map(|(device, pick, chunk)| Op::Stream { device, pick, chunk }),
        1 => (d, any::<usize>()).prop_map(|(device, pick)| Op::Finish { device, pick }),
        8 => any::<usize>().prop_map(|pick| Op::Deliver { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Drop { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Duplicate { pick }),
        1 => Just(Op::Tick),
    ]
}

/// The ids of the messages `device` can see, if the conversation reached it.
fn message_ids(net: &Net<MemStore>, device: usize, doc: DocId) -> Option<Vec<String>> {
    let d = net.nodes[device].replica.doc(doc)?;
    d.messages()
        .ok()
        .map(|m| m.into_iter().map(|m| m.id).collect())
}

fn edit(
    net: &mut Net<MemStore>,
    device: usize,
    doc: DocId,
    f: impl FnOnce(&mut Doc, &jarvis_identity::PublicKey) -> Result<(), jarvis_crdt::DocError>,
) {
    let change = net.nodes[device].replica.edit(doc, f).unwrap();
    net.fan_out(device, None, &[change]);
}

fn run(n_devices: usize, ops: Vec<Op>) {
    let setups = devices(n_devices);
    let recipients: Vec<_> = setups.iter().map(|s| s.age.to_public()).collect();
    let mut net = Net::star(setups);
    let (doc, key, first) = net.nodes[1]
        .replica
        .create(|me| Doc::create_conversation(me, "chat", 0), &recipients)
        .unwrap();
    net.start();
    net.fan_out_key(1, &key);
    net.fan_out(1, None, &[first]);
    let mut counter = 0i64;
    let mut appended = 0usize;

    for op in ops {
        counter += 1;
        match op {
            Op::Append { device, text } => {
                // A device can only edit once the conversation's creation has reached it.
                if message_ids(&net, device, doc).is_none() {
                    continue;
                }
                let id = format!("m{device}-{counter}");
                appended += 1;
                edit(&mut net, device, doc, |d, me| {
                    d.append(
                        NewMessage {
                            id: &id,
                            role: Role::User,
                            text: &text,
                            status: Status::Streaming,
                            now_ms: counter,
                        },
                        me,
                    )
                });
            }
            Op::Stream {
                device,
                pick,
                chunk,
            } => {
                let Some(ids) = message_ids(&net, device, doc).filter(|i| !i.is_empty()) else {
                    continue;
                };
                let id = ids[pick % ids.len()].clone();
                edit(&mut net, device, doc, |d, _| d.stream(&id, &chunk, counter));
            }
            Op::Finish { device, pick } => {
                let Some(ids) = message_ids(&net, device, doc).filter(|i| !i.is_empty()) else {
                    continue;
                };
                let id = ids[pick % ids.len()].clone();
                let timings =
                    BTreeMap::from([("end_of_speech_to_first_token".to_owned(), counter as u64)]);
                edit(&mut net, device, doc, |d, _| {
                    d.finish(&id, Status::Done, Some("smollm2"), &timings, counter)
                });
            }
            Op::Deliver { pick } if !net.queue.is_empty() => {
                let i = pick % net.queue.len();
                net.deliver(i);
            }
            Op::Drop { pick } if !net.queue.is_empty() => {
                let i = pick % net.queue.len();
                net.queue.remove(i);
            }
            Op::Duplicate { pick } if !net.queue.is_empty() => {
                let i = pick % net.queue.len();
                let copy = net.queue[i].clone();
                net.queue.push_back(copy);
            }
            Op::Tick => net.tick(),
            _ => {}
        }
    }

    // The network heals: no more loss; the resync timer recovers whatever was dropped.
    net.settle();

    let relay_vector = net.nodes[0].replica.vector(doc).unwrap();
    let mut reference: Option<(Vec<automerge::ChangeHash>, Vec<jarvis_crdt::Message>)> = None;
    for device in 1..=n_devices {
        assert_eq!(
            net.nodes[device].replica.vector(doc).unwrap(),
            relay_vector,
            "device {device} holds different changes than the relay"
        );
        let mut d = net.nodes[device]
            .replica
            .doc(doc)
            .expect("document reached every device")
            .clone();
        let state = (d.heads(), d.messages().unwrap());
        match &reference {
            None => reference = Some(state),
            Some(r) => assert_eq!(&state, r, "device {device} diverged"),
        }
    }
    // Every message appended anywhere made it everywhere, exactly once.
    let messages = reference.expect("at least one device").1;
    assert_eq!(messages.len(), appended);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge(n in 2usize..=4, ops in proptest::collection::vec(op(4), 0..60)) {
        let ops = ops.into_iter().map(|o| match o {
            Op::Append { device, text } => Op::Append { device: 1 + (device - 1) % n, text },
            Op::Stream { device, pick, chunk } => Op::Stream { device: 1 + (device - 1) % n, pick, chunk },
            Op::Finish { device, pick } => Op::Finish { device: 1 + (device - 1) % n, pick },
            other => other,
        }).collect();
        run(n, ops);
    }
}

#[test]
fn a_long_streamed_answer_arrives_whole_through_the_relay() {
    let setups = devices(2);
    let recipients: Vec<_> = setups.iter().map(|s| s.age.to_public()).collect();
    let mut net = Net::star(setups);
    // Only the relay path: drop the direct link.
    net.nodes[1].sessions.remove(&2);
    net.nodes[2].sessions.remove(&1);
    let (doc, key, first) = net.nodes[1]
        .replica
        .create(|me| Doc::create_conversation(me, "q", 0), &recipients)
        .unwrap();
    net.start();
    net.fan_out_key(1, &key);
    net.fan_out(1, None, &[first]);
    net.drain();
    edit(&mut net, 1, doc, |d, me| {
        d.append(
            NewMessage {
                id: "a",
                role: Role::Assistant,
                text: "",
                status: Status::Streaming,
                now_ms: 1,
            },
            me,
        )
    });
    let words: Vec<String> = (0..2000).map(|i| format!("w{i} ")).collect();
    for (i, w) in words.iter().enumerate() {
        edit(&mut net, 1, doc, |d, _| d.stream("a", w, i as i64));
        // The other device sees the answer grow while it streams.
        if i % 500 == 0 {
            net.drain();
            let seen = net.nodes[2].replica.doc(doc).unwrap().messages().unwrap()[0]
                .text
                .clone();
            assert_eq!(seen, words[..=i].concat());
        }
    }
    net.settle();
    let m = &net.nodes[2].replica.doc(doc).unwrap().messages().unwrap()[0];
    assert_eq!(m.text, words.concat());
    assert_eq!(m.status, Status::Streaming);
}

#[test]
fn a_new_device_catches_up_from_a_relayed_snapshot_plus_later_changes() {
    let setups = devices(2);
    let recipients: Vec<_> = setups.iter().map(|s| s.age.to_public()).collect();
    let mut net = Net::star(setups);
    net.nodes[1].sessions.remove(&2);
    net.nodes[2].sessions.remove(&1);
    // Device 2 is offline while device 1 writes a long conversation and snapshots it.
    net.nodes[0].sessions.remove(&2);
    net.nodes[2].sessions.remove(&0);
    let (doc, key, first) = net.nodes[1]
        .replica
        .create(|me| Doc::create_conversation(me, "long", 0), &recipients)
        .unwrap();
    net.start();
    net.fan_out_key(1, &key);
    net.fan_out(1, None, &[first]);
    for i in 0..1500 {
        let id = i.to_string();
        edit(&mut net, 1, doc, |d, me| {
            d.append(
                NewMessage {
                    id: &id,
                    role: Role::User,
                    text: "hello",
                    status: Status::Done,
                    now_ms: i,
                },
                me,
            )
        });
    }
    let snapshot = net.nodes[1].replica.snapshot(doc).unwrap();
    net.settle();
    // The relay, holding what it covers, is handed the snapshot (as a device would upload it)
    // and keeps it, sealed. (It takes no snapshot that claims more than it holds.)
    let relay = &mut net.nodes[0];
    assert_eq!(relay.replica.vector(doc).unwrap(), snapshot.vector);
    relay.replica.receive_snapshot(&snapshot).unwrap();
    for i in 1500..1510 {
        let id = i.to_string();
        edit(&mut net, 1, doc, |d, me| {
            d.append(
                NewMessage {
                    id: &id,
                    role: Role::User,
                    text: "later",
                    status: Status::Done,
                    now_ms: i,
                },
                me,
            )
        });
    }
    net.drain();

    // Device 2 comes online, talking only to the relay.
    net.link(0, 2);
    let messages_before = net.queue.len();
    assert_eq!(messages_before, 0);
    net.start();
    let mut snapshots = 0;
    let mut changes = 0;
    while let Some((_, to, bytes)) = net.queue.front().cloned() {
        if to == 2 {
            match jarvis_crdt::SyncMessage::decode(&bytes).unwrap() {
                jarvis_crdt::SyncMessage::Snapshot { .. } => snapshots += 1,
                jarvis_crdt::SyncMessage::Changes { changes: c, .. } => changes += c.len(),
                _ => {}
            }
        }
        net.deliver(0);
    }
    assert_eq!(snapshots, 1, "the newcomer got the snapshot");
    assert_eq!(changes, 10, "and only the changes after it");
    let mut d1 = net.nodes[1].replica.doc(doc).unwrap().clone();
    let mut d2 = net.nodes[2].replica.doc(doc).unwrap().clone();
    assert_eq!(d2.message_count().unwrap(), 1510);
    assert_eq!(d1.heads(), d2.heads());
}

/// The resync timer announces only documents not settled with the peer, and all of them every
/// `FULL_RESYNC_EVERY` resyncs; a change whose push was lost is still recovered at the next one.
#[test]
fn a_settled_session_s_resync_is_quiet_but_still_recovers_a_lost_push() {
    use jarvis_crdt::sync::FULL_RESYNC_EVERY;
    let setups = devices(2);
    let recipients: Vec<_> = setups.iter().map(|s| s.age.to_public()).collect();
    let mut net = Net::star(setups);
    let (doc, key, first) = net.nodes[1]
        .replica
        .create(|me| Doc::create_conversation(me, "chat", 0), &recipients)
        .unwrap();
    net.start();
    net.fan_out_key(1, &key);
    net.fan_out(1, None, &[first]);
    net.drain();
    // The first resync announces the document once where it arrived after the session began.
    net.tick();
    net.drain();
    // Settled: the resyncs up to the full one send nothing.
    let mut quiet = 0;
    for _ in 2..FULL_RESYNC_EVERY {
        net.tick();
        if net.queue.is_empty() {
            quiet += 1;
        }
        net.drain();
    }
    assert_eq!(
        quiet,
        FULL_RESYNC_EVERY - 2,
        "settled resyncs announced something"
    );
    // The full one announces everything, everywhere.
    net.tick();
    assert!(!net.queue.is_empty(), "the full resync announced nothing");
    net.drain();
    // A change on device 1 whose pushes are all lost: the next resync recovers it.
    let change = net.nodes[1]
        .replica
        .edit(doc, |d, me| {
            d.append(
                NewMessage {
                    id: "lost",
                    role: Role::User,
                    text: "lost on the way",
                    status: Status::Done,
                    now_ms: 1,
                },
                me,
            )
        })
        .unwrap();
    net.fan_out(1, None, &[change]);
    net.queue.clear();
    net.tick();
    assert!(
        !net.queue.is_empty(),
        "an unsettled document was not announced"
    );
    net.drain();
    let seen = |net: &Net<MemStore>, device: usize| {
        net.nodes[device]
            .replica
            .doc(doc)
            .and_then(|d| d.messages().ok())
            .is_some_and(|ms| ms.iter().any(|m| m.id == "lost"))
    };
    assert!(
        seen(&net, 2),
        "device 2 never got the change whose push was lost"
    );
}

//! `crdt-seal` and `crdt-catch-up`.
//!
//! `crdt-seal`: sealing Automerge changes (XChaCha20-Poly1305 under the epoch key with the header
//! as associated data, an ed25519 signature by the author, the canonical encoding) against the
//! raw primitives on the same bytes: one AEAD encryption and one ed25519 signature per change.
//!
//! `crdt-catch-up`: a new, empty device syncing a conversation of 100,000 messages (10,000 with
//! `--quick`) from another device, through the real sync sessions and the encrypted snapshot,
//! against `Automerge::load` of the same document's saved bytes.

use std::time::Instant;

use anyhow::{Context, Result};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::Signer;
use jarvis_crdt::envelope::{ChangeHeader, DocKey};
use jarvis_crdt::{Doc, DocId, MemStore, NewMessage, Replica, Role, SealedChange, Session, Status};
use jarvis_identity::SecretKey;

use crate::harness::{Budget, Figure, compare_rates, compare_times};

pub const SEAL: &str = "crdt-seal";
pub const CATCH_UP: &str = "crdt-catch-up";

/// A typical streamed-token change is a few hundred bytes.
const CHANGE_BYTES: usize = 300;

pub fn seal(quick: bool) -> Result<Vec<Figure>> {
    let author = SecretKey::generate();
    let key = DocKey::generate();
    let payloads: Vec<Vec<u8>> = (0..256u32)
        .map(|i| {
            (0..CHANGE_BYTES)
                .map(|j| (i as usize * 31 + j) as u8)
                .collect()
        })
        .collect();
    let doc = DocId::random();
    let raw_key = [7u8; 32];
    let raw_cipher = XChaCha20Poly1305::new((&raw_key).into());
    let raw_signer = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let mut ours_input = payloads.iter().enumerate().cycle();
    let mut reference_input = payloads.iter().cycle();
    let (ours, reference) = compare_rates(
        Budget::new(quick),
        || {
            let Some((i, payload)) = ours_input.next() else {
                return 0;
            };
            let header = ChangeHeader {
                doc,
                actor: author.public(),
                seq: i as u64 + 1,
                epoch: 0,
            };
            SealedChange::seal(header, payload, &key, &author)
                .map(|c| c.encode().len())
                .unwrap_or(0)
        },
        || {
            let Some(payload) = reference_input.next() else {
                return 0;
            };
            let nonce: [u8; 24] = jarvis_identity::keys::random_bytes();
            let ciphertext = raw_cipher
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: payload,
                        aad: &doc.0,
                    },
                )
                .unwrap_or_default();
            let signature = raw_signer.sign(&ciphertext);
            ciphertext.len() + signature.to_bytes().len()
        },
    );
    Ok(vec![Figure::compared(
        SEAL,
        "sealed_changes_per_sec",
        ours,
        reference,
        ">= 0.9",
        "changes/s",
    )])
}

/// A device with a conversation of `messages` messages and a snapshot of it.
struct LongConversation {
    /// The device that has it, with its snapshot stored.
    device: Replica<MemStore>,
    doc: DocId,
    /// The age identity of the empty device that will catch up (a recipient of the key).
    newcomer: age::x25519::Identity,
    /// The plain `Automerge::save` of the same document: the reference's input.
    saved: Vec<u8>,
}

fn long_conversation(messages: usize) -> Result<LongConversation> {
    let a_age = age::x25519::Identity::generate();
    let b_age = age::x25519::Identity::generate();
    let recipients = [a_age.to_public(), b_age.to_public()];
    let mut a = Replica::device(MemStore::new(), SecretKey::generate(), a_age);
    let (doc, _, _) = a.create(|me| Doc::create_conversation(me, "long", 0), &recipients)?;
    for i in 0..messages {
        let id = format!("m{i}");
        let text = format!("message number {i}: the quick brown fox jumps over the lazy dog");
        a.edit(doc, |d, me| {
            d.append(
                NewMessage {
                    id: &id,
                    role: if i % 2 == 0 {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                    text: &text,
                    status: Status::Done,
                    now_ms: i as i64,
                },
                me,
            )
        })?;
    }
    a.snapshot(doc)?;
    let saved = a
        .doc(doc)
        .context("the conversation is open")?
        .clone()
        .save();
    Ok(LongConversation {
        device: a,
        doc,
        newcomer: b_age,
        saved,
    })
}

/// Syncs an empty device from `a` through real sessions; returns the message count it ends with.
fn catch_up_once(
    a: &mut Replica<MemStore>,
    b_age: &age::x25519::Identity,
    doc: DocId,
) -> Result<usize> {
    let mut b = Replica::device(MemStore::new(), SecretKey::generate(), b_age.clone());
    let (mut sa, mut sb) = (Session::new(), Session::new());
    let mut to_b = sa.start(0, a)?;
    let mut to_a = sb.start(0, &b)?;
    while !to_a.is_empty() || !to_b.is_empty() {
        let mut next_b = Vec::new();
        for m in to_a.drain(..) {
            // Every message crosses the wire encoded.
            let m = jarvis_crdt::SyncMessage::decode(&m.encode())?;
            next_b.extend(sa.handle(m, 0, a)?.send);
        }
        let mut next_a = Vec::new();
        for m in to_b.drain(..) {
            let m = jarvis_crdt::SyncMessage::decode(&m.encode())?;
            next_a.extend(sb.handle(m, 0, &mut b)?.send);
        }
        to_b = next_b;
        to_a = next_a;
    }
    Ok(b.doc(doc)
        .context("the conversation reached b")?
        .message_count()?)
}

pub fn catch_up(quick: bool) -> Result<Vec<Figure>> {
    let messages = if quick { 10_000 } else { 100_000 };
    eprintln!("building a conversation of {messages} messages…");
    let started = Instant::now();
    let LongConversation {
        device: mut a,
        doc,
        newcomer: b_age,
        saved,
    } = long_conversation(messages)?;
    eprintln!(
        "built in {:.1}s; measuring",
        started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(
        catch_up_once(&mut a, &b_age, doc)? == messages,
        "catch-up lost messages"
    );
    let rounds = if quick { 3 } else { 5 };
    let (ours, reference) = compare_times(
        rounds,
        || catch_up_once(&mut a, &b_age, doc).map_or(0, |n| n),
        || {
            automerge::AutoCommit::load(&saved)
                .map(|mut d| d.get_heads().len())
                .unwrap_or(0)
        },
    );
    Ok(vec![Figure::compared(
        CATCH_UP,
        "empty_device_catch_up_seconds",
        ours,
        reference,
        "<= 1.3",
        "s",
    )])
}

//! Reading and writing conversations on a device's replica: shared by the running node (which
//! then syncs what changed) and by the CLI when no node runs (what it writes syncs the next time
//! the node starts, because a session announces every document it holds).

use anyhow::{Context, Result};
use jarvis_crdt::store::sled::SledStore;
use jarvis_crdt::{Doc, DocId, KeyRecord, NewMessage, Replica, Role, SealedChange, Status};
use jarvis_inference::protocol::ChatMessage;
use serde_json::{Value, json};

use crate::home::{Home, KeyFile, Passphrase, now};

fn now_ms() -> i64 {
    i64::try_from(now().0)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000)
}

/// How many of the latest messages `summary` reads for the time of the last update.
const RECENT: usize = 4;

/// One line of `jarvis conversations`.
pub fn summary(replica: &Replica<SledStore>, id: DocId) -> Option<Value> {
    let doc = replica.doc(id)?;
    let title = doc.title().ok()?;
    // Only the last few messages are read: this runs on every change, and a conversation can
    // be long. An answer streams into the last message or the one before a newer question.
    let count = doc.message_count().ok()?;
    let updated = (count.saturating_sub(RECENT)..count)
        .filter_map(|i| doc.message(i).ok().flatten())
        .map(|m| m.updated_at_ms)
        .max()
        .unwrap_or(0);
    Some(json!({
        "id": id.to_string(),
        "title": title,
        "updated_at": updated,
        "messages": count,
    }))
}

/// Every conversation, most recently updated first.
pub fn list(replica: &Replica<SledStore>) -> Value {
    let mut list: Vec<(i64, Value)> = replica
        .docs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|id| summary(replica, id))
        .map(|v| (v.get("updated_at").and_then(Value::as_i64).unwrap_or(0), v))
        .collect();
    list.sort_by_key(|(updated, _)| std::cmp::Reverse(*updated));
    json!({ "conversations": list.into_iter().map(|(_, v)| v).collect::<Vec<_>>() })
}

/// One conversation's messages (`jarvis show`).
pub fn show(replica: &Replica<SledStore>, id: DocId) -> Result<Value, String> {
    let doc = replica
        .doc(id)
        .ok_or_else(|| format!("no conversation {id} on this device"))?;
    let messages = doc.messages().map_err(|e| e.to_string())?;
    let messages: Vec<Value> = messages
        .into_iter()
        .map(|m| {
            json!({
                "id": m.id,
                "role": m.role.as_str(),
                "text": m.text,
                "author_device": m.author,
                "status": m.status.as_str(),
                "created_at": m.created_at_ms,
                "model": m.model,
                "served_by": m.served_by,
                "timings_ms": m.timings_ms,
            })
        })
        .collect();
    Ok(json!({
        "id": id.to_string(),
        "title": doc.title().unwrap_or_default(),
        "messages": messages,
    }))
}

/// What adding a message produced, for the caller to sync.
pub struct Added {
    pub doc: DocId,
    /// The new conversation's key record, if one was created.
    pub key: Option<KeyRecord>,
    pub changes: Vec<SealedChange>,
    /// The `jarvis ask --json` answer.
    pub reply: Value,
}

/// Adds the user's message to `conversation` (a new one if none), sealed and stored durably.
/// Answers arrive with the inference engine.
pub fn add_user_message(
    replica: &mut Replica<SledStore>,
    recipients: &[jarvis_identity::age::x25519::Recipient],
    text: &str,
    conversation: Option<DocId>,
) -> Result<Added> {
    let now_ms = now_ms();
    let mut changes = Vec::new();
    let mut key = None;
    let doc = match conversation {
        Some(doc) => doc,
        None => {
            let title: String = text.chars().take(60).collect();
            let (doc, record, first) = replica.create(
                |me| Doc::create_conversation(me, &title, now_ms),
                recipients,
            )?;
            key = Some(record);
            changes.push(first);
            doc
        }
    };
    let message_id = hex::encode(jarvis_identity::keys::random_bytes::<8>());
    changes.push(replica.edit(doc, |d, me| {
        d.append(
            NewMessage {
                id: &message_id,
                role: Role::User,
                text,
                status: Status::Done,
                now_ms,
            },
            me,
        )
    })?);
    Ok(Added {
        doc,
        key,
        changes,
        reply: json!({
            "conversation_id": doc.to_string(),
            "message_id": message_id,
            "answer": null,
            "model": null,
            "where": null,
            "timings_ms": {},
        }),
    })
}

/// What Jarvis is told before every conversation. Small models answer very differently with
/// different wording (testing.md). With the earlier "You are Jarvis, a helpful assistant. Answer
/// the question directly and briefly, in one or two sentences.", SmolLM2-135M answered "what is
/// the capital of France?" in French ("Le Grand Paris, la femme de la France.") for most of the
/// ways whisper hears it ("capital on France", "capital, France"), and adding "in English" made
/// it worse; this wording answered all eight of them in English ("The capital of France is
/// Paris.") and stays short.
pub const SYSTEM_PROMPT: &str =
    "You are a helpful assistant named Jarvis. Give short, direct answers.";

/// The most conversation text sent to the model with a question; older messages are left out.
pub const HISTORY_CHARS: usize = 6000;

/// The model's view of a conversation: the system prompt, then the finished messages, newest
/// last, as many as fit in [`HISTORY_CHARS`].
pub fn history(doc: &Doc) -> Vec<ChatMessage> {
    history_with(Some(doc), None)
}

/// [`history`] as it will be once the user's `text` is added to `doc` (a new conversation when
/// `doc` is `None`), without adding it: what a speculative answer is generated from.
pub fn history_with(doc: Option<&Doc>, text: Option<&str>) -> Vec<ChatMessage> {
    let mut kept: Vec<ChatMessage> = Vec::new();
    let mut chars = 0;
    if let Some(text) = text {
        chars += text.len();
        kept.push(ChatMessage::new("user", text.to_owned()));
    }
    let count = doc.map_or(0, |d| d.message_count().unwrap_or(0));
    // From the newest back, reading only as many messages as the budget keeps.
    for i in (0..count).rev() {
        let Some(Ok(Some(m))) = doc.map(|d| d.message(i)) else {
            continue;
        };
        if m.status != Status::Done || m.text.is_empty() {
            continue;
        }
        chars += m.text.len();
        if chars > HISTORY_CHARS && !kept.is_empty() {
            break;
        }
        kept.push(ChatMessage::new(m.role.as_str(), m.text));
    }
    kept.push(ChatMessage::new("system", SYSTEM_PROMPT));
    kept.reverse();
    kept
}

/// Adds an empty assistant message that the answer streams into; returns its id and change.
pub fn start_answer(
    replica: &mut Replica<SledStore>,
    doc: DocId,
) -> Result<(String, SealedChange)> {
    let id = hex::encode(jarvis_identity::keys::random_bytes::<8>());
    let change = replica.edit(doc, |d, me| {
        d.append(
            NewMessage {
                id: &id,
                role: Role::Assistant,
                text: "",
                status: Status::Streaming,
                now_ms: now_ms(),
            },
            me,
        )
    })?;
    Ok((id, change))
}

/// Appends streamed text to an answer.
pub fn stream_answer(
    replica: &mut Replica<SledStore>,
    doc: DocId,
    id: &str,
    text: &str,
) -> Result<SealedChange> {
    Ok(replica.edit(doc, |d, _| d.stream(id, text, now_ms()))?)
}

/// Marks an answer finished, with the model and its timings.
pub fn finish_answer(
    replica: &mut Replica<SledStore>,
    doc: DocId,
    id: &str,
    status: Status,
    model: Option<&str>,
    served_by: Option<&str>,
    timings_ms: &std::collections::BTreeMap<String, u64>,
) -> Result<SealedChange> {
    Ok(replica.edit(doc, |d, _| {
        if let Some(served_by) = served_by {
            d.set_served_by(id, served_by, now_ms())?;
        }
        d.finish(id, status, model, timings_ms, now_ms())
    })?)
}

/// Opens this device's replica directly, when no node runs on the home.
pub fn open_offline(
    home: &Home,
) -> Result<(
    Replica<SledStore>,
    Vec<jarvis_identity::age::x25519::Recipient>,
)> {
    let passphrase = Passphrase::get("this device's keys")?;
    let keys = home.unseal_key(KeyFile::Identity, &passphrase)?;
    let age = keys
        .age
        .context("this home is not a device (it has no encryption identity)")?;
    let store_dir = home.dir().join("store");
    let store = SledStore::open(&store_dir).with_context(|| {
        format!(
            "opening {} (is a node running on this home?)",
            store_dir.display()
        )
    })?;
    let mut recipients = vec![age.to_public()];
    recipients.extend(
        crate::siblings::load(home)?
            .values()
            .filter_map(|d| d.recipient.parse().ok()),
    );
    let replica = Replica::open_device(store, keys.signing, age)
        .context("loading conversations from the store")?;
    Ok((replica, recipients))
}

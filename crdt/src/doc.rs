//! The typed document API: conversations and the per-user index, over Automerge.
//!
//! Callers never touch Automerge directly: they create conversations, append messages, stream
//! text into a message, finish it, and read typed values back. Each call is one Automerge change
//! (one commit), which the replica then seals and syncs; an answer being generated is a message
//! whose text grows by one change per chunk, so other devices see it stream.
//!
//! ```text
//! conversation: { title, created_at, messages: [ { id, role, author, text (Text), status,
//!                 created_at, updated_at, model, timings: { stage: ms } } ] }
//! index:        { conversations: { <doc id>: { title, created_at, updated_at } },
//!                 settings: { key: value } }
//! ```

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, AutomergeError, ObjId, ObjType, ReadDoc, ScalarValue, Value};
use jarvis_identity::PublicKey;
use thiserror::Error;

use crate::ids::DocId;

#[derive(Debug, Error)]
pub enum DocError {
    #[error("automerge: {0}")]
    Automerge(#[from] AutomergeError),
    #[error(
        "the document has no {0}: it was not created as a conversation, or its creation has not synced yet"
    )]
    Missing(&'static str),
    #[error("no message with id `{0}` in this conversation")]
    NoSuchMessage(String),
    #[error("field `{field}` has the wrong type")]
    WrongType { field: &'static str },
    #[error("a change from actor {found} arrived for actor {expected}: refused")]
    ActorMismatch { expected: String, found: String },
    #[error("not an Automerge change: {0}")]
    BadChange(String),
    #[error("change sequence number {found} does not match its header ({expected})")]
    SeqMismatch { expected: u64, found: u64 },
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    System,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::System => "system",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "assistant" => Some(Self::Assistant),
            "system" => Some(Self::System),
            _ => None,
        }
    }
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Still being generated.
    Streaming,
    Done,
    Cancelled,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Streaming => "streaming",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "streaming" => Some(Self::Streaming),
            "done" => Some(Self::Done),
            "cancelled" => Some(Self::Cancelled),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// A message as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub role: Role,
    /// The device that wrote it (its id).
    pub author: String,
    pub text: String,
    pub status: Status,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub model: Option<String>,
    /// The machine that made an answer when it was not the author device (an org GPU peer's
    /// name).
    pub served_by: Option<String>,
    /// Per-stage timings in milliseconds (e.g. `end_of_speech_to_transcript`).
    pub timings_ms: BTreeMap<String, u64>,
}

/// A new message to append.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub id: &'a str,
    pub role: Role,
    pub text: &'a str,
    pub status: Status,
    pub now_ms: i64,
}

/// The Automerge actor id of a device: its public key bytes, so the actor in a change and the
/// key that signed its envelope can be compared.
pub fn actor_id(device: &PublicKey) -> ActorId {
    ActorId::from(device.to_bytes())
}

fn str_of(doc: &AutoCommit, obj: &ObjId, field: &'static str) -> Result<Option<String>, DocError> {
    match doc.get(obj, field)? {
        None => Ok(None),
        Some((Value::Scalar(v), _)) => match v.as_ref() {
            ScalarValue::Str(s) => Ok(Some(s.to_string())),
            _ => Err(DocError::WrongType { field }),
        },
        Some(_) => Err(DocError::WrongType { field }),
    }
}

fn int_of(doc: &AutoCommit, obj: &ObjId, field: &'static str) -> Result<i64, DocError> {
    match doc.get(obj, field)? {
        Some((Value::Scalar(v), _)) => v.as_i64().ok_or(DocError::WrongType { field }),
        _ => Err(DocError::WrongType { field }),
    }
}

fn obj_of(doc: &AutoCommit, obj: &ObjId, field: &'static str) -> Result<ObjId, DocError> {
    match doc.get(obj, field)? {
        Some((Value::Object(_), id)) => Ok(id),
        Some(_) => Err(DocError::WrongType { field }),
        None => Err(DocError::Missing(field)),
    }
}

/// One synced document: a conversation or the user's index. One type with typed methods for
/// both, so the replica and the sync engine handle every document alike; calling a conversation
/// method on an index (or the reverse) is a [`DocError::Missing`].
#[derive(Debug, Clone)]
pub struct Doc {
    doc: AutoCommit,
}

impl Doc {
    /// A new conversation document, created by `device` (one change).
    pub fn create_conversation(
        device: &PublicKey,
        title: &str,
        now_ms: i64,
    ) -> Result<Self, DocError> {
        let mut doc = AutoCommit::new().with_actor(actor_id(device));
        doc.put(automerge::ROOT, "title", title)?;
        doc.put(automerge::ROOT, "created_at", now_ms)?;
        doc.put_object(automerge::ROOT, "messages", ObjType::List)?;
        doc.commit_with(automerge::transaction::CommitOptions::default().with_time(now_ms));
        Ok(Self { doc })
    }

    /// An empty replica of a document made elsewhere; fill it with [`Self::apply`].
    pub fn empty(device: &PublicKey) -> Self {
        Self {
            doc: AutoCommit::new().with_actor(actor_id(device)),
        }
    }

    /// Loads a saved (snapshot) document.
    pub fn load(device: &PublicKey, saved: &[u8]) -> Result<Self, DocError> {
        Ok(Self {
            doc: AutoCommit::load(saved)?.with_actor(actor_id(device)),
        })
    }

    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    pub fn title(&self) -> Result<String, DocError> {
        str_of(&self.doc, &automerge::ROOT, "title")?.ok_or(DocError::Missing("title"))
    }

    pub fn set_title(&mut self, title: &str, now_ms: i64) -> Result<(), DocError> {
        self.doc.put(automerge::ROOT, "title", title)?;
        self.commit(now_ms);
        Ok(())
    }

    fn messages_obj(&self) -> Result<ObjId, DocError> {
        obj_of(&self.doc, &automerge::ROOT, "messages")
    }

    fn commit(&mut self, now_ms: i64) {
        self.doc
            .commit_with(automerge::transaction::CommitOptions::default().with_time(now_ms));
    }

    /// Appends a message (one change).
    pub fn append(&mut self, message: NewMessage<'_>, author: &PublicKey) -> Result<(), DocError> {
        let list = self.messages_obj()?;
        let at = self.doc.length(&list);
        let m = self.doc.insert_object(&list, at, ObjType::Map)?;
        self.doc.put(&m, "id", message.id)?;
        self.doc.put(&m, "role", message.role.as_str())?;
        self.doc.put(&m, "author", author.to_string())?;
        let text = self.doc.put_object(&m, "text", ObjType::Text)?;
        self.doc.splice_text(&text, 0, 0, message.text)?;
        self.doc.put(&m, "status", message.status.as_str())?;
        self.doc.put(&m, "created_at", message.now_ms)?;
        self.doc.put(&m, "updated_at", message.now_ms)?;
        self.doc.put_object(&m, "timings", ObjType::Map)?;
        self.commit(message.now_ms);
        Ok(())
    }

    /// The message object with `id`, searching from the end (recent messages are the ones
    /// being streamed into).
    fn find(&self, id: &str) -> Result<ObjId, DocError> {
        let list = self.messages_obj()?;
        for i in (0..self.doc.length(&list)).rev() {
            if let Some((Value::Object(ObjType::Map), m)) = self.doc.get(&list, i)?
                && str_of(&self.doc, &m, "id")?.as_deref() == Some(id)
            {
                return Ok(m);
            }
        }
        Err(DocError::NoSuchMessage(id.to_owned()))
    }

    /// Appends `chunk` to a message's text (one change): how an answer streams.
    pub fn stream(&mut self, id: &str, chunk: &str, now_ms: i64) -> Result<(), DocError> {
        let m = self.find(id)?;
        let text = obj_of(&self.doc, &m, "text")?;
        let end = self.doc.length(&text);
        self.doc.splice_text(&text, end, 0, chunk)?;
        self.doc.put(&m, "updated_at", now_ms)?;
        self.commit(now_ms);
        Ok(())
    }

    /// Marks a message finished (done, cancelled or failed), with the model used and the
    /// per-stage timings (one change).
    pub fn finish(
        &mut self,
        id: &str,
        status: Status,
        model: Option<&str>,
        timings_ms: &BTreeMap<String, u64>,
        now_ms: i64,
    ) -> Result<(), DocError> {
        let m = self.find(id)?;
        self.doc.put(&m, "status", status.as_str())?;
        if let Some(model) = model {
            self.doc.put(&m, "model", model)?;
        }
        let timings = obj_of(&self.doc, &m, "timings")?;
        for (stage, ms) in timings_ms {
            self.doc.put(&timings, stage.as_str(), *ms)?;
        }
        self.doc.put(&m, "updated_at", now_ms)?;
        self.commit(now_ms);
        Ok(())
    }

    /// Records which machine made an answer (see [`Message::served_by`]).
    ///
    /// # Errors
    /// When there is no message `id`.
    pub fn set_served_by(
        &mut self,
        id: &str,
        served_by: &str,
        now_ms: i64,
    ) -> Result<(), DocError> {
        let m = self.find(id)?;
        self.doc.put(&m, "served_by", served_by)?;
        self.commit(now_ms);
        Ok(())
    }

    /// Every message, in order.
    pub fn messages(&self) -> Result<Vec<Message>, DocError> {
        let list = self.messages_obj()?;
        let mut out = Vec::with_capacity(self.doc.length(&list));
        for i in 0..self.doc.length(&list) {
            let Some((Value::Object(ObjType::Map), m)) = self.doc.get(&list, i)? else {
                return Err(DocError::WrongType { field: "messages" });
            };
            out.push(self.read_message(&m)?);
        }
        Ok(out)
    }

    pub fn message_count(&self) -> Result<usize, DocError> {
        Ok(self.doc.length(&self.messages_obj()?))
    }

    /// The message at `index` (0 is the first), without reading the others: what a caller that
    /// needs only the latest messages of a long conversation uses.
    pub fn message(&self, index: usize) -> Result<Option<Message>, DocError> {
        let list = self.messages_obj()?;
        match self.doc.get(&list, index)? {
            Some((Value::Object(ObjType::Map), m)) => Ok(Some(self.read_message(&m)?)),
            Some(_) => Err(DocError::WrongType { field: "messages" }),
            None => Ok(None),
        }
    }

    fn read_message(&self, m: &ObjId) -> Result<Message, DocError> {
        let doc = &self.doc;
        let text = obj_of(doc, m, "text")?;
        let timings = obj_of(doc, m, "timings")?;
        let mut timings_ms = BTreeMap::new();
        for key in doc.keys(&timings) {
            if let Some((Value::Scalar(v), _)) = doc.get(&timings, key.as_str())?
                && let Some(ms) = v.as_u64()
            {
                timings_ms.insert(key, ms);
            }
        }
        Ok(Message {
            id: str_of(doc, m, "id")?.ok_or(DocError::Missing("id"))?,
            role: str_of(doc, m, "role")?
                .as_deref()
                .and_then(Role::parse)
                .ok_or(DocError::WrongType { field: "role" })?,
            author: str_of(doc, m, "author")?.unwrap_or_default(),
            text: doc.text(&text)?,
            status: str_of(doc, m, "status")?
                .as_deref()
                .and_then(Status::parse)
                .ok_or(DocError::WrongType { field: "status" })?,
            created_at_ms: int_of(doc, m, "created_at")?,
            updated_at_ms: int_of(doc, m, "updated_at")?,
            model: str_of(doc, m, "model")?,
            served_by: str_of(doc, m, "served_by")?,
            timings_ms,
        })
    }

    /// The change the last local edit made: `(sequence number, raw change bytes)`.
    pub fn last_local_change(&mut self) -> Option<(u64, Vec<u8>)> {
        self.doc
            .get_last_local_change()
            .map(|c| (c.seq(), c.raw_bytes().to_vec()))
    }

    /// Applies a change received from `actor` with sequence number `seq` (already decrypted and
    /// checked by its envelope). Changes may arrive in any order across actors: Automerge queues
    /// one until its dependencies arrive.
    pub fn apply(&mut self, actor: &PublicKey, seq: u64, bytes: &[u8]) -> Result<(), DocError> {
        apply_checked(&mut self.doc, actor, seq, bytes)
    }

    /// A new index, made on the user's first device (one change).
    pub fn create_index(device: &PublicKey, now_ms: i64) -> Result<Self, DocError> {
        let mut doc = AutoCommit::new().with_actor(actor_id(device));
        doc.put_object(automerge::ROOT, "conversations", ObjType::Map)?;
        doc.put_object(automerge::ROOT, "settings", ObjType::Map)?;
        doc.commit_with(automerge::transaction::CommitOptions::default().with_time(now_ms));
        Ok(Self { doc })
    }

    /// Records a conversation (or updates its title and time) — one change.
    pub fn upsert_conversation(&mut self, entry: &ConversationEntry) -> Result<(), DocError> {
        let convs = obj_of(&self.doc, &automerge::ROOT, "conversations")?;
        let key = entry.id.to_string();
        let c = match self.doc.get(&convs, key.as_str())? {
            Some((Value::Object(ObjType::Map), c)) => c,
            _ => {
                let c = self.doc.put_object(&convs, key.as_str(), ObjType::Map)?;
                self.doc.put(&c, "created_at", entry.created_at_ms)?;
                c
            }
        };
        self.doc.put(&c, "title", entry.title.as_str())?;
        self.doc.put(&c, "updated_at", entry.updated_at_ms)?;
        self.doc.commit_with(
            automerge::transaction::CommitOptions::default().with_time(entry.updated_at_ms),
        );
        Ok(())
    }

    /// Conversations, most recently updated first.
    pub fn conversations(&self) -> Result<Vec<ConversationEntry>, DocError> {
        let convs = obj_of(&self.doc, &automerge::ROOT, "conversations")?;
        let mut out = Vec::new();
        for key in self.doc.keys(&convs) {
            let Ok(id) = key.parse::<DocId>() else {
                continue;
            };
            let Some((Value::Object(ObjType::Map), c)) = self.doc.get(&convs, key.as_str())? else {
                continue;
            };
            out.push(ConversationEntry {
                id,
                title: str_of(&self.doc, &c, "title")?.unwrap_or_default(),
                created_at_ms: int_of(&self.doc, &c, "created_at")?,
                updated_at_ms: int_of(&self.doc, &c, "updated_at")?,
            });
        }
        out.sort_by(|a, b| b.updated_at_ms.cmp(&a.updated_at_ms).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    pub fn set_setting(&mut self, key: &str, value: &str, now_ms: i64) -> Result<(), DocError> {
        let settings = obj_of(&self.doc, &automerge::ROOT, "settings")?;
        self.doc.put(&settings, key, value)?;
        self.doc
            .commit_with(automerge::transaction::CommitOptions::default().with_time(now_ms));
        Ok(())
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>, DocError> {
        let settings = obj_of(&self.doc, &automerge::ROOT, "settings")?;
        match self.doc.get(&settings, key)? {
            Some((Value::Scalar(v), _)) => Ok(v.as_str().map(str::to_owned)),
            _ => Ok(None),
        }
    }

    /// Merges another replica of the same document into this one (after loading a snapshot).
    pub fn merge(&mut self, other: &mut Doc) -> Result<(), DocError> {
        self.doc.merge(&mut other.doc)?;
        Ok(())
    }

    /// Heads, for comparing replicas.
    pub fn heads(&mut self) -> Vec<automerge::ChangeHash> {
        let mut heads = self.doc.get_heads();
        heads.sort();
        heads
    }
}

fn apply_checked(
    doc: &mut AutoCommit,
    actor: &PublicKey,
    seq: u64,
    bytes: &[u8],
) -> Result<(), DocError> {
    let change =
        automerge::Change::try_from(bytes).map_err(|e| DocError::BadChange(e.to_string()))?;
    let expected = actor_id(actor);
    if *change.actor_id() != expected {
        return Err(DocError::ActorMismatch {
            expected: expected.to_hex_string(),
            found: change.actor_id().to_hex_string(),
        });
    }
    if change.seq() != seq {
        return Err(DocError::SeqMismatch {
            expected: seq,
            found: change.seq(),
        });
    }
    doc.apply_changes([change])?;
    Ok(())
}

/// An entry of the index: one conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationEntry {
    pub id: DocId,
    pub title: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

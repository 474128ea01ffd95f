//! Jarvis conversations: encrypted Automerge documents and the sans-IO sync that moves them.
//!
//! - [`doc`]: the typed document API (conversations, messages streamed as growing text, the
//!   per-user index) over Automerge.
//! - [`envelope`]: per-epoch document keys wrapped with age to each device, changes sealed with
//!   XChaCha20-Poly1305 and signed by their author, encrypted snapshots.
//! - [`replica`]: one party's holdings over a [`store::Store`]: a device opens and applies what
//!   it receives; a keyless relay only verifies and stores ciphertext.
//! - [`sync`]: the per-peer protocol state machine (version vectors, bounded batches, live push,
//!   resync timer), with no sockets, clocks or threads.
//! - [`store`]: the `Store` trait, an in-memory store and the sled store: the one module of this
//!   crate that touches disk.
//!
//! See [`sync`] for a runnable example of two devices converging.

pub mod doc;
pub mod envelope;
pub mod ids;
pub mod replica;
pub mod store;
pub mod sync;

pub use doc::{ConversationEntry, Doc, DocError, Message, NewMessage, Role, Status};
pub use envelope::{
    ChangeHeader, DocKey, EnvelopeError, KeyId, KeyRecord, SealedChange, SealedSnapshot,
};
pub use ids::{DocId, VersionVector};
pub use replica::{Quarantine, Received, Replica, ReplicaError};
pub use store::{MemStore, Put, Store, StoreError};
pub use sync::{HaveKind, Session, SyncMessage};

//! Jarvis conversations: per-user index and per-conversation Automerge documents, sealed with a
//! per-epoch document key, synced by a sans-IO state machine, stored behind a `Store` trait.
//!
//! Not built yet: this crate is filled by the "Encrypted conversation store and sans-IO sync"
//! issue. It exists now so the workspace has its final shape and its invariants (no tokio, no
//! I/O outside the sled store) are checked from the start.

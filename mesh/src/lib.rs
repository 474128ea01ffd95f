//! The protocols every Jarvis peer speaks, shared by the node, the relay and the GPU peer:
//!
//! - [`wire`]: the libp2p protocols (auth, revocations, sync, pairing) and their
//!   length-prefixed framing.
//! - [`admission`]: who a connection's peer is and whether it is let in, sans-IO: one state
//!   machine for every kind of peer, its constants defined once.
//! - [`directory`]: the directory and member-report protocol's frames and types.
//! - [`gate`] and [`boxed`]: behaviour wrappers: third-party protocols served only to admitted
//!   peers, and connection handlers on the heap.
//! - [`exchange`]: the shells' half of the revocation exchange, written once.
//! - [`limits`]: how many connections a peer, an address and strangers together may hold.
//! - [`relays`]: which of the org's relays a device uses, and the next when it fails.
//! - [`client`]: an admin workstation talking to the org's relays (publishing revocations,
//!   asking who they have admitted).
//!
//! Invariant: no storage, no inference, no HTTP. What a peer *does* with an admitted
//! connection (replication, store-and-forward, answers) lives in the crate that runs it.

pub mod admission;
pub mod boxed;
pub mod client;
pub mod directory;
pub mod exchange;
pub mod gate;
pub mod limits;
pub mod relays;
pub mod wire;

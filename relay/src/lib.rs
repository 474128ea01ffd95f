//! The org relay: blind store-and-forward of sealed changes, circuit relay, and revocation
//! distribution, in the shape of iroh-relay: a library (the wire the mesh speaks, the sans-IO
//! store-and-forward core) and, with the `server` feature, the server behind `jarvis-relay`.
//!
//! - [`wire`]: the project's libp2p protocols and their framing, shared with the node.
//! - [`client`]: an admin publishing the org's revocations to its relays, and asking them who
//!   they have seen.
//! - [`directory`]: the directory of online devices and GPU peers (heartbeats, expiry), and the
//!   member and invite-claim report an admin reads, sans-IO.
//! - [`hub`]: store-and-forward, sans-IO: each user's keyless replica, every admitted device a
//!   sync peer of its own user's replica, live fan-out, rate limits and quotas.
//! - `server` (feature): the libp2p shell: admission (the authentication gate), circuit relay
//!   v2, the hub over a sled database, revocations given on admission; with `gate` (identify and
//!   ping only for admitted peers) and `boxed` (connection handlers on the heap).
//!
//! Not built yet (the relay issue): the PostgreSQL store (the hub is generic over crdt's
//! `Store`, which is where it plugs in).

#[cfg(feature = "server")]
pub mod boxed;
pub mod client;
pub mod directory;
#[cfg(feature = "server")]
pub mod gate;
pub mod hub;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod roster;
#[cfg(feature = "server")]
pub mod server;
pub mod wire;

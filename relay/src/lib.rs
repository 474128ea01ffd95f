//! The org relay: blind store-and-forward of sealed changes, circuit relay, and revocation
//! distribution, in the shape of iroh-relay: a library (the sans-IO store-and-forward core and
//! directory listing) and, with the `server` feature, the server behind `jarvis-relay`.
//!
//! The protocols the relay speaks with every other peer (auth, sync, directory frames) and the
//! admission core are the mesh's: `jarvis_mesh`.
//!
//! - [`hub`]: store-and-forward, sans-IO: each user's keyless replica, every admitted device a
//!   sync peer of its own user's replica, live fan-out, rate limits and quotas.
//! - [`listing`]: who is online, from the directory heartbeats, sans-IO.
//! - [`announce`]: what an instance of a fleet tells the others it stored (ids only).
//! - `server` (feature): the libp2p shell: the mesh's admission core with the relay's policy
//!   (invite claims, in `roster`), circuit relay v2, the hub over the relay's store, revocations
//!   given on admission.
//! - `store` and `pg` (feature `server`): where the hub keeps each user's data: the embedded
//!   sled database (the default) or PostgreSQL, shared by several relay instances.

pub mod announce;
pub mod hub;
pub mod listing;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod pg;
#[cfg(feature = "server")]
pub mod roster;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;

//! The org relay: blind store-and-forward of sealed changes, circuit relay, the directory of
//! online devices and GPU peers, and revocation distribution.
//!
//! Built so far: the circuit-relay server (`jarvis-relay up`), so that devices on networks that
//! cannot reach each other connect through the relay (and upgrade to a direct connection with
//! DCUtR where the networks allow). Not built yet (the relay issue): the authentication gate on
//! the relay, store-and-forward, the directory, revocation distribution, quotas, metrics, and
//! the PostgreSQL store.

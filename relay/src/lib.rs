//! The org relay: blind store-and-forward of sealed changes, circuit relay, the directory of
//! online devices and GPU peers, and revocation distribution.
//!
//! Not built yet: this crate is filled by the relay issue, shaped like iroh-relay (a library with
//! the wire protocol and client, a `server` feature, and the `jarvis-relay` binary). Until then
//! relays and GPU peers are enrolled with `jarvis admin enroll` and their bundles are checked by
//! `jarvis_identity::Bundle::check_for`.

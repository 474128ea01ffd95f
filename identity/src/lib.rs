//! Jarvis identities: who is in the org, proven with signatures, checked without a server.
//!
//! Every principal is an ed25519 key ([`PublicKey`], [`SecretKey`]). The org root key signs
//! admin certificates; admins sign invites, relay and GPU-peer certificates; an invite signs one
//! user certificate; a user signs the certificates of their devices ([`CertChain`]). A device's
//! key is also its libp2p identity, so the id the transport authenticates is the id this crate
//! certifies. Revocations form a grow-only set that merges by union ([`RevocationSet`]). Admin
//! actions go into a signed, hash-chained [`AuditLog`]. Secret keys at rest are sealed with age
//! under a passphrase ([`sealed`]).
//!
//! This crate does no I/O and reads no clock: callers pass bytes in, take bytes out, and pass
//! `now`. Every decoder is strict (versioned, canonical, bounded, no trailing bytes) and returns
//! an error rather than panicking on any input.
//!
//! ```
//! use jarvis_identity::{
//!     DeviceKeys, Invite, Name, OrgInfo, RevocationSet, Roles, SecretKey, UnixTime,
//! };
//!
//! let now = UnixTime(1_800_000_000);
//! let root = SecretKey::generate();
//! let org = OrgInfo { name: Name::new("acme")?, root: root.public(), relays: vec![] };
//!
//! // The root invites alice; her first device redeems the invite.
//! let invite = Invite::create(
//!     org.clone(), None, &root, Name::new("alice")?, Roles::MEMBER, now,
//!     now.saturating_add_secs(3600),
//! )?;
//! let token = invite.to_token(); // what the admin sends alice
//! let device_key = SecretKey::generate();
//! let age_identity = age::x25519::Identity::generate();
//! let redeemed = Invite::from_token(&token)?.redeem(
//!     now,
//!     Some(&root.public()),
//!     &DeviceKeys {
//!         key: device_key.public(),
//!         name: &Name::new("laptop")?,
//!         age_recipient: &age_identity.to_public().to_string(),
//!     },
//! )?;
//!
//! // Any peer of the org checks the device's chain against the root.
//! let verified = redeemed.device_chain.verify(&root.public(), now, &RevocationSet::new(root.public()))?;
//! assert_eq!(verified.user.unwrap().as_str(), "alice");
//! assert_eq!(verified.subject, device_key.public());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod audit;
pub mod cert;
pub mod encoding;
pub mod enrol;
pub mod hello;
pub mod keys;
pub mod revocation;
pub mod sealed;
pub mod token;

pub use audit::{AuditAction, AuditEntry, AuditError, AuditLog};
pub use cert::{
    CertChain, CertKind, CertTemplate, Certificate, ChainError, IssueError, Roles, Verified,
};
pub use encoding::DecodeError;
pub use enrol::{
    Bundle, DeviceKeys, EnrolError, Invite, JoinRequest, OrgInfo, PairingCode, Redeemed,
    RequestKind, Sponsor,
};
pub use keys::{Name, ParseIdError, PublicKey, SecretKey, Serial, Signature, UnixTime};
pub use revocation::{Revocation, RevocationError, RevocationSet, RevocationTarget};
pub use sealed::{KeyMaterial, SealError};
pub use token::{TokenError, TokenKind};

/// Re-exported so callers make age identities with the same version this crate parses.
pub use age;

/// For `jarvis-bench` only: the raw signed parts of a chain, so a benchmark can verify the same
/// signatures with ed25519-dalek directly as its reference.
#[doc(hidden)]
pub mod bench_support {
    use crate::cert::CertChain;

    /// `(issuer key bytes, domain-tagged message, signature bytes)` for each certificate.
    pub fn signed_parts(chain: &CertChain) -> Vec<([u8; 32], Vec<u8>, [u8; 64])> {
        chain.certs().iter().map(|c| c.signed_parts()).collect()
    }
}

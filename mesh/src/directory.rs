//! The directory and member report protocol (`/jarvis/directory/1`): its frames and types. The
//! relay's side (who is online) is `jarvis_relay::listing`.
//!
//! - Every admitted device and GPU peer sends a [`Request::Heartbeat`] every [`HEARTBEAT`]: where
//!   it listens and, for a GPU peer, its model and load. The relay answers with the
//!   [`Directory`] that member may see: the *same user's* other devices that are online, and the
//!   org's GPU peers. A member that stops beating for [`EXPIRY`], or disconnects, is gone from
//!   it. Nothing about one user's devices is shown to another user.
//! - An admin asks [`Request::Members`]: every member the relay has admitted (kind, name, user,
//!   first and last seen, online now) and every invite claim it has seen, accepted or refused,
//!   so `jarvis admin members` and the audit log show who joined with which invite.
//!
//! One request and one response per stream, JSON in the shared length-prefixed frames
//! ([`crate::wire::Frames`]), bounded by [`MAX_DIRECTORY_BYTES`]; anything out of bounds is
//! refused with a reason, never trusted.

use std::time::Duration;

use jarvis_identity::{CertChain, CertKind, Name, PublicKey, Serial};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

pub const DIRECTORY_PROTOCOL: StreamProtocol = StreamProtocol::new("/jarvis/directory/1");
/// A member report of a large org is the biggest message; one MiB holds thousands of members.
pub const MAX_DIRECTORY_BYTES: usize = 1024 * 1024;
/// How often members say they are online.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A member silent this long is taken off the directory (three beats missed, and some slack).
pub const EXPIRY: Duration = Duration::from_secs(35);
/// What a heartbeat may carry: a few addresses, each short, a short model name.
pub const MAX_ADDRESSES: usize = 8;
pub const MAX_ADDRESS_LEN: usize = 256;
pub const MAX_MODEL_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "snake_case")]
pub enum Request {
    /// A member is online: where it listens, and for a GPU peer what it serves.
    Heartbeat {
        addresses: Vec<String>,
        #[serde(default)]
        gpu: Option<GpuLoad>,
    },
    /// An admin asks for every member and invite claim the relay has seen.
    Members,
}

/// A GPU peer's offer and load, as its heartbeats report them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuLoad {
    pub model: String,
    pub model_bytes: u64,
    pub slots: u32,
    /// Answers generating or waiting now.
    pub busy: u32,
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Response {
    Directory(Directory),
    Members(MembersReport),
    Refused { reason: String },
}

/// What one member may see.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// The asking device's user's other devices that are online (empty for a GPU peer).
    pub devices: Vec<Entry>,
    /// The org's GPU peers that are online.
    pub gpus: Vec<Entry>,
    /// The org's relay instances up now (this one included), each with its certificate chain,
    /// so a device learns the instances added after it enrolled and spreads over them (checked
    /// by [`crate::relays::listed_relay`]: a relay can leave one out but cannot make one up).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub peer_id: String,
    pub name: String,
    pub addresses: Vec<String>,
    /// How long ago its last heartbeat came.
    pub seen_ms_ago: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuLoad>,
    /// A device's certificate chain (hex of its encoding), from its hello, so the user's other
    /// devices can check for themselves that it is theirs (the relay cannot make one up) and
    /// share their conversations with it, even if they never met it; a relay instance's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersReport {
    pub members: Vec<MemberSeen>,
    pub claims: Vec<Claim>,
}

/// A member the relay has admitted at least once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSeen {
    /// `device`, `gpu`, `relay` or `admin`.
    pub kind: String,
    pub name: String,
    /// Its peer id.
    pub id: String,
    /// The user, for a device.
    #[serde(default)]
    pub user: String,
    /// Unix seconds.
    pub first_seen: u64,
    pub last_seen: u64,
    #[serde(default)]
    pub online: bool,
}

/// A device that presented a chain through an invite: the first user key to do so claims it,
/// and any other user key later presenting the same invite is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The invite certificate's serial (hex).
    pub invite: String,
    pub user: String,
    /// The user key the invite was claimed with.
    pub user_key: String,
    /// The device that presented it (peer id) and its name.
    pub device: String,
    pub device_name: String,
    /// Unix seconds.
    pub at: u64,
    pub accepted: bool,
    /// For the accepted claim: the chain that made it, root to user (hex of its encoding), so
    /// the admin checks that the invite really certified this user key before signing the claim
    /// for every device. Empty for refused claims (they only inform).
    #[serde(default)]
    pub chain: String,
}

/// One frame's JSON.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    serde_json::to_vec(message).unwrap_or_default()
}

/// Reads one message, refusing what is larger than allowed or not what is expected.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    if bytes.len() > MAX_DIRECTORY_BYTES {
        return Err(format!(
            "a directory message of {} bytes is larger than allowed ({MAX_DIRECTORY_BYTES})",
            bytes.len()
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| format!("a malformed directory message: {e}"))
}

/// The invite a device's chain came through: (invite serial, user, user key). `None` for a
/// chain without an invite (a GPU peer, a relay, an admin).
pub fn invite_of(chain: &CertChain) -> Option<(Serial, Name, PublicKey)> {
    invite_and_user(chain).map(|(serial, user)| (serial, user.name().clone(), user.subject()))
}

/// The chain from the root down to the user certificate made with an invite, if `chain` has one.
pub fn through_user(chain: &CertChain) -> Option<CertChain> {
    let certs = chain.certs();
    let at = certs.iter().position(|c| c.kind() == CertKind::Invite)?;
    CertChain::new(certs.get(..at + 2)?.to_vec()).ok()
}

fn invite_and_user(chain: &CertChain) -> Option<(Serial, &jarvis_identity::Certificate)> {
    let certs = chain.certs();
    let at = certs.iter().position(|c| c.kind() == CertKind::Invite)?;
    let user = certs.get(at + 1).filter(|c| c.kind() == CertKind::User)?;
    let invite = certs.get(at)?;
    Some((invite.serial(), user))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn gpu_load() -> GpuLoad {
        GpuLoad {
            model: "qwen".into(),
            model_bytes: 1,
            slots: 4,
            busy: 1,
            ready: true,
        }
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let request = Request::Heartbeat {
            addresses: vec!["/ip4/1.2.3.4/tcp/1".into()],
            gpu: Some(gpu_load()),
        };
        assert_eq!(decode::<Request>(&encode(&request)).unwrap(), request);
        assert_eq!(
            decode::<Request>(&encode(&Request::Members)).unwrap(),
            Request::Members
        );
        assert!(decode::<Request>(b"{\"ask\":\"nothing\"}").is_err());
        assert!(decode::<Response>(&vec![b' '; MAX_DIRECTORY_BYTES + 1]).is_err());
    }
}

//! The relay's directory and member report (`/jarvis/directory/1`), sans-IO.
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

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use jarvis_identity::{CertChain, CertKind, Name, PublicKey, Serial, Verified};
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
    let certs = chain.certs();
    let at = certs.iter().position(|c| c.kind() == CertKind::Invite)?;
    let user = certs.get(at + 1).filter(|c| c.kind() == CertKind::User)?;
    let invite = certs.get(at)?;
    Some((invite.serial(), user.name().clone(), user.subject()))
}

/// Who is online, from their heartbeats.
#[derive(Debug)]
pub struct Listing<P> {
    online: HashMap<P, Online>,
}

#[derive(Debug)]
struct Online {
    kind: CertKind,
    name: String,
    user: Option<Name>,
    addresses: Vec<String>,
    gpu: Option<GpuLoad>,
    last_ms: u64,
}

impl<P> Default for Listing<P> {
    fn default() -> Self {
        Self {
            online: HashMap::new(),
        }
    }
}

impl<P: Eq + Hash + Clone + ToString> Listing<P> {
    /// Records a member's heartbeat, after checking it is within bounds and fits its role
    /// (only a GPU peer reports a model). Devices and GPU peers only.
    pub fn heartbeat(
        &mut self,
        peer: P,
        who: &Verified,
        addresses: Vec<String>,
        gpu: Option<GpuLoad>,
        now_ms: u64,
    ) -> Result<(), String> {
        match who.kind {
            CertKind::Device | CertKind::Gpu => {}
            other => return Err(format!("a {other} is not listed in the directory")),
        }
        if addresses.len() > MAX_ADDRESSES {
            return Err(format!(
                "{} addresses; at most {MAX_ADDRESSES} are listed",
                addresses.len()
            ));
        }
        if addresses.iter().any(|a| a.len() > MAX_ADDRESS_LEN) {
            return Err(format!(
                "an address longer than {MAX_ADDRESS_LEN} characters"
            ));
        }
        match (&gpu, who.kind) {
            (Some(_), CertKind::Device) => {
                return Err("a device does not report a model: only GPU peers do".to_owned());
            }
            (Some(load), _) if load.model.len() > MAX_MODEL_LEN => {
                return Err(format!(
                    "a model name longer than {MAX_MODEL_LEN} characters"
                ));
            }
            _ => {}
        }
        self.online.insert(
            peer,
            Online {
                kind: who.kind,
                name: who.name.to_string(),
                user: who.user.clone(),
                addresses,
                gpu,
                last_ms: now_ms,
            },
        );
        Ok(())
    }

    /// A member disconnected (or was refused): it is no longer online.
    pub fn left(&mut self, peer: &P) {
        self.online.remove(peer);
    }

    /// Takes silent members off.
    pub fn expire(&mut self, now_ms: u64) {
        let expiry = u64::try_from(EXPIRY.as_millis()).unwrap_or(u64::MAX);
        self.online
            .retain(|_, o| now_ms.saturating_sub(o.last_ms) <= expiry);
    }

    pub fn is_online(&self, peer: &P) -> bool {
        self.online.contains_key(peer)
    }

    /// Devices and GPU peers online.
    pub fn counts(&self) -> (usize, usize) {
        let gpus = self
            .online
            .values()
            .filter(|o| o.kind == CertKind::Gpu)
            .count();
        (self.online.len() - gpus, gpus)
    }

    /// What `peer` (verified as `who`) may see: its user's other devices and the GPU peers.
    pub fn view(&self, peer: &P, who: &Verified, now_ms: u64) -> Directory {
        let entry = |p: &P, o: &Online| Entry {
            peer_id: p.to_string(),
            name: o.name.clone(),
            addresses: o.addresses.clone(),
            seen_ms_ago: now_ms.saturating_sub(o.last_ms),
            gpu: o.gpu.clone(),
        };
        let mut directory = Directory::default();
        for (p, o) in &self.online {
            match o.kind {
                CertKind::Gpu => directory.gpus.push(entry(p, o)),
                CertKind::Device
                    if p != peer
                        && who.kind == CertKind::Device
                        && o.user.is_some()
                        && o.user == who.user =>
                {
                    directory.devices.push(entry(p, o));
                }
                _ => {}
            }
        }
        directory.devices.sort_by(|a, b| a.name.cmp(&b.name));
        directory.gpus.sort_by(|a, b| a.name.cmp(&b.name));
        directory
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use jarvis_identity::{Roles, UnixTime};

    fn who(kind: CertKind, name: &str, user: Option<&str>) -> Verified {
        Verified {
            subject: jarvis_identity::SecretKey::generate().public(),
            kind,
            name: Name::new(name).unwrap(),
            roles: Roles::MEMBER,
            user: user.map(|u| Name::new(u).unwrap()),
            user_key: None,
            expires_at: UnixTime(u64::MAX),
        }
    }

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
    fn a_device_sees_its_users_other_devices_and_the_gpu_peers_only() {
        let mut listing = Listing::default();
        let laptop = who(CertKind::Device, "laptop", Some("alice"));
        let phone = who(CertKind::Device, "phone", Some("alice"));
        let bobs = who(CertKind::Device, "bobs-laptop", Some("bob"));
        let gpu = who(CertKind::Gpu, "gpu-1", None);
        listing
            .heartbeat(
                1,
                &laptop,
                vec!["/ip4/1.2.3.4/udp/1/quic-v1".into()],
                None,
                0,
            )
            .unwrap();
        listing.heartbeat(2, &phone, vec![], None, 0).unwrap();
        listing.heartbeat(3, &bobs, vec![], None, 0).unwrap();
        listing
            .heartbeat(4, &gpu, vec![], Some(gpu_load()), 0)
            .unwrap();
        let seen = listing.view(&2, &phone, 500);
        assert_eq!(seen.devices.len(), 1);
        assert_eq!(seen.devices[0].name, "laptop");
        assert_eq!(seen.devices[0].seen_ms_ago, 500);
        assert_eq!(seen.gpus.len(), 1);
        assert_eq!(seen.gpus[0].gpu, Some(gpu_load()));
        let bob_sees = listing.view(&3, &bobs, 0);
        assert!(bob_sees.devices.is_empty(), "{bob_sees:?}");
        // A GPU peer sees no one's devices.
        assert!(listing.view(&4, &gpu, 0).devices.is_empty());
        assert_eq!(listing.counts(), (3, 1));
    }

    #[test]
    fn silent_and_departed_members_leave_the_directory() {
        let mut listing = Listing::default();
        let laptop = who(CertKind::Device, "laptop", Some("alice"));
        let phone = who(CertKind::Device, "phone", Some("alice"));
        listing.heartbeat(1, &laptop, vec![], None, 0).unwrap();
        listing.heartbeat(2, &phone, vec![], None, 30_000).unwrap();
        listing.expire(36_000);
        assert!(!listing.is_online(&1), "silent for 36 s");
        assert!(listing.is_online(&2));
        listing.left(&2);
        assert_eq!(listing.counts(), (0, 0));
    }

    #[test]
    fn heartbeats_out_of_bounds_or_role_are_refused() {
        let mut listing = Listing::<u32>::default();
        let laptop = who(CertKind::Device, "laptop", Some("alice"));
        let many = vec!["/ip4/1.1.1.1/tcp/1".to_owned(); MAX_ADDRESSES + 1];
        assert!(listing.heartbeat(1, &laptop, many, None, 0).is_err());
        let long = vec!["x".repeat(MAX_ADDRESS_LEN + 1)];
        assert!(listing.heartbeat(1, &laptop, long, None, 0).is_err());
        let err = listing
            .heartbeat(1, &laptop, vec![], Some(gpu_load()), 0)
            .unwrap_err();
        assert!(err.contains("only GPU peers"), "{err}");
        let relay = who(CertKind::Relay, "relay", None);
        assert!(listing.heartbeat(1, &relay, vec![], None, 0).is_err());
        assert_eq!(listing.counts(), (0, 0));
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

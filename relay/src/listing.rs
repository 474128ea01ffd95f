//! Who is online at this relay, from the heartbeats of `/jarvis/directory/1`, sans-IO: the
//! relay's half of the directory whose frames and types are [`jarvis_mesh::directory`].

use std::collections::HashMap;
use std::hash::Hash;

use jarvis_identity::{CertKind, Name, Verified};
use jarvis_mesh::directory::{
    Directory, EXPIRY, Entry, GpuLoad, MAX_ADDRESS_LEN, MAX_ADDRESSES, MAX_MODEL_LEN,
};

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
            // The server adds a device's chain: the listing only knows who beats.
            chain: None,
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
}

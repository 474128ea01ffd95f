//! Who is online at this relay, from the heartbeats of `/jarvis/directory/1`, sans-IO: the
//! relay's half of the directory whose frames and types are [`jarvis_mesh::directory`].

use std::collections::HashMap;
use std::hash::Hash;

use jarvis_identity::{CertKind, Name, Verified};
use jarvis_mesh::directory::{
    Directory, EXPIRY, Entry, GpuLoad, MAX_ADDRESS_LEN, MAX_ADDRESSES, MAX_MODEL_LEN,
};

/// Who is online, from their heartbeats: here, and (in a fleet) at the other instances.
#[derive(Debug)]
pub struct Listing<P> {
    online: HashMap<P, Online>,
    /// Members online at the fleet's other instances, as last read from the shared database,
    /// and when (this listing's clock).
    remote: Vec<Shared>,
    remote_at_ms: u64,
    /// This relay instance itself, as listed to members (and shared with the fleet).
    own: Option<Shared>,
}

/// A member as the fleet's instances share it (JSON in the database): what a directory entry
/// needs, and who may see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shared {
    pub peer_id: String,
    /// A GPU peer (listed to every member), or a device (listed to its user's other devices).
    pub gpu_peer: bool,
    /// A relay instance of the fleet (listed to every member, so devices learn new instances).
    #[serde(default)]
    pub relay: bool,
    pub name: String,
    pub user: Option<String>,
    pub addresses: Vec<String>,
    pub gpu: Option<GpuLoad>,
    /// A device's certificate chain (hex), for its user's other devices.
    pub chain: Option<String>,
    /// Milliseconds since its last heartbeat, when read.
    pub seen_ms_ago: u64,
}

impl Shared {
    /// Whether it keeps the bounds a heartbeat is held to (it comes from another process).
    fn within_bounds(&self) -> bool {
        self.addresses.len() <= MAX_ADDRESSES
            && self.addresses.iter().all(|a| a.len() <= MAX_ADDRESS_LEN)
            && self
                .gpu
                .as_ref()
                .is_none_or(|g| self.gpu_peer && g.model.len() <= MAX_MODEL_LEN)
            && !(self.relay && self.gpu_peer)
            && self.name.len() <= 256
            && self.chain.as_ref().is_none_or(|c| c.len() <= 64 * 1024)
    }
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
            remote: Vec::new(),
            remote_at_ms: 0,
            own: None,
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

    /// The members online here, as the fleet shares them (chains are the shell's to add), with
    /// the time of each one's last heartbeat on this listing's clock.
    pub fn shared(&self, now_ms: u64) -> Vec<(P, Shared, u64)> {
        self.online
            .iter()
            .map(|(p, o)| {
                let shared = Shared {
                    peer_id: p.to_string(),
                    gpu_peer: o.kind == CertKind::Gpu,
                    relay: false,
                    name: o.name.clone(),
                    user: o.user.as_ref().map(ToString::to_string),
                    addresses: o.addresses.clone(),
                    gpu: o.gpu.clone(),
                    chain: None,
                    seen_ms_ago: now_ms.saturating_sub(o.last_ms),
                };
                (p.clone(), shared, o.last_ms)
            })
            .collect()
    }

    /// The members online at the other instances, as just read (those out of bounds are left
    /// out).
    pub fn set_remote(&mut self, remote: Vec<Shared>, now_ms: u64) {
        self.remote = remote.into_iter().filter(Shared::within_bounds).collect();
        self.remote_at_ms = now_ms;
    }

    /// This relay instance as members see it (its addresses and certificate chain): listed to
    /// every member with the fleet's other instances.
    pub fn set_own(&mut self, own: Shared) {
        self.own = Some(own);
    }

    pub fn own(&self) -> Option<&Shared> {
        self.own.as_ref()
    }

    /// An address this instance is reached at: listed once, loopback ones last, at most
    /// [`MAX_ADDRESSES`].
    pub fn add_own_address(&mut self, address: libp2p::Multiaddr) {
        let Some(own) = &mut self.own else {
            return;
        };
        let text = address.to_string();
        if own.addresses.contains(&text) || text.len() > MAX_ADDRESS_LEN {
            return;
        }
        own.addresses.push(text);
        let loopback = |a: &String| {
            a.parse::<libp2p::Multiaddr>().is_ok_and(|a| {
                a.iter().any(|p| match p {
                    libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_loopback(),
                    libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_loopback(),
                    _ => false,
                })
            })
        };
        own.addresses.sort_by_key(loopback);
        own.addresses.truncate(MAX_ADDRESSES);
    }

    /// What `peer` (verified as `who`) may see: its user's other devices and the GPU peers,
    /// here and at the fleet's other instances, and the fleet's relay instances (at most
    /// [`jarvis_identity::enrol::MAX_RELAYS`], this one first).
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
        let here: std::collections::HashSet<String> =
            self.online.keys().map(ToString::to_string).collect();
        let me = peer.to_string();
        let age = now_ms.saturating_sub(self.remote_at_ms);
        directory.relays.extend(self.own.iter().map(|own| Entry {
            peer_id: own.peer_id.clone(),
            name: own.name.clone(),
            addresses: own.addresses.clone(),
            seen_ms_ago: 0,
            gpu: None,
            chain: own.chain.clone(),
        }));
        for r in &self.remote {
            if here.contains(&r.peer_id) || r.peer_id == me {
                continue;
            }
            if r.relay
                && (directory.relays.len() >= jarvis_identity::enrol::MAX_RELAYS
                    || directory.relays.iter().any(|o| o.peer_id == r.peer_id))
            {
                continue;
            }
            let entry = Entry {
                peer_id: r.peer_id.clone(),
                name: r.name.clone(),
                addresses: r.addresses.clone(),
                seen_ms_ago: r.seen_ms_ago.saturating_add(age),
                gpu: r.gpu.clone(),
                chain: r.chain.clone(),
            };
            if r.relay {
                directory.relays.push(entry);
            } else if r.gpu_peer {
                directory.gpus.push(entry);
            } else if who.kind == CertKind::Device
                && who.user.is_some()
                && r.user.as_deref() == who.user.as_ref().map(Name::as_str)
            {
                directory.devices.push(entry);
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
    fn members_at_other_instances_are_listed_to_whom_they_would_be_here() {
        let mut listing = Listing::default();
        let laptop = who(CertKind::Device, "laptop", Some("alice"));
        let bobs = who(CertKind::Device, "bobs-laptop", Some("bob"));
        listing.heartbeat(1, &laptop, vec![], None, 0).unwrap();
        listing.heartbeat(3, &bobs, vec![], None, 0).unwrap();
        let remote = |name: &str, user: Option<&str>, gpu: Option<GpuLoad>| Shared {
            peer_id: format!("remote-{name}"),
            gpu_peer: gpu.is_some(),
            relay: false,
            name: name.into(),
            user: user.map(Into::into),
            addresses: vec![],
            gpu,
            chain: Some("00".into()),
            seen_ms_ago: 100,
        };
        let mut too_many = remote("odd", Some("alice"), None);
        too_many.addresses = vec!["x".into(); MAX_ADDRESSES + 1];
        let relay = |name: &str| Shared {
            relay: true,
            ..remote(name, None, None)
        };
        let mut relay_with_a_model = relay("relay-odd");
        relay_with_a_model.gpu_peer = true;
        listing.set_own(relay("relay-1"));
        let mut remote_members = vec![
            remote("phone", Some("alice"), None),
            remote("gpu-2", None, Some(gpu_load())),
            too_many,
            relay_with_a_model,
            relay("relay-1"),
        ];
        remote_members.extend((2..40).map(|i| relay(&format!("relay-{i}"))));
        listing.set_remote(remote_members, 1_000);
        let seen = listing.view(&1, &laptop, 1_500);
        assert_eq!(seen.devices.len(), 1, "{seen:?}");
        assert_eq!(seen.devices[0].name, "phone");
        assert_eq!(seen.devices[0].seen_ms_ago, 600);
        assert_eq!(seen.devices[0].chain.as_deref(), Some("00"));
        assert_eq!(seen.gpus.len(), 1);
        // The fleet's relay instances, this one first, once each, and no more than an org
        // carries.
        let names: Vec<&str> = seen.relays.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names.len(), jarvis_identity::enrol::MAX_RELAYS, "{names:?}");
        assert_eq!(names[..3], ["relay-1", "relay-2", "relay-3"]);
        assert!(!names.contains(&"relay-odd"));
        // Bob sees the GPU peer and the relays, not alice's phone.
        let bob_sees = listing.view(&3, &bobs, 1_500);
        assert!(bob_sees.devices.is_empty() && bob_sees.gpus.len() == 1);
        assert_eq!(bob_sees.relays.len(), jarvis_identity::enrol::MAX_RELAYS);
        // What this instance shares: its own members only.
        let shared = listing.shared(2_000);
        assert_eq!(shared.len(), 2);
        assert!(shared.iter().all(|(_, s, _)| s.seen_ms_ago == 2_000));
    }

    #[test]
    fn this_instance_lists_its_addresses_once_loopback_last_and_bounded() {
        let mut listing = Listing::<u32>::default();
        listing.add_own_address("/ip4/10.0.0.1/tcp/1".parse().unwrap());
        assert!(listing.own().is_none(), "nothing listed before set_own");
        listing.set_own(Shared {
            peer_id: "me".into(),
            gpu_peer: false,
            relay: true,
            name: "relay-1".into(),
            user: None,
            addresses: vec![],
            gpu: None,
            chain: None,
            seen_ms_ago: 0,
        });
        for a in [
            "/ip4/127.0.0.1/udp/4001/quic-v1",
            "/ip4/10.0.0.1/udp/4001/quic-v1",
            "/ip4/10.0.0.1/udp/4001/quic-v1",
            "/ip6/::1/udp/4001/quic-v1",
        ] {
            listing.add_own_address(a.parse().unwrap());
        }
        assert_eq!(
            listing.own().unwrap().addresses,
            [
                "/ip4/10.0.0.1/udp/4001/quic-v1",
                "/ip4/127.0.0.1/udp/4001/quic-v1",
                "/ip6/::1/udp/4001/quic-v1"
            ]
        );
        for i in 0..20 {
            listing.add_own_address(format!("/ip4/10.0.1.{i}/tcp/1").parse().unwrap());
        }
        assert_eq!(listing.own().unwrap().addresses.len(), MAX_ADDRESSES);
        assert!(listing.own().unwrap().addresses[0].starts_with("/ip4/10."));
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

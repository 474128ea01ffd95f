//! Which of its org's relays a device uses, sans-IO: one at a time, chosen so that the devices
//! of an org spread over the fleet's instances, and the next one as soon as it fails.
//!
//! The order is rendezvous hashing (highest random weight) of the device's id with each
//! relay's: every device has its own order, the same on every start, and adding or removing a
//! relay moves only the devices that preferred it. The pool holds indexes into the caller's
//! list; the shell dials the current one and says how it goes:
//!
//! ```text
//!   tick(now, up) ── up ────────────────────────▶ stays
//!                 └─ down for SWITCH_AFTER ─────▶ next in order (returned: dial it now)
//!   lost(now)  (its connection closed, or it refused us) ─▶ next at once
//!   reorder(…)  (an instance was added) ─▶ to it if this device prefers it, else stays
//! ```
//!
//! A device learns the instances added after it enrolled from the directory
//! ([`crate::directory::Directory::relays`]); [`listed_relay`] checks each one as a stranger's
//! claim: its certificate chain must be the org's, a relay's, unrevoked, and its own peer id.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use jarvis_identity::{CertChain, CertKind, PublicKey, RevocationSet, UnixTime};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::directory::{Entry, MAX_ADDRESS_LEN, MAX_ADDRESSES};

/// A certificate chain in a directory entry is at most this long (hex): a few certificates.
pub const MAX_CHAIN_HEX: usize = 64 * 1024;

/// How long the current relay may stay unreachable (a dial that hangs) before the next is
/// tried.
pub const SWITCH_AFTER: Duration = Duration::from_secs(3);

/// The org's relays in this device's order, and the one in use.
#[derive(Debug, Clone)]
pub struct RelayPool {
    /// Indexes into the caller's list, most preferred first.
    order: Vec<usize>,
    /// Position in `order` of the relay in use.
    at: usize,
    /// When the relay in use was last up, or was chosen.
    since: Instant,
}

/// A relay's weight for `me`: a hash of both ids (of the address when it names no peer).
fn weight(me: &PeerId, relay: &Multiaddr) -> u64 {
    let mut hasher = DefaultHasher::new();
    me.to_bytes().hash(&mut hasher);
    match crate::wire::peer_of(relay) {
        Some(peer) => peer.to_bytes().hash(&mut hasher),
        None => relay.to_vec().hash(&mut hasher),
    }
    hasher.finish()
}

impl RelayPool {
    /// The pool of `relays` for the device `me`, starting with its most preferred.
    pub fn new(me: &PeerId, relays: &[Multiaddr], now: Instant) -> Self {
        let mut order: Vec<usize> = (0..relays.len()).collect();
        order.sort_by_key(|i| std::cmp::Reverse(relays.get(*i).map(|r| weight(me, r))));
        Self {
            order,
            at: 0,
            since: now,
        }
    }

    /// The relay in use (an index into the caller's list), if there is any.
    pub fn current(&self) -> Option<usize> {
        self.order.get(self.at).copied()
    }

    /// Whether `index` is a relay kept in reserve (not dialled while the current one serves).
    pub fn is_standby(&self, index: usize) -> bool {
        self.current().is_some_and(|c| c != index)
    }

    /// Moves to the next relay in order; returns it.
    fn next(&mut self, now: Instant) -> Option<usize> {
        if self.order.len() < 2 {
            return None;
        }
        self.at = (self.at + 1) % self.order.len();
        self.since = now;
        self.current()
    }

    /// The shell's view of the current relay at `now`: `up` when connected and it admitted us.
    /// Returns the relay to dial at once when it is time to move on.
    pub fn tick(&mut self, now: Instant, up: bool) -> Option<usize> {
        if up {
            self.since = now;
            return None;
        }
        if now.saturating_duration_since(self.since) >= SWITCH_AFTER {
            return self.next(now);
        }
        None
    }

    /// The current relay's connection closed, or it refused us: the next one, at once.
    pub fn lost(&mut self, now: Instant) -> Option<usize> {
        self.next(now)
    }

    /// The caller's list grew (the relays before keep their indexes; those from `added_from`
    /// on are new): the order is computed again, and the device moves to a new relay only if
    /// it prefers it to all others (that is how a fleet's load spreads to a new instance);
    /// otherwise it stays where it is. Returns the relay to dial at once when it moved.
    pub fn reorder(
        &mut self,
        me: &PeerId,
        relays: &[Multiaddr],
        added_from: usize,
        now: Instant,
    ) -> Option<usize> {
        let before = self.current();
        let since = self.since;
        *self = Self::new(me, relays, now);
        match (self.current(), before) {
            (Some(top), _) if top >= added_from => Some(top),
            (_, Some(before)) => {
                self.at = self.order.iter().position(|i| *i == before).unwrap_or(0);
                self.since = since;
                None
            }
            (top, None) => top,
        }
    }
}

/// A relay instance a directory lists, checked: its certificate chain verifies against the org
/// `root` at `now` with `revocations`, names a relay, and is the chain of the peer id listed.
/// Returns that peer and the address to dial (QUIC first; `/p2p/` added where missing; an
/// address naming another peer, or a circuit, is not used).
pub fn listed_relay(
    entry: &Entry,
    root: &PublicKey,
    now: UnixTime,
    revocations: &RevocationSet,
) -> Result<(PeerId, Multiaddr), String> {
    let chain = entry
        .chain
        .as_deref()
        .ok_or_else(|| "no certificate chain".to_owned())?;
    if chain.len() > MAX_CHAIN_HEX {
        return Err(format!("a chain longer than {MAX_CHAIN_HEX} characters"));
    }
    let chain = hex::decode(chain).map_err(|_| "a chain that is not hex".to_owned())?;
    let chain = CertChain::decode(&chain).map_err(|e| format!("an unreadable chain: {e}"))?;
    let verified = chain
        .verify(root, now, revocations)
        .map_err(|e| format!("its chain does not check out: {e}"))?;
    if verified.kind != CertKind::Relay {
        return Err(format!("a {} is not a relay", verified.kind));
    }
    let peer = verified
        .subject
        .to_libp2p_peer_id()
        .map_err(|e| format!("its key is not a peer id: {e}"))?;
    if entry.peer_id != peer.to_string() {
        return Err("listed under another peer id than its chain's".to_owned());
    }
    let usable: Vec<Multiaddr> = entry
        .addresses
        .iter()
        .take(MAX_ADDRESSES)
        .filter(|a| a.len() <= MAX_ADDRESS_LEN)
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .filter(|a| !a.iter().any(|p| p == Protocol::P2pCircuit))
        .filter_map(|a| match crate::wire::peer_of(&a) {
            None => a.with_p2p(peer).ok(),
            Some(named) if named == peer => Some(a),
            Some(_) => None,
        })
        .collect();
    let quic = |a: &&Multiaddr| a.iter().any(|p| p == Protocol::QuicV1);
    usable
        .iter()
        .find(quic)
        .or(usable.first())
        .map(|a| (peer, a.clone()))
        .ok_or_else(|| "no address to dial".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn relays(n: usize) -> Vec<Multiaddr> {
        (0..n)
            .map(|i| {
                format!("/ip4/10.0.0.{i}/udp/4001/quic-v1/p2p/{}", PeerId::random())
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn devices_spread_over_the_relays_and_keep_their_choice() {
        let relays = relays(3);
        let now = Instant::now();
        let mut counts = [0usize; 3];
        for _ in 0..600 {
            let me = PeerId::random();
            let pool = RelayPool::new(&me, &relays, now);
            let first = pool.current().unwrap();
            counts[first] += 1;
            // The same device chooses the same relay on every start.
            assert_eq!(RelayPool::new(&me, &relays, now).current(), Some(first));
        }
        for count in counts {
            assert!((120..=280).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn a_failed_relay_is_left_for_the_next_and_every_one_is_tried() {
        let relays = relays(3);
        let t0 = Instant::now();
        let mut pool = RelayPool::new(&PeerId::random(), &relays, t0);
        let first = pool.current().unwrap();
        assert!(pool.is_standby((first + 1) % 3));
        assert!(!pool.is_standby(first));
        // Up: it stays, however long.
        assert_eq!(pool.tick(t0 + Duration::from_secs(60), true), None);
        // Down, briefly: it stays; down for SWITCH_AFTER: the next.
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(pool.tick(t1, false), None);
        let second = pool.tick(t1 + SWITCH_AFTER, false).unwrap();
        assert_ne!(second, first);
        // Its connection lost: the next at once, and round again.
        let third = pool.lost(t1 + SWITCH_AFTER).unwrap();
        assert!(third != first && third != second);
        assert_eq!(pool.lost(t1 + SWITCH_AFTER), Some(first));
        // One relay: nothing to move to; none: nothing in use.
        let mut one = RelayPool::new(&PeerId::random(), &relays[..1], t0);
        assert_eq!(one.lost(t0), None);
        assert_eq!(one.current(), Some(0));
        assert_eq!(RelayPool::new(&PeerId::random(), &[], t0).current(), None);
    }

    #[test]
    fn an_added_relay_takes_only_the_devices_that_prefer_it() {
        let all = relays(4);
        let t0 = Instant::now();
        let (mut moved, mut stayed) = (0, 0);
        for _ in 0..400 {
            let me = PeerId::random();
            let mut pool = RelayPool::new(&me, &all[..3], t0);
            let before = pool.current().unwrap();
            match pool.reorder(&me, &all, 3, t0) {
                Some(3) => moved += 1,
                None => {
                    assert_eq!(pool.current(), Some(before));
                    stayed += 1;
                }
                other => panic!("moved to an old relay: {other:?}"),
            }
            // Exactly the devices that would choose it from the start.
            assert_eq!(
                RelayPool::new(&me, &all, t0).current() == Some(3),
                pool.current() == Some(3)
            );
        }
        assert!((60..=140).contains(&moved), "{moved} of 400 moved");
        assert_eq!(moved + stayed, 400);
        // A device on its second choice (the first is down) stays there.
        let me = PeerId::random();
        let mut pool = RelayPool::new(&me, &all[..3], t0);
        let second = pool.lost(t0).unwrap();
        if pool.reorder(&me, &all, 3, t0).is_none() {
            assert_eq!(pool.current(), Some(second));
        }
    }

    mod listed {
        use super::super::*;
        use jarvis_identity::{
            CertTemplate, Certificate, Name, Revocation, RevocationTarget, Roles, SecretKey,
        };

        const NOW: UnixTime = UnixTime(1_800_000_000);

        fn member(root: &SecretKey, kind: CertKind, roles: Roles) -> (SecretKey, CertChain) {
            let key = SecretKey::generate();
            let cert = Certificate::issue(
                CertTemplate {
                    kind,
                    subject: key.public(),
                    name: Name::new("relay-2").unwrap(),
                    roles,
                    not_before: NOW,
                    not_after: NOW.saturating_add_secs(3600),
                    age_recipient: None,
                },
                root,
            )
            .unwrap();
            (key, CertChain::new(vec![cert]).unwrap())
        }

        fn entry(key: &SecretKey, chain: &CertChain, addresses: &[&str]) -> Entry {
            Entry {
                peer_id: key.public().to_libp2p_peer_id().unwrap().to_string(),
                name: "relay-2".into(),
                addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
                seen_ms_ago: 0,
                gpu: None,
                chain: Some(hex::encode(chain.encode())),
            }
        }

        #[test]
        fn only_the_orgs_unrevoked_relays_are_taken_at_their_own_peer_id() {
            let root = SecretKey::generate();
            let none = RevocationSet::new(root.public());
            let (key, chain) = member(&root, CertKind::Relay, Roles::RELAY);
            let peer = key.public().to_libp2p_peer_id().unwrap();
            let ok = entry(
                &key,
                &chain,
                &["/ip4/10.0.0.2/tcp/4001", "/ip4/10.0.0.2/udp/4001/quic-v1"],
            );
            let (got, address) = listed_relay(&ok, &root.public(), NOW, &none).unwrap();
            assert_eq!(got, peer);
            // QUIC first, with the relay's /p2p/ added.
            assert_eq!(
                address.to_string(),
                format!("/ip4/10.0.0.2/udp/4001/quic-v1/p2p/{peer}")
            );
            let refused = |e: &Entry, set: &RevocationSet| {
                listed_relay(e, &root.public(), NOW, set).unwrap_err()
            };
            // Another org's relay.
            let (other_key, other_chain) =
                member(&SecretKey::generate(), CertKind::Relay, Roles::RELAY);
            let e = entry(&other_key, &other_chain, &["/ip4/10.0.0.3/tcp/1"]);
            assert!(refused(&e, &none).contains("does not check out"));
            // The org's, but a GPU peer.
            let (dkey, dchain) = member(&root, CertKind::Gpu, Roles::GPU);
            let e = entry(&dkey, &dchain, &["/ip4/10.0.0.3/tcp/1"]);
            assert!(refused(&e, &none).contains("not a relay"));
            // A genuine chain listed under a peer id of the lister's choosing.
            let mut e = ok.clone();
            e.peer_id = PeerId::random().to_string();
            assert!(refused(&e, &none).contains("another peer id"));
            // Addresses that lead elsewhere: another peer's, a circuit, garbage, oversized.
            let e = entry(
                &key,
                &chain,
                &[
                    &format!("/ip4/10.0.0.9/tcp/1/p2p/{}", PeerId::random()),
                    &format!("/ip4/10.0.0.9/tcp/1/p2p/{peer}/p2p-circuit"),
                    "not an address",
                    &format!("/dns/{}/tcp/1", "a".repeat(300)),
                ],
            );
            assert_eq!(refused(&e, &none), "no address to dial");
            // No chain; a chain that is not hex; one too long to read.
            let mut e = ok.clone();
            e.chain = None;
            assert_eq!(refused(&e, &none), "no certificate chain");
            e.chain = Some("zz".into());
            assert!(refused(&e, &none).contains("not hex"));
            e.chain = Some("00".repeat(MAX_CHAIN_HEX));
            assert!(refused(&e, &none).contains("longer than"));
            // Revoked.
            let mut set = RevocationSet::new(root.public());
            set.insert(
                Revocation::issue(
                    RevocationTarget::Key(key.public()),
                    "decommissioned",
                    NOW,
                    None,
                    &root,
                )
                .unwrap(),
            )
            .unwrap();
            assert!(refused(&ok, &set).contains("does not check out"));
        }
    }
}

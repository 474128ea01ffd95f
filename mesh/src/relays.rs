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
//! ```

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

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
}

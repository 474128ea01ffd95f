//! How many connections a peer, an address and everyone together may hold (#20, finding 5).
//!
//! libp2p's `connection_limits` bounds connections per peer and in all ([`connection_limits()`]).
//! A stranger costs us until it is refused (its hello is read, its connection held up to
//! `AUTH_DEADLINE`), and fresh keys are free, so per-peer limits do not stop one machine from
//! opening thousands. [`Strangers`] bounds the connections whose peer is *not admitted yet*,
//! per remote IP and in all: an office behind one NAT address keeps every admitted device, and a
//! flood from one address waits its turn. Admitted peers are never counted or refused here.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::multiaddr::Protocol;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId, connection_limits};

use crate::gate::AdmittedPeers;

/// What a peer may have in flight to us per QUIC connection and per stream before we read it.
/// libp2p's defaults (15 MB and 10 MB) let every stranger park that much data and make us
/// decrypt it before it is refused: with fifty of them, the members' messages waited behind it
/// (`jarvis-bench relay-strangers`: ack p95 ×3–7 at 2 MB; ×0.8 at this). A device is held to
/// 256 KiB/s at a relay anyway, and this still allows 5 MB/s at 100 ms.
pub const QUIC_CONNECTION_WINDOW: u32 = 512_000;
pub const QUIC_STREAM_WINDOW: u32 = 256_000;

/// libp2p-quic's configuration with [`QUIC_CONNECTION_WINDOW`] and [`QUIC_STREAM_WINDOW`].
pub fn quic_config(mut config: libp2p::quic::Config) -> libp2p::quic::Config {
    config.max_connection_data = QUIC_CONNECTION_WINDOW;
    config.max_stream_data = QUIC_STREAM_WINDOW;
    config
}

/// Per-peer and total limits for libp2p's `connection_limits`: a peer needs a few connections
/// (QUIC and TCP, direct and relayed, and one more while an old one times out).
pub fn connection_limits(
    max_established: u32,
    max_pending_incoming: u32,
) -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established_per_peer(Some(8))
            .with_max_established(Some(max_established))
            .with_max_pending_incoming(Some(max_pending_incoming)),
    )
}

/// Inbound connections from peers not admitted (yet), bounded per remote IP and in all.
pub struct Strangers {
    admitted: AdmittedPeers,
    max_per_ip: usize,
    max_total: usize,
    /// Inbound connections and where they came from (only those whose peer was not admitted
    /// when they were established; counted while their peer is still not admitted).
    inbound: HashMap<ConnectionId, (PeerId, Option<IpAddr>)>,
}

/// Why a connection was turned away.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TooManyStrangers(String);

impl Strangers {
    pub fn new(admitted: AdmittedPeers, max_per_ip: usize, max_total: usize) -> Self {
        Self {
            admitted,
            max_per_ip,
            max_total,
            inbound: HashMap::new(),
        }
    }

    /// Connections held now by peers not admitted: `(from ip, in all)`.
    pub fn waiting(&self, ip: Option<IpAddr>) -> (usize, usize) {
        let mut from_ip = 0;
        let mut total = 0;
        for (peer, from) in self.inbound.values() {
            if self.admitted.contains(peer) {
                continue;
            }
            total += 1;
            if ip.is_some() && *from == ip {
                from_ip += 1;
            }
        }
        (from_ip, total)
    }

    /// Whether a new inbound connection from `peer` at `remote` may be established.
    pub fn admit_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        remote: &Multiaddr,
    ) -> Result<(), TooManyStrangers> {
        if self.admitted.contains(&peer) {
            return Ok(());
        }
        // Forget connections whose peer has been admitted since (here, once per new connection,
        // not on every poll of the swarm): they no longer count.
        let admitted = &self.admitted;
        self.inbound.retain(|_, (peer, _)| !admitted.contains(peer));
        let ip = ip_of(remote);
        let (from_ip, total) = self.waiting(ip);
        if total >= self.max_total {
            return Err(TooManyStrangers(format!(
                "{total} connections are waiting to prove who they are; try again shortly"
            )));
        }
        if ip.is_some() && from_ip >= self.max_per_ip {
            return Err(TooManyStrangers(format!(
                "{from_ip} connections from this address are waiting to prove who they are"
            )));
        }
        self.inbound.insert(connection, (peer, ip));
        Ok(())
    }
}

/// The IP address a multiaddr starts with, if any (a relayed address has none of its own).
fn ip_of(address: &Multiaddr) -> Option<IpAddr> {
    address.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl NetworkBehaviour for Strangers {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit_connection(connection, peer, remote)
            .map_err(ConnectionDenied::new)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        if let FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) = event {
            self.inbound.remove(&connection_id);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn from(ip: &str) -> Multiaddr {
        format!("/ip4/{ip}/udp/4001/quic-v1").parse().unwrap()
    }

    /// A flood of fresh keys from one address is held to `max_per_ip`, others still get in, and
    /// admitted peers (an office behind one NAT address) are never counted or refused.
    #[test]
    fn strangers_are_bounded_per_address_and_in_all_and_members_never() {
        let admitted = AdmittedPeers::default();
        let mut limits = Strangers::new(admitted.clone(), 3, 5);
        let mut next = 0;
        let mut connect = |limits: &mut Strangers, peer: PeerId, ip: &str| {
            next += 1;
            limits
                .admit_connection(ConnectionId::new_unchecked(next), peer, &from(ip))
                .is_ok()
        };
        for _ in 0..3 {
            assert!(connect(&mut limits, PeerId::random(), "203.0.113.9"));
        }
        assert!(!connect(&mut limits, PeerId::random(), "203.0.113.9"));
        assert!(connect(&mut limits, PeerId::random(), "198.51.100.1"));
        assert!(connect(&mut limits, PeerId::random(), "198.51.100.2"));
        // Five strangers wait in all: a sixth is turned away, whatever its address.
        assert!(!connect(&mut limits, PeerId::random(), "192.0.2.7"));
        assert_eq!(limits.waiting(None).1, 5);

        // A member is never refused here, even from the flooded address.
        let member = PeerId::random();
        admitted.set(member, true);
        assert!(connect(&mut limits, member, "203.0.113.9"));
        assert_eq!(limits.waiting(None).1, 5);

        // A stranger that proves who it is stops counting, and makes room.
        let (&id, &(peer, _)) = limits
            .inbound
            .iter()
            .find(|(_, (_, ip))| *ip == Some("203.0.113.9".parse().unwrap()))
            .unwrap();
        admitted.set(peer, true);
        assert_eq!(limits.waiting(Some("203.0.113.9".parse().unwrap())), (2, 4));
        assert!(connect(&mut limits, PeerId::random(), "203.0.113.9"));
        // A closed connection stops counting too.
        limits.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id: peer,
            connection_id: id,
            endpoint: &libp2p::core::ConnectedPoint::Listener {
                local_addr: from("127.0.0.1"),
                send_back_addr: from("203.0.113.9"),
            },
            cause: None,
            remaining_established: 0,
        }));
        assert!(!limits.inbound.contains_key(&id));
    }
}

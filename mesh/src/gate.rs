//! libp2p protocols served only to admitted peers.
//!
//! Until a peer is admitted, the only thing it may send that is read is its hello (#20, finding
//! 5): the sync and directory protocols are gated, so a stranger's request, announced at up to
//! 64 MiB, is not read at all, only held (a few) until the peer is admitted or goes. And libp2p's
//! identify and ping, which do not check admission themselves, would answer any stranger that
//! completes a QUIC handshake with the relay's listen addresses, its protocol list and its agent. (Protocol names can still be tried one by one at
//! negotiation, as with any libp2p peer.) [`Gated`] wraps such a behaviour. On a connection whose peer is not
//! admitted, its handler is not polled (so it sends nothing), and the inbound streams it accepts
//! are held, unanswered (a few; more are dropped). Once [`Gated::set_open`] opens the gate for
//! a peer, the held streams are handed over and the handler runs as it would have from the
//! start; closing it again shuts it off.

use std::collections::{HashMap, VecDeque};
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId,
    FromSwarm, NetworkBehaviour, NotifyHandler, SubstreamProtocol, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};

/// Whether a peer is admitted now.
pub type IsAdmitted = Box<dyn Fn(&PeerId) -> bool + Send>;

/// The peers admitted now, shared between a shell (which sets it as its admission core
/// decides) and the gates and other behaviours that consult it for new connections.
#[derive(Clone, Default)]
pub struct AdmittedPeers(std::sync::Arc<std::sync::Mutex<std::collections::HashSet<PeerId>>>);

impl AdmittedPeers {
    pub fn set(&self, peer: PeerId, admitted: bool) {
        if let Ok(mut set) = self.0.lock() {
            if admitted {
                set.insert(peer);
            } else {
                set.remove(&peer);
            }
        }
    }

    pub fn contains(&self, peer: &PeerId) -> bool {
        self.0.lock().is_ok_and(|set| set.contains(peer))
    }

    /// The check a [`Gated`] makes on a new connection.
    pub fn check(&self) -> IsAdmitted {
        let peers = self.clone();
        Box::new(move |peer| peers.contains(peer))
    }
}

/// `B`, served only to peers the relay admitted.
pub struct Gated<B> {
    inner: B,
    is_admitted: IsAdmitted,
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    /// Gates to open or close, handed to the connections on the next poll.
    changes: VecDeque<(PeerId, ConnectionId, bool)>,
}

impl<B> Gated<B> {
    /// `is_admitted` decides for new connections; [`Gated::set_open`] for those already open.
    pub fn new(inner: B, is_admitted: IsAdmitted) -> Self {
        Self {
            inner,
            is_admitted,
            connections: HashMap::new(),
            changes: VecDeque::new(),
        }
    }

    /// Opens (a peer just admitted) or closes (refused, revoked) the gate on each of `peer`'s
    /// connections.
    pub fn set_open(&mut self, peer: PeerId, open: bool) {
        for connection in self.connections.get(&peer).into_iter().flatten() {
            self.changes.push_back((peer, *connection, open));
        }
    }
}

/// The wrapped behaviour, to send requests with (a gate that is closed holds them back until
/// it opens).
impl<B> std::ops::Deref for Gated<B> {
    type Target = B;

    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B> std::ops::DerefMut for Gated<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

/// What the behaviour tells a connection's handler.
#[derive(Debug)]
pub enum GateIn<E> {
    /// Open (true) or close the gate.
    Open(bool),
    /// The wrapped behaviour's own event.
    Inner(E),
}

impl<B: NetworkBehaviour> NetworkBehaviour for Gated<B> {
    type ConnectionHandler = GatedHandler<THandler<B>>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )?;
        self.connections
            .entry(peer)
            .or_default()
            .push(connection_id);
        Ok(GatedHandler::new(inner, (self.is_admitted)(&peer)))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )?;
        self.connections
            .entry(peer)
            .or_default()
            .push(connection_id);
        Ok(GatedHandler::new(inner, (self.is_admitted)(&peer)))
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        // A connection that ends, or that a behaviour after this one refused once it was
        // established here (the swarm then reports a failure rather than a close).
        let gone = match &event {
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => Some((Some(*peer_id), *connection_id)),
            FromSwarm::ListenFailure(f) => Some((f.peer_id, f.connection_id)),
            FromSwarm::DialFailure(f) => Some((f.peer_id, f.connection_id)),
            _ => None,
        };
        match gone {
            Some((Some(peer), gone)) => {
                if let Some(list) = self.connections.get_mut(&peer) {
                    list.retain(|c| *c != gone);
                    if list.is_empty() {
                        self.connections.remove(&peer);
                    }
                }
            }
            // A failure before the peer was known: rare, so a scan.
            Some((None, gone)) => self.connections.retain(|_, list| {
                list.retain(|c| *c != gone);
                !list.is_empty()
            }),
            None => {}
        }
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some((peer_id, connection, open)) = self.changes.pop_front() {
            return Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(connection),
                event: GateIn::Open(open),
            });
        }
        self.inner.poll(cx).map(|e| e.map_in(GateIn::Inner))
    }
}

/// Streams a closed gate holds for its handler, at most; more are dropped (closed).
const MAX_HELD: usize = 4;

/// A connection's handler behind the gate.
pub struct GatedHandler<H: ConnectionHandler> {
    inner: H,
    open: bool,
    /// Inbound streams negotiated while closed, handed over when the gate opens.
    held: Vec<FullyNegotiatedInbound<H::InboundProtocol, H::InboundOpenInfo>>,
}

impl<H: ConnectionHandler> GatedHandler<H> {
    fn new(inner: H, open: bool) -> Self {
        Self {
            inner,
            open,
            held: Vec::new(),
        }
    }
}

impl<H: ConnectionHandler> ConnectionHandler for GatedHandler<H> {
    type FromBehaviour = GateIn<H::FromBehaviour>;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = H::InboundProtocol;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.inner.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        self.open && self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        // Closed: nothing is sent. The connection polls again when the gate opens (an event
        // from the behaviour wakes it).
        if !self.open {
            return Poll::Pending;
        }
        self.inner.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {
            GateIn::Open(open) => {
                self.open = open;
                if open {
                    for stream in std::mem::take(&mut self.held) {
                        self.inner
                            .on_connection_event(ConnectionEvent::FullyNegotiatedInbound(stream));
                    }
                } else {
                    self.held.clear();
                }
            }
            GateIn::Inner(event) => self.inner.on_behaviour_event(event),
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            '_,
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        match event {
            // A stranger's identify request or ping waits, unanswered, for its hello to pass
            // (a node asks for identify as soon as it connects, and needs the answer: it carries
            // the address the relay sees it at, which hole punching starts from).
            ConnectionEvent::FullyNegotiatedInbound(stream) if !self.open => {
                if self.held.len() < MAX_HELD {
                    self.held.push(stream);
                }
            }
            event => self.inner.on_connection_event(event),
        }
    }
}

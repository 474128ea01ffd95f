//! Talking to relays from an admin workstation: publishing a hello (and with it the org's
//! revocation set) to each of the org's relays. A relay merges the revocations it did not know,
//! disconnects the revoked at once, and pushes the set to every peer connected to it.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, Message};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};

use crate::wire::{self, AUTH_PROTOCOL, MAX_AUTH_BYTES};

/// What became of one relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// The relay checked our hello and answered with its own.
    Accepted,
    /// The relay refused our certificate.
    Refused,
    /// Could not reach it (or it did not answer) in time.
    Unreachable(String),
}

/// The peer an address names (its last `/p2p/`), if any.
fn peer_of(address: &Multiaddr) -> Option<PeerId> {
    address
        .iter()
        .filter_map(|p| match p {
            Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .last()
}

/// Sends `hello` to the relay at each address (each must end in `/p2p/PEER`) and waits up to
/// `timeout` for their answers.
pub async fn publish_hello(
    key: libp2p::identity::Keypair,
    hello: Vec<u8>,
    addresses: &[Multiaddr],
    timeout: Duration,
) -> Result<Vec<(Multiaddr, Published)>, String> {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .map_err(|e| format!("setting up TCP: {e}"))?
        .with_quic()
        .with_behaviour(|_| wire::behaviour(AUTH_PROTOCOL, MAX_AUTH_BYTES, timeout))
        .map_err(|e| format!("setting up: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(timeout))
        .build();
    let mut results: HashMap<PeerId, (Multiaddr, Option<Published>)> = HashMap::new();
    let mut out = Vec::new();
    for address in addresses {
        let Some(peer) = peer_of(address) else {
            out.push((
                address.clone(),
                Published::Unreachable("the address names no relay (add /p2p/PEER_ID)".into()),
            ));
            continue;
        };
        match swarm.dial(address.clone()) {
            Ok(()) => {
                results.insert(peer, (address.clone(), None));
            }
            Err(e) => out.push((address.clone(), Published::Unreachable(e.to_string()))),
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while results.values().any(|(_, r)| r.is_none()) {
        let event = match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(event) => event,
            Err(_) => break,
        };
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                swarm.behaviour_mut().send_request(&peer_id, hello.clone());
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                if let Some((_, result)) = results.get_mut(&peer) {
                    result.get_or_insert(Published::Unreachable(error.to_string()));
                }
            }
            SwarmEvent::Behaviour(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    // The relay checks us too: answer with the same hello.
                    Message::Request { channel, .. } => {
                        let _ = swarm.behaviour_mut().send_response(channel, hello.clone());
                    }
                    Message::Response { response, .. } => {
                        if let Some((_, result)) = results.get_mut(&peer) {
                            result.get_or_insert(if response.is_empty() {
                                Published::Refused
                            } else {
                                Published::Accepted
                            });
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out.extend(results.into_values().map(|(address, result)| {
        (
            address,
            result.unwrap_or_else(|| Published::Unreachable("no answer in time".into())),
        )
    }));
    Ok(out)
}

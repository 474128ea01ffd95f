//! Talking to relays from an admin workstation: publishing the org's revocation set to each of
//! the org's relays (a hello, then the set on the revocations protocol once the relay admitted
//! us), and asking them who they have admitted. A relay merges the revocations it did not know,
//! disconnects the revoked at once, and pushes the set to every peer connected to it.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{self, Message};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};

use crate::directory::{
    self, DIRECTORY_PROTOCOL, MAX_DIRECTORY_BYTES, MembersReport, Request, Response,
};
use crate::wire::{self, peer_of};

#[derive(libp2p::swarm::NetworkBehaviour)]
struct Admin {
    auth: request_response::Behaviour<wire::Frames>,
    directory: request_response::Behaviour<wire::Frames>,
    revocations: request_response::Behaviour<wire::Frames>,
}

/// What became of one relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// The relay checked our hello and answered with its own.
    Accepted,
    /// The relay refused our certificate, and said why.
    Refused(String),
    /// Could not reach it (or it did not answer) in time.
    Unreachable(String),
}

/// Sends `hello` to the relay at each address (each must end in `/p2p/PEER`) and, once the
/// relay has admitted us, the encoded revocation set `revocations`; waits up to `timeout` for
/// the relay to have taken it.
pub async fn publish_revocations(
    key: libp2p::identity::Keypair,
    hello: Vec<u8>,
    revocations: Vec<u8>,
    addresses: &[Multiaddr],
    timeout: Duration,
) -> Result<Vec<(Multiaddr, Published)>, String> {
    Ok(
        exchange(key, hello, addresses, Ask::Push(revocations), timeout)
            .await?
            .into_iter()
            .map(|(address, published, answer)| match (published, answer) {
                (Published::Accepted, None) => (
                    address,
                    Published::Unreachable("admitted us, but did not take the set in time".into()),
                ),
                (published, _) => (address, published),
            })
            .collect(),
    )
}

/// Asks each relay (as an admin: `hello` carries the admin's chain) for the members it has
/// admitted and the invite claims it has seen.
pub async fn ask_members(
    key: libp2p::identity::Keypair,
    hello: Vec<u8>,
    addresses: &[Multiaddr],
    timeout: Duration,
) -> Result<Vec<(Multiaddr, Result<MembersReport, String>)>, String> {
    let ask = directory::encode(&Request::Members);
    Ok(
        exchange(key, hello, addresses, Ask::Directory(ask), timeout)
            .await?
            .into_iter()
            .map(|(address, published, answer)| {
                let report = match (published, answer) {
                    (Published::Accepted, Some(bytes)) => {
                        match directory::decode::<Response>(&bytes) {
                            Ok(Response::Members(report)) => Ok(report),
                            Ok(Response::Refused { reason }) => Err(reason),
                            Ok(other) => Err(format!("an unexpected answer: {other:?}")),
                            Err(e) => Err(e),
                        }
                    }
                    (Published::Accepted, None) => Err("no answer in time".to_owned()),
                    (Published::Refused(reason), _) => {
                        Err(format!("the relay refused us: {reason}"))
                    }
                    (Published::Unreachable(e), _) => Err(e),
                };
                (address, report)
            })
            .collect(),
    )
}

/// What to send once a relay has admitted us.
enum Ask {
    /// A request on the directory protocol.
    Directory(Vec<u8>),
    /// Our revocation set, on the revocations protocol.
    Push(Vec<u8>),
}

/// What became of one relay: the hello, then the answer to what we sent after it.
struct Exchange {
    address: Multiaddr,
    published: Option<Published>,
    answer: Option<Vec<u8>>,
}

impl Exchange {
    fn done(&self) -> bool {
        match &self.published {
            Some(Published::Accepted) => self.answer.is_some(),
            Some(_) => true,
            None => false,
        }
    }
}

/// Dials each relay, exchanges hellos and, once the relay has accepted ours, sends `ask`.
async fn exchange(
    key: libp2p::identity::Keypair,
    hello: Vec<u8>,
    addresses: &[Multiaddr],
    ask: Ask,
    timeout: Duration,
) -> Result<Vec<(Multiaddr, Published, Option<Vec<u8>>)>, String> {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .map_err(|e| format!("setting up TCP: {e}"))?
        .with_quic()
        .with_behaviour(|_| Admin {
            auth: wire::auth_behaviour(timeout),
            directory: wire::behaviour(DIRECTORY_PROTOCOL, MAX_DIRECTORY_BYTES, timeout),
            revocations: wire::revocations_behaviour(),
        })
        .map_err(|e| format!("setting up: {e}"))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(timeout)
                .with_substream_upgrade_protocol_override(crate::wire::NEGOTIATION)
        })
        .build();
    let mut results: HashMap<PeerId, Exchange> = HashMap::new();
    let mut out = Vec::new();
    for address in addresses {
        let Some(peer) = peer_of(address) else {
            out.push((
                address.clone(),
                Published::Unreachable("the address names no relay (add /p2p/PEER_ID)".into()),
                None,
            ));
            continue;
        };
        match swarm.dial(address.clone()) {
            Ok(()) => {
                results.insert(
                    peer,
                    Exchange {
                        address: address.clone(),
                        published: None,
                        answer: None,
                    },
                );
            }
            Err(e) => out.push((address.clone(), Published::Unreachable(e.to_string()), None)),
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while results.values().any(|r| !r.done()) {
        let event = match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(event) => event,
            Err(_) => break,
        };
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                swarm
                    .behaviour_mut()
                    .auth
                    .send_request(&peer_id, hello.clone());
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                if let Some(r) = results.get_mut(&peer) {
                    r.published
                        .get_or_insert(Published::Unreachable(error.to_string()));
                }
            }
            SwarmEvent::Behaviour(AdminEvent::Auth(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                // The relay checks us too: answer with the same hello.
                Message::Request { channel, .. } => {
                    let _ = swarm
                        .behaviour_mut()
                        .auth
                        .send_response(channel, hello.clone());
                }
                Message::Response { response, .. } => {
                    let Some(r) = results.get_mut(&peer) else {
                        continue;
                    };
                    if r.published.is_some() {
                        continue;
                    }
                    if let Some(reason) = jarvis_identity::hello::decode_refusal(&response) {
                        r.published = Some(Published::Refused(reason));
                    } else {
                        r.published = Some(Published::Accepted);
                        let behaviour = swarm.behaviour_mut();
                        match &ask {
                            Ask::Directory(ask) => {
                                behaviour.directory.send_request(&peer, ask.clone());
                            }
                            Ask::Push(set) => {
                                behaviour.revocations.send_request(&peer, set.clone());
                            }
                        }
                    }
                }
            },
            SwarmEvent::Behaviour(
                AdminEvent::Directory(request_response::Event::Message {
                    peer,
                    message: Message::Response { response, .. },
                    ..
                })
                | AdminEvent::Revocations(request_response::Event::Message {
                    peer,
                    message: Message::Response { response, .. },
                    ..
                }),
            ) => {
                if let Some(r) = results.get_mut(&peer) {
                    r.answer = Some(response);
                }
            }
            // The relay pushing its set to us (it learned ours): answered, nothing kept.
            SwarmEvent::Behaviour(AdminEvent::Revocations(request_response::Event::Message {
                message: Message::Request { channel, .. },
                ..
            })) => {
                let _ = swarm
                    .behaviour_mut()
                    .revocations
                    .send_response(channel, Vec::new());
            }
            _ => {}
        }
    }
    // Close what we opened, and wait (briefly) until it is closed: a connection dropped with the
    // swarm lingers at the relay until its idle timeout, and one admin running a few commands
    // would soon meet the relay's per-peer connection limit.
    let peers: Vec<PeerId> = swarm.connected_peers().copied().collect();
    for peer in peers {
        let _ = swarm.disconnect_peer_id(peer);
    }
    let closing = tokio::time::Instant::now() + Duration::from_secs(1);
    while swarm.connected_peers().next().is_some() {
        if tokio::time::timeout_at(closing, swarm.select_next_some())
            .await
            .is_err()
        {
            break;
        }
    }
    out.extend(results.into_values().map(|r| {
        (
            r.address,
            r.published
                .unwrap_or_else(|| Published::Unreachable("no answer in time".into())),
            r.answer,
        )
    }));
    Ok(out)
}

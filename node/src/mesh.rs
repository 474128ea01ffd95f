//! The node's libp2p behaviour: transports and protocols. The project's own protocols (auth,
//! sync, pairing) and their framing are shared with the relay: `jarvis_mesh::wire`.

use std::io;
use std::time::Duration;

pub use jarvis_identity::hello::Hello;
use jarvis_mesh::gate::{AdmittedPeers, Gated};
use jarvis_mesh::wire;
use libp2p::request_response;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{dcutr, identify, mdns, ping, relay};

pub use jarvis_mesh::wire::{Frames, MAX_SYNC_BYTES, PAIR_PROTOCOL, SYNC_PROTOCOL};

/// Everything the node speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Connections per peer and in all, and those of peers not admitted yet per address.
    pub limits: libp2p::connection_limits::Behaviour,
    pub strangers: jarvis_mesh::limits::Strangers,
    pub relay_client: relay::client::Behaviour,
    pub dcutr: dcutr::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub auth: request_response::Behaviour<Frames>,
    /// Served (read) only to admitted peers: a stranger's sync request is not read at all.
    pub sync: Gated<request_response::Behaviour<Frames>>,
    /// Heartbeats to the org's relays, answered with their directory (gated as `sync`).
    pub directory: Gated<request_response::Behaviour<Frames>>,
    /// Revocation sets, exchanged with admitted peers only (gated as `sync`).
    pub revocations: Gated<request_response::Behaviour<Frames>>,
    /// Offloaded answers (`/jarvis/infer/1`), streamed.
    pub stream: libp2p_stream::Behaviour,
}

/// What a GPU peer speaks: the gate and the inference streams (no sync, no relaying).
#[derive(NetworkBehaviour)]
pub struct GpuBehaviour {
    /// Connections per peer and in all, and those of peers not admitted yet per address.
    pub limits: libp2p::connection_limits::Behaviour,
    pub strangers: jarvis_mesh::limits::Strangers,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub auth: request_response::Behaviour<Frames>,
    /// Heartbeats (model and load) to the org's relays' directory.
    pub directory: request_response::Behaviour<Frames>,
    /// Revocation sets, exchanged with admitted peers only.
    pub revocations: Gated<request_response::Behaviour<Frames>>,
    pub stream: libp2p_stream::Behaviour,
}

impl GpuBehaviour {
    pub fn new(
        key: &libp2p::identity::Keypair,
        mdns_enabled: bool,
        admitted: &AdmittedPeers,
    ) -> io::Result<Self> {
        Ok(Self {
            // A GPU peer serves an org's devices: thousands, a few connections each.
            limits: jarvis_mesh::limits::connection_limits(8192, 256),
            strangers: jarvis_mesh::limits::Strangers::new(admitted.clone(), 16, 256),
            identify: identify(key),
            ping: ping::Behaviour::new(ping::Config::new()),
            mdns: Toggle::from(mdns(key, mdns_enabled)),
            auth: wire::auth_behaviour(Duration::from_secs(10)),
            directory: directory(),
            revocations: Gated::new(wire::revocations_behaviour(), admitted.check()),
            stream: libp2p_stream::Behaviour::new(),
        })
    }
}

fn directory() -> request_response::Behaviour<Frames> {
    wire::behaviour(
        jarvis_mesh::directory::DIRECTORY_PROTOCOL,
        jarvis_mesh::directory::MAX_DIRECTORY_BYTES,
        Duration::from_secs(30),
    )
}

fn identify(key: &libp2p::identity::Keypair) -> identify::Behaviour {
    identify::Behaviour::new(identify::Config::new("/jarvis/1.0.0".into(), key.public()))
}

/// mDNS, unless disabled or unavailable: a network without multicast (some Wi-Fi, containers)
/// must not stop the node: it still has --peer addresses and the org's relays.
fn mdns(key: &libp2p::identity::Keypair, enabled: bool) -> Option<mdns::tokio::Behaviour> {
    if !enabled {
        return None;
    }
    match mdns::tokio::Behaviour::new(mdns::Config::default(), key.public().to_peer_id()) {
        Ok(mdns) => Some(mdns),
        Err(e) => {
            tracing::warn!(error = %e, "mDNS is unavailable; using --peer and relays only");
            None
        }
    }
}

impl Behaviour {
    pub fn new(
        key: &libp2p::identity::Keypair,
        relay_client: relay::client::Behaviour,
        mdns_enabled: bool,
        stream: libp2p_stream::Behaviour,
        admitted: &AdmittedPeers,
    ) -> io::Result<Self> {
        let peer_id = key.public().to_peer_id();
        Ok(Self {
            // A device talks to its user's devices, the org's relays and GPU peers, and pairs.
            limits: jarvis_mesh::limits::connection_limits(512, 64),
            strangers: jarvis_mesh::limits::Strangers::new(admitted.clone(), 8, 64),
            relay_client,
            dcutr: dcutr::Behaviour::new(peer_id),
            identify: identify(key),
            ping: ping::Behaviour::new(ping::Config::new()),
            mdns: Toggle::from(mdns(key, mdns_enabled)),
            auth: wire::auth_behaviour(Duration::from_secs(10)),
            sync: Gated::new(
                wire::behaviour(SYNC_PROTOCOL, MAX_SYNC_BYTES, Duration::from_secs(60)),
                admitted.check(),
            ),
            directory: Gated::new(directory(), admitted.check()),
            revocations: Gated::new(wire::revocations_behaviour(), admitted.check()),
            stream,
        })
    }
}

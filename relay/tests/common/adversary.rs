//! An adversarial peer for tests: a small libp2p peer that speaks the mesh's protocols with any
//! key and chain (a relay's certificate stolen from its home, a stranger's, a revoked
//! device's), answers what it is sent as it likes, and sends whatever it is told to. It runs on
//! a thread of its own; the test drives it through [`Adversary::send_sync`] and reads what it
//! received with [`Adversary::received`]. Left alone it behaves as a relay that holds nothing:
//! it asks for everything a peer announces, so the peer sends it its key records and changes.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jarvis_crdt::sync::HaveKind;
use jarvis_crdt::{SyncMessage, VersionVector};
use jarvis_identity::hello::Hello;
use jarvis_identity::{CertChain, SecretKey};
use jarvis_mesh::wire::{self, AUTH_PROTOCOL, MAX_AUTH_BYTES, MAX_SYNC_BYTES, SYNC_PROTOCOL};
use libp2p::request_response::{self, Message};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};

#[derive(libp2p::swarm::NetworkBehaviour)]
struct Behaviour {
    auth: request_response::Behaviour<wire::Frames>,
    sync: request_response::Behaviour<wire::Frames>,
}

/// What the adversary saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Hellos peers sent it (opened with the org root it was given).
    pub hellos: Vec<(PeerId, Hello)>,
    /// Every auth message peers sent it, as received (what a stranger without the root sees).
    pub auth_bytes: Vec<(PeerId, Vec<u8>)>,
    /// Sync messages peers sent it, in order.
    pub sync: Vec<(PeerId, SyncMessage)>,
    /// Answers to the sync messages it sent (a peer answers once it has handled one).
    pub answered: usize,
}

enum Order {
    Sync(PeerId, SyncMessage),
}

pub struct Adversary {
    /// Where it listens, with its peer id.
    pub address: String,
    pub peer_id: PeerId,
    seen: Arc<Mutex<Seen>>,
    orders: mpsc::Sender<Order>,
    _runtime: std::thread::JoinHandle<()>,
}

impl Adversary {
    /// Listens on loopback with `key`, greeting every peer with a hello carrying `chain` (and
    /// an empty revocation set of the org `root`), answering every hello with its own and
    /// acknowledging every sync message as stored.
    pub fn listen(key: &SecretKey, chain: CertChain, root: jarvis_identity::PublicKey) -> Self {
        let keypair = key.to_libp2p_keypair().unwrap();
        let peer_id = keypair.public().to_peer_id();
        let hello = Hello::new(chain, &jarvis_identity::RevocationSet::new(root)).encode(&root);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (orders, incoming) = mpsc::channel();
        let (address_tx, address_rx) = mpsc::channel();
        let thread_seen = Arc::clone(&seen);
        let runtime = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(run(keypair, hello, root, thread_seen, incoming, address_tx));
        });
        let address = address_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the adversary listens");
        Self {
            address: format!("{address}/p2p/{peer_id}"),
            peer_id,
            seen,
            orders,
            _runtime: runtime,
        }
    }

    /// Sends `message` to `peer` as a sync request.
    pub fn send_sync(&self, peer: PeerId, message: SyncMessage) {
        let _ = self.orders.send(Order::Sync(peer, message));
    }

    /// Everything received so far.
    pub fn received(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }
}

async fn run(
    keypair: libp2p::identity::Keypair,
    hello: Vec<u8>,
    root: jarvis_identity::PublicKey,
    seen: Arc<Mutex<Seen>>,
    orders: mpsc::Receiver<Order>,
    address: mpsc::Sender<Multiaddr>,
) {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| Behaviour {
            auth: wire::behaviour(AUTH_PROTOCOL, MAX_AUTH_BYTES, Duration::from_secs(10)),
            sync: wire::behaviour(SYNC_PROTOCOL, MAX_SYNC_BYTES, Duration::from_secs(30)),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    swarm
        .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
        .unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                while let Ok(Order::Sync(peer, message)) = orders.try_recv() {
                    swarm.behaviour_mut().sync.send_request(&peer, message.encode());
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address: a, .. } => {
                    let _ = address.send(a);
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    swarm.behaviour_mut().auth.send_request(&peer_id, hello.clone());
                }
                SwarmEvent::Behaviour(BehaviourEvent::Auth(request_response::Event::Message {
                    peer,
                    message,
                    ..
                })) => {
                    let bytes = match message {
                        Message::Request { request, channel, .. } => {
                            let _ = swarm.behaviour_mut().auth.send_response(channel, hello.clone());
                            request
                        }
                        Message::Response { response, .. } => response,
                    };
                    let mut seen = seen.lock().unwrap();
                    seen.auth_bytes.push((peer, bytes.clone()));
                    if let Ok(h) = Hello::decode(&bytes, &root) {
                        seen.hellos.push((peer, h));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                    peer,
                    message: Message::Request { request, channel, .. },
                    ..
                })) => {
                    let _ = swarm.behaviour_mut().sync.send_response(channel, Vec::new());
                    if let Ok(m) = SyncMessage::decode(&request) {
                        // Like an honest relay that holds nothing: whatever is announced, it
                        // asks for all of it.
                        if let SyncMessage::Have { doc, kind: HaveKind::Announce, .. } = &m {
                            let ask = SyncMessage::Have {
                                doc: *doc,
                                vector: VersionVector::default(),
                                keys: Vec::new(),
                                kind: HaveKind::Request,
                            };
                            swarm.behaviour_mut().sync.send_request(&peer, ask.encode());
                        }
                        seen.lock().unwrap().sync.push((peer, m));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                    message: Message::Response { .. },
                    ..
                })) => {
                    seen.lock().unwrap().answered += 1;
                }
                _ => {}
            }
        }
    }
}

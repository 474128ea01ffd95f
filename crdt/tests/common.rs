//! A simulated network of replicas for the sync tests: every message is encoded and decoded,
//! and delivery order, loss and duplication are in the test's hands.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{BTreeMap, VecDeque};

use jarvis_crdt::store::Store;
use jarvis_crdt::sync::{RESYNC_MS, Session, SyncMessage};
use jarvis_crdt::{MemStore, Replica, SealedChange};
use jarvis_identity::SecretKey;

pub struct Node<S: Store> {
    pub replica: Replica<S>,
    pub sessions: BTreeMap<usize, Session>,
}

pub struct Net<S: Store> {
    pub nodes: Vec<Node<S>>,
    /// (from, to, encoded message)
    pub queue: VecDeque<(usize, usize, Vec<u8>)>,
    pub now_ms: u64,
}

pub struct DeviceSetup {
    pub key: SecretKey,
    pub age: age::x25519::Identity,
}

pub fn devices(n: usize) -> Vec<DeviceSetup> {
    (0..n)
        .map(|_| DeviceSetup {
            key: SecretKey::generate(),
            age: age::x25519::Identity::generate(),
        })
        .collect()
}

impl Net<MemStore> {
    /// Node 0 is a keyless relay; nodes 1..=n are devices. Every device links to the relay, and
    /// devices 1 and 2 also link directly (same LAN).
    pub fn star(setups: Vec<DeviceSetup>) -> Self {
        let mut nodes = vec![Node {
            replica: Replica::keyless(MemStore::new()),
            sessions: BTreeMap::new(),
        }];
        for s in setups {
            nodes.push(Node {
                replica: Replica::device(MemStore::new(), s.key, s.age),
                sessions: BTreeMap::new(),
            });
        }
        let mut net = Self {
            nodes,
            queue: VecDeque::new(),
            now_ms: 0,
        };
        let n = net.nodes.len();
        for d in 1..n {
            net.link(0, d);
        }
        if n > 2 {
            net.link(1, 2);
        }
        net
    }
}

impl<S: Store> Net<S> {
    pub fn link(&mut self, a: usize, b: usize) {
        self.nodes[a].sessions.insert(b, Session::new());
        self.nodes[b].sessions.insert(a, Session::new());
    }

    pub fn send(&mut self, from: usize, to: usize, messages: Vec<SyncMessage>) {
        for m in messages {
            self.queue.push_back((from, to, m.encode()));
        }
    }

    /// Starts every session.
    pub fn start(&mut self) {
        for i in 0..self.nodes.len() {
            let peers: Vec<usize> = self.nodes[i].sessions.keys().copied().collect();
            for p in peers {
                let node = &mut self.nodes[i];
                let out = node
                    .sessions
                    .get_mut(&p)
                    .unwrap()
                    .start(self.now_ms, &node.replica)
                    .unwrap();
                self.send(i, p, out);
            }
        }
    }

    /// A change `node` just stored (its own edit or one received): offered to all its sessions
    /// except the one it came from.
    pub fn fan_out(&mut self, node: usize, except: Option<usize>, changes: &[SealedChange]) {
        let peers: Vec<usize> = self.nodes[node].sessions.keys().copied().collect();
        for p in peers.into_iter().filter(|p| Some(*p) != except) {
            let mut out = Vec::new();
            let n = &mut self.nodes[node];
            for c in changes {
                let session = n.sessions.get_mut(&p).unwrap();
                out.extend(session.on_new_change(c, &n.replica).unwrap());
            }
            self.send(node, p, out);
        }
    }

    pub fn fan_out_key(&mut self, node: usize, record: &jarvis_crdt::KeyRecord) {
        let peers: Vec<usize> = self.nodes[node].sessions.keys().copied().collect();
        for p in peers {
            let out = self.nodes[node]
                .sessions
                .get_mut(&p)
                .unwrap()
                .on_new_key(record);
            self.send(node, p, out);
        }
    }

    /// Delivers the message at `index` of the queue.
    pub fn deliver(&mut self, index: usize) {
        let Some((from, to, bytes)) = self.queue.remove(index) else {
            return;
        };
        let message = SyncMessage::decode(&bytes).expect("peers only send valid messages");
        let node = &mut self.nodes[to];
        let session = node.sessions.get_mut(&from).unwrap();
        let out = session
            .handle(message, self.now_ms, &mut node.replica)
            .unwrap();
        self.send(to, from, out.send);
        let stored = out.received.stored;
        self.fan_out(to, Some(from), &stored);
    }

    /// Advances the clock past the resync timer and polls every session.
    pub fn tick(&mut self) {
        self.now_ms += RESYNC_MS;
        for i in 0..self.nodes.len() {
            let peers: Vec<usize> = self.nodes[i].sessions.keys().copied().collect();
            for p in peers {
                let node = &mut self.nodes[i];
                let out = node
                    .sessions
                    .get_mut(&p)
                    .unwrap()
                    .poll(self.now_ms, &node.replica)
                    .unwrap();
                self.send(i, p, out);
            }
        }
    }

    /// Delivers everything, in order, until the network is quiet (bounded).
    pub fn drain(&mut self) {
        let mut steps = 0;
        while !self.queue.is_empty() {
            self.deliver(0);
            steps += 1;
            assert!(steps < 1_000_000, "the protocol did not quiesce");
        }
    }

    /// Resyncs until quiet: what lossy runs end with.
    pub fn settle(&mut self) {
        for _ in 0..3 {
            self.tick();
            self.drain();
        }
    }
}

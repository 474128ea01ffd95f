//! `relay-strangers` (#20, finding 5): what strangers cost a real `jarvis-relay up`.
//!
//! Fifty strangers, each with a fresh key, connect to the relay over loopback QUIC and each open
//! 64 streams on the sync protocol announcing 64 MiB frames (and sending the first 256 KiB of
//! them), and 4 on the hello protocol announcing the largest hello (64 KiB, garbage); refused,
//! each comes back a second later with a new key. Meanwhile the org's member devices keep writing. Figures: the
//! relay's peak resident memory during the attack (goal: under 300 MB; reference: the same relay
//! with the members only, before the attack), and the members' acknowledgement p95 during the
//! attack against the same members' p95 before it (goal: at most 2×).
//!
//! Then the same strangers against a device: two `jarvis up` of one user (mesh-sync's pair), the
//! strangers at the laptop's address: the laptop's peak RSS (goal: under 300 MB) and the time a
//! message takes from the laptop to the phone, during the attack against before it. On a machine
//! of two cores the fifty attackers share the cores with the pair, so the same attack is also
//! aimed at a third node on the machine: the attack at the laptop against the attack elsewhere
//! is the laptop's own share (goal: at most 1.5×).
//!
//! Every stranger comes from 127.0.0.1, so this is also the per-address limit at work
//! (`--max-unproven-per-ip`, default 32; 8 at a node): the connections it turns away are counted.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use jarvis_identity::SecretKey;
use jarvis_mesh::wire::{AUTH_PROTOCOL, MAX_AUTH_BYTES, MAX_SYNC_BYTES, SYNC_PROTOCOL};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol};
use tokio::sync::watch;

use crate::harness::{Figure, sibling};
use crate::mesh_sync::Pair;
use crate::ramp::rss_bytes;
use crate::relay::{Org, Tally, connect_members, measure_acks, percentile};

pub const NAME: &str = "relay-strangers";

/// What the issue names: 50 strangers, 64 streams each, 64 MiB announced per frame.
const STRANGERS: usize = 50;
const STREAMS: usize = 64;
/// Bytes of each announced frame actually sent before the stranger just holds the stream.
const SENT_PER_STREAM: usize = 256 << 10;

/// A codec that announces `announce` bytes, sends the first `send`, then holds the stream open
/// (its write never finishes): a peer that makes the other side wait for a frame.
#[derive(Clone)]
struct Announcer {
    announce: u32,
    send: usize,
}

impl request_response::Codec for Announcer {
    type Protocol = StreamProtocol;
    type Request = ();
    type Response = ();

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> io::Result<()> {
        Ok(())
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> io::Result<()> {
        Ok(())
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        _: (),
    ) -> io::Result<()> {
        io.write_all(&self.announce.to_be_bytes()).await?;
        let chunk = vec![0x5a; 16 << 10];
        let mut sent = 0;
        while sent < self.send {
            io.write_all(&chunk).await?;
            sent += chunk.len();
        }
        io.flush().await?;
        futures::future::pending::<()>().await;
        Ok(())
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: (),
    ) -> io::Result<()> {
        Ok(())
    }
}

#[derive(libp2p::swarm::NetworkBehaviour)]
struct Stranger {
    auth: request_response::Behaviour<Announcer>,
    sync: request_response::Behaviour<Announcer>,
}

fn announcer(
    protocol: StreamProtocol,
    announce: usize,
    send: usize,
    streams: usize,
) -> request_response::Behaviour<Announcer> {
    request_response::Behaviour::with_codec(
        Announcer {
            announce: u32::try_from(announce).unwrap_or(u32::MAX),
            send,
        },
        [(protocol, ProtocolSupport::Outbound)],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(3600))
            .with_max_concurrent_streams(streams),
    )
}

/// What the strangers saw, together.
#[derive(Default)]
struct Attack {
    /// Connections the relay let in, and those it turned away at once.
    connected: AtomicUsize,
    turned_away: AtomicUsize,
    /// Streams opened (announced frames).
    streams: AtomicU64,
}

/// One stranger: connects with a fresh key, opens its streams, and when the relay lets it go
/// (refused, or turned away), comes back with another key, until `stop`.
async fn stranger(relay: Multiaddr, attack: Arc<Attack>, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        let key = SecretKey::generate();
        let Ok(keypair) = key.to_libp2p_keypair() else {
            return;
        };
        let builder = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_quic()
            .with_behaviour(|_| Stranger {
                auth: announcer(AUTH_PROTOCOL, MAX_AUTH_BYTES, MAX_AUTH_BYTES, 4),
                sync: announcer(SYNC_PROTOCOL, MAX_SYNC_BYTES, SENT_PER_STREAM, STREAMS),
            });
        // Building the behaviour cannot fail (its error type is uninhabited).
        let Ok(builder) = builder;
        let mut swarm = builder
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(Duration::from_secs(3600))
                    .with_substream_upgrade_protocol_override(jarvis_mesh::wire::NEGOTIATION)
            })
            .build();
        if swarm.dial(relay.clone()).is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                event = swarm.select_next_some() => match event {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                        attack.connected.fetch_add(1, Ordering::Relaxed);
                        let behaviour = swarm.behaviour_mut();
                        for _ in 0..4 {
                            behaviour.auth.send_request(&peer_id, ());
                        }
                        for _ in 0..STREAMS {
                            behaviour.sync.send_request(&peer_id, ());
                        }
                        attack.streams.fetch_add(STREAMS as u64 + 4, Ordering::Relaxed);
                    }
                    SwarmEvent::OutgoingConnectionError { .. } => {
                        attack.turned_away.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                    // Refused: back a second later, with a new key.
                    SwarmEvent::ConnectionClosed { num_established: 0, .. } => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                    _ => {}
                },
            }
        }
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`; 0 if unreadable.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The fields after the command name (which may hold spaces) start after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

pub fn run(quick: bool) -> Result<Vec<Figure>> {
    let (members, time) = if quick {
        (40, Duration::from_secs(8))
    } else {
        (100, Duration::from_secs(20))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // The relay as deployed: the default per-address limit.
        let org = Org::start(&["--max-unproven-per-ip", "32"])?;
        let tally = Arc::new(Tally::default());
        let (stop_tx, stop) = watch::channel(false);
        connect_members(&org, members, &tally, &stop).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let calm = measure_acks(&tally, time).await;
        let calm_p95 = percentile(calm.clone(), 0.95);
        let rss_calm = rss_bytes(org.pid())? as f64;
        eprintln!(
            "{members} member devices: ack p95 {calm_p95:.2} ms ({} acks), relay RSS {:.1} MB",
            calm.len(),
            rss_calm / 1e6
        );

        let attack = Arc::new(Attack::default());
        for _ in 0..STRANGERS {
            tokio::spawn(stranger(
                org.address.clone(),
                Arc::clone(&attack),
                stop.clone(),
            ));
        }
        // Let the strangers arrive, then measure for as long again while they keep coming.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pid = org.pid();
        let (peak, sampler) = sample_peak(pid, stop.clone());
        let started = Instant::now();
        let (relay_cpu0, own_cpu0) = (cpu_secs(pid), cpu_secs(std::process::id()));
        let attacked = measure_acks(&tally, time).await;
        let wall = started.elapsed().as_secs_f64();
        let relay_cpu = (cpu_secs(pid) - relay_cpu0) / wall;
        let own_cpu = (cpu_secs(std::process::id()) - own_cpu0) / wall;
        let attacked_p95 = percentile(attacked.clone(), 0.95);
        let rss_peak = peak.load(Ordering::Relaxed) as f64;
        let connected = attack.connected.load(Ordering::Relaxed);
        let turned_away = attack.turned_away.load(Ordering::Relaxed);
        eprintln!(
            "with {STRANGERS} strangers ({connected} connections let in, {turned_away} turned away, {} streams announcing {} MiB each, over {:.0} s): ack p95 {attacked_p95:.2} ms ({} acks), relay RSS peak {:.1} MB; CPU: the relay {:.0}% of a core, the strangers and members (this process) {:.0}%",
            attack.streams.load(Ordering::Relaxed),
            MAX_SYNC_BYTES >> 20,
            started.elapsed().as_secs_f64(),
            attacked.len(),
            rss_peak / 1e6,
            relay_cpu * 100.0,
            own_cpu * 100.0,
        );
        let _ = stop_tx.send(true);
        sampler.abort();
        let failed = tally.failed.load(Ordering::Relaxed);
        if failed > 0 {
            anyhow::bail!("{failed} member devices failed during the attack");
        }
        drop(org);
        let node = node_under_attack(quick).await?;
        let mut figures = vec![
            Figure::compared(
                NAME,
                "relay_rss_peak_mb",
                rss_peak / 1e6,
                rss_calm / 1e6,
                "< 300 MB (absolute)",
                "MB",
            ),
            Figure::compared(
                NAME,
                "member_ack_p95_ms",
                attacked_p95,
                calm_p95,
                "<= 2",
                "ms",
            ),
            Figure {
                bench: NAME,
                metric: "stranger_connections_turned_away",
                ours: turned_away as f64,
                reference: Some(connected as f64),
                ratio: None,
                goal: None,
                unit: "connections",
            },
        ];
        figures.extend(node);
        Ok(figures)
    })
}

/// Peak RSS of `pid`, sampled every 200 ms until `stop`.
fn sample_peak(
    pid: u32,
    mut stop: watch::Receiver<bool>,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&peak);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {
                    if let Ok(rss) = rss_bytes(pid) {
                        seen.fetch_max(rss, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    (peak, task)
}

/// The strangers against a device (the laptop of a syncing pair): its peak RSS, and a message's
/// time from the laptop to the phone, during the attack and before it.
async fn node_under_attack(quick: bool) -> Result<Vec<Figure>> {
    let pings = if quick { 20 } else { 60 };
    let jarvis = sibling("jarvis")?;
    let client = reqwest::Client::new();
    let pair = Pair::start(&jarvis, &client).await?;
    let calm = pair.pings(&client, pings).await?;
    let calm_p95 = percentile(calm.clone(), 0.95);
    let pid = pair.laptop_pid();
    let rss_calm = rss_bytes(pid)? as f64;

    // The same strangers at a third node on this machine: what the attack's load on two shared
    // cores (fifty attackers in this process, the decoy refusing them) costs the pair by itself.
    let decoy = pair.decoy(&jarvis, &client).await?;
    let elsewhere = {
        let (stop_tx, stop) = watch::channel(false);
        let attack = Arc::new(Attack::default());
        let address: Multiaddr = decoy.address.parse()?;
        for _ in 0..STRANGERS {
            tokio::spawn(stranger(address.clone(), Arc::clone(&attack), stop.clone()));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pings = pair.pings(&client, pings).await?;
        let _ = stop_tx.send(true);
        pings
    };
    drop(decoy);
    let elsewhere_p95 = percentile(elsewhere, 0.95);

    let (stop_tx, stop) = watch::channel(false);
    let attack = Arc::new(Attack::default());
    let address: Multiaddr = pair.laptop_address.parse()?;
    for _ in 0..STRANGERS {
        tokio::spawn(stranger(address.clone(), Arc::clone(&attack), stop.clone()));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (peak, sampler) = sample_peak(pid, stop.clone());
    let attacked = pair.pings(&client, pings).await?;
    let attacked_p95 = percentile(attacked.clone(), 0.95);
    let rss_peak = peak.load(Ordering::Relaxed) as f64;
    let _ = stop_tx.send(true);
    sampler.abort();
    eprintln!(
        "a device: message laptop → phone p95 {calm_p95:.1} ms before, {elsewhere_p95:.1} ms with {STRANGERS} strangers at another node on this machine, {attacked_p95:.1} ms with them at the laptop ({} connections let in, {} turned away); the laptop's RSS {:.1} MB before, peak {:.1} MB",
        attack.connected.load(Ordering::Relaxed),
        attack.turned_away.load(Ordering::Relaxed),
        rss_calm / 1e6,
        rss_peak / 1e6
    );
    Ok(vec![
        Figure::compared(
            NAME,
            "node_rss_peak_mb",
            rss_peak / 1e6,
            rss_calm / 1e6,
            "< 300 MB (absolute)",
            "MB",
        ),
        Figure::compared(
            NAME,
            "node_sync_p95_ms",
            attacked_p95,
            calm_p95,
            "<= 2",
            "ms",
        ),
        // The node's own share: the attack at the laptop against the same attack elsewhere.
        Figure::compared(
            NAME,
            "node_sync_p95_vs_attack_elsewhere_ms",
            attacked_p95,
            elsewhere_p95,
            "<= 1.5",
            "ms",
        ),
    ])
}

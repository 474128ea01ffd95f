//! `sim-validate`: the simulator (`jarvis-sim`'s light model) against real processes over real
//! QUIC, on the same org and load, in one run.
//!
//! - **delayed link**: 3 users × 2 devices (each a libp2p swarm of its own in this process, with
//!   its own certificate chain) and a real `jarvis-relay up`, every datagram between them held
//!   20 ms ± 5 ms (uniform) each way. The issue asks for `tc netem` in network namespaces; this
//!   machine's kernel has no `sch_netem` ("Specified qdisc kind is unknown"), so a UDP proxy
//!   here does what netem would ([`delay_proxy`]). Each device writes a change every 2 s. Ours:
//!   the simulator's convergence latency (write → arrival at the user's other device) for the
//!   same org over a link of 20 ms median and 24.5 ms p95; reference: the real one.
//! - **relay-ack at 1,000 devices** (200 with `--quick`): `relay-ack`'s load on loopback (two
//!   devices per user, a change every 5 s each). The real relay's CPU time per change is read
//!   from `/proc` during the run and given to the simulator as the relay's cost per change (its
//!   cryptography costs are this machine's `crdt-seal` / `identity-verify`, measured here
//!   first). Ours: the simulator's acknowledgement P50 and P95; reference: the real ones.
//!
//! Goal: each ratio within 0.8–1.2 (the 20%).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use jarvis_sim::light::{Costs, probe};
use jarvis_sim::net::LinkModel;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::harness::Figure;
use crate::relay::{Mode, Org, Tally, connect_devices, percentile};

pub const NAME: &str = "sim-validate";

const GOAL: &str = "0.8..1.2";

/// A UDP relay that holds every datagram for a delay drawn uniformly from `median ± jitter`
/// (ms), in both directions: what `tc qdisc … netem delay 20ms 5ms` does, for kernels without
/// `sch_netem` (this machine's has none). Each client gets its own upstream socket, so the
/// server sees one address per client. Runs until the runtime stops.
async fn delay_proxy(target: SocketAddr, median_ms: f64, jitter_ms: f64) -> Result<SocketAddr> {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let address = front.local_addr()?;
    tokio::spawn(async move {
        let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, client)) = front.recv_from(&mut buf).await else {
                return;
            };
            let upstream = match upstreams.get(&client) {
                Some(u) => Arc::clone(u),
                None => {
                    let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                        continue;
                    };
                    if u.connect(target).await.is_err() {
                        continue;
                    }
                    let u = Arc::new(u);
                    upstreams.insert(client, Arc::clone(&u));
                    // The server's answers to this client, delayed the same way.
                    let (back, front) = (Arc::clone(&u), Arc::clone(&front));
                    let mut seed = seed ^ u64::from(client.port());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok(n) = back.recv(&mut buf).await {
                            let packet = buf.get(..n).unwrap_or_default().to_vec();
                            let delay = draw(&mut seed, median_ms, jitter_ms);
                            let front = Arc::clone(&front);
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                let _ = front.send_to(&packet, client).await;
                            });
                        }
                    });
                    u
                }
            };
            let packet = buf.get(..n).unwrap_or_default().to_vec();
            let delay = draw(&mut seed, median_ms, jitter_ms);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = upstream.send(&packet).await;
            });
        }
    });
    Ok(address)
}

/// Uniform in `median ± jitter` ms (xorshift: no seed to keep, only a spread).
fn draw(state: &mut u64, median_ms: f64, jitter_ms: f64) -> Duration {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    let unit = (*state >> 11) as f64 / (1u64 << 53) as f64;
    Duration::from_secs_f64((median_ms + jitter_ms * (2.0 * unit - 1.0)).max(0.0) / 1000.0)
}

/// The UDP address in a `/ip4/…/udp/…/quic-v1` address.
fn relay_socket(address: &Multiaddr) -> Result<SocketAddr> {
    let (mut ip, mut port) = (None, None);
    for p in address {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Udp(p) => port = Some(p),
            _ => {}
        }
    }
    Ok(SocketAddr::new(
        ip.context("no IPv4 address in the relay's address")?,
        port.context("no UDP port in the relay's address")?,
    ))
}

/// The relay process's CPU time so far (user + system), in µs.
fn cpu_us(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("no stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .context("short stat")?
            .parse::<f64>()
            .context("stat field")
    };
    // `rest` starts at field 3, so utime (14) and stime (15) are at 11 and 12; clock ticks are
    // 100 a second on Linux.
    Ok((ticks(11)? + ticks(12)?) * 10_000.0)
}

/// The figures of one real run.
struct Real {
    convergence: Vec<f64>,
    acks: Vec<f64>,
    /// Relay CPU per change acknowledged, µs.
    relay_change_us: f64,
    changes_per_device_per_hour: f64,
}

async fn real_run(
    org: &Org,
    users: usize,
    period: Duration,
    time: Duration,
    wave: usize,
) -> Result<Real> {
    let tally = Arc::new(Tally::default());
    let (stop_tx, stop) = watch::channel(false);
    let devices = org.devices("v", users, 2)?;
    connect_devices(devices, org, Mode::Active { period }, &tally, &stop, wave).await?;
    // Every device's first change (its conversation) through.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Ok(mut l) = tally.latencies_ms.lock() {
        l.clear();
    }
    let (cpu0, acked0) = (cpu_us(org.pid())?, tally.acked.load(Ordering::Relaxed));
    tally.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(time).await;
    tally.measuring.store(false, Ordering::Relaxed);
    let (cpu1, acked1) = (cpu_us(org.pid())?, tally.acked.load(Ordering::Relaxed));
    let _ = stop_tx.send(true);
    let acks = tally
        .latencies_ms
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default();
    let convergence = tally
        .fanout_ms
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default();
    let acked = acked1.saturating_sub(acked0).max(1);
    Ok(Real {
        convergence,
        acks,
        relay_change_us: (cpu1 - cpu0) / acked as f64,
        changes_per_device_per_hour: 3600.0 / period.as_secs_f64(),
    })
}

fn compared(metric: &'static str, sim: f64, real: f64) -> Figure {
    Figure::compared(NAME, metric, sim, real, GOAL, "ms")
}

pub fn run(quick: bool) -> Result<Vec<Figure>> {
    let costs = {
        let seal = crate::crdt::seal(true)?;
        let verify = crate::identity_verify::run(true)?;
        let lines: Vec<String> = seal
            .iter()
            .chain(&verify)
            .map(|f| serde_json::to_string(f).unwrap_or_default())
            .collect();
        Costs::from_bench_output("this run", &lines.join("\n"))?
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut figures = Vec::new();
    let seconds = if quick { 20 } else { 60 };
    {
        let mut org = Org::start(&[])?;
        let relay = relay_socket(&org.address)?;
        let proxy = runtime.block_on(delay_proxy(relay, 20.0, 5.0))?;
        // The same address (peer id included) with the proxy's port.
        org.address = org
            .address
            .iter()
            .map(|p| match p {
                Protocol::Udp(_) => Protocol::Udp(proxy.port()),
                other => other,
            })
            .collect();
        eprintln!("delayed: 3 users × 2 devices, 20 ms ± 5 ms each way to the relay…");
        let real = runtime.block_on(real_run(
            &org,
            3,
            Duration::from_secs(2),
            Duration::from_secs(seconds),
            16,
        ))?;
        drop(org);
        let link = LinkModel {
            median_ms: 20.0,
            p95_ms: 24.5,
            loss: 0.0,
            bandwidth: 1.25e9,
        };
        let sim = probe(
            1,
            3,
            2,
            real.changes_per_device_per_hour,
            link,
            Costs {
                relay_change_us: real.relay_change_us,
                ..costs.clone()
            },
            seconds * 20,
        )?;
        eprintln!(
            "delayed: real ack p50 {:.1} ms; real convergence p50 {:.1} ms, p95 {:.1} ms over {}; simulated ack p50 {:.1} ms, convergence p50 {:.1} ms, p95 {:.1} ms",
            percentile(real.acks.clone(), 0.5),
            percentile(real.convergence.clone(), 0.5),
            percentile(real.convergence.clone(), 0.95),
            real.convergence.len(),
            sim.ack_ms.p50,
            sim.convergence_ms.p50,
            sim.convergence_ms.p95,
        );
        if real.convergence.is_empty() {
            bail!("no change reached another device in the delayed run");
        }
        figures.push(compared(
            "delayed_convergence_p50_ms",
            sim.convergence_ms.p50,
            percentile(real.convergence.clone(), 0.5),
        ));
        figures.push(compared(
            "delayed_convergence_p95_ms",
            sim.convergence_ms.p95,
            percentile(real.convergence, 0.95),
        ));
    }
    let devices = if quick { 200 } else { 1_000 };
    let org = Org::start(&[])?;
    eprintln!("relay-ack: {devices} devices on loopback, a change every 5 s each…");
    let real = runtime.block_on(real_run(
        &org,
        devices / 2,
        Duration::from_secs(5),
        Duration::from_secs(seconds),
        16,
    ))?;
    drop(org);
    // Loopback: a tenth of a millisecond each way, a little more at the tail.
    let link = LinkModel {
        median_ms: 0.1,
        p95_ms: 0.3,
        loss: 0.0,
        bandwidth: 1.25e9,
    };
    let sim = probe(
        1,
        u32::try_from(devices / 2).unwrap_or(u32::MAX),
        2,
        real.changes_per_device_per_hour,
        link,
        Costs {
            relay_change_us: real.relay_change_us,
            ..costs
        },
        seconds,
    )?;
    eprintln!(
        "relay-ack: relay CPU {:.0} µs per change; real ack p50 {:.2} ms, p95 {:.2} ms over {}; simulated p50 {:.2} ms, p95 {:.2} ms (relay busy {:.0}%)",
        real.relay_change_us,
        percentile(real.acks.clone(), 0.5),
        percentile(real.acks.clone(), 0.95),
        real.acks.len(),
        sim.ack_ms.p50,
        sim.ack_ms.p95,
        sim.relay_cpu * 100.0,
    );
    figures.push(compared(
        "relay_ack_p50_ms",
        sim.ack_ms.p50,
        percentile(real.acks.clone(), 0.5),
    ));
    figures.push(compared(
        "relay_ack_p95_ms",
        sim.ack_ms.p95,
        percentile(real.acks, 0.95),
    ));
    Ok(figures)
}

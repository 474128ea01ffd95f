//! `relay-fleet`: the relay on PostgreSQL, one instance and two, against the relay on sled (the
//! embedded default) as the reference, all in one run on a throwaway PostgreSQL cluster
//! (`initdb` into a temporary directory, as the tests do).
//!
//! Each configuration gets 1,000 devices (500 users × 2; with two instances each user's devices
//! are on different instances, so every change also crosses the database's announcements):
//!
//! - **latency**: every device sends one sealed change every 5 s (`relay-ack`'s load); P50 and
//!   P95 of the acknowledgement (the relay answers once the change is durable);
//! - **throughput**: fresh devices, each with its changes made ahead, send them one at a time
//!   as fast as they are acknowledged, all at once: acknowledged changes per second.
//!
//! The machine's cores are shared by everything: the relays, PostgreSQL and the 1,000 devices
//! (this process). The CPU each used during the throughput window is read from `/proc` and
//! said with the figures, so it is plain where the time went.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use libp2p::Multiaddr;
use tokio::sync::watch;

use crate::harness::Figure;
use crate::relay::{
    Device, Mode, Org, Tally, flood, measure_acks, percentile, run_device, wait_admitted,
};

#[path = "../../relay/tests/common/postgres.rs"]
#[allow(dead_code)]
mod postgres;

pub const NAME: &str = "relay-fleet";

/// One configuration's figures.
struct Measured {
    p50: f64,
    p95: f64,
    per_s: f64,
    /// CPU cores used during the throughput window: relays, PostgreSQL, this process.
    cores: (f64, f64, f64),
}

/// Clock ticks per second of `/proc/*/stat` (`getconf CLK_TCK`: 100 on Linux).
const TICKS: f64 = 100.0;

/// User + system CPU ticks of a process.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some((_, after)) = stat.rsplit_once(") ") else {
        return 0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Every PostgreSQL server process on the machine (the cluster's, here).
fn postgres_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .collect()
}

/// CPU ticks so far: the relays, PostgreSQL, this process.
fn cpu_now(relays: &[u32]) -> (u64, u64, u64) {
    (
        relays.iter().map(|p| cpu_ticks(*p)).sum(),
        postgres_pids().into_iter().map(cpu_ticks).sum(),
        cpu_ticks(std::process::id()),
    )
}

/// Starts `devices` (device `i` on relay `i mod n`), each with its prepared changes if any.
async fn start(
    devices: Vec<Device>,
    prepared: Vec<Option<crate::relay::Prepared>>,
    addresses: &[Multiaddr],
    mode: Mode,
    tally: &Arc<Tally>,
    stop: &watch::Receiver<bool>,
) -> Result<()> {
    let mut started = 0;
    let mut all = devices.into_iter().zip(prepared).enumerate().peekable();
    while all.peek().is_some() {
        for (i, (device, prepared)) in all.by_ref().take(100) {
            let address = addresses
                .get(i % addresses.len().max(1))
                .context("no relay")?
                .clone();
            tokio::spawn(run_device(
                device,
                prepared,
                address,
                mode,
                Arc::clone(tally),
                stop.clone(),
            ));
            started += 1;
        }
        wait_admitted(tally, started, "devices").await?;
    }
    Ok(())
}

/// One configuration: `instances` relays with `store` arguments, `devices` devices.
async fn measure(
    store: &[&str],
    instances: usize,
    devices: usize,
    window: Duration,
    quick: bool,
) -> Result<Measured> {
    let org = Org::start_fleet(store, instances)?;
    // Latency at relay-ack's load.
    let tally = Arc::new(Tally::default());
    let (stop_tx, stop) = watch::channel(false);
    let active = org.devices("a", devices / 2, 2)?;
    let none = (0..active.len()).map(|_| None).collect();
    let period = Duration::from_secs(5);
    start(
        active,
        none,
        &org.addresses,
        Mode::Active { period },
        &tally,
        &stop,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acks = measure_acks(&tally, window).await;
    if acks.is_empty() {
        bail!("no acknowledgement in {window:?}");
    }
    let (p50, p95) = (
        percentile(acks.clone(), 0.5),
        percentile(acks.clone(), 0.95),
    );
    let refused = tally.refused.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Throughput: fresh devices, their changes made ahead, all released at once.
    let per_device = if quick { 20 } else { 60 };
    let saturate = org.devices("s", devices / 2, 2)?;
    let made = Instant::now();
    let prepared = saturate
        .iter()
        .map(|d| flood(d, 200, per_device).map(Some))
        .collect::<Result<Vec<_>>>()?;
    eprintln!(
        "  {} changes made ahead in {:.1} s",
        devices * (per_device + 2),
        made.elapsed().as_secs_f64()
    );
    let tally = Arc::new(Tally::default());
    let (stop_tx, stop) = watch::channel(false);
    let mode = Mode::Saturate { in_flight: 1 };
    start(saturate, prepared, &org.addresses, mode, &tally, &stop).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pids = org.pids();
    let cpu0 = cpu_now(&pids);
    let acked0 = tally.acked.load(Ordering::Relaxed);
    let began = Instant::now();
    tally.go.store(true, Ordering::Relaxed);
    // Until the window ends, or 5% of the devices have sent everything (the rest would then
    // be measured at a lower load).
    while began.elapsed() < window && tally.done.load(Ordering::Relaxed) * 20 < devices {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = began.elapsed().as_secs_f64();
    let acked = tally.acked.load(Ordering::Relaxed) - acked0;
    let cpu1 = cpu_now(&pids);
    let _ = stop_tx.send(true);
    let cores = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / TICKS / elapsed;
    let measured = Measured {
        p50,
        p95,
        per_s: acked as f64 / elapsed,
        cores: (
            cores(cpu0.0, cpu1.0),
            cores(cpu0.1, cpu1.1),
            cores(cpu0.2, cpu1.2),
        ),
    };
    eprintln!(
        "  ack p50 {p50:.2} ms, p95 {p95:.2} ms ({} acks, {refused} refused); {:.0} changes/s over {elapsed:.1} s; cores used: relays {:.2}, PostgreSQL {:.2}, devices (this process) {:.2}",
        acks.len(),
        measured.per_s,
        measured.cores.0,
        measured.cores.1,
        measured.cores.2
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(measured)
}

pub fn run(quick: bool) -> Result<Vec<Figure>> {
    let (devices, window) = if quick {
        (200, Duration::from_secs(4))
    } else {
        (1000, Duration::from_secs(10))
    };
    let cluster = postgres::Cluster::start();
    let dir = tempfile::tempdir()?;
    let url_file = |name: &str| -> Result<String> {
        let url = cluster.create_database(name);
        let file = dir.path().join(name);
        std::fs::write(&file, url)?;
        Ok(file.to_string_lossy().into_owned())
    };
    let (one, two) = (url_file("one")?, url_file("two")?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        eprintln!("sled, one relay ({devices} devices):");
        let sled = measure(&[], 1, devices, window, quick).await?;
        eprintln!("PostgreSQL, one relay:");
        let pg1 = measure(&["--store-file", &one], 1, devices, window, quick).await?;
        eprintln!("PostgreSQL, two relays (each user's devices on different instances):");
        let pg2 = measure(&["--store-file", &two], 2, devices, window, quick).await?;
        let absolute = |metric, ours, unit, goal: Option<&str>| Figure {
            bench: NAME,
            metric,
            ours,
            reference: None,
            ratio: None,
            goal: goal.map(str::to_owned),
            unit,
        };
        Ok(vec![
            Figure::compared(
                NAME,
                "pg1_ack_p95_ms",
                pg1.p95,
                sled.p95,
                "ours <= 10 ms",
                "ms",
            ),
            Figure::compared(
                NAME,
                "pg1_changes_per_s",
                pg1.per_s,
                sled.per_s,
                ">= 0.5",
                "changes/s",
            ),
            Figure::compared(
                NAME,
                "pg2_changes_per_s",
                pg2.per_s,
                pg1.per_s,
                "> 1 (grows with instances)",
                "changes/s",
            ),
            absolute("pg2_ack_p95_ms", pg2.p95, "ms", Some("<= 10")),
            absolute("pg1_ack_p50_ms", pg1.p50, "ms", None),
            absolute("pg2_cores_relays", pg2.cores.0, "cores", None),
            absolute("pg2_cores_postgres", pg2.cores.1, "cores", None),
            absolute("pg2_cores_devices", pg2.cores.2, "cores", None),
            absolute("pg1_cores_relays", pg1.cores.0, "cores", None),
            absolute("pg1_cores_postgres", pg1.cores.1, "cores", None),
            absolute("sled_cores_relays", sled.cores.0, "cores", None),
        ])
    })
}

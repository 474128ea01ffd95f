//! The scenarios `jarvis-sim` runs, and the report each writes.

use serde::Serialize;

use crate::engine::{MINUTE, Micros, Quantiles, SECOND};
use crate::gpu::{GpuModel, GpuReport, GpuWorld};
use crate::net::LinkModel;
use crate::world::{BuildError, Shape, Tally, Traffic, World};

/// A scenario `jarvis-sim list` names.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    /// Whether `run` can run it yet.
    pub built: bool,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "org-day",
        about: "an org's working hour at the day's peak: users with several devices writing to their conversations through the org's relay instances",
        built: true,
    },
    Scenario {
        name: "partition",
        about: "one of two sites cut off from the relays for an hour while both keep writing, then healed; every replica must converge",
        built: true,
    },
    Scenario {
        name: "mass-revocation",
        about: "a mass revocation spreading through the org (not built yet)",
        built: false,
    },
    Scenario {
        name: "relay-loss",
        about: "one of two relay instances on a shared database lost at half time; its devices move to the other and no change may be lost",
        built: true,
    },
    Scenario {
        name: "gpu-failure",
        about: "four GPU peers serving a thousand devices, one failing at half time mid-answers; the devices' own scheduler moves its answers to the others",
        built: true,
    },
    Scenario {
        name: "month-offline",
        about: "one device put away for thirty days while its user's others keep writing, then back: how long and how many bytes it takes to catch up",
        built: true,
    },
];

/// What a run was asked for.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub seed: u64,
    /// Devices in all (rounded down to whole users); `None`: the scenario's default.
    pub devices: Option<u32>,
}

/// Why a run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no scenario is called `{0}` (`jarvis-sim list` names them)")]
    Unknown(String),
    #[error("`{0}` is not built yet (issue #23): `jarvis-sim list` says which scenarios run")]
    NotBuilt(&'static str),
    #[error("--devices must be at least {0} (one user's devices)")]
    TooFew(u32),
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// `report.json`: only what the seed and arguments decide (no wall time, no memory), so two
/// runs with the same seed and arguments write the same bytes.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub seed: u64,
    pub shape: Shape,
    pub devices: usize,
    pub traffic: Traffic,
    pub link: LinkModel,
    pub simulated_s: f64,
    pub events: u64,
    /// Write → arrival at each other device of the same user.
    pub convergence_ms: Quantiles,
    /// All bytes on all links, per change written.
    pub bytes_per_change_end_to_end: f64,
    pub relay_storage_bytes: Vec<u64>,
    pub relay_connections_at_end: Vec<u64>,
    pub tally: Tally,
    /// Every device holds every change of its user's devices at the end.
    pub converged: bool,
    pub unconverged_devices: usize,
    pub undelivered_changes: usize,
    pub partition: Option<Partition>,
    pub relay_loss: Option<RelayLoss>,
    pub month_offline: Option<Away>,
    pub assumptions: Vec<&'static str>,
}

/// The month-offline scenario: the device put away, and its return.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Away {
    pub device: u32,
    pub away_s: f64,
    /// Changes written elsewhere while it was away (waiting for it when it came back).
    pub changes_missed: u64,
    /// From its return until it held all of them.
    pub caught_up_after_s: Option<f64>,
}

/// The relay-loss scenario: which instance, when, and what it cost.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RelayLoss {
    pub instance: u16,
    pub at_s: f64,
    /// Devices that reconnected to the surviving instance.
    pub devices_moved: u64,
    /// Changes devices sealed that the shared database does not hold at the end (every one
    /// acknowledged was committed there first, so this must be 0).
    pub changes_missing_from_database: u64,
}

/// The partition scenario's timeline, in simulated seconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Partition {
    pub site: u16,
    pub cut_at_s: f64,
    pub healed_at_s: f64,
    /// From the heal until every change written during the cut (on either side) had reached
    /// every other device of its user; `None` if that never happened.
    pub backlog_delivered_after_s: Option<f64>,
}

const ASSUMPTIONS: &[&str] = &[
    "devices, relay hubs and sync sessions are the project's own code (jarvis-crdt Replica and Session on in-memory stores, jarvis-relay Hub); every change is really sealed and signed, and every message is encoded and decoded",
    "time is virtual: the work's wall time does not advance the simulated clock (no CPU cost is charged to devices or relays)",
    "without a shared database (org-day, partition) each user's devices use one relay instance and instances store apart; with one (relay-loss) devices spread over instances, which share the stores and announce what they stored to each other after 5 ms",
    "links: one-way latency log-normal (median and p95 given), a loss delays a message by a retransmission timeout (QUIC is reliable), FIFO with a bandwidth per direction",
    "each user has one conversation; every write appends one message of 72 characters",
    "devices write at the peak rate thinned by a working day's curve from the start hour",
    "devices connect during the first 10 simulated seconds; writing (and measuring) starts after them",
];

fn lookup(name: &str) -> Result<&'static Scenario, RunError> {
    SCENARIOS
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| RunError::Unknown(name.to_owned()))
}

/// Progress: simulated time done, of the total.
pub type Progress<'a> = &'a mut dyn FnMut(Micros, Micros);

/// What a run reports: the sync scenarios' report, or the GPU tier's.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    Sync(Box<Report>),
    Gpu(Box<GpuOutcome>),
}

/// `report.json` of the gpu-failure scenario.
#[derive(Debug, Serialize)]
pub struct GpuOutcome {
    pub scenario: &'static str,
    pub seed: u64,
    pub simulated_s: f64,
    pub events: u64,
    pub gpu: GpuReport,
    pub assumptions: Vec<&'static str>,
}

/// A finished run: its report, and the convergence latencies (µs) the plots are drawn from
/// (none for the GPU tier).
pub struct Run {
    pub report: Outcome,
    pub convergence_us: Vec<u64>,
}

const GPU_ASSUMPTIONS: &[&str] = &[
    "each device chooses a GPU peer for each answer with the node's own scheduler (jarvis_inference::offload::choose, policy gpu), from the peers' load reports (every 2 s, up to 200 ms out of step) and its own answers in flight",
    "GPU peers are modelled, not measured (no GPU on this machine): first token 60 ms after an answer starts (a tenth longer per other answer running), 60 tokens/s for one answer alone divided by active^0.35 under continuous batching, 16 slots, 150-token answers",
    "devices ask as a Poisson process at 20 answers an hour each; links are the WAN model of the sync scenarios",
    "the failed peer's process ends: each device's stream closes a link latency later, the node records the failure and asks another peer for the rest (its first token again counts from the original ask)",
];

fn run_gpu(options: Options, progress: Progress<'_>) -> Run {
    let devices = options.devices.unwrap_or(1_000).max(1);
    let end = 60 * MINUTE;
    let failed_at = end / 2;
    let mut world = GpuWorld::new(
        options.seed,
        devices,
        GpuModel::DATACENTRE,
        end - 2 * MINUTE,
    );
    world.fail(0, failed_at);
    let mut at = 0;
    while at < end {
        at = (at + MINUTE).min(end);
        world.run_until(at);
        progress(at, end);
    }
    Run {
        report: Outcome::Gpu(Box::new(GpuOutcome {
            scenario: "gpu-failure",
            seed: options.seed,
            simulated_s: (end / SECOND) as f64,
            events: world.events_run(),
            gpu: world.report_of(0, failed_at),
            assumptions: GPU_ASSUMPTIONS.to_vec(),
        })),
        convergence_us: Vec::new(),
    }
}

/// Runs `name`.
pub fn run(name: &str, options: Options, progress: Progress<'_>) -> Result<Run, RunError> {
    let scenario = lookup(name)?;
    if !scenario.built {
        return Err(RunError::NotBuilt(scenario.name));
    }
    if scenario.name == "gpu-failure" {
        return Ok(run_gpu(options, progress));
    }
    let link = LinkModel::WAN;
    let devices_per_user = 3;
    let (default_devices, relays, sites, hours): (u32, u16, u16, u64) = match scenario.name {
        "partition" => (120, 1, 2, 2),
        // An hour, thirty days away, and two hours back.
        "month-offline" => (3, 1, 1, 30 * 24 + 3),
        _ => (300, 2, 1, 1),
    };
    let shared_database = scenario.name == "relay-loss";
    let devices = options.devices.unwrap_or(default_devices);
    if devices < devices_per_user {
        return Err(RunError::TooFew(devices_per_user));
    }
    let shape = Shape {
        users: devices / devices_per_user,
        devices_per_user,
        relays,
        sites,
        shared_database,
    };
    let traffic = Traffic {
        changes_per_device_per_hour: 30.0,
        start_hour: 10.0,
    };
    let end = hours * 60 * MINUTE;
    // Writes stop two minutes before the end, so the end shows whether everything arrived.
    let writing_until = end - 2 * MINUTE;
    let mut world = World::new(options.seed, shape, traffic, link, writing_until)?;
    let partition = (scenario.name == "partition").then(|| {
        let (cut, heal) = (20 * MINUTE, 80 * MINUTE);
        world.partition(1, cut, heal);
        Partition {
            site: 1,
            cut_at_s: (cut / SECOND) as f64,
            healed_at_s: (heal / SECOND) as f64,
            backlog_delivered_after_s: None,
        }
    });
    let month_offline = (scenario.name == "month-offline").then(|| {
        let (from, until) = (60 * MINUTE, (30 * 24 + 1) * 60 * MINUTE);
        world.away(0, from, until);
        Away {
            device: 0,
            away_s: ((until - from) / SECOND) as f64,
            changes_missed: 0,
            caught_up_after_s: None,
        }
    });
    let relay_loss = shared_database.then(|| {
        let at = end / 2;
        world.lose_relay(0, at);
        RelayLoss {
            instance: 0,
            at_s: (at / SECOND) as f64,
            devices_moved: 0,
            changes_missing_from_database: 0,
        }
    });
    let step = if hours > 24 { 60 * MINUTE } else { MINUTE };
    let mut at = 0;
    while at < end {
        at = (at + step).min(end);
        world.run_until(at);
        progress(at, end);
    }
    let partition = partition.map(|p| Partition {
        backlog_delivered_after_s: world.healed_in().map(|us| us as f64 / SECOND as f64),
        ..p
    });
    let month_offline = month_offline.map(|a| Away {
        changes_missed: world.backlog_at_return() as u64,
        caught_up_after_s: world.healed_in().map(|us| us as f64 / SECOND as f64),
        ..a
    });
    let relay_loss = relay_loss.map(|r| RelayLoss {
        devices_moved: world.moved,
        changes_missing_from_database: world.missing_from_database(),
        ..r
    });
    let unconverged = world.unconverged();
    let tally = world.tally.clone();
    let written = tally.changes_written.max(1) as f64;
    let report = Report {
        scenario: scenario.name,
        seed: options.seed,
        shape,
        devices: world.devices(),
        traffic,
        link,
        simulated_s: (end / SECOND) as f64,
        events: world.events_run(),
        convergence_ms: Quantiles::of(&mut world.latencies),
        bytes_per_change_end_to_end: (tally.bytes_up + tally.bytes_down) as f64 / written,
        relay_storage_bytes: world.relay_storage(),
        relay_connections_at_end: world.relay_connections(),
        converged: unconverged.is_empty(),
        unconverged_devices: unconverged.len(),
        undelivered_changes: world.undelivered(),
        tally,
        partition,
        relay_loss,
        month_offline,
        assumptions: ASSUMPTIONS.to_vec(),
    };
    Ok(Run {
        report: Outcome::Sync(Box::new(report)),
        convergence_us: std::mem::take(&mut world.latencies),
    })
}

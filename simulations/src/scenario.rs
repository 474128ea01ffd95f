//! The scenarios `jarvis-sim` runs, and the report each writes.

use serde::Serialize;

use crate::engine::{MINUTE, Micros, Quantiles, SECOND};
use crate::gpu::{GpuModel, GpuReport, GpuWorld};
use crate::light::{Costs, LightWorld, RevocationReport, Sample, Sizes};
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
        about: "the admin revokes one device of every tenth user at once, with a tenth of the org offline: how fast every relay refuses them, every other device holds the records and each affected user's key is rotated (light model)",
        built: true,
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

/// Which device model runs a scenario (see [`crate::light`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// Real replicas, sessions and relay hubs: every change sealed, encoded and decoded.
    Full,
    /// Counters and measured sizes, cryptography as a cost model: for org scale.
    Light,
}

impl std::str::FromStr for Model {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(Self::Full),
            "light" => Ok(Self::Light),
            _ => Err(format!("`{s}` is not a model: full or light")),
        }
    }
}

/// Above this many devices a run uses the light model unless told otherwise.
pub const FULL_MODEL_UP_TO: u32 = 3_000;

/// What a run was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// Devices in all (rounded down to whole users); `None`: the scenario's default.
    pub devices: Option<u32>,
    /// Relay instances; `None`: the scenario's default.
    pub relays: Option<u16>,
    /// `None`: full up to [`FULL_MODEL_UP_TO`] devices, light above (and for mass-revocation).
    pub model: Option<Model>,
    /// The light model's cryptography costs.
    pub costs: Costs,
    /// GPU peers answering the users' voice turns alongside (org-day; `None`: none).
    pub gpu_peers: Option<u16>,
    /// Voice turns per user per hour at the peak, each answered by a GPU peer.
    pub voice_turns_per_user_per_hour: f64,
}

impl Options {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            devices: None,
            relays: None,
            model: None,
            costs: Costs::measured_here(),
            gpu_peers: None,
            voice_turns_per_user_per_hour: 10.0,
        }
    }
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
    #[error("`{0}` runs in the light model only (leave out --model, or say --model light)")]
    LightOnly(&'static str),
    #[error("--relays must be at least 1")]
    NoRelays,
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// `report.json`: only what the seed and arguments decide (no wall time, no memory), so two
/// runs with the same seed and arguments write the same bytes.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub seed: u64,
    pub model: Model,
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
    pub revocation: Option<RevocationReport>,
    /// A change sent as written → its acknowledgement (light model).
    pub ack_ms: Option<Quantiles>,
    /// The light model's cryptography costs and measured sizes.
    pub costs: Option<Costs>,
    pub sizes: Option<Sizes>,
    /// The relay fleet over time: connections, CPU and storage per instance (light model).
    pub series: Vec<Sample>,
    /// The GPU tier alongside (`--gpu-peers`).
    pub gpu: Option<GpuTier>,
    pub assumptions: Vec<&'static str>,
}

/// The GPU peers answering the users' voice turns during a sync scenario.
#[derive(Debug, Clone, Serialize)]
pub struct GpuTier {
    pub model: GpuModel,
    pub users: u32,
    pub asked: u64,
    pub answered: u64,
    pub answered_share: f64,
    pub first_token_ms: Quantiles,
    pub queue_wait_ms: Quantiles,
    pub events: u64,
}

/// A GPU tier for `setup`'s users if `options` asks for one: each user's voice turns go to
/// the peers, chosen by the node's own scheduler (see [`crate::gpu`]).
fn gpu_tier(setup: &Setup, options: &Options) -> Option<GpuWorld> {
    let peers = options.gpu_peers?;
    let model = GpuModel {
        peers,
        asks_per_device_per_hour: options.voice_turns_per_user_per_hour,
        ..GpuModel::DATACENTRE
    };
    Some(GpuWorld::new(
        options.seed,
        setup.shape.users,
        model,
        setup.writing_until,
    ))
}

fn gpu_figures(world: &GpuWorld, users: u32, model: GpuModel) -> GpuTier {
    let r = world.report_of(u16::MAX, 0);
    GpuTier {
        model,
        users,
        asked: r.asked,
        answered: r.answered,
        answered_share: r.answered_share,
        first_token_ms: r.first_token_ms,
        queue_wait_ms: r.queue_wait_ms,
        events: world.events_run(),
    }
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
/// (none for the GPU tier; in the light model, values at evenly spaced ranks).
pub struct Run {
    pub report: Outcome,
    pub convergence_us: Vec<u64>,
    /// Revocation → each other device holding the records (µs; mass-revocation only).
    pub revocation_us: Vec<u64>,
}

const GPU_ASSUMPTIONS: &[&str] = &[
    "each device chooses a GPU peer for each answer with the node's own scheduler (jarvis_inference::offload::choose, policy gpu), from the peers' load reports (every 2 s, up to 200 ms out of step) and its own answers in flight",
    "GPU peers are modelled, not measured (no GPU on this machine): first token 60 ms after an answer starts (a tenth longer per other answer running), 60 tokens/s for one answer alone divided by active^0.35 under continuous batching, 16 slots, 150-token answers",
    "devices ask as a Poisson process at 20 answers an hour each; links are the WAN model of the sync scenarios",
    "the failed peer's process ends: each device's stream closes a link latency later, the node records the failure and asks another peer for the rest (its first token again counts from the original ask)",
];

fn run_gpu(options: &Options, progress: Progress<'_>) -> Run {
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
        revocation_us: Vec::new(),
    }
}

const LIGHT_ASSUMPTIONS: &[&str] = &[
    "light model: a device's replica is a vector of counters and the fleet's store a counter per writer; the sync protocol's shape is kept (hello answered with what the device lacks, changes as written, an acknowledgement once stored, fan-out to the user's other devices, announcements between instances through the database)",
    "light model: message sizes are the real encodings' (measured at start with the project's code: see `sizes`); cryptography is a cost model from jarvis-bench (see `costs`): a device pays a seal before a change leaves and a signature check and an open per change it takes; a relay instance's cores pay a signature check per change and a chain check per hello, and messages queue behind its busy cores",
    "light model: each direction of a connection is one ordered stream (a late message holds up those behind it); the sessions' periodic resync is not modelled (nothing is lost on a live ordered stream; a new connection resyncs)",
    "light model: the relay's storage commit and rate limits are not charged (the relay-ack comparison in `validate` measures how far that matters)",
];

const REVOCATION_ASSUMPTIONS: &[&str] = &[
    "mass revocation: the admin's records reach relay instance 0 at once and the others through the database; each instance drops the revoked devices' connections, refuses them from then on, checks each record's signature once and sends the records to every device it has admitted (devices that connect later get them with the answer to their hello)",
    "a tenth of the devices are away at the revocation (gone between the warm-up and it, back at a random time before the last ten minutes); the first remaining device of an affected user to hold the records wraps a new key epoch to the others (the wrap's CPU is not charged: no benchmark measures it yet)",
];

/// Everything a sync scenario decides before it runs.
struct Setup {
    name: &'static str,
    shape: Shape,
    traffic: Traffic,
    hours: u64,
    end: Micros,
    writing_until: Micros,
}

fn setup(scenario: &Scenario, options: &Options) -> Result<Setup, RunError> {
    let devices_per_user = 3;
    let (default_devices, default_relays, sites, hours): (u32, u16, u16, u64) = match scenario.name
    {
        "partition" => (120, 1, 2, 2),
        // An hour, thirty days away, and two hours back.
        "month-offline" => (3, 1, 1, 30 * 24 + 3),
        "mass-revocation" => (3_000, 2, 1, 1),
        _ => (300, 2, 1, 1),
    };
    let shared_database = matches!(scenario.name, "relay-loss" | "mass-revocation");
    let devices = options.devices.unwrap_or(default_devices);
    if devices < devices_per_user {
        return Err(RunError::TooFew(devices_per_user));
    }
    let relays = options.relays.unwrap_or(default_relays);
    if relays == 0 {
        return Err(RunError::NoRelays);
    }
    let end = hours * 60 * MINUTE;
    Ok(Setup {
        name: scenario.name,
        shape: Shape {
            users: devices / devices_per_user,
            devices_per_user,
            relays,
            sites,
            shared_database,
        },
        traffic: Traffic {
            changes_per_device_per_hour: 30.0,
            start_hour: 10.0,
        },
        hours,
        end,
        // Writes stop two minutes before the end, so the end shows whether everything arrived.
        writing_until: end - 2 * MINUTE,
    })
}

/// Runs `name`.
pub fn run(name: &str, options: &Options, progress: Progress<'_>) -> Result<Run, RunError> {
    let scenario = lookup(name)?;
    if !scenario.built {
        return Err(RunError::NotBuilt(scenario.name));
    }
    if scenario.name == "gpu-failure" {
        return Ok(run_gpu(options, progress));
    }
    let setup = setup(scenario, options)?;
    let light_only = scenario.name == "mass-revocation";
    let devices = setup.shape.users * setup.shape.devices_per_user;
    let model = options
        .model
        .unwrap_or(if light_only || devices > FULL_MODEL_UP_TO {
            Model::Light
        } else {
            Model::Full
        });
    match model {
        Model::Full if light_only => Err(RunError::LightOnly(scenario.name)),
        Model::Full => run_full(&setup, options, progress),
        Model::Light => run_light(&setup, options, progress),
    }
}

/// What both models report the same way.
struct Common {
    partition: Option<Partition>,
    month_offline: Option<Away>,
    relay_loss: Option<RelayLoss>,
}

impl Common {
    const CUT: (Micros, Micros) = (20 * MINUTE, 80 * MINUTE);
    const AWAY: (Micros, Micros) = (60 * MINUTE, (30 * 24 + 1) * 60 * MINUTE);

    fn of(setup: &Setup) -> Self {
        Self {
            partition: (setup.name == "partition").then_some(Partition {
                site: 1,
                cut_at_s: (Self::CUT.0 / SECOND) as f64,
                healed_at_s: (Self::CUT.1 / SECOND) as f64,
                backlog_delivered_after_s: None,
            }),
            month_offline: (setup.name == "month-offline").then_some(Away {
                device: 0,
                away_s: ((Self::AWAY.1 - Self::AWAY.0) / SECOND) as f64,
                changes_missed: 0,
                caught_up_after_s: None,
            }),
            relay_loss: (setup.name == "relay-loss").then_some(RelayLoss {
                instance: 0,
                at_s: (setup.end / 2 / SECOND) as f64,
                devices_moved: 0,
                changes_missing_from_database: 0,
            }),
        }
    }

    /// Fills in what the run measured.
    fn finish(self, healed_in: Option<Micros>, backlog: u64, moved: u64, missing: u64) -> Self {
        let seconds = healed_in.map(|us| us as f64 / SECOND as f64);
        Self {
            partition: self.partition.map(|p| Partition {
                backlog_delivered_after_s: seconds,
                ..p
            }),
            month_offline: self.month_offline.map(|a| Away {
                changes_missed: backlog,
                caught_up_after_s: seconds,
                ..a
            }),
            relay_loss: self.relay_loss.map(|r| RelayLoss {
                devices_moved: moved,
                changes_missing_from_database: missing,
                ..r
            }),
        }
    }
}

/// Steps the clock to `end`, calling `each` after every step.
fn drive(end: Micros, hours: u64, progress: Progress<'_>, mut each: impl FnMut(Micros)) {
    let step = if hours > 24 { 60 * MINUTE } else { MINUTE };
    let mut at = 0;
    while at < end {
        at = (at + step).min(end);
        each(at);
        progress(at, end);
    }
}

fn run_full(setup: &Setup, options: &Options, progress: Progress<'_>) -> Result<Run, RunError> {
    let link = LinkModel::WAN;
    let mut world = World::new(
        options.seed,
        setup.shape,
        setup.traffic,
        link,
        setup.writing_until,
    )?;
    let common = Common::of(setup);
    if common.partition.is_some() {
        world.partition(1, Common::CUT.0, Common::CUT.1);
    }
    if common.month_offline.is_some() {
        world.away(0, Common::AWAY.0, Common::AWAY.1);
    }
    if common.relay_loss.is_some() {
        world.lose_relay(0, setup.end / 2);
    }
    let mut gpu = gpu_tier(setup, options);
    drive(setup.end, setup.hours, progress, |at| {
        world.run_until(at);
        if let Some(g) = gpu.as_mut() {
            g.run_until(at);
        }
    });
    let gpu = gpu.map(|g| gpu_figures(&g, setup.shape.users, g.model()));
    let common = common.finish(
        world.healed_in(),
        world.backlog_at_return() as u64,
        world.moved,
        world.missing_from_database(),
    );
    let unconverged = world.unconverged();
    let tally = world.tally.clone();
    let written = tally.changes_written.max(1) as f64;
    let report = Report {
        scenario: setup.name,
        seed: options.seed,
        model: Model::Full,
        shape: setup.shape,
        devices: world.devices(),
        traffic: setup.traffic,
        link,
        simulated_s: (setup.end / SECOND) as f64,
        events: world.events_run() + gpu.as_ref().map_or(0, |g| g.events),
        convergence_ms: Quantiles::of(&mut world.latencies),
        bytes_per_change_end_to_end: (tally.bytes_up + tally.bytes_down) as f64 / written,
        relay_storage_bytes: world.relay_storage(),
        relay_connections_at_end: world.relay_connections(),
        converged: unconverged.is_empty(),
        unconverged_devices: unconverged.len(),
        undelivered_changes: world.undelivered(),
        tally,
        partition: common.partition,
        relay_loss: common.relay_loss,
        month_offline: common.month_offline,
        revocation: None,
        ack_ms: None,
        costs: None,
        sizes: None,
        series: Vec::new(),
        assumptions: with_gpu(ASSUMPTIONS.to_vec(), gpu.is_some()),
        gpu,
    };
    Ok(Run {
        report: Outcome::Sync(Box::new(report)),
        convergence_us: std::mem::take(&mut world.latencies),
        revocation_us: Vec::new(),
    })
}

fn run_light(setup: &Setup, options: &Options, progress: Progress<'_>) -> Result<Run, RunError> {
    let link = LinkModel::WAN;
    let mut world = LightWorld::new(
        options.seed,
        setup.shape,
        setup.traffic,
        link,
        setup.writing_until,
        options.costs.clone(),
    )?;
    let common = Common::of(setup);
    if common.partition.is_some() {
        world.partition(1, Common::CUT.0, Common::CUT.1);
    }
    if common.month_offline.is_some() {
        world.away(0, Common::AWAY.0, Common::AWAY.1);
    }
    if common.relay_loss.is_some() {
        world.lose_relay(0, setup.end / 2);
    }
    let revoking = setup.name == "mass-revocation";
    if revoking {
        let at = 20 * MINUTE;
        world.some_away(0.1, crate::world::WARM_UP, at, setup.end - 10 * MINUTE);
        let targets = world.every_nth_users_last_device(10);
        world.revoke(at, targets);
    }
    let mut gpu = gpu_tier(setup, options);
    drive(setup.end, setup.hours, progress, |at| {
        world.run_until(at);
        world.sample();
        if let Some(g) = gpu.as_mut() {
            g.run_until(at);
        }
    });
    let gpu = gpu.map(|g| gpu_figures(&g, setup.shape.users, g.model()));
    let common = common.finish(
        world.healed_in(),
        world.backlog_at_return(),
        world.moved,
        world.missing_from_database(),
    );
    let (unconverged, undelivered) = world.unconverged();
    let tally = world.tally.clone();
    let written = tally.changes_written.max(1) as f64;
    let mut assumptions = ASSUMPTIONS.to_vec();
    // The full model's first two notes do not hold here.
    assumptions.drain(..2.min(assumptions.len()));
    assumptions.extend_from_slice(LIGHT_ASSUMPTIONS);
    if revoking {
        assumptions.extend_from_slice(REVOCATION_ASSUMPTIONS);
    }
    let assumptions = with_gpu(assumptions, gpu.is_some());
    let report = Report {
        scenario: setup.name,
        seed: options.seed,
        model: Model::Light,
        shape: setup.shape,
        devices: world.devices(),
        traffic: setup.traffic,
        link,
        simulated_s: (setup.end / SECOND) as f64,
        events: world.events_run() + gpu.as_ref().map_or(0, |g| g.events),
        convergence_ms: world.latencies.quantiles(),
        bytes_per_change_end_to_end: (tally.bytes_up + tally.bytes_down) as f64 / written,
        relay_storage_bytes: world.relay_storage(),
        relay_connections_at_end: world.relay_connections(),
        converged: unconverged == 0,
        unconverged_devices: unconverged,
        undelivered_changes: undelivered as usize,
        tally,
        partition: common.partition,
        relay_loss: common.relay_loss,
        month_offline: common.month_offline,
        revocation: world.revocation_report(),
        ack_ms: Some(world.acks.quantiles()),
        costs: Some(world.costs.clone()),
        sizes: Some(world.sizes),
        series: std::mem::take(&mut world.series),
        assumptions,
        gpu,
    };
    Ok(Run {
        report: Outcome::Sync(Box::new(report)),
        convergence_us: world.latencies.ranks(2_000),
        revocation_us: world.revocation_spread(),
    })
}

/// `assumptions`, with the GPU tier's when there is one.
fn with_gpu(mut assumptions: Vec<&'static str>, gpu: bool) -> Vec<&'static str> {
    if gpu {
        assumptions.push(
            "GPU tier (`--gpu-peers`): each user asks for voice answers as a Poisson process at the given rate, each answered by a GPU peer the node's own scheduler chooses; the peers' service model is the gpu-failure scenario's (assumed datacentre figures), run alongside the sync model on the same clock",
        );
    }
    assumptions
}

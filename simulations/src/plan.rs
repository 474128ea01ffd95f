//! `jarvis-sim plan`: the smallest fleet that meets the targets for an org, found by running the
//! simulator on candidate fleets, and what it costs per user per month.
//!
//! Targets: sync P95 ≤ 100 ms, GPU first token P95 ≤ 500 ms, and 99.9% of turns answered with
//! one relay instance or one GPU peer down. Relay instances start from the number of devices
//! one instance holds within its memory budget (`jarvis-bench relay-capacity`), plus one
//! spare; the light model then runs the org's peak hour on them with one instance lost at half
//! time, and one more is added while a target is missed. GPU peers start from their throughput
//! (slots × tokens/s under batching ÷ answer length) at 70% utilisation, plus one spare; the GPU
//! tier runs with one peer failing at half time, and peers are added while a target is missed.

use serde::Serialize;

use crate::engine::{MINUTE, Micros, Quantiles};
use crate::gpu::{GpuModel, GpuWorld};
use crate::light::{Costs, LightWorld};
use crate::net::LinkModel;
use crate::world::{BuildError, Shape, Traffic};

/// What the org is and what things cost.
#[derive(Debug, Clone, Serialize)]
pub struct Demand {
    pub users: u32,
    pub devices_per_user: u32,
    pub voice_turns_per_user_per_hour: f64,
    pub changes_per_device_per_hour: f64,
    /// Devices one relay instance holds within its memory budget.
    pub relay_devices_per_instance: u32,
    pub gpu: GpuModel,
    pub relay_cost_per_month: f64,
    pub gpu_cost_per_month: f64,
    pub seed: u64,
}

/// The fleet found, its measured figures, and its cost.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub demand: Demand,
    pub relay_instances: u16,
    pub gpu_peers: u16,
    /// Sync, with one relay instance lost at half time.
    pub sync_ms: Quantiles,
    pub sync_converged: bool,
    pub changes_lost_with_the_instance: u64,
    pub relay_cpu_peak: f64,
    /// GPU first token, with one peer failed at half time.
    pub gpu_first_token_ms: Quantiles,
    pub gpu_answered_share: f64,
    /// Users the GPU tier was simulated at (see the assumptions).
    pub gpu_simulated_users: u32,
    pub meets_targets: bool,
    pub cost_per_month: f64,
    pub cost_per_user_per_month: f64,
    /// The relays' share alone (the sync service, without answers from GPU peers).
    pub sync_cost_per_user_per_month: f64,
    /// Each fleet tried, and why it was not enough.
    pub tried: Vec<String>,
    pub assumptions: Vec<String>,
}

const SYNC_P95_MS: f64 = 100.0;
const FIRST_TOKEN_P95_MS: f64 = 500.0;
const ANSWERED: f64 = 0.999;
/// The GPU tier is simulated at most at this many users (with peers in proportion).
const GPU_CELL_USERS: u32 = 20_000;
const TRIES: usize = 8;

fn sync_run(
    demand: &Demand,
    relays: u16,
    costs: &Costs,
) -> Result<(Quantiles, bool, u64, f64), BuildError> {
    let end: Micros = 60 * MINUTE;
    let shape = Shape {
        users: demand.users,
        devices_per_user: demand.devices_per_user,
        relays,
        sites: 1,
        shared_database: true,
    };
    let traffic = Traffic {
        changes_per_device_per_hour: demand.changes_per_device_per_hour,
        // The day's peak hour.
        start_hour: 10.0,
    };
    let mut world = LightWorld::new(
        demand.seed,
        shape,
        traffic,
        LinkModel::WAN,
        end - 2 * MINUTE,
        costs.clone(),
    )?;
    if relays > 1 {
        world.lose_relay(0, end / 2);
    }
    let mut at = 0;
    while at < end {
        at += MINUTE;
        world.run_until(at);
        world.sample();
    }
    let cpu = world
        .series
        .iter()
        .flat_map(|s| s.cpu.iter().copied())
        .fold(0.0, f64::max);
    Ok((
        world.latencies.quantiles(),
        world.unconverged().0 == 0,
        world.missing_from_database(),
        cpu,
    ))
}

fn gpu_run(demand: &Demand, peers: u16) -> (Quantiles, f64, u32) {
    let end: Micros = 60 * MINUTE;
    // Simulate a cell of the org when it is large: users and peers in proportion.
    let (users, cell_peers) = if demand.users > GPU_CELL_USERS {
        let share = f64::from(GPU_CELL_USERS) / f64::from(demand.users);
        (
            GPU_CELL_USERS,
            ((f64::from(peers) * share).ceil() as u16).max(2),
        )
    } else {
        (demand.users, peers)
    };
    let model = GpuModel {
        peers: cell_peers,
        asks_per_device_per_hour: demand.voice_turns_per_user_per_hour,
        ..demand.gpu
    };
    let mut world = GpuWorld::new(demand.seed, users, model, end - 2 * MINUTE);
    world.fail(0, end / 2);
    world.run_until(end);
    let report = world.report_of(0, end / 2);
    (report.first_token_ms, report.answered_share, users)
}

/// Finds the fleet (see the module's notes).
pub fn plan(
    demand: Demand,
    costs: &Costs,
    progress: &mut dyn FnMut(&str),
) -> Result<Plan, BuildError> {
    let devices = demand.users.saturating_mul(demand.devices_per_user);
    let per_instance = demand.relay_devices_per_instance.max(1);
    let mut relays = u16::try_from(devices.div_ceil(per_instance) + 1)
        .unwrap_or(u16::MAX)
        .max(2);
    let mut tried = Vec::new();
    let mut sync = None;
    for attempt in 0..TRIES {
        if attempt > 0 {
            relays = relays.saturating_add((relays / 4).max(1));
        }
        progress(&format!(
            "sync: {devices} devices on {relays} relay instances, one lost at half time…"
        ));
        let (q, converged, lost, cpu) = sync_run(&demand, relays, costs)?;
        let ok = q.p95 <= SYNC_P95_MS && converged && lost == 0;
        if ok {
            sync = Some((q, converged, lost, cpu));
            break;
        }
        tried.push(format!(
            "{relays} relay instances: sync p95 {:.1} ms, converged {converged}, {lost} changes lost",
            q.p95
        ));
        sync = Some((q, converged, lost, cpu));
    }
    let g = &demand.gpu;
    let per_peer_answers_per_s = f64::from(g.slots) * g.tokens_per_s
        / f64::from(g.slots).powf(g.batching)
        / f64::from(g.answer_tokens.max(1));
    let asked_per_s = f64::from(demand.users) * demand.voice_turns_per_user_per_hour / 3600.0;
    let mut peers = ((asked_per_s / (per_peer_answers_per_s * 0.7)).ceil() as u16 + 1).max(2);
    let mut gpu = None;
    for attempt in 0..TRIES {
        if attempt > 0 {
            peers = peers.saturating_add((peers / 4).max(1));
        }
        progress(&format!("GPU: {peers} peers, one failing at half time…"));
        let (q, answered, users) = gpu_run(&demand, peers);
        let ok = q.p95 <= FIRST_TOKEN_P95_MS && answered >= ANSWERED;
        gpu = Some((q.clone(), answered, users));
        if ok {
            break;
        }
        tried.push(format!(
            "{peers} GPU peers: first token p95 {:.1} ms, {:.2}% answered",
            q.p95,
            answered * 100.0
        ));
    }
    let (sync_ms, sync_converged, lost, cpu) =
        sync.ok_or_else(|| BuildError::Measure("no sync run".into()))?;
    let (first_token, answered, gpu_users) =
        gpu.ok_or_else(|| BuildError::Measure("no GPU run".into()))?;
    let meets = sync_ms.p95 <= SYNC_P95_MS
        && sync_converged
        && lost == 0
        && first_token.p95 <= FIRST_TOKEN_P95_MS
        && answered >= ANSWERED;
    let cost = f64::from(relays) * demand.relay_cost_per_month
        + f64::from(peers) * demand.gpu_cost_per_month;
    let assumptions = vec![
        format!(
            "relay instances: at most {} devices each (the memory budget's figure from `jarvis-bench relay-capacity`), plus one spare so one can be down; the light model runs the peak hour on them with instance 0 lost at half time (its costs: {})",
            demand.relay_devices_per_instance, costs.source
        ),
        format!(
            "GPU peers: {} slots, first token {} ms, {} tokens/s for one answer alone (divided by active^{} under batching), {}-token answers: assumed datacentre figures, not measured here (no GPU); one fails at half time",
            g.slots, g.ttft_ms, g.tokens_per_s, g.batching, g.answer_tokens
        ),
        format!(
            "the GPU tier is simulated at {gpu_users} users with peers in proportion when the org is larger (a bigger fleet pools better, so this errs toward more peers)"
        ),
        "voice turns are asked as a Poisson process at the given rate all hour (the peak held, no diurnal dip); every turn goes to a GPU peer".into(),
        "cost: instances and peers × the monthly prices given; the database, network egress and admin time are not counted".into(),
    ];
    Ok(Plan {
        relay_instances: relays,
        gpu_peers: peers,
        sync_ms,
        sync_converged,
        changes_lost_with_the_instance: lost,
        relay_cpu_peak: cpu,
        gpu_first_token_ms: first_token,
        gpu_answered_share: answered,
        gpu_simulated_users: gpu_users,
        meets_targets: meets,
        cost_per_month: cost,
        cost_per_user_per_month: cost / f64::from(demand.users.max(1)),
        sync_cost_per_user_per_month: f64::from(relays) * demand.relay_cost_per_month
            / f64::from(demand.users.max(1)),
        tried,
        assumptions,
        demand,
    })
}

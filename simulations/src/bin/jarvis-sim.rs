//! `jarvis-sim`: run the org-scale simulations (see the crate's documentation).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use jarvis_sim::engine::{MINUTE, Micros};
use jarvis_sim::light::Costs;
use jarvis_sim::scenario::{self, Options, Outcome, SCENARIOS};

#[derive(Parser)]
#[command(
    name = "jarvis-sim",
    version,
    about = "Simulates a Jarvis org at scale: the project's real sync, replica and relay code over a modelled network on a virtual clock",
    long_about = "Simulates a Jarvis org at scale: the project's real sync sessions, replicas and relay hub, over a modelled network (latency distributions, loss, bandwidth, partitions) on a virtual clock. The same seed and arguments give a byte-identical report.json."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The smallest fleet (relay instances, GPU peers) that meets the targets for an org — sync
    /// P95 ≤ 100 ms, GPU first token P95 ≤ 500 ms, 99.9% answered with one instance or peer
    /// down — found by simulating candidate fleets, and its cost per user per month.
    Plan(PlanArgs),
    /// The scenarios, and which of them run yet.
    List {
        /// One JSON object per scenario.
        #[arg(long)]
        json: bool,
    },
    /// Runs a scenario and writes report.json (and run.json: wall time and memory) into --out.
    Run {
        /// A scenario `list` names, e.g. org-day.
        scenario: String,
        /// The random source's seed: the same seed and arguments give the same report.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Devices in all (three per user; default: the scenario's own).
        #[arg(long, value_name = "N")]
        devices: Option<u32>,
        /// Where the reports go (created if missing).
        #[arg(long, value_name = "DIR", default_value = "jarvis-sim-out")]
        out: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Runs a scenario at several sizes, each in a process of its own, and writes scale.json
    /// and scale.svg (wall time and peak memory against devices) into --out.
    Scale {
        /// A scenario `list` names, e.g. org-day.
        scenario: String,
        /// The sizes, in devices, comma-separated.
        #[arg(
            long,
            value_name = "N,N,…",
            value_delimiter = ',',
            default_value = "30,100,300"
        )]
        devices: Vec<u32>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where the reports go: one folder per size, and the series.
        #[arg(long, value_name = "DIR", default_value = "jarvis-sim-scale")]
        out: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
}

/// `plan`'s arguments.
#[derive(clap::Args)]
struct PlanArgs {
    /// Users in the org.
    #[arg(long, value_name = "N")]
    users: u32,
    /// Devices per user.
    #[arg(long, value_name = "D", default_value_t = 3)]
    devices_per_user: u32,
    /// Voice turns (answers from a GPU peer) per user per hour at the peak.
    #[arg(long, value_name = "V", default_value_t = 10.0)]
    voice_turns_per_user_per_hour: f64,
    /// Conversation changes each device writes per hour at the peak.
    #[arg(long, value_name = "C", default_value_t = 30.0)]
    changes_per_device_per_hour: f64,
    /// Devices one relay instance holds within its memory budget (`jarvis-bench
    /// relay-capacity`: 2,581 within 200 MB, measured on the development machine).
    #[arg(long, value_name = "N", default_value_t = 2_581)]
    relay_devices_per_instance: u32,
    /// A GPU peer's slots (answers at once).
    #[arg(long, value_name = "N", default_value_t = 16)]
    gpu_slots: u32,
    /// A GPU peer's first token, in ms.
    #[arg(long, value_name = "MS", default_value_t = 60.0)]
    gpu_ttft_ms: f64,
    /// A GPU peer's tokens per second for one answer alone.
    #[arg(long, value_name = "T", default_value_t = 60.0)]
    gpu_tokens_per_s: f64,
    /// Price of one relay instance per month (any currency; the cost comes out in it).
    #[arg(long, value_name = "PRICE", default_value_t = 15.0)]
    relay_cost_per_month: f64,
    /// Price of one GPU peer per month.
    #[arg(long, value_name = "PRICE", default_value_t = 1_200.0)]
    gpu_cost_per_month: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the plan as JSON here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print the plan as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// The light model's cryptography costs (as `run --costs`).
    #[arg(long, value_name = "FILE")]
    costs: Option<PathBuf>,
}

fn plan(args: &PlanArgs) -> Result<()> {
    if args.users == 0 || args.devices_per_user == 0 {
        bail!("--users and --devices-per-user must be at least 1");
    }
    let model = ModelArgs {
        model: None,
        relays: None,
        costs: args.costs.clone(),
        gpu_peers: None,
        voice_turns_per_user_per_hour: args.voice_turns_per_user_per_hour,
    };
    let costs = model.options(args.seed, None)?.costs;
    let demand = jarvis_sim::plan::Demand {
        users: args.users,
        devices_per_user: args.devices_per_user,
        voice_turns_per_user_per_hour: args.voice_turns_per_user_per_hour,
        changes_per_device_per_hour: args.changes_per_device_per_hour,
        relay_devices_per_instance: args.relay_devices_per_instance,
        gpu: jarvis_sim::gpu::GpuModel {
            slots: args.gpu_slots,
            ttft_ms: args.gpu_ttft_ms,
            tokens_per_s: args.gpu_tokens_per_s,
            ..jarvis_sim::gpu::GpuModel::DATACENTRE
        },
        relay_cost_per_month: args.relay_cost_per_month,
        gpu_cost_per_month: args.gpu_cost_per_month,
        seed: args.seed,
    };
    let started = Instant::now();
    let plan = jarvis_sim::plan::plan(demand, &costs, &mut |what| {
        eprintln!("[{:5.1} s] {what}", started.elapsed().as_secs_f64());
    })?;
    let json = serde_json::to_string_pretty(&plan)?;
    if let Some(path) = &args.out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        let d = &plan.demand;
        println!(
            "{} users × {} devices, {} voice turns per user per hour:",
            d.users, d.devices_per_user, d.voice_turns_per_user_per_hour
        );
        println!(
            "  relay instances  {:>5}   sync p95 {:.1} ms with one lost (target ≤ 100), busiest core share {:.0}%",
            plan.relay_instances,
            plan.sync_ms.p95,
            plan.relay_cpu_peak * 100.0
        );
        println!(
            "  GPU peers        {:>5}   first token p95 {:.1} ms with one failed (target ≤ 500), {:.2}% answered (target ≥ 99.9)",
            plan.gpu_peers,
            plan.gpu_first_token_ms.p95,
            plan.gpu_answered_share * 100.0
        );
        println!(
            "  cost             {:.2} per month, {:.4} per user per month (relays alone {:.4}){}",
            plan.cost_per_month,
            plan.cost_per_user_per_month,
            plan.sync_cost_per_user_per_month,
            if plan.meets_targets {
                ""
            } else {
                "  (TARGETS NOT MET: see `tried`)"
            }
        );
        for t in &plan.tried {
            println!("  tried: {t}");
        }
        println!("assumptions:");
        for a in &plan.assumptions {
            println!("  - {a}");
        }
    }
    if !plan.meets_targets {
        bail!("no fleet tried meets the targets");
    }
    Ok(())
}

/// How the devices are modelled, and the fleet's size.
#[derive(clap::Args, Clone)]
struct ModelArgs {
    /// `full` (real replicas, sessions and relay hubs) or `light` (counters, measured sizes,
    /// cryptography as a cost model); default: full up to 3,000 devices, light above.
    #[arg(long, value_name = "MODEL")]
    model: Option<scenario::Model>,
    /// Relay instances (default: the scenario's own).
    #[arg(long, value_name = "N")]
    relays: Option<u16>,
    /// The light model's cryptography costs: a file of `jarvis-bench crdt-seal --json` and
    /// `jarvis-bench identity-verify --json` output (default: figures measured on the 2-core
    /// development machine; the report names them).
    #[arg(long, value_name = "FILE")]
    costs: Option<PathBuf>,
    /// GPU peers answering the users' voice turns alongside (sync scenarios; default: none).
    #[arg(long, value_name = "N")]
    gpu_peers: Option<u16>,
    /// Voice turns per user per hour, each answered by a GPU peer (with --gpu-peers).
    #[arg(long, value_name = "V", default_value_t = 10.0)]
    voice_turns_per_user_per_hour: f64,
}

impl ModelArgs {
    fn options(&self, seed: u64, devices: Option<u32>) -> Result<Options> {
        let costs = match &self.costs {
            None => Costs::measured_here(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Costs::from_bench_output(&path.display().to_string(), &text)?
            }
        };
        Ok(Options {
            seed,
            devices,
            relays: self.relays,
            model: self.model,
            costs,
            gpu_peers: self.gpu_peers,
            voice_turns_per_user_per_hour: self.voice_turns_per_user_per_hour,
        })
    }

    /// The same flags again, for a child `jarvis-sim run`.
    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(m) = self.model {
            args.extend(["--model".into(), format!("{m:?}").to_lowercase()]);
        }
        if let Some(r) = self.relays {
            args.extend(["--relays".into(), r.to_string()]);
        }
        if let Some(c) = &self.costs {
            args.extend(["--costs".into(), c.display().to_string()]);
        }
        if let Some(g) = self.gpu_peers {
            args.extend(["--gpu-peers".into(), g.to_string()]);
            args.extend([
                "--voice-turns-per-user-per-hour".into(),
                self.voice_turns_per_user_per_hour.to_string(),
            ]);
        }
        args
    }
}

/// Runs each size as `jarvis-sim run` in a child process (so each has its own peak memory) and
/// gathers their run.json files.
fn scale(
    name: &str,
    sizes: &[u32],
    seed: u64,
    out: &std::path::Path,
    model: &ModelArgs,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let me = std::env::current_exe().context("finding jarvis-sim itself")?;
    let mut points = Vec::new();
    for (i, &devices) in sizes.iter().enumerate() {
        eprintln!("{name}: {devices} devices ({} of {})…", i + 1, sizes.len());
        let dir = out.join(devices.to_string());
        let status = std::process::Command::new(&me)
            .args(["run", name, "--seed", &seed.to_string()])
            .args(["--devices", &devices.to_string()])
            .args(model.args())
            .arg("--out")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .status()
            .context("running jarvis-sim run")?;
        if !status.success() {
            bail!(
                "{name} with {devices} devices failed: see {}",
                dir.display()
            );
        }
        let run: jarvis_sim::plot::ScalePoint = serde_json::from_slice(
            &std::fs::read(dir.join("run.json")).context("reading run.json")?,
        )
        .context("reading run.json")?;
        points.push(run);
    }
    let rows: Vec<serde_json::Value> = points
        .iter()
        .map(|p| {
            serde_json::json!({
                "devices": p.devices,
                "events": p.events,
                "wall_s": p.wall_s,
                "peak_rss_bytes": p.peak_rss_bytes,
                "wall_ms_per_device": p.wall_s * 1000.0 / p.devices.max(1) as f64,
                "peak_rss_kb_per_device": p.peak_rss_bytes as f64 / 1024.0 / p.devices.max(1) as f64,
            })
        })
        .collect();
    let text = serde_json::to_string_pretty(
        &serde_json::json!({ "scenario": name, "seed": seed, "runs": rows }),
    )?;
    std::fs::write(out.join("scale.json"), format!("{text}\n"))?;
    jarvis_sim::plot::scale(
        &out.join("scale.svg"),
        &format!("{name}: one simulated hour, by size (seed {seed})"),
        &points,
    )?;
    println!("{}", out.join("scale.json").display());
    Ok(())
}

/// The process's peak resident memory, in bytes (Linux; 0 elsewhere).
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Plan(args) => plan(&args),
        Command::Scale {
            scenario,
            devices,
            seed,
            out,
            model,
        } => scale(&scenario, &devices, seed, &out, &model),
        Command::List { json } => {
            for s in SCENARIOS {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({ "name": s.name, "about": s.about, "built": s.built })
                    );
                } else {
                    println!("{:<16}{}", s.name, s.about);
                }
            }
            Ok(())
        }
        Command::Run {
            scenario: name,
            seed,
            devices,
            out,
            model,
        } => {
            let options = model.options(seed, devices)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let started = Instant::now();
            let mut stderr = std::io::stderr();
            let terminal = stderr.is_terminal();
            let mut decile = u64::MAX;
            let mut progress = |done: Micros, total: Micros| {
                // A line that rewrites itself on a terminal; a line per tenth elsewhere.
                let now = done * 10 / total.max(1);
                if !terminal && now == decile {
                    return;
                }
                decile = now;
                let _ = write!(
                    stderr,
                    "{}{name}: {} of {} simulated minutes, {:.1} s{}",
                    if terminal { "\r" } else { "" },
                    done / MINUTE,
                    total / MINUTE,
                    started.elapsed().as_secs_f64(),
                    if terminal { "" } else { "\n" },
                );
            };
            let run = scenario::run(&name, &options, &mut progress)?;
            let report = &run.report;
            eprintln!();
            let wall_s = started.elapsed().as_secs_f64();
            let path = out.join("report.json");
            let text = serde_json::to_string_pretty(report)?;
            std::fs::write(&path, format!("{text}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            let (devices, events) = match &report {
                Outcome::Sync(r) => (r.devices as u64, r.events),
                Outcome::Gpu(g) => (u64::from(g.gpu.devices), g.events),
            };
            let run_json = serde_json::json!({
                "wall_s": wall_s,
                "peak_rss_bytes": peak_rss(),
                "devices": devices,
                "events": events,
            });
            std::fs::write(out.join("run.json"), format!("{run_json:#}\n"))?;
            match report {
                Outcome::Gpu(g) => {
                    let gpu = &g.gpu;
                    eprintln!(
                        "{devices} devices, {} GPU peers ({} failed at {} s), {events} events in {wall_s:.1} s wall; {} of {} answered ({} moved to another peer); first token p50 {:.1} ms, p95 {:.1} ms; after a failover p95 {:.1} ms",
                        gpu.model.peers,
                        gpu.failed_peer,
                        gpu.failed_at_s,
                        gpu.answered,
                        gpu.asked,
                        gpu.failed_over,
                        gpu.first_token_ms.p50,
                        gpu.first_token_ms.p95,
                        gpu.first_token_after_failover_ms.p95,
                    );
                    println!("{}", path.display());
                    if gpu.answered_share < 0.999 {
                        bail!(
                            "only {:.2}% of answers completed: see {}",
                            gpu.answered_share * 100.0,
                            path.display()
                        );
                    }
                }
                Outcome::Sync(report) => {
                    let plot = out.join("convergence.svg");
                    jarvis_sim::plot::convergence_cdf(
                        &plot,
                        &format!(
                            "{name}: {} devices, seed {seed} — write to arrival at the user's other devices",
                            report.devices
                        ),
                        &run.convergence_us,
                    )?;
                    if !report.series.is_empty() {
                        jarvis_sim::plot::fleet(
                            &out.join("relays.svg"),
                            &format!(
                                "{name}: the relay fleet, {} devices, seed {seed}",
                                report.devices
                            ),
                            &report.series,
                        )?;
                    }
                    if let Some(rv) = &report.revocation {
                        jarvis_sim::plot::cdf(
                            &out.join("revocation.svg"),
                            &format!(
                                "{name}: {} devices revoked among {}, seed {seed} — revocation to each other device holding the records",
                                rv.revoked_devices, report.devices
                            ),
                            "revocation spread (ms, log scale)",
                            &run.revocation_us,
                        )?;
                        eprintln!(
                            "revocation of {} devices: every relay refusing them after {:.1} ms; spread to the others p50 {:.1} ms, p95 {:.1} ms, max {:.1} s ({} unaware at the end); keys rotated p50 {:.1} ms, p95 {:.1} ms",
                            rv.revoked_devices,
                            rv.all_relays_refuse_after_ms.unwrap_or(f64::NAN),
                            rv.spread_ms.p50,
                            rv.spread_ms.p95,
                            rv.spread_ms.max / 1000.0,
                            rv.devices_unaware_at_end,
                            rv.key_rotated_ms.p50,
                            rv.key_rotated_ms.p95,
                        );
                    }
                    eprintln!(
                        "{} devices ({:?} model), {} simulated s, {} events in {wall_s:.1} s wall; convergence p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms over {} deliveries; {} bytes per change end to end; converged: {}",
                        report.devices,
                        report.model,
                        report.simulated_s,
                        report.events,
                        report.convergence_ms.p50,
                        report.convergence_ms.p95,
                        report.convergence_ms.p99,
                        report.convergence_ms.count,
                        report.bytes_per_change_end_to_end.round(),
                        report.converged,
                    );
                    if let Some(g) = &report.gpu {
                        eprintln!(
                            "GPU tier: {} peers, {} of {} voice turns answered; first token p50 {:.1} ms, p95 {:.1} ms; queue wait p95 {:.1} ms",
                            g.model.peers,
                            g.answered,
                            g.asked,
                            g.first_token_ms.p50,
                            g.first_token_ms.p95,
                            g.queue_wait_ms.p95,
                        );
                    }
                    println!("{}", path.display());
                    if !report.converged {
                        bail!(
                            "{} devices did not converge ({} changes undelivered): see {}",
                            report.unconverged_devices,
                            report.undelivered_changes,
                            path.display()
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

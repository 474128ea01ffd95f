//! `jarvis-sim`: run the org-scale simulations (see the crate's documentation).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use jarvis_sim::engine::{MINUTE, Micros};
use jarvis_sim::scenario::{self, Options, SCENARIOS};

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
    },
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
        } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let started = Instant::now();
            let mut stderr = std::io::stderr();
            let terminal = stderr.is_terminal();
            let mut progress = |done: Micros, total: Micros| {
                // A line that rewrites itself on a terminal; a line per ten minutes elsewhere.
                if !terminal && !done.is_multiple_of(10 * MINUTE) && done != total {
                    return;
                }
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
            let run = scenario::run(&name, Options { seed, devices }, &mut progress)?;
            let report = run.report;
            eprintln!();
            let wall_s = started.elapsed().as_secs_f64();
            let path = out.join("report.json");
            let text = serde_json::to_string_pretty(&report)?;
            std::fs::write(&path, format!("{text}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            let run_json = serde_json::json!({
                "wall_s": wall_s,
                "peak_rss_bytes": peak_rss(),
                "devices": report.devices,
                "events": report.events,
            });
            std::fs::write(out.join("run.json"), format!("{run_json:#}\n"))?;
            let plot = out.join("convergence.svg");
            jarvis_sim::plot::convergence_cdf(
                &plot,
                &format!(
                    "{name}: {} devices, seed {seed} — write to arrival at the user's other devices",
                    report.devices
                ),
                &run.convergence_us,
            )?;
            eprintln!(
                "{} devices, {} simulated s, {} events in {wall_s:.1} s wall; convergence p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms over {} deliveries; {} bytes per change end to end; converged: {}",
                report.devices,
                report.simulated_s,
                report.events,
                report.convergence_ms.p50,
                report.convergence_ms.p95,
                report.convergence_ms.p99,
                report.convergence_ms.count,
                report.bytes_per_change_end_to_end.round(),
                report.converged,
            );
            println!("{}", path.display());
            if !report.converged {
                bail!(
                    "{} devices did not converge ({} changes undelivered): see {}",
                    report.unconverged_devices,
                    report.undelivered_changes,
                    path.display()
                );
            }
            Ok(())
        }
    }
}

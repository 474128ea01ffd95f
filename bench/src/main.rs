//! `jarvis-bench`: benchmarks that measure a reference in the same run (cli.md, "Benchmarks").
//!
//! `jarvis-bench list` names them; `jarvis-bench NAME [--quick] [--json]` runs one and prints one
//! JSON object per figure: `{bench, metric, ours, reference, ratio, goal, unit}`.

mod crdt;
mod fleet;
mod gpu_cuda;
mod gpu_fleet;
mod harness;
mod identity_verify;
mod iroh;
mod llm_local;
mod mesh_sync;
mod offload;
mod ramp;
mod relay;
mod sim_validate;
mod strangers;
mod voice;

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Parser;

use crate::harness::Figure;

/// A benchmark: its name, what it measures, and how to run it.
struct Bench {
    name: &'static str,
    about: &'static str,
    run: fn(bool) -> Result<Vec<Figure>>,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: identity_verify::NAME,
        about: "certificate-chain verification vs raw ed25519-dalek on the same signatures",
        run: identity_verify::run,
    },
    Bench {
        name: crdt::SEAL,
        about: "sealing changes (AEAD + signature + encoding) vs raw AEAD + ed25519 on the same bytes",
        run: crdt::seal,
    },
    Bench {
        name: crdt::CATCH_UP,
        about: "an empty device syncing a 100,000-message conversation vs Automerge::load of it",
        run: crdt::catch_up,
    },
    Bench {
        name: mesh_sync::NAME,
        about: "a change from one device to the user's other over the whole stack (API, store, libp2p, merge) vs raw quinn on loopback: throughput, p50/p99 latency",
        run: mesh_sync::run,
    },
    Bench {
        name: relay::CAPACITY,
        about: "authenticated idle device connections one jarvis-relay holds within 200 MB RSS vs iroh-relay (crates.io, `server`) with as many authenticated clients",
        run: relay::capacity,
    },
    Bench {
        name: relay::ACK,
        about: "store-and-forward acknowledgement latency (p50, p95) with 1,000 active devices, and the others' p95 while one device floods (absolute, and flood vs calm)",
        run: relay::ack,
    },
    Bench {
        name: sim_validate::NAME,
        about: "jarvis-sim's light model vs real processes over real QUIC on the same org and load: convergence P50/P95 of 3 users × 2 devices behind tc netem (20 ms ± 5 ms; needs root), and relay-ack's P50/P95 at 1,000 devices with the relay's measured CPU per change",
        run: sim_validate::run,
    },
    Bench {
        name: fleet::NAME,
        about: "the relay on PostgreSQL (one instance, two) vs on sled: ack P95 with 1,000 active devices, acknowledged changes/s with 1,000 saturating devices, and the cores each process used",
        run: fleet::run,
    },
    Bench {
        name: strangers::NAME,
        about: "the relay's peak RSS while 50 fresh-key strangers each open 64 streams announcing 64 MiB frames (vs the same relay before), and its members' acknowledgement p95 meanwhile (vs before)",
        run: strangers::run,
    },
    Bench {
        name: llm_local::NAME,
        about: "local engine (and through the HTTP API) vs llama-cpp-2 called directly: time to first token, tokens/s",
        run: llm_local::run,
    },
    Bench {
        name: offload::NAME,
        about: "an answer through a GPU peer over QUIC on loopback vs the same engine asked directly: tokens/s and the time to first token it adds, for llama.cpp's llama-server behind the peer and for the built-in engine",
        run: offload::run,
    },
    Bench {
        name: gpu_fleet::NAME,
        about: "three GPU peers (vLLM-like servers behind them) and thirty devices asking at once: a spoken question's first-word p95 while typed ones queue vs on the idle fleet, typed answers completed, slot time left idle while others queued",
        run: gpu_fleet::run,
    },
    Bench {
        name: gpu_cuda::NAME,
        about: "a GPU peer's built-in engine on an NVIDIA GPU (a `cuda` build of jarvis-llm-worker, JARVIS_LLM_WORKER_CUDA) vs the same peer on the CPU: tokens/s, and the CUDA device reported; says why and reports nothing without a GPU",
        run: gpu_cuda::run,
    },
    Bench {
        name: voice::STT,
        about: "speech to text in the voice pipeline (streaming, speculative at the pause) vs whisper-rs called directly on the whole utterance; our worker vs whisper-rs direct",
        run: voice::stt,
    },
    Bench {
        name: voice::VOICE_TURN,
        about: "\"hey jarvis, <question>\" through `jarvis listen` and a running node: end of speech to the first audio of the answer (absolute, shipped models)",
        run: voice::voice_turn,
    },
];

/// Jarvis benchmarks. Each one measures our code and a reference on the same input in the same
/// run, and reports ours ÷ reference, so figures compare across noisy shared machines.
#[derive(Debug, Parser)]
#[command(name = "jarvis-bench", version)]
struct Args {
    /// `list`, or the name of a benchmark.
    name: String,
    /// Finish in under a minute (fewer, shorter rounds).
    #[arg(long)]
    quick: bool,
    /// One JSON object per figure.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // This binary is also the iroh-relay server of `relay-capacity`'s reference, in a process of
    // its own so that its memory is measured alone.
    if std::env::var_os(iroh::SERVER_ENV).is_some() {
        return match iroh::serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("iroh-relay server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    if args.name == "list" {
        for bench in BENCHES {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "bench": bench.name, "about": bench.about })
                );
            } else {
                println!("{:<20} {}", bench.name, bench.about);
            }
        }
        return Ok(());
    }
    let Some(bench) = BENCHES.iter().find(|b| b.name == args.name) else {
        let names: Vec<_> = BENCHES.iter().map(|b| b.name).collect();
        bail!(
            "no benchmark `{}`; there are: {}",
            args.name,
            names.join(", ")
        );
    };
    for figure in (bench.run)(args.quick)? {
        if args.json {
            println!("{}", serde_json::to_string(&figure)?);
        } else {
            println!(
                "{} {}: ours {:.1} {unit}, reference {} → ratio {} (goal {})",
                figure.bench,
                figure.metric,
                figure.ours,
                figure
                    .reference
                    .map_or("-".to_owned(), |r| format!("{r:.1} {}", figure.unit)),
                figure.ratio.map_or("-".to_owned(), |r| format!("{r:.3}")),
                figure.goal.as_deref().unwrap_or("-"),
                unit = figure.unit,
            );
        }
    }
    Ok(())
}

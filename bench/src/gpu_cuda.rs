//! `gpu-cuda`: the built-in engine of `jarvis gpu up` on an NVIDIA GPU against the same peer on
//! the CPU, in one run (#22: the GPU reported, and ≥ 10× the CPU build's tokens/s).
//!
//! Needs a machine with an NVIDIA GPU (`nvidia-smi -L` lists one) and a `jarvis-llm-worker`
//! built with `--features cuda`, named by `JARVIS_LLM_WORKER_CUDA`; without either it says so
//! and reports nothing. The reference is the CPU worker next to `jarvis` (the default build).
//! Each side: a GPU peer (`--gpu-layers 999`, one slot) answering a device without a model, as
//! in `offload`; the peer's `up` line must name a CUDA device for the GPU side. Figure: tokens/s
//! of streamed answers (median of the rounds), GPU vs CPU (goal ≥ 10).

// `serde_json::Value[...]` with a string key returns `Null` for a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::harness::{Figure, median, sibling};
use crate::llm_local::{PROMPTS, stream_chat};
use crate::offload::{Org, device, jarvis, started};

pub const NAME: &str = "gpu-cuda";

/// Why this machine cannot run it, if it cannot.
fn unavailable() -> Option<String> {
    let Some(worker) = std::env::var_os("JARVIS_LLM_WORKER_CUDA") else {
        return Some(
            "JARVIS_LLM_WORKER_CUDA is not set: build `cargo build --release -p jarvis-llm --features cuda` (CUDA toolkit installed) and name its jarvis-llm-worker".to_owned(),
        );
    };
    if !Path::new(&worker).is_file() {
        return Some(format!(
            "JARVIS_LLM_WORKER_CUDA names {}, which is not a file",
            Path::new(&worker).display()
        ));
    }
    let gpus = std::process::Command::new("nvidia-smi").arg("-L").output();
    match gpus {
        Ok(out) if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("GPU") => {
            None
        }
        _ => Some("no NVIDIA GPU here (`nvidia-smi -L` lists none)".to_owned()),
    }
}

/// Tokens/s of a GPU peer whose engine is `worker`, and the devices it reported.
fn measure(
    runtime: &tokio::runtime::Runtime,
    bin: &Path,
    worker: &Path,
    rounds: usize,
) -> Result<(f64, Vec<String>)> {
    let org = Org::new(bin)?;
    let mut cmd = jarvis(bin, &org.gpu);
    cmd.env("JARVIS_LLM_WORKER", worker).args([
        "gpu",
        "up",
        "--json",
        "--no-mdns",
        "--slots",
        "1",
        "--voice-slots",
        "0",
        "--gpu-layers",
        "999",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
    ]);
    let (_peer, lines) = started(cmd, "listening")?;
    let devices: Vec<String> = lines
        .first()
        .and_then(|up| up["model"]["devices"].as_array())
        .map(|d| {
            d.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let address = lines
        .last()
        .and_then(|l| l["address"].as_str())
        .context("no address")?
        .to_owned();
    let (_device, api) = device(runtime, bin, &org.device, &address)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let speeds = runtime.block_on(async {
        stream_chat(&client, &api.base, api.token.as_deref(), "Hello!", 16).await?;
        let mut speeds = Vec::new();
        for round in 0..rounds {
            let prompt = PROMPTS
                .get(round % PROMPTS.len())
                .copied()
                .unwrap_or("Hello!");
            let run = stream_chat(&client, &api.base, api.token.as_deref(), prompt, 128).await?;
            speeds.push(run.tokens_per_s);
        }
        Ok::<_, anyhow::Error>(speeds)
    })?;
    Ok((median(speeds), devices))
}

pub fn run(quick: bool) -> Result<Vec<Figure>> {
    if let Some(why) = unavailable() {
        eprintln!("gpu-cuda skipped: {why}");
        return Ok(Vec::new());
    }
    let rounds = if quick { 3 } else { 7 };
    let bin = sibling("jarvis")?;
    let cpu_worker = sibling("jarvis-llm-worker")?;
    let cuda_worker = PathBuf::from(std::env::var_os("JARVIS_LLM_WORKER_CUDA").unwrap_or_default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (gpu, devices) = measure(&runtime, &bin, &cuda_worker, rounds)?;
    eprintln!("  the cuda build's GPU peer reports: {devices:?}");
    if !devices.first().is_some_and(|d| d.starts_with("CUDA")) {
        bail!("the cuda build's GPU peer does not report a CUDA device first: {devices:?}");
    }
    let (cpu, _) = measure(&runtime, &bin, &cpu_worker, rounds)?;
    eprintln!("  tokens/s: GPU {gpu:.1}, CPU {cpu:.1}");
    Ok(vec![Figure::compared(
        NAME,
        "tokens-per-second",
        gpu,
        cpu,
        ">= 10",
        "tokens/s",
    )])
}

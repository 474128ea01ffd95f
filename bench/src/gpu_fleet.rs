//! `gpu-fleet`: three GPU peers and thirty devices of thirty users on loopback, every device
//! asking at once (#22): does every answer complete, does the burst spread (no peer with a free
//! slot while another has a queue), and does a spoken question still start at once?
//!
//! Each GPU peer is a real `jarvis gpu up --backend openai=… --slots 2` (and its default place
//! for a spoken turn); behind each is a vLLM-like server of this benchmark, which answers every
//! request with the same timing (first word after [`FIRST_MS`], then one every [`WORD_MS`]):
//! this machine has no GPU, and the figures are about the peers' queues and the devices'
//! choices, not the engine. Each device is a real `jarvis up` without a model, policy `gpu`.
//!
//! Figures:
//! - `voice-ttft-p95`: a spoken question's time to its first word (client side, streamed
//!   `/v1/ask`) while thirty typed questions queue, against the same on the idle fleet in the
//!   same run (goal ≤ 2×);
//! - `typed-completed`: typed answers completed of those asked (goal 1.0);
//! - `idle-slot-share`: until the last typed question started anywhere, the share of the
//!   fleet's typed slot time left idle (percent, the worst burst; goal ≤ 10: a peer idle while
//!   another had a queue counts here).

// `serde_json::Value[...]` with a string key returns `Null` for a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::harness::{Figure, cli_json, sibling};
use crate::offload::{Process, enrol_gpu, jarvis, started};

pub const NAME: &str = "gpu-fleet";
const PEERS: usize = 3;
const DEVICES: usize = 30;
const SLOTS: u32 = 2;
/// The fake server's timing: its first word, then each next one.
const FIRST_MS: u64 = 40;
const WORD_MS: u64 = 20;
const WORDS: usize = 30;

/// An answer the fake server made: its question, when it started and ended.
#[derive(Debug, Clone)]
struct Served {
    question: String,
    start: Instant,
    end: Option<Instant>,
}

type Log = Arc<Mutex<Vec<Served>>>;

fn lock(log: &Log) -> std::sync::MutexGuard<'_, Vec<Served>> {
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A vLLM-like server on loopback: `/v1/models`, `/metrics` (the answers it is making),
/// streamed `/v1/chat/completions`. Returns its URL and its log.
async fn fake_server() -> Result<(String, Log)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let log: Log = Arc::default();
    let running = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let served = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (served, running) = (Arc::clone(&served), Arc::clone(&running));
            tokio::spawn(async move {
                let _ = serve(stream, &served, &running).await;
            });
        }
    });
    Ok((url, log))
}

async fn serve(
    stream: tokio::net::TcpStream,
    log: &Log,
    running: &std::sync::atomic::AtomicU32,
) -> Result<()> {
    use std::sync::atomic::Ordering;
    let (read, mut out) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length.min(1 << 20)];
    reader.read_exact(&mut body).await?;
    let reply = |kind: &str, body: String| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    match request_line.split(' ').nth(1).unwrap_or("") {
        "/v1/models" => {
            let models =
                json!({ "object": "list", "data": [{ "id": "fleet-model", "object": "model" }] });
            out.write_all(reply("application/json", models.to_string()).as_bytes())
                .await?;
        }
        "/metrics" => {
            let metrics = format!(
                "vllm:num_requests_running{{model_name=\"m\"}} {}.0\nvllm:num_requests_waiting{{model_name=\"m\"}} 0.0\n",
                running.load(Ordering::SeqCst)
            );
            out.write_all(reply("text/plain", metrics).as_bytes())
                .await?;
        }
        "/v1/chat/completions" => {
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let question = body["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .unwrap_or_default()
                .to_owned();
            let at = {
                let mut log = lock(log);
                log.push(Served {
                    question,
                    start: Instant::now(),
                    end: None,
                });
                log.len() - 1
            };
            running.fetch_add(1, Ordering::SeqCst);
            let streamed = async {
                out.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
                )
                .await?;
                tokio::time::sleep(Duration::from_millis(FIRST_MS)).await;
                for i in 0..WORDS {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(WORD_MS)).await;
                    }
                    let chunk = json!({ "choices": [{ "index": 0, "delta": { "content": format!(" w{i}") }, "finish_reason": null }] });
                    out.write_all(format!("data: {chunk}\n\n").as_bytes())
                        .await?;
                }
                let end = json!({ "choices": [{ "index": 0, "delta": {}, "finish_reason": "stop" }], "usage": { "prompt_tokens": 10, "completion_tokens": WORDS } });
                out.write_all(format!("data: {end}\n\ndata: [DONE]\n\n").as_bytes())
                    .await?;
                Ok::<_, std::io::Error>(())
            }
            .await;
            running.fetch_sub(1, Ordering::SeqCst);
            if let Some(s) = lock(log).get_mut(at) {
                s.end = Some(Instant::now());
            }
            streamed?;
        }
        _ => {
            out.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await?;
        }
    }
    Ok(())
}

/// A device's API.
struct Device {
    base: String,
    token: String,
}

/// Asks `device` a question (spoken or typed), streamed; the time to its first word, or an
/// error if it did not complete.
async fn ask(client: &reqwest::Client, device: &Device, text: &str, spoken: bool) -> Result<f64> {
    let timings = if spoken {
        json!({ "wake_ms": 3 })
    } else {
        json!({})
    };
    let start = Instant::now();
    let mut response = client
        .post(format!("{}/v1/ask", device.base))
        .bearer_auth(&device.token)
        .json(&json!({ "text": text, "stream": true, "timings_ms": timings }))
        .send()
        .await?
        .error_for_status()?;
    let mut first = None;
    let mut buffer = String::new();
    let mut done = None;
    while let Some(chunk) = response.chunk().await? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if event.contains("event: token") {
                first.get_or_insert_with(Instant::now);
            }
            if event.contains("event: done") {
                let data = event
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap_or("{}");
                done = Some(serde_json::from_str::<Value>(data).unwrap_or(Value::Null));
            }
        }
    }
    let done = done.context("the answer did not end")?;
    if done["status"] != "done" {
        bail!("the answer failed: {done}");
    }
    let first = first.context("no words came back")?;
    Ok(first.duration_since(start).as_secs_f64() * 1_000.0)
}

fn p95(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let at = ((xs.len() as f64) * 0.95).ceil() as usize;
    xs.get(at.saturating_sub(1).min(xs.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// The org: an admin, the GPU peers' homes and the devices' homes.
fn org(bin: &Path, dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let admin = dir.join("admin");
    cli_json(bin, &admin, &["admin", "init", "--org", "fleet"])?;
    let mut gpus = Vec::new();
    for i in 0..PEERS {
        let home = dir.join(format!("gpu-{i}"));
        enrol_gpu(bin, &admin, &home, &format!("gpu-{i}"))?;
        gpus.push(home);
    }
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let invite = cli_json(bin, &admin, &["admin", "invite", &format!("user{i}")])?;
        let token = invite["token"].as_str().context("no invite")?.to_owned();
        let home = dir.join(format!("device-{i}"));
        cli_json(
            bin,
            &home,
            &["join", &token, "--device-name", &format!("device-{i}")],
        )?;
        devices.push(home);
    }
    Ok((gpus, devices))
}

pub fn run(quick: bool) -> Result<Vec<Figure>> {
    let bursts = if quick { 1 } else { 3 };
    let bin = sibling("jarvis")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    eprintln!("setting up an org of {PEERS} GPU peers and {DEVICES} devices…");
    let (gpu_homes, device_homes) = org(&bin, dir.path())?;
    let mut logs = Vec::new();
    let mut processes: Vec<Process> = Vec::new();
    let mut addresses = Vec::new();
    for home in &gpu_homes {
        let (url, log) = runtime.block_on(fake_server())?;
        logs.push(log);
        let mut cmd = jarvis(&bin, home);
        cmd.args([
            "gpu",
            "up",
            "--json",
            "--no-mdns",
            "--backend",
            &format!("openai={url}/v1"),
            "--slots",
            &SLOTS.to_string(),
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ]);
        let (process, lines) = started(cmd, "listening")?;
        processes.push(process);
        addresses.push(
            lines
                .last()
                .and_then(|l| l["address"].as_str())
                .context("no address")?
                .to_owned(),
        );
    }
    let mut devices = Vec::new();
    for home in &device_homes {
        let mut cmd = jarvis(&bin, home);
        cmd.env("JARVIS_MODELS", "/nonexistent/jarvis-models")
            .args([
                "up",
                "--json",
                "--no-mdns",
                "--no-voice",
                "--api",
                "127.0.0.1:0",
                "--listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
            ]);
        for address in &addresses {
            cmd.args(["--peer", address]);
        }
        let (process, lines) = started(cmd, "up")?;
        processes.push(process);
        let api = lines
            .last()
            .and_then(|up| up["api"].as_str())
            .context("no API address")?
            .to_owned();
        let token = jarvis(&bin, home).arg("token").output()?;
        devices.push(Device {
            base: format!("http://{api}"),
            token: String::from_utf8_lossy(&token.stdout).trim().to_owned(),
        });
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    runtime.block_on(async {
        for device in &devices {
            client
                .put(format!("{}/v1/settings", device.base))
                .bearer_auth(&device.token)
                .json(&json!({ "offload": "gpu" }))
                .send()
                .await?
                .error_for_status()?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    for home in &device_homes {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = cli_json(&bin, home, &["status"])?;
            let ready = status["offload"]["gpu_peers"]
                .as_array()
                .map_or(0, |peers| {
                    peers.iter().filter(|p| p["ready"] == true).count()
                });
            if ready == PEERS {
                break;
            }
            if Instant::now() > deadline {
                bail!("a device never saw every GPU peer ready: {status}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    eprintln!("the idle fleet: spoken questions one at a time…");
    let idle: Vec<f64> = runtime.block_on(async {
        let mut out = Vec::new();
        for (i, device) in devices.iter().enumerate().take(if quick { 10 } else { 20 }) {
            out.push(ask(&client, device, &format!("Idle spoken question {i}"), true).await?);
        }
        Ok::<_, anyhow::Error>(out)
    })?;

    let mut loaded = Vec::new();
    let (mut asked, mut completed) = (0usize, 0usize);
    let mut idle_share = Vec::new();
    for burst in 0..bursts {
        eprintln!(
            "burst {}: {DEVICES} typed questions at once, spoken ones while they queue…",
            burst + 1
        );
        for log in &logs {
            lock(log).clear();
        }
        let (typed, spoken) = runtime.block_on(async {
            let typed: Vec<_> = devices
                .iter()
                .enumerate()
                .map(|(i, device)| {
                    let client = client.clone();
                    let device = Device {
                        base: device.base.clone(),
                        token: device.token.clone(),
                    };
                    tokio::spawn(async move {
                        ask(
                            &client,
                            &device,
                            &format!("Typed question {burst}-{i}"),
                            false,
                        )
                        .await
                    })
                })
                .collect();
            // Once the typed questions fill every peer, one spoken question every 150 ms from
            // ten devices, while the queues drain.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut spoken = Vec::new();
            for (i, device) in devices.iter().enumerate().take(10) {
                let client = client.clone();
                let device = Device {
                    base: device.base.clone(),
                    token: device.token.clone(),
                };
                spoken.push(tokio::spawn(async move {
                    ask(
                        &client,
                        &device,
                        &format!("Spoken question {burst}-{i}"),
                        true,
                    )
                    .await
                }));
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            let mut typed_out = Vec::new();
            for t in typed {
                typed_out.push(t.await?);
            }
            let mut spoken_out = Vec::new();
            for s in spoken {
                spoken_out.push(s.await??);
            }
            Ok::<_, anyhow::Error>((typed_out, spoken_out))
        })?;
        asked += typed.len();
        completed += typed.iter().filter(|t| t.is_ok()).count();
        for failure in typed.iter().filter_map(|t| t.as_ref().err()).take(3) {
            eprintln!("  a typed question failed: {failure:#}");
        }
        loaded.extend(spoken);
        let timelines: Vec<Vec<Served>> = logs.iter().map(|l| lock(l).clone()).collect();
        idle_share.push(idle_slot_share(&timelines));
        eprintln!(
            "  answers per peer {:?}; typed slot time idle before the last typed start: {:.1} %",
            timelines
                .iter()
                .map(|t| t.iter().filter(|s| s.question.starts_with("Typed")).count())
                .collect::<Vec<_>>(),
            idle_share.last().copied().unwrap_or(0.0) * 100.0
        );
    }
    drop(processes);
    let (idle_p95, loaded_p95) = (p95(idle), p95(loaded));
    eprintln!(
        "  spoken first word p95: idle fleet {idle_p95:.1} ms, with {DEVICES} typed questions queued {loaded_p95:.1} ms"
    );
    Ok(vec![
        Figure::compared(NAME, "voice-ttft-p95", loaded_p95, idle_p95, "<= 2", "ms"),
        Figure {
            bench: NAME,
            metric: "typed-completed",
            ours: completed as f64 / asked.max(1) as f64,
            reference: None,
            ratio: None,
            goal: Some(">= 1".to_owned()),
            unit: "share",
        },
        Figure {
            bench: NAME,
            metric: "idle-slot-share",
            ours: idle_share.iter().copied().fold(0.0, f64::max) * 100.0,
            reference: None,
            ratio: None,
            goal: Some("<= 10".to_owned()),
            unit: "%",
        },
    ])
}

/// Until the last typed question started anywhere (while some typed question still waited),
/// the share of the fleet's typed slot time (`SLOTS` per peer) that no answer used: sampled
/// every millisecond, a peer running fewer than `SLOTS` answers (typed or spoken) has that
/// many idle.
fn idle_slot_share(timelines: &[Vec<Served>]) -> f64 {
    let typed = || {
        timelines
            .iter()
            .flatten()
            .filter(|s| s.question.starts_with("Typed"))
    };
    let (Some(first), Some(last)) = (
        typed().map(|s| s.start).min(),
        typed().map(|s| s.start).max(),
    ) else {
        return 0.0;
    };
    let step = Duration::from_millis(1);
    let (mut idle, mut total) = (0u64, 0u64);
    let mut t = first;
    while t < last {
        for served in timelines {
            let running = served
                .iter()
                .filter(|s| s.start <= t && s.end.is_none_or(|end| end > t))
                .count();
            idle += u64::from(SLOTS).saturating_sub(running as u64);
            total += u64::from(SLOTS);
        }
        t += step;
    }
    if total == 0 {
        return 0.0;
    }
    idle as f64 / total as f64
}

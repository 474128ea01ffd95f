//! `offload`: an answer through a GPU peer, over QUIC on loopback, against the same engine asked
//! directly, in the same run, for both kinds of backend:
//!
//! - **third-party**: llama.cpp's own `llama-server` (built by `ensure_llama_server`, found
//!   through `JARVIS_LLAMA_SERVER`). Reference: a streamed `/v1/chat/completions` straight to
//!   it. Ours: the same request to a device without a model (`/v1/chat/completions`, policy
//!   `gpu`), which sends it to a GPU peer (`jarvis gpu up --backend openai=…`) fronting that
//!   very server.
//! - **built-in**: reference, a `jarvis up` node answering with its own engine; ours, a device
//!   without a model answered by a GPU peer running the same engine (`jarvis gpu up`).
//!
//! Both sides use the default SmolLM2, greedy sampling, one slot, two threads; rounds interleave
//! ours and the reference with a new prompt each (seven long answers for tokens/s, sixty-one
//! two-token ones for the first token); each figure is the median of per-round figures. Goals (#22): tokens/s ≥ 0.95× the reference, time to first token at most 5 ms more.

// `serde_json::Value[...]` with a string key returns `Null` for a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jarvis_inference::models::{DEFAULT_LLM, ModelStore};
use serde_json::Value;

use crate::harness::{Figure, PASSPHRASE, cli_json, interrupt, median, sibling};
use crate::llm_local::{PROMPTS, Run, stream_chat};

pub const NAME: &str = "offload";
const THREADS: &str = "2";

/// A child process stopped (SIGINT) when dropped.
pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        interrupt(&mut self.0);
    }
}

pub(crate) fn jarvis(bin: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env("JARVIS_PASSPHRASE", PASSPHRASE)
        .env("JARVIS_KDF_WORK_FACTOR", "10")
        .env("JARVIS_LLM_THREADS", THREADS)
        .env("JARVIS_LLM_SLOTS", "1")
        .env_remove("JARVIS_MODEL")
        .arg("--home")
        .arg(home);
    cmd
}

/// Runs `cmd` and reads its first JSON lines up to (and including) the one whose `event` is
/// `until`; returns the process and those lines.
pub(crate) fn started(mut cmd: Command, until: &str) -> Result<(Process, Vec<Value>)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting a process")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let process = Process(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines.next().context("it ended before starting")??;
        let value: Value = serde_json::from_str(&line).context("not JSON")?;
        let done = value["event"] == until;
        seen.push(value);
        if done {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    Ok((process, seen))
}

/// The org: an admin, a GPU peer's enrolled home, and a device's (a user's first).
pub(crate) struct Org {
    _dir: tempfile::TempDir,
    pub(crate) gpu: PathBuf,
    pub(crate) device: PathBuf,
}

/// Enrols a GPU peer `name` of the org of `admin` in `home` (request, enrol, install).
pub(crate) fn enrol_gpu(bin: &Path, admin: &Path, home: &Path, name: &str) -> Result<()> {
    let request = cli_json(bin, home, &["gpu", "request", "--name", name])?;
    let request = request["request"]
        .as_str()
        .context("no request")?
        .to_owned();
    let bundle = cli_json(
        bin,
        admin,
        &["admin", "enroll", "--request", &request, "--role", "gpu"],
    )?;
    let bundle = bundle["bundle"].as_str().context("no bundle")?.to_owned();
    cli_json(bin, home, &["gpu", "install", &bundle])?;
    Ok(())
}

impl Org {
    pub(crate) fn new(bin: &Path) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let admin = dir.path().join("admin");
        cli_json(bin, &admin, &["admin", "init", "--org", "bench"])?;
        let gpu = dir.path().join("gpu");
        enrol_gpu(bin, &admin, &gpu, "gpu-1")?;
        let invite = cli_json(bin, &admin, &["admin", "invite", "ann"])?;
        let token = invite["token"].as_str().context("no invite")?.to_owned();
        let device = dir.path().join("laptop");
        cli_json(bin, &device, &["join", &token, "--device-name", "laptop"])?;
        Ok(Self {
            _dir: dir,
            gpu,
            device,
        })
    }
}

/// A running API to ask: its base URL and bearer token.
pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) token: Option<String>,
}

/// The device, without a model, its answers sent to the GPU peer at `peer`.
pub(crate) fn device(
    runtime: &tokio::runtime::Runtime,
    bin: &Path,
    home: &Path,
    peer: &str,
) -> Result<(Process, Api)> {
    let mut cmd = jarvis(bin, home);
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
            "--peer",
            peer,
        ]);
    let (process, lines) = started(cmd, "up")?;
    let api = lines
        .last()
        .and_then(|up| up["api"].as_str())
        .context("no API address")?
        .to_owned();
    let token = jarvis(bin, home).arg("token").output()?;
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    runtime.block_on(async {
        reqwest::Client::new()
            .put(format!("http://{api}/v1/settings"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "offload": "gpu" }))
            .send()
            .await?
            .error_for_status()
    })?;
    // Until the device has the GPU peer's load report.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = cli_json(bin, home, &["status"])?;
        let ready = status["offload"]["gpu_peers"]
            .as_array()
            .is_some_and(|peers| peers.iter().any(|p| p["ready"] == true));
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("the device never saw the GPU peer ready: {status}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok((
        process,
        Api {
            base: format!("http://{api}"),
            token: Some(token),
        },
    ))
}

/// `jarvis gpu up` with `extra` arguments; its QUIC address.
fn gpu_peer(bin: &Path, home: &Path, extra: &[&str]) -> Result<(Process, String)> {
    let mut cmd = jarvis(bin, home);
    cmd.args([
        "gpu",
        "up",
        "--json",
        "--no-mdns",
        "--slots",
        "1",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
    ])
    .args(extra);
    let (process, lines) = started(cmd, "listening")?;
    let address = lines
        .last()
        .and_then(|l| l["address"].as_str())
        .context("no address")?
        .to_owned();
    Ok((process, address))
}

/// llama.cpp's `llama-server` with the default model, one slot, on a free port.
fn llama_server(runtime: &tokio::runtime::Runtime, model: &Path) -> Result<(Process, Api)> {
    let binary = std::env::var_os("JARVIS_LLAMA_SERVER")
        .map(PathBuf::from)
        .context("JARVIS_LLAMA_SERVER is not set: `source scripts/common.sh && ensure_llama_server` builds llama.cpp's llama-server and sets it")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(&binary)
        .arg("-m")
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--alias",
            DEFAULT_LLM,
            "-np",
            "1",
            "-c",
            "4096",
            "-t",
            THREADS,
        ])
        // AMX weight repacking crashes where a VM reports AMX without enabling it.
        .arg("--no-repack")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let process = Process(child);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let healthy = || {
        runtime.block_on(async {
            reqwest::get(format!("{base}/health"))
                .await
                .is_ok_and(|r| r.status().is_success())
        })
    };
    while !healthy() {
        if Instant::now() > deadline {
            bail!("llama-server did not load its model");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok((process, Api { base, token: None }))
}

/// Rounds of one prompt each, ours and the reference in turn (alternating which goes first).
async fn rounds(
    ours: &Api,
    reference: &Api,
    tag: &str,
    rounds: usize,
    max_tokens: u32,
) -> Result<(Vec<Run>, Vec<Run>)> {
    // A connection per request (loopback: a fraction of a millisecond, alike for both sides):
    // a pooled connection the node closed after a stream would fail the next request.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let run = |api: &Api, prompt: &str| {
        let client = client.clone();
        let base = api.base.clone();
        let token = api.token.clone();
        let prompt = prompt.to_owned();
        async move { stream_chat(&client, &base, token.as_deref(), &prompt, max_tokens).await }
    };
    // Warm both.
    run(ours, "Hello!").await?;
    run(reference, "Hello!").await?;
    let (mut o, mut r) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let prompt = PROMPTS
            .get(round % PROMPTS.len())
            .copied()
            .unwrap_or("Hello!");
        // Each request its own opening words: with llama-server behind the GPU peer both sides
        // share one server, and the second to send a prompt would find it in the server's
        // prompt cache and answer its first token several times sooner.
        let (mine, theirs) = (
            format!("{tag} {round}-A. {prompt}"),
            format!("{tag} {round}-B. {prompt}"),
        );
        if round % 2 == 0 {
            o.push(run(ours, &mine).await?);
            r.push(run(reference, &theirs).await?);
        } else {
            r.push(run(reference, &theirs).await?);
            o.push(run(ours, &mine).await?);
        }
    }
    Ok((o, r))
}

/// How many rounds of each kind, and how long the answers of the speed rounds are.
struct Plan {
    speed: usize,
    max_tokens: u32,
    first: usize,
}

impl Plan {
    /// A few long answers for tokens/s; many short ones for the first token. One round's
    /// difference in first-token time spreads over ±15 ms on two shared cores (the prompt's
    /// evaluation is ~80 ms of the server's two threads), so seven rounds gave medians from
    /// 0.1 to 8.8 ms over runs of one build; a median of a few milliseconds needs dozens.
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                speed: 3,
                max_tokens: 48,
                first: 9,
            }
        } else {
            Self {
                speed: 7,
                max_tokens: 128,
                first: 61,
            }
        }
    }

    /// Both kinds of rounds: (speed, first token), each (ours, reference).
    fn measure(
        &self,
        runtime: &tokio::runtime::Runtime,
        ours: &Api,
        reference: &Api,
    ) -> Result<Measured> {
        let speed = runtime.block_on(rounds(
            ours,
            reference,
            "Speed",
            self.speed,
            self.max_tokens,
        ))?;
        let first = runtime.block_on(rounds(ours, reference, "First", self.first, 2))?;
        Ok(Measured { speed, first })
    }
}

/// One backend's rounds: (ours, reference) for each figure.
struct Measured {
    speed: (Vec<Run>, Vec<Run>),
    first: (Vec<Run>, Vec<Run>),
}

/// The figures of one backend: tokens/s (ratio, the median of the per-round ratios) and the
/// time to first token added by the GPU peer (absolute: the median of per-round differences).
fn figures(
    tokens_metric: &'static str,
    ttft_metric: &'static str,
    measured: &Measured,
) -> Vec<Figure> {
    let (ours, reference) = (&measured.speed.0, &measured.speed.1);
    let mut speed = Figure::compared(
        NAME,
        tokens_metric,
        median(ours.iter().map(|r| r.tokens_per_s).collect()),
        median(reference.iter().map(|r| r.tokens_per_s).collect()),
        ">= 0.95",
        "tokens/s",
    );
    speed.ratio = Some(median(
        ours.iter()
            .zip(reference)
            .map(|(o, r)| o.tokens_per_s / r.tokens_per_s)
            .collect(),
    ));
    let (ours, reference) = (&measured.first.0, &measured.first.1);
    let added = median(
        ours.iter()
            .zip(reference)
            .map(|(o, r)| o.ttft_ms - r.ttft_ms)
            .collect(),
    );
    let ttft = Figure {
        bench: NAME,
        metric: ttft_metric,
        ours: added,
        reference: None,
        ratio: None,
        goal: Some("<= 5".to_owned()),
        unit: "ms added",
    };
    let reference_ttft = median(reference.iter().map(|r| r.ttft_ms).collect());
    eprintln!(
        "  {tokens_metric}: ours {:.1}, reference {:.1} tokens/s; first token: reference {reference_ttft:.1} ms, the GPU peer adds {added:.1} ms",
        speed.ours,
        speed.reference.unwrap_or(f64::NAN)
    );
    vec![speed, ttft]
}

pub fn run(quick: bool) -> Result<Vec<Figure>> {
    let plan = Plan::new(quick);
    let model = ModelStore::from_env()?.path(DEFAULT_LLM)?;
    if !model.is_file() {
        bail!("{} is missing: run `jarvis models pull`", model.display());
    }
    let bin = sibling("jarvis")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut out = Vec::new();

    eprintln!("third-party backend (llama.cpp's llama-server):");
    {
        let org = Org::new(&bin)?;
        let (_server, direct) = llama_server(&runtime, &model)?;
        let backend = format!("openai={}/v1", direct.base);
        let (_gpu, address) = gpu_peer(&bin, &org.gpu, &["--backend", &backend])?;
        let (_device, through) = device(&runtime, &bin, &org.device, &address)?;
        let measured = plan.measure(&runtime, &through, &direct)?;
        out.extend(figures(
            "thirdparty-tokens-per-second",
            "thirdparty-ttft-added",
            &measured,
        ));
    }

    eprintln!("built-in backend (a node's own engine as the reference):");
    {
        let org = Org::new(&bin)?;
        let (_gpu, address) = gpu_peer(&bin, &org.gpu, &[])?;
        let (_device, through) = device(&runtime, &bin, &org.device, &address)?;
        let local = crate::llm_local::Node::start(&bin)?;
        let direct = Api {
            base: format!("http://{}", local.api),
            token: Some(local.token.clone()),
        };
        let measured = plan.measure(&runtime, &through, &direct)?;
        out.extend(figures(
            "builtin-tokens-per-second",
            "builtin-ttft-added",
            &measured,
        ));
    }
    Ok(out)
}

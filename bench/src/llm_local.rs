//! `llm-local`: the local engine against llama-cpp-2 called directly, on the same model (the
//! default SmolLM2), prompt, greedy sampling and thread count, in the same run:
//!
//! - reference: `jarvis-llm-worker direct`, llama-cpp-2's textbook loop in one process, timed
//!   inside it (no protocol, no process boundary);
//! - ours: the node's engine (`jarvis_inference::supervisor` → worker process → continuous
//!   batching engine), timed from the caller's side: submission to first token, and tokens per
//!   second over the generation;
//! - ours through the HTTP API: a `jarvis up` node, a streamed `/v1/chat/completions`, timed by
//!   the client from sending the request to the first content chunk.
//!
//! Rounds interleave the three, each round with its own prompt; each figure's ratio is the median
//! of the per-round ratios. A fourth figure repeats each round's prompt on the engine at once,
//! which it answers from its prefix cache: what a follow-up in a conversation gets.

// `serde_json::Value[...]` with a string key returns `Null` for a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jarvis_inference::metrics::EngineMetrics;
use jarvis_inference::models::{DEFAULT_LLM, ModelStore};
use jarvis_inference::protocol::{ChatMessage, Sampling};
use jarvis_inference::supervisor::{
    EngineConfig, EngineHandle, EngineState, LLM_WORKER, Request, Update, find_worker,
};
use serde_json::{Value, json};

use crate::harness::{Figure, median, sibling};

pub const NAME: &str = "llm-local";

/// One prompt per round, each starting differently: the engine keeps what a slot has read and
/// reuses a shared start (the reference cannot), so repeating one prompt would flatter it. The
/// `cached` figure measures that reuse on purpose.
pub(crate) const PROMPTS: &[&str] = &[
    "Write a short story about a dragon who learns to fly.",
    "Tell me a short story about a robot who paints.",
    "Describe a day in the life of a lighthouse keeper.",
    "Invent a fable about a fox and a river.",
    "Explain how bread is made, step by step.",
    "Compose a short tale of a sailor lost at sea.",
    "Imagine a city on the moon and describe it.",
];
const THREADS: u32 = 2;

/// One measurement: time to first token (ms) and tokens per second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) ttft_ms: f64,
    pub(crate) tokens_per_s: f64,
    pub(crate) tokens: u64,
}

fn direct(worker: &Path, model: &Path, prompt: &str, max_tokens: u32) -> Result<Run> {
    // Two runs in one process: the first warms the caches (as the engine and node are warm).
    let out = Command::new(worker)
        .args(["direct", "--model"])
        .arg(model)
        .args(["--prompt", prompt, "--max-tokens", &max_tokens.to_string()])
        .args(["--threads", &THREADS.to_string(), "--runs", "2"])
        .output()
        .context("running the direct reference")?;
    if !out.status.success() {
        bail!(
            "the direct reference failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(str::to_owned)
        .context("the direct reference printed nothing")?;
    let v: Value = serde_json::from_str(&last)?;
    Ok(Run {
        ttft_ms: v["ttft_ms"].as_f64().unwrap_or(0.0),
        tokens_per_s: v["tokens_per_s"].as_f64().unwrap_or(0.0),
        tokens: v["tokens"].as_u64().unwrap_or(0),
    })
}

async fn engine_run(engine: &EngineHandle, prompt: &str, max_tokens: u32) -> Result<Run> {
    let request = Request {
        client: "bench".into(),
        messages: vec![ChatMessage::new("user", prompt)],
        sampling: Sampling {
            max_tokens,
            temperature: 0.0,
            ..Sampling::default()
        },
        prefix: String::new(),
        voice: false,
        traceparent: None,
    };
    let mut generation = engine.submit(request).await?;
    while let Some(update) = generation.updates.recv().await {
        match update {
            Update::Done(summary) => {
                return Ok(Run {
                    ttft_ms: summary.ttft.as_secs_f64() * 1000.0,
                    tokens_per_s: summary.tokens_per_second(),
                    tokens: u64::from(summary.completion_tokens),
                });
            }
            Update::Failed { message, .. } => bail!("the engine failed: {message}"),
            _ => {}
        }
    }
    bail!("the engine stopped")
}

/// A `jarvis up` node on a throwaway home.
pub(crate) struct Node {
    child: Child,
    _home: tempfile::TempDir,
    pub(crate) api: String,
    pub(crate) token: String,
}

impl Node {
    pub(crate) fn start(jarvis: &Path) -> Result<Self> {
        let home = tempfile::tempdir()?;
        let mut child = Command::new(jarvis)
            .env("JARVIS_PASSPHRASE", "bench")
            .env("JARVIS_KDF_WORK_FACTOR", "10")
            .env("JARVIS_LLM_THREADS", THREADS.to_string())
            .env("JARVIS_LLM_SLOTS", "1")
            .env_remove("JARVIS_MODEL")
            .arg("--home")
            .arg(home.path())
            .args([
                "up",
                "--json",
                "--no-mdns",
                "--api",
                "127.0.0.1:0",
                "--listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting jarvis up")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first)?;
        let up: Value = serde_json::from_str(&first).context("jarvis up did not start")?;
        if up["model"]["state"] != "ready" {
            bail!("the node's model is not ready: {up}");
        }
        let token = Command::new(jarvis)
            .arg("--home")
            .arg(home.path())
            .arg("token")
            .output()?;
        Ok(Self {
            child,
            _home: home,
            api: up["api"].as_str().unwrap_or_default().to_owned(),
            token: String::from_utf8_lossy(&token.stdout).trim().to_owned(),
        })
    }

    async fn run(&self, client: &reqwest::Client, prompt: &str, max_tokens: u32) -> Result<Run> {
        let base = format!("http://{}", self.api);
        stream_chat(client, &base, Some(&self.token), prompt, max_tokens).await
    }
}

/// A streamed `/v1/chat/completions` of the default model at `base` (a node, or any
/// OpenAI-compatible server), greedy: time to the first content chunk and tokens per second.
pub(crate) async fn stream_chat(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    prompt: &str,
    max_tokens: u32,
) -> Result<Run> {
    let body = json!({
        "model": DEFAULT_LLM, "stream": true, "temperature": 0, "max_tokens": max_tokens,
        "stream_options": { "include_usage": true },
        "messages": [{ "role": "user", "content": prompt }],
    });
    let start = Instant::now();
    let mut request = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let mut response = request.send().await?.error_for_status()?;

    let mut first: Option<Instant> = None;
    let mut last = start;
    let mut tokens = 0u64;
    let mut buffer = String::new();
    while let Some(chunk) = response.chunk().await? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data)?;
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = n;
            }
            if v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
            {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
            }
        }
    }
    let first = first.context("no text came back")?;
    let generation = last.duration_since(first).as_secs_f64();
    Ok(Run {
        ttft_ms: first.duration_since(start).as_secs_f64() * 1000.0,
        tokens_per_s: if generation > 0.0 {
            tokens.saturating_sub(1) as f64 / generation
        } else {
            0.0
        },
        tokens,
    })
}

impl Drop for Node {
    fn drop(&mut self) {
        crate::harness::interrupt(&mut self.child);
        let mut rest = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut rest);
        }
    }
}

pub fn run(quick: bool) -> Result<Vec<Figure>> {
    let rounds = if quick { 3 } else { 7 };
    let max_tokens = if quick { 48 } else { 128 };
    let model = ModelStore::from_env()?.path(DEFAULT_LLM)?;
    if !model.is_file() {
        bail!("{} is missing: run `jarvis models pull`", model.display());
    }
    let worker = find_worker(LLM_WORKER, "JARVIS_LLM_WORKER").map_err(anyhow::Error::msg)?;
    let jarvis = sibling("jarvis")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut config = EngineConfig::new(worker.clone(), model.clone(), DEFAULT_LLM.to_owned());
        config.slots = 1;
        config.threads = Some(THREADS);
        let engine = EngineHandle::start(config, EngineMetrics::default());
        if let EngineState::Failed(problem) = engine.wait_ready(Duration::from_secs(60)).await {
            bail!("the engine did not start: {problem}");
        }
        let node = Node::start(&jarvis)?;
        let client = reqwest::Client::new();
        // Warm both up once.
        engine_run(&engine, "Hello!", 8).await?;
        node.run(&client, "Hello!", 8).await?;
        let (mut d, mut e, mut a, mut c) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let prompt = PROMPTS
                .get(round % PROMPTS.len())
                .copied()
                .unwrap_or("Hello!");
            d.push(direct(&worker, &model, prompt, max_tokens)?);
            e.push(engine_run(&engine, prompt, max_tokens).await?);
            a.push(node.run(&client, prompt, max_tokens).await?);
            // The same prompt again at once: all but its last token is in the slot's cache.
            c.push(engine_run(&engine, prompt, max_tokens).await?);
        }
        engine.shutdown().await;
        drop(node);
        for (round, ((d, e), a)) in d.iter().zip(&e).zip(&a).enumerate() {
            if d.tokens != e.tokens || d.tokens != a.tokens {
                eprintln!(
                    "note: round {round}: token counts differ: direct {}, engine {}, api {}",
                    d.tokens, e.tokens, a.tokens
                );
            }
        }
        // Prompts differ between rounds: each ratio is taken within its round, then the median.
        let figure = |metric: &'static str,
                      ours: &[Run],
                      f: fn(&Run) -> f64,
                      goal: &str,
                      unit: &'static str| {
            let mut figure = Figure::compared(
                NAME,
                metric,
                median(ours.iter().map(f).collect()),
                median(d.iter().map(f).collect()),
                goal,
                unit,
            );
            figure.ratio = Some(median(
                ours.iter().zip(&d).map(|(o, r)| f(o) / f(r)).collect(),
            ));
            figure
        };
        Ok(vec![
            figure("time-to-first-token", &e, |r| r.ttft_ms, "<= 1.05", "ms"),
            figure(
                "tokens-per-second",
                &e,
                |r| r.tokens_per_s,
                ">= 0.97",
                "tokens/s",
            ),
            figure(
                "api-time-to-first-token",
                &a,
                |r| r.ttft_ms,
                "<= 1.10",
                "ms",
            ),
            figure(
                "api-tokens-per-second",
                &a,
                |r| r.tokens_per_s,
                ">= 0.95",
                "tokens/s",
            ),
            figure("cached-time-to-first-token", &c, |r| r.ttft_ms, "< 1", "ms"),
        ])
    })
}

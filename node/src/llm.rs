//! The node's local language model: which model and which worker program.
//!
//! `JARVIS_MODEL` picks the model (a catalog name or an imported one; default
//! [`DEFAULT_LLM`]); `JARVIS_MODELS` the cache directory; `JARVIS_LLM_WORKER` the worker
//! program (default: next to `jarvis`, else on `PATH`); `JARVIS_LLM_THREADS` and
//! `JARVIS_LLM_SLOTS` its threads and concurrent requests.

use jarvis_inference::metrics::EngineMetrics;
use jarvis_inference::models::{DEFAULT_LLM, ModelStore};
use jarvis_inference::supervisor::{
    EngineConfig, EngineHandle, EngineState, LLM_WORKER, find_worker,
};
use serde_json::{Value, json};

/// The model `jarvis up` and `jarvis ask` use.
pub fn model_name() -> String {
    std::env::var("JARVIS_MODEL")
        .ok()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| DEFAULT_LLM.to_owned())
}

fn env_number<T: std::str::FromStr>(var: &str) -> Option<T> {
    std::env::var(var).ok().and_then(|v| v.parse().ok())
}

/// Starts the engine for this machine's model (it reports a clear problem, rather than failing
/// here, when the model or the worker is missing: the node runs without answers then).
pub fn start_engine(metrics: EngineMetrics) -> EngineHandle {
    start_engine_with(metrics, None)
}

/// [`start_engine`], with `threads` unless `JARVIS_LLM_THREADS` says otherwise.
///
/// The engine of a user's machine runs at a lower CPU priority ([`LOCAL_NICE`], or
/// `JARVIS_LLM_NICE`): on two cores, Piper synthesising an answer's first sentence while the
/// model writes the next one took 130–300 ms instead of 80–95, and that sentence is what the user
/// waits for. `jarvis-bench voice-turn` p50 went from 527 and 541 ms to 508 and 493 ms (two runs
/// each, alternating).
pub fn start_engine_with(metrics: EngineMetrics, threads: Option<u32>) -> EngineHandle {
    let nice = env_number("JARVIS_LLM_NICE").unwrap_or(LOCAL_NICE);
    start(metrics, None, threads, None, nice)
}

/// How much lower the local engine's CPU priority is than the node's (a `nice` value).
pub const LOCAL_NICE: i32 = 10;

/// The engine of a GPU peer: `model` (a GGUF file; default as for `jarvis up`) with `slots`
/// requests at once and `voice_slots` more for spoken turns only, `ctx` tokens of context each, `gpu_layers` of the model on the GPU (in a
/// GPU build of the worker).
pub fn start_gpu_engine(
    metrics: EngineMetrics,
    model: Option<std::path::PathBuf>,
    slots: Option<u32>,
    voice_slots: u32,
    ctx: Option<u32>,
    gpu_layers: Option<u32>,
) -> EngineHandle {
    // A GPU peer's engine is its main work: normal priority.
    start_configured(metrics, model, None, slots, 0, |config| {
        // The worker runs the typed slots and the places kept for spoken turns.
        config.voice_slots = voice_slots.min(64);
        config.slots = config.slots.saturating_add(config.voice_slots).min(64);
        if let Some(ctx) = ctx {
            config.ctx_per_slot = ctx;
        }
        config.gpu_layers = gpu_layers;
    })
}

fn start(
    metrics: EngineMetrics,
    model: Option<std::path::PathBuf>,
    threads: Option<u32>,
    slots: Option<u32>,
    nice: i32,
) -> EngineHandle {
    start_configured(metrics, model, threads, slots, nice, |_| {})
}

fn start_configured(
    metrics: EngineMetrics,
    model: Option<std::path::PathBuf>,
    threads: Option<u32>,
    slots: Option<u32>,
    nice: i32,
    configure: impl FnOnce(&mut EngineConfig),
) -> EngineHandle {
    let (name, model) = match model {
        Some(path) => (
            path.file_stem()
                .map_or_else(|| "model".to_owned(), |s| s.to_string_lossy().into_owned()),
            path,
        ),
        None => {
            let name = model_name();
            let path = default_model_path(&name);
            (name, path)
        }
    };
    let worker = find_worker(LLM_WORKER, "JARVIS_LLM_WORKER").unwrap_or_else(|problem| {
        tracing::warn!(%problem, "no engine program");
        std::path::PathBuf::from(LLM_WORKER)
    });
    let mut config = EngineConfig::new(worker, model, name);
    config.threads = env_number("JARVIS_LLM_THREADS").or(threads);
    config.nice = nice;
    if let Some(slots) = env_number("JARVIS_LLM_SLOTS").or(slots) {
        config.slots = slots.clamp(1, 64);
    }
    configure(&mut config);
    EngineHandle::start(config, metrics)
}

fn default_model_path(name: &str) -> std::path::PathBuf {
    ModelStore::from_env()
        .and_then(|store| store.path(name))
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no model");
            std::path::PathBuf::from(format!("(no model called {name})"))
        })
}

/// The size of this machine's model file (0 when there is none): how [`Policy::Auto`] tells
/// whether a GPU peer serves a larger model.
///
/// [`Policy::Auto`]: jarvis_inference::offload::Policy::Auto
pub fn model_bytes() -> u64 {
    let name = model_name();
    ModelStore::from_env()
        .and_then(|store| store.path(&name))
        .ok()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len())
}

/// The engine as `status` shows it.
pub fn model_status(engine: &EngineHandle) -> Value {
    let (state, detail) = match engine.state() {
        EngineState::Starting => ("starting", None),
        EngineState::Ready { .. } => ("ready", None),
        EngineState::Failed(problem) => ("unavailable", Some(problem)),
        EngineState::Stopped => ("stopped", None),
    };
    json!({
        "name": engine.model_name(),
        "state": state,
        "problem": detail,
        // Where it runs: `CUDA0 (NVIDIA …)` first in a GPU build on a GPU machine, else the CPU.
        "devices": engine.devices(),
    })
}

/// How long a question waits for a model that is still loading.
const LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Why the engine cannot answer now, if it cannot.
pub(crate) async fn engine_problem(engine: &EngineHandle) -> Option<String> {
    match engine.wait_ready(LOAD_WAIT).await {
        EngineState::Ready { .. } => None,
        EngineState::Failed(problem) => Some(problem),
        EngineState::Starting => Some("the model is still loading; try again in a moment".into()),
        EngineState::Stopped => Some("the engine has stopped".into()),
    }
}

//! The node's local language model: which model, which worker program, and the `jarvis models`
//! commands.
//!
//! `JARVIS_MODEL` picks the model (a catalog name or an imported one; default
//! [`DEFAULT_LLM`]); `JARVIS_MODELS` the cache directory; `JARVIS_LLM_WORKER` the worker
//! program (default: next to `jarvis`, else on `PATH`); `JARVIS_LLM_THREADS` and
//! `JARVIS_LLM_SLOTS` its threads and concurrent requests.

use anyhow::{Context, Result};
use jarvis_inference::metrics::EngineMetrics;
use jarvis_inference::models::{DEFAULT_LLM, ModelStore, Sources};
use jarvis_inference::supervisor::{
    EngineConfig, EngineHandle, EngineState, LLM_WORKER, find_worker,
};
use serde_json::{Value, json};

use crate::output::Output;

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
/// requests at once.
pub fn start_engine_for(
    metrics: EngineMetrics,
    model: Option<std::path::PathBuf>,
    slots: Option<u32>,
) -> EngineHandle {
    // A GPU peer's engine is its main work: normal priority.
    start(metrics, model, None, slots, 0)
}

fn start(
    metrics: EngineMetrics,
    model: Option<std::path::PathBuf>,
    threads: Option<u32>,
    slots: Option<u32>,
    nice: i32,
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
    json!({ "name": engine.model_name(), "state": state, "problem": detail })
}

/// `jarvis models list`.
pub fn list(out: Output) -> Result<()> {
    let store = ModelStore::from_env()?;
    let models = store.list();
    let value = json!({ "dir": store.dir(), "models": models });
    out.emit(&value, || {
        let mut text = format!("models in {}\n", store.dir().display());
        for m in &models {
            text.push_str(&format!(
                "{} {:<28} {:<4} {:>7.1} MB  {:<10} {}\n",
                if m.present { "✓" } else { " " },
                m.name,
                m.kind,
                m.size as f64 / 1e6,
                m.licence.as_deref().unwrap_or("?"),
                if m.present {
                    String::new()
                } else {
                    "(not downloaded: `jarvis models pull`)".to_owned()
                },
            ));
        }
        text.trim_end().to_owned()
    });
    Ok(())
}

/// `jarvis models pull [NAME]`: one model, or without NAME the defaults (the language model,
/// `JARVIS_MODEL` or the catalog's default, then speech-to-text). Each is tried even when one
/// before it failed; with `--json`, one line per model.
pub fn pull(out: Output, name: Option<String>, json_progress: bool) -> Result<()> {
    let store = ModelStore::from_env()?;
    let names: Vec<String> = match name {
        Some(name) => vec![name],
        None => std::iter::once(model_name())
            .chain(
                jarvis_inference::models::DEFAULTS
                    .iter()
                    .filter(|n| **n != DEFAULT_LLM)
                    .map(|n| (*n).to_owned()),
            )
            .collect(),
    };
    let sources = Sources::from_env();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut failed = Vec::new();
    for name in &names {
        if let Err(e) = pull_one(out, &store, &sources, &runtime, name, json_progress) {
            if names.len() == 1 {
                return Err(e);
            }
            out.note(&format!("{e:#}"));
            failed.push(name.as_str());
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("could not get {} (see above)", failed.join(", "));
    }
    Ok(())
}

fn pull_one(
    out: Output,
    store: &ModelStore,
    sources: &Sources,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    json_progress: bool,
) -> Result<()> {
    let progress = if out.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(name.to_owned());
        bar
    };
    // Progress as JSON lines, every 250 ms while the download runs (the hidden bar still counts).
    let reporting = (json_progress && out.json).then(|| {
        let (done, stop) = std::sync::mpsc::channel::<()>();
        let bar = progress.clone();
        let name = name.to_owned();
        let thread = std::thread::spawn(move || {
            let mut last = None;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stop.recv_timeout(std::time::Duration::from_millis(250))
            {
                let now = (bar.position(), bar.length());
                if last != Some(now) && now.0 > 0 {
                    println!(
                        "{}",
                        json!({ "event": "progress", "name": name, "bytes": now.0, "total": now.1 })
                    );
                    last = Some(now);
                }
            }
        });
        (done, thread)
    });
    let pulled = runtime.block_on(store.pull(name, sources, &progress));
    if let Some((done, thread)) = reporting {
        drop(done);
        let _ = thread.join();
    }
    progress.finish_and_clear();
    let pulled = pulled?;
    for skipped in &pulled.skipped {
        out.note(&format!("{name}: not from {}", skipped.trim()));
    }
    let licence = jarvis_inference::models::catalog(name).map(|e| e.licence);
    let value = json!({ "name": name, "path": pulled.path, "from": pulled.from, "skipped": pulled.skipped, "licence": licence });
    out.emit(&value, || {
        let licence = licence
            .map(|l| format!(" (licence: {l})"))
            .unwrap_or_default();
        if pulled.from == "cache" {
            format!("{name} is already here: {}{licence}", pulled.path.display())
        } else {
            format!(
                "{name} downloaded from {} and verified: {}{licence}",
                pulled.from,
                pulled.path.display()
            )
        }
    });
    Ok(())
}

/// `jarvis models import PATH`.
pub fn import(out: Output, path: &std::path::Path) -> Result<()> {
    let store = ModelStore::from_env()?;
    let info = store.import(path)?;
    let value = serde_json::to_value(&info)?;
    out.emit(&value, || {
        if info.kind == "stt" {
            format!(
                "converted {} for whisper.cpp and imported it as {:?}: {}",
                path.display(),
                info.name,
                info.path.display()
            )
        } else {
            format!(
                "imported {} as {:?}; use it with JARVIS_MODEL={}",
                path.display(),
                info.name,
                info.name
            )
        }
    });
    Ok(())
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

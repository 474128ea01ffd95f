//! `jarvis models`: list, pull and import models into the cache (`JARVIS_MODELS`).

use anyhow::{Context, Result};
use jarvis_inference::models::{DEFAULT_LLM, ModelStore, Sources};
use jarvis_node::llm::model_name;
use jarvis_node::output::Output;
use serde_json::json;

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

//! onnxruntime, loaded at run time.
//!
//! The `ort` crate is built with `load-dynamic`: nothing is downloaded or linked at build time,
//! and the library (`libonnxruntime.so` / `.dylib`) is opened when the first voice model loads:
//! `JARVIS_ONNXRUNTIME` if set, else the one `jarvis models pull` installed in the model cache.
//! A process can load it once; every session shares that environment.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;

use crate::{Result, VoiceError};

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The environment, loading onnxruntime from `library` the first time (later calls ignore
/// `library`: a process has one onnxruntime).
///
/// # Errors
/// What the loader said, and what to do.
pub fn environment(library: &Path) -> Result<&'static Environment> {
    let loaded = ENVIRONMENT.get_or_init(|| {
        if !library.is_file() {
            return Err(format!(
                "onnxruntime is not installed ({} is missing): run `jarvis models pull onnxruntime`, \
                 or set JARVIS_ONNXRUNTIME to a libonnxruntime file",
                library.display()
            ));
        }
        ort::init_from(library)
            .map_err(|e| e.to_string())
            .and_then(|builder| {
                builder
                    .with_name("jarvis-voice")
                    .build()
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| format!("cannot load onnxruntime from {}: {e}", library.display()))
    });
    loaded.as_ref().map_err(|e| VoiceError::Onnx(e.clone()))
}

/// `JARVIS_ONNXRUNTIME`, when set.
pub fn library_from_env() -> Option<PathBuf> {
    std::env::var_os("JARVIS_ONNXRUNTIME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A session for one model file, on one thread: the voice models are small, and the cores are
/// for whisper.cpp and llama.cpp.
///
/// # Errors
/// The model's path and onnxruntime's message.
pub fn session(environment: &Environment, model: &Path) -> Result<Session> {
    session_with(environment, model, 1)
}

/// [`session`] with `threads` intra-op threads, which sleep rather than spin between runs.
///
/// # Errors
/// As [`session`].
pub fn session_with(environment: &Environment, model: &Path, threads: usize) -> Result<Session> {
    let fail =
        |e: String| VoiceError::Model(format!("cannot load the model {}: {e}", model.display()));
    if !model.is_file() {
        return Err(fail(
            "the file is missing; `jarvis models pull` installs the voice models".to_owned(),
        ));
    }
    Session::builder(environment)
        .map_err(|e| fail(e.to_string()))?
        .with_intra_threads(threads)
        .map_err(|e| fail(e.to_string()))?
        .with_intra_op_spinning(false)
        .map_err(|e| fail(e.to_string()))?
        .with_inter_threads(1)
        .map_err(|e| fail(e.to_string()))?
        .commit_from_file(model)
        .map_err(|e| fail(e.to_string()))
}

/// An ort error as ours.
pub(crate) fn run_error(what: &str) -> impl Fn(ort::Error) -> VoiceError + '_ {
    move |e| VoiceError::Onnx(format!("{what}: {e}"))
}

/// The first output of a run, as `f32`s.
pub(crate) fn first_output(
    outputs: &ort::session::SessionOutputs<'_>,
    what: &str,
) -> Result<Vec<f32>> {
    let value = outputs
        .values()
        .next()
        .ok_or_else(|| VoiceError::Onnx(format!("{what}: no output")))?;
    let (_, data) = value.try_extract_tensor::<f32>().map_err(run_error(what))?;
    Ok(data.to_vec())
}

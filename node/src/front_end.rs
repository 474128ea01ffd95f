//! The voice front end both voice loops share (`jarvis listen` and the one inside `jarvis up`):
//! the models it needs, loading them (the listener, the voice, the speech worker), the voices a
//! user can choose from, and the timings of a heard utterance.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use jarvis_inference::models::{
    DEFAULT_STT, DEFAULT_VAD, DEFAULT_VOICE, DEFAULT_WAKE_WORD, ModelStore, ONNXRUNTIME,
    WAKE_EMBEDDING, WAKE_MELSPECTROGRAM,
};
use jarvis_inference::supervisor::find_worker;
use jarvis_voice::listener::Listener;
use jarvis_voice::pipeline;
use jarvis_voice::stt::{STT_WORKER, SttWorker};
use jarvis_voice::tts::{Piper, Voice};
use jarvis_voice::turn::TurnConfig;
use jarvis_voice::wake::WakeModels;

/// The rate the speaker is opened at: Piper's and espeak-ng's voices speak at 22,050 Hz.
pub const VOICE_RATE: u32 = 22_050;

/// The voice models' files.
pub struct VoiceModels {
    onnxruntime: PathBuf,
    vad: PathBuf,
    melspectrogram: PathBuf,
    embedding: PathBuf,
    wake_word: PathBuf,
    stt: PathBuf,
    stt_worker: PathBuf,
    piper: Option<(PathBuf, PathBuf)>,
}

fn present(path: PathBuf, name: &str) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "the {name} model is not installed ({} is missing): run `jarvis models pull`",
            path.display()
        )
    }
}

impl VoiceModels {
    pub fn find() -> Result<Self> {
        let store = ModelStore::from_env()?;
        let get = |name: &str| -> Result<PathBuf> { present(store.path(name)?, name) };
        let onnxruntime = match jarvis_voice::onnx::library_from_env() {
            Some(path) => path,
            None => get(ONNXRUNTIME)?,
        };
        let wake_word = match std::env::var_os("JARVIS_WAKE_MODEL").filter(|v| !v.is_empty()) {
            Some(path) => present(PathBuf::from(path), "wake word (JARVIS_WAKE_MODEL)")?,
            None => get(DEFAULT_WAKE_WORD)?,
        };
        let piper = piper_voice(&store, None)?;
        Ok(Self {
            onnxruntime,
            vad: get(DEFAULT_VAD)?,
            melspectrogram: get(WAKE_MELSPECTROGRAM)?,
            embedding: get(WAKE_EMBEDDING)?,
            wake_word,
            stt: get(DEFAULT_STT)?,
            stt_worker: find_worker(STT_WORKER, "JARVIS_STT_WORKER")
                .map_err(|problem| anyhow::anyhow!(problem.replace("jarvis-llm", "jarvis-stt")))?,
            piper,
        })
    }
}

/// The Piper voice to speak with: `choice` (a voice's name, `espeak` for none, or none for the
/// default), unless `JARVIS_VOICE=espeak` says otherwise; none when it is not installed.
pub fn piper_voice(store: &ModelStore, choice: Option<&str>) -> Result<Option<(PathBuf, PathBuf)>> {
    let env_espeak = std::env::var("JARVIS_VOICE").is_ok_and(|v| v == "espeak");
    if env_espeak || choice == Some(ESPEAK) {
        return Ok(None);
    }
    let model = match choice {
        // A name, not a path: nothing outside the model cache is loaded.
        Some(name) if !crate::settings::plain_name(name) => {
            bail!("{name:?} is not a voice's name")
        }
        Some(name) => store.dir().join(format!("{name}.onnx")),
        None => store.path(DEFAULT_VOICE)?,
    };
    let config = PathBuf::from(format!("{}.json", model.display()));
    Ok((model.is_file() && config.is_file()).then_some((model, config)))
}

/// The name of the espeak-ng choice in settings.
pub const ESPEAK: &str = "espeak";

/// The voices a user can choose: every Piper voice in the model cache (a `NAME.onnx` with its
/// `NAME.onnx.json`), and espeak-ng when it is installed. `(value, label)` pairs.
pub fn voice_choices() -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(store) = ModelStore::from_env()
        && let Ok(entries) = std::fs::read_dir(store.dir())
    {
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter_map(|f| f.strip_suffix(".onnx").map(str::to_owned))
            .filter(|name| store.dir().join(format!("{name}.onnx.json")).is_file())
            .collect();
        names.sort();
        out.extend(
            names
                .into_iter()
                .map(|n| (n.clone(), format!("{n} (Piper, natural)"))),
        );
    }
    let espeak = std::process::Command::new("espeak-ng")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if espeak {
        out.push((
            ESPEAK.to_owned(),
            "espeak-ng (robotic, very fast)".to_owned(),
        ));
    }
    out
}

/// A Piper voice after its first run (see [`Piper::warm_up`]); a failure there is the first
/// sentence's to report.
fn warm(mut piper: Piper) -> Piper {
    if let Err(e) = piper.warm_up() {
        tracing::debug!("warming the voice up: {e}");
    }
    piper
}

/// Loads the voice `choice` (see [`piper_voice`]).
pub async fn load_voice(models: &VoiceModels, choice: Option<String>) -> Result<Voice> {
    let store = ModelStore::from_env()?;
    let piper = piper_voice(&store, choice.as_deref())?;
    if piper.is_none()
        && let Some(name) = choice.as_deref().filter(|c| *c != ESPEAK)
    {
        bail!(
            "the voice {name:?} is not installed in {}",
            store.dir().display()
        );
    }
    let ort = models.onnxruntime.clone();
    tokio::task::spawn_blocking(move || -> Result<Voice> {
        Ok(match piper {
            Some((model, config)) => {
                let env = jarvis_voice::onnx::environment(&ort)?;
                Voice::Piper(Box::new(warm(Piper::load(env, &model, &config)?)))
            }
            None => Voice::Espeak("en-us".into()),
        })
    })
    .await
    .context("loading the voice")?
}

/// Where the audio comes from; with a microphone, the device (kept open while it is used).
/// The timings of a heard utterance, up to its transcript (milliseconds; positions in the
/// input for `end_of_speech_at`).
pub fn heard_timings(u: &pipeline::Utterance) -> BTreeMap<String, u64> {
    BTreeMap::from([
        (
            "end_of_speech_to_transcript".to_owned(),
            millis(u.transcribed.saturating_duration_since(u.spoken)),
        ),
        (
            "end_of_utterance_wait".to_owned(),
            samples_ms(u.decided_at.saturating_sub(u.end_of_speech)),
        ),
        ("end_of_speech_at".to_owned(), samples_ms(u.end_of_speech)),
        ("transcribe".to_owned(), u.transcript.decode_ms),
        ("utterance".to_owned(), u.transcript.audio_ms),
    ])
}

pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub fn samples_ms(samples: u64) -> u64 {
    samples / 16
}

/// Loads the voice front end and starts the speech worker, all at once.
pub async fn load(
    models: &VoiceModels,
    push_to_talk: bool,
) -> Result<(Listener, Voice, SttWorker)> {
    let stt = SttWorker::start(&models.stt_worker, &models.stt, None);
    let front = {
        let (ort, vad, mel, emb, word, piper) = (
            models.onnxruntime.clone(),
            models.vad.clone(),
            models.melspectrogram.clone(),
            models.embedding.clone(),
            models.wake_word.clone(),
            models.piper.clone(),
        );
        tokio::task::spawn_blocking(move || -> Result<(Listener, Voice)> {
            let env = jarvis_voice::onnx::environment(&ort)?;
            let wake = WakeModels {
                melspectrogram: &mel,
                embedding: &emb,
                wake_word: &word,
            };
            let listener = Listener::load(
                env,
                &vad,
                (!push_to_talk).then_some(&wake),
                TurnConfig::default(),
            )?;
            let voice = match piper {
                Some((model, config)) => {
                    Voice::Piper(Box::new(warm(Piper::load(env, &model, &config)?)))
                }
                None => Voice::Espeak("en-us".into()),
            };
            Ok((listener, voice))
        })
    };
    let (stt, front) = tokio::join!(stt, front);
    let stt = stt.context("starting speech to text")?;
    let (listener, voice) = front.context("loading the voice models")??;
    Ok((listener, voice, stt))
}

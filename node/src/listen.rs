//! `jarvis listen --file WAV`: one voice turn from a recording, through the same pipeline as the
//! microphone: the recording is fed in real time (20 ms at a time, like a microphone) to the
//! voice detector and wake word; the utterance goes to whisper.cpp (speculatively as soon as the
//! speech pauses, so the transcript is often ready by the time the pause is long enough to be
//! the end); the request goes to the model (the running node's, or one loaded here); the answer
//! is spoken sentence by sentence as it streams, and written to `--out`.
//!
//! Timings are measured from the moment the last voiced sample was fed, i.e. from the end of
//! speech as the user would feel it. Models: `jarvis models pull` installs them all;
//! `JARVIS_WAKE_MODEL` replaces the wake word, `JARVIS_VOICE=espeak` skips Piper,
//! `JARVIS_STT_WORKER` and `JARVIS_ONNXRUNTIME` point at the worker and onnxruntime.

// `serde_json::Value[...]` with a string key returns `Null` for a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use jarvis_inference::metrics::EngineMetrics;
use jarvis_inference::models::{
    DEFAULT_STT, DEFAULT_VAD, DEFAULT_VOICE, DEFAULT_WAKE_WORD, ModelStore, ONNXRUNTIME,
    WAKE_EMBEDDING, WAKE_MELSPECTROGRAM,
};
use jarvis_inference::supervisor::find_worker;
use jarvis_voice::audio;
use jarvis_voice::device::{self, Microphone};
use jarvis_voice::listener::Listener;
use jarvis_voice::pipeline::{self, BargeIn, Pace, Source, Watch};
use jarvis_voice::playback::Playback;
use jarvis_voice::stt::{STT_WORKER, SttWorker};
use jarvis_voice::tts::{Piper, Sentences, Voice};
use jarvis_voice::turn::TurnConfig;
use jarvis_voice::wake::WakeModels;
use serde_json::{Value, json};

use crate::home::Home;
use crate::output::Output;
use crate::speculate::{Answerer, Gate};

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// The recording: a WAV file (any rate, mono or stereo), or `-` for raw 16 kHz mono 16-bit
    /// little-endian PCM on stdin. Without it, the microphone.
    #[arg(long, value_name = "WAV", conflicts_with = "mic")]
    pub file: Option<PathBuf>,
    /// The microphone to listen to (a name from --list-devices; default: the system's).
    #[arg(long, value_name = "DEVICE")]
    pub mic: Option<String>,
    /// The speaker to answer through (default: the system's, when listening to the microphone;
    /// none for a recording unless named).
    #[arg(long, value_name = "DEVICE")]
    pub speaker: Option<String>,
    /// List the microphones and speakers, and exit.
    #[arg(long)]
    pub list_devices: bool,
    /// Write the spoken answer to this WAV file.
    #[arg(long, value_name = "WAV")]
    pub out: Option<PathBuf>,
    /// No wake word: the first thing said is the request (as with a push-to-talk button).
    #[arg(long)]
    pub push_to_talk: bool,
    /// Continue this conversation (an id from `jarvis conversations`).
    #[arg(long, value_name = "ID")]
    pub conversation: Option<String>,
    /// Feed the recording as fast as the pipeline takes it instead of in real time (the
    /// timings then say little about what a user would feel).
    #[arg(long)]
    pub fast: bool,
    /// Simulate a speaker feeding the answer back into the microphone at this level (0 to 1),
    /// to try the echo cancellation with a recording.
    #[arg(long, value_name = "LEVEL", default_value_t = 0.0)]
    pub echo: f32,
}

/// The rate the speaker is opened at: Piper's and espeak-ng's voices speak at 22,050 Hz.
pub(crate) const VOICE_RATE: u32 = 22_050;

/// The voice models' files.
pub(crate) struct VoiceModels {
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
    pub(crate) fn find() -> Result<Self> {
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
pub(crate) fn piper_voice(
    store: &ModelStore,
    choice: Option<&str>,
) -> Result<Option<(PathBuf, PathBuf)>> {
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
pub(crate) const ESPEAK: &str = "espeak";

/// The voices a user can choose: every Piper voice in the model cache (a `NAME.onnx` with its
/// `NAME.onnx.json`), and espeak-ng when it is installed. `(value, label)` pairs.
pub(crate) fn voice_choices() -> Vec<(String, String)> {
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
pub(crate) async fn load_voice(models: &VoiceModels, choice: Option<String>) -> Result<Voice> {
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
fn source(args: &ListenArgs) -> Result<(Source, Option<Microphone>)> {
    match &args.file {
        Some(path) if path.as_os_str() == "-" => {
            Ok((Source::Pcm(Box::new(std::io::stdin())), None))
        }
        Some(path) => Ok((Source::Samples(audio::read_wav(path)?.samples), None)),
        None => {
            let (mic, chunks) = device::open_microphone(args.mic.as_deref())?;
            tracing::info!(device = %mic.name, rate = mic.rate, "listening to the microphone");
            Ok((Source::Chunks(chunks), Some(mic)))
        }
    }
}

/// `jarvis listen --list-devices`.
fn list_devices(out: Output) {
    let devices = device::devices();
    let value = json!({
        "inputs": devices.iter().filter(|d| d.2).map(|d| json!({"id": d.0, "description": d.1})).collect::<Vec<_>>(),
        "outputs": devices.iter().filter(|d| !d.2).map(|d| json!({"id": d.0, "description": d.1})).collect::<Vec<_>>(),
    });
    out.emit(&value, || {
        let mut text = String::new();
        for (kind, input) in [("microphones", true), ("speakers", false)] {
            text.push_str(&format!("{kind}:\n"));
            let mut any = false;
            for d in devices.iter().filter(|d| d.2 == input) {
                any = true;
                text.push_str(&format!("  {:<32} {}\n", d.0, d.1));
            }
            if !any {
                text.push_str("  (none)\n");
            }
        }
        text.trim_end().to_owned()
    });
}

/// Speaks pieces of the answer as they arrive, a sentence at a time, into `playback` (which
/// starts playing with the first) once `gate` opens; stops speaking when the user barges in, or
/// when the gate drops the answer (a held answer the user did not finish at). Returns the
/// sentences spoken.
pub(crate) fn speak_thread(
    voice: &Mutex<Voice>,
    pieces: std::sync::mpsc::Receiver<String>,
    playback: &Playback,
    gate: &Gate,
) -> Result<usize, String> {
    let mut sentences = Sentences::new();
    let mut count = 0;
    let mut speak = |sentence: String| -> Result<(), String> {
        if playback.stopped().is_some() || gate.dropped() {
            return Ok(());
        }
        let spoken = voice
            .lock()
            .map_err(|_| "the voice failed".to_owned())?
            .speak(&sentence)
            .map_err(|e| e.to_string())?;
        if gate.wait() {
            playback.queue(&spoken, Instant::now());
            count += 1;
        }
        Ok(())
    };
    for piece in pieces {
        for sentence in sentences.push(&piece) {
            speak(sentence)?;
        }
    }
    if let Some(rest) = sentences.finish() {
        speak(rest)?;
    }
    // A dropped answer leaves the playback to the one that replaces it.
    if !gate.dropped() {
        playback.complete();
    }
    Ok(count)
}

/// The timings of a heard utterance, up to its transcript (milliseconds; positions in the
/// input for `end_of_speech_at`).
pub(crate) fn heard_timings(u: &pipeline::Utterance) -> BTreeMap<String, u64> {
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

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn samples_ms(samples: u64) -> u64 {
    samples / 16
}

/// Loads the voice front end and starts the speech worker, all at once.
pub(crate) async fn load(
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

/// `jarvis listen`.
pub fn run(home: &Home, out: Output, args: ListenArgs) -> Result<()> {
    if args.list_devices {
        list_devices(out);
        return Ok(());
    }
    let running = crate::client::running(home)?;
    let turn = crate::client::block_on(turn(home, running, &args))?;
    out.emit(&turn, || {
        let mut text = String::new();
        if turn["woke"] == false {
            text.push_str("not woken (no \"hey jarvis\" heard)");
            return text;
        }
        text.push_str(&format!(
            "you:    {}\n",
            turn["transcript"].as_str().unwrap_or("")
        ));
        if let Some(answer) = turn["answer"].as_str() {
            text.push_str(&format!("jarvis: {answer}\n"));
        }
        let t = &turn["timings_ms"];
        text.push_str(&format!(
            "end of speech → transcript {} ms, → first token {} ms, → first audio {} ms",
            t["end_of_speech_to_transcript"],
            t["end_of_speech_to_first_token"],
            t["end_of_speech_to_first_audio"],
        ));
        if let Some(path) = turn["audio_out"].as_str() {
            text.push_str(&format!("\nthe spoken answer is in {path}"));
        }
        text
    });
    if let Some(error) = turn["error"].as_str() {
        bail!("{error}");
    }
    Ok(())
}

async fn turn(home: &Home, node: Option<crate::api::Client>, args: &ListenArgs) -> Result<Value> {
    if !(0.0..=1.0).contains(&args.echo) {
        bail!("--echo is a level from 0 to 1, not {}", args.echo);
    }
    let models = VoiceModels::find()?;
    // A recording is read now (a bad file fails before anything loads); the microphone opens
    // once the models are loaded, so it does not hear stale audio.
    let recording = args.file.is_some().then(|| source(args)).transpose()?;
    // Everything loads at once: the speech worker, the voice models, the voice, and (without a
    // running node) the language model.
    // The model leaves a core to the listening thread, which must keep up with the microphone
    // to hear the user barge in.
    let spare =
        std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1)) as u32;
    let engine = node
        .is_none()
        .then(|| crate::llm::start_engine_with(EngineMetrics::default(), Some(spare)));
    let (listener, voice, stt) = load(&models, args.push_to_talk).await?;
    let (source, mic) = match recording {
        Some(recording) => recording,
        None => source(args)?,
    };
    let push_to_talk = args.push_to_talk;
    let voice_name = voice.name();

    let pace = if args.fast {
        Pace::Fast
    } else {
        Pace::RealTime
    };
    let playback = Arc::new(Playback::new());
    // The answer plays through a speaker when listening live, or when one is named.
    let speaker = match (&args.speaker, &args.file) {
        (Some(name), _) => Some(device::open_speaker(
            Some(name),
            Arc::clone(&playback),
            VOICE_RATE,
        )?),
        (None, None) => device::open_speaker(None, Arc::clone(&playback), VOICE_RATE)
            .map_err(|e| tracing::warn!("{e}; the answer is shown but not spoken"))
            .ok(),
        (None, Some(_)) => None,
    };
    let watch = Watch::new(Arc::clone(&playback), args.echo);
    let outcome = Arc::clone(&watch.outcome);
    let voice = Arc::new(Mutex::new(voice));
    // With a running node, the words heard at each pause are answered at once, held until the
    // end of the turn says whether they were the request (`speculate`).
    let mut answerer = node.clone().map(|client| {
        Answerer::new(
            client,
            Arc::clone(&voice),
            Arc::clone(&playback),
            Arc::new(|| {}),
        )
    });
    let (heard_tx, mut heard_rx) = tokio::sync::mpsc::channel(8);
    let report = move |stage| {
        let _ = heard_tx.try_send(stage);
    };
    let hearing = pipeline::hear_reporting(listener, source, pace, stt, Some(watch), &report);
    let (heard, feeding, stt) = match answerer.as_mut() {
        Some(answerer) => {
            answerer
                .hear(
                    hearing,
                    &mut heard_rx,
                    push_to_talk,
                    args.conversation.clone(),
                )
                .await?
        }
        None => hearing.await?,
    };
    stt.shutdown().await;
    let Some(utterance) = heard.utterance else {
        playback.complete();
        feeding.finish().await?;
        if let Some(engine) = engine {
            engine.shutdown().await;
        }
        return Ok(json!({
            "woke": heard.woke,
            "wake_score": heard.wake_score,
            "transcript": "",
            "answer": null,
            "interrupted": false,
            "timings_ms": {},
            "note": if heard.woke { "woken, but no request followed" } else { "the wake word was not heard" },
        }));
    };
    let transcript = &utterance.transcript;
    let spoken = utterance.spoken;
    let request = crate::speculate::request(&transcript.text, push_to_talk);
    let mut timings = heard_timings(&utterance);
    if let Some(at) = heard.wake_at {
        timings.insert("wake_at".to_owned(), samples_ms(at));
    }
    let mut turn = json!({
        "woke": heard.woke,
        "wake_score": heard.wake_score,
        "speculative_transcript": utterance.speculative,
        "transcript": transcript.text,
        "request": request,
        "answer": null,
        "interrupted": false,
        "voice": voice_name,
    });
    if request.is_empty() {
        set(&mut turn, "timings_ms", json!(timings));
        set(
            &mut turn,
            "note",
            json!("nothing was said after the wake word"),
        );
        playback.complete();
        feeding.finish().await?;
        if let Some(engine) = engine {
            engine.shutdown().await;
        }
        return Ok(turn);
    }

    // The stage timings once the turn is over (first token, first audio, barge-in).
    let after = {
        let playback = Arc::clone(&playback);
        move |first_token: Option<Instant>, barge: Option<BargeIn>| {
            let mut t = BTreeMap::new();
            let since = |i: Instant| millis(i.saturating_duration_since(spoken));
            if let Some(first) = first_token {
                t.insert("end_of_speech_to_first_token".to_owned(), since(first));
            }
            if let Some(first) = playback.started() {
                t.insert("end_of_speech_to_first_audio".to_owned(), since(first));
            }
            if let Some(b) = barge {
                t.insert("barge_in_at".to_owned(), samples_ms(b.speech_at));
                t.insert(
                    "barge_in_to_stop".to_owned(),
                    millis(b.stopped.saturating_duration_since(b.speech_started)),
                );
            }
            t
        }
    };
    let (answer, first_token, sentences) = match answerer.as_mut() {
        Some(answerer) => {
            let mut attempt = answerer
                .answer(
                    utterance.end_of_speech,
                    &request,
                    args.conversation.clone(),
                    &timings,
                )
                .await;
            set(
                &mut turn,
                "speculative_answer",
                json!(attempt.speculative()),
            );
            set(&mut turn, "held_answers_dropped", json!(answerer.dropped));
            let answer = attempt.answer().await?;
            let first_token = attempt.first_token();
            (answer, first_token, attempt.spoken().await?)
        }
        None => {
            // The answer streams into the speaking thread, which plays it; the listening
            // thread goes on listening for the user talking over it.
            let (on_piece, speaking, first_token_at) =
                crate::speculate::speak(&voice, &playback, &Gate::open(), Arc::new(|| {}));
            let before = timings.clone();
            let after = after.clone();
            let outcome = Arc::clone(&outcome);
            let first = Arc::clone(&first_token_at);
            // Saved once the turn is over, so the conversation has every stage and whether the
            // user interrupted. The listening thread ends by itself (the answer played, the
            // recording ended, or a barge-in), without this task's help.
            let playback_done = Arc::clone(&playback);
            let stored = move || {
                let barge = outcome.wait(Duration::from_secs(600));
                // A recording can end before the answer starts playing: wait for the first
                // audio (the speaking thread runs on its own) so the turn records it.
                let until = Instant::now() + Duration::from_secs(60);
                while playback_done.started().is_none()
                    && !playback_done.is_complete()
                    && Instant::now() < until
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let first = first.lock().ok().and_then(|f| *f);
                before.into_iter().chain(after(first, barge)).collect()
            };
            let answer = crate::client::ask_offline(
                home,
                engine,
                &request,
                args.conversation.clone(),
                stored,
                on_piece,
            )
            .await?;
            let sentences = tokio::task::spawn_blocking(move || speaking.join())
                .await
                .context("the speaking thread")?
                .map_err(|_| anyhow::anyhow!("the speaking thread failed"))?
                .map_err(|e| anyhow::anyhow!("speaking the answer: {e}"))?;
            let first_token = first_token_at.lock().ok().and_then(|f| *f);
            (answer, first_token, sentences)
        }
    };
    let (_, barge) = feeding.finish().await?;
    let timings: BTreeMap<String, u64> = timings
        .into_iter()
        .chain(timings_from(&answer))
        .chain(after(first_token, barge))
        .collect();
    for (key, value) in &answer.as_object().cloned().unwrap_or_default() {
        if !matches!(key.as_str(), "timings_ms") {
            set(&mut turn, key, value.clone());
        }
    }
    if speaker.is_some() {
        // Let the answer finish playing (or be interrupted) before the program ends.
        let until = Instant::now() + Duration::from_secs(600);
        while playback.pending(Instant::now()) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(speaker);
    drop(mic);
    let heard_audio = playback.played();
    set(&mut turn, "interrupted", json!(barge.is_some()));
    set(&mut turn, "timings_ms", json!(timings));
    set(&mut turn, "sentences_spoken", json!(sentences));
    set(&mut turn, "audio_ms", json!(heard_audio.millis()));
    if let Some(path) = &args.out {
        audio::write_wav(path, &heard_audio)?;
        set(&mut turn, "audio_out", json!(path));
    }
    Ok(turn)
}

fn timings_from(answer: &Value) -> BTreeMap<String, u64> {
    answer
        .get("timings_ms")
        .and_then(Value::as_object)
        .map(|t| {
            t.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn set(value: &mut Value, key: &str, field: Value) {
    if let Some(fields) = value.as_object_mut() {
        fields.insert(key.to_owned(), field);
    }
}

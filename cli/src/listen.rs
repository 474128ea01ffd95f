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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jarvis_inference::metrics::EngineMetrics;
use jarvis_voice::audio;
use jarvis_voice::device::{self, Microphone};
use jarvis_voice::pipeline::{self, BargeIn, Pace, Source, Watch};
use jarvis_voice::playback::Playback;
use serde_json::{Value, json};

use crate::args::ListenArgs;
use jarvis_home::Home;
use jarvis_node::front_end::{VOICE_RATE, VoiceModels, heard_timings, load, millis, samples_ms};
use jarvis_node::output::Output;
use jarvis_node::speculate::{Answerer, Gate};

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

/// `jarvis listen`.
pub fn run(home: &Home, out: Output, args: ListenArgs) -> Result<()> {
    if args.list_devices {
        list_devices(out);
        return Ok(());
    }
    let running = jarvis_node::local_api::running(home)?;
    let turn = jarvis_node::local_api::block_on(turn(home, running, &args))?;
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

async fn turn(
    home: &Home,
    node: Option<jarvis_node::local_api::Client>,
    args: &ListenArgs,
) -> Result<Value> {
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
        .then(|| jarvis_node::llm::start_engine_with(EngineMetrics::default(), Some(spare)));
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
            jarvis_node::handle::NodeHandle::Http(client),
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
    let request = jarvis_node::speculate::request(&transcript.text, push_to_talk);
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
                jarvis_node::speculate::speak(&voice, &playback, &Gate::open(), Arc::new(|| {}));
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
            let answer = jarvis_node::offline::ask_offline(
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

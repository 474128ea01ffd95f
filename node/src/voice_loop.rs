//! The voice loop of `jarvis up`: listens to the microphone turn after turn ("hey jarvis, …"),
//! asks the node it runs in directly, in-process ([`crate::handle::NodeHandle::InProcess`]: the
//! turn is saved and synced like any question, in one voice conversation per run), and speaks
//! the answer through the speaker,
//! stopping when the user talks over it.
//!
//! Voice is optional: without the voice models, a microphone or the speech worker, the node runs
//! without it and says why (`status` and the log); `--no-voice` turns it off.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use jarvis_voice::device;
use jarvis_voice::pipeline::{self, Pace, Source, Stage, Watch};
use jarvis_voice::playback::Playback;
use jarvis_voice::turn::TurnConfig;
use tokio::sync::watch;

use crate::front_end::{VOICE_RATE, VoiceModels, heard_timings, millis};
use crate::metrics::Metrics;
use crate::speculate::Answerer;
use crate::voice_state::Voice;

/// Runs the voice loop until `stop`; logs why voice is off when it cannot run.
pub async fn run(
    mic: Option<String>,
    metrics: Arc<Metrics>,
    ui: Arc<Voice>,
    asking: crate::ask::Asking,
    mut stop: watch::Receiver<bool>,
) {
    let result = tokio::select! {
        r = turns(mic, &metrics, &ui, asking) => r,
        _ = stop.wait_for(|s| *s) => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!("voice is off: {e:#} (`jarvis up --no-voice` runs without it)");
        ui.off(format!("{e:#}"));
    }
}

/// Between the microphone and the pipeline: reports the level every ~100 ms and feeds silence
/// while muted (the microphone stays open, so unmuting is instant).
fn metered(chunks: std::sync::mpsc::Receiver<Vec<f32>>, ui: Arc<Voice>) -> Source {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<f32>>(500);
    let spawned = std::thread::Builder::new()
        .name("mic-level".into())
        .spawn(move || {
            let (mut sum, mut peak, mut n) = (0.0f32, 0.0f32, 0usize);
            while let Ok(mut chunk) = chunks.recv() {
                if ui.muted() {
                    chunk.iter_mut().for_each(|s| *s = 0.0);
                }
                for s in &chunk {
                    sum += s * s;
                    peak = peak.max(s.abs());
                }
                n += chunk.len();
                if n >= VOICE_RATE as usize / 10 {
                    ui.level((sum / n as f32).sqrt(), peak);
                    (sum, peak, n) = (0.0, 0.0, 0);
                }
                // The level goes on while the pipeline is busy (transcribing, between turns):
                // what it does not take is dropped, as the microphone's own queue does.
                match tx.try_send(chunk) {
                    Ok(()) | Err(std::sync::mpsc::TrySendError::Full(_)) => {}
                    Err(std::sync::mpsc::TrySendError::Disconnected(_)) => break,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no microphone level: {e}");
    }
    Source::Chunks(rx)
}

async fn turns(
    mic_name: Option<String>,
    metrics: &Metrics,
    ui: &Arc<Voice>,
    asking: crate::ask::Asking,
) -> Result<()> {
    // The cheap checks first: no models or no microphone turns voice off before anything loads.
    let models = VoiceModels::find()?;
    device::find_microphone(mic_name.as_deref())?;
    let (mut listener, voice, mut stt) = crate::front_end::load(&models, false).await?;
    listener.push_to_talk(ui.talk_flag());
    listener.wake_control(ui.wake_control());
    ui.set_tts(voice.name());
    let voice = Arc::new(std::sync::Mutex::new(voice));
    // Opened once the models are loaded, so it does not hear stale audio.
    let (mic, chunks) = device::open_microphone(mic_name.as_deref())?;
    let playback = Arc::new(Playback::new());
    let speaker = device::open_speaker(None, Arc::clone(&playback), VOICE_RATE)
        .map_err(|e| tracing::warn!("{e}; answers are saved but not spoken"))
        .ok();
    // The node is in this process: questions go to it directly, not through its HTTP API.
    let node = crate::handle::NodeHandle::InProcess(asking);
    tracing::info!(microphone = %mic.name, speaker = ?speaker.as_ref().map(|s| &s.name), "voice is on: say \"hey jarvis\"");
    let mut source = metered(chunks, Arc::clone(ui));
    let mut conversation: Option<String> = None;
    loop {
        // A voice chosen in settings since the last turn (a failure keeps the one in use).
        if let Some(choice) = ui.take_voice_change() {
            match crate::front_end::load_voice(&models, choice.clone()).await {
                Ok(v) => {
                    tracing::info!(voice = ?choice, engine = v.name(), "voice changed");
                    ui.set_tts(v.name());
                    if let Ok(mut voice) = voice.lock() {
                        *voice = v;
                    }
                }
                Err(e) => tracing::warn!(voice = ?choice, "cannot use that voice: {e:#}"),
            }
        }
        playback.reset();
        let watch = Watch::new(Arc::clone(&playback), 0.0);
        ui.set("idle");
        // A stop asked for after the last answer ended is not for the next one.
        ui.take_stop();
        // The words heard at each pause are answered at once, held until the end of the turn
        // says whether they were the request (`speculate`).
        let mut answerer = Answerer::new(
            node.clone(),
            Arc::clone(&voice),
            Arc::clone(&playback),
            Arc::new({
                let ui = Arc::clone(ui);
                move || ui.set("speaking")
            }),
        );
        let (heard_tx, mut heard_rx) = tokio::sync::mpsc::channel(8);
        let report = |stage: Stage| {
            match &stage {
                Stage::Woke => {
                    ui.heard(String::new());
                    ui.set("listening");
                }
                // The words so far, shown while the user may still be speaking.
                Stage::Heard { text, .. } => ui.heard(text.clone()),
                Stage::Resumed { .. } => {}
                Stage::Transcribing => ui.set("transcribing"),
            }
            let _ = heard_tx.try_send(stage);
        };
        let hearing =
            pipeline::hear_reporting(listener, source, Pace::RealTime, stt, Some(watch), &report);
        let (heard, feeding, worker) = answerer
            .hear(hearing, &mut heard_rx, false, conversation.clone())
            .await?;
        stt = worker;
        let Some(utterance) = heard.utterance else {
            if !heard.woke {
                // Only the end of the input ends a turn that never woke.
                anyhow::bail!("the microphone {} stopped delivering audio", mic.name);
            }
            playback.complete();
            let (l, _, s) = feeding.finish_with_source().await?;
            (listener, source) = (l, s);
            listener.next_turn(TurnConfig::default());
            continue;
        };
        ui.heard(utterance.transcript.text.clone());
        let request = crate::speculate::request(&utterance.transcript.text, false);
        if request.is_empty() {
            metrics.voice_turn("no_request", &BTreeMap::new());
            playback.complete();
            let (l, _, s) = feeding.finish_with_source().await?;
            (listener, source) = (l, s);
            listener.next_turn(TurnConfig::default());
            continue;
        }
        let spoken = utterance.spoken;
        let mut timings = heard_timings(&utterance);
        ui.set("thinking");
        let mut attempt = answerer
            .answer(
                utterance.end_of_speech,
                &request,
                conversation.clone(),
                &timings,
            )
            .await;
        metrics.voice_answer(attempt.speculative(), answerer.dropped);
        // Stop (the UI, the tray) ends the answer while it is still being written: ending the
        // request closes its stream, which cancels the generation and frees the engine, and the
        // speech thread ends with the pieces it was given. The answer is kept as cancelled.
        let answer = loop {
            tokio::select! {
                answer = attempt.answer() => break answer,
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    if ui.take_stop() {
                        tracing::info!("the answer was stopped from the UI while being written");
                        playback.stop(Instant::now());
                        break Err(anyhow::anyhow!("stopped from the UI"));
                    }
                }
            }
        };
        let first_token = attempt.first_token();
        if let Err(e) = attempt.spoken().await {
            tracing::warn!("{e:#}");
        }
        let answered_ok = answer.is_ok();
        match answer {
            Ok(answer) => {
                if conversation.is_none() {
                    conversation = answer
                        .get("conversation_id")
                        .and_then(|v| v.as_str())
                        .map(str::to_owned);
                }
                // What was said stays out of the log at the default levels (#20, low).
                tracing::info!(request_chars = request.chars().count(), "voice turn");
                tracing::debug!(request = %request, answer = %answer.get("answer").and_then(|v| v.as_str()).unwrap_or(""), "voice turn");
            }
            Err(e) => tracing::warn!("the voice request got no answer: {e:#}"),
        }
        // Listen on (for barge-in) until the answer has played.
        let until = Instant::now() + Duration::from_secs(600);
        while speaker.is_some() && playback.pending(Instant::now()) && Instant::now() < until {
            if ui.take_stop() {
                tracing::info!("the answer was stopped from the UI");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        playback.stop(Instant::now());
        let first_audio = playback.started();
        let (l, barge, s) = feeding.finish_with_source().await?;
        let since = |i: Instant| millis(i.saturating_duration_since(spoken));
        if let Some(t) = first_token {
            timings.insert("end_of_speech_to_first_token".to_owned(), since(t));
        }
        if let Some(t) = first_audio {
            timings.insert("end_of_speech_to_first_audio".to_owned(), since(t));
        }
        if let Some(b) = barge {
            tracing::info!("the answer was interrupted");
            timings.insert(
                "barge_in_to_stop".to_owned(),
                millis(b.stopped.saturating_duration_since(b.speech_started)),
            );
        }
        metrics.voice_turn(
            if answered_ok {
                if barge.is_some() {
                    "interrupted"
                } else {
                    "answered"
                }
            } else {
                "failed"
            },
            &timings,
        );
        (listener, source) = (l, s);
        listener.next_turn(TurnConfig::default());
    }
}

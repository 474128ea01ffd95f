//! The async shell of one listening turn: feeds audio to the [`Listener`] on a blocking thread
//! (paced like a microphone unless told not to), transcribes speculatively when speech pauses
//! (so the transcript is often ready by the time the pause is long enough to be the end), and
//! returns what was heard. Used by `jarvis listen` and by the `stt` benchmark alike.

use std::io::Read;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::listener::Listener;
use crate::stt::{SttWorker, Transcript};
use crate::turn::TurnEvent;
use crate::{Result, VoiceError};

/// Samples fed at a time: 20 ms, as a microphone delivers them.
const CHUNK: usize = 320;
/// Silence fed after the input ends, so a turn that ends with the input still ends.
const TRAILING_SILENCE_MS: u64 = 2_000;

/// Where samples come from.
pub enum Source {
    /// 16 kHz samples in memory (a decoded file).
    Samples(Vec<f32>),
    /// Raw 16 kHz mono 16-bit little-endian PCM from a stream (stdin), fed as it arrives.
    Pcm(Box<dyn Read + Send>),
}

/// How to feed the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// In real time, like a microphone (streams are fed as they arrive either way).
    RealTime,
    /// As fast as the pipeline takes it.
    Fast,
}

/// What one turn heard.
#[derive(Debug)]
pub struct Heard {
    /// Whether the wake word was heard (always true without one).
    pub woke: bool,
    /// Where, in samples.
    pub wake_at: Option<u64>,
    /// The best wake-word score.
    pub wake_score: f32,
    /// The request, when one followed.
    pub utterance: Option<Utterance>,
}

/// A finished utterance and its transcript.
#[derive(Debug)]
pub struct Utterance {
    /// What whisper heard.
    pub transcript: Transcript,
    /// The audio it was given.
    pub audio: Vec<f32>,
    /// The end of the last voiced frame, in samples.
    pub end_of_speech: u64,
    /// Where the end became certain, in samples.
    pub decided_at: u64,
    /// When the last voiced sample was fed (the end of speech as the user felt it).
    pub spoken: Instant,
    /// When the end became certain.
    pub decided: Instant,
    /// When the transcript was ready.
    pub transcribed: Instant,
    /// Whether the transcript was the one started at the pause (not started after the end).
    pub speculative: bool,
}

enum Event {
    Woke {
        at: u64,
        score: f32,
    },
    Paused {
        end_of_speech: u64,
        audio: Vec<f32>,
    },
    Utterance {
        end_of_speech: u64,
        decided_at: u64,
        spoken: Instant,
        audio: Vec<f32>,
    },
    Ended {
        best_wake_score: f32,
    },
}

/// Runs one turn. Returns what was heard, with the listener and the worker for the next turn.
///
/// # Errors
/// A model failing, the worker stopping, or the input failing.
pub async fn hear(
    listener: Listener,
    source: Source,
    pace: Pace,
    stt: SttWorker,
) -> Result<(Heard, Listener, SttWorker)> {
    let (events_tx, mut events) = mpsc::channel(16);
    let feeding = tokio::task::spawn_blocking(move || feed(listener, source, pace, events_tx));
    let (requests, mut results, stt_task) = transcriber(stt);
    let mut heard = Heard {
        woke: false,
        wake_at: None,
        wake_score: 0.0,
        utterance: None,
    };
    let mut requested = Vec::new();
    let mut finished = None;
    while let Some(event) = events.recv().await {
        match event {
            Event::Woke { at, score } => {
                heard.woke = true;
                heard.wake_at = Some(at);
                heard.wake_score = heard.wake_score.max(score);
            }
            Event::Paused {
                end_of_speech,
                audio,
            } => {
                // Only when the worker is free, so the final transcript never waits long.
                if requests.try_send((end_of_speech, audio)).is_ok() {
                    requested.push(end_of_speech);
                }
            }
            Event::Utterance {
                end_of_speech,
                decided_at,
                spoken,
                audio,
            } => {
                finished = Some((end_of_speech, decided_at, spoken, Instant::now(), audio));
                break;
            }
            Event::Ended { best_wake_score } => {
                heard.wake_score = heard.wake_score.max(best_wake_score);
                break;
            }
        }
    }
    drop(events);
    let listener = feeding
        .await
        .map_err(|e| VoiceError::Audio(format!("the listening thread: {e}")))??;
    if let Some((end_of_speech, decided_at, spoken, decided, audio)) = finished {
        heard.woke = heard.woke || !listener.needs_wake();
        let speculative = requested.contains(&end_of_speech);
        if !speculative {
            requests
                .send((end_of_speech, audio.clone()))
                .await
                .map_err(|_| VoiceError::Model("the speech worker stopped".into()))?;
        }
        let transcript = loop {
            match results.recv().await {
                Some((end, result)) if end == end_of_speech => break result?,
                Some(_) => {}
                None => return Err(VoiceError::Model("the speech worker stopped".into())),
            }
        };
        heard.utterance = Some(Utterance {
            transcript,
            audio,
            end_of_speech,
            decided_at,
            spoken,
            decided,
            transcribed: Instant::now(),
            speculative,
        });
    }
    drop(requests);
    let stt = stt_task
        .await
        .map_err(|e| VoiceError::Model(format!("the speech task: {e}")))?;
    Ok((heard, listener, stt))
}

type Requests = mpsc::Sender<(u64, Vec<f32>)>;
type Results = mpsc::Receiver<(u64, Result<Transcript>)>;

/// The worker, owned by one task: transcribes each utterance sent to it, tagged with its end of
/// speech, and reports each result. Returns the worker when the requests end.
fn transcriber(mut worker: SttWorker) -> (Requests, Results, tokio::task::JoinHandle<SttWorker>) {
    // One waiting at most.
    let (requests, mut incoming) = mpsc::channel::<(u64, Vec<f32>)>(1);
    let (results_tx, results) = mpsc::channel(4);
    let task = tokio::spawn(async move {
        while let Some((end, audio)) = incoming.recv().await {
            let result = worker.transcribe(&audio, false).await;
            if results_tx.send((end, result)).await.is_err() {
                break;
            }
        }
        worker
    });
    (requests, results, task)
}

/// Feeds the source to the listener and reports what it heard; returns the listener.
fn feed(
    mut listener: Listener,
    mut source: Source,
    pace: Pace,
    events: mpsc::Sender<Event>,
) -> Result<Listener> {
    let started = Instant::now();
    let first = listener.position();
    let at = |sample: u64| {
        started + Duration::from_micros(sample.saturating_sub(first) * 1_000_000 / 16_000)
    };
    let paced = pace == Pace::RealTime && matches!(source, Source::Samples(_));
    let mut offset = 0;
    let mut trailing = 0_u64;
    let mut bytes = vec![0_u8; CHUNK * 2];
    loop {
        let chunk: Vec<f32> = match &mut source {
            Source::Samples(samples) => {
                let chunk = samples.get(offset..(offset + CHUNK).min(samples.len()));
                offset += CHUNK;
                chunk.unwrap_or_default().to_vec()
            }
            Source::Pcm(input) => {
                let read = read_full(input, &mut bytes)
                    .map_err(|e| VoiceError::Audio(format!("reading the audio stream: {e}")))?;
                bytes
                    .get(..read - read % 2)
                    .unwrap_or_default()
                    .chunks_exact(2)
                    .map(|b| {
                        f32::from(i16::from_le_bytes([
                            b.first().copied().unwrap_or(0),
                            b.get(1).copied().unwrap_or(0),
                        ])) / 32_768.0
                    })
                    .collect()
            }
        };
        let chunk = if chunk.is_empty() {
            trailing += CHUNK as u64;
            if trailing > TRAILING_SILENCE_MS * 16 {
                break;
            }
            vec![0.0; CHUNK]
        } else {
            chunk
        };
        let end = listener.position() + chunk.len() as u64;
        if paced {
            let due = at(end);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        for event in listener.push(&chunk)? {
            let message = match event {
                TurnEvent::Woke { at, score } => Event::Woke { at, score },
                TurnEvent::SpeechStarted { .. } => continue,
                TurnEvent::Paused {
                    start,
                    end_of_speech,
                    end,
                } => Event::Paused {
                    end_of_speech,
                    audio: listener.audio(start, end).to_vec(),
                },
                TurnEvent::Utterance {
                    start,
                    end_of_speech,
                    end,
                    decided_at,
                } => Event::Utterance {
                    end_of_speech,
                    decided_at,
                    spoken: if paced {
                        at(end_of_speech)
                    } else {
                        Instant::now()
                    },
                    audio: listener.audio(start, end).to_vec(),
                },
                TurnEvent::TimedOut { .. } => Event::Ended {
                    best_wake_score: listener.best_wake_score,
                },
            };
            if events.blocking_send(message).is_err() {
                return Ok(listener);
            }
        }
        if listener.is_done() {
            return Ok(listener);
        }
    }
    let _ = events.blocking_send(Event::Ended {
        best_wake_score: listener.best_wake_score,
    });
    Ok(listener)
}

/// Reads until `buffer` is full or the input ends.
fn read_full(input: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match input.read(buffer.get_mut(filled..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

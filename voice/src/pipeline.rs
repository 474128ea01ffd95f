//! The async shell of one listening turn: feeds audio to the [`Listener`] on a blocking thread
//! (paced like a microphone unless told not to), transcribes speculatively when speech pauses
//! (so the transcript is often ready by the time the pause is long enough to be the end), and
//! returns what was heard. Used by `jarvis listen` and by the `stt` benchmark alike.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::echo::{EchoCanceller, MAX_LAG, echo_likeness};
use crate::listener::Listener;
use crate::playback::Playback;
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
    /// 16 kHz chunks as a device delivers them ([`crate::device::open_microphone`]).
    Chunks(std::sync::mpsc::Receiver<Vec<f32>>),
}

/// How to feed the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// In real time, like a microphone (streams are fed as they arrive either way).
    RealTime,
    /// As fast as the pipeline takes it.
    Fast,
}

/// Listening on while the answer plays: the user speaking over it (barge-in) stops it. The
/// microphone's copy of the answer is removed first (echo cancellation), so the assistant does
/// not interrupt itself.
#[derive(Debug, Clone)]
pub struct Watch {
    /// The answer's playback.
    pub playback: Arc<Playback>,
    /// Simulated speaker-to-microphone coupling for recordings and tests: this fraction of
    /// what plays is added to the input, 10 ms late (0: none).
    pub echo: f32,
    /// How the watch ended, for threads that cannot await [`Feeding::finish`].
    pub outcome: Arc<Outcome>,
}

impl Watch {
    /// Watching `playback`, with `echo` simulated coupling.
    pub fn new(playback: Arc<Playback>, echo: f32) -> Self {
        Self {
            playback,
            echo,
            outcome: Arc::new(Outcome::default()),
        }
    }
}

/// The end of a watch: set when the listening thread ends, with the barge-in if there was one.
#[derive(Debug, Default)]
pub struct Outcome {
    state: std::sync::Mutex<(bool, Option<BargeIn>)>,
    ended: std::sync::Condvar,
}

impl Outcome {
    fn end(&self, barge: Option<BargeIn>) {
        if let Ok(mut s) = self.state.lock() {
            s.0 = true;
            if barge.is_some() {
                s.1 = barge;
            }
        }
        self.ended.notify_all();
    }

    /// Blocks until listening ended (at most `timeout`); returns the barge-in, if any.
    pub fn wait(&self, timeout: Duration) -> Option<BargeIn> {
        let Ok(state) = self.state.lock() else {
            return None;
        };
        self.ended
            .wait_timeout_while(state, timeout, |s| !s.0)
            .ok()
            .and_then(|(s, _)| s.1)
    }
}

/// Marks the watch ended however the thread leaves.
struct EndGuard(Option<Arc<Outcome>>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        if let Some(outcome) = &self.0 {
            outcome.end(None);
        }
    }
}

/// The user spoke over the answer.
#[derive(Debug, Clone, Copy)]
pub struct BargeIn {
    /// Where their speech started, in samples.
    pub speech_at: u64,
    /// When that sample was fed.
    pub speech_started: Instant,
    /// When playback stopped.
    pub stopped: Instant,
}

/// The listening thread, still running while the answer plays (with a [`Watch`]).
pub struct Feeding {
    thread: tokio::task::JoinHandle<Result<(Listener, Source)>>,
    events: mpsc::Receiver<Event>,
}

impl Feeding {
    /// Waits for the listening to end (at once without a [`Watch`]; with one, when the answer
    /// has played, the input has ended, or the user barged in). Returns the listener and the
    /// barge-in, if any.
    ///
    /// # Errors
    /// A model or the input failing.
    pub async fn finish(self) -> Result<(Listener, Option<BargeIn>)> {
        let (listener, barge, _) = self.finish_with_source().await?;
        Ok((listener, barge))
    }

    /// [`Self::finish`], giving back the source too (a microphone serves turn after turn).
    ///
    /// # Errors
    /// A model or the input failing.
    pub async fn finish_with_source(mut self) -> Result<(Listener, Option<BargeIn>, Source)> {
        let mut barge = None;
        while let Some(event) = self.events.recv().await {
            if let Event::BargeIn(b) = event {
                barge = Some(b);
            }
        }
        let (listener, source) = self
            .thread
            .await
            .map_err(|e| VoiceError::Audio(format!("the listening thread: {e}")))??;
        Ok((listener, barge, source))
    }
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
    /// When the transcript was ready (before [`Self::decided`] when the one made at the pause
    /// came back before the end was certain).
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
    Resumed {
        at: u64,
    },
    Ended {
        best_wake_score: f32,
    },
    BargeIn(BargeIn),
}

/// Runs one turn. Returns what was heard, the listening (still running with a `watch`, for
/// barge-in), and the worker for the next turn.
///
/// # Errors
/// A model failing, the worker stopping, or the input failing.
pub async fn hear(
    listener: Listener,
    source: Source,
    pace: Pace,
    stt: SttWorker,
    watch: Option<Watch>,
) -> Result<(Heard, Feeding, SttWorker)> {
    hear_reporting(listener, source, pace, stt, watch, &|_| {}).await
}

/// Where a turn is, for a UI: told as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// The wake word was heard: the request is being listened to.
    Woke,
    /// The words so far, transcribed at a pause while the user may still be speaking. If the
    /// pause turns out to be the end, the utterance has the same `end_of_speech` and these words
    /// are its transcript: a caller can start answering them before it knows.
    Heard {
        /// What whisper heard.
        text: String,
        /// The end of the speech transcribed, in samples ([`Utterance::end_of_speech`]).
        end_of_speech: u64,
    },
    /// Speech went on after the pause whose words were [`Stage::Heard`] (up to `at`, in samples):
    /// they were not the whole request.
    Resumed {
        /// Where the speech resumed.
        at: u64,
    },
    /// The request ended: it is being transcribed.
    Transcribing,
}

/// [`hear`], telling `report` when the turn wakes, what was heard at each pause (the partial
/// transcripts), and when the final transcription starts.
///
/// # Errors
/// As [`hear`].
pub async fn hear_reporting(
    listener: Listener,
    source: Source,
    pace: Pace,
    stt: SttWorker,
    watch: Option<Watch>,
    report: &(dyn Fn(Stage) + Sync),
) -> Result<(Heard, Feeding, SttWorker)> {
    let (events_tx, mut events) = mpsc::channel(16);
    let thread =
        tokio::task::spawn_blocking(move || feed(listener, source, pace, events_tx, watch));
    // Where the speech last resumed: a pause's audio still waiting for the worker is skipped
    // once the user went on after it.
    let resumed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (requests, mut results, stt_task) = transcriber(stt, Arc::clone(&resumed));
    let mut heard = Heard {
        woke: false,
        wake_at: None,
        wake_score: 0.0,
        utterance: None,
    };
    let mut requested = Vec::new();
    // Transcripts that came back while the user went on (from pauses), by end of speech.
    let mut ready: Vec<(u64, Result<Transcript>, Instant)> = Vec::new();
    let mut finished = None;
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            Some((end, result)) = results.recv() => {
                if let Ok(t) = &result
                    && heard.woke
                    && !t.text.is_empty()
                {
                    report(Stage::Heard {
                        text: t.text.clone(),
                        end_of_speech: end,
                    });
                }
                // Only the newest few can still be the utterance's.
                ready.push((end, result, Instant::now()));
                if ready.len() > 4 {
                    drop(ready.remove(0));
                }
                continue;
            }
        };
        let Some(event) = event else { break };
        match event {
            Event::Woke { at, score } => {
                if !heard.woke {
                    report(Stage::Woke);
                }
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
                report(Stage::Transcribing);
                finished = Some((end_of_speech, decided_at, spoken, Instant::now(), audio));
                break;
            }
            Event::Resumed { at } => {
                resumed.fetch_max(at, std::sync::atomic::Ordering::Relaxed);
                report(Stage::Resumed { at });
            }
            Event::Ended { best_wake_score } => {
                heard.wake_score = heard.wake_score.max(best_wake_score);
                break;
            }
            Event::BargeIn(_) => {}
        }
    }
    let feeding = Feeding { thread, events };
    if let Some((end_of_speech, decided_at, spoken, decided, audio)) = finished {
        // Without a wake word every utterance counts as woken.
        heard.woke = true;
        let speculative = requested.contains(&end_of_speech);
        if !speculative {
            requests
                .send((end_of_speech, audio.clone()))
                .await
                .map_err(|_| VoiceError::Model("the speech worker stopped".into()))?;
        }
        let kept = ready
            .iter()
            .position(|(end, _, _)| *end == end_of_speech)
            .map(|at| ready.swap_remove(at));
        let (transcript, transcribed) = match kept {
            Some((_, result, at)) => (result?, at),
            None => loop {
                match results.recv().await {
                    Some((end, result)) if end == end_of_speech => break (result?, Instant::now()),
                    Some(_) => {}
                    None => {
                        return Err(VoiceError::Model("the speech worker stopped".into()));
                    }
                }
            },
        };
        heard.utterance = Some(Utterance {
            transcript,
            audio,
            end_of_speech,
            decided_at,
            spoken,
            decided,
            transcribed,
            speculative,
        });
    }
    drop(requests);
    let stt = stt_task
        .await
        .map_err(|e| VoiceError::Model(format!("the speech task: {e}")))?;
    Ok((heard, feeding, stt))
}

type Requests = mpsc::Sender<(u64, Vec<f32>)>;
type Results = mpsc::Receiver<(u64, Result<Transcript>)>;

/// The worker, owned by one task: transcribes each utterance sent to it, tagged with its end of
/// speech, and reports each result; skips one whose speech went on (`resumed` is past its end)
/// before its turn came. Returns the worker when the requests end.
fn transcriber(
    mut worker: SttWorker,
    resumed: Arc<std::sync::atomic::AtomicU64>,
) -> (Requests, Results, tokio::task::JoinHandle<SttWorker>) {
    // One waiting at most.
    let (requests, mut incoming) = mpsc::channel::<(u64, Vec<f32>)>(1);
    let (results_tx, results) = mpsc::channel(4);
    let task = tokio::spawn(async move {
        while let Some((end, audio)) = incoming.recv().await {
            if resumed.load(std::sync::atomic::Ordering::Relaxed) > end {
                continue;
            }
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
/// Delay of the simulated echo (10 ms).
const ECHO_DELAY: usize = 160;
/// Input this much like the answer (normalised correlation) is its echo, not the user.
const ECHO_GATE: f32 = 0.45;

fn feed(
    mut listener: Listener,
    mut source: Source,
    pace: Pace,
    events: mpsc::Sender<Event>,
    watch: Option<Watch>,
) -> Result<(Listener, Source)> {
    let _end = EndGuard(watch.as_ref().map(|w| Arc::clone(&w.outcome)));
    // After the utterance, with a watch: the answer's playback and its echo.
    let mut watching = false;
    let mut aec = EchoCanceller::new(100);
    let mut echo_line: std::collections::VecDeque<f32> =
        std::iter::repeat_n(0.0, ECHO_DELAY).collect();
    let mut history: std::collections::VecDeque<f32> = std::iter::repeat_n(0.0, MAX_LAG).collect();
    let started = Instant::now();
    let first = listener.position();
    let paced = pace == Pace::RealTime && matches!(source, Source::Samples(_));
    // When a sample was heard: on the paced clock for a recording; for a live stream, counted
    // back from now (a stream arrives in real time).
    let at = |sample: u64, position: u64| {
        if paced {
            started + Duration::from_micros(sample.saturating_sub(first) * 1_000_000 / 16_000)
        } else {
            Instant::now()
                .checked_sub(Duration::from_micros(
                    position.saturating_sub(sample) * 1_000_000 / 16_000,
                ))
                .unwrap_or_else(Instant::now)
        }
    };
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
            Source::Chunks(chunks) => chunks.recv().unwrap_or_default(),
            Source::Pcm(input) => {
                let read = read_full(input, &mut bytes)
                    .map_err(|e| VoiceError::Audio(format!("reading the audio stream: {e}")))?;
                jarvis_inference::stt_protocol::pcm_from_bytes(
                    bytes.get(..read).unwrap_or_default(),
                )
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
        let begin = listener.position();
        let end = begin + chunk.len() as u64;
        if paced {
            let due = at(end, end);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let chunk = match (&watch, watching) {
            (Some(w), true) => {
                let reference = w.playback.reference(at(begin, end), chunk.len());
                let mic: Vec<f32> = chunk
                    .iter()
                    .zip(&reference)
                    .map(|(&m, &r)| {
                        echo_line.push_back(r);
                        m + w.echo * echo_line.pop_front().unwrap_or(0.0)
                    })
                    .collect();
                let residual = aec.process(&mic, &reference);
                history.extend(reference.iter().copied());
                while history.len() > MAX_LAG + residual.len() {
                    history.pop_front();
                }
                // What the canceller has not removed yet (it learns the room in about a
                // second) still looks like the answer: the detector hears silence instead.
                let likeness = echo_likeness(&residual, history.make_contiguous());
                if likeness > ECHO_GATE {
                    vec![0.0; residual.len()]
                } else {
                    residual
                }
            }
            _ => chunk,
        };
        for event in listener.push(&chunk)? {
            if watching {
                if let (TurnEvent::SpeechStarted { at: speech_at }, Some(w)) = (event, &watch) {
                    let now = Instant::now();
                    if w.playback.stop(now) {
                        let barge = BargeIn {
                            speech_at,
                            speech_started: at(speech_at, end),
                            stopped: now,
                        };
                        w.outcome.end(Some(barge));
                        let _ = events.blocking_send(Event::BargeIn(barge));
                        return Ok((listener, source));
                    }
                }
                continue;
            }
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
                    spoken: at(end_of_speech, listener.position()),
                    audio: listener.audio(start, end).to_vec(),
                },
                TurnEvent::Resumed { at } => Event::Resumed { at },
                TurnEvent::TimedOut { .. } => Event::Ended {
                    best_wake_score: listener.best_wake_score,
                },
            };
            if events.blocking_send(message).is_err() {
                return Ok((listener, source));
            }
        }
        let Some(w) = &watch else {
            if listener.is_done() {
                return Ok((listener, source));
            }
            continue;
        };
        if watching && !w.playback.pending(Instant::now()) {
            return Ok((listener, source));
        }
        if listener.is_done() {
            // The utterance is over (or speech that did not barge in ended): listen on, for
            // any speech, while the answer plays.
            if !watching {
                trailing = 0;
            }
            watching = true;
            listener.barge_in_turn();
        }
    }
    let _ = events.blocking_send(Event::Ended {
        best_wake_score: listener.best_wake_score,
    });
    Ok((listener, source))
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

//! The listening half of a turn: audio in, [`TurnEvent`]s out. Runs the voice detector on every
//! 32 ms frame and the wake word on every 80 ms step while asleep, feeds both to the [`Turn`]
//! state machine, and keeps the audio the utterance may need. Blocking (onnxruntime), so the
//! async shell calls it from a blocking thread.

use ort::environment::Environment;

use crate::Result;
use crate::turn::{Turn, TurnConfig, TurnEvent};
use crate::vad::{FRAME, Vad};
use crate::wake::{WakeModels, WakeWord};

/// The wake word's settings, changed from outside while the listener runs (the user's
/// settings screen): whether it listens for the wake word at all (off: push-to-talk only), and
/// the score that wakes it (lower wakes more easily, and more often by mistake).
#[derive(Debug)]
pub struct WakeControl {
    enabled: std::sync::atomic::AtomicBool,
    threshold: std::sync::atomic::AtomicU32,
}

impl WakeControl {
    /// Settings to start with.
    pub fn new(enabled: bool, threshold: f32) -> Self {
        Self {
            enabled: std::sync::atomic::AtomicBool::new(enabled),
            threshold: std::sync::atomic::AtomicU32::new(threshold.to_bits()),
        }
    }

    /// Whether the wake word is listened for.
    pub fn enabled(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The score that wakes.
    pub fn threshold(&self) -> f32 {
        f32::from_bits(self.threshold.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Changes both; the listener follows from its next frame.
    pub fn set(&self, enabled: bool, threshold: f32) {
        self.enabled
            .store(enabled, std::sync::atomic::Ordering::Relaxed);
        self.threshold
            .store(threshold.to_bits(), std::sync::atomic::Ordering::Relaxed);
    }
}

/// The listening pipeline.
pub struct Listener {
    vad: Vad,
    wake: Option<WakeWord>,
    turn: Turn,
    /// Audio from sample `offset` on.
    audio: Vec<f32>,
    offset: u64,
    /// Samples seen.
    position: u64,
    /// Samples not yet in a whole voice frame.
    frame: Vec<f32>,
    /// The best wake score heard.
    pub best_wake_score: f32,
    config: TurnConfig,
    /// Set from outside (a push-to-talk button) to wake the turn at the next frame.
    talk: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Set from outside: the wake word on or off, and its threshold.
    wake_control: Option<std::sync::Arc<WakeControl>>,
    /// Whether the wake word was listened for at the last frame.
    wake_listening: bool,
}

impl Listener {
    /// Loads the models; without `wake` models the turn needs no wake word (push-to-talk).
    ///
    /// # Errors
    /// A model that cannot be loaded.
    pub fn load(
        environment: &Environment,
        vad: &std::path::Path,
        wake: Option<&WakeModels<'_>>,
        mut config: TurnConfig,
    ) -> Result<Self> {
        let vad = Vad::load(environment, vad)?;
        let wake = wake.map(|w| WakeWord::load(environment, w)).transpose()?;
        config.require_wake = wake.is_some();
        Ok(Self {
            vad,
            wake,
            turn: Turn::new(config),
            config,
            audio: Vec::new(),
            offset: 0,
            position: 0,
            frame: Vec::with_capacity(FRAME),
            best_wake_score: 0.0,
            talk: None,
            wake_control: None,
            wake_listening: true,
        })
    }

    /// Push-to-talk: whenever `flag` is set, the next frame wakes the turn (if it sleeps) and
    /// clears the flag.
    pub fn push_to_talk(&mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        self.talk = Some(flag);
    }

    /// Follows `control` for whether to listen for the wake word and how easily it wakes.
    pub fn wake_control(&mut self, control: std::sync::Arc<WakeControl>) {
        self.wake_control = Some(control);
    }

    /// Starts a new turn (the audio heard so far is forgotten).
    pub fn next_turn(&mut self, config: TurnConfig) {
        let mut config = config;
        config.require_wake = self.wake.is_some();
        self.config = config;
        self.turn = Turn::new(config);
        if let Some(w) = &mut self.wake {
            w.reset();
        }
        self.offset = self.position;
        self.audio.clear();
        self.best_wake_score = 0.0;
    }

    /// Listens for any speech, wake word or not, from now on (the user talking over an answer).
    pub fn barge_in_turn(&mut self) {
        self.turn = Turn::new(TurnConfig {
            require_wake: false,
            ..self.config
        });
    }

    /// Samples heard so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Whether the turn is over.
    pub fn is_done(&self) -> bool {
        self.turn.is_done()
    }

    /// Whether speech is heard right now.
    pub fn in_speech(&self) -> bool {
        self.turn.in_speech()
    }

    /// Feeds 16 kHz samples; returns what happened.
    ///
    /// # Errors
    /// onnxruntime's.
    pub fn push(&mut self, samples: &[f32]) -> Result<Vec<TurnEvent>> {
        let mut events = Vec::new();
        if self.turn.is_done() {
            return Ok(events);
        }
        self.audio.extend_from_slice(samples);
        for chunk in samples.chunks(FRAME) {
            let room = FRAME - self.frame.len();
            let (now, later) = chunk.split_at(room.min(chunk.len()));
            self.frame.extend_from_slice(now);
            if self.frame.len() == FRAME {
                self.frame_done(&mut events)?;
                self.frame.clear();
            }
            self.frame.extend_from_slice(later);
        }
        // Drop audio no turn can need any more.
        let keep = self.turn.keep_from(self.position).max(self.offset);
        let drop = usize::try_from(keep - self.offset)
            .unwrap_or(0)
            .min(self.audio.len());
        if drop > 16_000 {
            self.audio.drain(..drop);
            self.offset += drop as u64;
        }
        Ok(events)
    }

    fn frame_done(&mut self, events: &mut Vec<TurnEvent>) -> Result<()> {
        self.position += FRAME as u64;
        let end = self.position;
        if let Some(talk) = &self.talk
            && talk.swap(false, std::sync::atomic::Ordering::Relaxed)
            && let Some(e) = self.turn.talk(end)
        {
            events.push(e);
        }
        let listening = match &self.wake_control {
            Some(control) => {
                self.turn.set_wake_threshold(control.threshold());
                control.enabled()
            }
            None => true,
        };
        // Turned back on: the wake word starts from fresh audio, not what it heard before.
        if listening
            && !self.wake_listening
            && let Some(wake) = &mut self.wake
        {
            wake.reset();
        }
        self.wake_listening = listening;
        if let Some(wake) = &mut self.wake
            && listening
            && !self.turn.is_awake()
            && !self.turn.is_done()
        {
            let scores = wake.push(&self.frame)?;
            // Each score belongs to a step that ended within this frame; the frame's end is
            // close enough (< 32 ms late).
            for score in scores {
                self.best_wake_score = self.best_wake_score.max(score);
                if let Some(e) = self.turn.wake(end, score) {
                    events.push(e);
                }
            }
        }
        let probability = self.vad.probability(&self.frame)?;
        if let Some(e) = self.turn.voice(end, FRAME as u64, probability) {
            events.push(e);
        }
        Ok(())
    }

    /// The audio from sample `start` to `end` (what is still kept of it).
    pub fn audio(&self, start: u64, end: u64) -> &[f32] {
        let from = usize::try_from(start.saturating_sub(self.offset)).unwrap_or(usize::MAX);
        let to = usize::try_from(end.saturating_sub(self.offset)).unwrap_or(usize::MAX);
        let to = to.min(self.audio.len());
        self.audio.get(from.min(to)..to).unwrap_or_default()
    }
}

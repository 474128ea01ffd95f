//! The voice loop's state, shared by the loop (which sets it), the UI (which shows it and changes
//! the settings it follows) and the local API: what it is doing, muted or not, the wake word,
//! the voice chosen, what was heard.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};
use tokio::sync::broadcast;

/// The voice loop's state as the UI shows it: what it is doing, and whether the microphone is
/// muted. Changes are published as `{"type": "voice", …}` events; levels as `{"type": "level"}`.
pub struct Voice {
    state: std::sync::Mutex<VoiceInfo>,
    muted: AtomicBool,
    /// Push-to-talk: the listener wakes at its next frame when set.
    talk: Arc<AtomicBool>,
    /// Stop the answer being spoken.
    stop: AtomicBool,
    /// The wake word on or off, and its threshold (the listener follows it live).
    wake: Arc<jarvis_voice::listener::WakeControl>,
    /// A voice chosen in settings, for the loop to load before its next turn (`Some(None)`:
    /// back to the default).
    voice_change: std::sync::Mutex<Option<Option<String>>>,
    /// The voice answers are spoken with now (`piper`, `espeak-ng`).
    tts: std::sync::Mutex<&'static str>,
    /// What the current (or last) turn heard: partial at each pause, then final.
    heard: std::sync::Mutex<String>,
    events: broadcast::Sender<Value>,
}

#[derive(Clone, Default)]
struct VoiceInfo {
    state: &'static str,
    problem: Option<String>,
}

impl Voice {
    pub fn new(
        events: broadcast::Sender<Value>,
        enabled: bool,
        settings: &crate::settings::Settings,
    ) -> Self {
        Self {
            state: std::sync::Mutex::new(VoiceInfo {
                state: if enabled { "starting" } else { "off" },
                problem: (!enabled).then(|| "voice is off (`jarvis up --no-voice`)".to_owned()),
            }),
            muted: AtomicBool::new(false),
            talk: Arc::new(AtomicBool::new(false)),
            stop: AtomicBool::new(false),
            wake: Arc::new(jarvis_voice::listener::WakeControl::new(
                settings.wake_word,
                settings.wake_threshold,
            )),
            voice_change: std::sync::Mutex::new(settings.voice.clone().map(Some)),
            tts: std::sync::Mutex::new(""),
            heard: std::sync::Mutex::new(String::new()),
            events,
        }
    }

    /// What the listener follows for the wake word.
    pub fn wake_control(&self) -> Arc<jarvis_voice::listener::WakeControl> {
        Arc::clone(&self.wake)
    }

    /// The wake word's settings changed.
    pub(crate) fn set_wake(&self, enabled: bool, threshold: f32) {
        self.wake.set(enabled, threshold);
        let _ = self.events.send(self.json());
    }

    /// Another voice was chosen: the loop loads it before its next turn.
    pub(crate) fn change_voice(&self, choice: Option<String>) {
        if let Ok(mut change) = self.voice_change.lock() {
            *change = Some(choice);
        }
    }

    /// The voice chosen since the last call, if any.
    pub fn take_voice_change(&self) -> Option<Option<String>> {
        self.voice_change.lock().ok().and_then(|mut c| c.take())
    }

    /// What the turn has heard so far (a partial transcript, then the final one; empty at a
    /// new wake).
    pub fn heard(&self, text: String) {
        let changed = match self.heard.lock() {
            Ok(mut heard) if *heard != text => {
                *heard = text;
                true
            }
            _ => false,
        };
        if changed {
            let _ = self.events.send(self.json());
        }
    }

    /// The voice answers are now spoken with.
    pub fn set_tts(&self, name: &'static str) {
        if let Ok(mut tts) = self.tts.lock() {
            *tts = name;
        }
        let _ = self.events.send(self.json());
    }

    /// The flag the listener watches for push-to-talk.
    pub fn talk_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.talk)
    }

    /// Whether the user asked to stop the spoken answer (clears the request).
    pub fn take_stop(&self) -> bool {
        self.stop.swap(false, Ordering::Relaxed)
    }

    /// Idle, listening, transcribing, thinking, speaking, off.
    pub fn set(&self, state: &'static str) {
        self.update(state, None);
    }

    /// Voice cannot run, and why.
    pub fn off(&self, problem: String) {
        self.update("off", Some(problem));
    }

    pub(crate) fn update(&self, state: &'static str, problem: Option<String>) {
        let changed = match self.state.lock() {
            Ok(mut info) => {
                let changed = info.state != state || info.problem != problem;
                *info = VoiceInfo { state, problem };
                changed
            }
            Err(_) => false,
        };
        if changed {
            let _ = self.events.send(self.json());
        }
    }

    pub fn muted(&self) -> bool {
        self.muted.load(Ordering::Relaxed)
    }

    pub(crate) fn set_muted(&self, muted: bool) {
        if self.muted.swap(muted, Ordering::Relaxed) != muted {
            let _ = self.events.send(self.json());
        }
    }

    /// A microphone level (rms and peak of the last ~100 ms, 0 to 1).
    pub fn level(&self, rms: f32, peak: f32) {
        let _ = self.events.send(json!({
            "type": "level",
            "rms": (rms * 1000.0).round() / 1000.0,
            "peak": (peak * 1000.0).round() / 1000.0,
        }));
    }

    pub fn json(&self) -> Value {
        let info = self.state.lock().map(|i| i.clone()).unwrap_or_default();
        json!({
            "type": "voice",
            "state": info.state,
            "muted": self.muted(),
            "problem": info.problem,
            "wake_word": self.wake.enabled(),
            "tts": self.tts.lock().map(|t| *t).unwrap_or(""),
            "heard": self.heard.lock().map(|h| h.clone()).unwrap_or_default(),
        })
    }

    /// What the loop is doing now (`off`, `starting`, `idle`, `listening`, `thinking`,
    /// `speaking`).
    pub(crate) fn current(&self) -> &'static str {
        self.state.lock().map(|i| i.state).unwrap_or("off")
    }

    /// Push-to-talk: the listener wakes at its next frame.
    pub(crate) fn request_talk(&self) {
        self.talk.store(true, Ordering::Relaxed);
    }

    /// Stop the answer being spoken.
    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

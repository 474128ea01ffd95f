//! The user's settings for this device (`settings.json` in the home): what the UI's settings
//! screen changes, read by the node at start and changed live through `/v1/settings`.

use anyhow::{Context, Result};
use jarvis_inference::offload::Policy;
use serde::{Deserialize, Serialize};

use crate::home::Home;

const FILE: &str = "settings.json";

/// Every setting, each with its default when absent (so an older file still loads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Answer here, or on the org's GPU peers.
    pub offload: Policy,
    /// Listen for the wake word (off: push-to-talk only).
    pub wake_word: bool,
    /// The wake word's score that wakes: lower wakes more easily (and more often by mistake).
    pub wake_threshold: f32,
    /// The voice answers are spoken with: a Piper voice's name, `espeak`, or none for the
    /// default (the catalog's Piper voice when installed, else espeak-ng).
    pub voice: Option<String>,
}

/// The range of wake thresholds accepted.
pub const WAKE_THRESHOLDS: std::ops::RangeInclusive<f32> = 0.05..=0.95;

/// Whether `name` is a plain file name (no path, not hidden): what a voice's name may be.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0'])
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            offload: Policy::default(),
            wake_word: true,
            wake_threshold: 0.5,
            voice: None,
        }
    }
}

impl Settings {
    /// This home's settings (the defaults when none were saved).
    ///
    /// # Errors
    /// When the file cannot be read or is damaged (it says which file to fix or delete).
    pub fn load(home: &Home) -> Result<Self> {
        match home.read_optional(FILE)? {
            Some(bytes) => {
                let settings: Self = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "{} is damaged: fix it, or delete it to go back to the defaults",
                        home.dir().join(FILE).display()
                    )
                })?;
                if let Some(voice) = settings.voice.as_deref().filter(|v| !plain_name(v)) {
                    anyhow::bail!(
                        "{}: {voice:?} is not a voice's name (a file name in the model cache, without .onnx)",
                        home.dir().join(FILE).display()
                    );
                }
                if !WAKE_THRESHOLDS.contains(&settings.wake_threshold) {
                    anyhow::bail!(
                        "{}: wake_threshold must be between 0.05 and 0.95",
                        home.dir().join(FILE).display()
                    );
                }
                Ok(settings)
            }
            None => Ok(Self::default()),
        }
    }

    /// Saves them (atomically: a crash leaves the old file or the new one).
    ///
    /// # Errors
    /// When the home cannot be written.
    pub fn save(&self, home: &Home) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        home.write_atomic(FILE, &bytes, false)
    }
}

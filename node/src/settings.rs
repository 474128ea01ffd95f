//! The user's settings for this device (`settings.json` in the home): what the UI's settings
//! screen changes, read by the node at start and changed live through `/v1/settings`.

use anyhow::{Context, Result};
use jarvis_inference::offload::Policy;
use serde::{Deserialize, Serialize};

use crate::home::Home;

const FILE: &str = "settings.json";

/// Every setting, each with its default when absent (so an older file still loads).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Answer here, or on the org's GPU peers.
    pub offload: Policy,
}

impl Settings {
    /// This home's settings (the defaults when none were saved).
    ///
    /// # Errors
    /// When the file cannot be read or is damaged (it says which file to fix or delete).
    pub fn load(home: &Home) -> Result<Self> {
        match home.read_optional(FILE)? {
            Some(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is damaged: fix it, or delete it to go back to the defaults",
                    home.dir().join(FILE).display()
                )
            }),
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

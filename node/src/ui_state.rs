//! What the UI's routes share with the node, held in the API's state ([`crate::api_state`]).

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;
use zeroize::Zeroizing;

use crate::voice_state::Voice;

/// What the UI's routes share with the node.
pub struct UiState {
    /// This device's home, for the commands run on its behalf.
    pub(crate) home: PathBuf,
    /// The admin home (`--admin-home`), when this machine is also an admin's workstation.
    pub(crate) admin_home: Option<PathBuf>,
    /// This device's passphrase, for commands that unseal its keys (pairing).
    pub(crate) passphrase: Zeroizing<String>,
    pub voice: Arc<Voice>,
    /// The pairing under way, if any: a new one replaces it.
    pub(crate) pairing: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Models being downloaded (one download per model at a time).
    pub(crate) pulling: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    /// Held from reading `settings.json` to applying a change, so two changes at once do not
    /// lose one.
    pub(crate) settings: tokio::sync::Mutex<()>,
    pub(crate) events: broadcast::Sender<Value>,
}

impl UiState {
    pub fn new(
        home: PathBuf,
        admin_home: Option<PathBuf>,
        passphrase: Zeroizing<String>,
        voice: Arc<Voice>,
        events: broadcast::Sender<Value>,
    ) -> Self {
        Self {
            home,
            admin_home,
            passphrase,
            voice,
            pairing: tokio::sync::Mutex::new(None),
            pulling: Arc::default(),
            settings: tokio::sync::Mutex::new(()),
            events,
        }
    }
}

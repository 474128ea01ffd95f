//! The local API's state, shared by its three sets of routes ([`crate::api`], [`crate::ui`],
//! [`crate::openai`]): the node's command queue and events, the engine, where answers are made,
//! the UI's share, and the token every route but the page checks.

use axum::http::HeaderMap;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::node::Command;

#[derive(Clone)]
pub struct AppState {
    /// The bearer token; replaced when it is rotated (`jarvis token --rotate`).
    pub token: std::sync::Arc<std::sync::RwLock<String>>,
    pub commands: mpsc::Sender<Command>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub events: tokio::sync::broadcast::Sender<Value>,
    /// Questions answered: the engine, where answers are made (here or on a GPU peer), held
    /// answers.
    pub asking: crate::ask::Asking,
    /// Set when the node stops: event streams end then, or graceful shutdown would wait for
    /// them forever (the state holding the sender lives as long as the server).
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// The UI's share: voice state, pairing, the admin home.
    pub ui: std::sync::Arc<crate::ui_state::UiState>,
    /// The port the API listens on, for the same-origin check.
    pub port: u16,
}

pub fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Ok(token) = state.token.read() else {
        return false;
    };
    let expected = format!("Bearer {}", *token);
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // Constant-time enough for a local token: compare every byte.
        .is_some_and(|v| {
            v.len() == expected.len()
                && v.bytes()
                    .zip(expected.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
}

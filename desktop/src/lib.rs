//! The desktop app: conversation view, microphone state, push-to-talk, devices, peers, pairing
//! and settings, talking to the node only through its local API.
//!
//! Not built yet: this crate is filled by the desktop issue (Tauri 2, see TESTING.md).

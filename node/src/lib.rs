//! The Jarvis node as a library: what runs on a user's device (and on a GPU peer), with no
//! command line. The `jarvis` binary (`cli/`) parses arguments, calls the programs here
//! ([`up::run`], [`gpu::run`], [`pairing`]) or asks a running node over its local API, and
//! prints.
//!
//! The modules, by layer (a module uses only those above it or beside it in its group; the
//! workspace's `tidy` test holds that no two files lean on each other):
//!
//! - **The daemon** — [`node`]: the actor that owns the replica, the swarm and the peers
//!   (replication, redial, admission through `jarvis_mesh::admission`); [`mesh`]: its libp2p
//!   behaviour; [`siblings`], [`joined`], [`pairing`]: the user's other devices and how they are
//!   added; [`conversations`]: the CRDT documents a conversation is made of; [`metrics`],
//!   [`shutdown`].
//! - **The answer path** — [`ask`]: one question to one answer (local model or GPU peer),
//!   typed, no JSON; [`answer`]: streaming a generation into the document; [`offload`]: which GPU
//!   peer, and failing over mid-answer; [`llm`]: which model and worker; [`offline`]: answering
//!   with no node running.
//! - **Reaching the node** — [`handle`]: [`handle::NodeHandle`], in-process (the voice loop in
//!   `jarvis up`) or over HTTP ([`remote`], for `jarvis listen`); [`local_api`]: where a running
//!   node's API is and its token.
//! - **HTTP** (the only modules that know axum) — [`api`], [`api_state`], [`openai`], [`ui`],
//!   [`ui_state`].
//! - **Voice** — [`voice_loop`], [`speculate`], [`front_end`], [`voice_state`], [`settings`].
//! - **Programs** — [`up`] (`jarvis up`: daemon, API and voice together) and [`gpu`] (a GPU
//!   peer: mesh and inference only). They report through [`output::Output`], the JSON-lines
//!   contract of `shared/design/cli.md`.
//!
//! Invariant: nothing here parses a command line or reads `std::env::args`; every program takes
//! a config struct.

pub use jarvis_home as home;

pub mod answer;
pub mod api;
pub mod api_state;
pub mod ask;
pub mod conversations;
pub mod front_end;
pub mod gpu;
pub mod gpu_metrics;
pub mod handle;
pub mod joined;
pub mod learned_relays;
pub mod llm;
pub mod local_api;
pub mod mesh;
pub mod metrics;
pub mod node;
pub mod offline;
pub mod offload;
pub mod openai;
pub mod output;
pub mod pairing;
pub mod remote;
pub mod settings;
pub mod shutdown;
pub mod siblings;
pub mod speculate;
pub mod ui;
pub mod ui_state;
pub mod up;
pub mod upstream;
pub mod voice_loop;
pub mod voice_state;

/// This machine's host name, the default name of a new device.
pub fn host_name() -> String {
    jarvis_home::host_name().unwrap_or_else(|| "my-device".to_owned())
}

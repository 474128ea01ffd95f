//! `jarvis-sim`: drives the real sans-IO cores (sync sessions, replicas, the relay hub) for many
//! simulated devices on a virtual clock with a seeded random source.
//!
//! - [`engine`]: the event queue, the clock, and random draws that are a pure function of
//!   (seed, stream, counter), so a seed and arguments decide a run bit for bit.
//! - [`net`]: the modelled network (latency distributions, loss as retransmission delay,
//!   bandwidth, connections that end with a partition).
//! - [`world`]: the org — devices with real replicas and sessions, relay instances running the
//!   real hub — and the events that move it.
//! - [`scenario`]: what `jarvis-sim list` names and `jarvis-sim run` runs, and the report.
//! - [`plot`]: the run's plots (SVG).
//! - [`store`]: the relay instances' storage, their own or one shared database.
//! - [`gpu`]: GPU peers from a service model, chosen by the node's own offload scheduler.
//!
//! - [`light`]: the light device model (counters, the real encodings' sizes, cryptography as a
//!   cost model), for org scale; [`plan`]: the smallest fleet meeting the targets.
//!
//! Scenarios: `org-day`, `partition`, `mass-revocation` (light model only), `relay-loss`,
//! `gpu-failure` and `month-offline`; `scale` (wall time and memory against size) and `plan`.
//! Compared with real runs by `jarvis-bench sim-validate` (through [`light::probe`]).

pub mod engine;
pub mod gpu;
pub mod light;
pub mod net;
pub mod plan;
pub mod plot;
pub mod scenario;
pub mod store;
pub mod world;

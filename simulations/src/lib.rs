//! `jarvis-sim`: drives the real sans-IO cores (sync, relay store logic, revocation, the offload
//! scheduler) for many simulated devices on a virtual clock with a seeded random source.
//!
//! Not built yet: scenarios arrive with the cores they simulate.

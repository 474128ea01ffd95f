//! Nothing here: the checks are this crate's tests (`tests/architecture.rs`), run with the rest
//! of the workspace's, so a change that bends the structure fails CI where it is made.

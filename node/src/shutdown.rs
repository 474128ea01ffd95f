//! The signals that mean "stop": Ctrl-C (SIGINT), and SIGTERM from service managers.
//!
//! Installed before the node reports that it is up, so a signal sent the moment a script sees
//! "up" is caught and handled as a clean shutdown rather than killing the process.

use anyhow::{Context, Result};

#[cfg(unix)]
pub struct Shutdown {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Shutdown {
    pub fn install() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("listening for Ctrl-C")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    /// Cancel-safe: waiting again after a cancelled wait still sees the next signal.
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
    }
}

#[cfg(not(unix))]
pub struct Shutdown;

#[cfg(not(unix))]
impl Shutdown {
    pub fn install() -> Result<Self> {
        Ok(Self)
    }

    pub async fn wait(&mut self) {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

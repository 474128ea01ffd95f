//! The client of `jarvis-stt-worker`: starts the process, waits until its model is loaded, and
//! transcribes one utterance at a time over its JSON-lines protocol
//! ([`jarvis_inference::stt_protocol`]). The owner holds it; dropping it ends the process.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use jarvis_inference::stt_protocol::{self, Command, Event};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command as Process};

use crate::{Result, VoiceError};

/// The name of the whisper.cpp worker program.
pub const STT_WORKER: &str = "jarvis-stt-worker";
/// How long loading a model may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// A transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// The words, trimmed.
    pub text: String,
    /// Length of the audio.
    pub audio_ms: u64,
    /// Time whisper.cpp spent.
    pub decode_ms: u64,
}

/// A running worker.
pub struct SttWorker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
    /// How long its model took to load.
    pub load_ms: u64,
}

fn fail(message: impl Into<String>) -> VoiceError {
    VoiceError::Model(message.into())
}

impl SttWorker {
    /// Starts `worker --model model` and waits until it is ready.
    ///
    /// # Errors
    /// The worker's own message when it cannot start or load the model.
    pub async fn start(worker: &Path, model: &Path, threads: Option<u32>) -> Result<Self> {
        let mut command = Process::new(worker);
        // The worker sees none of our secrets (the passphrase, tokens): only what it needs.
        command
            .env_clear()
            .envs(jarvis_inference::supervisor::worker_environment(
                std::env::vars(),
            ))
            .arg("--model")
            .arg(model);
        if let Some(threads) = threads {
            command.arg("--threads").arg(threads.to_string());
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("cannot start {}: {e}", worker.display())))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| fail("the speech worker has no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| fail("the speech worker has no stdout"))?;
        let mut worker = Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            next_id: 1,
            load_ms: 0,
        };
        match tokio::time::timeout(LOAD_TIMEOUT, worker.next_event()).await {
            Err(_) => Err(fail(
                "the speech worker did not load its model within 2 minutes",
            )),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Event::Ready { load_ms, .. })) => {
                worker.load_ms = load_ms;
                Ok(worker)
            }
            Ok(Ok(Event::Error { message, .. })) => Err(fail(format!(
                "the speech model {} cannot be used: {message}",
                model.display()
            ))),
            Ok(Ok(other)) => Err(fail(format!("the speech worker began with {other:?}"))),
        }
    }

    async fn next_event(&mut self) -> Result<Event> {
        let mut line = String::new();
        let read = (&mut self.stdout)
            .take(stt_protocol::MAX_LINE as u64 + 1)
            .read_line(&mut line)
            .await
            .map_err(|e| fail(format!("reading the speech worker: {e}")))?;
        if read == 0 {
            let status = self.child.try_wait().ok().flatten();
            return Err(fail(format!(
                "the speech worker stopped{}",
                status.map(|s| format!(" ({s})")).unwrap_or_default()
            )));
        }
        stt_protocol::decode_event(&line).map_err(|e| fail(format!("the speech worker: {e}")))
    }

    /// Transcribes 16 kHz samples in [-1, 1].
    ///
    /// # Errors
    /// The worker's message, or that it stopped.
    pub async fn transcribe(&mut self, samples: &[f32], partial: bool) -> Result<Transcript> {
        let id = self.next_id;
        self.next_id += 1;
        let pcm: Vec<i16> = samples.iter().map(|&s| crate::audio::to_i16(s)).collect();
        let line = stt_protocol::encode(&Command::Transcribe {
            id,
            pcm: stt_protocol::pcm_to_base64(&pcm),
            partial,
        });
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| fail(format!("writing to the speech worker: {e}")))?;
        self.stdin
            .flush()
            .await
            .map_err(|e| fail(format!("writing to the speech worker: {e}")))?;
        loop {
            match self.next_event().await? {
                Event::Transcript {
                    id: got,
                    text,
                    audio_ms,
                    decode_ms,
                    ..
                } if got == id => {
                    return Ok(Transcript {
                        text: text.trim().to_owned(),
                        audio_ms,
                        decode_ms,
                    });
                }
                Event::Error {
                    id: Some(got),
                    message,
                } if got == id => {
                    return Err(fail(format!("speech to text failed: {message}")));
                }
                // An answer to an earlier, abandoned request.
                _ => {}
            }
        }
    }

    /// Asks the worker to stop and waits for it (a second at most).
    pub async fn shutdown(mut self) {
        let _ = self
            .stdin
            .write_all(stt_protocol::encode(&Command::Shutdown).as_bytes())
            .await;
        drop(self.stdin);
        if tokio::time::timeout(Duration::from_secs(1), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

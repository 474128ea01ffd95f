//! The async shell around an engine worker process: starts it, feeds it requests from the fair
//! queue as its slots free up, streams each request's text to whoever asked, cancels what nobody
//! reads any more, and restarts the process (with backoff) if it dies. One task owns all of it;
//! callers talk to that task through an [`EngineHandle`] and bounded channels.
//!
//! A request is cancelled by dropping its [`Generation`]: the next token for it (or the next tick,
//! every 100 ms) finds nobody listening and tells the worker, which frees the slot at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command as Process};
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::EngineMetrics;
use crate::protocol::{self, ChatMessage, Command, ErrorKind, Event, FinishReason, Sampling};
use crate::sched::{FairQueue, Full};

/// The name of the llama.cpp worker program.
pub const LLM_WORKER: &str = "jarvis-llm-worker";

/// Updates buffered per request; a reader that falls this far behind is cancelled.
const UPDATE_QUEUE: usize = 4096;
/// Commands buffered from handles before callers wait.
const COMMAND_QUEUE: usize = 64;
/// How often requests nobody reads any more are looked for.
const TICK: Duration = Duration::from_millis(100);
const RESTART_MIN: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(30);

/// How to run the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The worker program.
    pub worker: PathBuf,
    /// The GGUF file.
    pub model: PathBuf,
    /// The model's name as clients see it (`/v1/models`, `jarvis ask --json`).
    pub model_name: String,
    /// Requests generated at once.
    pub slots: u32,
    /// Of `slots`, how many only spoken turns may take (`Request::voice`): a voice turn
    /// starts at once while typed and API requests fill the rest. Typed requests always have at
    /// least one slot.
    pub voice_slots: u32,
    /// Context per request, in tokens.
    pub ctx_per_slot: u32,
    /// Layers of the model on the GPU (a GPU build of the worker; none: llama.cpp's default).
    pub gpu_layers: Option<u32>,
    /// CPU threads for llama.cpp (none: the worker's default, every core).
    pub threads: Option<u32>,
    /// How much lower than normal the worker's CPU priority is (its `nice` value; 0: normal).
    pub nice: i32,
    /// Requests that may wait in all.
    pub queue: usize,
    /// Requests that may wait per client.
    pub per_client: usize,
}

impl EngineConfig {
    /// Defaults for `model`, run by `worker`.
    pub fn new(worker: PathBuf, model: PathBuf, model_name: String) -> Self {
        Self {
            worker,
            model,
            model_name,
            slots: 4,
            voice_slots: 0,
            ctx_per_slot: 2048,
            gpu_layers: None,
            threads: None,
            nice: 0,
            queue: 256,
            per_client: 64,
        }
    }
}

/// Finds a worker program: `$env_var`, else next to the running program, else on `PATH`.
///
/// # Errors
/// A message saying where it looked and what to do.
pub fn find_worker(name: &str, env_var: &str) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{env_var} names {}, which is not a file",
                path.display()
            ))
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|p| p.is_file());
    if let Some(path) = beside {
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path.ok_or_else(|| {
        format!(
            "the engine program `{name}` is not next to this program nor on PATH; build it \
             (`cargo build --release -p jarvis-llm`) or set {env_var} to its path"
        )
    })
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Who asks, for fairness between clients.
    pub client: String,
    /// The conversation, oldest first.
    pub messages: Vec<ChatMessage>,
    /// How to sample.
    pub sampling: Sampling,
    /// The answer so far, for the model to continue (empty for a new answer).
    pub prefix: String,
    /// A spoken turn (someone waits in silence): queued ahead of typed and API requests
    /// ([`crate::sched::FairQueue::push_urgent`]).
    pub voice: bool,
    /// The request's W3C trace context (`traceparent`), passed on where the engine is another
    /// process that traces (a third-party backend's HTTP request); none when not traced.
    pub traceparent: Option<String>,
}

/// How a finished request went.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// From submission to the first token, as the node saw it.
    pub ttft: Duration,
    /// From the first token to the last, as the worker measured it.
    pub generation: Duration,
    /// The model's name.
    pub model: String,
}

impl Summary {
    /// Tokens per second over the generation (0 when too short to say).
    pub fn tokens_per_second(&self) -> f64 {
        let secs = self.generation.as_secs_f64();
        if secs > 0.0 && self.completion_tokens > 1 {
            f64::from(self.completion_tokens - 1) / secs
        } else {
            0.0
        }
    }
}

/// What a request's reader receives, in order: `Started`, `Token`s, then `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The prompt is read; text follows.
    Started {
        /// Tokens in the prompt.
        prompt_tokens: u32,
    },
    /// More of the answer.
    Token(String),
    /// The answer is complete.
    Done(Summary),
    /// The request failed.
    Failed {
        /// What kind of failure.
        kind: ErrorKind,
        /// What happened, for a person.
        message: String,
    },
}

/// Why a request was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full.
    #[error(transparent)]
    Full(#[from] Full),
    /// The engine cannot run (no model, no worker, the model does not load).
    #[error("the local model is not available: {0}")]
    Unavailable(String),
    /// The engine has stopped (the node is shutting down).
    #[error("the engine has stopped")]
    Stopped,
}

/// A request in progress: read its updates; drop it to cancel.
#[derive(Debug)]
pub struct Generation {
    /// The supervisor's id for it.
    pub id: u64,
    /// Its updates.
    pub updates: mpsc::Receiver<Update>,
}

/// The engine's state, as `status` and `/v1/models` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineState {
    /// The worker is starting (loading the model).
    Starting,
    /// Serving.
    Ready {
        /// Requests generated at once.
        slots: u32,
        /// Context per request.
        n_ctx: u32,
    },
    /// Not serving, and why.
    Failed(String),
    /// Shut down.
    Stopped,
}

enum Message {
    Submit(Request, oneshot::Sender<Result<Generation, SubmitError>>),
    Shutdown(oneshot::Sender<()>),
}

/// A handle to the engine task; cheap to clone. When every handle is gone, the engine stops.
#[derive(Clone)]
pub struct EngineHandle {
    messages: mpsc::Sender<Message>,
    state: watch::Receiver<EngineState>,
    model_name: String,
    voice_slots: u32,
    /// The compute devices the worker reported (empty until it is ready).
    devices: Arc<std::sync::Mutex<Vec<String>>>,
    metrics: EngineMetrics,
}

impl EngineHandle {
    /// Starts the engine task (and its worker) on the current tokio runtime.
    pub fn start(config: EngineConfig, metrics: EngineMetrics) -> Self {
        let (messages, inbox) = mpsc::channel(COMMAND_QUEUE);
        let (state_tx, state) = watch::channel(EngineState::Starting);
        let model_name = config.model_name.clone();
        let voice_slots = config.voice_slots;
        let devices = Arc::default();
        let supervisor = Supervisor {
            queue: FairQueue::new(config.queue, config.per_client),
            config,
            metrics: metrics.clone(),
            inflight: HashMap::new(),
            next_id: 1,
            state: state_tx,
            slots: 0,
            devices: Arc::clone(&devices),
        };
        tokio::spawn(supervisor.run(inbox));
        Self {
            messages,
            state,
            model_name,
            voice_slots,
            devices,
            metrics,
        }
    }

    /// The compute devices the engine's worker found (`CUDA0 (NVIDIA …, 79.2 GiB)`, `CPU (…)`):
    /// accelerators first. Empty until the engine is ready.
    pub fn devices(&self) -> Vec<String> {
        self.devices.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Of the engine's slots, those only spoken turns take ([`EngineConfig::voice_slots`]).
    pub fn voice_slots(&self) -> u32 {
        self.voice_slots
    }

    /// The model's name.
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// The engine's metrics.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// Requests generating now.
    pub fn running(&self) -> u32 {
        u32::try_from(self.metrics.active.get()).unwrap_or(0)
    }

    /// Requests generating or waiting.
    pub fn busy(&self) -> u32 {
        let busy = self.metrics.queue_depth.get() + self.metrics.active.get();
        u32::try_from(busy).unwrap_or(0)
    }

    /// The engine's state now.
    pub fn state(&self) -> EngineState {
        self.state.borrow().clone()
    }

    /// Waits until the engine is ready (or has failed or stopped), at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> EngineState {
        let mut state = self.state.clone();
        let waited = tokio::time::timeout(
            limit,
            state.wait_for(|s| !matches!(s, EngineState::Starting)),
        )
        .await;
        match waited {
            Ok(Ok(state)) => state.clone(),
            _ => self.state(),
        }
    }

    /// Queues a request.
    ///
    /// # Errors
    /// [`SubmitError`] when the queue is full or the engine cannot run.
    pub async fn submit(&self, request: Request) -> Result<Generation, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.messages
            .send(Message::Submit(request, reply))
            .await
            .map_err(|_| SubmitError::Stopped)?;
        answer.await.map_err(|_| SubmitError::Stopped)?
    }

    /// Stops the worker (cancelling what is in progress) and the task.
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self.messages.send(Message::Shutdown(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}

struct Pending {
    id: u64,
    messages: Vec<ChatMessage>,
    sampling: Sampling,
    prefix: String,
    updates: mpsc::Sender<Update>,
    submitted: Instant,
}

struct Inflight {
    updates: mpsc::Sender<Update>,
    submitted: Instant,
    ttft: Option<Duration>,
    cancelled: bool,
}

/// A running worker process.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    events: mpsc::Receiver<Event>,
}

struct Supervisor {
    config: EngineConfig,
    metrics: EngineMetrics,
    queue: FairQueue<String, Pending>,
    inflight: HashMap<u64, Inflight>,
    next_id: u64,
    state: watch::Sender<EngineState>,
    /// The worker's slots once it is ready (0 until then).
    slots: usize,
    /// What the worker said its compute devices are (shared with the handles).
    devices: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Reads lines from the worker's stdout into events; ends (closing the channel) at EOF.
async fn read_events(stdout: tokio::process::ChildStdout, events: mpsc::Sender<Event>) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(protocol::MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let trimmed = line.strip_suffix(b"\n").unwrap_or(&line);
        match protocol::decode::<Event>(trimmed) {
            Ok(event) => {
                if events.send(event).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "the engine worker wrote a line that is not an event");
                if line.len() > protocol::MAX_LINE {
                    return;
                }
            }
        }
    }
}

/// Logs the worker's stderr (llama.cpp's messages when verbose, and its own errors).
async fn log_stderr(stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "jarvis::engine", "{line}");
    }
}

/// What a worker process may see of our environment: what finding libraries, locales, temp
/// files and the engines' own tuning need, nothing else. Not the passphrase
/// (`JARVIS_PASSPHRASE`), not tokens, not the user's other settings: a worker runs third-party
/// engine code on untrusted input (a model file, audio) and needs none of it.
pub fn worker_environment(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    const NAMES: &[&str] = &[
        "PATH",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "TMPDIR",
        "LD_LIBRARY_PATH",
        "RUST_BACKTRACE",
    ];
    const PREFIXES: &[&str] = &["GGML_", "LLAMA_", "CUDA_", "OMP_"];
    vars.into_iter()
        .filter(|(name, _)| {
            NAMES.contains(&name.as_str()) || PREFIXES.iter().any(|p| name.starts_with(p))
        })
        .collect()
}

fn spawn_worker(config: &EngineConfig) -> std::io::Result<Worker> {
    let mut process = Process::new(&config.worker);
    process
        .env_clear()
        .envs(worker_environment(std::env::vars()))
        .arg("--model")
        .arg(&config.model)
        .arg("--slots")
        .arg(config.slots.to_string())
        .arg("--ctx")
        .arg(config.ctx_per_slot.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(threads) = config.threads {
        process.arg("--threads").arg(threads.to_string());
    }
    if config.nice != 0 {
        process.arg("--nice").arg(config.nice.to_string());
    }
    if let Some(layers) = config.gpu_layers {
        process.arg("--gpu-layers").arg(layers.to_string());
    }
    let mut child = process.spawn()?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(std::io::Error::other("the worker's pipes were not set up"));
    };
    let (events_tx, events) = mpsc::channel(256);
    tokio::spawn(read_events(stdout, events_tx));
    tokio::spawn(log_stderr(stderr));
    Ok(Worker {
        child,
        stdin,
        events,
    })
}

fn model_problem(model: &Path) -> Option<String> {
    if model.is_file() {
        None
    } else {
        Some(format!(
            "no model file at {} (run `jarvis models pull` to get the default model)",
            model.display()
        ))
    }
}

impl Supervisor {
    async fn run(mut self, mut inbox: mpsc::Receiver<Message>) {
        let mut backoff = RESTART_MIN;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Start a worker, unless it is certain to fail.
            let mut worker = match model_problem(&self.config.model) {
                Some(problem) => {
                    self.fail_waiting(&problem);
                    self.state.send_replace(EngineState::Failed(problem));
                    None
                }
                None => match spawn_worker(&self.config) {
                    Ok(worker) => {
                        self.metrics.worker_starts.inc();
                        self.state.send_replace(EngineState::Starting);
                        Some(worker)
                    }
                    Err(error) => {
                        let problem = format!(
                            "cannot start the engine program {}: {error}",
                            self.config.worker.display()
                        );
                        self.fail_waiting(&problem);
                        self.state.send_replace(EngineState::Failed(problem));
                        None
                    }
                },
            };
            let mut last_error: Option<String> = None;
            let restart_at = tokio::time::sleep(backoff);
            tokio::pin!(restart_at);
            // Serve until the worker dies (or, with no worker, until it is time to try again).
            loop {
                tokio::select! {
                    message = inbox.recv() => match message {
                        Some(Message::Submit(request, reply)) => {
                            let result = self.submit(request);
                            let _ = reply.send(result);
                            if let Some(w) = worker.as_mut() {
                                self.dispatch(w).await;
                            }
                        }
                        Some(Message::Shutdown(reply)) => {
                            self.stop(worker).await;
                            let _ = reply.send(());
                            return;
                        }
                        None => {
                            self.stop(worker).await;
                            return;
                        }
                    },
                    event = async {
                        match worker.as_mut() {
                            Some(w) => w.events.recv().await,
                            None => std::future::pending().await,
                        }
                    } => match event {
                        Some(event) => {
                            if let Some(w) = worker.as_mut() {
                                if let Event::Ready { .. } = event {
                                    backoff = RESTART_MIN;
                                }
                                if let Event::Error { id: None, message, .. } = &event {
                                    last_error = Some(message.clone());
                                }
                                self.on_event(event, w).await;
                            }
                        }
                        None => {
                            // The worker's stdout closed: it has exited (or is about to).
                            let status = match worker.take() {
                                Some(mut w) => w.child.wait().await.map(|s| s.to_string()).unwrap_or_default(),
                                None => String::new(),
                            };
                            let problem = last_error.take().unwrap_or_else(|| {
                                format!("the engine process stopped ({status})")
                            });
                            tracing::warn!(%problem, "engine worker stopped; restarting");
                            self.fail_inflight(&format!("{problem}; it is restarting, ask again"));
                            if self.slots == 0 {
                                // It never became ready: the model does not load. Do not wait on it.
                                self.fail_waiting(&problem);
                                self.state.send_replace(EngineState::Failed(problem));
                            } else {
                                self.state.send_replace(EngineState::Starting);
                            }
                            self.slots = 0;
                            restart_at.as_mut().reset(tokio::time::Instant::now() + backoff);
                            backoff = (backoff * 2).min(RESTART_MAX);
                        }
                    },
                    () = &mut restart_at, if worker.is_none() => break,
                    _ = tick.tick() => {
                        if let Some(w) = worker.as_mut() {
                            self.cancel_unread(w).await;
                        }
                    }
                }
            }
        }
    }

    fn submit(&mut self, request: Request) -> Result<Generation, SubmitError> {
        if let EngineState::Failed(problem) = &*self.state.borrow() {
            self.metrics.outcome("refused");
            return Err(SubmitError::Unavailable(problem.clone()));
        }
        let id = self.next_id;
        self.next_id += 1;
        let (updates, receiver) = mpsc::channel(UPDATE_QUEUE);
        let pending = Pending {
            id,
            messages: request.messages,
            sampling: request.sampling,
            prefix: request.prefix,
            updates,
            submitted: Instant::now(),
        };
        let queued = if request.voice {
            self.queue.push_urgent(request.client, pending)
        } else {
            self.queue.push(request.client, pending)
        };
        if let Err(full) = queued {
            self.metrics.outcome("refused");
            return Err(full.into());
        }
        self.metrics.queue_depth.set(gauge(self.queue.len()));
        self.metrics
            .queue_depth_voice
            .set(gauge(self.queue.urgent_len()));
        Ok(Generation {
            id,
            updates: receiver,
        })
    }

    /// Sends waiting requests to the worker while it has free slots.
    async fn dispatch(&mut self, worker: &mut Worker) {
        let reserve = usize::try_from(self.config.voice_slots).unwrap_or(usize::MAX);
        let typed = self.slots.saturating_sub(reserve).max(1);
        while self.inflight.len() < self.slots {
            let next = if self.inflight.len() < typed {
                self.queue.pop()
            } else {
                self.queue.pop_urgent()
            };
            let Some((_, pending)) = next else {
                break;
            };
            if pending.updates.is_closed() {
                self.metrics.outcome("cancelled");
                continue;
            }
            let command = Command::Generate {
                id: pending.id,
                messages: pending.messages,
                sampling: pending.sampling,
                prefix: pending.prefix,
            };
            if let Err(error) = send(worker, &command).await {
                let _ = pending.updates.try_send(Update::Failed {
                    kind: ErrorKind::Engine,
                    message: format!("cannot reach the engine process: {error}"),
                });
                self.metrics.outcome("error");
                break;
            }
            self.inflight.insert(
                pending.id,
                Inflight {
                    updates: pending.updates,
                    submitted: pending.submitted,
                    ttft: None,
                    cancelled: false,
                },
            );
        }
        self.metrics.queue_depth.set(gauge(self.queue.len()));
        self.metrics
            .queue_depth_voice
            .set(gauge(self.queue.urgent_len()));
        self.metrics.active.set(gauge(self.inflight.len()));
    }

    async fn on_event(&mut self, event: Event, worker: &mut Worker) {
        match event {
            Event::Ready {
                model,
                n_ctx,
                slots,
                devices,
            } => {
                tracing::info!(%model, n_ctx, slots, ?devices, "engine ready");
                if let Ok(mut known) = self.devices.lock() {
                    *known = devices.into_iter().take(16).collect();
                }
                self.slots = slots as usize;
                self.state.send_replace(EngineState::Ready { slots, n_ctx });
            }
            Event::Started {
                id, prompt_tokens, ..
            } => {
                if let Some(request) = self.inflight.get_mut(&id) {
                    let ttft = request.submitted.elapsed();
                    request.ttft = Some(ttft);
                    self.metrics.time_to_first_token.observe(ttft.as_secs_f64());
                    self.forward(id, Update::Started { prompt_tokens }, worker)
                        .await;
                }
            }
            Event::Token { id, text } => self.forward(id, Update::Token(text), worker).await,
            Event::Done {
                id,
                finish_reason,
                prompt_tokens,
                completion_tokens,
                generation_ms,
                ..
            } => {
                if let Some(request) = self.inflight.remove(&id) {
                    let summary = Summary {
                        finish_reason,
                        prompt_tokens,
                        completion_tokens,
                        ttft: request.ttft.unwrap_or_else(|| request.submitted.elapsed()),
                        generation: Duration::from_secs_f64((generation_ms / 1000.0).max(0.0)),
                        model: self.config.model_name.clone(),
                    };
                    if finish_reason != FinishReason::Cancelled {
                        self.metrics
                            .tokens_per_second
                            .observe(summary.tokens_per_second());
                    }
                    self.metrics.outcome(finish_reason.as_str());
                    let _ = request.updates.try_send(Update::Done(summary));
                }
            }
            Event::Error {
                id: Some(id),
                kind,
                message,
            } => {
                if let Some(request) = self.inflight.remove(&id) {
                    self.metrics.outcome("error");
                    let _ = request.updates.try_send(Update::Failed { kind, message });
                }
            }
            Event::Error {
                id: None, message, ..
            } => {
                tracing::warn!(%message, "the engine worker reports a failure");
            }
        }
        self.dispatch(worker).await;
    }

    /// Passes an update on; if nobody reads it (or reads too slowly), cancels the request.
    async fn forward(&mut self, id: u64, update: Update, worker: &mut Worker) {
        let Some(request) = self.inflight.get_mut(&id) else {
            return;
        };
        if request.cancelled {
            return;
        }
        if request.updates.try_send(update).is_err() {
            request.cancelled = true;
            let _ = send(worker, &Command::Cancel { id }).await;
        }
    }

    /// Cancels requests whose reader has gone, in the queue and in the worker.
    async fn cancel_unread(&mut self, worker: &mut Worker) {
        while self.queue.remove(|p| p.updates.is_closed()).is_some() {
            self.metrics.outcome("cancelled");
        }
        let gone: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, r)| !r.cancelled && r.updates.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(request) = self.inflight.get_mut(&id) {
                request.cancelled = true;
            }
            let _ = send(worker, &Command::Cancel { id }).await;
        }
        self.metrics.queue_depth.set(gauge(self.queue.len()));
        self.metrics
            .queue_depth_voice
            .set(gauge(self.queue.urgent_len()));
    }

    fn fail_inflight(&mut self, message: &str) {
        for (_, request) in self.inflight.drain() {
            self.metrics.outcome("error");
            let _ = request.updates.try_send(Update::Failed {
                kind: ErrorKind::Engine,
                message: message.to_owned(),
            });
        }
        self.metrics.active.set(0);
    }

    fn fail_waiting(&mut self, message: &str) {
        while let Some((_, pending)) = self.queue.pop() {
            self.metrics.outcome("error");
            let _ = pending.updates.try_send(Update::Failed {
                kind: ErrorKind::Engine,
                message: message.to_owned(),
            });
        }
        self.metrics.queue_depth.set(0);
        self.metrics.queue_depth_voice.set(0);
    }

    async fn stop(&mut self, worker: Option<Worker>) {
        self.fail_waiting("the node is shutting down");
        if let Some(mut w) = worker {
            let _ = send(&mut w, &Command::Shutdown).await;
            let exited = tokio::time::timeout(Duration::from_secs(3), w.child.wait()).await;
            if exited.is_err() {
                let _ = w.child.kill().await;
            }
        }
        self.fail_inflight("the node is shutting down");
        self.state.send_replace(EngineState::Stopped);
    }
}

async fn send(worker: &mut Worker, command: &Command) -> std::io::Result<()> {
    let line = protocol::encode(command).map_err(std::io::Error::other)?;
    worker.stdin.write_all(&line).await?;
    worker.stdin.flush().await
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_worker_sees_none_of_our_secrets() {
        let vars = [
            ("JARVIS_PASSPHRASE", "hunter2"),
            ("JARVIS_HOME", "/home/a"),
            ("HOME", "/home/a"),
            ("PATH", "/usr/bin"),
            ("GGML_NTHREADS", "2"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let kept: Vec<String> = worker_environment(vars)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(kept, ["PATH", "GGML_NTHREADS"]);
    }

    /// The spawned worker's environment really is the filtered one: a stand-in worker writes
    /// its environment out; nothing of the test's (cargo's variables, any `JARVIS_`) is there.
    #[cfg(unix)]
    #[test]
    fn the_spawned_worker_gets_only_that() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env.txt");
        let script = dir.path().join("worker.sh");
        std::fs::write(&script, format!("#!/bin/sh\nenv > '{}'\n", out.display())).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let env = runtime.block_on(async {
            let config = EngineConfig::new(script, dir.path().join("m.gguf"), "m".into());
            // Held (a dropped worker is killed) until it has written its environment.
            let _worker = spawn_worker(&config).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(text) = std::fs::read_to_string(&out)
                    && text.ends_with('\n')
                {
                    break text;
                }
                assert!(Instant::now() < deadline, "the stand-in worker did not run");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
        for line in env.lines() {
            let name = line.split('=').next().unwrap_or_default();
            assert!(
                !name.starts_with("CARGO") && !name.starts_with("JARVIS_") && name != "HOME",
                "the worker saw {name}"
            );
        }
    }
}

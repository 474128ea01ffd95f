//! The llama.cpp engine: one model, one context, several requests generated together.
//!
//! Each request gets a slot (a llama.cpp sequence id with its own part of the KV cache and its own
//! sampler). Every [`Engine::step`] builds one batch holding the next token of every generating
//! slot plus a chunk of the prompt of every slot still reading its prompt, and decodes it once:
//! continuous batching, as llama.cpp's server does. A long answer therefore never starves a short
//! one, and a long prompt is read a chunk at a time so it does not stall the others' tokens.
//!
//! The engine is synchronous and owns no thread; the worker's main loop drives it
//! (`main.rs`) and gives it commands between steps, which is where cancellation takes effect.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, anyhow};
use jarvis_inference_protocol::protocol::{ChatMessage, ErrorKind, Event, FinishReason, Sampling};
use jarvis_inference_protocol::text::{StopFilter, Utf8Assembler};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Context length of each slot, in tokens.
    pub ctx_per_slot: u32,
    /// Requests generated at once.
    pub slots: u32,
    /// CPU threads for llama.cpp.
    pub threads: i32,
    /// The most tokens one decode call takes (prompt chunks share it).
    pub batch: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            ctx_per_slot: 2048,
            slots: 4,
            threads: i32::try_from(threads).unwrap_or(2),
            batch: 512,
        }
    }
}

/// A loaded model and what is needed to talk to it; contexts borrow it.
pub struct Loaded {
    backend: LlamaBackend,
    model: LlamaModel,
    template: LlamaChatTemplate,
    name: String,
}

impl Loaded {
    /// Loads the GGUF file at `path` (llama.cpp's own logging silenced unless `verbose`).
    ///
    /// # Errors
    /// When the backend cannot start or the file is not a model llama.cpp can load.
    pub fn load(path: &Path, verbose: bool) -> anyhow::Result<Self> {
        Self::load_with(path, verbose, None)
    }

    /// [`Loaded::load`] with `gpu_layers` of the model on the GPU (in a `cuda`, `vulkan` or
    /// `metal` build; none: llama.cpp's default).
    ///
    /// # Errors
    /// As [`Loaded::load`].
    pub fn load_with(path: &Path, verbose: bool, gpu_layers: Option<u32>) -> anyhow::Result<Self> {
        let mut backend = LlamaBackend::init().context("starting llama.cpp")?;
        if !verbose {
            backend.void_logs();
        }
        if !path.is_file() {
            return Err(anyhow!("no model file at {}", path.display()));
        }
        let params = match gpu_layers {
            Some(layers) => LlamaModelParams::default().with_n_gpu_layers(layers),
            None => LlamaModelParams::default(),
        };
        let model = LlamaModel::load_from_file(&backend, path, &params)
            .with_context(|| format!("loading the model {}", path.display()))?;
        // The model's own template; a model without one gets ChatML, the common default.
        let template = match model.chat_template(None) {
            Ok(template) => template,
            Err(_) => LlamaChatTemplate::new("chatml").context("the ChatML template")?,
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            backend,
            model,
            template,
            name,
        })
    }

    /// The model's file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model's training context length.
    pub fn n_ctx_train(&self) -> u32 {
        self.model.n_ctx_train()
    }

    /// The prompt for `messages` under the model's chat template, ending where the assistant speaks.
    ///
    /// # Errors
    /// When a message holds a NUL byte or the template cannot be applied.
    pub fn prompt(&self, messages: &[ChatMessage]) -> anyhow::Result<String> {
        let chat = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .context("a message holds a NUL byte")?;
        self.model
            .apply_chat_template(&self.template, &chat, true)
            .context("applying the model's chat template")
    }

    /// The tokens of a prompt made by [`Self::prompt`] (special tokens of the template parsed).
    pub fn tokenize(&self, prompt: &str) -> Vec<LlamaToken> {
        self.model.vocab().tokenize(prompt.as_bytes(), true, true)
    }

    /// A sampler chain for these settings.
    pub fn sampler(sampling: &Sampling) -> LlamaSampler {
        if sampling.temperature <= 0.0 {
            return LlamaSampler::greedy();
        }
        let seed = sampling.seed.unwrap_or_else(rand_seed);
        LlamaSampler::chain_simple([
            LlamaSampler::top_p(sampling.top_p.clamp(0.0, 1.0), 1),
            LlamaSampler::temp(sampling.temperature),
            LlamaSampler::dist(seed),
        ])
    }

    /// The bytes of one token as text (special tokens such as the end of turn render as nothing).
    pub fn piece(&self, token: LlamaToken) -> Vec<u8> {
        self.model.vocab().token_to_piece(token, false, None)
    }

    /// Whether `token` ends the model's turn.
    pub fn is_end(&self, token: LlamaToken) -> bool {
        self.model.vocab().is_eog(token)
    }

    /// A context for `config`.
    ///
    /// # Errors
    /// When llama.cpp cannot allocate it.
    pub fn context(&self, config: &EngineConfig) -> anyhow::Result<LlamaContext<'_>> {
        let n_ctx = config.ctx_per_slot.saturating_mul(config.slots.max(1));
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(config.batch)
            .with_n_ubatch(config.batch)
            .with_n_seq_max(config.slots.max(1))
            .with_n_threads(config.threads)
            .with_n_threads_batch(config.threads);
        self.model
            .new_context(&self.backend, params)
            .context("creating a llama.cpp context")
    }
}

fn rand_seed() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id()
}

/// One request in a slot.
struct Sequence {
    id: u64,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already in the KV cache.
    fed: usize,
    /// Prompt tokens found in the slot's cache from an earlier request.
    reused: usize,
    /// Tokens in this slot's KV cache.
    n_past: u32,
    /// The token to feed next once the prompt is in.
    last: Option<LlamaToken>,
    sampler: LlamaSampler,
    utf8: Utf8Assembler,
    stops: StopFilter,
    max_tokens: u32,
    generated: u32,
    received: Instant,
    first_token: Option<Instant>,
    /// Index in the current batch whose logits this slot samples from.
    logits_at: Option<i32>,
}

/// A request waiting for a free slot.
struct Waiting {
    id: u64,
    messages: Vec<ChatMessage>,
    sampling: Sampling,
    /// The answer so far, continued rather than started (see `Command::Generate`).
    prefix: String,
    received: Instant,
}

/// The engine: a context over a loaded model, its slots, and the requests waiting for one.
pub struct Engine<'m> {
    loaded: &'m Loaded,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    config: EngineConfig,
    slots: Vec<Option<Sequence>>,
    /// Per slot, the tokens its part of the KV cache holds, kept after a request ends: the next
    /// request that starts the same way (the system prompt, or the same conversation one turn
    /// later) reads only what differs.
    cached: Vec<Vec<LlamaToken>>,
    waiting: VecDeque<Waiting>,
}

impl<'m> Engine<'m> {
    /// An engine for `loaded`.
    ///
    /// # Errors
    /// When the context cannot be created.
    pub fn new(loaded: &'m Loaded, config: EngineConfig) -> anyhow::Result<Self> {
        let ctx = loaded.context(&config)?;
        let slots = (0..config.slots.max(1)).map(|_| None).collect();
        let cached = (0..config.slots.max(1)).map(|_| Vec::new()).collect();
        let batch = LlamaBatch::new(config.batch as usize, 1);
        Ok(Self {
            loaded,
            ctx,
            batch,
            config,
            slots,
            cached,
            waiting: VecDeque::new(),
        })
    }

    /// What the worker announces once the engine is up.
    pub fn ready(&self) -> Event {
        Event::Ready {
            model: self.loaded.name().to_owned(),
            n_ctx: self.config.ctx_per_slot,
            slots: self.config.slots,
            devices: devices(),
        }
    }

    /// Whether nothing is generating or waiting.
    pub fn idle(&self) -> bool {
        self.waiting.is_empty() && self.slots.iter().all(Option::is_none)
    }

    /// Queues a request; it starts at the next step with a free slot.
    pub fn submit(
        &mut self,
        id: u64,
        messages: Vec<ChatMessage>,
        sampling: Sampling,
        prefix: String,
    ) {
        self.waiting.push_back(Waiting {
            id,
            messages,
            sampling,
            prefix,
            received: Instant::now(),
        });
    }

    /// Stops `id` wherever it is; `emit` gets its `done` (cancelled).
    pub fn cancel(&mut self, id: u64, emit: &mut dyn FnMut(Event)) {
        if let Some(at) = self.waiting.iter().position(|w| w.id == id) {
            if let Some(w) = self.waiting.remove(at) {
                emit(Event::Done {
                    id: w.id,
                    finish_reason: FinishReason::Cancelled,
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    ttft_ms: 0.0,
                    generation_ms: 0.0,
                });
            }
            return;
        }
        if let Some(slot) = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.id == id))
        {
            self.finish(slot, FinishReason::Cancelled, emit);
        }
    }

    /// Cancels everything (on shutdown).
    pub fn cancel_all(&mut self, emit: &mut dyn FnMut(Event)) {
        let ids: Vec<u64> = self
            .waiting
            .iter()
            .map(|w| w.id)
            .chain(self.slots.iter().flatten().map(|s| s.id))
            .collect();
        for id in ids {
            self.cancel(id, emit);
        }
    }

    /// Moves waiting requests into free slots, refusing those whose prompt does not fit.
    fn admit(&mut self, emit: &mut dyn FnMut(Event)) {
        while self.slots.iter().any(Option::is_none) {
            let Some(w) = self.waiting.pop_front() else {
                return;
            };
            // A resumed answer: the prompt ends where the assistant speaks, so the text so far
            // follows it and the model goes on from there.
            let prompt = match self.loaded.prompt(&w.messages) {
                Ok(prompt) => prompt + &w.prefix,
                Err(error) => {
                    emit(Event::Error {
                        id: Some(w.id),
                        kind: ErrorKind::InvalidRequest,
                        message: format!("{error:#}"),
                    });
                    continue;
                }
            };
            let tokens = self.loaded.tokenize(&prompt);
            let n_ctx = self.config.ctx_per_slot as usize;
            // At least one token of room must be left to answer in.
            if tokens.is_empty() || tokens.len() >= n_ctx {
                emit(Event::Error {
                    id: Some(w.id),
                    kind: ErrorKind::ContextLengthExceeded,
                    message: format!(
                        "the prompt is {} tokens, and this model's context holds {} per request; \
                         shorten the conversation or start a new one",
                        tokens.len(),
                        n_ctx
                    ),
                });
                continue;
            }
            let room = u32::try_from(n_ctx - tokens.len()).unwrap_or(u32::MAX);
            let (free, reused) = self.reuse(&tokens);
            let sequence = Sequence {
                id: w.id,
                sampler: Loaded::sampler(&w.sampling),
                stops: StopFilter::new(&w.sampling.stop),
                max_tokens: w.sampling.max_tokens.min(room),
                prompt: tokens,
                fed: reused,
                reused,
                n_past: u32::try_from(reused).unwrap_or(u32::MAX),
                last: None,
                utf8: Utf8Assembler::default(),
                generated: 0,
                received: w.received,
                first_token: None,
                logits_at: None,
            };
            if let Some(slot) = self.slots.get_mut(free) {
                *slot = Some(sequence);
            }
        }
    }

    /// Picks the free slot whose cache shares the longest prefix with `prompt`, drops the rest of
    /// that slot's cache, and returns the slot and how many prompt tokens are already in it (never
    /// all of them: the last one is read again for its logits).
    fn reuse(&mut self, prompt: &[LlamaToken]) -> (usize, usize) {
        let common = |cached: &Vec<LlamaToken>| {
            cached
                .iter()
                .zip(prompt)
                .take_while(|(a, b)| a == b)
                .count()
        };
        let best = (0..self.slots.len())
            .filter(|&slot| self.slots.get(slot).is_some_and(Option::is_none))
            .max_by_key(|&slot| self.cached.get(slot).map_or(0, common))
            .unwrap_or(0);
        let Some(cached) = self.cached.get_mut(best) else {
            return (best, 0);
        };
        let keep = common(cached).min(prompt.len().saturating_sub(1));
        let seq_id = u32::try_from(best).ok();
        let kept = keep > 0
            && u32::try_from(keep).is_ok_and(|from| {
                matches!(
                    self.ctx.clear_kv_cache_seq(seq_id, Some(from), None),
                    Ok(true)
                )
            });
        if kept {
            cached.truncate(keep);
            (best, keep)
        } else {
            // Nothing shared, or this cache cannot drop a tail: start the slot afresh.
            let _ = self.ctx.clear_kv_cache_seq(seq_id, None, None);
            cached.clear();
            (best, 0)
        }
    }

    /// One decode: the next token of every generating slot and a prompt chunk of every reading one.
    ///
    /// # Errors
    /// When llama.cpp fails to decode; every request in a slot has then been failed through `emit`.
    pub fn step(&mut self, emit: &mut dyn FnMut(Event)) -> anyhow::Result<()> {
        self.admit(emit);
        self.batch.clear();
        let capacity = self.config.batch as usize;
        // Generating slots first: one token each, so answers keep flowing.
        for (seq_id, slot) in self.slots.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            s.logits_at = None;
            if let Some(token) = s.last {
                self.batch.add(token, pos(s.n_past), &[seq(seq_id)], true)?;
                s.logits_at = Some(self.batch.n_tokens() - 1);
                s.n_past += 1;
                if let Some(cached) = self.cached.get_mut(seq_id) {
                    cached.push(token);
                }
            }
        }
        // Then prompt chunks, sharing what room is left.
        let reading = self
            .slots
            .iter()
            .flatten()
            .filter(|s| s.last.is_none())
            .count();
        let room = capacity.saturating_sub(self.batch.n_tokens() as usize);
        if let Some(share) = room.checked_div(reading) {
            let chunk = share.max(1);
            for (seq_id, slot) in self.slots.iter_mut().enumerate() {
                let Some(s) = slot else { continue };
                if s.last.is_some() {
                    continue;
                }
                let end = (s.fed + chunk).min(s.prompt.len());
                for at in s.fed..end {
                    if self.batch.n_tokens() as usize >= capacity {
                        break;
                    }
                    let Some(&token) = s.prompt.get(at) else {
                        break;
                    };
                    let is_last = at + 1 == s.prompt.len();
                    self.batch
                        .add(token, pos(s.n_past), &[seq(seq_id)], is_last)?;
                    s.n_past += 1;
                    s.fed = at + 1;
                    if let Some(cached) = self.cached.get_mut(seq_id) {
                        cached.push(token);
                    }
                    if is_last {
                        s.logits_at = Some(self.batch.n_tokens() - 1);
                    }
                }
            }
        }
        if self.batch.n_tokens() == 0 {
            return Ok(());
        }
        if let Err(error) = self.ctx.decode(&mut self.batch) {
            let taken: Vec<(usize, u64)> = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(slot, s)| s.as_ref().map(|s| (slot, s.id)))
                .collect();
            for (slot, id) in taken {
                emit(Event::Error {
                    id: Some(id),
                    kind: ErrorKind::Engine,
                    message: format!("llama.cpp failed to decode: {error}"),
                });
                self.clear(slot);
            }
            self.ctx.clear_kv_cache();
            self.cached.iter_mut().for_each(Vec::clear);
            return Err(anyhow!("llama.cpp failed to decode: {error}"));
        }
        for slot in 0..self.slots.len() {
            self.sample(slot, emit);
        }
        Ok(())
    }

    /// Samples the next token of `slot` if its logits are in this batch, and sends its text.
    fn sample(&mut self, slot: usize, emit: &mut dyn FnMut(Event)) {
        let Some(Some(s)) = self.slots.get_mut(slot) else {
            return;
        };
        let Some(at) = s.logits_at.take() else { return };
        let token = s.sampler.sample(&self.ctx, at);
        let now = Instant::now();
        if s.first_token.is_none() {
            s.first_token = Some(now);
            emit(Event::Started {
                id: s.id,
                prompt_tokens: count(s.prompt.len()),
                cached_tokens: count(s.reused),
            });
        }
        if self.loaded.is_end(token) {
            self.finish(slot, FinishReason::Stop, emit);
            return;
        }
        s.generated += 1;
        s.last = Some(token);
        let text = s.utf8.push(&self.loaded.piece(token));
        let filtered = s.stops.push(&text);
        if !filtered.text.is_empty() {
            emit(Event::Token {
                id: s.id,
                text: filtered.text,
            });
        }
        if filtered.stopped {
            self.finish(slot, FinishReason::Stop, emit);
        } else if s.generated >= s.max_tokens {
            self.finish(slot, FinishReason::Length, emit);
        }
    }

    /// Ends the request in `slot`: sends what was held back and its `done`, and frees the slot.
    fn finish(&mut self, slot: usize, reason: FinishReason, emit: &mut dyn FnMut(Event)) {
        let Some(Some(s)) = self.slots.get_mut(slot) else {
            return;
        };
        if reason != FinishReason::Cancelled {
            let mut rest = s.utf8.finish();
            let filtered = s.stops.push(&rest);
            rest = filtered.text;
            if !filtered.stopped {
                rest.push_str(&s.stops.finish());
            }
            if !rest.is_empty() {
                emit(Event::Token {
                    id: s.id,
                    text: rest,
                });
            }
        }
        let now = Instant::now();
        let first = s.first_token.unwrap_or(now);
        emit(Event::Done {
            id: s.id,
            finish_reason: reason,
            prompt_tokens: count(s.prompt.len()),
            completion_tokens: s.generated,
            ttft_ms: millis(first.duration_since(s.received)),
            generation_ms: millis(now.duration_since(first)),
        });
        self.clear(slot);
    }

    /// Frees `slot` and its part of the KV cache.
    /// Frees `slot`; its part of the KV cache stays for the next request to reuse.
    fn clear(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = None;
        }
    }
}

fn pos(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn seq(slot: usize) -> i32 {
    i32::try_from(slot).unwrap_or(i32::MAX)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn millis(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The compute devices llama.cpp's backends found: `NAME (description, N GiB)`, accelerators
/// first. A CPU-only build lists the CPU alone; a `cuda` build on a machine with an NVIDIA GPU
/// lists `CUDA0 (NVIDIA …)` before it.
fn devices() -> Vec<String> {
    let mut devices = llama_cpp_2::list_llama_ggml_backend_devices();
    devices.sort_by_key(|d| d.device_type == llama_cpp_2::LlamaBackendDeviceType::Cpu);
    devices
        .into_iter()
        .map(|d| {
            #[allow(clippy::cast_precision_loss)]
            let gib = d.memory_total as f64 / f64::from(1u32 << 30);
            if d.memory_total > 0 {
                format!("{} ({}, {gib:.1} GiB)", d.name, d.description.trim())
            } else {
                format!("{} ({})", d.name, d.description.trim())
            }
        })
        .collect()
}

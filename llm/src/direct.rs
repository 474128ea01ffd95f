//! The benchmark's reference: llama-cpp-2 called directly, the way its own `simple` example does,
//! on one sequence with greedy sampling. `jarvis-bench llm-local` compares the engine (through the
//! worker protocol, and through the node's HTTP API) with this, on the same model, prompt and
//! thread count.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;

/// `direct --model FILE --prompt TEXT [--max-tokens N] [--threads N] [--runs N]`: prints one JSON
/// line per run, `{"ttft_ms", "tokens", "generation_ms", "tokens_per_s"}`, after loading once.
///
/// # Errors
/// On bad arguments or a model llama.cpp cannot run.
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let mut model_path: Option<PathBuf> = None;
    let mut prompt = String::new();
    let mut max_tokens: i32 = 64;
    let mut threads: i32 = 2;
    let mut runs: u32 = 1;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--model" => model_path = Some(PathBuf::from(value()?)),
            "--prompt" => prompt = value()?.clone(),
            "--max-tokens" => max_tokens = value()?.parse().context("--max-tokens")?,
            "--threads" => threads = value()?.parse().context("--threads")?,
            "--runs" => runs = value()?.parse().context("--runs")?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let model_path = model_path.context("--model is required")?;
    let mut backend = LlamaBackend::init()?;
    backend.void_logs();
    let model = LlamaModel::load_from_file(&backend, &model_path, &LlamaModelParams::default())?;
    let template = model.chat_template(None)?;
    let chat = [LlamaChatMessage::new("user".into(), prompt)?];
    let text = model.apply_chat_template(&template, &chat, true)?;
    let tokens = model.vocab().tokenize(text.as_bytes(), true, true);
    // One context for every run, as a server keeps one: the first run pays its warm-up.
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(2048))
        .with_n_batch(512)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = model.new_context(&backend, params)?;
    for _ in 0..runs {
        ctx.clear_kv_cache();
        let start = Instant::now();
        let mut batch = LlamaBatch::new(512, 1);
        let last = tokens.len().saturating_sub(1);
        for (i, token) in tokens.iter().enumerate() {
            batch.add(*token, i32::try_from(i)?, &[0], i == last)?;
        }
        ctx.decode(&mut batch)?;
        let mut sampler = LlamaSampler::greedy();
        let mut n_cur = batch.n_tokens();
        let mut generated = 0;
        let mut first: Option<Instant> = None;
        let mut text = Vec::new();
        while generated < max_tokens {
            let token = sampler.sample(&ctx, batch.n_tokens() - 1);
            first.get_or_insert_with(Instant::now);
            if model.vocab().is_eog(token) {
                break;
            }
            text.extend(model.vocab().token_to_piece(token, false, None));
            generated += 1;
            batch.clear();
            batch.add(token, n_cur, &[0], true)?;
            n_cur += 1;
            ctx.decode(&mut batch)?;
        }
        let end = Instant::now();
        let first = first.unwrap_or(end);
        let generation_ms = end.duration_since(first).as_secs_f64() * 1000.0;
        let line = serde_json::json!({
            "ttft_ms": first.duration_since(start).as_secs_f64() * 1000.0,
            "prompt_tokens": tokens.len(),
            "tokens": generated,
            "generation_ms": generation_ms,
            "tokens_per_s": if generation_ms > 0.0 { f64::from(generated) * 1000.0 / generation_ms } else { 0.0 },
            "text": String::from_utf8_lossy(&text),
        });
        println!("{line}");
    }
    Ok(())
}

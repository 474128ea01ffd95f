//! A GPU peer's Prometheus metrics and health check (`jarvis gpu up --metrics ADDR`), as
//! `jarvis-relay up --metrics` has them: `GET /metrics` and `GET /health`.
//!
//! - `jarvis_gpu_answers_in_flight`, `jarvis_gpu_slots`, `jarvis_gpu_backend_up`: what the
//!   devices' load reports say, as gauges; `jarvis_gpu_queue_depth{priority}` (`voice`,
//!   `typed`): answers waiting here for a slot;
//! - `jarvis_gpu_time_to_first_token_seconds`, `jarvis_gpu_tokens_per_second` (histograms) and
//!   `jarvis_gpu_answers_total{outcome}` (`done`, `length`, `failed`, `cancelled`, `refused`, and `busy`: sent to another peer
//!   because every slot here was taken);
//! - `jarvis_gpu_user_answers_total{user}`: answers per user, labelled by a short pseudonym of
//!   the user's key unless the operator asks for names (`--metrics-user-names`);
//! - the built-in engine's own `jarvis_llm_…` metrics, when it runs one.
//!
//! `/health` answers 200 while the backend can answer (the model loaded, or the third-party
//! server reachable) and 503 otherwise, so a load balancer or an orchestrator sees a GPU peer
//! whose engine is gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Priority {
    priority: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct User {
    user: String,
}

/// The GPU peer's metrics; shared by the answers and the HTTP server.
pub struct GpuMetrics {
    registry: Registry,
    pub in_flight: Gauge,
    pub slots: Gauge,
    pub backend_up: Gauge,
    queue_depth: Family<Priority, Gauge>,
    time_to_first_token: Histogram,
    tokens_per_second: Histogram,
    answers: Family<Outcome, Counter>,
    per_user: Family<User, Counter>,
    /// Label users by name (else by a pseudonym of their key).
    user_names: bool,
    ready: AtomicBool,
    /// What `/health` says the model and backend are.
    describe: std::sync::Mutex<serde_json::Value>,
    /// Reads the queues at each scrape: (spoken turns, the rest).
    queued: std::sync::OnceLock<Box<dyn Fn() -> (usize, usize) + Send + Sync>>,
}

impl GpuMetrics {
    /// The metrics, with the built-in engine's (`engine`) when it runs one.
    pub fn new(
        engine: Option<&jarvis_inference::metrics::EngineMetrics>,
        user_names: bool,
    ) -> Self {
        let mut registry = Registry::default();
        let this = Self {
            registry: Registry::default(),
            in_flight: Gauge::default(),
            slots: Gauge::default(),
            backend_up: Gauge::default(),
            queue_depth: Family::default(),
            time_to_first_token: Histogram::new([
                0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            tokens_per_second: Histogram::new([1.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]),
            answers: Family::default(),
            per_user: Family::default(),
            user_names,
            ready: AtomicBool::new(false),
            describe: std::sync::Mutex::new(serde_json::Value::Null),
            queued: std::sync::OnceLock::new(),
        };
        let gpu = registry.sub_registry_with_prefix("jarvis_gpu");
        gpu.register(
            "answers_in_flight",
            "Answers generating or waiting here",
            this.in_flight.clone(),
        );
        gpu.register(
            "slots",
            "Answers the backend generates at once",
            this.slots.clone(),
        );
        gpu.register(
            "backend_up",
            "Whether the backend can answer (1) or not (0)",
            this.backend_up.clone(),
        );
        gpu.register(
            "queue_depth",
            "Answers waiting here for a slot, by priority (voice: spoken turns, ahead of typed)",
            this.queue_depth.clone(),
        );
        gpu.register(
            "time_to_first_token_seconds",
            "From a device's request to the first token sent back",
            this.time_to_first_token.clone(),
        );
        gpu.register(
            "tokens_per_second",
            "Generation speed of finished answers",
            this.tokens_per_second.clone(),
        );
        gpu.register("answers", "Answers by outcome", this.answers.clone());
        gpu.register(
            "user_answers",
            "Answers per user (a pseudonym of the user's key unless the operator asked for names)",
            this.per_user.clone(),
        );
        if let Some(engine) = engine {
            engine.register(registry.sub_registry_with_prefix("jarvis"));
        }
        Self { registry, ..this }
    }

    /// One answer ended with `outcome`, for `user` (its name and key).
    pub fn answered(&self, outcome: &str, user: (&str, &str)) {
        self.answers
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .inc();
        let label = if self.user_names {
            user.0.to_owned()
        } else {
            pseudonym(user.1)
        };
        self.per_user.get_or_create(&User { user: label }).inc();
    }

    /// A request that asked not to wait found every slot taken (the device tried another
    /// peer): `jarvis_gpu_answers_total{outcome="busy"}`.
    pub fn bounced(&self) {
        self.answers
            .get_or_create(&Outcome {
                outcome: "busy".to_owned(),
            })
            .inc();
    }

    pub fn first_token(&self, seconds: f64) {
        self.time_to_first_token.observe(seconds);
    }

    pub fn speed(&self, tokens_per_second: f64) {
        if tokens_per_second > 0.0 {
            self.tokens_per_second.observe(tokens_per_second);
        }
    }

    /// Where the queue depths come from (read at each scrape, so they are never stale).
    pub fn watch_queues(&self, queued: impl Fn() -> (usize, usize) + Send + Sync + 'static) {
        let _ = self.queued.set(Box::new(queued));
    }

    /// Answers waiting for a slot: (spoken turns, typed and API requests).
    fn set_queued(&self, (voice, typed): (usize, usize)) {
        for (priority, count) in [("voice", voice), ("typed", typed)] {
            self.queue_depth
                .get_or_create(&Priority { priority })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// The backend's state, as the load reports carry it.
    pub fn set_load(&self, slots: u32, busy: u32, ready: bool, describe: serde_json::Value) {
        self.slots.set(i64::from(slots));
        self.in_flight.set(i64::from(busy));
        self.backend_up.set(i64::from(ready));
        self.ready.store(ready, Ordering::Relaxed);
        if let Ok(mut d) = self.describe.lock() {
            *d = describe;
        }
    }

    pub fn render(&self) -> String {
        if let Some(queued) = self.queued.get() {
            self.set_queued(queued());
        }
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// A short, stable pseudonym of a user's key: enough to tell users apart in a dashboard, not
/// to name them.
fn pseudonym(key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    format!("u-{}", hex::encode(digest.get(..6).unwrap_or_default()))
}

/// Serves `/metrics` and `/health` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<GpuMetrics>) {
    use axum::routing::get;
    let health = Arc::clone(&metrics);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let health = Arc::clone(&health);
                async move {
                    let ready = health.ready.load(Ordering::Relaxed);
                    let model = health
                        .describe
                        .lock()
                        .map(|d| d.clone())
                        .unwrap_or_default();
                    let status = if ready {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    };
                    let body = serde_json::json!({
                        "status": if ready { "ok" } else { "backend unavailable" },
                        "model": model,
                        "answers_in_flight": health.in_flight.get(),
                    });
                    (status, axum::Json(body))
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics server stopped");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn users_are_pseudonyms_unless_the_operator_asks_for_names() {
        let metrics = GpuMetrics::new(None, false);
        metrics.answered("done", ("ann", "key-of-ann"));
        metrics.answered("done", ("ann", "key-of-ann"));
        metrics.answered("failed", ("bob", "key-of-bob"));
        let text = metrics.render();
        assert!(!text.contains("ann") && !text.contains("bob"), "{text}");
        let ann = pseudonym("key-of-ann");
        assert!(
            text.contains(&format!(
                "jarvis_gpu_user_answers_total{{user=\"{ann}\"}} 2"
            )),
            "{text}"
        );
        assert!(
            text.contains("jarvis_gpu_answers_total{outcome=\"failed\"} 1"),
            "{text}"
        );
        let named = GpuMetrics::new(None, true);
        named.answered("done", ("ann", "key-of-ann"));
        assert!(
            named
                .render()
                .contains("jarvis_gpu_user_answers_total{user=\"ann\"} 1")
        );
    }
}

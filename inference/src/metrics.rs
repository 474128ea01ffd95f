//! The engine's Prometheus metrics: queue depth, time to first token, tokens per second, and
//! requests by outcome. Registered into the node's registry under `jarvis_llm_…`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `jarvis_llm_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `stop`, `length`, `cancelled`, `error`, `refused`.
    pub outcome: String,
}

/// The engine's metrics; cheap to clone (shared atomics).
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    /// Requests waiting for a slot.
    pub queue_depth: Gauge,
    /// Of those, spoken turns (queued ahead of the rest).
    pub queue_depth_voice: Gauge,
    /// Requests generating now.
    pub active: Gauge,
    /// From submission to the first token, in seconds.
    pub time_to_first_token: Histogram,
    /// Generation speed of each finished request.
    pub tokens_per_second: Histogram,
    /// Requests by how they ended.
    pub requests: Family<Outcome, Counter>,
    /// Times the worker process was (re)started.
    pub worker_starts: Counter,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self {
            queue_depth: Gauge::default(),
            queue_depth_voice: Gauge::default(),
            active: Gauge::default(),
            time_to_first_token: Histogram::new([
                0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            tokens_per_second: Histogram::new([1.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]),
            requests: Family::default(),
            worker_starts: Counter::default(),
        }
    }
}

impl EngineMetrics {
    /// Adds these metrics to `registry` (a `llm` sub-registry).
    pub fn register(&self, registry: &mut Registry) {
        let llm = registry.sub_registry_with_prefix("llm");
        llm.register(
            "queue_depth",
            "Requests waiting for an engine slot",
            self.queue_depth.clone(),
        );
        llm.register(
            "queue_depth_voice",
            "Spoken turns waiting for an engine slot (ahead of the rest)",
            self.queue_depth_voice.clone(),
        );
        llm.register(
            "active_requests",
            "Requests generating now",
            self.active.clone(),
        );
        llm.register(
            "time_to_first_token_seconds",
            "From a request's submission to its first token",
            self.time_to_first_token.clone(),
        );
        llm.register(
            "tokens_per_second",
            "Generation speed of finished requests",
            self.tokens_per_second.clone(),
        );
        llm.register("requests", "Requests by outcome", self.requests.clone());
        llm.register(
            "worker_starts",
            "Times the engine worker process was started",
            self.worker_starts.clone(),
        );
    }

    /// Counts one request ending with `outcome`.
    pub fn outcome(&self, outcome: &str) {
        self.requests
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

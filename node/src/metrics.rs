//! Prometheus metrics of the node, served on the local API at `/metrics` (text exposition
//! format, same bearer token as the rest of the API).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The node's counters and gauges. Cheap to update (atomics); shared by the node task and the
/// API through an `Arc`.
pub struct Metrics {
    registry: Registry,
    pub sync_messages_sent: Counter,
    pub sync_messages_received: Counter,
    pub changes_stored: Counter,
    pub peers_authenticated: Counter,
    pub peers_refused: Counter,
    pub peers_connected: Gauge,
    pub documents: Gauge,
    /// The local engine's queue, latency and outcomes (`jarvis_llm_…`).
    pub engine: jarvis_inference::metrics::EngineMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("jarvis");
        let sync_messages_sent = Counter::default();
        let sync_messages_received = Counter::default();
        let changes_stored = Counter::default();
        let peers_authenticated = Counter::default();
        let peers_refused = Counter::default();
        let peers_connected = Gauge::default();
        let documents = Gauge::default();
        registry.register(
            "sync_messages_sent",
            "Sync messages sent to peers",
            sync_messages_sent.clone(),
        );
        registry.register(
            "sync_messages_received",
            "Sync messages received from peers",
            sync_messages_received.clone(),
        );
        registry.register(
            "changes_stored",
            "Sealed changes received from peers and stored durably",
            changes_stored.clone(),
        );
        registry.register(
            "peers_authenticated",
            "Peers whose certificate chain verified",
            peers_authenticated.clone(),
        );
        registry.register(
            "peers_refused",
            "Peers refused by the authentication gate",
            peers_refused.clone(),
        );
        registry.register(
            "peers_connected",
            "Peers with an open connection",
            peers_connected.clone(),
        );
        registry.register("documents", "Documents held", documents.clone());
        let engine = jarvis_inference::metrics::EngineMetrics::default();
        engine.register(&mut registry);
        Self {
            registry,
            sync_messages_sent,
            sync_messages_received,
            changes_stored,
            peers_authenticated,
            peers_refused,
            peers_connected,
            documents,
            engine,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

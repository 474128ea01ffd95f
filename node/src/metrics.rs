//! Prometheus metrics of the node, served on the local API at `/metrics` (text exposition
//! format, same bearer token as the rest of the API).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label with one value: a voice stage (`end_of_speech_to_transcript`, …) or a turn's outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Label {
    pub name: String,
}

/// Histograms by label.
pub type Histograms = Family<Label, Histogram, fn() -> Histogram>;

fn stage_histogram() -> Histogram {
    Histogram::new([0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0])
}

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
    /// Clients following `/v1/events` (the UI's windows and tabs, scripts).
    pub event_streams: Gauge,
    /// The local engine's queue, latency and outcomes (`jarvis_llm_…`).
    pub engine: jarvis_inference::metrics::EngineMetrics,
    /// Each voice stage's time, from the end of speech (`jarvis_voice_stage_seconds{name}`).
    pub voice_stages: Histograms,
    /// Voice turns by outcome (`answered`, `interrupted`, `no_request`, `failed`).
    pub voice_turns: Family<Label, Counter>,
    /// Voice answers by how they started: `kept` (held at a pause, confirmed at the end) or
    /// `asked` (at the end).
    pub voice_answers: Family<Label, Counter>,
    /// Held answers dropped because the user went on speaking after the pause.
    pub voice_held_dropped: Counter,
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
        let event_streams = Gauge::default();
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
        registry.register(
            "event_streams",
            "Clients following the event stream (UI windows, scripts)",
            event_streams.clone(),
        );
        let engine = jarvis_inference::metrics::EngineMetrics::default();
        engine.register(&mut registry);
        let voice_stages = Histograms::new_with_constructor(stage_histogram);
        let voice_turns = Family::<Label, Counter>::default();
        registry.register(
            "voice_stage_seconds",
            "Time from the end of speech to each stage of a voice turn",
            voice_stages.clone(),
        );
        registry.register("voice_turns", "Voice turns by outcome", voice_turns.clone());
        let voice_answers = Family::<Label, Counter>::default();
        registry.register(
            "voice_answers",
            "Voice answers by how they started: kept (held at a pause) or asked (at the end)",
            voice_answers.clone(),
        );
        let voice_held_dropped = Counter::default();
        registry.register(
            "voice_held_answers_dropped",
            "Held answers dropped because the user went on speaking after the pause",
            voice_held_dropped.clone(),
        );
        Self {
            registry,
            sync_messages_sent,
            sync_messages_received,
            changes_stored,
            peers_authenticated,
            peers_refused,
            peers_connected,
            documents,
            event_streams,
            engine,
            voice_stages,
            voice_turns,
            voice_answers,
            voice_held_dropped,
        }
    }

    /// Records a voice turn: its outcome and its stages (milliseconds, from the end of speech).
    pub fn voice_turn(&self, outcome: &str, stages: &std::collections::BTreeMap<String, u64>) {
        self.voice_turns
            .get_or_create(&Label {
                name: outcome.to_owned(),
            })
            .inc();
        for (stage, ms) in stages {
            if stage.starts_with("end_of_speech_to_") || stage == "barge_in_to_stop" {
                self.voice_stages
                    .get_or_create(&Label {
                        name: stage.clone(),
                    })
                    .observe(*ms as f64 / 1000.0);
            }
        }
    }

    /// How a voice turn's answer started: held at a pause and kept (`kept`), or asked for at
    /// the end (`asked`); and how many held answers were dropped because the user went on.
    pub fn voice_answer(&self, speculative: bool, dropped: usize) {
        self.voice_answers
            .get_or_create(&Label {
                name: if speculative { "kept" } else { "asked" }.to_owned(),
            })
            .inc();
        self.voice_held_dropped.inc_by(dropped as u64);
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

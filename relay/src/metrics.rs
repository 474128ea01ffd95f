//! The relay's Prometheus metrics and health endpoint (`jarvis-relay up --metrics ADDR`):
//! `GET /metrics` (text exposition format) and `GET /health` (200 with the relay's state while
//! it runs). Metrics are atomics shared by the relay task and the HTTP server through an `Arc`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A label with one value: a refusal's reason, or a user's name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct User {
    pub user: String,
}

pub struct Metrics {
    registry: Registry,
    /// Open connections (any peer).
    pub connections: Gauge,
    /// Devices admitted to store-and-forward.
    pub devices: Gauge,
    /// Sealed bytes stored, per user.
    pub stored_bytes: Family<User, Gauge>,
    /// Changes newly stored.
    pub changes_stored: Counter,
    /// Sync messages pushed to devices (answers and live fan-out).
    pub messages_forwarded: Counter,
    /// Peers refused by the gate, and sync messages refused, by reason (`not-a-member`,
    /// `rate-limited`, `quota`, `malformed`, …).
    pub refusals: Family<Reason, Counter>,
    /// Revocations held.
    pub revocations: Gauge,
    /// Announcements of what the other instances stored, heard (PostgreSQL fleets only).
    pub announcements_heard: Counter,
    running: AtomicBool,
    /// The PostgreSQL store, when the relay runs on one: `/health` asks it.
    database: std::sync::OnceLock<crate::pg::Pg>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("jarvis_relay");
        let metrics = Self {
            connections: Gauge::default(),
            devices: Gauge::default(),
            stored_bytes: Family::default(),
            changes_stored: Counter::default(),
            messages_forwarded: Counter::default(),
            refusals: Family::default(),
            revocations: Gauge::default(),
            announcements_heard: Counter::default(),
            database: std::sync::OnceLock::new(),
            running: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open connections",
            metrics.connections.clone(),
        );
        registry.register(
            "devices",
            "Devices admitted to store-and-forward",
            metrics.devices.clone(),
        );
        registry.register(
            "stored_bytes",
            "Sealed bytes stored per user",
            metrics.stored_bytes.clone(),
        );
        registry.register(
            "changes_stored",
            "Sealed changes newly stored",
            metrics.changes_stored.clone(),
        );
        registry.register(
            "messages_forwarded",
            "Sync messages sent to devices",
            metrics.messages_forwarded.clone(),
        );
        registry.register(
            "refusals",
            "Peers and sync messages refused, by reason",
            metrics.refusals.clone(),
        );
        registry.register(
            "revocations",
            "Revocations held",
            metrics.revocations.clone(),
        );
        registry.register(
            "announcements_heard",
            "What the fleet's other instances stored, as they announced it",
            metrics.announcements_heard.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    pub fn refused(&self, reason: &str) {
        self.refusals
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The database `/health` checks (set once, when the relay opens a PostgreSQL store).
    pub fn set_database(&self, pg: crate::pg::Pg) {
        let _ = self.database.set(pg);
    }

    /// Whether the store answers: always for sled (it is in this process), a round trip for
    /// PostgreSQL (on a blocking thread, within the store's timeout).
    async fn database_reachable(self: &Arc<Self>) -> Option<bool> {
        let pg = self.database.get()?.clone();
        Some(
            tokio::task::spawn_blocking(move || pg.healthy())
                .await
                .unwrap_or(false),
        )
    }

    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `/metrics` and `/health` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
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
                    let database = health.database_reachable().await;
                    if !health.running.load(Ordering::Relaxed) {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            axum::Json(serde_json::json!({ "status": "stopping" })),
                        )
                    } else if database == Some(false) {
                        // Up, but every write would be refused: a load balancer should send
                        // devices to another instance.
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            axum::Json(serde_json::json!({
                                "status": "database unreachable",
                                "database": false,
                            })),
                        )
                    } else {
                        (
                            axum::http::StatusCode::OK,
                            axum::Json(serde_json::json!({
                                "status": "ok",
                                "connections": health.connections.get(),
                                "devices": health.devices.get(),
                                "database": database.unwrap_or(true),
                            })),
                        )
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics server stopped");
    }
}

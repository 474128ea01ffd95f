//! Logs, and one trace per request across processes.
//!
//! Every program of Jarvis (`jarvis`, `jarvis-relay`) calls [`init`] first: logs go to stderr
//! as before (`JARVIS_LOG`, default `warn`); and when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, the program's `tracing` spans are exported as
//! OpenTelemetry traces over OTLP/HTTP (protobuf) to that collector, under the service name
//! given (`OTEL_SERVICE_NAME` overrides it). Nothing is exported, and no thread is started,
//! without it.
//!
//! A request that crosses processes carries its trace in W3C trace context
//! (<https://www.w3.org/TR/trace-context/>): [`traceparent`] writes a span's context as a
//! `traceparent` value (the node puts it in the offload request; the GPU peer in the HTTP
//! request to its backend), and [`adopt`] makes a span the child of one received. What a peer
//! sends is bounded ([`MAX_TRACEPARENT`]) and parsed by OpenTelemetry's own propagator; a value
//! that does not parse is ignored (the span starts a trace of its own).
//!
//! Dropping the [`Telemetry`] returned by [`init`] flushes the spans not yet exported (so a
//! process that stops cleanly loses none).

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The longest `traceparent` taken from a peer (the W3C format's is 55 characters; later
/// versions may add fields).
pub const MAX_TRACEPARENT: usize = 128;

/// The exporter, flushed and stopped when dropped.
#[must_use = "dropping it stops exporting (and flushes what is pending)"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (a collector is configured).
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: could not send the last traces to the collector: {e}");
        }
    }
}

/// Whether the environment names an OTLP collector.
fn configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
}

/// Sets up logging to stderr and, if a collector is configured, trace export as `service`.
pub fn init(service: &'static str) -> Telemetry {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("JARVIS_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = configured().then(|| provider(service)).and_then(|p| {
        p.map_err(|e| eprintln!("warning: traces will not be exported: {e}"))
            .ok()
    });
    // A second init (a test calling it twice) keeps the first.
    let Some(provider) = provider else {
        // Not exporting: the one global filter, so that the many `trace!`/`debug!` call sites
        // of libp2p, quinn and hyper cost nothing (each is switched off once, for good). Per-
        // layer filters beside an absent layer would evaluate every one of them, every time.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .try_init();
        return Telemetry { provider: None };
    };
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter());
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        // Our own crates only, at any level (`JARVIS_LOG` is for what is printed); a static
        // filter by target, so other crates' call sites are switched off once.
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target("jarvis", tracing::Level::TRACE),
        );
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    Telemetry {
        provider: Some(provider),
    }
}

use tracing_subscriber::Layer as _;

fn provider(
    service: &'static str,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, Box<dyn std::error::Error>> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let client = BlockingHttp(
        reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()?,
    );
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(client)
        .build()?;
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| service.to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    // The exporter reads the endpoint (and headers, timeout) from the OTEL_EXPORTER_OTLP_*
    // variables itself; `with_endpoint` is not called so that they apply as documented.
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The OTLP exporter's HTTP client: the workspace's reqwest, blocking, since the SDK's batch
/// processor exports from a thread of its own (outside any async runtime).
#[derive(Debug)]
struct BlockingHttp(reqwest::blocking::Client);

/// The most of a collector's answer read (it is a status, or a small protobuf).
const MAX_RESPONSE: usize = 64 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for BlockingHttp {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        use std::io::Read as _;
        let (parts, body) = request.into_parts();
        let mut sent = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body.to_vec())
            .send()?;
        let status = sent.status();
        let mut bytes = Vec::new();
        (&mut sent)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut bytes)?;
        Ok(opentelemetry_http::Response::builder()
            .status(status)
            .body(opentelemetry_http::Bytes::from(bytes))?)
    }
}

/// `span`'s trace context as a W3C `traceparent` value; none when it is not traced (no
/// collector configured, or not sampled).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// Whether `traceparent` (from a peer: untrusted) is a valid W3C trace context, within
/// [`MAX_TRACEPARENT`].
pub fn valid(traceparent: &str) -> bool {
    parse(traceparent).is_some()
}

fn parse(traceparent: &str) -> Option<opentelemetry::Context> {
    if traceparent.len() > MAX_TRACEPARENT || !traceparent.is_ascii() {
        return None;
    }
    let carrier: HashMap<String, String> =
        HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    opentelemetry::trace::TraceContextExt::span(&parent)
        .span_context()
        .is_valid()
        .then_some(parent)
}

/// Makes `span` a child of the trace a peer sent (`traceparent`, untrusted: bounded, parsed by
/// the W3C propagator, ignored if invalid). Returns whether it was adopted.
pub fn adopt(span: &tracing::Span, traceparent: &str) -> bool {
    parse(traceparent).is_some_and(|parent| span.set_parent(parent).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_traceparent_is_bounded_and_checked() {
        let span = tracing::info_span!("test");
        assert!(!adopt(&span, "garbage"));
        assert!(!adopt(&span, &"0".repeat(MAX_TRACEPARENT + 1)));
        assert!(!adopt(
            &span,
            "00-00000000000000000000000000000000-0000000000000000-01"
        ));
        assert!(!adopt(
            &span,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01é"
        ));
        assert!(valid(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
    }

    proptest::proptest! {
        /// Whatever a peer sends as its trace context is judged without panicking, and only
        /// well-formed values within the bound pass.
        #[test]
        fn any_traceparent_is_judged_safely(value in ".{0,200}", trace in "[0-9a-f]{32}", parent in "[0-9a-f]{16}") {
            let span = tracing::info_span!("fuzzed");
            let accepted = valid(&value);
            proptest::prop_assert!(!accepted || value.len() <= MAX_TRACEPARENT);
            let _ = adopt(&span, &value);
            let formed = format!("00-{trace}-{parent}-01");
            let zero = trace == "0".repeat(32) || parent == "0".repeat(16);
            proptest::prop_assert_eq!(valid(&formed), !zero);
        }
    }
}

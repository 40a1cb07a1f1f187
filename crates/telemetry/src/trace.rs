//! Traces: OpenTelemetry spans exported over OTLP (gRPC) when the process's
//! `[telemetry] otlp_endpoint` is set, off otherwise. A message's trace
//! follows it through officer → node → hub → node: each hop's span is a
//! child of the previous one, whose W3C trace context (`traceparent`)
//! travels in the gRPC metadata of the request and, because requests carry
//! batches and deliveries share one long stream, beside each message too
//! (`SubmitRequest.traceparent`, `Delivery.traceparent`, the outbox record
//! and the hub's queue entry). Spans carry ids and routing metadata only,
//! never a message's content.
//!
//! Export never stalls the process: spans go to a bounded batch queue,
//! exported every second with a two-second timeout; when the collector is
//! absent they are dropped (and logged by OpenTelemetry at debug level).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `[telemetry]` table of the hub and node configuration files.
///
/// ```toml
/// [telemetry]
/// otlp_endpoint = "http://127.0.0.1:4317"   # an OTLP/gRPC receiver
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Where spans are exported (OTLP over gRPC, `http://host:port`); no
    /// export when absent.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    /// An endpoint must be `http://` or `https://` with a host and port.
    pub fn check(&self) -> Result<(), String> {
        if let Some(e) = &self.otlp_endpoint {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"));
            let ok = rest.is_some_and(|r| {
                r.trim_end_matches('/')
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            });
            if !ok {
                return Err(format!(
                    "[telemetry] otlp_endpoint = \"{}\" is not http://host:port (an OTLP/gRPC receiver, for example http://127.0.0.1:4317)",
                    crate::escape(e)
                ));
            }
        }
        Ok(())
    }
}

/// Whether spans are exported (so that message paths only trace when
/// someone receives the traces).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Flushes and stops the exporter when dropped (at the end of `main`),
/// within its timeout.
#[derive(Debug)]
pub struct TraceGuard(SdkTracerProvider);

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            tracing::debug!(error = %e, "trace exporter shutdown");
        }
    }
}

/// The export pipeline for `service` to `endpoint`. Must be called inside a
/// Tokio runtime.
pub(crate) fn provider(endpoint: &str, service: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| format!("cannot set up the OTLP exporter for {endpoint}: {e}"))?;
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_secs(1))
                .with_max_queue_size(8192)
                .build(),
        )
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(resource)
        .build())
}

/// The tracing layer that turns spans into OpenTelemetry spans, and the
/// guard that flushes them; marks tracing as enabled.
pub(crate) fn layer<S>(
    endpoint: &str,
    service: &str,
) -> Result<(impl tracing_subscriber::Layer<S>, TraceGuard), String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let provider = provider(endpoint, service)?;
    let tracer = provider.tracer("liaison");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    ENABLED.store(true, Ordering::Relaxed);
    Ok((
        tracing_opentelemetry::layer().with_tracer(tracer),
        TraceGuard(provider),
    ))
}

struct Map<'a>(&'a mut HashMap<String, String>);

impl Injector for Map<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// The W3C `traceparent` of `span`, or empty when tracing is off (or the
/// span is not recorded).
pub fn traceparent(span: &tracing::Span) -> String {
    if !enabled() {
        return String::new();
    }
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut Map(&mut map));
    map.remove("traceparent").unwrap_or_default()
}

/// Makes `span` a child of the trace `traceparent` names (nothing when it
/// is empty, malformed, or tracing is off).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if !enabled() || traceparent.is_empty() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&One(traceparent));
    let _ = span.set_parent(cx);
}

/// Puts `span`'s trace context in outgoing gRPC metadata.
pub fn inject(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
    let tp = traceparent(span);
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(tp.as_str()) {
        if !tp.is_empty() {
            metadata.insert("traceparent", v);
        }
    }
}

/// The `traceparent` of incoming gRPC metadata, or empty.
pub fn extract(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_a_host_and_port_over_http() {
        let c = |e: &str| TelemetryConfig {
            otlp_endpoint: Some(e.to_owned()),
        };
        assert!(c("http://127.0.0.1:4317").check().is_ok());
        assert!(c("https://collector.example:4317/").check().is_ok());
        assert!(TelemetryConfig::default().check().is_ok());
        for bad in [
            "127.0.0.1:4317",
            "http://:4317",
            "http://host",
            "ftp://h:1",
            "http://h:port",
        ] {
            assert!(c(bad).check().is_err(), "{bad}");
        }
    }

    #[test]
    fn without_export_nothing_is_propagated() {
        let span = tracing::info_span!("x");
        assert_eq!(traceparent(&span), "");
        let mut md = tonic::metadata::MetadataMap::new();
        inject(&span, &mut md);
        assert!(md.get("traceparent").is_none());
        set_parent(
            &span,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
    }
}

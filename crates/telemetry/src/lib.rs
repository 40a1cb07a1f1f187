//! One function that sets up logging for Liaison binaries.
//!
//! Logs go to standard error, as text or JSON lines. The filter comes from
//! `RUST_LOG` when set, else from the default the binary passes. Message
//! bodies are never logged anywhere in Liaison; only routing metadata.
//!
//! Text logs are coloured only when standard error is a terminal (and
//! `NO_COLOR` is unset or empty): a log file, a pipe to a log shipper or a
//! supervisor's journal gets plain lines, without ANSI escape codes.
#![forbid(unsafe_code)]

pub mod env;
pub mod health;
pub mod metrics;
pub mod trace;

use std::ffi::OsStr;
use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global subscriber. Calling it twice is harmless (the second
/// call does nothing), so tests may call it freely.
pub fn init(default_filter: &str, format: Format) {
    let _ = init_with(default_filter, format, None);
}

/// Installs the global subscriber, and with `otlp` (`(endpoint, service
/// name)`) an OpenTelemetry layer that exports spans there; keep the guard
/// until the end of `main` (dropping it flushes the last spans). Must be
/// called inside a Tokio runtime when `otlp` is set.
///
/// # Errors
/// When the exporter cannot be set up (a malformed endpoint).
pub fn init_with(
    default_filter: &str,
    format: Format,
    otlp: Option<(&str, &str)>,
) -> Result<Option<trace::TraceGuard>, String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let no_color = std::env::var_os("NO_COLOR");
    let ansi = colour(std::io::stderr().is_terminal(), no_color.as_deref());
    let logs = match format {
        Format::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_target(false)
            .boxed(),
        Format::Json => fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_target(false)
            .boxed(),
    };
    let (otel, guard) = match otlp {
        Some((endpoint, service)) => {
            let (layer, guard) = trace::layer(endpoint, service)?;
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(otel)
        .try_init();
    Ok(guard)
}

/// `s` with quotes, backslashes and control characters escaped, for a value
/// echoed in a message.
pub(crate) fn escape(s: &str) -> String {
    s.escape_debug().to_string()
}

/// Whether to colour log lines: only for a terminal, and never when the
/// `NO_COLOR` convention (<https://no-color.org>) asks not to.
fn colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        let cases: [(bool, Option<&str>, bool); 5] = [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (false, None, false),
            (false, Some("1"), false),
        ];
        for (terminal, no_color, want) in cases {
            assert_eq!(
                colour(terminal, no_color.map(OsStr::new)),
                want,
                "terminal {terminal}, NO_COLOR {no_color:?}"
            );
        }
    }
}

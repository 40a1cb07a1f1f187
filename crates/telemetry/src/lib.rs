//! One function that sets up logging for Liaison binaries.
//!
//! Logs go to standard error, as text or JSON lines. The filter comes from
//! `RUST_LOG` when set, else from the default the binary passes. Message
//! bodies are never logged anywhere in Liaison; only routing metadata.
#![forbid(unsafe_code)]

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
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        Format::Text => builder.try_init(),
        Format::Json => builder.json().try_init(),
    };
}

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
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let no_color = std::env::var_os("NO_COLOR");
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(std::io::stderr().is_terminal(), no_color.as_deref()))
        .with_target(false);
    let _ = match format {
        Format::Text => builder.try_init(),
        Format::Json => builder.json().try_init(),
    };
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

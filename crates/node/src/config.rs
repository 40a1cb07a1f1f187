//! The node's configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use liaison_pki::{ServerLimits, TlsFiles};
use serde::Deserialize;

use crate::NodeError;

/// A node's configuration (`node.toml`). Relative paths are resolved against
/// the directory of the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Format version; must be 1.
    pub version: u32,
    /// The body this node serves (for example `europol`); must match the
    /// node certificate.
    pub body: String,
    /// Address of the officer API (TLS only), for example `0.0.0.0:7401`.
    pub listen: SocketAddr,
    /// The hub's address, for example `https://hub.example.org:7400`.
    pub hub: String,
    /// Directory of the durable outbox and inbox; created if absent.
    pub data_dir: PathBuf,
    /// The node's certificate (server for officers, client of the hub), key
    /// and the federation CA.
    pub tls: TlsFiles,
    /// Retry timing for pushing to and subscribing from the hub.
    #[serde(default)]
    pub retry: Retry,
    /// Protective limits.
    #[serde(default)]
    pub limits: ServerLimits,
}

/// Bounded exponential backoff.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// First delay after a failure, in milliseconds.
    pub initial_backoff_ms: u64,
    /// Largest delay, in milliseconds.
    pub max_backoff_ms: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 200,
            max_backoff_ms: 30_000,
        }
    }
}

impl Retry {
    /// The delay before retry number `attempt` (1-based), doubling up to the
    /// maximum, with up to 25% random jitter so that nodes do not retry in step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .initial_backoff_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
            .min(self.max_backoff_ms);
        let jitter = rand::random_range(0..=base / 4);
        Duration::from_millis(base - jitter)
    }
}

impl NodeConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, NodeError> {
        let text = std::fs::read_to_string(path).map_err(|e| NodeError::Config {
            file: path.display().to_string(),
            problem: format!("cannot read it: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses configuration text; `path` names the file in errors and anchors
    /// relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self, NodeError> {
        let bad = |problem: String| NodeError::Config {
            file: path.display().to_string(),
            problem,
        };
        let mut config: NodeConfig = toml::from_str(text)
            .map_err(|e| bad(liaison_types::located(text, e.span(), e.message())))?;
        if config.version != 1 {
            return Err(bad(format!(
                "version = {} is not supported; use version = 1",
                config.version
            )));
        }
        liaison_types::BodyId::parse(&config.body).map_err(|e| bad(format!("body: {e}")))?;
        if !config.hub.starts_with("https://") {
            return Err(bad(format!(
                "hub: '{}' must be an https:// address; the hub only speaks TLS",
                config.hub
            )));
        }
        if config.retry.initial_backoff_ms == 0
            || config.retry.max_backoff_ms < config.retry.initial_backoff_ms
        {
            return Err(bad(
                "retry: initial_backoff_ms must be positive and no larger than max_backoff_ms"
                    .into(),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.data_dir,
            &mut config.tls.ca,
            &mut config.tls.cert,
            &mut config.tls.key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, NodeError> {
        NodeConfig::parse(Path::new("/etc/liaison/node.toml"), text)
    }

    const GOOD: &str = r#"
version = 1
body = "europol"
listen = "127.0.0.1:7401"
hub = "https://127.0.0.1:7400"
data_dir = "data"
[tls]
ca = "ca.pem"
cert = "node.pem"
key = "node.key.pem"
"#;

    #[test]
    fn a_good_config_resolves_relative_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.data_dir, Path::new("/etc/liaison/data"));
        assert_eq!(c.retry.max_backoff_ms, 30_000);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let err = parse(&GOOD.replace("data_dir", "datadir"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/liaison/node.toml: line 6"), "{err}");
        assert!(err.contains("datadir"), "{err}");
        let err = parse(&GOOD.replace("https://", "http://"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("hub:"), "{err}");
        let err = parse(&GOOD.replace("\"europol\"", "\"Europol\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("body:"), "{err}");
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let r = Retry {
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
        };
        assert!(r.backoff(1) <= Duration::from_millis(100));
        assert!(r.backoff(3) >= Duration::from_millis(300));
        assert!(r.backoff(60) <= Duration::from_millis(1_000));
        assert!(r.backoff(60) >= Duration::from_millis(750));
    }
}

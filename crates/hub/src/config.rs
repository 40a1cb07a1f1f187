//! The hub's configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::HubError;

/// The hub's configuration (`hub.toml`). Relative paths are resolved against
/// the directory of the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Format version; must be 1.
    pub version: u32,
    /// Address to listen on (TLS only), for example `0.0.0.0:7400`.
    pub listen: SocketAddr,
    /// Directory of the durable store; created if absent.
    pub data_dir: PathBuf,
    /// The federation governance file (see `deploy/federation.toml`).
    pub governance: PathBuf,
    /// The hub's certificate, key and the federation CA.
    pub tls: TlsPaths,
    /// Protective limits.
    #[serde(default)]
    pub limits: Limits,
}

/// Certificate files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// The federation CA certificate (PEM).
    pub ca: PathBuf,
    /// This service's certificate (PEM).
    pub cert: PathBuf,
    /// This service's private key (PEM).
    pub key: PathBuf,
}

/// Protective limits; every field has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// A TLS handshake not finished within this many milliseconds is dropped.
    pub handshake_timeout_ms: u64,
    /// Largest gRPC request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Concurrent requests per connection.
    pub concurrency_per_connection: usize,
    /// A unary request not answered within this many milliseconds fails.
    pub request_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 5_000,
            max_request_bytes: 512 * 1024,
            concurrency_per_connection: 64,
            request_timeout_ms: 30_000,
        }
    }
}

impl Limits {
    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

impl HubConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, HubError> {
        let text = std::fs::read_to_string(path).map_err(|e| HubError::Config {
            file: path.display().to_string(),
            problem: format!("cannot read it: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses configuration text; `path` names the file in errors and anchors
    /// relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self, HubError> {
        let bad = |problem: String| HubError::Config {
            file: path.display().to_string(),
            problem,
        };
        let mut config: HubConfig =
            toml::from_str(text).map_err(|e| bad(crate::toml_error(text, &e)))?;
        if config.version != 1 {
            return Err(bad(format!(
                "version = {} is not supported; use version = 1",
                config.version
            )));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.data_dir,
            &mut config.governance,
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

//! The settings every Liaison server shares: the `[limits]` table of the hub
//! and node configuration files, and the tonic server built from them.

use std::time::Duration;

use serde::Deserialize;
use tonic::transport::Server;

/// Protective limits of a server; every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerLimits {
    /// A TLS handshake not finished within this many milliseconds is dropped.
    pub handshake_timeout_ms: u64,
    /// Largest gRPC request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Concurrent requests per connection.
    pub concurrency_per_connection: usize,
    /// A unary request not answered within this many milliseconds fails.
    pub request_timeout_ms: u64,
    /// A connection older than this many milliseconds is closed (the client
    /// reconnects, and a certificate revoked meanwhile then fails its
    /// handshake); 0 means connections may live forever.
    pub max_connection_age_ms: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 5_000,
            max_request_bytes: 512 * 1024,
            concurrency_per_connection: 64,
            request_timeout_ms: 30_000,
            max_connection_age_ms: 3_600_000,
        }
    }
}

impl ServerLimits {
    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The maximum connection age; `None` when unlimited.
    pub fn max_connection_age(&self) -> Option<Duration> {
        (self.max_connection_age_ms > 0).then(|| Duration::from_millis(self.max_connection_age_ms))
    }

    /// A tonic server builder with these limits and HTTP/2 keepalive, so a
    /// peer that vanished without closing is noticed within half a minute.
    pub fn server(&self) -> Server {
        Server::builder()
            .concurrency_limit_per_connection(self.concurrency_per_connection)
            .timeout(Duration::from_millis(self.request_timeout_ms))
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
    }
}

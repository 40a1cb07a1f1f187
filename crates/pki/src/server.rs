//! The settings every Liaison server shares: the `[limits]` table of the hub
//! and node configuration files, and the tonic server built from them.
//!
//! tonic refuses a request over a service's decoding limit with
//! `OUT_OF_RANGE` before the handler runs. That code means "a value past
//! the end of a range" (an acknowledgement beyond a queue's end, say); a
//! request that is too big is `RESOURCE_EXHAUSTED`, so the server's
//! [`OversizeLayer`] rewrites that one answer, naming the size and the limit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Deserialize;
use tonic::codegen::http;
use tonic::transport::Server;
use tonic::{Code, Status};

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

    /// How a server of `federation` accepts connections under these limits:
    /// every client certificate must name an identity of the federation.
    pub fn accept_options(&self, federation: &str) -> crate::AcceptOptions {
        let mut options = crate::AcceptOptions::new(self.handshake_timeout());
        options.max_age = self.max_connection_age();
        options.federation = Some(federation.to_owned());
        options
    }

    /// A tonic server builder with these limits and HTTP/2 keepalive, so a
    /// peer that vanished without closing is noticed within half a minute;
    /// an oversized request is answered `RESOURCE_EXHAUSTED`.
    pub fn server(
        &self,
    ) -> Server<tower::layer::util::Stack<OversizeLayer, tower::layer::util::Identity>> {
        Server::builder()
            .concurrency_limit_per_connection(self.concurrency_per_connection)
            .timeout(Duration::from_millis(self.request_timeout_ms))
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(OversizeLayer)
    }
}

/// The prefix of tonic's refusal of a request over the decoding limit.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// The status for a request refused by tonic's decoding limit, or `None`
/// for any other status.
pub fn oversize_status(status: &Status) -> Option<Status> {
    if status.code() != Code::OutOfRange {
        return None;
    }
    let rest = status.message().strip_prefix(TONIC_TOO_LARGE)?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    let (found, limit) = (found.parse::<u64>().ok()?, limit.parse::<u64>().ok()?);
    Some(Status::resource_exhausted(format!(
        "request of {found} bytes is over this api's limit of {limit} bytes; send a smaller request"
    )))
}

/// Rewrites tonic's `OUT_OF_RANGE` refusal of an oversized request into
/// `RESOURCE_EXHAUSTED` (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct OversizeLayer;

impl<S> tower::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Oversize { inner }
    }
}

/// The service of [`OversizeLayer`].
#[derive(Debug, Clone)]
pub struct Oversize<S> {
    inner: S,
}

impl<S, Req, B> tower::Service<Req> for Oversize<S>
where
    S: tower::Service<Req, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Default + Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let answer = self.inner.call(req);
        Box::pin(async move {
            let response = answer.await?;
            // tonic keeps the status of a trailers-only answer in the
            // response's extensions.
            match response
                .extensions()
                .get::<Status>()
                .and_then(oversize_status)
            {
                Some(status) => Ok(status.into_http()),
                None => Ok(response),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_decoding_refusal_is_rewritten() {
        let tonic = Status::out_of_range(
            "Error, decoded message length too large: found 5242890 bytes, the limit is: 524288 bytes",
        );
        let rewritten = oversize_status(&tonic).expect("rewritten");
        assert_eq!(rewritten.code(), Code::ResourceExhausted);
        assert!(rewritten.message().contains("5242890 bytes"));
        assert!(rewritten.message().contains("limit of 524288 bytes"));
        assert!(oversize_status(&Status::out_of_range("cannot acknowledge position 9")).is_none());
        assert!(oversize_status(&Status::internal(tonic.message())).is_none());
    }
}

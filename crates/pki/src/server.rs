//! The settings every Liaison server shares: the `[limits]` table of the hub
//! and node configuration files, and the tonic server built from them.
//!
//! tonic refuses a request over a service's decoding limit with
//! `OUT_OF_RANGE` before the handler runs. That code means "a value past
//! the end of a range" (an acknowledgement beyond a queue's end, say); a
//! request that is too big is `RESOURCE_EXHAUSTED`, so the server's
//! [`OversizeLayer`] rewrites that one answer, naming the size and the limit.
//! It does the same for a response over a service's encoding limit
//! ([`MAX_RESPONSE_BYTES`] on every Liaison service), whose refusal tonic
//! sends in the response's trailers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
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
    /// HTTP/2 streams a client may hold open on one connection, advertised
    /// as `SETTINGS_MAX_CONCURRENT_STREAMS`: a stream beyond it is refused
    /// by the protocol, so idle open streams cannot grow a server's memory
    /// without bound.
    pub max_streams_per_connection: u32,
    /// A unary request not answered within this many milliseconds fails.
    pub request_timeout_ms: u64,
    /// A connection older than this many milliseconds is closed (the client
    /// reconnects, and a certificate revoked meanwhile then fails its
    /// handshake); 0 means connections may live forever.
    pub max_connection_age_ms: u64,
    /// After a stop is asked for (SIGTERM), requests in flight have this
    /// many milliseconds to finish; then the connections still open are
    /// closed and the process stops (nothing acknowledged is lost: an
    /// answer is sent only once what it acknowledges is durable).
    pub drain_timeout_ms: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 5_000,
            max_request_bytes: 512 * 1024,
            concurrency_per_connection: 64,
            max_streams_per_connection: 256,
            request_timeout_ms: 30_000,
            max_connection_age_ms: 3_600_000,
            drain_timeout_ms: 10_000,
        }
    }
}

impl ServerLimits {
    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// How long a stop waits for requests in flight.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
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
    /// an oversized request, and one beyond the connection's concurrency
    /// (load shedding), is answered `RESOURCE_EXHAUSTED`.
    ///
    /// HTTP/2 abuse is bounded explicitly, since tonic passes `None` to
    /// hyper (no limit) for what it is not told: the streams a client may
    /// open; the streams the server resets for a client's protocol errors
    /// before it sends GOAWAY (`ENHANCE_YOUR_CALM`; the 2025 "MadeYouReset"
    /// class, CVE-2025-8671); the streams a client resets before they are
    /// accepted (rapid reset, CVE-2023-44487); and the header list's size.
    pub fn server(
        &self,
    ) -> Server<tower::layer::util::Stack<OversizeLayer, tower::layer::util::Identity>> {
        Server::builder()
            .concurrency_limit_per_connection(self.concurrency_per_connection)
            // A request beyond the connection's limit is refused at once
            // (RESOURCE_EXHAUSTED, which clients retry) instead of waiting
            // behind requests that may never finish.
            .load_shed(true)
            .max_concurrent_streams(self.max_streams_per_connection.max(1))
            .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESETS))
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .timeout(Duration::from_millis(self.request_timeout_ms))
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(OversizeLayer)
    }
}

/// Streams a server resets for one connection's protocol errors before it
/// sends GOAWAY.
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Streams a client may reset before the server accepted them, pending at
/// once, before GOAWAY.
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// Largest header list a request may carry (gRPC metadata is small).
pub const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// Largest response a Liaison server sends, in bytes: what a gRPC client
/// decodes by default. A response over it (a list asked for with a very
/// large limit) is refused with `RESOURCE_EXHAUSTED`, never sent whole to
/// a client that could not read it.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// The prefix of tonic's refusal of a request over the decoding limit.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// The prefix of tonic's refusal of a response over the encoding limit.
const TONIC_ENCODED_TOO_LARGE: &str = "Error, encoded message length too large: found ";

/// tonic's `OUT_OF_RANGE` for a message over a limit: the size found and
/// the limit, when `status` is one.
fn tonic_oversize(status: &Status, prefix: &str) -> Option<(u64, u64)> {
    if status.code() != Code::OutOfRange {
        return None;
    }
    let rest = status.message().strip_prefix(prefix)?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((found.parse().ok()?, limit.parse().ok()?))
}

/// The status for a request refused by tonic's decoding limit, or `None`
/// for any other status.
pub fn oversize_status(status: &Status) -> Option<Status> {
    let (found, limit) = tonic_oversize(status, TONIC_TOO_LARGE)?;
    Some(Status::resource_exhausted(format!(
        "request of {found} bytes is over this api's limit of {limit} bytes; send a smaller request"
    )))
}

/// The status for a response refused by tonic's encoding limit, or `None`
/// for any other status.
pub fn oversize_response_status(status: &Status) -> Option<Status> {
    let (found, limit) = tonic_oversize(status, TONIC_ENCODED_TOO_LARGE)?;
    Some(Status::resource_exhausted(format!(
        "response of {found} bytes is over this api's limit of {limit} bytes; ask for fewer entries (a smaller limit)"
    )))
}

/// Rewrites, in a response's trailers, tonic's `OUT_OF_RANGE` refusal of
/// an oversized response into `RESOURCE_EXHAUSTED`.
fn rewrite_trailers(trailers: &mut http::HeaderMap) {
    let Some(status) = Status::from_header_map(trailers)
        .as_ref()
        .and_then(oversize_response_status)
    else {
        return;
    };
    trailers.remove("grpc-status");
    trailers.remove("grpc-message");
    trailers.remove("grpc-status-details-bin");
    // The message is ASCII, which `add_header` always encodes.
    let _ = status.add_header(trailers);
}

/// Rewrites tonic's `OUT_OF_RANGE` refusals of an oversized request or
/// response into `RESOURCE_EXHAUSTED` (see the module documentation).
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

impl<S, Req> tower::Service<Req> for Oversize<S>
where
    S: tower::Service<Req, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
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
            if let Some(status) = response
                .extensions()
                .get::<Status>()
                .and_then(oversize_status)
            {
                return Ok(status.into_http());
            }
            // A response over the encoding limit fails in its body: its
            // status comes in the trailers.
            Ok(response.map(|body| {
                tonic::body::Body::new(body.map_frame(|frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        rewrite_trailers(&mut trailers);
                        http_body::Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                }))
            }))
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

    #[test]
    fn only_the_encoding_refusal_is_rewritten_in_trailers() {
        let tonic = Status::out_of_range(
            "Error, encoded message length too large: found 4194305 bytes, the limit is: 4194304 bytes",
        );
        assert!(oversize_status(&tonic).is_none(), "not a request's refusal");
        let mut trailers = http::HeaderMap::new();
        tonic.add_header(&mut trailers).unwrap();
        rewrite_trailers(&mut trailers);
        let rewritten = Status::from_header_map(&trailers).expect("a status");
        assert_eq!(rewritten.code(), Code::ResourceExhausted);
        assert!(rewritten.message().contains("response of 4194305 bytes"));
        assert!(rewritten.message().contains("limit of 4194304 bytes"));

        for other in [
            Status::out_of_range("cannot acknowledge position 9"),
            Status::internal(tonic.message()),
            Status::ok(""),
        ] {
            let mut trailers = http::HeaderMap::new();
            other.add_header(&mut trailers).unwrap();
            let before = trailers.clone();
            rewrite_trailers(&mut trailers);
            assert_eq!(trailers, before);
        }
    }
}

/// Serves `serve` (a server future that stops accepting once its shutdown
/// signal fires, then waits for every connection to finish) but gives up
/// waiting `bound` after `began` is set: the connections still open are
/// then dropped. Returns what the server returned, or `Ok` when the bound
/// ended it.
pub async fn drain_within<E>(
    serve: impl Future<Output = Result<(), E>>,
    mut began: tokio::sync::watch::Receiver<bool>,
    bound: Duration,
) -> Result<(), E> {
    tokio::select! {
        served = serve => served,
        () = async {
            if began.wait_for(|b| *b).await.is_err() {
                // No stop will be asked for: no bound either.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(bound).await;
        } => {
            tracing::warn!(bound_ms = bound.as_millis(), "requests still in flight when the drain bound passed; closing their connections");
            Ok(())
        }
    }
}

#[cfg(test)]
mod drain_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_drain_gives_up_at_its_bound_only_once_a_stop_began() {
        let (began, rx) = tokio::sync::watch::channel(false);
        let never = std::future::pending::<Result<(), ()>>();
        let bound = Duration::from_secs(10);
        // No stop asked for: the server runs on (an hour is plenty).
        let ran = tokio::time::timeout(
            Duration::from_secs(3600),
            drain_within(never, rx.clone(), bound),
        )
        .await;
        assert!(ran.is_err(), "cut without a stop");
        // A stop: cut at the bound, not before.
        let started = tokio::time::Instant::now();
        let drained = tokio::spawn(drain_within(
            std::future::pending::<Result<(), ()>>(),
            rx.clone(),
            bound,
        ));
        began.send(true).unwrap();
        assert_eq!(drained.await.unwrap(), Ok(()));
        let took = started.elapsed();
        assert!(
            took >= bound && took < bound + Duration::from_secs(1),
            "{took:?}"
        );
        // A server that finishes first answers for itself.
        let done = drain_within(async { Err::<(), _>("failed") }, rx, bound).await;
        assert_eq!(done, Err("failed"));
        // A stop signal that goes away unsent sets no bound.
        let (gone, rx) = tokio::sync::watch::channel(false);
        drop(gone);
        let ran = tokio::time::timeout(
            Duration::from_secs(3600),
            drain_within(std::future::pending::<Result<(), ()>>(), rx, bound),
        )
        .await;
        assert!(ran.is_err(), "cut without a stop");
    }
}

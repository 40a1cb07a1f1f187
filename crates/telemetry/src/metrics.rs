//! The `/metrics` endpoint: the OpenMetrics text of a registry, over HTTP/1.1
//! on a listen address of its own (plain HTTP, meant for loopback, unless
//! the process passes a TLS configuration, which then requires a client
//! certificate of the federation CA, like every other port of Liaison).
//!
//! The process owns its registry and says how to render it ([`Render`]):
//! counters and histograms are updated where things happen, and gauges that
//! read state (queue depths, store size) are refreshed by the render
//! function at each scrape.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
pub use prometheus_client;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The `[metrics]` table of the hub and node configuration files.
///
/// ```toml
/// [metrics]
/// listen = "127.0.0.1:9464"   # its own address
/// tls = false                 # true: mutual TLS with the process's certificate
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics` listens.
    pub listen: SocketAddr,
    /// Serve it over mutual TLS (the process's own certificate and key; a
    /// client certificate of the federation CA is required) instead of
    /// plain HTTP.
    #[serde(default)]
    pub tls: bool,
}

impl MetricsConfig {
    /// Plain HTTP only on a loopback address: queue depths and body names
    /// are not for the network to read.
    pub fn check(&self) -> Result<(), String> {
        if !self.tls && !self.listen.ip().is_loopback() {
            return Err(format!(
                "[metrics] listen = \"{}\" is not a loopback address and tls is false; listen on 127.0.0.1 (or ::1), or set tls = true",
                self.listen
            ));
        }
        Ok(())
    }
}

/// Called once, when a process has opened its store and is about to serve:
/// the binary writes its ready files and tells systemd here.
pub type Ready = Box<dyn FnOnce() + Send>;

/// The listeners a process serves on: its API's, and its metrics' if it
/// has them, and what to do once it is ready. The binary binds both
/// listeners first (connections then wait in the backlog), and the
/// process announces readiness only once its store is open and checked; a
/// bare API listener converts, and the metrics address is then bound from
/// the configuration, if it has one.
pub struct Listeners {
    /// The gRPC API.
    pub api: TcpListener,
    /// `/metrics`.
    pub metrics: Option<TcpListener>,
    /// Run once the store is open, before the first request is served.
    pub ready: Option<Ready>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("api", &self.api)
            .field("metrics", &self.metrics)
            .field("ready", &self.ready.is_some())
            .finish()
    }
}

impl From<TcpListener> for Listeners {
    fn from(api: TcpListener) -> Self {
        Self {
            api,
            metrics: None,
            ready: None,
        }
    }
}

impl Listeners {
    /// The metrics listener: the one given, else one bound at the
    /// configured address, else none.
    pub async fn metrics_for(
        &mut self,
        config: Option<&MetricsConfig>,
    ) -> std::io::Result<Option<TcpListener>> {
        match (self.metrics.take(), config) {
            (Some(l), _) => Ok(Some(l)),
            (None, Some(c)) => TcpListener::bind(c.listen).await.map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// Renders the registry's text at a scrape (off the async runtime: it may
/// read the store).
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic Prometheus text format.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Scrapes served at once; more wait for a free slot.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request headers (or its TLS
/// handshake).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Buckets (seconds) for request and delivery latencies: 1 ms to about 30 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16)
}

/// A latency histogram with [`latency_buckets`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// Registers what every Liaison process exports: `liaison_build_info` and
/// `liaison_certificate_expiry_timestamp_seconds{certificate}` for each of
/// `expiries` (`("cert", t)`, `("ca", t)`, Unix seconds).
pub fn register_process(
    registry: &mut Registry,
    role: &str,
    expiries: &[(&'static str, i64)],
) -> Expiries {
    // A gauge of 1, not an OpenMetrics `info`, so that tools reading the
    // classic text format (promtool among them) read it too.
    let build = Family::<Vec<(String, String)>, Gauge>::default();
    build
        .get_or_create(&vec![
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            ("role".to_owned(), role.to_owned()),
        ])
        .set(1);
    registry.register(
        "liaison_build_info",
        "The running build: version and role (always 1)",
        build,
    );
    let expiry = Expiries(Family::default());
    expiry.set(expiries);
    registry.register_with_unit(
        "liaison_certificate_expiry_timestamp",
        "When this process's certificate (cert) and the soonest to expire of its trusted CA certificates (ca) expire, Unix time",
        Unit::Seconds,
        expiry.0.clone(),
    );
    expiry
}

/// `liaison_tls_handshake_failures_total{reason}`: failed TLS handshakes on
/// the process's API listener, by reason, caught up from the listener's own
/// counts at each scrape ([`HandshakeCounts::catch_up`]).
#[derive(Debug, Clone, Default)]
pub struct HandshakeCounts(
    Family<Vec<(String, String)>, prometheus_client::metrics::counter::Counter>,
    /// Held while catching up: two scrapes at once must not both add.
    Arc<std::sync::Mutex<()>>,
);

impl HandshakeCounts {
    /// Registers the counters in `registry` (handles shared with `self`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "liaison_tls_handshake_failures",
            "Failed TLS handshakes on the API listener, by reason (no_certificate, unknown_ca, revoked, expired, bad_identity, timeout, other)",
            self.0.clone(),
        );
    }

    /// Raises each reason's counter to the listener's count (counts only
    /// grow).
    pub fn catch_up(&self, counts: &[(&str, u64)]) {
        let _one_at_a_time = self.1.lock().unwrap_or_else(|e| e.into_inner());
        for (reason, n) in counts {
            let c = self
                .0
                .get_or_create(&vec![("reason".to_owned(), (*reason).to_owned())]);
            let seen = c.get();
            if *n > seen {
                c.inc_by(n - seen);
            }
        }
    }
}

/// The certificate expiry gauges, to refresh when certificates are reloaded.
#[derive(Debug, Clone)]
pub struct Expiries(Family<Vec<(String, String)>, Gauge>);

impl Expiries {
    /// Sets the gauges from `expiries` (`("cert", t)`, `("ca", t)`…): the
    /// certificate's, and the soonest of the CAs' (during a CA rotation
    /// two are trusted).
    pub fn set(&self, expiries: &[(&'static str, i64)]) {
        self.0.clear();
        let mut soonest: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
        for (which, at) in expiries {
            let e = soonest.entry(which).or_insert(*at);
            *e = (*e).min(*at);
        }
        for (which, at) in soonest {
            self.0
                .get_or_create(&vec![("certificate".to_owned(), which.to_owned())])
                .set(at);
        }
    }
}

/// The store's metrics, the same in every process: its size on disk,
/// whether it fails, and how long its flushes take.
#[derive(Debug)]
pub struct StoreMetrics {
    /// Seconds per flush (`liaison_store::Db::observe_flushes` feeds it).
    pub flush_seconds: Histogram,
    bytes: Gauge,
    failing: Gauge,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            flush_seconds: latency_histogram(),
            bytes: Gauge::default(),
            failing: Gauge::default(),
        }
    }
}

impl StoreMetrics {
    /// Registers `liaison_store_size_bytes`, `liaison_store_failing` (whose
    /// help says what else fails with the store) and
    /// `liaison_store_flush_duration_seconds`.
    pub fn register(&self, r: &mut Registry, failing_help: &str) {
        r.register_with_unit(
            "liaison_store_size",
            "Bytes on disk in the store's data directory",
            Unit::Bytes,
            self.bytes.clone(),
        );
        r.register("liaison_store_failing", failing_help, self.failing.clone());
        r.register_with_unit(
            "liaison_store_flush_duration",
            "Time per store flush (fdatasync included)",
            Unit::Seconds,
            self.flush_seconds.clone(),
        );
    }

    /// Refreshes the gauges at a scrape.
    pub fn refresh(&self, data_dir: &Path, failing: bool) {
        self.bytes
            .set(i64::try_from(dir_size(data_dir)).unwrap_or(i64::MAX));
        self.failing.set(i64::from(failing));
    }
}

/// Serves `/metrics` (see [`serve`]) until `stopping` is set, saying where.
pub async fn serve_until_stopped(
    listener: TcpListener,
    tls: Option<tokio::sync::watch::Receiver<Arc<rustls::ServerConfig>>>,
    render: Render,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    tracing::info!(
        addr = %listener.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string()),
        tls = tls.is_some(),
        "metrics listening at /metrics"
    );
    serve(listener, tls, render, async move {
        let _ = stopping.wait_for(|s| *s).await;
    })
    .await;
}

/// The bytes of every file under `dir` (what `du` counts, roughly).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics text, for
/// clients that do not ask for OpenMetrics (`curl`, `promtool check
/// metrics`), as Prometheus's own client libraries negotiate it: a counter's
/// `HELP` and `TYPE` name its `_total` samples, `unknown` is `untyped`, and
/// the `UNIT` and `EOF` lines, which that format lacks, are left out.
/// Samples are the same in both formats.
pub fn to_classic(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, "counter")) = rest.split_once(' ') {
                counters.insert(name.to_owned());
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                let tail = if p == "# TYPE " && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                };
                out.push_str(p);
                out.push_str(&name);
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The OpenMetrics text of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

/// Serves `GET /metrics` on `listener` until `stop` completes; with `tls`,
/// every connection first completes a TLS handshake with the latest
/// configuration of that watch (HTTP/1.1 is offered by ALPN).
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio::sync::watch::Receiver<Arc<rustls::ServerConfig>>>,
    render: Render,
    stop: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => return,
            a = listener.accept() => a,
        };
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        let Ok((stream, peer)) = accepted else {
            // A failed accept (too many open files, say): pause, go on.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let render = Arc::clone(&render);
        // The configuration in force now (certificates are reloaded
        // without a restart), offering HTTP/1.1.
        let tls = tls.as_ref().map(|configs| {
            let mut config = (**configs.borrow()).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let render = Arc::clone(&render);
                async move { Ok::<_, Infallible>(respond(&req, render).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .keep_alive(true);
            let served = match tls {
                None => http.serve_connection(TokioIo::new(stream), service).await,
                Some(acceptor) => {
                    match tokio::time::timeout(READ_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            http.serve_connection(TokioIo::new(stream), service).await
                        }
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "metrics: tls handshake refused");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "metrics: connection ended with an error");
            }
        });
    }
}

async fn respond(req: &Request<hyper::body::Incoming>, render: Render) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &str| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(text.to_owned())))
            .expect("a static response is valid")
    };
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        r.headers_mut().insert(
            "allow",
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    // OpenMetrics for those that ask for it (Prometheus does); the classic
    // format for everyone else.
    let openmetrics = req
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match tokio::task::spawn_blocking(move || render()).await {
        Ok(text) => {
            let (text, content_type) = if openmetrics {
                (text, CONTENT_TYPE)
            } else {
                (to_classic(&text), CLASSIC_CONTENT_TYPE)
            };
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", content_type)
                .body(Full::new(Bytes::from(text)))
                .expect("a metrics response is valid")
        }
        Err(_) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics could not be rendered; see the process's log\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_size_counts_every_file_below_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("b/c/d"), [0u8; 23]).unwrap();
        assert_eq!(dir_size(dir.path()), 123);
        assert_eq!(dir_size(&dir.path().join("missing")), 0);
    }

    #[test]
    fn the_classic_format_names_counters_by_their_samples_and_drops_what_it_lacks() {
        let mut registry = Registry::default();
        let c = prometheus_client::metrics::counter::Counter::<u64>::default();
        c.inc_by(3);
        registry.register("jobs", "Jobs done", c);
        let h = latency_histogram();
        h.observe(0.004);
        registry.register_with_unit("wait", "Waits", Unit::Seconds, h);
        let g = Gauge::<i64>::default();
        g.set(7);
        registry.register("depth", "Depth", g);
        let om = encode(&registry);
        let classic = to_classic(&om);
        assert!(
            classic.contains(
                "# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\njobs_total 3\n"
            ),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE wait_seconds histogram\n"),
            "{classic}"
        );
        assert!(
            classic.contains("wait_seconds_bucket{le=\"0.004\"} 1\n"),
            "{classic}"
        );
        assert!(classic.contains("wait_seconds_count 1\n"), "{classic}");
        assert!(
            classic.contains("# TYPE depth gauge\ndepth 7\n"),
            "{classic}"
        );
        assert!(
            !classic.contains("# UNIT") && !classic.contains("# EOF"),
            "{classic}"
        );
        // Every sample line is kept as it was.
        let samples = |t: &str| {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(samples(&om), samples(&classic));
        assert_eq!(
            to_classic("# TYPE x unknown\nx 1\n"),
            "# TYPE x untyped\nx 1\n"
        );
    }

    #[test]
    fn plain_metrics_listen_on_loopback_only() {
        let c = |listen: &str, tls: bool| MetricsConfig {
            listen: listen.parse().unwrap(),
            tls,
        };
        assert!(c("127.0.0.1:9464", false).check().is_ok());
        assert!(c("[::1]:9464", false).check().is_ok());
        assert!(c("0.0.0.0:9464", true).check().is_ok());
        let e = c("0.0.0.0:9464", false).check().unwrap_err();
        assert!(e.contains("tls = true"), "{e}");
        assert!(c("10.0.0.1:9464", false).check().is_err());
    }

    #[test]
    fn process_metrics_are_openmetrics_text() {
        let mut registry = Registry::default();
        let e = register_process(
            &mut registry,
            "hub",
            &[("cert", 1_800_000_000), ("ca", 1_900_000_000)],
        );
        // A reload during a CA rotation: two CAs, the soonest counts.
        e.set(&[
            ("cert", 1_800_000_000),
            ("ca", 2_000_000_000),
            ("ca", 1_950_000_000),
        ]);
        let text = encode(&registry);
        assert!(text.contains("# TYPE liaison_build_info gauge"), "{text}");
        assert!(text.contains("liaison_build_info{version=\""), "{text}");
        assert!(
            text.contains(
                "liaison_certificate_expiry_timestamp_seconds{certificate=\"cert\"} 1800000000"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "liaison_certificate_expiry_timestamp_seconds{certificate=\"ca\"} 1950000000"
            ),
            "the soonest CA: {text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

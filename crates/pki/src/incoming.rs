//! Accepting TLS connections for a tonic server.
//!
//! The accept loop only accepts TCP; every TLS handshake runs in its own task
//! under a deadline, so a client that connects and then says nothing cannot
//! stall the loop or hold a task forever. Failed handshakes are logged and
//! dropped; the server sees established streams only.
//!
//! The streams are [`ServerTlsStream`]s: a
//! `tokio_rustls::server::TlsStream<TcpStream>` that ends once it is older
//! than the maximum connection age, and whose `Connected` info is the inner
//! stream's, `TlsConnectInfo<TcpConnectInfo>`: that is exactly what
//! `tonic::Request::peer_certs` reads, so handlers and interceptors see the
//! client's verified certificate (see [`crate::caller`]).
//!
//! Every listener refuses at the handshake a client that presents no
//! certificate, one that does not chain to the federation CA and one that a
//! CRL in force revokes. A certificate that chains but names no valid
//! identity of the federation is noted right after the handshake and refused
//! on every call by [`crate::authorize`], whose `UNAUTHENTICATED` answer says
//! what is wrong with it. Each failure is counted by reason in [`HandshakeFailures`]
//! (ready for a metrics endpoint) and logged with the peer address and the
//! reason, at most [`LOGS_PER_SECOND`] lines a second per listener, so a
//! flood of bad handshakes cannot flood the log.
//!
//! Each handshake uses the server configuration current at accept time
//! ([`ConfigSource`]), so a reloaded configuration (for example a new CRL)
//! applies to the next connection without a restart; the maximum age makes
//! sure open connections handshake again eventually.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Sleep;
use tonic::transport::server::Connected;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;

/// How many established connections may wait for the server to pick them up.
const BACKLOG: usize = 64;

/// Most handshake-failure log lines per second and listener; the rest are
/// counted and reported in the next line written.
pub const LOGS_PER_SECOND: u32 = 10;

/// Why a TLS handshake (or the identity check right after it) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The client presented no certificate.
    NoCertificate,
    /// The client's certificate does not chain to the federation CA.
    UnknownCa,
    /// A CRL in force revokes the client's certificate.
    Revoked,
    /// The certificate is expired or not yet valid.
    Expired,
    /// The certificate names no valid identity of this federation (no or
    /// several URI SANs, a malformed URI, another federation).
    BadIdentity,
    /// The client did not finish the handshake in time.
    Timeout,
    /// Anything else: a protocol error, an unsupported version, a reset.
    Other,
}

impl HandshakeFailure {
    /// Every reason, in a fixed order (for metrics).
    pub const ALL: [HandshakeFailure; 7] = [
        Self::NoCertificate,
        Self::UnknownCa,
        Self::Revoked,
        Self::Expired,
        Self::BadIdentity,
        Self::Timeout,
        Self::Other,
    ];

    /// A stable lowercase name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::UnknownCa => "unknown_ca",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::BadIdentity => "bad_identity",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }

    /// The reason of a failed rustls handshake.
    fn of(error: &io::Error) -> Self {
        use rustls::{CertificateError, Error};
        let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
            return Self::Other;
        };
        match tls {
            Error::NoCertificatesPresented => Self::NoCertificate,
            Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => Self::UnknownCa,
                CertificateError::Revoked => Self::Revoked,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => Self::Expired,
                _ => Self::Other,
            },
            _ => Self::Other,
        }
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Failed handshakes of one listener, counted by reason; cheap to clone
/// (clones share the counts).
#[derive(Debug, Clone, Default)]
pub struct HandshakeFailures {
    counts: Arc<[AtomicU64; 7]>,
    log: Arc<Mutex<LogBudget>>,
}

#[derive(Debug, Default)]
struct LogBudget {
    window: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl HandshakeFailures {
    /// How many handshakes failed for `reason` so far.
    pub fn count(&self, reason: HandshakeFailure) -> u64 {
        self.counts[Self::index(reason)].load(Ordering::Relaxed)
    }

    /// Every reason with its count.
    pub fn snapshot(&self) -> Vec<(HandshakeFailure, u64)> {
        HandshakeFailure::ALL
            .iter()
            .map(|r| (*r, self.count(*r)))
            .collect()
    }

    fn index(reason: HandshakeFailure) -> usize {
        HandshakeFailure::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(HandshakeFailure::ALL.len() - 1)
    }

    /// Counts a failure and logs it, within the log budget.
    fn record(&self, peer: SocketAddr, reason: HandshakeFailure, detail: &str) {
        self.counts[Self::index(reason)].fetch_add(1, Ordering::Relaxed);
        let suppressed = {
            let mut budget = self.log.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if budget
                .window
                .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1))
            {
                budget.window = Some(now);
                budget.written = 0;
            }
            if budget.written >= LOGS_PER_SECOND {
                budget.suppressed += 1;
                return;
            }
            budget.written += 1;
            std::mem::take(&mut budget.suppressed)
        };
        let detail = detail.escape_debug().to_string();
        if suppressed > 0 {
            tracing::warn!(%peer, reason = %reason, error = %detail, suppressed, "tls handshake refused (and {suppressed} more not logged)");
        } else {
            tracing::warn!(%peer, reason = %reason, error = %detail, "tls handshake refused");
        }
    }
}

/// How a listener accepts connections: see [`tls_incoming_with`].
#[derive(Debug, Clone)]
pub struct AcceptOptions {
    /// A handshake not finished within this is dropped.
    pub handshake_timeout: Duration,
    /// Established connections end once older than this (never when `None`).
    pub max_age: Option<Duration>,
    /// When set, a client certificate that names no valid identity of this
    /// federation is counted and logged as a failure (its calls are refused
    /// by the interceptor).
    pub federation: Option<String>,
    /// Where failures are counted.
    pub failures: HandshakeFailures,
}

impl AcceptOptions {
    /// Options with a handshake timeout, no maximum age, no identity check
    /// and fresh counters.
    pub fn new(handshake_timeout: Duration) -> Self {
        Self {
            handshake_timeout,
            max_age: None,
            federation: None,
            failures: HandshakeFailures::default(),
        }
    }
}

/// Where the accept loop gets the server configuration for each new
/// connection: a fixed one, or the latest value of a watch channel (send a
/// new configuration to apply it to the next handshakes).
#[derive(Debug, Clone)]
pub struct ConfigSource(watch::Receiver<Arc<ServerConfig>>);

impl ConfigSource {
    fn current(&self) -> Arc<ServerConfig> {
        // A receiver keeps the last value even after its sender is gone.
        Arc::clone(&self.0.borrow())
    }
}

impl From<Arc<ServerConfig>> for ConfigSource {
    fn from(config: Arc<ServerConfig>) -> Self {
        Self(watch::channel(config).1)
    }
}

impl From<watch::Receiver<Arc<ServerConfig>>> for ConfigSource {
    fn from(configs: watch::Receiver<Arc<ServerConfig>>) -> Self {
        Self(configs)
    }
}

/// An established TLS connection that ends once it is older than its
/// maximum age: from then on reads see end-of-file and writes fail, so the
/// server closes it and the client must connect (and handshake) again.
#[derive(Debug)]
pub struct ServerTlsStream {
    inner: TlsStream<TcpStream>,
    expires: Option<Pin<Box<Sleep>>>,
}

impl ServerTlsStream {
    /// Wraps `inner`, ending it `max_age` from now (never when `None`).
    pub fn new(inner: TlsStream<TcpStream>, max_age: Option<Duration>) -> Self {
        Self {
            inner,
            expires: max_age.map(|age| Box::pin(tokio::time::sleep(age))),
        }
    }

    /// The TCP stream and the rustls connection (peer certificates, ALPN).
    pub fn get_ref(&self) -> (&TcpStream, &rustls::ServerConnection) {
        self.inner.get_ref()
    }

    /// The TLS stream inside.
    pub fn into_inner(self) -> TlsStream<TcpStream> {
        self.inner
    }

    /// Whether the maximum age has passed; registers for a wake-up when it
    /// has not.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.expires
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }
}

fn too_old() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection reached its maximum age; reconnect",
    )
}

impl AsyncRead for ServerTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            // End of file: the connection is over.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(too_old()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(too_old()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for ServerTlsStream {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Turns a bound listener into a stream of established TLS connections, for
/// `tonic::transport::Server::serve_with_incoming_shutdown`.
///
/// Each TCP connection gets `TCP_NODELAY` and a handshake task limited to
/// `handshake_timeout`, using the configuration `config` holds at accept
/// time (an `Arc<ServerConfig>` for a fixed one, or a
/// `watch::Receiver<Arc<ServerConfig>>` for a reloadable one). Each
/// established connection ends once it is older than `max_age` (see
/// [`ServerTlsStream`]). When the returned stream is dropped (the server
/// shut down), the accept loop ends and the listener closes.
///
/// Must be called within a tokio runtime.
pub fn tls_incoming(
    listener: TcpListener,
    config: impl Into<ConfigSource>,
    handshake_timeout: Duration,
    max_age: Option<Duration>,
) -> impl Stream<Item = Result<ServerTlsStream, io::Error>> + Send + 'static {
    let mut options = AcceptOptions::new(handshake_timeout);
    options.max_age = max_age;
    tls_incoming_with(listener, config, options)
}

/// [`tls_incoming`] with every option: a federation whose identity each
/// client certificate must name, and the counters of failed handshakes.
pub fn tls_incoming_with(
    listener: TcpListener,
    config: impl Into<ConfigSource>,
    options: AcceptOptions,
) -> impl Stream<Item = Result<ServerTlsStream, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(accept_loop(listener, config.into(), options, tx));
    ReceiverStream::new(rx)
}

/// Checks the identity of an established connection's client certificate.
fn check_identity(
    stream: &TlsStream<TcpStream>,
    federation: &str,
) -> Result<(), (HandshakeFailure, String)> {
    let Some(leaf) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    else {
        return Err((
            HandshakeFailure::NoCertificate,
            "no client certificate".into(),
        ));
    };
    crate::identity_from_der(leaf, federation)
        .map(|_| ())
        .map_err(|e| (HandshakeFailure::BadIdentity, e.to_string()))
}

type Established = Result<ServerTlsStream, io::Error>;

async fn accept_loop(
    listener: TcpListener,
    config: ConfigSource,
    options: AcceptOptions,
    tx: mpsc::Sender<Established>,
) {
    let options = Arc::new(options);
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Typically out of file descriptors: pause instead of
                // spinning, and keep serving the connections we have.
                tracing::warn!(error = %e, "cannot accept tcp connection; retrying shortly");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set tcp nodelay");
        }
        let acceptor = TlsAcceptor::from(config.current());
        let tx = tx.clone();
        let options = Arc::clone(&options);
        tokio::spawn(async move {
            let failures = &options.failures;
            match tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    if let Some(federation) = &options.federation {
                        // Counted and logged here, refused per call by the
                        // interceptor, whose UNAUTHENTICATED answer tells the
                        // client what is wrong with its certificate (a TLS
                        // alert could not).
                        if let Err((reason, detail)) = check_identity(&stream, federation) {
                            failures.record(peer, reason, &detail);
                        }
                    }
                    // The receiver is gone only when the server shut down.
                    let _ = tx
                        .send(Ok(ServerTlsStream::new(stream, options.max_age)))
                        .await;
                }
                Ok(Err(e)) => failures.record(peer, HandshakeFailure::of(&e), &e.to_string()),
                Err(_) => failures.record(
                    peer,
                    HandshakeFailure::Timeout,
                    &format!(
                        "no handshake within {} ms",
                        options.handshake_timeout.as_millis()
                    ),
                ),
            }
        });
    }
    if let Some(addr) = local {
        tracing::debug!(%addr, "tls accept loop stopped");
    }
}

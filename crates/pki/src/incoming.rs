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
//! Each handshake uses the server configuration current at accept time
//! ([`ConfigSource`]), so a reloaded configuration (for example a new CRL)
//! applies to the next connection without a restart; the maximum age makes
//! sure open connections handshake again eventually.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

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
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(accept_loop(
        listener,
        config.into(),
        handshake_timeout,
        max_age,
        tx,
    ));
    ReceiverStream::new(rx)
}

type Established = Result<ServerTlsStream, io::Error>;

async fn accept_loop(
    listener: TcpListener,
    config: ConfigSource,
    handshake_timeout: Duration,
    max_age: Option<Duration>,
    tx: mpsc::Sender<Established>,
) {
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
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // The receiver is gone only when the server shut down.
                    let _ = tx.send(Ok(ServerTlsStream::new(stream, max_age))).await;
                }
                Ok(Err(e)) => tracing::warn!(%peer, error = %e, "tls handshake failed"),
                Err(_) => {
                    tracing::debug!(%peer, timeout = ?handshake_timeout, "tls handshake timed out")
                }
            }
        });
    }
    tracing::debug!(addr = ?local, "tls accept loop stopped");
}

//! Accepting TLS connections for a tonic server.
//!
//! The accept loop only accepts TCP; every TLS handshake runs in its own task
//! under a deadline, so a client that connects and then says nothing cannot
//! stall the loop or hold a task forever. Failed handshakes are logged and
//! dropped; the server sees established streams only.
//!
//! The streams are `tokio_rustls::server::TlsStream<TcpStream>`, for which
//! tonic (with its TLS feature) implements `Connected` with
//! `ConnectInfo = TlsConnectInfo<TcpConnectInfo>`: that is exactly what
//! `tonic::Request::peer_certs` reads, so handlers and interceptors see the
//! client's verified certificate (see [`crate::caller`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;

/// How many established connections may wait for the server to pick them up.
const BACKLOG: usize = 64;

/// Turns a bound listener into a stream of established TLS connections, for
/// `tonic::transport::Server::serve_with_incoming_shutdown`.
///
/// Each TCP connection gets `TCP_NODELAY` and a handshake task limited to
/// `handshake_timeout`. When the returned stream is dropped (the server shut
/// down), the accept loop ends and the listener closes.
///
/// Must be called within a tokio runtime.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(config),
        handshake_timeout,
        tx,
    ));
    ReceiverStream::new(rx)
}

type Established = Result<TlsStream<TcpStream>, std::io::Error>;

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
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
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // The receiver is gone only when the server shut down.
                    let _ = tx.send(Ok(stream)).await;
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

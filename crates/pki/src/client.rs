//! gRPC channels to Liaison servers over mutual TLS.
//!
//! tonic's own TLS would check the server's DNS name only; Liaison also
//! needs to know *who* the server is. So channels use a custom connector:
//! TCP, then a tokio-rustls handshake with [`client_config`], then a check of
//! the server certificate's identity (federation, and optionally role) on
//! every connection, including reconnections.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use liaison_types::Role;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::client_config;
use crate::error::chain;
use crate::{identity_from_der, PkiError, TlsMaterial};

/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an HTTP/2 ping checks a connection, idle or not.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the server at `endpoint` (`https://host:port` or
/// `host:port`) and returns a ready channel.
///
/// The server must present a certificate of `federation` issued by the CA
/// in `material`; when `expect_role` is given, its identity must have that
/// role (a node insists on talking to the hub), or the connection fails.
pub async fn connect(
    endpoint: &str,
    material: &TlsMaterial,
    expect_role: Option<Role>,
    federation: &str,
) -> Result<Channel, PkiError> {
    let (ep, connector) = prepare(endpoint, material, expect_role, federation)?;
    let connector = tower::service_fn(move |uri: Uri| {
        let connector = connector.clone();
        async move { connector.connect(uri).await }
    });
    ep.connect_with_connector(connector)
        .await
        .map_err(|e| connect_error(endpoint, &e))
}

/// Our connector's own error when tonic wraps one (so the caller sees
/// "server ... has role 'node', expected role 'hub'" rather than "transport
/// error"), else the whole chain of causes.
fn connect_error(endpoint: &str, err: &tonic::transport::Error) -> PkiError {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        match e.downcast_ref::<PkiError>() {
            Some(PkiError::WrongServerRole {
                endpoint,
                identity,
                found,
                expected,
            }) => {
                return PkiError::WrongServerRole {
                    endpoint: endpoint.clone(),
                    identity: identity.clone(),
                    found: *found,
                    expected: *expected,
                }
            }
            Some(PkiError::Connect { endpoint, reason }) => {
                return PkiError::Connect {
                    endpoint: endpoint.clone(),
                    reason: reason.clone(),
                }
            }
            _ => next = e.source(),
        }
    }
    PkiError::Connect {
        endpoint: endpoint.to_owned(),
        reason: chain(err),
    }
}

/// Like [`connect`], but connects on first use and reconnects on demand,
/// for long-lived clients. Configuration errors are reported now; connection
/// errors surface on the calls made through the channel.
///
/// Must be called within a tokio runtime.
pub fn lazy_channel(
    endpoint: &str,
    material: &TlsMaterial,
    expect_role: Option<Role>,
    federation: &str,
) -> Result<Channel, PkiError> {
    let (ep, connector) = prepare(endpoint, material, expect_role, federation)?;
    let connector = tower::service_fn(move |uri: Uri| {
        let connector = connector.clone();
        async move { connector.connect(uri).await }
    });
    Ok(ep.connect_with_connector_lazy(connector))
}

/// Like [`lazy_channel`], but each new connection takes the latest client
/// configuration of `configs` (certificates reloaded without a restart);
/// connections already open keep theirs.
pub fn lazy_channel_reloading(
    endpoint: &str,
    material: &TlsMaterial,
    configs: tokio::sync::watch::Receiver<Arc<rustls::ClientConfig>>,
    expect_role: Option<Role>,
    federation: &str,
) -> Result<Channel, PkiError> {
    let (ep, mut connector) = prepare(endpoint, material, expect_role, federation)?;
    connector.tls = configs;
    let connector = tower::service_fn(move |uri: Uri| {
        let connector = connector.clone();
        async move { connector.connect(uri).await }
    });
    Ok(ep.connect_with_connector_lazy(connector))
}

fn prepare(
    endpoint: &str,
    material: &TlsMaterial,
    expect_role: Option<Role>,
    federation: &str,
) -> Result<(Endpoint, Connector), PkiError> {
    let bad = |reason: &str| PkiError::BadEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    if endpoint.starts_with("http://") {
        return Err(bad("liaison speaks tls only, so the scheme must be https"));
    }
    let authority = endpoint
        .strip_prefix("https://")
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    // tonic refuses `https` URIs when it does not do the TLS itself, so the
    // endpoint says `http` while the connector below does the TLS.
    let uri: Uri = format!("http://{authority}")
        .parse()
        .map_err(|_| bad("not a host and port"))?;
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() || uri.path() != "/" {
        return Err(bad("needs a host and a port and nothing else"));
    }
    let ep = Endpoint::from(uri)
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let connector = Connector {
        tls: tokio::sync::watch::channel(client_config(material)?).1,
        endpoint: endpoint.into(),
        federation: federation.into(),
        expect_role,
    };
    Ok((ep, connector))
}

/// Dials one connection and checks who answered.
#[derive(Clone)]
struct Connector {
    /// The client configuration in force: the latest value is used for
    /// each new connection.
    tls: tokio::sync::watch::Receiver<Arc<rustls::ClientConfig>>,
    endpoint: Arc<str>,
    federation: Arc<str>,
    expect_role: Option<Role>,
}

impl Connector {
    async fn connect(&self, uri: Uri) -> Result<TokioIo<TlsStream<TcpStream>>, PkiError> {
        let failed = |reason: String| PkiError::Connect {
            endpoint: self.endpoint.to_string(),
            reason,
        };
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(443);
        let tcp = TcpStream::connect((host, port)).await.map_err(|e| {
            failed(format!(
                "tcp: {e}; check that the server is running at that address"
            ))
        })?;
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(endpoint = %self.endpoint, error = %e, "cannot set tcp nodelay");
        }
        // The server's certificate must name the host dialled (a DNS name,
        // or an IP address SAN); who the server is comes from its URI SAN,
        // checked below.
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| failed(format!("'{host}' is not a valid server name: {e}")))?;
        let config = Arc::clone(&self.tls.borrow());
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                failed(format!(
                    "tls handshake: {e}; check that client and server hold certificates issued by the same federation CA"
                ))
            })?;

        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .ok_or_else(|| failed("server presented no certificate".into()))?;
        let server = identity_from_der(leaf, &self.federation)
            .map_err(|e| failed(format!("server certificate refused: {e}")))?;
        if let Some(expected) = self.expect_role {
            if server.role != expected {
                return Err(PkiError::WrongServerRole {
                    endpoint: self.endpoint.to_string(),
                    identity: server.uri(),
                    found: server.role,
                    expected,
                });
            }
        }
        tracing::debug!(endpoint = %self.endpoint, server = %server, "connected");
        Ok(TokioIo::new(tls))
    }
}

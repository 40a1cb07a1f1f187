//! The one error type of this crate.

use std::path::PathBuf;

use liaison_types::{IdentityError, Role};

/// Everything that can go wrong while making certificates, building TLS
/// configurations, connecting, or reading a peer's identity.
///
/// Messages are lowercase, name the value that was wrong and say what would
/// be right.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A file the caller pointed us at does not exist.
    #[error("{} does not exist; generate the dev pki (or point the configuration at the right file)", path.display())]
    Missing {
        /// The missing file.
        path: PathBuf,
    },

    /// Reading or writing a file or directory failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What we were doing, for example `read` or `write`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A process's own certificate is of another role or body than its
    /// configuration says.
    #[error("the certificate is {found}, not {wanted}; point [tls] cert at the right one")]
    WrongCertificate {
        /// The identity the certificate holds.
        found: String,
        /// What it should be, for example `a node certificate of europol`.
        wanted: String,
    },

    /// A dev PKI rotation step that does not fit the PKI's state.
    #[error("{0}")]
    Rotation(String),

    /// A PEM source holds no certificate.
    #[error("{origin} contains no certificate; expected a '-----BEGIN CERTIFICATE-----' block")]
    NoCertificate {
        /// Where the PEM came from (a file path or a field name).
        origin: String,
    },

    /// A PEM source holds no private key.
    #[error("{origin} contains no private key; expected a '-----BEGIN PRIVATE KEY-----' block")]
    NoPrivateKey {
        /// Where the PEM came from (a file path or a field name).
        origin: String,
    },

    /// A PEM source is not valid PEM, or the key inside it is unusable.
    #[error("{origin} is not usable: {reason}")]
    BadPem {
        /// Where the PEM came from (a file path or a field name).
        origin: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The CA's private key does not belong to the CA certificate.
    #[error("{} does not belong to {}; regenerate the dev pki so key and certificate match", key.display(), cert.display())]
    KeyMismatch {
        /// The CA certificate file.
        cert: PathBuf,
        /// The CA key file.
        key: PathBuf,
    },

    /// The dev PKI specification names something that cannot be an identity.
    #[error("invalid dev pki spec: {0}")]
    Spec(String),

    /// rcgen refused to generate a key or certificate.
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),

    /// A DER certificate could not be parsed as X.509.
    #[error("certificate is not valid x.509: {0}")]
    BadCertificate(String),

    /// A certificate carries no URI SAN, so it names no liaison identity.
    #[error("certificate has no URI SAN; a liaison certificate carries exactly one spiffe://<federation>/org/<body>/<role>/<name> URI")]
    NoUriSan,

    /// A certificate carries several URI SANs, so its identity is ambiguous.
    #[error("certificate has {0} URI SANs; a liaison certificate carries exactly one spiffe://<federation>/org/<body>/<role>/<name> URI")]
    SeveralUriSans(usize),

    /// A certificate's URI SAN is not a liaison identity.
    #[error("certificate URI SAN is not a liaison identity: {0}")]
    BadIdentity(#[from] IdentityError),

    /// A certificate was issued for another federation.
    #[error("certificate identity {identity} belongs to federation '{found}', not '{expected}'; use a certificate issued by the '{expected}' federation CA")]
    ForeignFederation {
        /// The full identity found.
        identity: String,
        /// The federation in the certificate.
        found: String,
        /// The federation we serve.
        expected: String,
    },

    /// The server we connected to is not the kind of party we asked for.
    #[error("server at {endpoint} is {identity} with role '{found}', expected role '{expected}'; check that the endpoint points at the {expected}")]
    WrongServerRole {
        /// The endpoint we dialled.
        endpoint: String,
        /// The server's identity.
        identity: String,
        /// The server's role.
        found: Role,
        /// The role we required.
        expected: Role,
    },

    /// rustls rejected the certificates or keys while building a configuration.
    #[error("tls configuration rejected: {0}")]
    Tls(#[from] rustls::Error),

    /// A certificate revocation list file is unusable.
    #[error("{origin} is not a usable certificate revocation list: {reason}")]
    BadCrl {
        /// Where the CRL came from (a file path).
        origin: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The CA certificate cannot serve as a trust anchor.
    #[error("ca certificate cannot be used to verify peers: {0}")]
    Verifier(String),

    /// The endpoint string could not be understood.
    #[error(
        "invalid endpoint '{endpoint}': {reason}; expected https://<host>:<port> or <host>:<port>"
    )]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Connecting (TCP, TLS or HTTP/2) to a server failed.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint we dialled.
        endpoint: String,
        /// The chain of causes, outermost first.
        reason: String,
    },
}

impl PkiError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Renders an error and all its sources as `outer: inner: innermost`,
/// skipping a source whose text the outer message already contains.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}

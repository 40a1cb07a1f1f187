//! Certificate files, PEM material in memory, and the rustls configurations
//! every Liaison server and client uses: TLS 1.3 only, ALPN `h2`, peers
//! verified against the federation CA.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::dev::CA_CERT_FILE;
use crate::PkiError;

/// The one application protocol spoken: gRPC over HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// Where a party's certificate, key and trusted CA live on disk (the
/// `[tls]` table of the hub and node configuration files).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The federation CA certificate, PEM.
    pub ca: PathBuf,
    /// This party's certificate (chain), PEM.
    pub cert: PathBuf,
    /// This party's private key, PEM.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Resolves relative paths against `base` (the configuration file's
    /// directory).
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// The files of a dev PKI directory: `stem` `europol/node` gives
    /// `dir/europol/node.pem`, `dir/europol/node.key.pem` and `dir/ca.pem`.
    pub fn in_dev_dir(dir: &Path, relative_stem: &str) -> Self {
        Self {
            ca: dir.join(CA_CERT_FILE),
            cert: dir.join(format!("{relative_stem}.pem")),
            key: dir.join(format!("{relative_stem}.key.pem")),
        }
    }
}

/// A party's certificate, key and trusted CA, as PEM text in memory.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    /// The federation CA certificate(s), PEM.
    pub ca_pem: String,
    /// This party's certificate (chain), PEM.
    pub cert_pem: String,
    /// This party's private key, PEM.
    pub key_pem: String,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Reads and checks the three files: each must exist, be readable, and
    /// hold at least one certificate (CA, cert) or a private key (key).
    pub fn load(files: &TlsFiles) -> Result<Self, PkiError> {
        let material = Self {
            ca_pem: read_file(&files.ca)?,
            cert_pem: read_file(&files.cert)?,
            key_pem: read_file(&files.key)?,
        };
        parse_certs(&material.ca_pem, &files.ca.display().to_string())?;
        parse_certs(&material.cert_pem, &files.cert.display().to_string())?;
        parse_key(&material.key_pem, &files.key.display().to_string())?;
        Ok(material)
    }

    /// The identity of this party's own certificate (the first in
    /// `cert_pem`). The federation is whatever the certificate says.
    pub fn identity(&self) -> Result<liaison_types::Identity, PkiError> {
        let certs = parse_certs(&self.cert_pem, "cert_pem")?;
        let leaf = certs
            .first()
            .ok_or_else(|| PkiError::BadCertificate("cert_pem holds no certificate".into()))?;
        crate::identity::any_identity_from_der(leaf.as_ref())
    }

    /// The CA certificates as a root store.
    fn roots(&self) -> Result<Arc<RootCertStore>, PkiError> {
        let mut roots = RootCertStore::empty();
        for cert in parse_certs(&self.ca_pem, "ca_pem")? {
            roots.add(cert).map_err(|e| {
                PkiError::Verifier(format!("ca_pem holds an unusable trust anchor: {e}"))
            })?;
        }
        Ok(Arc::new(roots))
    }

    fn chain_and_key(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        Ok((
            parse_certs(&self.cert_pem, "cert_pem")?,
            parse_key(&self.key_pem, "key_pem")?,
        ))
    }
}

/// The rustls server configuration of a Liaison server.
///
/// TLS 1.3 only, ALPN `h2`. A client certificate is optional at the TLS
/// level on purpose: a client without one completes the handshake and the
/// gRPC layer answers `UNAUTHENTICATED` with a message that says what to do
/// (see [`crate::caller`]). A client certificate that does not chain to the
/// CA fails the handshake.
pub fn server_config(m: &TlsMaterial) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(m.roots()?, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Verifier(e.to_string()))?;
    let (chain, key) = m.chain_and_key()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The rustls client configuration of a Liaison client.
///
/// TLS 1.3 only, ALPN `h2`, authenticates with the material's certificate,
/// and verifies the server against the CA. Connections made with it use
/// the server name [`SERVER_NAME`], which every dev PKI server certificate
/// carries; who the server really is comes from its URI SAN (see
/// [`crate::connect`]).
pub fn client_config(m: &TlsMaterial) -> Result<Arc<ClientConfig>, PkiError> {
    let (chain, key) = m.chain_and_key()?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(m.roots()?)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The TLS server name clients ask for and check against the server's DNS
/// SANs.
pub const SERVER_NAME: &str = "localhost";

/// The crypto provider of every configuration: ring, pinned explicitly so
/// that no process-wide default needs installing.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a whole UTF-8 file, naming it in every error.
pub(crate) fn read_file(path: &Path) -> Result<String, PkiError> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|_| PkiError::BadPem {
            origin: path.display().to_string(),
            reason: "not utf-8 text; expected a pem file".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PkiError::Missing {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(PkiError::io("read", path, e)),
    }
}

/// All certificates in a PEM text; at least one.
pub(crate) fn parse_certs(
    pem_text: &str,
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem_text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(origin, e))?;
    if certs.is_empty() {
        return Err(PkiError::NoCertificate {
            origin: origin.into(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM text.
pub(crate) fn parse_key(pem_text: &str, origin: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem_text.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => PkiError::NoPrivateKey {
            origin: origin.into(),
        },
        other => bad_pem(origin, other),
    })
}

fn bad_pem(origin: &str, e: pem::Error) -> PkiError {
    PkiError::BadPem {
        origin: origin.into(),
        reason: e.to_string(),
    }
}

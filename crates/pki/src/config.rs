//! Certificate files, PEM material in memory, and the rustls configurations
//! every Liaison server and client uses: TLS 1.3 only, ALPN `h2`, peers
//! verified against the federation CA.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use x509_parser::extensions::ParsedExtension;

use crate::dev::CA_CERT_FILE;
use crate::usage::{ClientUsage, ServerUsage};
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
    /// Optional certificate revocation lists of the federation CA, PEM (one
    /// or more `X509 CRL` blocks). A client certificate listed in one fails
    /// the handshake; see [`Crls`].
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

impl TlsFiles {
    /// Resolves relative paths against `base` (the configuration file's
    /// directory).
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key]
            .into_iter()
            .chain(self.crl.as_mut())
        {
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
            crl: None,
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

    /// This party's identity, if its certificate is one of `role` (and of
    /// `body`, when given); otherwise [`PkiError::WrongCertificate`] naming
    /// what it is and what it should be.
    pub fn identity_as(
        &self,
        role: liaison_types::Role,
        body: Option<&str>,
    ) -> Result<liaison_types::Identity, PkiError> {
        let id = self.identity()?;
        if id.role != role || body.is_some_and(|b| b != id.body.as_str()) {
            return Err(PkiError::WrongCertificate {
                found: id.to_string(),
                wanted: match body {
                    Some(b) => format!("a {role} certificate of {b}"),
                    None => format!("a {role} certificate"),
                },
            });
        }
        Ok(id)
    }

    /// When this party's certificate and each CA certificate expire (Unix
    /// seconds, the `notAfter` of each), for expiry metrics and warnings:
    /// `("cert", t)` for the leaf, then `("ca", t)` for every CA certificate.
    pub fn expiries(&self) -> Result<Vec<(&'static str, i64)>, PkiError> {
        let mut out = Vec::new();
        let leaf = parse_certs(&self.cert_pem, "cert_pem")?;
        if let Some(first) = leaf.first() {
            out.push(("cert", not_after(first.as_ref())?));
        }
        for ca in parse_certs(&self.ca_pem, "ca_pem")? {
            out.push(("ca", not_after(ca.as_ref())?));
        }
        Ok(out)
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
/// TLS 1.3 only, ALPN `h2`. A client certificate is required: a client
/// without one, with one that does not chain to the CA, or with one whose
/// extended key usage is missing or lacks clientAuth, fails the handshake
/// (a server never runs a request of an unauthenticated peer).
pub fn server_config(m: &TlsMaterial) -> Result<Arc<ServerConfig>, PkiError> {
    server_config_with_crls(m, None)
}

/// [`server_config`], and a client certificate that `crls` lists as revoked
/// fails the handshake too.
///
/// With CRLs, every client certificate's revocation status must be known:
/// a certificate issued by a CA in `ca_pem` for which `crls` holds no list
/// fails the handshake (so with several CAs, give a CRL for each). Only the
/// end-entity certificate is checked: Liaison chains are leaf → federation
/// CA, and the CA is the trust anchor itself.
pub fn server_config_with_crls(
    m: &TlsMaterial,
    crls: Option<&Crls>,
) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = provider();
    let mut builder = WebPkiClientVerifier::builder_with_provider(m.roots()?, provider.clone());
    if let Some(crls) = crls {
        builder = builder
            .with_crls(crls.ders.iter().cloned())
            .only_check_end_entity_revocation();
    }
    let verifier = builder.build().map_err(|e| match crls {
        Some(crls) => PkiError::BadCrl {
            origin: crls.origin.clone(),
            reason: e.to_string(),
        },
        None => PkiError::Verifier(e.to_string()),
    })?;
    let (chain, key) = m.chain_and_key()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(ClientUsage(verifier)))
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The rustls client configuration of a Liaison client.
///
/// TLS 1.3 only, ALPN `h2`, authenticates with the material's certificate,
/// and verifies the server against the CA and the host dialled (its DNS
/// name or IP address SANs; dev PKI servers carry `localhost` and
/// `127.0.0.1`) and an extended key usage naming serverAuth (a missing
/// one is refused too); who the server really is comes from its URI SAN
/// (see [`crate::connect`]).
pub fn client_config(m: &TlsMaterial) -> Result<Arc<ClientConfig>, PkiError> {
    let (chain, key) = m.chain_and_key()?;
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(m.roots()?, provider.clone())
        .build()
        .map_err(|e| PkiError::Verifier(e.to_string()))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerUsage(verifier)))
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Certificate revocation lists of the federation CA, loaded from the
/// `[tls] crl` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crls {
    origin: String,
    pem: String,
    ders: Vec<CertificateRevocationListDer<'static>>,
    revoked: usize,
}

impl Crls {
    /// Reads `path` and checks it: PEM with at least one `X509 CRL` block,
    /// each a valid CRL whose issuer is one of the CAs in `ca_pem`.
    pub fn load(path: &Path, ca_pem: &str) -> Result<Self, PkiError> {
        let text = read_file(path)?;
        Self::from_pem(&path.display().to_string(), &text, ca_pem)
    }

    /// Parses and checks CRL PEM text; `origin` names it in errors.
    pub fn from_pem(origin: &str, text: &str, ca_pem: &str) -> Result<Self, PkiError> {
        let bad = |reason: String| PkiError::BadCrl {
            origin: origin.to_owned(),
            reason,
        };
        let ders = CertificateRevocationListDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("{e}; expected '-----BEGIN X509 CRL-----' blocks")))?;
        if ders.is_empty() {
            return Err(bad(
                "contains no crl; expected a '-----BEGIN X509 CRL-----' block (make one with `liaison pki revoke`)".into(),
            ));
        }
        let cas = parse_certs(ca_pem, "ca_pem")?;
        // Each CA's name and key identifier: a CRL names its issuer and
        // (as rcgen writes it) the issuer's key, which tells apart two CAs
        // with the same name. The signature is checked at each handshake.
        let mut ca_keys = Vec::with_capacity(cas.len());
        for ca in &cas {
            let (_, parsed) = x509_parser::parse_x509_certificate(ca.as_ref())
                .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
            let ski = parsed
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                    _ => None,
                });
            ca_keys.push((parsed.subject().as_raw().to_vec(), ski));
        }
        let mut revoked = 0;
        for (i, der) in ders.iter().enumerate() {
            let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
                .map_err(|e| bad(format!("crl {} is not a valid x.509 crl: {e}", i + 1)))?;
            let aki = crl
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::AuthorityKeyIdentifier(a) => {
                        a.key_identifier.as_ref().map(|k| k.0.to_vec())
                    }
                    _ => None,
                });
            let by_a_ca = ca_keys.iter().any(|(subject, ski)| {
                subject.as_slice() == crl.issuer().as_raw()
                    && match (ski, &aki) {
                        (Some(ski), Some(aki)) => ski == aki,
                        _ => true,
                    }
            });
            if !by_a_ca {
                return Err(bad(format!(
                    "crl {} is issued by '{}', which is not the federation ca; make the crl with the federation ca (`liaison pki revoke`)",
                    i + 1,
                    crl.issuer()
                )));
            }
            revoked += crl.iter_revoked_certificates().count();
        }
        Ok(Self {
            origin: origin.to_owned(),
            pem: text.to_owned(),
            ders,
            revoked,
        })
    }

    /// How many revoked certificates the lists name, together.
    pub fn revoked(&self) -> usize {
        self.revoked
    }

    /// The PEM text the lists were read from.
    pub fn pem(&self) -> &str {
        &self.pem
    }
}

/// The DNS name every dev PKI server certificate carries (with the IP
/// address 127.0.0.1), for clients that dial by name.
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

/// A DER certificate's `notAfter`, in Unix seconds.
fn not_after(der: &[u8]) -> Result<i64, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCertificate(format!("cannot parse a certificate: {e}")))?;
    Ok(cert.validity().not_after.timestamp())
}

//! A certificate authority made with rcgen: the federation CA of the dev PKI,
//! and throwaway CAs that tests use to mint odd certificates.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use liaison_types::{Identity, Role};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::read_file;
use crate::PkiError;

/// How long a CA certificate is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a leaf certificate is valid (dev PKI: a year, then regenerate).
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start an hour in the past so that small clock skew between
/// the machine that made them and the one checking them does no harm.
const BACKDATE: Duration = Duration::from_secs(3600);
/// A CRL's issue (and revocation) time is a minute in the past.
const CRL_BACKDATE: Duration = Duration::from_secs(60);

/// A freshly issued certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM (`CERTIFICATE`).
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8 `PRIVATE KEY`).
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A certificate authority: a CA certificate plus the key that signs with it.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Makes a new self-signed CA (ECDSA P-256, valid ten years) whose
    /// subject common name is `common_name`.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads the CA from `dir/ca.pem` and `dir/ca.key.pem`, checking that
    /// the key belongs to the certificate.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key.pem");
        let cert_pem = read_file(&cert_path)?;
        let key_pem = read_file(&key_path)?;
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| match e {
            PkiError::NoCertificate { .. } => PkiError::NoCertificate {
                origin: cert_path.display().to_string(),
            },
            PkiError::BadPem { origin, reason } if origin == "ca certificate" => PkiError::BadPem {
                origin: cert_path.display().to_string(),
                reason,
            },
            PkiError::BadPem { reason, .. } => PkiError::BadPem {
                origin: key_path.display().to_string(),
                reason,
            },
            PkiError::KeyMismatch { .. } => PkiError::KeyMismatch {
                cert: cert_path.clone(),
                key: key_path.clone(),
            },
            other => other,
        })
    }

    /// Builds the CA from its certificate and key, both PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => PkiError::NoCertificate {
                origin: "ca certificate".into(),
            },
            other => PkiError::BadPem {
                origin: "ca certificate".into(),
                reason: other.to_string(),
            },
        })?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadPem {
            origin: "ca key".into(),
            reason: e.to_string(),
        })?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::KeyMismatch {
                cert: "ca certificate".into(),
                key: "ca key".into(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| PkiError::BadPem {
            origin: "ca certificate".into(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA private key, PEM. Handle with care.
    pub fn key_pem(&self) -> String {
        self.key_pem.clone()
    }

    /// Issues a leaf certificate (ECDSA P-256, valid one year, usable for
    /// both client and server authentication) with exactly the given
    /// subject alternative names.
    ///
    /// Liaison certificates carry exactly one URI SAN; this function takes
    /// any number so that tests can mint certificates that must be refused.
    pub fn issue(
        &self,
        uris: &[String],
        dns: &[String],
        ips: &[IpAddr],
    ) -> Result<IssuedCert, PkiError> {
        let eku = [
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue_with(uris, dns, ips, &eku)
    }

    /// Issues the certificate for `identity`, as the dev PKI does: hubs and
    /// nodes are servers too, so they also get the DNS name `localhost` and
    /// the address `127.0.0.1`; officers, auditors and admins are clients
    /// only.
    pub fn issue_identity(&self, identity: &Identity) -> Result<IssuedCert, PkiError> {
        let uris = [identity.uri()];
        match identity.role {
            Role::Hub | Role::Node => self.issue_with(
                &uris,
                &["localhost".to_owned()],
                &[IpAddr::from([127, 0, 0, 1])],
                &[
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
            ),
            Role::Officer | Role::Auditor | Role::Admin | Role::Oversight => {
                self.issue_with(&uris, &[], &[], &[ExtendedKeyUsagePurpose::ClientAuth])
            }
        }
    }

    /// A certificate revocation list, signed by this CA, naming every
    /// certificate in `revoked_cert_pems` and every serial number in
    /// `revoked_serials` (big-endian bytes, as [`serials_of_crl`] returns
    /// them); PEM (`X509 CRL`). Valid for a year; the list number is the
    /// current Unix time, so a later list has a higher number.
    ///
    /// A CRL replaces the previous one: to keep earlier revocations, pass
    /// their serials (see [`serials_of_crl`]).
    pub fn revoke(
        &self,
        revoked_cert_pems: &[String],
        revoked_serials: &[Vec<u8>],
    ) -> Result<String, PkiError> {
        let mut serials: Vec<Vec<u8>> = revoked_serials.to_vec();
        for (i, pem) in revoked_cert_pems.iter().enumerate() {
            serials.push(cert_serial(pem, &format!("certificate {}", i + 1))?);
        }
        serials.sort();
        serials.dedup();
        let since_epoch = since_epoch();
        // A minute back, for small clock skew, like certificates.
        let this_update = rcgen::date_time_ymd(1970, 1, 1) + since_epoch - CRL_BACKDATE;
        let revoked_certs = serials
            .into_iter()
            .map(|serial| RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time: this_update,
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update,
            next_update: this_update + LEAF_VALIDITY,
            crl_number: SerialNumber::from(since_epoch.as_secs()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    fn issue_with(
        &self,
        uris: &[String],
        dns: &[String],
        ips: &[IpAddr],
        eku: &[ExtendedKeyUsagePurpose],
    ) -> Result<IssuedCert, PkiError> {
        let mut sans = Vec::with_capacity(uris.len() + dns.len() + ips.len());
        for uri in uris {
            sans.push(SanType::URI(uri.as_str().try_into()?));
        }
        for name in dns {
            sans.push(SanType::DnsName(name.as_str().try_into()?));
        }
        sans.extend(ips.iter().copied().map(SanType::IpAddress));

        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name = DistinguishedName::new();
        let common_name = uris
            .first()
            .or(dns.first())
            .map_or("liaison leaf", String::as_str);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = eku.to_vec();
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, LEAF_VALIDITY);

        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The serial numbers (big-endian bytes) of every certificate the CRLs in
/// `crl_pem` revoke; `origin` names the text in errors.
pub fn serials_of_crl(crl_pem: &str, origin: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    use rustls_pki_types::CertificateRevocationListDer;
    let bad = |reason: String| PkiError::BadCrl {
        origin: origin.to_owned(),
        reason,
    };
    let mut serials = Vec::new();
    for der in CertificateRevocationListDer::pem_slice_iter(crl_pem.as_bytes()) {
        let der = der.map_err(|e| bad(e.to_string()))?;
        let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
            .map_err(|e| bad(format!("not a valid x.509 crl: {e}")))?;
        serials.extend(
            crl.iter_revoked_certificates()
                .map(|r| r.serial().to_bytes_be()),
        );
    }
    Ok(serials)
}

/// The serial number (big-endian bytes) of the certificate in `pem`.
fn cert_serial(pem: &str, origin: &str) -> Result<Vec<u8>, PkiError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::BadPem {
        origin: origin.to_owned(),
        reason: e.to_string(),
    })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError::BadCertificate(format!("{origin}: {e}")))?;
    Ok(parsed.serial.to_bytes_be())
}

/// Time since the Unix epoch. rcgen speaks `time::OffsetDateTime`; "now"
/// is `rcgen::date_time_ymd(1970, 1, 1) + since_epoch()`, so that this
/// crate needs no clock library of its own.
fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Valid from an hour ago for `lifetime`.
fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

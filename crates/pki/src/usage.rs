//! Certificate verifiers that demand an explicit extended key usage.
//!
//! rustls (through webpki) reads a certificate with no extended key usage
//! extension at all as good for any purpose, as RFC 5280 §4.2.1.12 allows.
//! A Liaison certificate always names its purpose (`liaison pki` issues
//! clientAuth, serverAuth or both), so one without the extension was not
//! made for this federation's TLS: these wrappers refuse it, after the
//! webpki verifier they wrap has checked everything else (chain, validity,
//! revocation, and a purpose that is present but wrong).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// The purpose a certificate must name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// TLS client authentication (id-kp-clientAuth).
    Client,
    /// TLS server authentication (id-kp-serverAuth).
    Server,
}

impl Purpose {
    fn name(self) -> &'static str {
        match self {
            Self::Client => "clientAuth",
            Self::Server => "serverAuth",
        }
    }
}

/// Why [`check`] refused a certificate. rustls shows an `Other`
/// certificate error by its `Debug` form, so that is the message too.
struct NoPurpose(Purpose);

impl fmt::Debug for NoPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for NoPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate has no extended key usage extension; a liaison certificate must name {} \
             (issue it with `liaison pki`)",
            self.0.name()
        )
    }
}

impl std::error::Error for NoPurpose {}

/// Refuses `end_entity` unless it carries an extended key usage extension.
///
/// Whether the extension names `purpose` is webpki's check, made before
/// this one; a certificate that cannot be parsed is a bad encoding.
pub(crate) fn check(end_entity: &[u8], purpose: Purpose) -> Result<(), rustls::Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    match cert.extended_key_usage() {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(NoPurpose(purpose))),
        ))),
        // A duplicated or malformed extension.
        Err(_) => Err(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        )),
    }
}

/// A client verifier that also refuses a certificate without an extended
/// key usage extension.
#[derive(Debug)]
pub(crate) struct ClientUsage(pub(crate) Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for ClientUsage {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        check(end_entity, Purpose::Client)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A server verifier that also refuses a certificate without an extended
/// key usage extension.
#[derive(Debug)]
pub(crate) struct ServerUsage(pub(crate) Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for ServerUsage {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.0.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        check(end_entity, Purpose::Server)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.0.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.0.root_hint_subjects()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};

    fn der(eku: Vec<ExtendedKeyUsagePurpose>) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.extended_key_usages = eku;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificate_without_the_extension_is_refused_naming_the_purpose() {
        let err = check(&der(vec![]), Purpose::Client).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("no extended key usage"), "{text}");
        assert!(text.contains("clientAuth"), "{text}");
        let err = check(&der(vec![]), Purpose::Server).unwrap_err();
        assert!(err.to_string().contains("serverAuth"), "{err}");
    }

    #[test]
    fn a_certificate_with_the_extension_passes_whatever_it_names() {
        // Whether the purpose is the right one is webpki's check.
        for eku in [
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            vec![ExtendedKeyUsagePurpose::ServerAuth],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        ] {
            check(&der(eku.clone()), Purpose::Client).unwrap();
            check(&der(eku), Purpose::Server).unwrap();
        }
    }

    #[test]
    fn bytes_that_are_no_certificate_are_a_bad_encoding() {
        assert_eq!(
            check(b"not a certificate", Purpose::Client).unwrap_err(),
            rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
        );
    }
}

//! Reading a caller's identity from its certificate.

use std::net::IpAddr;

use liaison_pki::{identity_from_der, PkiError};
use liaison_types::Role;

use crate::support::{ca, der, identity, TestResult, FED};

#[test]
fn reads_the_single_uri_san() -> TestResult {
    let ca = ca();
    let id = identity("europol", Role::Officer, "alice");
    let cert = ca.issue(
        &[id.uri()],
        &["localhost".into()],
        &[IpAddr::from([127, 0, 0, 1])],
    )?;
    assert_eq!(identity_from_der(&der(&cert.cert_pem), FED)?, id);
    Ok(())
}

#[test]
fn refuses_a_certificate_without_uri_san() -> TestResult {
    let cert = ca().issue(&[], &["localhost".into()], &[])?;
    let err = identity_from_der(&der(&cert.cert_pem), FED).expect_err("no uri");
    assert!(matches!(err, PkiError::NoUriSan), "{err}");
    assert!(
        err.to_string().starts_with("certificate has no URI SAN; "),
        "{err}"
    );
    Ok(())
}

#[test]
fn refuses_a_certificate_with_two_uri_sans() -> TestResult {
    let a = identity("europol", Role::Node, "node").uri();
    let b = identity("fr-police", Role::Node, "node").uri();
    let cert = ca().issue(&[a, b], &[], &[])?;
    let err = identity_from_der(&der(&cert.cert_pem), FED).expect_err("two uris");
    assert!(matches!(err, PkiError::SeveralUriSans(2)), "{err}");
    assert!(
        err.to_string().starts_with("certificate has 2 URI SANs; "),
        "{err}"
    );
    Ok(())
}

#[test]
fn refuses_a_foreign_federation() -> TestResult {
    let cert = ca().issue(
        &["spiffe://other.example/org/europol/node/node".into()],
        &[],
        &[],
    )?;
    let err = identity_from_der(&der(&cert.cert_pem), FED).expect_err("foreign");
    assert!(matches!(err, PkiError::ForeignFederation { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("'other.example', not 'liaison.dev'"),
        "{text}"
    );
    Ok(())
}

#[test]
fn refuses_a_uri_that_is_not_an_identity() -> TestResult {
    let cert = ca().issue(
        &["spiffe://liaison.dev/org/europol/king/arthur".into()],
        &[],
        &[],
    )?;
    let err = identity_from_der(&der(&cert.cert_pem), FED).expect_err("bad role");
    assert!(matches!(err, PkiError::BadIdentity(_)), "{err}");
    assert!(err.to_string().contains("unknown role 'king'"), "{err}");
    Ok(())
}

#[test]
fn refuses_bytes_that_are_not_a_certificate() {
    let err = identity_from_der(b"not a certificate", FED).expect_err("garbage");
    assert!(matches!(err, PkiError::BadCertificate(_)), "{err}");
}

//! The dev PKI on disk.

use std::path::Path;

use liaison_pki::{
    ensure_dev_pki, generate_dev_pki, identity_from_der, CertificateAuthority, PkiError, TlsFiles,
    TlsMaterial,
};
use liaison_types::Role;
use x509_parser::extensions::GeneralName;

use crate::support::{der, identity, spec, TestResult, FED};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every SAN of a PEM certificate, as (uris, dns names, ip count).
fn sans(pem: &str) -> (Vec<String>, Vec<String>, usize) {
    let der = der(pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
    let mut out = (Vec::new(), Vec::new(), 0);
    if let Some(ext) = cert.subject_alternative_name().expect("san extension") {
        for name in &ext.value.general_names {
            match name {
                GeneralName::URI(u) => out.0.push((*u).to_owned()),
                GeneralName::DNSName(d) => out.1.push((*d).to_owned()),
                GeneralName::IPAddress(_) => out.2 += 1,
                _ => {}
            }
        }
    }
    out
}

#[test]
fn generates_every_file_with_the_right_identity() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("certs-dev");
    generate_dev_pki(&dir, &spec())?;

    let ca_pem = read(&dir.join("ca.pem"));
    let ca_der = der(&ca_pem);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).map_err(|e| e.to_string())?;
    assert!(ca.is_ca());
    let ca_years = (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp())
        / (365 * 86400);
    assert_eq!(ca_years, 10);
    CertificateAuthority::load(&dir)?;

    let mut expected = vec![("hub", identity("liaison", Role::Hub, "hub"))];
    let mut stems = Vec::new();
    for b in ["europol", "fr-police"] {
        stems.push((format!("{b}/node"), identity(b, Role::Node, "node")));
        for o in ["alice", "bob"] {
            stems.push((format!("{b}/officer-{o}"), identity(b, Role::Officer, o)));
        }
        stems.push((
            format!("{b}/auditor-audit"),
            identity(b, Role::Auditor, "audit"),
        ));
        stems.push((format!("{b}/admin-root"), identity(b, Role::Admin, "root")));
    }
    expected.extend(stems.iter().map(|(s, i)| (s.as_str(), i.clone())));

    for (stem, id) in expected {
        let files = TlsFiles::in_dev_dir(&dir, stem);
        let material = TlsMaterial::load(&files)?;
        assert_eq!(material.ca_pem, ca_pem);
        // Expiry metrics read the leaf's and the CA's notAfter.
        let expiries = material.expiries()?;
        let kinds: Vec<&str> = expiries.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, ["cert", "ca"], "{stem}");
        assert_eq!(expiries[1].1, ca.validity().not_after.timestamp(), "{stem}");
        let leaf_days = (expiries[0].1 - ca.validity().not_before.timestamp()) / 86400;
        assert!(
            (364..=366).contains(&leaf_days),
            "{stem}: a leaf lasts a year, not {leaf_days} days"
        );
        let (uris, dns, ips) = sans(&material.cert_pem);
        assert_eq!(uris, vec![id.uri()], "{stem} has exactly its own URI SAN");
        assert_eq!(identity_from_der(&der(&material.cert_pem), FED)?, id);
        if matches!(id.role, Role::Hub | Role::Node) {
            assert_eq!(dns, vec!["localhost".to_owned()], "{stem}");
            assert_eq!(ips, 1, "{stem}");
        } else {
            assert!(
                dns.is_empty() && ips == 0,
                "{stem} is a client certificate only"
            );
        }
        let leaf_der = der(&material.cert_pem);
        let (_, leaf) =
            x509_parser::parse_x509_certificate(&leaf_der).map_err(|e| e.to_string())?;
        let days = (leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp())
            / 86400;
        assert!(
            (365..=366).contains(&days),
            "{stem} is valid a year, not {days} days"
        );

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.key)?.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", files.key.display());
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("ca.key.pem"))?
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    // No staging directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    assert_eq!(leftovers, vec![std::ffi::OsString::from("certs-dev")]);
    Ok(())
}

#[test]
fn ensure_generates_once() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("pki");
    assert!(ensure_dev_pki(&dir, &spec())?);
    let ca_before = read(&dir.join("ca.pem"));
    let node_before = read(&dir.join("europol/node.pem"));
    assert!(!ensure_dev_pki(&dir, &spec())?);
    assert_eq!(read(&dir.join("ca.pem")), ca_before);
    assert_eq!(read(&dir.join("europol/node.pem")), node_before);
    Ok(())
}

#[test]
fn ensure_replaces_a_half_written_pki() -> TestResult {
    // A crash while writing file by file leaves leaves without `ca.pem`:
    // that is not accepted, and a whole new PKI replaces it.
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("pki");
    std::fs::create_dir_all(dir.join("europol"))?;
    std::fs::write(dir.join("europol/node.pem"), "stale")?;
    std::fs::write(dir.join("notes.txt"), "not ours")?;
    assert!(ensure_dev_pki(&dir, &spec())?);
    let ca = CertificateAuthority::load(&dir)?;
    let node = TlsMaterial::load(&TlsFiles::in_dev_dir(&dir, "europol/node"))?;
    assert_eq!(node.ca_pem, ca.cert_pem());
    assert_eq!(read(&dir.join("notes.txt")), "not ours");
    Ok(())
}

#[test]
fn generate_replaces_an_existing_pki() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("pki");
    generate_dev_pki(&dir, &spec())?;
    let ca_before = read(&dir.join("ca.pem"));
    generate_dev_pki(&dir, &spec())?;
    let ca_after = read(&dir.join("ca.pem"));
    assert_ne!(ca_before, ca_after);
    let hub = TlsMaterial::load(&TlsFiles::in_dev_dir(&dir, "hub"))?;
    assert_eq!(hub.ca_pem, ca_after);
    Ok(())
}

#[test]
fn a_bad_spec_writes_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("pki");
    let mut bad = spec();
    bad.officers.push("Not Valid".into());
    let err = generate_dev_pki(&dir, &bad).expect_err("invalid officer name");
    assert!(matches!(err, PkiError::Spec(_)), "{err}");
    assert!(!dir.exists());
    assert_eq!(std::fs::read_dir(tmp.path())?.count(), 0);
    Ok(())
}

#[test]
fn loading_names_the_file_and_the_problem() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    generate_dev_pki(dir, &spec())?;

    let missing = TlsMaterial::load(&TlsFiles::in_dev_dir(dir, "europol/officer-nobody"))
        .expect_err("missing");
    assert!(matches!(missing, PkiError::Missing { .. }), "{missing}");
    assert!(
        missing
            .to_string()
            .contains("officer-nobody.pem does not exist"),
        "{missing}"
    );

    // A key where the certificate should be, and a certificate where the key
    // should be.
    let mut files = TlsFiles::in_dev_dir(dir, "europol/node");
    std::mem::swap(&mut files.cert, &mut files.key);
    let err = TlsMaterial::load(&files).expect_err("swapped");
    assert!(matches!(err, PkiError::NoCertificate { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("node.key.pem contains no certificate"),
        "{err}"
    );

    let files = TlsFiles {
        key: dir.join("europol/node.pem"),
        ..TlsFiles::in_dev_dir(dir, "europol/node")
    };
    let err = TlsMaterial::load(&files).expect_err("no key");
    assert!(matches!(err, PkiError::NoPrivateKey { .. }), "{err}");
    assert!(
        err.to_string().contains("node.pem contains no private key"),
        "{err}"
    );

    // A CA key that belongs to another CA.
    let other = tmp.path().join("other");
    generate_dev_pki(&other, &spec())?;
    std::fs::copy(other.join("ca.key.pem"), dir.join("ca.key.pem"))?;
    let err = CertificateAuthority::load(dir).expect_err("mismatch");
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
    Ok(())
}

//! Revocation: CRLs in the server configuration, reloading the
//! configuration through a watch channel, and the maximum connection age.

use std::time::{Duration, Instant};

use liaison_pki::{
    client_config, identity_from_der, serials_of_crl, server_config, server_config_with_crls,
    tls_incoming, Crls, PkiError, TlsFiles, TlsMaterial,
};
use liaison_types::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::support::{
    ca, identity, material, next_established, tls_connect, Incoming, TestResult, DEADLINE, FED,
};

const LONG: Duration = Duration::from_secs(60);

/// A server on a fresh port whose configuration comes from `configs`, with
/// connections limited to `max_age`.
async fn server(
    configs: impl Into<liaison_pki::ConfigSource>,
    max_age: Option<Duration>,
) -> (std::net::SocketAddr, Incoming) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (
        addr,
        Box::pin(tls_incoming(listener, configs, LONG, max_age)),
    )
}

/// Connects with `client` and reads once: `Ok` when the server accepted the
/// certificate (it then sends `hello`), the alert otherwise. In TLS 1.3 the
/// client finishes first, so the server's verdict arrives on the first read.
async fn handshake_outcome(
    addr: std::net::SocketAddr,
    client: &TlsMaterial,
    incoming: &mut Incoming,
) -> std::io::Result<()> {
    let connect = async {
        let mut stream = tls_connect(addr, client_config(client).expect("client config")).await?;
        let mut buf = [0; 5];
        stream.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"hello");
        Ok(())
    };
    let accept = async {
        // An accepted connection is greeted; a refused one never shows up.
        if let Ok(Some(Ok(mut s))) =
            tokio::time::timeout(DEADLINE, tokio_stream::StreamExt::next(incoming)).await
        {
            let _ = s.write_all(b"hello").await;
            let _ = s.flush().await;
            // Keep it open until the client has read.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        r = connect => r,
        () = accept => Err(std::io::Error::other("the client saw no verdict in time")),
    }
}

#[tokio::test]
async fn a_revoked_client_fails_the_handshake_while_another_succeeds() -> TestResult {
    let ca = ca();
    let hub = material(&ca, &identity("liaison", Role::Hub, "hub"));
    let revoked = material(&ca, &identity("europol", Role::Node, "node"));
    let good_id = identity("fr-police", Role::Node, "node");
    let good = material(&ca, &good_id);

    let crl = ca.revoke(std::slice::from_ref(&revoked.cert_pem), &[])?;
    let crls = Crls::from_pem("crl.pem", &crl, &ca.cert_pem())?;
    assert_eq!(crls.revoked(), 1);
    let (addr, mut incoming) = server(server_config_with_crls(&hub, Some(&crls))?, None).await;

    let err = tokio::time::timeout(DEADLINE, handshake_outcome(addr, &revoked, &mut incoming))
        .await?
        .expect_err("the revoked certificate is refused");
    assert!(err.to_string().to_lowercase().contains("revoked"), "{err}");

    let (client, server) = tokio::join!(
        tls_connect(addr, client_config(&good)?),
        next_established(&mut incoming)
    );
    client?;
    let certs = server.get_ref().1.peer_certificates().expect("client cert");
    assert_eq!(identity_from_der(&certs[0], FED)?, good_id);
    Ok(())
}

#[tokio::test]
async fn a_new_configuration_applies_to_the_next_connection() -> TestResult {
    let ca = ca();
    let hub = material(&ca, &identity("liaison", Role::Hub, "hub"));
    let node = material(&ca, &identity("europol", Role::Node, "node"));
    let (tx, rx) = watch::channel(server_config(&hub)?);
    let (addr, mut incoming) = server(rx, None).await;

    // Before: accepted, and the connection stays open across the reload.
    let (client, mut open) = tokio::join!(
        tls_connect(addr, client_config(&node)?),
        next_established(&mut incoming)
    );
    let mut open_client = client?;

    let crl = ca.revoke(std::slice::from_ref(&node.cert_pem), &[])?;
    let crls = Crls::from_pem("crl.pem", &crl, &ca.cert_pem())?;
    tx.send_replace(server_config_with_crls(&hub, Some(&crls))?);

    // After: the next handshake is refused.
    let err = tokio::time::timeout(DEADLINE, handshake_outcome(addr, &node, &mut incoming))
        .await?
        .expect_err("refused after the reload");
    assert!(err.to_string().to_lowercase().contains("revoked"), "{err}");

    // Without a maximum age, the open connection is untouched.
    open_client.write_all(b"ping").await?;
    let mut buf = [0; 4];
    open.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

#[tokio::test]
async fn a_connection_older_than_the_maximum_age_is_closed() -> TestResult {
    let ca = ca();
    let hub = material(&ca, &identity("liaison", Role::Hub, "hub"));
    let node = material(&ca, &identity("europol", Role::Node, "node"));
    let max_age = Duration::from_millis(300);
    let (addr, mut incoming) = server(server_config(&hub)?, Some(max_age)).await;

    let started = Instant::now();
    let (client, mut server) = tokio::join!(
        tls_connect(addr, client_config(&node)?),
        next_established(&mut incoming)
    );
    let mut client = client?;
    // Young: bytes flow both ways.
    client.write_all(b"ping").await?;
    let mut buf = [0; 4];
    server.read_exact(&mut buf).await?;
    server.write_all(b"pong").await?;
    client.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"pong");

    // A read pending on the server side ends with end-of-file at the
    // maximum age, although the client sends nothing; writes fail then.
    let n = tokio::time::timeout(DEADLINE, server.read(&mut buf)).await??;
    assert_eq!(n, 0, "end of file at the maximum age");
    assert!(started.elapsed() >= max_age);
    let err = server
        .write_all(b"late")
        .await
        .expect_err("too old to write");
    assert!(err.to_string().contains("maximum age"), "{err}");
    // The peer certificates are still there for whoever asks.
    assert!(server.get_ref().1.peer_certificates().is_some());
    Ok(())
}

#[tokio::test]
async fn crl_files_are_checked_when_loaded() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ca = ca();
    let node = material(&ca, &identity("europol", Role::Node, "node"));

    // Missing.
    let missing = dir.path().join("crl.pem");
    let err = Crls::load(&missing, &ca.cert_pem()).expect_err("missing");
    assert!(matches!(err, PkiError::Missing { .. }), "{err}");

    // Not a CRL.
    std::fs::write(&missing, &node.cert_pem)?;
    let err = Crls::load(&missing, &ca.cert_pem())
        .expect_err("a certificate is no crl")
        .to_string();
    assert!(
        err.contains("crl.pem") && err.contains("contains no crl"),
        "{err}"
    );

    // Issued by another CA.
    let other = crate::support::ca();
    std::fs::write(&missing, other.revoke(&[], &[])?)?;
    let err = Crls::load(&missing, &ca.cert_pem())
        .expect_err("foreign crl")
        .to_string();
    assert!(err.contains("not the federation ca"), "{err}");

    // Good; revocations accumulate when the earlier serials are passed on.
    let first = ca.revoke(std::slice::from_ref(&node.cert_pem), &[])?;
    let other_node = material(&ca, &identity("fr-police", Role::Node, "node"));
    let second = ca.revoke(
        std::slice::from_ref(&other_node.cert_pem),
        &serials_of_crl(&first, "first")?,
    )?;
    std::fs::write(&missing, &second)?;
    let crls = Crls::load(&missing, &ca.cert_pem())?;
    assert_eq!(crls.revoked(), 2);

    // The `[tls] crl` key resolves like the other paths.
    let mut files = TlsFiles {
        crl: Some("crl.pem".into()),
        ..TlsFiles::in_dev_dir(std::path::Path::new("certs"), "europol/node")
    };
    files.resolve(dir.path());
    assert_eq!(files.crl.as_deref(), Some(missing.as_path()));
    Ok(())
}

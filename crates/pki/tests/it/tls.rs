//! The TLS layer: `server_config`, `client_config` and `tls_incoming` over
//! real loopback connections.

use std::time::Duration;

use liaison_pki::{
    caller, client_config, identity_from_der, tls_incoming_with, AcceptOptions, HandshakeFailure,
};
use liaison_types::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::server::Connected;

use crate::support::{
    anonymous_client_config, ca, identity, material, next_established, tls_connect, tls_server,
    TestResult, DEADLINE, FED,
};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_valid_client_is_established_with_its_identity() -> TestResult {
    let ca = ca();
    let hub = material(&ca, &identity("liaison", Role::Hub, "hub"));
    let officer_id = identity("europol", Role::Officer, "alice");
    let officer = material(&ca, &officer_id);
    let (addr, mut incoming) = tls_server(&hub, LONG).await;

    let (client, server) = tokio::join!(
        tls_connect(addr, client_config(&officer)?),
        next_established(&mut incoming)
    );
    let mut client = client?;
    let mut server = server;

    // TLS 1.3 and h2 on both ends.
    let (_, client_conn) = client.get_ref();
    assert_eq!(
        client_conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(client_conn.alpn_protocol(), Some(&b"h2"[..]));
    let (_, server_conn) = server.get_ref();
    assert_eq!(
        server_conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(server_conn.alpn_protocol(), Some(&b"h2"[..]));

    // The server sees the client's identity...
    let certs = server_conn.peer_certificates().expect("client certificate");
    assert_eq!(identity_from_der(&certs[0], FED)?, officer_id);
    // ...and so does a tonic request carrying this connection's info, which
    // is what tonic inserts for every request on the connection.
    let mut req = tonic::Request::new(());
    req.extensions_mut().insert(server.connect_info());
    assert_eq!(caller(&req, FED)?, officer_id);

    // The client sees the hub's.
    let certs = client
        .get_ref()
        .1
        .peer_certificates()
        .expect("server certificate");
    assert_eq!(identity_from_der(&certs[0], FED)?.role, Role::Hub);

    // And bytes flow.
    client.write_all(b"ping").await?;
    let mut buf = [0; 4];
    server.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

#[tokio::test]
async fn a_client_of_another_ca_fails_the_handshake() -> TestResult {
    let ca = ca();
    let hub = material(&ca, &identity("liaison", Role::Hub, "hub"));
    let (addr, mut incoming) = tls_server(&hub, LONG).await;

    // Trusts our CA (so it accepts the server) but holds a certificate from
    // a CA of its own.
    let rogue_ca = crate::support::ca();
    let mut rogue = material(&rogue_ca, &identity("europol", Role::Officer, "mallory"));
    rogue.ca_pem = ca.cert_pem();

    // In TLS 1.3 the client finishes first; the server's verdict arrives as
    // an alert on the client's first read.
    let rogue_config = client_config(&rogue)?;
    let outcome = tokio::time::timeout(DEADLINE, async {
        let mut stream = tls_connect(addr, rogue_config).await?;
        let mut buf = [0; 1];
        stream.read(&mut buf).await
    })
    .await?;
    let err = outcome.expect_err("the server refuses the certificate");
    assert!(err.to_string().to_lowercase().contains("alert"), "{err}");

    // The server never hands the rogue connection out: the next connection
    // it yields is a good one.
    let good_id = identity("europol", Role::Officer, "alice");
    let good = material(&ca, &good_id);
    let (client, server) = tokio::join!(
        tls_connect(addr, client_config(&good)?),
        next_established(&mut incoming)
    );
    client?;
    let certs = server
        .get_ref()
        .1
        .peer_certificates()
        .expect("client certificate");
    assert_eq!(identity_from_der(&certs[0], FED)?, good_id);
    Ok(())
}

/// Connects with `config` and reads once: in TLS 1.3 the client finishes
/// its side first, so a refusal arrives as an alert on the first read.
async fn refused_read(
    addr: std::net::SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Error {
    let outcome = tokio::time::timeout(DEADLINE, async {
        let mut stream = tls_connect(addr, config).await?;
        let mut buf = [0; 1];
        stream.read(&mut buf).await
    })
    .await
    .expect("the server answers within the deadline");
    outcome.expect_err("the server refuses the connection")
}

#[tokio::test]
async fn a_client_without_certificate_fails_the_handshake_and_is_counted() -> TestResult {
    let ca = ca();
    let hub = material(&ca, &identity("liaison", Role::Hub, "hub"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let options = AcceptOptions::new(LONG);
    let failures = options.failures.clone();
    let mut incoming: crate::support::Incoming = Box::pin(tls_incoming_with(
        listener,
        liaison_pki::server_config(&hub)?,
        options,
    ));

    let err = refused_read(addr, anonymous_client_config(&ca.cert_pem())).await;
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    crate::support::wait_until("the failure to be counted", || async {
        (failures.count(HandshakeFailure::NoCertificate) == 1).then_some(())
    })
    .await;

    // A client of another CA is counted under its own reason.
    let rogue_ca = crate::support::ca();
    let mut rogue = material(&rogue_ca, &identity("europol", Role::Officer, "mallory"));
    rogue.ca_pem = ca.cert_pem();
    refused_read(addr, client_config(&rogue)?).await;
    crate::support::wait_until("the rogue to be counted", || async {
        (failures.count(HandshakeFailure::UnknownCa) == 1).then_some(())
    })
    .await;

    // Neither was handed to the server: the next connection is a good one.
    let good_id = identity("europol", Role::Officer, "alice");
    let (client, server) = tokio::join!(
        tls_connect(addr, client_config(&material(&ca, &good_id))?),
        next_established(&mut incoming)
    );
    client?;
    let certs = server.get_ref().1.peer_certificates().expect("certificate");
    assert_eq!(identity_from_der(&certs[0], FED)?, good_id);
    Ok(())
}

#[tokio::test]
async fn a_certificate_naming_no_identity_of_the_federation_is_counted_as_a_failure() -> TestResult
{
    let ca = ca();
    let hub = material(&ca, &identity("liaison", Role::Hub, "hub"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut options = AcceptOptions::new(LONG);
    options.federation = Some(FED.to_owned());
    let failures = options.failures.clone();
    let mut incoming: crate::support::Incoming = Box::pin(tls_incoming_with(
        listener,
        liaison_pki::server_config(&hub)?,
        options,
    ));

    // Signed by the right CA, but for another federation: established (its
    // calls are refused with a message that says why), counted and logged.
    let foreign = material(
        &ca,
        &liaison_types::Identity::new("other-federation", "europol", Role::Officer, "eve")?,
    );
    let (client, server) = tokio::join!(
        tls_connect(addr, client_config(&foreign)?),
        next_established(&mut incoming)
    );
    client?;
    let mut req = tonic::Request::new(());
    req.extensions_mut().insert(server.connect_info());
    let status = caller(&req, FED).expect_err("another federation");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("other-federation"), "{status:?}");
    assert_eq!(failures.count(HandshakeFailure::BadIdentity), 1);

    // A good certificate is not counted.
    let good_id = identity("europol", Role::Officer, "alice");
    let (client, _server) = tokio::join!(
        tls_connect(addr, client_config(&material(&ca, &good_id))?),
        next_established(&mut incoming)
    );
    client?;
    assert_eq!(failures.count(HandshakeFailure::BadIdentity), 1);
    let total: u64 = failures.snapshot().iter().map(|(_, n)| n).sum();
    assert_eq!(total, 1);
    Ok(())
}

#[tokio::test]
async fn a_silent_client_does_not_block_others() -> TestResult {
    let ca = ca();
    let hub = material(&ca, &identity("liaison", Role::Hub, "hub"));
    // A long handshake timeout: if handshakes ran on the accept loop, the
    // second client would wait a minute.
    let (addr, mut incoming) = tls_server(&hub, LONG).await;

    let _silent = TcpStream::connect(addr).await?;
    let officer_id = identity("europol", Role::Officer, "bob");
    let officer = material(&ca, &officer_id);
    let (client, server) = tokio::join!(
        tokio::time::timeout(DEADLINE, tls_connect(addr, client_config(&officer)?)),
        next_established(&mut incoming)
    );
    client??;
    let certs = server
        .get_ref()
        .1
        .peer_certificates()
        .expect("client certificate");
    assert_eq!(identity_from_der(&certs[0], FED)?, officer_id);
    Ok(())
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() -> TestResult {
    let ca = ca();
    let hub = material(&ca, &identity("liaison", Role::Hub, "hub"));
    let (addr, _incoming) = tls_server(&hub, Duration::from_millis(200)).await;

    let mut silent = TcpStream::connect(addr).await?;
    let mut buf = [0; 16];
    // The server closes the connection: end of file (or a reset).
    let read = tokio::time::timeout(DEADLINE, silent.read(&mut buf)).await?;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    Ok(())
}

#[tokio::test]
async fn dropping_the_stream_closes_the_listener() -> TestResult {
    let ca = ca();
    let hub = material(&ca, &identity("liaison", Role::Hub, "hub"));
    let (addr, incoming) = tls_server(&hub, LONG).await;
    drop(incoming);
    crate::support::wait_until("the listener to close", || async {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
    Ok(())
}

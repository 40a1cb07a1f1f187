//! The TLS layer: `server_config`, `client_config` and `tls_incoming` over
//! real loopback connections.

use std::time::Duration;

use liaison_pki::{caller, client_config, identity_from_der};
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

#[tokio::test]
async fn a_client_without_certificate_is_established_but_unauthenticated() -> TestResult {
    let ca = ca();
    let hub = material(&ca, &identity("liaison", Role::Hub, "hub"));
    let (addr, mut incoming) = tls_server(&hub, LONG).await;

    let (client, server) = tokio::join!(
        tls_connect(addr, anonymous_client_config(&ca.cert_pem())),
        next_established(&mut incoming)
    );
    client?;
    assert!(server.get_ref().1.peer_certificates().is_none());

    let mut req = tonic::Request::new(());
    req.extensions_mut().insert(server.connect_info());
    let status = caller(&req, FED).expect_err("no certificate");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "no client certificate presented; connect with a certificate issued by the federation CA"
    );
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

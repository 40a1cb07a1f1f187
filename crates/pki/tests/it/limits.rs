//! The message size limits every Liaison server applies, through the
//! server that `ServerLimits::server` builds (the one the hub and the
//! nodes run), over real mutual TLS: a request over a service's decoding
//! limit and a response over `MAX_RESPONSE_BYTES` are both refused with
//! `RESOURCE_EXHAUSTED`, naming the size and the limit, and the connection
//! goes on serving.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use liaison_pki::{
    connect, server_config, tls_incoming, ServerLimits, TlsMaterial, MAX_RESPONSE_BYTES,
};
use liaison_types::Role;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::support::{ca, identity, material, TestResult, FED};

/// Answers with a string of the requested length.
const MAKE: &str = "/liaison.test.Sized/Make";
/// Answers with the length of the string sent.
const TAKE: &str = "/liaison.test.Sized/Take";

/// The request limit of the test service.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Clone)]
struct Sized;

impl NamedService for Sized {
    const NAME: &'static str = "liaison.test.Sized";
}

struct Make;

impl tonic::server::UnaryService<u64> for Make {
    type Response = String;
    type Future = std::future::Ready<Result<Response<String>, Status>>;

    fn call(&mut self, req: Request<u64>) -> Self::Future {
        let len = usize::try_from(*req.get_ref()).unwrap_or(usize::MAX);
        std::future::ready(Ok(Response::new("x".repeat(len))))
    }
}

struct Take;

impl tonic::server::UnaryService<String> for Take {
    type Response = u64;
    type Future = std::future::Ready<Result<Response<u64>, Status>>;

    fn call(&mut self, req: Request<String>) -> Self::Future {
        std::future::ready(Ok(Response::new(req.get_ref().len() as u64)))
    }
}

impl tower::Service<http::Request<Body>> for Sized {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            Ok(match req.uri().path() {
                MAKE => {
                    tonic::server::Grpc::new(ProstCodec::<String, u64>::default())
                        .apply_max_message_size_config(Some(MAX_REQUEST), Some(MAX_RESPONSE_BYTES))
                        .unary(Make, req)
                        .await
                }
                TAKE => {
                    tonic::server::Grpc::new(ProstCodec::<u64, String>::default())
                        .apply_max_message_size_config(Some(MAX_REQUEST), Some(MAX_RESPONSE_BYTES))
                        .unary(Take, req)
                        .await
                }
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// The test service behind `ServerLimits::server`, on port 0.
async fn serve(material: &TlsMaterial) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tls_incoming(
        listener,
        server_config(material).expect("config"),
        Duration::from_secs(10),
        None,
    );
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        ServerLimits::default()
            .server()
            .add_service(Sized)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await
            .expect("server");
    });
    (addr, stop)
}

/// A client that would read any size, so that only the server's limits
/// are tested.
fn client(channel: Channel) -> tonic::client::Grpc<Channel> {
    tonic::client::Grpc::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

async fn make(channel: &Channel, len: u64) -> Result<usize, Status> {
    let mut grpc = client(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(MAKE);
    let answer = grpc
        .unary(
            Request::new(len),
            path,
            ProstCodec::<u64, String>::default(),
        )
        .await?;
    Ok(answer.into_inner().len())
}

async fn take(channel: &Channel, len: usize) -> Result<u64, Status> {
    let mut grpc = client(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(TAKE);
    let answer = grpc
        .unary(
            Request::new("y".repeat(len)),
            path,
            ProstCodec::<String, u64>::default(),
        )
        .await?;
    Ok(answer.into_inner())
}

/// The encoded length of a message holding one string of `len` bytes
/// (field 1): a tag byte, the length's varint, the bytes.
fn encoded(len: usize) -> usize {
    let mut varint = 1;
    while len >> (7 * varint) != 0 {
        varint += 1;
    }
    1 + varint + len
}

/// The string length whose message encodes to exactly `limit` bytes.
fn string_for(limit: usize) -> usize {
    let len = (limit - 6..limit).rev().find(|&n| encoded(n) == limit);
    len.expect("a length encodes to the limit")
}

/// A mutual-TLS channel to a fresh test server (which stops when the
/// sender is dropped).
async fn connected() -> Result<(Channel, oneshot::Sender<()>), liaison_pki::PkiError> {
    let ca = ca();
    let server = material(&ca, &identity("liaison", Role::Hub, "hub"));
    let client = material(&ca, &identity("europol", Role::Node, "node"));
    let (addr, stop) = serve(&server).await;
    let channel = connect(&format!("https://{addr}"), &client, Some(Role::Hub), FED).await?;
    Ok((channel, stop))
}

#[tokio::test]
async fn a_response_over_four_mib_is_refused_with_resource_exhausted_and_the_connection_serves_on(
) -> TestResult {
    let (channel, _stop) = connected().await?;

    // Exactly the limit is sent whole.
    let at_limit = string_for(MAX_RESPONSE_BYTES);
    assert_eq!(encoded(at_limit), MAX_RESPONSE_BYTES);
    assert_eq!(make(&channel, at_limit as u64).await?, at_limit);

    // One byte over is refused, saying by how much and what to do.
    let status = make(&channel, at_limit as u64 + 1)
        .await
        .expect_err("a response of 4 MiB + 1");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let over = MAX_RESPONSE_BYTES + 1;
    assert!(
        status.message().contains(&format!(
            "response of {over} bytes is over this api's limit of {MAX_RESPONSE_BYTES} bytes"
        )),
        "{status:?}"
    );
    assert!(status.message().contains("ask for fewer"), "{status:?}");

    // The same connection answers the next call.
    assert_eq!(make(&channel, 10).await?, 10);
    Ok(())
}

#[tokio::test]
async fn a_request_over_the_decoding_limit_is_refused_with_resource_exhausted_and_the_connection_serves_on(
) -> TestResult {
    let (channel, _stop) = connected().await?;

    let at_limit = string_for(MAX_REQUEST);
    assert_eq!(take(&channel, at_limit).await?, at_limit as u64);
    let status = take(&channel, at_limit + 1)
        .await
        .expect_err("a request one byte over");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let over = MAX_REQUEST + 1;
    assert!(
        status.message().contains(&format!(
            "request of {over} bytes is over this api's limit of {MAX_REQUEST} bytes"
        )),
        "{status:?}"
    );
    assert_eq!(take(&channel, 10).await?, 10);
    Ok(())
}

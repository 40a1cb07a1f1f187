//! The baseline: a bare tonic unary echo over the same mutual TLS, accept
//! path and limits as the hub, with no storage, policy or audit.

use std::future::Future;
use std::time::{Duration, Instant};

use liaison_pki::{authorize, server_config, tls_incoming_with, ServerLimits, TlsMaterial};
use liaison_proto::v1 as pb;
use liaison_proto::v1::echo_client::EchoClient;
use liaison_proto::v1::echo_server::{Echo, EchoServer};
use liaison_types::Role;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::{BenchError, Latencies};

#[derive(Debug, Clone, Copy)]
struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(
        &self,
        req: Request<pb::EchoMessage>,
    ) -> Result<Response<pb::EchoMessage>, Status> {
        Ok(Response::new(req.into_inner()))
    }
}

/// Serves the echo on `listener` with the server certificate `material`,
/// to node certificates of `federation`, until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    material: &TlsMaterial,
    federation: &str,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BenchError> {
    let limits = ServerLimits::default();
    let config = server_config(material)?;
    let incoming = tls_incoming_with(listener, config, limits.accept_options(federation));
    limits
        .server()
        .add_service(InterceptedService::new(
            EchoServer::new(EchoService),
            authorize(federation.to_owned(), &[Role::Node]),
        ))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| BenchError::Io(format!("echo server: {e}")))
}

/// Sends echoes of `payload` bytes from `concurrency` tasks over one
/// connection for `duration`; returns the latency of every call completed.
pub async fn measure(
    channel: &Channel,
    concurrency: usize,
    duration: Duration,
    payload: usize,
) -> Result<Latencies, BenchError> {
    let client = EchoClient::new(channel.clone());
    let payload = vec![0x5a_u8; payload];
    let end = Instant::now() + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = client.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    let reply = client
                        .echo(pb::EchoMessage {
                            payload: payload.clone(),
                        })
                        .await
                        .map_err(|s| BenchError::Rpc(format!("echo: {}", s.message())))?;
                    if reply.into_inner().payload.len() != payload.len() {
                        return Err(BenchError::Rpc("echo answered another payload".into()));
                    }
                    lat.push(t.elapsed());
                }
                Ok::<_, BenchError>(lat)
            })
        })
        .collect();
    let mut all = Latencies::default();
    for t in tasks {
        let lat = t
            .await
            .map_err(|e| BenchError::Io(format!("echo task: {e}")))??;
        all.extend(lat);
    }
    Ok(all)
}

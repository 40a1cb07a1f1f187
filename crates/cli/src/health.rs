//! `liaison health`: the gRPC health check of a hub or a node, as a load
//! balancer, a Kubernetes exec probe or `grpc_health_probe` would make it,
//! over the same mutual TLS as every other call.

use anyhow::Result;
use liaison_telemetry::health::pb::health_check_response::ServingStatus;
use liaison_telemetry::health::pb::{health_client::HealthClient, HealthCheckRequest};
use serde_json::json;

use crate::{Connection, Failure, Output};

/// Arguments of `health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Where and who (any certificate of the federation will do).
    #[command(flatten)]
    pub conn: Connection,
    /// The service to check: empty for the process as a whole, or
    /// liaison.v1.Federation, liaison.v1.Audit, liaison.v1.Admin,
    /// liaison.v1.Operations (hub),
    /// liaison.v1.Officer, liaison.v1.HubLink (node).
    #[arg(long, default_value = "")]
    pub service: String,
    /// Give up after this long, for example 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

/// Checks health once. Exits 0 when SERVING, 7 when the server answers
/// anything else, 6 when it does not know the service, 5 when it cannot be
/// reached in time.
pub async fn health(args: HealthArgs, out: Output) -> Result<()> {
    let material = args.conn.material()?;
    let me = material.identity()?;
    let server = &args.conn.server;
    let checked = tokio::time::timeout(args.timeout, async {
        // The server may be a hub or a node: either role will do.
        let channel = liaison_pki::connect(server, &material, None, &me.federation).await?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map_err(|e| Failure::status("health check", &e))?;
        anyhow::Ok(answer.into_inner().status)
    })
    .await
    .map_err(|_| Failure {
        code: 5,
        message: format!(
            "health check: no answer from {} within {}; check that it runs and listens there",
            crate::one_line(server),
            humantime::format_duration(args.timeout)
        ),
    })??;
    let status = ServingStatus::try_from(checked).unwrap_or(ServingStatus::Unknown);
    let name = status.as_str_name();
    let shown = if args.service.is_empty() {
        "(overall)".to_owned()
    } else {
        crate::one_line(&args.service).into_owned()
    };
    match out {
        Output::Json => say!(
            "{}",
            json!({"server": server, "service": args.service, "status": name})
        ),
        Output::Human => say!("{} {}: {name}", crate::one_line(server), shown),
    }
    if status != ServingStatus::Serving {
        return Err(Failure::check(format!("{shown} is {name}")).into());
    }
    Ok(())
}

//! A Liaison organisation node: the officer API for one body's liaison
//! officers, a durable outbox pushed to the hub, and a durable inbox filled
//! from the hub's delivery stream.
//!
//! ```text
//! officer CLI ──Officer.Submit──▶ outbox (sled) ──push task──▶ hub Federation.Submit
//! officer CLI ◀──ListInbox/Show── inbox (sled) ◀──receive task── hub Federation.Subscribe
//! ```
//!
//! With four-eyes release configured (`[release]`), a message the rules
//! cover waits in the outbox, outside the push queue, until a second officer
//! who is an approver approves it (`Officer.Approve`); the node then pushes
//! it and names the approver to the hub, which audits it.
//!
//! The third-party rule: an officer asks the hub to pass a received message
//! on (`Officer.RequestForward`, answered at once); the originating body's
//! node stores the hub's forward-request notices from its delivery stream,
//! its officers consent or refuse (`Officer.DecideForward`), and the push
//! task sends the decision to the hub, durably, like a retraction.
//!
//! [`run`] serves until its shutdown future completes; the binary only parses
//! arguments and calls it.
#![forbid(unsafe_code)]

mod config;
mod error;
mod link;
mod metrics;
mod officer_rate;
mod plans;
mod service;
pub mod store;
pub mod witness;

use std::future::Future;
use std::sync::Arc;

pub use config::{NodeConfig, Plans, Release, Retry, ENV_PREFIX};
pub use error::NodeError;
use liaison_pki::{
    authorize, lazy_channel_reloading, tls_incoming_with, LoadedTls, MAX_RESPONSE_BYTES,
};
use liaison_proto::v1::{
    federation_client::FederationClient, node_audit_server::NodeAuditServer,
    officer_server::OfficerServer,
};
use liaison_store::Db;
use liaison_telemetry::health::{reflection, Health};
pub use liaison_telemetry::metrics::Listeners;
use liaison_types::{BodyId, Role};
pub use service::MAX_OFFICER_BATCH;
use service::{NodeState, OfficerService};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio_stream::{Stream, StreamExt};

/// New inbox messages buffered for `Officer.WatchInbox` watchers; one that
/// falls further behind is ended (it lists the inbox and watches again).
const INBOX_FEED: usize = 16_384;
use tonic::service::interceptor::InterceptedService;

/// The API a node serves, by its full gRPC name: a health service name
/// (besides the link to the hub, [`liaison_telemetry::health::HUB_LINK`]),
/// and reflection lists it.
pub const SERVICES: &[&str] = &["liaison.v1.Officer", "liaison.v1.NodeAudit"];

/// Runs the node on `listeners` (a bare API listener will do) until
/// `shutdown` completes.
pub async fn run(
    config: NodeConfig,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), NodeError> {
    run_with_reload(config, listeners, shutdown, tokio_stream::pending()).await
}

/// Runs the node on `listener` until `shutdown` completes, and re-reads the
/// `[tls] crl` file (if configured) on every item of `reloads` (the binary
/// passes one item per SIGHUP). A new CRL applies to the next officer
/// connections; an unusable one is logged and the CRL in force stays.
pub async fn run_with_reload(
    config: NodeConfig,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send,
    reloads: impl Stream<Item = ()> + Send + Unpin + 'static,
) -> Result<(), NodeError> {
    let mut listeners = listeners.into();
    let ready = listeners.ready.take();
    let metrics_listener = listeners
        .metrics_for(config.metrics.as_ref())
        .await
        .map_err(|source| NodeError::Io {
            context: "binding the [metrics] listen address".into(),
            source,
        })?;
    let listener: TcpListener = listeners.api;
    let loaded = LoadedTls::load(&config.tls)?;
    liaison_pki::warn_if_expiring(&loaded.material, liaison_types::now_ms() / 1000);
    let material = loaded.material.clone();
    let tls = Arc::clone(&loaded.server);
    let me = material
        .identity_as(Role::Node, Some(&config.body))
        .map_err(|e| NodeError::Config {
            file: config.tls.cert.display().to_string(),
            problem: e.to_string(),
        })?;
    let federation = me.federation.clone();
    let body = BodyId::parse(&config.body).map_err(|problem| NodeError::Config {
        file: "node configuration".into(),
        problem,
    })?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::Io {
        context: format!("creating data directory {}", config.data_dir.display()),
        source,
    })?;
    let db = Db::open_with(&config.data_dir, config.store)?;
    let expiries = material.expiries()?;
    let (health, health_server) = Health::new(SERVICES, true);
    health.follow_store(db.failures());
    let node_metrics = metrics::NodeMetrics::default();
    let flushes = node_metrics.store.flush_seconds.clone();
    db.observe_flushes(Box::new(move |took| flushes.observe(took.as_secs_f64())));
    let (reflection_v1, reflection_v1alpha) =
        reflection(liaison_proto::v1::FILE_DESCRIPTOR_SET, SERVICES);
    let (client_tx, client_rx) = watch::channel(Arc::clone(&loaded.client));
    let channel = lazy_channel_reloading(
        &config.hub,
        &material,
        client_rx,
        Some(Role::Hub),
        &federation,
    )?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (log_key, witness_key) = config.audit.load()?;
    let deconfliction_key = config.plans.load()?;
    let witness = Arc::new(witness::Witness::open(
        &db,
        log_key,
        witness_key,
        std::time::Duration::from_millis(config.audit.witness_every_ms),
        config.data_dir.join("checkpoint"),
    )?);
    let state = Arc::new(NodeState {
        deconfliction_key,
        witness: Arc::clone(&witness),
        body,
        db,
        hub: FederationClient::new(channel)
            // Deliveries are bounded by the hub's request limit; a batch's
            // answers (decisions for every message) can be larger.
            .max_decoding_message_size((config.limits.max_request_bytes * 2).max(16 << 20)),
        outbox_ready: Arc::new(Notify::new()),
        writes: tokio_util::task::TaskTracker::new(),
        inbox_changed: Notify::new(),
        release: config.release.clone(),
        handshake_failures: liaison_pki::HandshakeFailures::default(),
        governance: std::sync::RwLock::new(None),
        inbox_feed: tokio::sync::broadcast::channel(INBOX_FEED).0,
        stopping: stop_rx.clone(),
        governance_stale: Notify::new(),
        health: health.clone(),
        metrics: node_metrics,
        tls_files: config.tls.clone(),
        officer_rate: officer_rate::OfficerRate::new(config.officers),
    });
    let release = &state.release;
    if release.four_eyes_from.is_some() || !release.four_eyes_kinds.is_empty() {
        tracing::info!(
            from = release.four_eyes_from.map_or("-", |c| c.as_str()),
            kinds = %release.four_eyes_kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(","),
            approvers = %release.approvers.join(","),
            "four-eyes release in force"
        );
        if release.approvers.len() < 2 {
            tracing::warn!(
                approvers = %release.approvers.join(","),
                "only one four-eyes approver: messages that approver submits cannot be approved by anyone, and are refused at submission"
            );
        }
    }
    let (tls_tx, tls_rx) = watch::channel(tls);
    let metrics_task = match metrics_listener {
        Some(listener) => {
            let registry = state.metrics.registry(&expiries);
            let render = metrics::renderer(
                Arc::clone(&state),
                registry,
                config.data_dir.clone(),
                config.tls.clone(),
            );
            let tls = config
                .metrics
                .is_some_and(|m| m.tls)
                .then(|| tls_rx.clone());
            Some(tokio::spawn(
                liaison_telemetry::metrics::serve_until_stopped(
                    listener,
                    tls,
                    render,
                    stop_rx.clone(),
                ),
            ))
        }
        None => None,
    };
    // SIGHUP, and a change of a certificate, key or CRL file.
    let changes = tokio_stream::wrappers::ReceiverStream::new(liaison_pki::watch_files(
        config.tls.clone(),
        liaison_pki::TLS_CHECK_EVERY,
    ));
    let crl_reloader = tokio::spawn(reload_tls(
        TlsTargets {
            files: config.tls.clone(),
            in_force: loaded,
            server: tls_tx,
            client: client_tx,
            body: config.body.clone(),
        },
        reloads.merge(changes),
        stop_rx.clone(),
    ));
    let pusher = tokio::spawn(link::push_outbox(
        Arc::clone(&state),
        config.retry.clone(),
        config.link.clone(),
        stop_rx.clone(),
    ));
    let receiver = tokio::spawn(link::receive(
        Arc::clone(&state),
        config.retry.clone(),
        stop_rx.clone(),
    ));
    let follower = tokio::spawn(link::follow_governance(
        Arc::clone(&state),
        config.retry.clone(),
        stop_rx.clone(),
    ));
    let sweeper = tokio::spawn(link::expire_inbox(Arc::clone(&state), stop_rx.clone()));
    let witnessing = tokio::spawn(Arc::clone(&witness).run(
        state.db.clone(),
        state.hub.clone(),
        stop_rx.clone(),
    ));

    let limits = &config.limits;
    let officer = OfficerServer::new(OfficerService(Arc::clone(&state)))
        .max_decoding_message_size(limits.max_request_bytes)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
    tracing::info!(body = %state.body, addr = %listener.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string()), hub = %config.hub, "node listening");
    let mut accept = limits.accept_options(&federation);
    accept.failures = state.handshake_failures.clone();
    // The store is open and checked, and nothing that can fail at start
    // is left: only now does the process say it is ready.
    if let Some(ready) = ready {
        ready();
    }
    let incoming = tls_incoming_with(listener, tls_rx, accept);
    let serve = limits
        .server()
        .add_service(InterceptedService::new(
            officer,
            authorize(federation.clone(), &[Role::Officer]),
        ))
        .add_service(InterceptedService::new(
            NodeAuditServer::new(service::NodeAuditService(Arc::clone(&state)))
                .max_decoding_message_size(4096)
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
            authorize(
                federation.clone(),
                &[Role::Officer, Role::Auditor, Role::Admin],
            ),
        ))
        // Health and reflection are open to every certificate of the
        // federation, and to nothing else.
        .add_service(InterceptedService::new(
            health_server,
            authorize(federation.clone(), &Role::ALL),
        ))
        .add_service(InterceptedService::new(
            reflection_v1,
            authorize(federation.clone(), &Role::ALL),
        ))
        .add_service(InterceptedService::new(
            reflection_v1alpha,
            authorize(federation, &Role::ALL),
        ))
        .serve_with_incoming_shutdown(incoming, {
            let stop_tx = stop_tx.clone();
            async move {
                shutdown.await;
                tracing::info!("node shutting down");
                health.set_draining();
                // Ends the inbox watch streams, which would otherwise hold
                // their connections open.
                let _ = stop_tx.send(true);
            }
        });
    let served = liaison_pki::drain_within(serve, stop_rx.clone(), limits.drain_timeout()).await;
    let _ = stop_tx.send(true);
    let _ = crl_reloader.await;
    let _ = pusher.await;
    let _ = receiver.await;
    let _ = sweeper.await;
    let _ = witnessing.await;
    let _ = follower.await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    state.writes.close();
    state.writes.wait().await;
    // Close the store so that a restart can open it at once.
    match Arc::try_unwrap(state) {
        Ok(state) => {
            let db = state.db;
            let closed = tokio::task::spawn_blocking(move || db.close()).await;
            if !matches!(closed, Ok(Ok(()))) {
                tracing::warn!(
                    "store still in use at shutdown; it closes when the last handle goes"
                );
            }
        }
        Err(_) => tracing::warn!(
            "node state still shared at shutdown; the store closes when the last handle goes"
        ),
    }
    served?;
    Ok(())
}

/// Where reloaded certificates go, and what is in force.
struct TlsTargets {
    files: liaison_pki::TlsFiles,
    in_force: LoadedTls,
    server: watch::Sender<Arc<liaison_pki::ServerConfig>>,
    client: watch::Sender<Arc<liaison_pki::ClientConfig>>,
    body: String,
}

/// Re-reads the certificate, key, CA and CRL files on every item of
/// `reloads` (SIGHUP, or a file that changed) until the stream ends or the
/// node stops, and puts what they give in force for the next handshakes:
/// officers' connections to the node, and the node's next connection to
/// the hub. Anything unusable (a file that does not parse, a certificate
/// that is not this body's node certificate) is logged and what is in
/// force stays.
async fn reload_tls(
    mut t: TlsTargets,
    mut reloads: impl Stream<Item = ()> + Unpin,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            item = reloads.next() => {
                if item.is_none() {
                    return;
                }
                let loaded = LoadedTls::load(&t.files).and_then(|l| {
                    l.material.identity_as(Role::Node, Some(&t.body))?;
                    Ok(l)
                });
                match loaded {
                    Ok(l) if !l.differs_from(&t.in_force) => {
                        tracing::info!("reload asked for; certificates, key and crl unchanged");
                    }
                    Ok(l) => {
                        t.server.send_replace(Arc::clone(&l.server));
                        t.client.send_replace(Arc::clone(&l.client));
                        liaison_pki::warn_if_expiring(&l.material, liaison_types::now_ms() / 1000);
                        tracing::info!(
                            cert = %t.files.cert.display(),
                            revoked = l.crls.as_ref().map_or(0, liaison_pki::Crls::revoked),
                            "certificates, key and crl reloaded; in force for new connections"
                        );
                        t.in_force = l;
                    }
                    Err(e) => tracing::warn!(error = %e, "tls reload refused; what is in force stays, fix the file and reload again"),
                }
            }
            () = async { let _ = stopping.wait_for(|s| *s).await; } => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::server::NamedService;

    use super::*;

    #[test]
    fn the_health_name_is_the_served_api() {
        assert_eq!(
            SERVICES,
            [
                <OfficerServer<OfficerService> as NamedService>::NAME,
                <NodeAuditServer<service::NodeAuditService> as NamedService>::NAME
            ]
        );
    }
}

//! The Liaison hub: it receives messages from organisation nodes, decides for
//! every other body whether to deliver or withhold each one under the
//! governance rules, queues deliveries durably per recipient, streams them to
//! subscribed nodes and records every step in a hash-chained audit log.
//!
//! ```text
//! node ──Submit──▶ validate ─▶ policy::decide ─▶ store (message, queues, audit; one flush)
//! node ◀─Subscribe stream── per-body queue ◀── woken on new entries
//! node ──Acknowledge──▶ queue trimmed, acknowledgement audited
//! auditor ──Audit.List / Verify──▶ audit log
//! admin ──Admin.ReloadPolicy──▶ re-read governance file ─▶ audit ─▶ swap (or refuse, audited)
//! ```
//!
//! [`run`] serves until its shutdown future completes; the binary only parses
//! arguments and calls it. [`run_with_reload`] also reloads the governance
//! file (and the `[tls] crl` file, if configured) on every item of a stream
//! (the binary passes SIGHUP).
#![forbid(unsafe_code)]

mod admin;
mod config;
mod error;
pub mod governance;
mod metrics;
mod service;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use admin::{reload_on_signal, AdminService, PolicyReloader, TlsReload};
pub use admin::{FILES_ACTOR, RULE_RELOAD, RULE_RELOAD_REFUSED, SIGNAL_ACTOR};
pub use config::{AuditKeys, HubConfig, LoadedAuditKeys, ENV_PREFIX};
pub use error::HubError;
use liaison_pki::{authorize, tls_incoming_with, LoadedTls, MAX_RESPONSE_BYTES};
use liaison_policy::Governance;
use liaison_proto::v1::{
    admin_server::AdminServer, audit_server::AuditServer, federation_server::FederationServer,
    operations_server::OperationsServer,
};
use liaison_store::Db;
use liaison_telemetry::health::{reflection, Health};
pub use liaison_telemetry::metrics::Listeners;
use liaison_types::Role;
pub use service::{check_log_key, HubState};
use service::{AuditService, FederationService, OperationsService};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::service::interceptor::InterceptedService;

/// The APIs the hub serves, by their full gRPC names: each is a health
/// service name, and reflection lists them.
pub const SERVICES: &[&str] = &[
    "liaison.v1.Federation",
    "liaison.v1.Audit",
    "liaison.v1.Admin",
    "liaison.v1.Operations",
];

/// Loads the governance file named by the configuration.
pub fn load_governance(config: &HubConfig) -> Result<Governance, HubError> {
    let path = &config.governance;
    let text = std::fs::read_to_string(path).map_err(|e| HubError::Config {
        file: path.display().to_string(),
        problem: format!("cannot read the governance file: {e}"),
    })?;
    Ok(Governance::from_toml(&path.display().to_string(), &text)?)
}

/// Runs the hub on `listeners` (a bare API listener will do) until
/// `shutdown` completes.
pub async fn run(
    config: HubConfig,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), HubError> {
    run_with_reload(config, listeners, shutdown, tokio_stream::pending()).await
}

/// Runs the hub on `listener` until `shutdown` completes, and reloads the
/// governance file on every item of `reloads` (the binary passes one item
/// per SIGHUP; the reloads are audited with actor [`SIGNAL_ACTOR`]).
///
/// A reload that fails is logged and audited and the hub keeps running
/// under the governance in force; see the `Admin` API for the same reload
/// on request.
pub async fn run_with_reload(
    config: HubConfig,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send,
    reloads: impl Stream<Item = ()> + Send + Unpin + 'static,
) -> Result<(), HubError> {
    let mut listeners = listeners.into();
    let ready = listeners.ready.take();
    let metrics_listener = listeners
        .metrics_for(config.metrics.as_ref())
        .await
        .map_err(|source| HubError::Io {
            context: "binding the [metrics] listen address".into(),
            source,
        })?;
    let listener: TcpListener = listeners.api;
    let governance = load_governance(&config)?;
    let loaded = LoadedTls::load(&config.tls)?;
    liaison_pki::warn_if_expiring(&loaded.material, liaison_types::now_ms() / 1000);
    let material = loaded.material.clone();
    let (tls_tx, tls_rx) = watch::channel(Arc::clone(&loaded.server));
    std::fs::create_dir_all(&config.data_dir).map_err(|source| HubError::Io {
        context: format!("creating data directory {}", config.data_dir.display()),
        source,
    })?;
    let db = Db::open_with(&config.data_dir, config.store)?;
    let (health, health_server) = Health::new(SERVICES, false);
    health.follow_store(db.failures());
    let (reflection_v1, reflection_v1alpha) =
        reflection(liaison_proto::v1::FILE_DESCRIPTOR_SET, SERVICES);
    let federation = governance.federation().to_owned();
    let (stop_tx, stop_rx) = watch::channel(false);
    let keys = config.audit.load()?;
    let state =
        Arc::new(HubState::new(db, governance, keys, config.queues, stop_rx.clone()).await?);
    state.spawn(Arc::clone(&state).run_schedules());
    state.spawn(Arc::clone(&state).run_checkpoints());
    let expiries = material.expiries()?;
    let operations =
        OperationsServer::new(OperationsService(Arc::clone(&state), config.tls.clone()))
            .max_decoding_message_size(1024)
            .max_encoding_message_size(MAX_RESPONSE_BYTES);
    if let Some(listener) = metrics_listener {
        let registry = state.metrics().registry(&expiries);
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
        state.spawn(liaison_telemetry::metrics::serve_until_stopped(
            listener,
            tls,
            render,
            stop_rx.clone(),
        ));
    }
    let limits = &config.limits;

    let fed = FederationServer::new(FederationService(Arc::clone(&state)))
        .max_decoding_message_size(limits.max_request_bytes)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
    let audit = AuditServer::new(AuditService(Arc::clone(&state)))
        .max_decoding_message_size(64 * 1024)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
    let reloader = PolicyReloader::new(Arc::clone(&state), config.governance.clone())
        .with_tls(TlsReload::new(config.tls.clone(), loaded, tls_tx));
    let reloader = Arc::new(reloader);
    // SIGHUP, and a change of a certificate, key or CRL file.
    let changes = tokio_stream::wrappers::ReceiverStream::new(liaison_pki::watch_files(
        config.tls.clone(),
        liaison_pki::TLS_CHECK_EVERY,
    ));
    let reloads = reloads
        .map(|()| SIGNAL_ACTOR)
        .merge(changes.map(|()| FILES_ACTOR));
    let admin = AdminServer::new(AdminService(Arc::clone(&reloader)))
        .max_decoding_message_size(16 * 1024)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
    let on_signal = tokio::spawn(reload_on_signal(
        Arc::clone(&reloader),
        reloads,
        stop_rx.clone(),
    ));
    let local = listener.local_addr().ok();
    tracing::info!(addr = %local.map_or_else(|| "?".to_owned(), |a| a.to_string()), policy_version = %state.governance().version(), "hub listening");
    let mut accept = limits.accept_options(&federation);
    accept.failures = state.handshake_failures().clone();
    // The store is open and checked, and nothing that can fail at start
    // is left: only now does the process say it is ready.
    if let Some(ready) = ready {
        ready();
    }
    let incoming = tls_incoming_with(listener, tls_rx, accept);
    let serve = limits
        .server()
        .add_service(InterceptedService::new(
            fed,
            authorize(federation.clone(), &[Role::Node]),
        ))
        .add_service(InterceptedService::new(
            audit,
            authorize(federation.clone(), &[Role::Auditor, Role::Oversight]),
        ))
        .add_service(InterceptedService::new(
            admin,
            authorize(federation.clone(), &[Role::Admin]),
        ))
        .add_service(InterceptedService::new(
            operations,
            authorize(
                federation.clone(),
                &[Role::Admin, Role::Auditor, Role::Oversight],
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
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            tracing::info!("hub shutting down");
            health.set_draining();
            let _ = stop_tx.send(true);
        });
    let served = liaison_pki::drain_within(serve, stop_rx.clone(), limits.drain_timeout()).await;
    // The signal task ends when the stop flag is set (or its sender
    // dropped); it holds the state, so wait for it first.
    let _ = on_signal.await;
    drop(reloader);
    // Subscriptions end when the stop flag is set (or its sender dropped);
    // wait for them, then close the store so that a restart can open it
    // at once.
    if let Some(db) = state.shut_down().await {
        close_store(db).await;
    }
    served?;
    Ok(())
}

/// Closes a store off the async runtime (closing waits for the final flush).
async fn close_store(db: Db) {
    let closed = tokio::task::spawn_blocking(move || db.close()).await;
    if !matches!(closed, Ok(Ok(()))) {
        tracing::warn!("store still in use at shutdown; it closes when the last handle goes");
    }
}

#[cfg(test)]
mod tests {
    use tonic::server::NamedService;

    use super::*;

    #[test]
    fn the_health_names_are_the_served_apis() {
        assert_eq!(
            SERVICES,
            [
                <FederationServer<FederationService> as NamedService>::NAME,
                <AuditServer<AuditService> as NamedService>::NAME,
                <AdminServer<AdminService> as NamedService>::NAME,
                <OperationsServer<OperationsService> as NamedService>::NAME,
            ]
        );
    }
}

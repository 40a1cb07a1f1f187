//! gRPC health checking (`grpc.health.v1`) and server reflection, as the hub
//! and every node serve them.
//!
//! A process's health is a few [`Conditions`] (draining, a failing store, a
//! node's link to the hub); [`statuses`] decides, purely, what every health
//! service name reports under them, and a task puts that in force in
//! tonic-health's reporter whenever a condition changes. The overall name
//! (`""`) and each API's name go NOT_SERVING while the process drains or its
//! store fails (the hub's audit log is in that store, written in the same
//! transaction as the routing it records). A node's link to the hub is a
//! name of its own, [`HUB_LINK`], so that a load balancer does not take a
//! node out of service when only the hub is out of reach: its officers can
//! still read their inbox and submit to the outbox.

use std::sync::Arc;

use tokio::sync::watch;
pub use tonic_health::pb;
pub use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthReporter;
pub use tonic_health::ServingStatus;

/// The health service name of a node's link to the hub: SERVING while the
/// node's delivery stream from the hub is open.
pub const HUB_LINK: &str = "liaison.v1.HubLink";

/// What a process's health depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    /// Set once the process has begun to shut down.
    pub draining: bool,
    /// Why the store's last write or flush failed, while it fails.
    pub storage_failure: Option<String>,
    /// A node's link to the hub: `Some(true)` while it is up; `None` for
    /// the hub, which has no such link.
    pub hub_link: Option<bool>,
}

fn status(serving: bool) -> ServingStatus {
    if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// What each health service name reports under `c`: the overall name `""`
/// and every name in `services` are SERVING unless the process drains or
/// its store fails; [`HUB_LINK`] (for a node) is SERVING while the link is
/// up and the process does not drain.
pub fn statuses(services: &[&'static str], c: &Conditions) -> Vec<(&'static str, ServingStatus)> {
    let ready = !c.draining && c.storage_failure.is_none();
    let mut out: Vec<(&'static str, ServingStatus)> = std::iter::once("")
        .chain(services.iter().copied())
        .map(|name| (name, status(ready)))
        .collect();
    if let Some(up) = c.hub_link {
        out.push((HUB_LINK, status(up && !c.draining)));
    }
    out
}

/// The handle by which a process tells its health service what changed.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Health {
    conditions: Arc<watch::Sender<Conditions>>,
}

impl Health {
    /// The health service for a process serving `services` (full gRPC
    /// names), with a link to the hub if `hub_link` (a node; it starts
    /// down). Spawns the task that keeps the statuses in force, so it must
    /// be called inside a Tokio runtime; the task ends when every handle is
    /// dropped.
    pub fn new(
        services: &'static [&'static str],
        hub_link: bool,
    ) -> (
        Self,
        HealthServer<impl tonic_health::pb::health_server::Health>,
    ) {
        let (reporter, server) = tonic_health::server::health_reporter();
        (Self::start(reporter, services, hub_link), server)
    }

    fn start(reporter: HealthReporter, services: &'static [&'static str], hub_link: bool) -> Self {
        let initial = Conditions {
            hub_link: hub_link.then_some(false),
            ..Conditions::default()
        };
        let (tx, rx) = watch::channel(initial);
        tokio::spawn(keep_in_force(reporter, services, rx));
        Self {
            conditions: Arc::new(tx),
        }
    }

    /// The conditions now.
    pub fn conditions(&self) -> Conditions {
        self.conditions.borrow().clone()
    }

    /// The process has begun to shut down: everything goes NOT_SERVING.
    pub fn set_draining(&self) {
        self.conditions.send_if_modified(|c| {
            let changed = !c.draining;
            c.draining = true;
            changed
        });
    }

    /// A node's link to the hub went up or down.
    pub fn set_hub_link(&self, up: bool) {
        self.conditions.send_if_modified(|c| {
            let changed = c.hub_link.is_some() && c.hub_link != Some(up);
            if changed {
                c.hub_link = Some(up);
            }
            changed
        });
    }

    /// The store failed (`Some(why)`) or works again (`None`).
    pub fn set_storage_failure(&self, failure: Option<String>) {
        self.conditions.send_if_modified(|c| {
            let changed = c.storage_failure != failure;
            c.storage_failure = failure;
            changed
        });
    }

    /// Follows a store's failure reports (`liaison_store::Db::failures`)
    /// until the store or this health service goes away.
    pub fn follow_store(&self, mut failures: watch::Receiver<Option<String>>) {
        let health = self.clone();
        tokio::spawn(async move {
            loop {
                let now = failures.borrow_and_update().clone();
                health.set_storage_failure(now);
                tokio::select! {
                    changed = failures.changed() => if changed.is_err() { return },
                    () = health.conditions.closed() => return,
                }
            }
        });
    }
}

/// Puts the statuses of the conditions in force whenever they change.
///
/// Once the process drains, every name has been set NOT_SERVING, and is
/// then removed: each `Watch` stream ends after it has sent NOT_SERVING, so
/// that no health watcher holds the server's graceful shutdown open (and
/// later checks, on connections still open, get NOT_FOUND).
async fn keep_in_force(
    mut reporter: HealthReporter,
    services: &'static [&'static str],
    mut conditions: watch::Receiver<Conditions>,
) {
    let mut before: Vec<(&'static str, ServingStatus)> = Vec::new();
    loop {
        let now = conditions.borrow_and_update().clone();
        let statuses = statuses(services, &now);
        for &(name, s) in &statuses {
            if !before.contains(&(name, s)) {
                reporter.set_service_status(name, s).await;
                if !before.is_empty() {
                    log_change(name, s, &now);
                }
            }
        }
        if now.draining {
            for &(name, _) in &statuses {
                reporter.clear_service_status(name).await;
            }
            return;
        }
        before = statuses;
        if conditions.changed().await.is_err() {
            return;
        }
    }
}

fn log_change(name: &str, s: ServingStatus, now: &Conditions) {
    let shown = if name.is_empty() { "(overall)" } else { name };
    match s {
        ServingStatus::Serving => tracing::info!(service = shown, "health: serving"),
        // A stop asked for is no fault.
        _ if now.draining => tracing::info!(service = shown, "health: not serving (draining)"),
        _ => tracing::warn!(
            service = shown,
            draining = now.draining,
            storage_failure = now.storage_failure.as_deref().unwrap_or("-"),
            "health: not serving"
        ),
    }
}

/// Server reflection (v1 and v1alpha) over the encoded descriptor sets
/// `descriptors`, listing only `services` (full gRPC names) besides the
/// health and reflection services themselves, so that `grpcurl` and
/// `grpcui` work with no proto files at hand.
///
/// # Panics
/// If a descriptor set does not decode: they are generated at build time,
/// so that is a bug in the build.
pub fn reflection(
    descriptors: &'static [u8],
    services: &[&str],
) -> (
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(descriptors)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for s in services {
            b = b.with_service_name(*s);
        }
        b
    };
    (
        builder()
            .build_v1()
            .expect("the built-in descriptor sets decode"),
        builder()
            .build_v1alpha()
            .expect("the built-in descriptor sets decode"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const APIS: &[&str] = &["liaison.v1.Federation", "liaison.v1.Audit"];

    fn of(s: &[(&'static str, ServingStatus)], name: &str) -> ServingStatus {
        s.iter().find(|(n, _)| *n == name).unwrap().1
    }

    #[test]
    fn every_combination_of_conditions_decides_every_name() {
        use ServingStatus::{NotServing, Serving};
        for draining in [false, true] {
            for failing in [None, Some("disk full".to_owned())] {
                for link in [None, Some(false), Some(true)] {
                    let c = Conditions {
                        draining,
                        storage_failure: failing.clone(),
                        hub_link: link,
                    };
                    let s = statuses(APIS, &c);
                    let ready = if !draining && failing.is_none() {
                        Serving
                    } else {
                        NotServing
                    };
                    for name in ["", APIS[0], APIS[1]] {
                        assert_eq!(of(&s, name), ready, "{name} under {c:?}");
                    }
                    match link {
                        None => assert!(s.iter().all(|(n, _)| *n != HUB_LINK), "{c:?}"),
                        Some(up) => assert_eq!(
                            of(&s, HUB_LINK),
                            if up && !draining { Serving } else { NotServing },
                            "{c:?}"
                        ),
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn a_change_of_conditions_is_seen_by_the_health_service() {
        use tonic_health::pb::health_server::Health as _;
        use tonic_health::pb::HealthCheckRequest;
        let reporter = HealthReporter::new();
        let server = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let health = Health::start(reporter, APIS, true);
        let check = |name: &str| {
            let req = tonic::Request::new(HealthCheckRequest {
                service: name.to_owned(),
            });
            async {
                server
                    .check(req)
                    .await
                    .map(|r| r.into_inner().status)
                    .map_err(|s| s.code())
            }
        };
        let serving = ServingStatus::Serving as i32;
        let not = ServingStatus::NotServing as i32;
        // The task puts the first statuses in force shortly after start.
        wait_for(|| async { check(HUB_LINK).await == Ok(not) }).await;
        assert_eq!(check("").await, Ok(serving));
        assert_eq!(
            check("liaison.v1.Nothing").await.unwrap_err(),
            tonic::Code::NotFound
        );
        health.set_hub_link(true);
        wait_for(|| async { check(HUB_LINK).await == Ok(serving) }).await;
        health.set_storage_failure(Some("disk full".into()));
        wait_for(|| async { check(APIS[0]).await == Ok(not) }).await;
        assert_eq!(check(HUB_LINK).await, Ok(serving));
        health.set_storage_failure(None);
        wait_for(|| async { check("").await == Ok(serving) }).await;
        // A watcher sees NOT_SERVING when the process drains, and then the
        // end of its stream, so that it does not hold a graceful shutdown.
        let mut watch = server
            .watch(tonic::Request::new(HealthCheckRequest {
                service: APIS[1].to_owned(),
            }))
            .await
            .unwrap()
            .into_inner();
        use tokio_stream::StreamExt as _;
        assert_eq!(watch.next().await.unwrap().unwrap().status, serving);
        health.set_draining();
        assert_eq!(watch.next().await.unwrap().unwrap().status, not);
        assert!(watch.next().await.is_none(), "the watch ends");
        wait_for(|| async { check(HUB_LINK).await == Err(tonic::Code::NotFound) }).await;
        assert!(health.conditions().draining);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_store_makes_the_process_not_serving_until_it_works_again() {
        let engine = std::sync::Arc::new(liaison_store::testing::Broken::default());
        let db = liaison_store::Db::with_engine(engine.clone());
        let (health, _server) = Health::new(APIS, false);
        health.follow_store(db.failures());
        let write = || {
            let db = db.clone();
            async move {
                db.write(|txn| {
                    txn.put(b"k".to_vec(), b"v".to_vec());
                    Ok::<(), liaison_store::StoreError>(())
                })
                .await
            }
        };
        write().await.unwrap();
        engine.set_broken(true);
        assert!(write().await.is_err());
        wait_for(|| async { health.conditions().storage_failure.is_some() }).await;
        let why = health.conditions().storage_failure.unwrap();
        assert!(why.contains("simulated device failure"), "{why}");
        assert_eq!(
            of(&statuses(APIS, &health.conditions()), ""),
            ServingStatus::NotServing
        );
        engine.set_broken(false);
        write().await.unwrap();
        wait_for(|| async { health.conditions().storage_failure.is_none() }).await;
    }

    async fn wait_for<F, Fut>(mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..1000 {
            if cond().await {
                return;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        panic!("condition not reached in 2 s");
    }
}

//! The node's metrics: counters and histograms updated where officers
//! submit and deliveries arrive, and gauges read from the store at each
//! scrape. Nothing here carries a message's content.

use std::path::PathBuf;
use std::sync::Arc;

use liaison_telemetry::metrics::{
    encode, latency_histogram, register_process, Expiries, Render, StoreMetrics,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::service::NodeState;
use crate::store;

/// Every metric of a node.
#[derive(Debug)]
pub struct NodeMetrics {
    /// Messages officers submitted that the outbox took.
    pub submitted: Counter,
    /// Officer submission calls refused by the per-officer rate limit.
    pub rate_limited: Counter,
    /// Seconds to check and store one officer Submit or SubmitBatch call.
    pub submit_seconds: Histogram,
    /// Deliveries from the hub newly stored in the inbox.
    pub received: Counter,
    /// Deliveries kept in quarantine (the node could not accept them).
    pub quarantined_total: Counter,
    /// The store's size, failure and flush latency.
    pub store: StoreMetrics,
    outbox_pending: Gauge,
    handshakes: liaison_telemetry::metrics::HandshakeCounts,
    inbox_messages: Gauge,
    quarantined: Gauge,
    hub_connected: Gauge,
    witness_size: Gauge,
    witness_verified: Gauge,
    witness_alarm: Gauge,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self {
            submitted: Counter::default(),
            rate_limited: Counter::default(),
            submit_seconds: latency_histogram(),
            received: Counter::default(),
            quarantined_total: Counter::default(),
            store: StoreMetrics::default(),
            outbox_pending: Gauge::default(),
            handshakes: Default::default(),
            inbox_messages: Gauge::default(),
            quarantined: Gauge::default(),
            hub_connected: Gauge::default(),
            witness_size: Gauge::default(),
            witness_verified: Gauge::default(),
            witness_alarm: Gauge::default(),
        }
    }
}

impl NodeMetrics {
    /// A registry of every metric (handles shared with `self`), with the
    /// build and certificate expiry metrics.
    pub fn registry(&self, expiries: &[(&'static str, i64)]) -> (Registry, Expiries) {
        let mut r = Registry::default();
        let e = register_process(&mut r, "node", expiries);
        self.handshakes.register(&mut r);
        r.register(
            "liaison_node_submitted",
            "Messages officers submitted that the outbox took",
            self.submitted.clone(),
        );
        r.register(
            "liaison_node_officer_rate_limited",
            "Officer submission calls refused by the per-officer rate limit ([officers] max_submissions_per_minute)",
            self.rate_limited.clone(),
        );
        r.register_with_unit(
            "liaison_node_submit_duration",
            "Time to check and durably store one officer Submit or SubmitBatch call",
            Unit::Seconds,
            self.submit_seconds.clone(),
        );
        r.register(
            "liaison_node_deliveries_received",
            "Deliveries from the hub newly stored in the inbox",
            self.received.clone(),
        );
        r.register(
            "liaison_node_deliveries_quarantined",
            "Deliveries this node could not accept, kept in quarantine",
            self.quarantined_total.clone(),
        );
        r.register(
            "liaison_node_outbox_pending",
            "Messages in the outbox waiting to be pushed to the hub",
            self.outbox_pending.clone(),
        );
        r.register(
            "liaison_node_inbox_messages",
            "Messages in the inbox",
            self.inbox_messages.clone(),
        );
        r.register(
            "liaison_node_quarantine_size",
            "Deliveries held in quarantine now (an alarm while above 0)",
            self.quarantined.clone(),
        );
        r.register(
            "liaison_node_hub_connected",
            "1 while the node's delivery stream from the hub is open, else 0",
            self.hub_connected.clone(),
        );
        r.register(
            "liaison_node_witness_tree_size",
            "Tree size of the newest checkpoint of the hub's audit log this node has verified",
            self.witness_size.clone(),
        );
        r.register_with_unit(
            "liaison_node_witness_verified_timestamp",
            "When this node last verified a new checkpoint of the hub's audit log, Unix time",
            Unit::Seconds,
            self.witness_verified.clone(),
        );
        r.register(
            "liaison_node_witness_alarm",
            "1 while the witness's alarm is raised (the hub's log failed a check), else 0",
            self.witness_alarm.clone(),
        );
        self.store.register(
            &mut r,
            "1 while the store's last write or flush failed, else 0",
        );
        (r, e)
    }
}

/// What a scrape renders: gauges refreshed from the state, then the text.
pub(crate) fn renderer(
    state: Arc<NodeState>,
    (registry, expiries): (Registry, Expiries),
    data_dir: PathBuf,
    tls: liaison_pki::TlsFiles,
) -> Render {
    Arc::new(move || {
        // The certificates as they are on disk (what a reload takes within
        // seconds).
        if let Ok(e) = liaison_pki::TlsMaterial::load(&tls).and_then(|m| m.expiries()) {
            expiries.set(&e);
        }
        let m = &state.metrics;
        let failures: Vec<(&str, u64)> = state
            .handshake_failures
            .snapshot()
            .into_iter()
            .map(|(reason, n)| (reason.as_str(), n))
            .collect();
        m.handshakes.catch_up(&failures);
        let count = |what: &str, n: Result<u64, liaison_store::StoreError>| match n {
            Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
            Err(e) => {
                tracing::warn!(what, error = %e, "metrics: cannot read the store");
                0
            }
        };
        m.outbox_pending
            .set(count("outbox", store::outbox_pending(&state.db)));
        m.inbox_messages
            .set(count("inbox", store::inbox_count(&state.db)));
        m.quarantined.set(count(
            "quarantine",
            store::quarantine(&state.db, 0).map(|(n, _)| n),
        ));
        match crate::witness::Witness::held(&state.db) {
            Ok(Some(h)) => {
                m.witness_size
                    .set(i64::try_from(h.size).unwrap_or(i64::MAX));
                m.witness_verified.set(h.verified_at_ms / 1000);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the witness"),
        }
        m.witness_alarm
            .set(i64::from(state.witness.alarm().is_some()));
        let c = state.health.conditions();
        m.hub_connected.set(i64::from(c.hub_link == Some(true)));
        m.store.refresh(&data_dir, c.storage_failure.is_some());
        encode(&registry)
    })
}

//! The hub's metrics: counters and histograms updated where routing,
//! delivery and storage happen, and gauges read from the store at each
//! scrape. Names and labels are the contract with the alert rules in
//! `deploy/prometheus/alerts.yml`; nothing here carries a message's
//! content, only body ids, rules and counts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use liaison_telemetry::metrics::{
    encode, latency_histogram, register_process, Expiries, StoreMetrics,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::service::HubState;

/// A peer body.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Peer {
    /// The body id.
    pub peer: String,
}

/// An originating body.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Origin {
    /// The body id.
    pub origin: String,
}

/// One routing decision's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Decision {
    /// The candidate recipient.
    pub peer: String,
    /// `deliver` or `withhold`.
    pub decision: String,
    /// The rule that decided.
    pub rule: String,
}

/// A rule.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    /// The rule's name.
    pub rule: String,
}

/// A refusal's gRPC code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Code {
    /// The code's name, for example `InvalidArgument`.
    pub code: String,
}

/// A deconfliction notice's kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NoticeLabel {
    /// `full` or `blind`.
    pub notice: String,
}

/// A full queue's peer and the limit it reached.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabel {
    /// The recipient whose queue is full.
    pub peer: String,
    /// `messages` or `bytes`.
    pub limit: String,
}

/// Every metric of the hub.
#[derive(Debug)]
pub struct HubMetrics {
    /// New messages stored, by origin (retries of one already stored are
    /// not counted again).
    pub received: Family<Origin, Counter>,
    /// Submissions refused, by gRPC code.
    pub refused: Family<Code, Counter>,
    /// Routing decisions for addressed bodies, by peer, decision and rule.
    pub decisions: Family<Decision, Counter>,
    /// Bodies a message did not address, by rule (counted, not listed).
    pub unaddressed: Family<RuleLabel, Counter>,
    /// Deconfliction notices queued, full or blind.
    pub notices: Family<NoticeLabel, Counter>,
    active_plans: Gauge,
    /// Seconds to validate, route, store and flush one Submit or
    /// SubmitBatch call.
    pub submit_seconds: Histogram,
    /// Seconds from routing a message to its recipient's acknowledgement
    /// (the node has stored it), per delivery.
    pub delivery_seconds: Histogram,
    /// Open delivery subscriptions, by peer.
    pub subscriptions: Family<Peer, Gauge>,
    /// Submissions refused because a recipient's queue was full, by peer
    /// and limit.
    pub queue_full: Family<QuotaLabel, Counter>,
    /// The store's size, failure and flush latency.
    pub store: StoreMetrics,
    queue_depth: Family<Peer, Gauge>,
    queue_bytes: Family<Peer, Gauge>,
    handshakes: liaison_telemetry::metrics::HandshakeCounts,
    queue_oldest: Family<Peer, Gauge>,
    connected: Family<Peer, Gauge>,
    audit_records: Gauge,
    checkpoint_size: Gauge,
    checkpoint_time: Gauge,
    witnessed_size: Gauge,
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self {
            received: Family::default(),
            refused: Family::default(),
            decisions: Family::default(),
            unaddressed: Family::default(),
            notices: Family::default(),
            active_plans: Gauge::default(),
            submit_seconds: latency_histogram(),
            delivery_seconds: latency_histogram(),
            subscriptions: Family::default(),
            store: StoreMetrics::default(),
            queue_depth: Family::default(),
            queue_bytes: Family::default(),
            handshakes: Default::default(),
            queue_full: Family::default(),
            queue_oldest: Family::default(),
            connected: Family::default(),
            audit_records: Gauge::default(),
            checkpoint_size: Gauge::default(),
            checkpoint_time: Gauge::default(),
            witnessed_size: Gauge::default(),
        }
    }
}

impl HubMetrics {
    /// The latest signed checkpoint: its tree size and when it was signed.
    fn checkpoint(&self, size: u64, signed_at_ms: i64) {
        self.checkpoint_size
            .set(i64::try_from(size).unwrap_or(i64::MAX));
        self.checkpoint_time.set(signed_at_ms / 1000);
    }

    /// The largest tree size witnesses have cosigned.
    fn witnessed(&self, size: u64) {
        self.witnessed_size
            .set(i64::try_from(size).unwrap_or(i64::MAX));
    }

    /// A registry of every metric (handles shared with `self`), with the
    /// build and certificate expiry metrics.
    pub fn registry(&self, expiries: &[(&'static str, i64)]) -> (Registry, Expiries) {
        let mut r = Registry::default();
        let e = register_process(&mut r, "hub", expiries);
        self.handshakes.register(&mut r);
        r.register(
            "liaison_hub_messages_received",
            "New messages stored and routed, by originating body",
            self.received.clone(),
        );
        r.register(
            "liaison_hub_submissions_refused",
            "Submissions refused, by gRPC status code",
            self.refused.clone(),
        );
        r.register(
            "liaison_hub_routing_decisions",
            "Routing decisions for addressed bodies, by peer, decision (deliver, withhold) and rule",
            self.decisions.clone(),
        );
        r.register(
            "liaison_hub_unaddressed_bodies",
            "Bodies a message did not address, by rule",
            self.unaddressed.clone(),
        );
        r.register_with_unit(
            "liaison_hub_submit_duration",
            "Time to validate, route, store and flush one Submit or SubmitBatch call",
            Unit::Seconds,
            self.submit_seconds.clone(),
        );
        r.register_with_unit(
            "liaison_hub_delivery_latency",
            "Time from routing a message to its recipient node's acknowledgement",
            Unit::Seconds,
            self.delivery_seconds.clone(),
        );
        r.register(
            "liaison_hub_peer_subscriptions",
            "Open delivery subscriptions, by peer",
            self.subscriptions.clone(),
        );
        r.register(
            "liaison_hub_peer_connected",
            "1 while a peer's node holds a delivery subscription, else 0",
            self.connected.clone(),
        );
        r.register(
            "liaison_hub_queue_depth",
            "Positions in a peer's delivery queue not yet acknowledged",
            self.queue_depth.clone(),
        );
        r.register_with_unit(
            "liaison_hub_queue",
            "Bytes of the messages in a peer's delivery queue not yet acknowledged",
            Unit::Bytes,
            self.queue_bytes.clone(),
        );
        r.register(
            "liaison_hub_queue_full_refusals",
            "Submissions refused because a peer's queue reached its [queues] quota, by peer and limit (messages, bytes)",
            self.queue_full.clone(),
        );
        r.register_with_unit(
            "liaison_hub_queue_oldest_undelivered_age",
            "Age of the oldest position in a peer's queue not yet acknowledged (0 when empty)",
            Unit::Seconds,
            self.queue_oldest.clone(),
        );
        r.register(
            "liaison_hub_deconfliction_notices",
            "Deconfliction notices queued for plans' originators, full or blind",
            self.notices.clone(),
        );
        r.register(
            "liaison_hub_active_plans",
            "Plans the hub deconflicts new ones against (not closed, cancelled or past)",
            self.active_plans.clone(),
        );
        r.register(
            "liaison_audit_records",
            "Durable records in the audit log",
            self.audit_records.clone(),
        );
        r.register(
            "liaison_audit_checkpoint_size",
            "Tree size of the latest signed checkpoint of the audit log",
            self.checkpoint_size.clone(),
        );
        r.register_with_unit(
            "liaison_audit_checkpoint_timestamp",
            "When the latest checkpoint of the audit log was signed, Unix time",
            Unit::Seconds,
            self.checkpoint_time.clone(),
        );
        r.register(
            "liaison_audit_witnessed_size",
            "Largest tree size of the audit log that a witness (a node) has cosigned",
            self.witnessed_size.clone(),
        );
        self.store.register(
            &mut r,
            "1 while the store's last write or flush failed (the audit log with it), else 0",
        );
        (r, e)
    }
}

/// What a scrape renders: gauges refreshed from the state, then the text.
pub(crate) fn renderer(
    state: Arc<HubState>,
    (registry, expiries): (Registry, Expiries),
    data_dir: PathBuf,
    tls: liaison_pki::TlsFiles,
) -> liaison_telemetry::metrics::Render {
    Arc::new(move || {
        refresh(&state, &data_dir);
        // The certificates as they are on disk (what a reload takes within
        // seconds).
        if let Ok(e) = liaison_pki::TlsMaterial::load(&tls).and_then(|m| m.expiries()) {
            expiries.set(&e);
        }
        encode(&registry)
    })
}

fn refresh(state: &HubState, data_dir: &Path) {
    let m = state.metrics();
    let failures: Vec<(&str, u64)> = state
        .handshake_failures()
        .snapshot()
        .into_iter()
        .map(|(reason, n)| (reason.as_str(), n))
        .collect();
    m.handshakes.catch_up(&failures);
    let now = liaison_types::now_ms();
    let gov = state.governance();
    m.queue_depth.clear();
    m.queue_bytes.clear();
    m.queue_oldest.clear();
    m.connected.clear();
    for body in gov.bodies() {
        let peer = Peer {
            peer: body.id.to_string(),
        };
        match state.store().queue_state(&body.id) {
            Ok(q) => {
                m.queue_depth
                    .get_or_create(&peer)
                    .set(i64::try_from(q.depth).unwrap_or(i64::MAX));
                m.queue_bytes
                    .get_or_create(&peer)
                    .set(i64::try_from(q.bytes).unwrap_or(i64::MAX));
                let age_s = q.oldest_ms.map_or(0, |t| (now - t).max(0) / 1000);
                m.queue_oldest.get_or_create(&peer).set(age_s);
            }
            Err(e) => tracing::warn!(peer = %body.id, error = %e, "metrics: cannot read a queue"),
        }
        let open = m.subscriptions.get_or_create(&peer).get();
        m.connected.get_or_create(&peer).set(i64::from(open > 0));
    }
    m.audit_records
        .set(i64::try_from(state.store().durable_audit()).unwrap_or(i64::MAX));
    m.active_plans
        .set(i64::try_from(state.store().active_plans()).unwrap_or(i64::MAX));
    if let Ok(c) = state.store().checkpoint() {
        m.checkpoint(c.checkpoint.size, state.store().checkpoint_signed_at_ms());
    }
    if let Ok(size) = state.store().witnessed_size() {
        m.witnessed(size);
    }
    m.store.refresh(data_dir, state.store_failure().is_some());
}

/// Decrements a peer's subscription gauge when a subscription ends.
#[derive(Debug)]
pub(crate) struct Subscribed(pub Gauge);

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.dec();
    }
}

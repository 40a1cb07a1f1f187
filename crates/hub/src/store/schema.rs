//! The key schema of the hub's store: every key family, in one table, and
//! the only functions that build keys. Nothing outside this module writes a
//! key by hand.
//!
//! | family | key | value | written by |
//! |--------|-----|-------|------------|
//! | envelope | `m/<id>/env` | the envelope as received (encoded proto); after retention erasure, the labels only | submission, retention |
//! | outcome | `m/<id>/out` | the routing outcome (`StoredOutcome`, encoded proto; JSON in stores of earlier versions): digest, decisions, policy version | submission |
//! | retraction | `m/<id>/retracted` | the originator's retraction (JSON) | retraction |
//! | erased | `m/<id>/erased` | when and why its content was erased (JSON) | retention |
//! | erase at | `m/<id>/erase_at` | when its content is to be erased (ms, big-endian) | submission |
//! | forward pair | `m/<id>/fwd/<body>` | the latest forward request of the message to that body (request id) | forwarding |
//! | forward | `f/<request id>` | a forward request and its decision (JSON) | forwarding |
//! | queue | `q/<body>/<seq>` | the positions of a body's delivery queue that one transaction appended, from `seq`: a run of messages and receipts of acknowledgements (`StoredQueueRun` of `StoredQueueEntry`, encoded proto, up to 16 KiB), or one withdrawal or forward request as JSON (`QueueEntry`); stores of earlier versions hold one position per key, proto or JSON. An acknowledgement removes the values it covers whole | submission, embargo release, forwarding, retraction, receipts |
//! | counters | `c/<body>/next`, `c/<body>/acked`, `c/<body>/bytes` | the body's last queue position, acknowledged position, and the bytes of the messages queued and not acknowledged (big-endian; the queue quota) | queue appends, acknowledgement |
//! | held | `h/<not before>/<id>` | deliveries held under embargo (JSON), by release time | submission, embargo release |
//! | retention | `r/<erase at>/<id>` | a content erasure due, by time | submission, retention |
//! | expiry | `x/<expires at>/<id>` | an expiry due to be recorded, by time | submission, retention |
//! | audit log | `l/<seq>` | consecutive leaves of the audit log's Merkle tree written by one transaction, from position `seq`, up to 16 KiB, each with the tree hashes its append created (`LogRun`, encoded proto; see `log.rs`) | every write that decides something |
//! | log head | `meta/log_head` | the first position of the open run (big-endian), then the tree's right edge: its size (big-endian) and the root of each complete subtree on it | audit appends |
//! | cosignature | `w/<size>/<body>` | a witness's cosignature line on the checkpoint of that tree size (C2SP tlog-cosignature) | `Federation.Cosign` |
//! | witnessed | `meta/witnessed` | the largest tree size with a cosignature (big-endian) | `Federation.Cosign` |
//! | chained audit log | `a/<seq>`, `meta/audit_head` | earlier versions' hash-chained records; converted to the Merkle log, then deleted, when the hub opens such a store | (earlier versions) |
//! | body states | `meta/body_states` | administrators' state overrides (JSON) | `Admin.SetBodyState` |
//! | plan | `pl/<plan id>` | the plan as of its latest version (`PlanRecord`, JSON): origin, version, action, labels, window, target hashes | plan submissions |
//! | overlap | `po/<plan id>/<other plan id>` | an overlap of two plans, kept on both sides (`OverlapRecord`, JSON): reference, blind or full | plan submissions |
//!
//! Times and positions in keys are big-endian `u64`, so keys sort by them.

use liaison_store::keys;

/// The envelope of a message.
pub(super) fn env_key(id: &str) -> Vec<u8> {
    format!("m/{id}/env").into_bytes()
}

/// The routing outcome of a message.
pub(super) fn outcome_key(id: &str) -> Vec<u8> {
    format!("m/{id}/out").into_bytes()
}

/// The originator's retraction of a message.
pub(super) fn retracted_key(id: &str) -> Vec<u8> {
    format!("m/{id}/retracted").into_bytes()
}

/// The record of a message's content erasure.
pub(super) fn erased_key(id: &str) -> Vec<u8> {
    format!("m/{id}/erased").into_bytes()
}

/// When a message's content is to be erased.
pub(super) fn erase_at_key(id: &str) -> Vec<u8> {
    format!("m/{id}/erase_at").into_bytes()
}

/// Every latest forward request of a message, by body.
pub(super) fn forward_pair_prefix(message_id: &str) -> Vec<u8> {
    format!("m/{message_id}/fwd/").into_bytes()
}

/// The latest forward request of a message to a body.
pub(super) fn forward_pair_key(message_id: &str, to: &str) -> Vec<u8> {
    format!("m/{message_id}/fwd/{to}").into_bytes()
}

/// A forward request.
pub(super) fn forward_key(request_id: &str) -> Vec<u8> {
    format!("f/{request_id}").into_bytes()
}

/// A body's delivery queue.
pub(super) fn queue_prefix(body: &str) -> Vec<u8> {
    format!("q/{body}/").into_bytes()
}

/// A body's queue counter: `next` (last position) or `acked`.
pub(super) fn counter_key(body: &str, which: &str) -> Vec<u8> {
    format!("c/{body}/{which}").into_bytes()
}

/// Deliveries held under embargo, by release time.
pub(super) const HELD_PREFIX: &[u8] = b"h/";
/// Content erasures due, by time.
pub(super) const RETENTION_PREFIX: &[u8] = b"r/";
/// Expiries due to be recorded, by time.
pub(super) const EXPIRY_PREFIX: &[u8] = b"x/";
/// Witnesses' cosignatures, by tree size and body.
pub(super) const COSIGNATURE_PREFIX: &[u8] = b"w/";
/// The largest cosigned tree size.
pub(super) const WITNESSED: &[u8] = b"meta/witnessed";
/// Each body's latest cosigned tree size: only that cosignature is kept,
/// since it covers every record before it.
pub(super) const COSIGNED_BY_PREFIX: &[u8] = b"wl/";

/// Where the tree size of `body`'s latest cosignature is kept.
pub(super) fn cosigned_by_key(body: &str) -> Vec<u8> {
    let mut k = COSIGNED_BY_PREFIX.to_vec();
    k.extend_from_slice(body.as_bytes());
    k
}

/// A body's cosignature of the checkpoint of `size`.
pub(super) fn cosignature_key(size: u64, body: &str) -> Vec<u8> {
    let mut k = keys::seq_key(COSIGNATURE_PREFIX, size);
    k.push(b'/');
    k.extend_from_slice(body.as_bytes());
    k
}

/// Every cosignature of the checkpoint of `size`.
pub(super) fn cosignature_prefix(size: u64) -> Vec<u8> {
    let mut k = keys::seq_key(COSIGNATURE_PREFIX, size);
    k.push(b'/');
    k
}
/// Every plan.
pub(super) const PLAN_PREFIX: &[u8] = b"pl/";

/// The hub's secret for deconfliction references (32 bytes), made with the
/// first plan that needs one; it never leaves the hub.
pub(super) const REFERENCE_KEY: &[u8] = b"meta/deconfliction_reference_key";

/// A plan as of its latest version.
pub(super) fn plan_key(plan_id: &str) -> Vec<u8> {
    format!("pl/{plan_id}").into_bytes()
}

/// The times of a body's plan versions in the last hour (JSON), for the
/// plan rate.
pub(super) fn plan_rate_key(body: &str) -> Vec<u8> {
    format!("pr/{body}").into_bytes()
}

/// The overlaps recorded for a plan.
pub(super) fn overlap_prefix(plan_id: &str) -> Vec<u8> {
    format!("po/{plan_id}/").into_bytes()
}

/// One overlap of a plan with another.
pub(super) fn overlap_key(plan_id: &str, other: &str) -> Vec<u8> {
    format!("po/{plan_id}/{other}").into_bytes()
}

/// Administrators' state overrides.
pub(super) const BODY_STATES: &[u8] = b"meta/body_states";

/// `prefix`, a time (ms, big-endian) and a message id: a time-keyed index
/// entry (embargo, retention, expiry).
pub(super) fn timed_key(prefix: &[u8], at_ms: i64, id: &str) -> Vec<u8> {
    let mut k = keys::seq_key(prefix, u64::try_from(at_ms).unwrap_or(0));
    k.push(b'/');
    k.extend_from_slice(id.as_bytes());
    k
}

/// A held delivery.
pub(super) fn held_key(not_before_ms: i64, id: &str) -> Vec<u8> {
    timed_key(HELD_PREFIX, not_before_ms, id)
}

/// A content erasure due.
pub(super) fn retention_key(erase_at_ms: i64, id: &str) -> Vec<u8> {
    timed_key(RETENTION_PREFIX, erase_at_ms, id)
}

/// An expiry due to be recorded.
pub(super) fn expiry_key(expires_at_ms: i64, id: &str) -> Vec<u8> {
    timed_key(EXPIRY_PREFIX, expires_at_ms, id)
}

/// The key of a message's envelope, as named in errors.
pub fn env_key_name(id: &str) -> String {
    format!("m/{id}/env")
}

/// The key of a forward request, as named in errors.
pub fn forward_key_name(request_id: &str) -> String {
    format!("f/{request_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_keys_sort_by_time_then_id() {
        assert!(held_key(2, "b") < held_key(10, "a"));
        assert!(held_key(5, "a") < held_key(5, "b"));
        assert!(retention_key(1, "a").starts_with(RETENTION_PREFIX));
        assert!(expiry_key(1, "a").starts_with(EXPIRY_PREFIX));
    }

    #[test]
    fn names_in_errors_are_the_keys() {
        assert_eq!(env_key_name("x").into_bytes(), env_key("x"));
        assert_eq!(forward_key_name("r").into_bytes(), forward_key("r"));
    }
}

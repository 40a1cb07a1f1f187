//! Per-peer queue quotas: how much may wait for one recipient's node
//! before the hub refuses new messages for it (backpressure). The decision
//! is pure; the store reads the counts in the submission's transaction.

use std::collections::BTreeMap;

use liaison_types::BodyId;
use serde::Deserialize;

use super::plan::Enqueue;
use crate::HubError;

/// The `[queues]` table of the hub's configuration: the most that may wait
/// in one recipient's queue, unacknowledged. A submission that would take
/// a queue past either limit is refused whole with `RESOURCE_EXHAUSTED`
/// naming the recipient; the sending node keeps it and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueQuota {
    /// Queue positions (messages, receipts, notices) waiting for one
    /// recipient.
    pub max_messages_per_peer: u64,
    /// Bytes of encoded messages waiting for one recipient.
    pub max_bytes_per_peer: u64,
}

impl Default for QueueQuota {
    fn default() -> Self {
        Self {
            max_messages_per_peer: 2_000_000,
            max_bytes_per_peer: 4 << 30,
        }
    }
}

impl QueueQuota {
    /// No limit (tests of other things, and stores opened without a
    /// configuration).
    pub const UNLIMITED: Self = Self {
        max_messages_per_peer: u64::MAX,
        max_bytes_per_peer: u64::MAX,
    };

    /// Checks the limits against the largest request the hub accepts: a
    /// queue must be able to hold at least one message of any size the
    /// hub takes, or that message could never be delivered.
    pub fn check(&self, max_request_bytes: usize) -> Result<(), String> {
        if self.max_messages_per_peer == 0 {
            return Err(
                "[queues] max_messages_per_peer = 0 would refuse every message; set at least 1"
                    .into(),
            );
        }
        if self.max_bytes_per_peer < max_request_bytes as u64 {
            return Err(format!(
                "[queues] max_bytes_per_peer = {} is smaller than [limits] max_request_bytes = {max_request_bytes}, so a message the hub accepts might never fit its recipient's queue; raise it",
                self.max_bytes_per_peer
            ));
        }
        Ok(())
    }
}

/// What waits in one recipient's queue now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Queued {
    /// Positions not yet acknowledged.
    pub messages: u64,
    /// Bytes of the messages among them.
    pub bytes: u64,
}

/// Whether the message positions of `enqueue` fit the quota, given what
/// waits now for each recipient they name (a recipient missing from
/// `queued` has nothing waiting). Only positions that deliver a message
/// count: receipts and notices are never refused, since refusing them would
/// block an acknowledgement or a deconfliction. The first recipient over a
/// limit is named.
pub fn check(
    quota: &QueueQuota,
    queued: &BTreeMap<BodyId, Queued>,
    enqueue: &[Enqueue],
) -> Result<(), HubError> {
    let mut after: BTreeMap<&BodyId, Queued> = BTreeMap::new();
    for e in enqueue.iter().filter(|e| e.entry.delivers_message()) {
        let q = after
            .entry(&e.body)
            .or_insert_with(|| queued.get(&e.body).copied().unwrap_or_default());
        q.messages = q.messages.saturating_add(1);
        q.bytes = q.bytes.saturating_add(e.entry.bytes);
        let now = queued.get(&e.body).copied().unwrap_or_default();
        if q.messages > quota.max_messages_per_peer {
            return Err(HubError::QueueFull {
                peer: e.body.to_string(),
                setting: "max_messages_per_peer",
                unit: "messages",
                queued: now.messages,
            });
        }
        if q.bytes > quota.max_bytes_per_peer {
            return Err(HubError::QueueFull {
                peer: e.body.to_string(),
                setting: "max_bytes_per_peer",
                unit: "bytes",
                queued: now.bytes,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::QueueEntry;

    fn body(s: &str) -> BodyId {
        BodyId::parse(s).unwrap()
    }

    fn deliver(to: &str, bytes: u64) -> Enqueue {
        Enqueue {
            body: body(to),
            entry: QueueEntry {
                bytes,
                ..QueueEntry::message("m", "alpha", 0)
            },
            audit: None,
        }
    }

    fn quota(messages: u64, bytes: u64) -> QueueQuota {
        QueueQuota {
            max_messages_per_peer: messages,
            max_bytes_per_peer: bytes,
        }
    }

    fn queued(entries: &[(&str, u64, u64)]) -> BTreeMap<BodyId, Queued> {
        entries
            .iter()
            .map(|(b, messages, bytes)| {
                (
                    body(b),
                    Queued {
                        messages: *messages,
                        bytes: *bytes,
                    },
                )
            })
            .collect()
    }

    fn refused(r: Result<(), HubError>) -> (String, &'static str, u64) {
        match r {
            Err(HubError::QueueFull {
                peer,
                setting,
                queued,
                ..
            }) => (peer, setting, queued),
            other => panic!("expected a full queue, got {other:?}"),
        }
    }

    #[test]
    fn up_to_the_limit_fits_and_one_more_is_refused_naming_the_peer() {
        let q = quota(3, 1000);
        let now = queued(&[("bravo", 2, 100)]);
        assert!(check(&q, &now, &[deliver("bravo", 10)]).is_ok());
        let (peer, setting, n) = refused(check(
            &q,
            &now,
            &[deliver("bravo", 10), deliver("bravo", 10)],
        ));
        assert_eq!(
            (peer.as_str(), setting, n),
            ("bravo", "max_messages_per_peer", 2)
        );
    }

    #[test]
    fn the_byte_limit_counts_the_envelopes() {
        let q = quota(100, 1000);
        let now = queued(&[("bravo", 1, 900)]);
        assert!(check(&q, &now, &[deliver("bravo", 100)]).is_ok());
        let (peer, setting, n) = refused(check(&q, &now, &[deliver("bravo", 101)]));
        assert_eq!(
            (peer.as_str(), setting, n),
            ("bravo", "max_bytes_per_peer", 900)
        );
    }

    #[test]
    fn each_recipient_has_its_own_queue() {
        let q = quota(1, 1000);
        let now = queued(&[("bravo", 1, 10)]);
        assert!(check(&q, &now, &[deliver("charlie", 10)]).is_ok());
        let (peer, ..) = refused(check(
            &q,
            &now,
            &[deliver("charlie", 10), deliver("bravo", 1)],
        ));
        assert_eq!(peer, "bravo");
    }

    #[test]
    fn receipts_and_notices_are_never_refused() {
        let q = quota(1, 10);
        let now = queued(&[("bravo", 5, 500)]);
        let receipt = Enqueue {
            body: body("bravo"),
            entry: QueueEntry {
                receipts: vec![crate::store::Receipt {
                    message_id: "m".into(),
                    recipient: "charlie".into(),
                    at_ms: 1,
                    quarantined: None,
                }],
                ..QueueEntry::message("m", "bravo", 0)
            },
            audit: None,
        };
        assert!(check(&q, &now, &[receipt]).is_ok());
    }

    #[test]
    fn counts_never_overflow() {
        let now = queued(&[("bravo", u64::MAX, u64::MAX)]);
        assert!(check(&QueueQuota::UNLIMITED, &now, &[deliver("bravo", u64::MAX)]).is_ok());
    }

    #[test]
    fn the_configuration_must_let_the_largest_message_fit() {
        assert!(QueueQuota::default().check(512 * 1024).is_ok());
        assert!(quota(0, 1 << 20)
            .check(1024)
            .unwrap_err()
            .contains("max_messages_per_peer"));
        let e = quota(10, 1000).check(4096).unwrap_err();
        assert!(
            e.contains("max_bytes_per_peer = 1000") && e.contains("4096"),
            "{e}"
        );
    }
}

//! The third-party rule: forward requests, the originator's consent, and
//! delivery under the same policy checks as a first delivery.

use liaison_proto::v1 as pb;
use liaison_store::{from_json as parse, keys, to_json as json, Db, StoreError, Txn};
use liaison_types::BodyId;
use serde::{Deserialize, Serialize};

use super::*;
use crate::HubError;

// ---------------------------------------------------------------------------
// Forward requests (the third-party rule).
//
// A recipient asks to pass a message on to another body; the originator's
// officers consent or refuse; only then does the hub decide, under the same
// rules as a first delivery, and deliver it. A message whose originator
// waived the rule (`Labels::onward_release_allowed`) is decided at once.
//
// ```text
// request ──▶ pending ──approve──▶ forwarded | withheld (the rules decide)
//   │            └─────refuse────▶ refused
//   └── waived ──────────────────▶ forwarded | withheld
// ```

/// Where a forward request stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ForwardState {
    /// Awaiting the originator's consent.
    Pending,
    /// Consented to (or waived) and delivered.
    Forwarded,
    /// Consented to (or waived), but the governance rules withheld it.
    Withheld,
    /// Refused by the originator.
    Refused,
}

impl ForwardState {
    /// The name in records and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Forwarded => "forwarded",
            Self::Withheld => "withheld",
            Self::Refused => "refused",
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::ForwardState {
        match self {
            Self::Pending => pb::ForwardState::Pending,
            Self::Forwarded => pb::ForwardState::Forwarded,
            Self::Withheld => pb::ForwardState::Withheld,
            Self::Refused => pb::ForwardState::Refused,
        }
    }
}

/// A forward request and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForwardRecord {
    /// The request's id (a UUID).
    pub id: String,
    /// The message.
    pub message_id: String,
    /// Its originating body, which decides.
    pub origin: String,
    /// The body that asks.
    pub requester: String,
    /// Who asked (SPIFFE URI of the officer, or of the requester's node).
    pub requested_by: String,
    /// The body to pass it on to.
    pub to: String,
    /// Why, in the requester's words.
    pub reason: String,
    /// Where it stands.
    pub state: ForwardState,
    /// When it was filed.
    pub requested_at_ms: i64,
    /// Who decided (an officer of the originator, or `hub:third_party_release`).
    #[serde(default)]
    pub decided_by: String,
    /// When, 0 while pending.
    #[serde(default)]
    pub decided_at_ms: i64,
    /// The decider's reason.
    #[serde(default)]
    pub decision_reason: String,
    /// The rule that decided delivery, once approved.
    #[serde(default)]
    pub rule: String,
    /// The rule's reason, once approved.
    #[serde(default)]
    pub rule_reason: String,
}

/// A forward request as the originator's delivery queue carries it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForwardNotice {
    /// The request's id.
    pub request_id: String,
    /// The body that asks.
    pub requester: String,
    /// Who asked.
    pub requested_by: String,
    /// The body to pass it on to.
    pub to: String,
    /// Why.
    pub reason: String,
    /// When it was filed.
    pub requested_at_ms: i64,
}

impl ForwardNotice {
    /// The notice as the delivery stream carries it.
    pub fn to_proto(&self, message_id: &str) -> pb::ForwardRequestNotice {
        pb::ForwardRequestNotice {
            request_id: self.request_id.clone(),
            message_id: message_id.to_owned(),
            requester: self.requester.clone(),
            requested_by: self.requested_by.clone(),
            to: self.to.clone(),
            reason: self.reason.clone(),
            requested_at_ms: self.requested_at_ms,
        }
    }
}

/// Who decided automatically when the originator waived the rule.
pub const WAIVER_ACTOR: &str = "hub:third_party_release";

fn forward_record(txn: &Txn<'_>, request_id: &str) -> Result<Option<ForwardRecord>, StoreError> {
    let key = forward_key(request_id);
    txn.get(&key)?.map(|b| parse(&key, &b)).transpose()
}

/// The forward request filed latest for the message and body, if any.
fn latest_forward(
    txn: &Txn<'_>,
    message_id: &str,
    to: &str,
) -> Result<Option<ForwardRecord>, StoreError> {
    match txn.get(&forward_pair_key(message_id, to))? {
        Some(id) => forward_record(txn, &String::from_utf8_lossy(&id)),
        None => Ok(None),
    }
}

/// The bodies a message was passed on to.
pub(super) fn forwarded_to(txn: &Txn<'_>, message_id: &str) -> Result<Vec<String>, StoreError> {
    let prefix = forward_pair_prefix(message_id);
    let mut out = Vec::new();
    for (_, id) in txn.scan(&prefix, &keys::prefix_end(&prefix), usize::MAX)? {
        if let Some(r) = forward_record(txn, &String::from_utf8_lossy(&id))? {
            if r.state == ForwardState::Forwarded {
                out.push(r.to);
            }
        }
    }
    Ok(out)
}

/// Whether `body` received the message: the hub routed it there, or passed
/// it on there with consent.
fn received(txn: &Txn<'_>, outcome: &RoutedOutcome, body: &str) -> Result<bool, StoreError> {
    if outcome
        .decisions
        .iter()
        .any(|d| d.deliver && d.recipient == body)
    {
        return Ok(true);
    }
    Ok(latest_forward(txn, &outcome.message_id, body)?
        .is_some_and(|r| r.state == ForwardState::Forwarded))
}

/// A forward request, read outside a write (committed data).
pub(super) fn forward(db: &Db, request_id: &str) -> Result<Option<ForwardRecord>, StoreError> {
    let key = forward_key(request_id);
    db.get(&key)?.map(|b| parse(&key, &b)).transpose()
}

/// A recipient's request to pass a message on.
#[derive(Debug, Clone)]
pub struct ForwardAsk {
    /// The stored message.
    pub env: Envelope,
    /// A fresh request id.
    pub request_id: String,
    /// The body that asks.
    pub requester: BodyId,
    /// Who asks (SPIFFE URI), the audit record's actor.
    pub requested_by: String,
    /// The body to pass it on to.
    pub to: BodyId,
    /// Why.
    pub reason: String,
    /// The policy's decision for `to`, used only if the originator waived
    /// the third-party rule.
    pub decision: Decision,
    /// The policy version in force.
    pub policy_version: String,
    /// Now.
    pub now_ms: i64,
}

/// The result of a forward request or decision.
#[derive(Debug)]
pub enum Forward {
    /// Refused; the refusal is audited up to `audit_seq`.
    Refused {
        /// What to answer.
        error: HubError,
        /// The refusal's audit position.
        audit_seq: u64,
    },
    /// Filed or decided.
    Done {
        /// The request now.
        record: Box<ForwardRecord>,
        /// True if nothing changed (a pending request asked for again, a
        /// decision repeated).
        duplicate: bool,
        /// `(body, queue position)` of each queue entry written.
        queued: Vec<(BodyId, u64)>,
        /// The last audit position written (0 if none).
        audit_seq: u64,
    },
}

fn not_allowed(message_id: &str, problem: impl Into<String>) -> HubError {
    HubError::ForwardNotAllowed {
        message_id: message_id.to_owned(),
        problem: problem.into(),
    }
}

fn body_of(value: &str, key: &str) -> Result<BodyId, StoreError> {
    BodyId::parse(value).map_err(|problem| StoreError::Corrupt {
        key: key.to_owned(),
        problem,
    })
}

/// Approves a forward: records the policy's decision, queues the message
/// for `record.to` if it delivers, and audits `forwarded` or
/// `forward_withheld`. Returns the audit position.
#[allow(clippy::too_many_arguments)]
fn settle_approved(
    txn: &mut Txn<'_>,
    env: &Envelope,
    record: &mut ForwardRecord,
    decision: &Decision,
    decided_by: &str,
    why: &str,
    policy_version: &str,
    now_ms: i64,
    queued: &mut Vec<(BodyId, u64)>,
) -> Result<u64, StoreError> {
    record.decided_by = decided_by.to_owned();
    record.decided_at_ms = now_ms;
    record.rule = decision.rule.as_str().to_owned();
    record.rule_reason = decision.reason.clone();
    let mut rec = audit_base(
        env,
        AuditEvent::Forwarded,
        policy_version,
        decided_by,
        now_ms,
    );
    rec.recipient = record.to.clone();
    rec.rule = record.rule.clone();
    if decision.outcome == Outcome::Deliver {
        let to = body_of(
            &record.to,
            &String::from_utf8_lossy(&forward_key(&record.id)),
        )?;
        rec.decision = "deliver".into();
        rec.queue_seq = enqueue(txn, &to, &record.message_id, &record.origin, now_ms)?;
        queued.push((to, rec.queue_seq));
        rec.reason = format!(
            "request {} from {}: {why}; {}",
            record.id, record.requester, decision.reason
        );
        record.state = ForwardState::Forwarded;
    } else {
        rec.event = AuditEvent::ForwardWithheld.into();
        rec.decision = "withhold".into();
        rec.reason = format!(
            "request {} from {}: {why}, but the rules withhold it: {}",
            record.id, record.requester, decision.reason
        );
        record.state = ForwardState::Withheld;
    }
    append_audit(txn, rec)
}

/// Files a recipient's forward request, atomically: refuses (and audits) a
/// requester that never received the message and a message whose TLP
/// marking forbids passing it on; refuses a retracted message, one under
/// embargo and a body that already received it. Otherwise records the
/// request and audits `forward_requested`; then, if the originator waived
/// the third-party rule, decides at once with `ask.decision`, else queues a
/// notice for the originator. Asking again while a request for the same
/// message and body is pending returns that request.
pub(super) async fn request_forward(db: &Db, ask: ForwardAsk) -> Result<Forward, HubError> {
    db.write(move |txn| {
        let id = ask.env.labels.message_id.clone();
        let out_key = outcome_key(&id);
        let Some(out) = txn.get(&out_key)? else {
            return Err(HubError::UnknownMessage(id));
        };
        let outcome: RoutedOutcome = parse(&out_key, &out)?;
        let (to, requester) = (ask.to.as_str(), ask.requester.as_str());
        let mut refusal = audit_base(
            &ask.env,
            AuditEvent::Refused,
            &ask.policy_version,
            &ask.requested_by,
            ask.now_ms,
        );
        refusal.recipient = to.to_owned();
        if !received(txn, &outcome, requester)? {
            refusal.rule = Rule::ForwardNotARecipient.into();
            refusal.reason =
                format!("{requester} asked to pass on to {to} a message it never received");
            return Ok(Forward::Refused {
                error: HubError::NotARecipient {
                    caller: requester.to_owned(),
                    message_id: id,
                },
                audit_seq: append_audit(txn, refusal)?,
            });
        }
        if txn.get(&retracted_key(&id))?.is_some() {
            return Err(not_allowed(&id, "its originator retracted it"));
        }
        if let Some(t) = ask.env.labels.not_before_ms.filter(|t| *t > ask.now_ms) {
            return Err(not_allowed(
                &id,
                format!("it is under embargo until {}; ask again once the embargo ends", liaison_types::rfc3339(t)),
            ));
        }
        if to == outcome.origin || received(txn, &outcome, to)? {
            return Err(not_allowed(&id, format!("{to} already received it")));
        }
        if let Some(tlp @ (liaison_types::Tlp::AmberStrict | liaison_types::Tlp::Red)) =
            ask.env.labels.tlp
        {
            refusal.rule = Rule::ForwardTlp.into();
            refusal.reason = format!(
                "{requester} asked to pass on to {to} a message marked TLP:{tlp}, which never goes beyond the bodies the originator sent it to"
            );
            return Ok(Forward::Refused {
                error: not_allowed(
                    &id,
                    format!("it is marked TLP:{tlp}, which never goes beyond the bodies the originator sent it to"),
                ),
                audit_seq: append_audit(txn, refusal)?,
            });
        }
        if let Some(existing) = latest_forward(txn, &id, to)? {
            if existing.state == ForwardState::Pending {
                return Ok(Forward::Done {
                    record: Box::new(existing),
                    duplicate: true,
                    queued: Vec::new(),
                    audit_seq: 0,
                });
            }
        }
        let mut record = ForwardRecord {
            id: ask.request_id.clone(),
            message_id: id.clone(),
            origin: outcome.origin.clone(),
            requester: requester.to_owned(),
            requested_by: ask.requested_by.clone(),
            to: to.to_owned(),
            reason: ask.reason.clone(),
            state: ForwardState::Pending,
            requested_at_ms: ask.now_ms,
            decided_by: String::new(),
            decided_at_ms: 0,
            decision_reason: String::new(),
            rule: String::new(),
            rule_reason: String::new(),
        };
        let mut requested = audit_base(
            &ask.env,
            AuditEvent::ForwardRequested,
            &ask.policy_version,
            &ask.requested_by,
            ask.now_ms,
        );
        requested.recipient = to.to_owned();
        requested.reason = format!(
            "request {}: {requester} asks to pass it on to {to}: {}",
            record.id, record.reason
        );
        let mut audit_seq = append_audit(txn, requested)?;
        let mut queued = Vec::new();
        if ask.env.labels.onward_release_allowed() {
            record.decision_reason = "the originator allowed onward release".into();
            audit_seq = settle_approved(
                txn,
                &ask.env,
                &mut record,
                &ask.decision,
                WAIVER_ACTOR,
                "the originator allowed onward release without consent (third_party_release)",
                &ask.policy_version,
                ask.now_ms,
                &mut queued,
            )?;
        } else {
            let origin = body_of(&outcome.origin, &String::from_utf8_lossy(&out_key))?;
            let entry = QueueEntry {
                forward_request: Some(ForwardNotice {
                    request_id: record.id.clone(),
                    requester: record.requester.clone(),
                    requested_by: record.requested_by.clone(),
                    to: record.to.clone(),
                    reason: record.reason.clone(),
                    requested_at_ms: record.requested_at_ms,
                }),
                ..QueueEntry::message(&id, &outcome.origin, ask.now_ms)
            };
            let seq = append_to_queue(txn, &origin, &entry)?;
            queued.push((origin, seq));
        }
        txn.put(forward_pair_key(&id, to), record.id.clone().into_bytes());
        txn.put(forward_key(&record.id), json(&record));
        Ok(Forward::Done {
            record: Box::new(record),
            duplicate: false,
            queued,
            audit_seq,
        })
    })
    .await
}

/// The originator's decision on a forward request.
#[derive(Debug, Clone)]
pub struct ForwardVerdict {
    /// The request.
    pub request_id: String,
    /// The deciding node's body; must be the message's origin.
    pub caller: BodyId,
    /// The stored message.
    pub env: Envelope,
    /// Consent (with the policy's decision for the request's body), or
    /// refusal (`None`).
    pub approve: Option<Decision>,
    /// Why.
    pub reason: String,
    /// Who decided (SPIFFE URI), the audit record's actor.
    pub decided_by: String,
    /// The policy version in force.
    pub policy_version: String,
    /// Now.
    pub now_ms: i64,
}

/// Applies the originator's decision to a pending forward request,
/// atomically: a consent is decided by the rules (`forwarded`, queued for
/// the body, or `forward_withheld`), a refusal is audited
/// (`forward_refused`). Deciding again the same way returns the request
/// unchanged; the other way is refused.
pub(super) async fn decide_forward(db: &Db, v: ForwardVerdict) -> Result<Forward, HubError> {
    db.write(move |txn| {
        let Some(mut record) = forward_record(txn, &v.request_id)? else {
            return Err(HubError::UnknownForward(v.request_id));
        };
        if record.origin != v.caller.as_str() {
            return Err(HubError::NotForwardOrigin {
                caller: v.caller.to_string(),
                message_id: record.message_id,
                request_id: record.id,
            });
        }
        let approve = v.approve.is_some();
        match (record.state, approve) {
            (ForwardState::Pending, _) => {}
            (ForwardState::Forwarded | ForwardState::Withheld, true)
            | (ForwardState::Refused, false) => {
                return Ok(Forward::Done {
                    record: Box::new(record),
                    duplicate: true,
                    queued: Vec::new(),
                    audit_seq: 0,
                })
            }
            (state, _) => {
                return Err(HubError::ForwardDecided {
                    request_id: record.id,
                    state: state.as_str(),
                    by: record.decided_by,
                })
            }
        }
        record.decision_reason = v.reason.clone();
        let mut queued = Vec::new();
        let audit_seq = match &v.approve {
            Some(decision) => {
                if txn.get(&retracted_key(&record.message_id))?.is_some() {
                    return Err(not_allowed(
                        &record.message_id,
                        "its originator retracted it; refuse the request instead",
                    ));
                }
                let why = if v.reason.is_empty() {
                    format!("approved by {}", v.decided_by)
                } else {
                    format!("approved by {}: {}", v.decided_by, v.reason)
                };
                settle_approved(
                    txn,
                    &v.env,
                    &mut record,
                    decision,
                    &v.decided_by,
                    &why,
                    &v.policy_version,
                    v.now_ms,
                    &mut queued,
                )?
            }
            None => {
                record.state = ForwardState::Refused;
                record.decided_by = v.decided_by.clone();
                record.decided_at_ms = v.now_ms;
                let mut rec = audit_base(
                    &v.env,
                    AuditEvent::ForwardRefused,
                    &v.policy_version,
                    &v.decided_by,
                    v.now_ms,
                );
                rec.recipient = record.to.clone();
                rec.reason = format!(
                    "request {} from {}: refused by {}: {}",
                    record.id, record.requester, v.decided_by, v.reason
                );
                append_audit(txn, rec)?
            }
        };
        txn.put(forward_key(&record.id), json(&record));
        Ok(Forward::Done {
            record: Box::new(record),
            duplicate: false,
            queued,
            audit_seq,
        })
    })
    .await
}

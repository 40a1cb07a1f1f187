//! The third-party rule: forward requests, the originator's consent, and
//! delivery under the same policy checks as a first delivery.

use liaison_proto::v1 as pb;
use liaison_store::{from_json as parse, keys, Db, StoreError, Txn};
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

/// Approves a forward, purely: records the policy's decision in `record`,
/// and returns the queue append for `record.to` if the rules deliver it, and
/// the `forwarded` (or `forward_withheld`) record.
fn settle_approved(
    env: &Envelope,
    record: &mut ForwardRecord,
    decision: &Decision,
    decided_by: &str,
    why: &str,
    policy_version: &str,
    now_ms: i64,
) -> Result<(Option<Enqueue>, pb::AuditRecord), StoreError> {
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
    rec.decision = decision.outcome.as_str().into();
    if decision.outcome == Outcome::Deliver {
        let to = body_of(&record.to, &forward_key_name(&record.id))?;
        rec.reason = format!(
            "request {} from {}: {why}; {}",
            record.id, record.requester, decision.reason
        );
        record.state = ForwardState::Forwarded;
        let entry = QueueEntry::message(&record.message_id, &record.origin, now_ms);
        // The record that names the position is the one returned.
        Ok((
            Some(Enqueue {
                body: to,
                entry,
                audit: None,
            }),
            rec,
        ))
    } else {
        rec.event = AuditEvent::ForwardWithheld.into();
        rec.reason = format!(
            "request {} from {}: {why}, but the rules withhold it: {}",
            record.id, record.requester, decision.reason
        );
        record.state = ForwardState::Withheld;
        Ok((None, rec))
    }
}

/// What the store knows when a recipient asks to pass a message on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardFacts {
    /// How the message was routed.
    pub outcome: RoutedOutcome,
    /// Whether the requester received it (routed there, or passed on there).
    pub requester_received: bool,
    /// Whether the body asked for received it.
    pub to_received: bool,
    /// Whether its originator retracted it.
    pub retracted: bool,
    /// The latest request for the same message and body, if any.
    pub latest: Option<ForwardRecord>,
}

/// What a forward request or decision comes to, decided purely.
#[derive(Debug)]
pub enum ForwardPlan {
    /// Refused: `error` to answer, and the refusal's audit record.
    Refused {
        /// What to answer.
        error: HubError,
        /// Its record.
        effects: Effects,
    },
    /// Nothing changes: the request as it is.
    Unchanged(Box<ForwardRecord>),
    /// The request filed or decided, and the effects.
    Done {
        /// The request now.
        record: Box<ForwardRecord>,
        /// Writes, queue appends and records.
        effects: Effects,
    },
}

/// Appends a settled approval to `effects`: its record names the queue
/// position of the delivery, if any.
fn push_settled(effects: &mut Effects, settled: (Option<Enqueue>, pb::AuditRecord)) {
    let (enqueue, rec) = settled;
    if let Some(mut e) = enqueue {
        e.audit = Some(effects.audit.len());
        effects.enqueue.push(e);
    }
    effects.audit.push(rec);
}

/// The pure decision of a recipient's forward request.
///
/// Refused and audited: a requester that never received the message, a
/// message whose TLP marking forbids passing it on. Refused: a retracted
/// message, one under embargo, a body that already received it. A pending
/// request for the same message and body is returned unchanged. Otherwise
/// the request is recorded with a `forward_requested` record; if the
/// originator waived the third-party rule it is decided at once with
/// `ask.decision`, else a notice goes to the originator's queue.
pub fn plan_forward_request(
    facts: &ForwardFacts,
    ask: &ForwardAsk,
) -> Result<ForwardPlan, HubError> {
    let id = ask.env.labels.message_id.clone();
    let outcome = &facts.outcome;
    let (to, requester) = (ask.to.as_str(), ask.requester.as_str());
    let mut refusal = audit_base(
        &ask.env,
        AuditEvent::Refused,
        &ask.policy_version,
        &ask.requested_by,
        ask.now_ms,
    );
    refusal.recipient = to.to_owned();
    if !facts.requester_received {
        refusal.rule = Rule::ForwardNotARecipient.into();
        refusal.reason =
            format!("{requester} asked to pass on to {to} a message it never received");
        return Ok(ForwardPlan::Refused {
            error: HubError::NotARecipient {
                caller: requester.to_owned(),
                message_id: id,
            },
            effects: Effects {
                audit: vec![refusal],
                ..Effects::default()
            },
        });
    }
    if facts.retracted {
        return Err(not_allowed(&id, "its originator retracted it"));
    }
    if let Some(t) = ask.env.labels.not_before_ms.filter(|t| *t > ask.now_ms) {
        return Err(not_allowed(
            &id,
            format!(
                "it is under embargo until {}; ask again once the embargo ends",
                liaison_types::rfc3339(t)
            ),
        ));
    }
    if to == outcome.origin || facts.to_received {
        return Err(not_allowed(&id, format!("{to} already received it")));
    }
    if let Some(tlp @ (liaison_types::Tlp::AmberStrict | liaison_types::Tlp::Red)) =
        ask.env.labels.tlp
    {
        refusal.rule = Rule::ForwardTlp.into();
        refusal.reason = format!(
            "{requester} asked to pass on to {to} a message marked TLP:{tlp}, which never goes beyond the bodies the originator sent it to"
        );
        return Ok(ForwardPlan::Refused {
            error: not_allowed(
                &id,
                format!("it is marked TLP:{tlp}, which never goes beyond the bodies the originator sent it to"),
            ),
            effects: Effects {
                audit: vec![refusal],
                ..Effects::default()
            },
        });
    }
    if let Some(existing) = &facts.latest {
        if existing.state == ForwardState::Pending {
            return Ok(ForwardPlan::Unchanged(Box::new(existing.clone())));
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
    let mut effects = Effects {
        audit: vec![requested],
        ..Effects::default()
    };
    if ask.env.labels.onward_release_allowed() {
        record.decision_reason = "the originator allowed onward release".into();
        let settled = settle_approved(
            &ask.env,
            &mut record,
            &ask.decision,
            WAIVER_ACTOR,
            "the originator allowed onward release without consent (third_party_release)",
            &ask.policy_version,
            ask.now_ms,
        )?;
        push_settled(&mut effects, settled);
    } else {
        let origin = body_of(&outcome.origin, &String::from_utf8_lossy(&outcome_key(&id)))?;
        effects.enqueue.push(Enqueue {
            body: origin,
            entry: QueueEntry {
                forward_request: Some(ForwardNotice {
                    request_id: record.id.clone(),
                    requester: record.requester.clone(),
                    requested_by: record.requested_by.clone(),
                    to: record.to.clone(),
                    reason: record.reason.clone(),
                    requested_at_ms: record.requested_at_ms,
                }),
                ..QueueEntry::message(&id, &outcome.origin, ask.now_ms)
            },
            audit: None,
        });
    }
    effects.writes.push(Write::Forward {
        record: Box::new(record.clone()),
        latest: true,
    });
    Ok(ForwardPlan::Done {
        record: Box::new(record),
        effects,
    })
}

/// Applies a forward plan inside a transaction.
fn apply_forward(txn: &mut Txn<'_>, plan: ForwardPlan) -> Result<Forward, HubError> {
    Ok(match plan {
        ForwardPlan::Refused { error, effects } => Forward::Refused {
            error,
            audit_seq: apply(txn, effects)?.audit_seq,
        },
        ForwardPlan::Unchanged(record) => Forward::Done {
            record,
            duplicate: true,
            queued: Vec::new(),
            audit_seq: 0,
        },
        ForwardPlan::Done { record, effects } => {
            let applied = apply(txn, effects)?;
            Forward::Done {
                record,
                duplicate: false,
                queued: applied.queued,
                audit_seq: applied.audit_seq,
            }
        }
    })
}

/// Files a recipient's forward request, atomically
/// ([`plan_forward_request`] decides).
pub(super) async fn request_forward(db: &Db, ask: ForwardAsk) -> Result<Forward, HubError> {
    db.write(move |txn| {
        let id = ask.env.labels.message_id.clone();
        let out_key = outcome_key(&id);
        let Some(out) = txn.get(&out_key)? else {
            return Err(HubError::UnknownMessage(id));
        };
        let outcome = RoutedOutcome::decode(&out_key, &out)?;
        let facts = ForwardFacts {
            requester_received: received(txn, &outcome, ask.requester.as_str())?,
            to_received: received(txn, &outcome, ask.to.as_str())?,
            retracted: txn.get(&retracted_key(&id))?.is_some(),
            latest: latest_forward(txn, &id, ask.to.as_str())?,
            outcome,
        };
        let plan = plan_forward_request(&facts, &ask)?;
        apply_forward(txn, plan)
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

/// The pure decision of the originator's verdict on a forward request
/// `record` (`retracted`: whether the message was retracted since).
///
/// Only the originator decides. A consent is decided by the rules
/// (`forwarded`, queued for the body, or `forward_withheld`); a refusal is
/// recorded (`forward_refused`). Deciding again the same way changes
/// nothing; the other way is refused, and so is consenting to a message
/// retracted since.
pub fn plan_forward_decision(
    record: &ForwardRecord,
    retracted: bool,
    v: &ForwardVerdict,
) -> Result<ForwardPlan, HubError> {
    if record.origin != v.caller.as_str() {
        return Err(HubError::NotForwardOrigin {
            caller: v.caller.to_string(),
            message_id: record.message_id.clone(),
            request_id: record.id.clone(),
        });
    }
    let approve = v.approve.is_some();
    match (record.state, approve) {
        (ForwardState::Pending, _) => {}
        (ForwardState::Forwarded | ForwardState::Withheld, true)
        | (ForwardState::Refused, false) => {
            return Ok(ForwardPlan::Unchanged(Box::new(record.clone())))
        }
        (state, _) => {
            return Err(HubError::ForwardDecided {
                request_id: record.id.clone(),
                state: state.as_str(),
                by: record.decided_by.clone(),
            })
        }
    }
    let mut record = record.clone();
    record.decision_reason = v.reason.clone();
    let mut effects = Effects::default();
    match &v.approve {
        Some(decision) => {
            if retracted {
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
            let settled = settle_approved(
                &v.env,
                &mut record,
                decision,
                &v.decided_by,
                &why,
                &v.policy_version,
                v.now_ms,
            )?;
            push_settled(&mut effects, settled);
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
            effects.audit.push(rec);
        }
    }
    effects.writes.push(Write::Forward {
        record: Box::new(record.clone()),
        latest: false,
    });
    Ok(ForwardPlan::Done {
        record: Box::new(record),
        effects,
    })
}

/// Applies the originator's decision to a forward request, atomically
/// ([`plan_forward_decision`] decides).
pub(super) async fn decide_forward(db: &Db, v: ForwardVerdict) -> Result<Forward, HubError> {
    db.write(move |txn| {
        let Some(record) = forward_record(txn, &v.request_id)? else {
            return Err(HubError::UnknownForward(v.request_id));
        };
        let retracted = txn.get(&retracted_key(&record.message_id))?.is_some();
        let plan = plan_forward_decision(&record, retracted, &v)?;
        apply_forward(txn, plan)
    })
    .await
}

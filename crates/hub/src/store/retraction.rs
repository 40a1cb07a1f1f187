//! Retraction: the originator withdraws a message from its recipients.

use liaison_proto::v1 as pb;
use liaison_store::{from_json as parse, Db, StoreError};
use liaison_types::BodyId;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::*;
use crate::HubError;

/// An originator's retraction of a message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Retraction {
    /// Why (from the originator; no body content).
    pub reason: String,
    /// When.
    pub retracted_at_ms: i64,
}

impl Retraction {
    /// The retraction as the delivery stream carries it.
    pub fn to_proto(&self, message_id: &str, origin: &str) -> pb::Withdrawal {
        pb::Withdrawal {
            message_id: message_id.to_owned(),
            origin: origin.to_owned(),
            cause: pb::WithdrawalCause::Retracted as i32,
            reason: self.reason.clone(),
            withdrawn_at_ms: self.retracted_at_ms,
        }
    }
}

/// The outcome of a retraction.
#[derive(Debug, Clone, Default)]
pub struct Retracted {
    /// The message had already been retracted.
    pub duplicate: bool,
    /// Recipients that will be told.
    pub recipients: Vec<String>,
    /// `(recipient, queue position)` of each retraction queued.
    pub queued: Vec<(BodyId, u64)>,
    /// The last audit position written.
    pub audit_seq: u64,
}

/// The retraction of a message, if its originator withdrew it.
pub(super) fn retraction(db: &Db, message_id: &str) -> Result<Option<Retraction>, StoreError> {
    let key = retracted_key(message_id);
    db.get(&key)?.map(|b| parse(&key, &b)).transpose()
}

/// What the store knows of a message when its originator retracts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetractionFacts {
    /// How it was routed.
    pub outcome: RoutedOutcome,
    /// Bodies it was passed on to with the originator's consent.
    pub forwarded_to: Vec<String>,
    /// Whether it was already retracted.
    pub already_retracted: bool,
    /// When its embargo ends, if its deliveries are still held.
    pub held_until: Option<i64>,
}

/// A retraction asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetractionAsk {
    /// The asking body (from its certificate).
    pub caller: BodyId,
    /// The message.
    pub message_id: String,
    /// Why, in the originator's words.
    pub reason: String,
    /// Who asked (an officer's URI).
    pub actor: String,
    /// When.
    pub now_ms: i64,
}

/// The pure decision of a retraction: who is told, and the effects.
///
/// Only the originator may retract (otherwise [`HubError::NotOrigin`]). A
/// second retraction changes nothing. Deliveries still held under embargo
/// are dropped (their recipients never saw the message: a `retracted`
/// record each says so); every other recipient, and every body it was
/// passed on to, gets the retraction in its queue, with a `retracted`
/// record naming the position. One `retraction` record comes first.
pub fn plan_retraction(
    facts: &RetractionFacts,
    ask: &RetractionAsk,
) -> Result<(Vec<String>, Effects), HubError> {
    let outcome = &facts.outcome;
    if outcome.origin != ask.caller.as_str() {
        return Err(HubError::NotOrigin {
            caller: ask.caller.to_string(),
            message_id: ask.message_id.clone(),
        });
    }
    let mut recipients: Vec<String> = outcome
        .decisions
        .iter()
        .filter(|d| d.deliver)
        .map(|d| d.recipient.clone())
        .collect();
    recipients.extend(facts.forwarded_to.iter().cloned());
    if facts.already_retracted {
        return Ok((recipients, Effects::default()));
    }
    let note = Retraction {
        reason: ask.reason.clone(),
        retracted_at_ms: ask.now_ms,
    };
    let base = pb::AuditRecord {
        at_ms: ask.now_ms,
        message_id: ask.message_id.clone(),
        origin: outcome.origin.clone(),
        policy_version: outcome.policy_version.clone(),
        actor: ask.actor.clone(),
        reason: note.reason.clone(),
        ..Default::default()
    };
    let mut effects = Effects {
        writes: vec![Write::Retraction {
            message_id: ask.message_id.clone(),
            note: note.clone(),
        }],
        audit: vec![pb::AuditRecord {
            event: AuditEvent::Retraction.into(),
            ..base.clone()
        }],
        ..Effects::default()
    };
    if let Some(not_before_ms) = facts.held_until {
        effects.writes.push(Write::DropHeld {
            message_id: ask.message_id.clone(),
            not_before_ms,
        });
    }
    for recipient in &recipients {
        let Ok(body) = BodyId::parse(recipient) else {
            continue;
        };
        let mut rec = pb::AuditRecord {
            event: AuditEvent::Retracted.into(),
            recipient: recipient.clone(),
            ..base.clone()
        };
        if facts.held_until.is_some() {
            rec.reason = format!("withdrawn under embargo, never delivered: {}", note.reason);
        } else {
            effects.enqueue.push(Enqueue {
                body,
                entry: QueueEntry {
                    retraction: Some(note.clone()),
                    ..QueueEntry::message(&ask.message_id, &outcome.origin, ask.now_ms)
                },
                audit: Some(effects.audit.len()),
            });
        }
        effects.audit.push(rec);
    }
    Ok((recipients, effects))
}

/// Withdraws a message for its originator: reads the facts, asks
/// [`plan_retraction`], applies the effects, atomically.
/// A plan message's retraction also withdraws the plan when it carried the
/// plan's latest version (see [`super::deconflict::withdraw_in`]).
#[allow(clippy::too_many_arguments)]
pub(super) async fn retract(
    db: &Db,
    plans: &std::sync::Arc<std::sync::Mutex<Deconfliction>>,
    gov: std::sync::Arc<liaison_policy::Governance>,
    caller: BodyId,
    message_id: String,
    reason: String,
    actor: String,
    now_ms: i64,
) -> Result<Retracted, HubError> {
    let plans = std::sync::Arc::clone(plans);
    db.write(move |txn| {
        let out_key = outcome_key(&message_id);
        let Some(out) = txn.get(&out_key)? else {
            return Err(HubError::UnknownMessage(message_id));
        };
        let outcome = RoutedOutcome::decode(&out_key, &out)?;
        let env_bytes = txn.get(&env_key(&message_id))?.unwrap_or_default();
        let labels = pb::Envelope::decode(env_bytes.as_slice())
            .ok()
            .and_then(|e| e.labels);
        let not_before = labels.as_ref().map_or(0, |l| l.not_before_ms);
        let plan_id = labels.and_then(|l| l.plan).map(|p| p.plan_id);
        let held = not_before > 0 && txn.get(&held_key(not_before, &message_id))?.is_some();
        let facts = RetractionFacts {
            forwarded_to: forwarded_to(txn, &message_id)?,
            already_retracted: txn.get(&retracted_key(&message_id))?.is_some(),
            held_until: held.then_some(not_before),
            outcome,
        };
        let ask = RetractionAsk {
            caller,
            message_id,
            reason,
            actor,
            now_ms,
        };
        let (recipients, effects) = plan_retraction(&facts, &ask)?;
        let mut applied = apply(txn, effects)?;
        if let (Some(plan_id), false) = (plan_id, facts.already_retracted) {
            let ctx = PlanContext {
                gov: &gov,
                hub_body: gov.hub_body(),
                actor: &ask.actor,
                now_ms: ask.now_ms,
            };
            let mut index = plans.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((effects, op)) =
                deconflict::withdraw_in(txn, &mut index, &plan_id, &ask.message_id, &ctx)?
            {
                let more = apply(txn, effects)?;
                applied.queued.extend(more.queued);
                applied.audit_seq = applied.audit_seq.max(more.audit_seq);
                index.apply(op);
            }
        }
        Ok(Retracted {
            duplicate: facts.already_retracted,
            recipients,
            queued: applied.queued,
            audit_seq: applied.audit_seq,
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(held: Option<i64>, already: bool) -> RetractionFacts {
        RetractionFacts {
            outcome: RoutedOutcome {
                message_id: "m".into(),
                origin: "alpha".into(),
                digest: "d".into(),
                accepted_at_ms: 1,
                policy_version: "v1".into(),
                decisions: vec![
                    DecisionRecord {
                        recipient: "bravo".into(),
                        deliver: true,
                        rule: "deliver.all_rules_passed".into(),
                        reason: String::new(),
                    },
                    DecisionRecord {
                        recipient: "charlie".into(),
                        deliver: false,
                        rule: "recipient.mandate".into(),
                        reason: String::new(),
                    },
                ],
                unaddressed: Vec::new(),
                audit_seq: 0,
            },
            forwarded_to: vec!["delta".into()],
            already_retracted: already,
            held_until: held,
        }
    }

    fn ask(caller: &str) -> RetractionAsk {
        RetractionAsk {
            caller: BodyId::parse(caller).unwrap(),
            message_id: "m".into(),
            reason: "wrong".into(),
            actor: "spiffe://t/org/alpha/officer/alice".into(),
            now_ms: 9,
        }
    }

    fn events(e: &Effects) -> Vec<(String, String, u64)> {
        e.audit
            .iter()
            .map(|r| (r.event.clone(), r.recipient.clone(), r.queue_seq))
            .collect()
    }

    #[test]
    fn only_the_originator_may_retract() {
        let err = plan_retraction(&facts(None, false), &ask("bravo")).unwrap_err();
        assert!(matches!(err, HubError::NotOrigin { .. }), "{err}");
    }

    #[test]
    fn every_recipient_and_forwardee_is_told_in_its_queue() {
        let (told, e) = plan_retraction(&facts(None, false), &ask("alpha")).unwrap();
        assert_eq!(told, ["bravo", "delta"], "withheld bodies are not told");
        let queues: Vec<(&str, usize)> = e
            .enqueue
            .iter()
            .map(|q| (q.body.as_str(), q.audit.unwrap()))
            .collect();
        assert_eq!(queues, [("bravo", 1), ("delta", 2)]);
        assert!(e.enqueue.iter().all(|q| q.entry.retraction.is_some()));
        assert_eq!(
            events(&e),
            [
                ("retraction".into(), String::new(), 0),
                ("retracted".into(), "bravo".into(), 0),
                ("retracted".into(), "delta".into(), 0),
            ]
        );
        assert_eq!(e.writes.len(), 1, "the retraction itself; nothing held");
    }

    #[test]
    fn held_deliveries_are_dropped_and_nothing_is_queued() {
        let (_, e) = plan_retraction(&facts(Some(50), false), &ask("alpha")).unwrap();
        assert!(e.enqueue.is_empty());
        assert!(e.writes.contains(&Write::DropHeld {
            message_id: "m".into(),
            not_before_ms: 50
        }));
        assert!(e.audit[1].reason.starts_with("withdrawn under embargo"));
    }

    #[test]
    fn a_second_retraction_changes_nothing() {
        let (told, e) = plan_retraction(&facts(None, true), &ask("alpha")).unwrap();
        assert_eq!(told, ["bravo", "delta"]);
        assert_eq!(e, Effects::default());
    }

    #[tokio::test]
    async fn applied_effects_number_queue_positions_into_their_records() {
        let db = Db::in_memory();
        let (_, effects) = plan_retraction(&facts(None, false), &ask("alpha")).unwrap();
        let applied = db.write(move |txn| apply(txn, effects)).await.unwrap();
        assert_eq!(applied.queued.len(), 2);
        assert_eq!(applied.audit_seq, 3);
        let records = audit_after(&db, 0, u64::MAX, 10).unwrap();
        assert_eq!(records[1].queue_seq, 1);
        assert_eq!(records[1].recipient, "bravo");
        assert!(retraction(&db, "m").unwrap().is_some());
    }
}

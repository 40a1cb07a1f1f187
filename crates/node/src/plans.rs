//! Plans at the node: versions of the body's plans (their targets hashed
//! under the federation's deconfliction key, kept in clear only here), the
//! coordination view (own plans with their notices, the calendar of other
//! bodies' plans that reached the inbox), and what officers do with notices.
//!
//! A plan's id is the message id of its first version. Every version is an
//! ordinary message (routed, audited, retractable); the node numbers the
//! versions, the hub checks them and deconflicts.

use liaison_plans::{DeconflictionKey, TargetKind};
use liaison_proto::v1 as pb;
use liaison_types::{now_ms, Envelope, Identity, Kind, PlanAction, TypedBody};
use prost::Message;

use crate::service::NodeState;
use crate::store::plans::{self as stored, NoticeRecord, OwnPlanRecord, PlanWrite};
use crate::NodeError;

/// Most targets one plan names.
pub const MAX_TARGETS: usize = 256;

/// What the node worked out for a plan version before its envelope exists.
#[derive(Debug)]
pub struct PlanDraft {
    /// The version this one follows (`None`: a new plan).
    after_version: Option<u32>,
    /// A retry of a version already in the outbox: it was checked when it
    /// was first sent, and the store answers it as a duplicate.
    retry: bool,
    /// The targets, normalised: kind and value.
    clear: Vec<(String, String)>,
    /// Their keyed hashes.
    hashes: Vec<pb::TargetHash>,
    /// The same, as the index matches them (to check the plan as the hub
    /// will).
    indexed: std::collections::BTreeSet<liaison_plans::TargetHash>,
}

/// Targets normalised (kind, value), their keyed hashes for the hub, and
/// the same hashes as the index holds them.
type Hashed = (
    Vec<(String, String)>,
    Vec<pb::TargetHash>,
    std::collections::BTreeSet<liaison_plans::TargetHash>,
);

/// The targets given, normalised and hashed.
fn hash_targets(
    key: Option<&DeconflictionKey>,
    targets: &[pb::PlanTarget],
) -> Result<Hashed, NodeError> {
    if targets.is_empty() {
        return Ok(Default::default());
    }
    if targets.len() > MAX_TARGETS {
        return Err(NodeError::BadRequest {
            field: "targets",
            problem: format!(
                "{} targets; a plan names at most {MAX_TARGETS}",
                targets.len()
            ),
        });
    }
    let key = key.ok_or(NodeError::NoDeconflictionKey)?;
    let mut seen = std::collections::BTreeMap::new();
    let mut indexed = std::collections::BTreeSet::new();
    for (i, t) in targets.iter().enumerate() {
        let kind = TargetKind::parse(t.kind.trim()).ok_or_else(|| NodeError::BadRequest {
            field: "targets",
            problem: format!(
                "targets[{i}]: '{}' is not a target kind; expected one of {}",
                liaison_types::text::escape_line_prefix(&t.kind, 40),
                TargetKind::ALL.map(TargetKind::as_str).join(", ")
            ),
        })?;
        // The value is never echoed: it may be the very identifier to keep.
        let bad = |e: liaison_plans::PlanError| NodeError::BadRequest {
            field: "targets",
            problem: format!("targets[{i}]: {e}"),
        };
        let normalised = kind.normalise(&t.value).map_err(bad)?;
        let hash = key.hash(kind, &t.value).map_err(bad)?;
        indexed.insert(hash);
        seen.insert(
            (kind.as_str().to_owned(), normalised),
            pb::TargetHash {
                kind: kind.as_str().to_owned(),
                hash: hash.hash.to_vec(),
            },
        );
    }
    let clear = seen.keys().cloned().collect();
    let hashes = seen.into_values().collect();
    Ok((clear, hashes, indexed))
}

/// A plan the index could not hold, as the officer's error: the field of
/// the message to change.
pub(crate) fn plan_problem(e: liaison_plans::PlanError) -> NodeError {
    NodeError::BadRequest {
        field: e.message_field(),
        problem: e.to_string(),
    }
}

impl NodeState {
    /// Sets a plan message's plan labels (a new plan, or the next version
    /// of one of this body's plans) and hashes its targets; `None` for a
    /// message that is not a plan.
    pub(crate) fn plan_draft(
        &self,
        labels: &mut Option<pb::Labels>,
        targets: &[pb::PlanTarget],
        clear_targets: bool,
    ) -> Result<Option<PlanDraft>, NodeError> {
        if clear_targets && !targets.is_empty() {
            return Err(NodeError::BadRequest {
                field: "clear_targets",
                problem: "given with targets; give the version's targets, or clear them".into(),
            });
        }
        let Some(l) = labels.as_mut() else {
            return Ok(None);
        };
        if !Kind::from_proto(l.kind).is_some_and(Kind::is_plan) {
            if !targets.is_empty() {
                return Err(NodeError::BadRequest {
                    field: "targets",
                    problem: "given for a message that is not a plan; only operational and strategic plans have targets".into(),
                });
            }
            return Ok(None);
        }
        if l.message_id.is_empty() {
            l.message_id = liaison_types::new_message_id();
        }
        let Some(message_id) = liaison_types::normalise_message_id(&l.message_id) else {
            // The envelope's check says what is wrong with it.
            return Ok(None);
        };
        // A retry of a version already in the outbox is that version.
        if let Some((_, env)) = crate::store::outbox_message(&self.db, &message_id)? {
            if let Some(held) = env.labels.and_then(|x| x.plan) {
                l.plan = Some(held);
                let (clear, hashes, indexed) =
                    hash_targets(self.deconfliction_key.as_ref(), targets)?;
                return Ok(Some(PlanDraft {
                    after_version: None,
                    retry: true,
                    clear,
                    hashes,
                    indexed,
                }));
            }
        }
        let asked = l.plan.take().unwrap_or_default();
        if asked.plan_id.trim().is_empty() {
            if !matches!(
                pb::PlanAction::try_from(asked.action),
                Ok(pb::PlanAction::Unspecified | pb::PlanAction::PlanNew)
            ) {
                return Err(NodeError::BadRequest {
                    field: "labels.plan.plan_id",
                    problem: "empty; name the plan to update, close or cancel".into(),
                });
            }
            let (clear, hashes, indexed) = hash_targets(self.deconfliction_key.as_ref(), targets)?;
            l.plan = Some(pb::PlanLabels {
                plan_id: message_id,
                version: 1,
                action: pb::PlanAction::PlanNew as i32,
                contact: asked.contact,
            });
            return Ok(Some(PlanDraft {
                after_version: None,
                retry: false,
                clear,
                hashes,
                indexed,
            }));
        }
        let plan_id = liaison_types::uuid_field("labels.plan.plan_id", &asked.plan_id)?;
        let plan = stored::own_plan(&self.db, &plan_id)?
            .ok_or_else(|| NodeError::UnknownPlan(plan_id.clone()))?;
        // A version follows the last one sent, in force or still waiting.
        let own = plan.latest().clone();
        if plan.next_status() != "active" {
            return Err(NodeError::PlanEnded {
                plan_id,
                status: plan.next_status().to_owned(),
            });
        }
        let Some(version) = plan.last_version.checked_add(1) else {
            return Err(NodeError::PlanEnded {
                plan_id,
                status: "given the last version number there is".into(),
            });
        };
        let action = match pb::PlanAction::try_from(asked.action) {
            Ok(pb::PlanAction::Unspecified | pb::PlanAction::PlanUpdate) => PlanAction::Update,
            Ok(pb::PlanAction::PlanClose) => PlanAction::Close,
            Ok(pb::PlanAction::PlanCancel) => PlanAction::Cancel,
            _ => {
                return Err(NodeError::BadRequest {
                    field: "labels.plan.action",
                    problem: format!("a new plan cannot name an existing plan ({plan_id}); leave plan_id empty for a new plan, or update it"),
                })
            }
        };
        // A version without targets keeps the last version's: their hashes
        // as sent then (so that no key is needed to close a plan), unless
        // it clears them.
        let (clear, hashes, indexed) = if clear_targets {
            Default::default()
        } else if targets.is_empty() {
            let hashes = stored::push_targets(&self.db, &own.message_id)?;
            let mut indexed = std::collections::BTreeSet::new();
            for h in &hashes {
                let (Some(kind), Ok(hash)) = (
                    TargetKind::parse(&h.kind),
                    <[u8; 32]>::try_from(h.hash.as_slice()),
                ) else {
                    return Err(liaison_store::StoreError::corrupt(
                        own.message_id.as_bytes(),
                        "a kept target hash is not a kind and 32 bytes",
                    )
                    .into());
                };
                indexed.insert(liaison_plans::TargetHash { kind, hash });
            }
            (own.targets.clone(), hashes, indexed)
        } else {
            hash_targets(self.deconfliction_key.as_ref(), targets)?
        };
        l.plan = Some(pb::PlanLabels {
            plan_id,
            version,
            action: action.to_proto() as i32,
            contact: if asked.contact.is_empty() {
                own.contact
            } else {
                asked.contact
            },
        });
        Ok(Some(PlanDraft {
            after_version: Some(own.version),
            retry: false,
            clear,
            hashes,
            indexed,
        }))
    }

    /// The plan write of a version whose envelope was built, checked as
    /// the hub will check it (a window within its kind's longest, places
    /// and crime areas within their limits, something to match on), so
    /// that an officer hears of a plan the hub would refuse now, not once
    /// it was queued.
    pub(crate) fn plan_write(
        draft: PlanDraft,
        env: &Envelope,
        typed: &TypedBody,
        caller: &Identity,
    ) -> Result<Option<PlanWrite>, NodeError> {
        let Some(plan) = env.labels.plan.as_ref() else {
            return Ok(None);
        };
        let Some((window_start_ms, window_end_ms)) = typed.plan_window() else {
            return Ok(None);
        };
        let regions: Vec<String> = env
            .labels
            .regions
            .iter()
            .cloned()
            .chain(typed.plan_regions().iter().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let crime_areas: Vec<String> = env
            .labels
            .crime_areas
            .iter()
            .map(|c| c.to_string())
            .collect();
        let shape = liaison_plans::Plan {
            id: plan.plan_id.clone(),
            body: env.labels.origin.clone(),
            kind: if env.labels.kind == Kind::StrategicPlan {
                liaison_plans::PlanKind::Strategic
            } else {
                liaison_plans::PlanKind::Operational
            },
            start_ms: window_start_ms,
            end_ms: window_end_ms,
            places: regions
                .iter()
                .map(|r| format!("region:{r}"))
                .chain(env.labels.countries.iter().map(|c| format!("country:{c}")))
                .collect(),
            crime_areas: crime_areas.iter().cloned().collect(),
            targets: draft.indexed.clone(),
        };
        // A close or a cancellation ends the plan whatever its shape: a
        // plan accepted before a limit existed can always be ended. A retry
        // is answered as the version it repeats.
        if !draft.retry && matches!(plan.action, PlanAction::New | PlanAction::Update) {
            shape.check().map_err(plan_problem)?;
        }
        Ok(Some(PlanWrite {
            own: OwnPlanRecord {
                plan_id: plan.plan_id.clone(),
                version: plan.version,
                message_id: env.labels.message_id.clone(),
                kind: env.labels.kind.as_str().to_owned(),
                action: plan.action.as_str().to_owned(),
                title: typed.title().to_owned(),
                window_start_ms,
                window_end_ms,
                regions,
                countries: env.labels.countries.iter().cloned().collect(),
                crime_areas,
                targets: draft.clear,
                contact: plan.contact.clone(),
                submitted_by: caller.uri(),
                updated_at_ms: now_ms(),
            },
            after_version: draft.after_version,
            targets: draft.hashes,
        }))
    }

    /// The latest version sent of one of this body's plans (in force or
    /// still waiting): its record and envelope.
    fn own_version(
        &self,
        plan_id: &str,
    ) -> Result<(OwnPlanRecord, pb::Envelope, &'static str), NodeError> {
        let plan_id = liaison_types::uuid_field("plan_id", plan_id)?;
        let plan = stored::own_plan(&self.db, &plan_id)?
            .ok_or_else(|| NodeError::UnknownPlan(plan_id.clone()))?;
        let status = plan.next_status();
        let own = plan.latest().clone();
        let (_, env) = crate::store::outbox_message(&self.db, &own.message_id)?
            .ok_or_else(|| NodeError::UnknownPlan(plan_id.clone()))?;
        Ok((own, env, status))
    }

    /// Closes or cancels one of this body's plans: its last version again,
    /// ending it.
    pub(crate) fn end_plan_request(
        &self,
        req: &pb::ChangePlanRequest,
    ) -> Result<pb::OfficerSubmitRequest, NodeError> {
        let action = match pb::PlanAction::try_from(req.action) {
            Ok(a @ (pb::PlanAction::PlanClose | pb::PlanAction::PlanCancel)) => a,
            _ => {
                return Err(NodeError::BadRequest {
                    field: "action",
                    problem:
                        "give PLAN_CLOSE or PLAN_CANCEL; a new version is an update (submit it)"
                            .into(),
                })
            }
        };
        let (own, env, status) = self.own_version(&req.plan_id)?;
        if status != "active" {
            return Err(NodeError::PlanEnded {
                status: status.to_owned(),
                plan_id: own.plan_id,
            });
        }
        let mut labels = env.labels.unwrap_or_default();
        labels.message_id = req.message_id.clone();
        labels.created_at_ms = 0;
        // The ending version is a message of now: an expiry or an embargo
        // the last version had that has passed would refuse it, or hold
        // it, for nothing. One still ahead still holds.
        let now = now_ms();
        if labels.expires_at_ms != 0 && labels.expires_at_ms <= now {
            labels.expires_at_ms = 0;
        }
        if labels.not_before_ms != 0 && labels.not_before_ms <= now {
            labels.not_before_ms = 0;
        }
        let held = labels.plan.take().unwrap_or_default();
        labels.plan = Some(pb::PlanLabels {
            plan_id: own.plan_id.clone(),
            action: action as i32,
            contact: held.contact,
            version: 0,
        });
        let body = pb::Body::decode(env.body.as_slice())
            .map_err(|e| liaison_store::StoreError::corrupt(own.message_id.as_bytes(), e))?;
        Ok(pb::OfficerSubmitRequest {
            clear_targets: false,
            labels: Some(labels),
            body: Some(body),
            targets: Vec::new(),
        })
    }

    /// This body's plans with their notices, newest first.
    pub(crate) fn list_plans(&self, all: bool) -> Result<pb::ListPlansResponse, NodeError> {
        let mut plans = stored::own_plans(&self.db)?;
        plans.sort_by_key(|p| std::cmp::Reverse(p.latest().updated_at_ms));
        let mut notices = stored::notices(&self.db)?;
        notices.sort_by_key(|n| std::cmp::Reverse(n.received_at_ms));
        let now = now_ms();
        let plans = plans
            .into_iter()
            .filter(|p| {
                all || (matches!(p.status(), "active" | "pending") && p.shown.window_end_ms > now)
            })
            .map(|plan| {
                let status = plan.status().to_owned();
                let p = plan.shown;
                let outbox_status = crate::store::read_outbox(&self.db, &p.message_id)?
                    .map(|r| r.status.as_str().to_owned())
                    .unwrap_or_default();
                let notices = notices
                    .iter()
                    .filter(|n| n.notice.plan_id == p.plan_id && (all || n.state != "cleared"))
                    .map(notice_entry)
                    .collect();
                let waiting = plan
                    .waiting
                    .into_iter()
                    .map(|(w, s)| pb::WaitingPlanVersion {
                        version: w.version,
                        message_id: w.message_id,
                        action: w.action,
                        outbox_status: s.as_str().to_owned(),
                        submitted_by: w.submitted_by,
                        updated_at_ms: w.updated_at_ms,
                    })
                    .collect();
                Ok(pb::OwnPlan {
                    status,
                    plan_id: p.plan_id,
                    version: p.version,
                    message_id: p.message_id,
                    kind: p.kind,
                    title: p.title,
                    window_start_ms: p.window_start_ms,
                    window_end_ms: p.window_end_ms,
                    regions: p.regions,
                    countries: p.countries,
                    crime_areas: p.crime_areas,
                    targets: p
                        .targets
                        .into_iter()
                        .map(|(kind, value)| pb::PlanTarget { kind, value })
                        .collect(),
                    contact: p.contact,
                    submitted_by: p.submitted_by,
                    updated_at_ms: p.updated_at_ms,
                    outbox_status,
                    notices,
                    waiting,
                })
            })
            .collect::<Result<Vec<_>, NodeError>>()?;
        Ok(pb::ListPlansResponse { plans })
    }

    /// The calendar: other bodies' plans that reached the inbox (and this
    /// body's own, if asked), filtered, by window start.
    pub(crate) fn calendar(
        &self,
        q: &pb::PlanCalendarRequest,
    ) -> Result<pb::PlanCalendarResponse, NodeError> {
        let now = now_ms();
        let mut plans: Vec<pb::VisiblePlan> = stored::visible_plans(&self.db)?
            .into_iter()
            .map(|v| pb::VisiblePlan {
                status: v.status().to_owned(),
                plan_id: v.plan_id,
                version: v.version,
                message_id: v.message_id,
                origin: v.origin,
                kind: v.kind,
                title: v.title,
                window_start_ms: v.window_start_ms,
                window_end_ms: v.window_end_ms,
                regions: v.regions,
                countries: v.countries,
                crime_areas: v.crime_areas,
                classification: v.classification,
                contact: v.contact,
                received_at_ms: v.received_at_ms,
            })
            .collect();
        if q.include_own {
            // Only what the hub holds: a version still waiting is in no
            // one else's calendar either.
            for plan in stored::own_plans(&self.db)?
                .into_iter()
                .filter(|p| p.accepted)
            {
                let status = plan.status().to_owned();
                let p = plan.shown;
                plans.push(pb::VisiblePlan {
                    status,
                    plan_id: p.plan_id,
                    version: p.version,
                    message_id: p.message_id.clone(),
                    origin: self.body.to_string(),
                    kind: p.kind,
                    title: p.title,
                    window_start_ms: p.window_start_ms,
                    window_end_ms: p.window_end_ms,
                    regions: p.regions,
                    countries: p.countries,
                    crime_areas: p.crime_areas,
                    classification: crate::store::read_outbox(&self.db, &p.message_id)?
                        .map(|r| r.classification)
                        .unwrap_or_default(),
                    contact: p.contact,
                    received_at_ms: p.updated_at_ms,
                });
            }
        }
        let region = q.region.trim();
        let country = q.country.trim().to_ascii_uppercase();
        let area = q.crime_area.trim();
        plans.retain(|p| {
            (q.include_ended || (p.status == "active" && p.window_end_ms > now))
                && (q.from_ms == 0 || p.window_end_ms > q.from_ms)
                && (q.until_ms == 0 || p.window_start_ms < q.until_ms)
                && (region.is_empty() || p.regions.iter().any(|r| r == region))
                && (country.is_empty() || p.countries.contains(&country))
                && (area.is_empty() || p.crime_areas.iter().any(|c| c == area))
        });
        plans.sort_by(|a, b| (a.window_start_ms, &a.plan_id).cmp(&(b.window_start_ms, &b.plan_id)));
        Ok(pb::PlanCalendarResponse { plans })
    }

    /// An officer acknowledges or resolves a notice.
    pub(crate) async fn update_notice(
        &self,
        caller: &Identity,
        req: pb::UpdateNoticeRequest,
    ) -> Result<pb::NoticeEntry, NodeError> {
        let state = match req.state.trim() {
            "acknowledged" => "acknowledged",
            "resolved" => "resolved",
            other => {
                return Err(NodeError::BadRequest {
                    field: "state",
                    problem: format!(
                        "'{}' is not a notice state to set; give acknowledged or resolved",
                        liaison_types::text::escape_line_prefix(other, 40)
                    ),
                })
            }
        };
        let note = req.note.trim().to_owned();
        if state == "resolved" {
            liaison_types::text::check_line("note", &note, 1, 500)?;
        } else if !note.is_empty() {
            return Err(NodeError::BadRequest {
                field: "note",
                problem: "given to acknowledge; a note goes with resolving".into(),
            });
        }
        let reference = req.reference.trim().to_owned();
        let rec =
            stored::handle_notice(&self.db, reference, state, note, caller.uri(), now_ms()).await?;
        Ok(notice_entry(&rec))
    }

    /// The message asking the other side of a notice for contact: an alert
    /// to the other plan's body (full notice) or to the hub's body, its
    /// deconfliction desk (blind), under the labels of this body's plan.
    pub(crate) fn contact_request(
        &self,
        req: &pb::RequestContactRequest,
    ) -> Result<pb::OfficerSubmitRequest, NodeError> {
        let reference = req.reference.trim();
        let notice = stored::notice(&self.db, reference)?
            .ok_or_else(|| NodeError::UnknownNotice(reference.to_owned()))?
            .notice;
        liaison_types::text::check_text("text", &req.text, 1, 2000)?;
        let to = if notice.blind || notice.other_body.is_empty() {
            let gov = self.governance().ok_or_else(|| {
                NodeError::Hub(tonic::Status::unavailable(
                    "the hub's governance is not known yet, so its deconfliction desk is not either; try again once the node is linked to the hub",
                ))
            })?;
            gov.hub_body().to_string()
        } else {
            notice.other_body.clone()
        };
        let (own, env, _) = self.own_version(&notice.plan_id)?;
        let plan_labels = env.labels.unwrap_or_default();
        let about = if notice.blind {
            format!("our plan {} (version {})", own.plan_id, notice.plan_version)
        } else {
            format!(
                "our plan {} (version {}) and your plan {} (version {})",
                own.plan_id, notice.plan_version, notice.other_plan_id, notice.other_plan_version
            )
        };
        let text = format!(
            "{}\n\nDeconfliction reference {}: {about}. Contact: {}",
            req.text.trim_end(),
            notice.reference,
            if own.contact.is_empty() {
                format!("{}'s liaison desk", self.body)
            } else {
                own.contact.clone()
            }
        );
        Ok(pb::OfficerSubmitRequest {
            clear_targets: false,
            labels: Some(pb::Labels {
                message_id: req.message_id.clone(),
                kind: pb::Kind::Alert as i32,
                classification: plan_labels.classification,
                crime_areas: plan_labels.crime_areas,
                regions: plan_labels.regions,
                countries: plan_labels.countries,
                priority: pb::Priority::Priority as i32,
                releasable_to: vec![to],
                ..Default::default()
            }),
            body: Some(pb::Body {
                title: format!("Deconfliction contact request {}", notice.reference),
                content: Some(pb::body::Content::Alert(pb::Alert {
                    text,
                    indicators: Vec::new(),
                    ack_requested: true,
                })),
            }),
            targets: Vec::new(),
        })
    }
}

/// A notice as the officer API shows it.
pub(crate) fn notice_entry(n: &NoticeRecord) -> pb::NoticeEntry {
    pb::NoticeEntry {
        notice: Some(n.notice.clone()),
        state: n.state.clone(),
        handled_by: n.handled_by.clone(),
        handled_at_ms: n.handled_at_ms,
        note: n.note.clone(),
        received_at_ms: n.received_at_ms,
    }
}

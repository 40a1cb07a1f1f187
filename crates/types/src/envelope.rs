//! The envelope: routing labels, validated, plus the body bytes.

use std::collections::BTreeSet;

use liaison_proto::v1 as pb;
use prost::Message;

use crate::label::require;
use crate::text::{check_line, check_text};
use crate::{
    BodyId, Classification, CrimeArea, Grading, HandlingCode, Kind, Priority, Tlp, ValidationError,
};

/// Largest encoded body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
const MAX_LIST: usize = 64;
const MAX_TEXT: usize = 64 * 1024;
const MAX_SHORT: usize = 200;

/// Validated routing labels. Their JSON form is what a `received` audit
/// record keeps, so that past routing can be replayed under another policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Labels {
    /// Unique message id (a UUID).
    pub message_id: String,
    /// Originating body.
    pub origin: BodyId,
    /// Kind of the body.
    pub kind: Kind,
    /// Classification on the common scale.
    pub classification: Classification,
    /// The originator's native marking, if given.
    pub marking: Option<String>,
    /// Crime areas, at least one, without duplicates.
    pub crime_areas: BTreeSet<CrimeArea>,
    /// Region codes.
    pub regions: BTreeSet<String>,
    /// ISO 3166-1 alpha-2 country codes.
    pub countries: BTreeSet<String>,
    /// Whether the body holds personal data.
    pub personal_data: bool,
    /// If non-empty, the only bodies that may receive the message.
    pub releasable_to: BTreeSet<BodyId>,
    /// Bodies that must never receive the message.
    pub excluded: BTreeSet<BodyId>,
    /// Handling priority.
    pub priority: Priority,
    /// Creation time, ms since the epoch.
    pub created_at_ms: i64,
    /// Expiry, ms since the epoch, if any.
    pub expires_at_ms: Option<i64>,
    /// Whether recipients may pass it on without the originator's consent.
    pub third_party_release: bool,
    /// TLP 2.0 marking, if any.
    #[serde(default)]
    pub tlp: Option<Tlp>,
    /// Handling code, if any.
    #[serde(default)]
    pub handling_code: Option<HandlingCode>,
    /// The H3 restriction in words (only with H3).
    #[serde(default)]
    pub handling_restriction: Option<String>,
    /// 4x4 source and information grading, if graded.
    #[serde(default)]
    pub grading: Option<Grading>,
    /// Embargo: not delivered before this time, ms since the epoch.
    #[serde(default)]
    pub not_before_ms: Option<i64>,
    /// Working groups the message is addressed to.
    #[serde(default)]
    pub working_groups: BTreeSet<String>,
    /// For a plan: which plan, which version, and what it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanLabels>,
}

/// What a plan message does to its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanAction {
    /// A new plan (version 1).
    New,
    /// A new version of an active plan.
    Update,
    /// The plan ended as planned.
    Close,
    /// The plan was called off.
    Cancel,
}

impl PlanAction {
    /// The name used in records and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Update => "update",
            Self::Close => "close",
            Self::Cancel => "cancel",
        }
    }

    /// From the proto enum value.
    pub fn from_proto(value: i32) -> Option<Self> {
        match pb::PlanAction::try_from(value).ok()? {
            pb::PlanAction::Unspecified => None,
            pb::PlanAction::PlanNew => Some(Self::New),
            pb::PlanAction::PlanUpdate => Some(Self::Update),
            pb::PlanAction::PlanClose => Some(Self::Close),
            pb::PlanAction::PlanCancel => Some(Self::Cancel),
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::PlanAction {
        match self {
            Self::New => pb::PlanAction::PlanNew,
            Self::Update => pb::PlanAction::PlanUpdate,
            Self::Close => pb::PlanAction::PlanClose,
            Self::Cancel => pb::PlanAction::PlanCancel,
        }
    }

    /// Whether the plan is still active after this message.
    pub fn leaves_active(self) -> bool {
        matches!(self, Self::New | Self::Update)
    }
}

/// A plan message's place in its plan's life.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanLabels {
    /// The plan (a UUID, lower-case), the same for every version.
    pub plan_id: String,
    /// Its version, from 1.
    pub version: u32,
    /// What this message does.
    pub action: PlanAction,
    /// Whom to contact about it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub contact: String,
}

impl PlanLabels {
    /// Validates the plan labels of a message of kind `kind`.
    pub fn parse(p: pb::PlanLabels, kind: Kind) -> Result<Self, ValidationError> {
        if !kind.is_plan() {
            return Err(ValidationError::new(
                "labels.plan",
                format!("set on a {kind}; only operational and strategic plans carry plan labels"),
            ));
        }
        let plan_id = crate::uuid_field("labels.plan.plan_id", &p.plan_id)?;
        let action = require(
            "labels.plan.action",
            PlanAction::from_proto(p.action),
            "PLAN_NEW, PLAN_UPDATE, PLAN_CLOSE, PLAN_CANCEL",
        )?;
        match (action, p.version) {
            (_, 0) => {
                return Err(ValidationError::new(
                    "labels.plan.version",
                    "0; versions count from 1",
                ))
            }
            (PlanAction::New, v) if v != 1 => {
                return Err(ValidationError::new(
                    "labels.plan.version",
                    format!("{v} for a new plan; a new plan is version 1"),
                ))
            }
            (a, 1) if a != PlanAction::New => {
                return Err(ValidationError::new(
                    "labels.plan.version",
                    format!(
                        "1 for a plan {}; version 1 is the new plan, later messages are 2 and up",
                        a.as_str()
                    ),
                ))
            }
            _ => {}
        }
        check_line("labels.plan.contact", &p.contact, 0, MAX_SHORT)?;
        Ok(Self {
            plan_id,
            version: p.version,
            action,
            contact: p.contact,
        })
    }
}

impl From<&PlanLabels> for pb::PlanLabels {
    fn from(p: &PlanLabels) -> Self {
        pb::PlanLabels {
            plan_id: p.plan_id.clone(),
            version: p.version,
            action: p.action.to_proto() as i32,
            contact: p.contact.clone(),
        }
    }
}

impl Labels {
    /// Whether a recipient may pass the message on without asking: only if
    /// the originator said so and no marking forbids it.
    pub fn onward_release_allowed(&self) -> bool {
        self.third_party_release
            && !matches!(self.tlp, Some(Tlp::AmberStrict | Tlp::Red))
            && self.handling_code != Some(HandlingCode::H2)
    }
}

/// A routing decision as hub and nodes keep it on disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DecisionRecord {
    /// Recipient body.
    pub recipient: String,
    /// Whether it was delivered.
    pub deliver: bool,
    /// Deciding rule id.
    pub rule: String,
    /// Why.
    pub reason: String,
}

impl From<&pb::RoutingDecision> for DecisionRecord {
    fn from(d: &pb::RoutingDecision) -> Self {
        Self {
            recipient: d.recipient.clone(),
            deliver: d.outcome == pb::Outcome::Deliver as i32,
            rule: d.rule.clone(),
            reason: d.reason.clone(),
        }
    }
}

impl From<&DecisionRecord> for pb::RoutingDecision {
    fn from(d: &DecisionRecord) -> Self {
        Self {
            recipient: d.recipient.clone(),
            outcome: if d.deliver {
                pb::Outcome::Deliver
            } else {
                pb::Outcome::Withhold
            } as i32,
            rule: d.rule.clone(),
            reason: d.reason.clone(),
        }
    }
}

/// Bodies a message did not address, counted under one rule, as hub and
/// nodes keep them on disk (see `liaison_policy::Unaddressed`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnaddressedRecord {
    /// Deciding rule id.
    pub rule: String,
    /// How many bodies.
    pub bodies: u32,
    /// Why.
    pub reason: String,
}

impl From<&pb::Unaddressed> for UnaddressedRecord {
    fn from(u: &pb::Unaddressed) -> Self {
        Self {
            rule: u.rule.clone(),
            bodies: u.bodies,
            reason: u.reason.clone(),
        }
    }
}

impl From<&UnaddressedRecord> for pb::Unaddressed {
    fn from(u: &UnaddressedRecord) -> Self {
        Self {
            rule: u.rule.clone(),
            bodies: u.bodies,
            reason: u.reason.clone(),
        }
    }
}

/// A validated envelope: labels and the encoded body they describe.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Routing labels.
    pub labels: Labels,
    /// The encoded [`pb::Body`], checked to decode and to match the kind.
    pub body: Vec<u8>,
}

/// A decoded body, checked against the labels.
#[derive(Debug, Clone, PartialEq)]
pub struct TypedBody(pub pb::Body);

impl TypedBody {
    /// Validates a body against its labels.
    pub fn validate(body: pb::Body, labels: &Labels) -> Result<Self, ValidationError> {
        check_line("body.title", &body.title, 1, MAX_SHORT)?;
        let Some(content) = &body.content else {
            return Err(ValidationError::new(
                "body.content",
                format!("missing; a {} needs its body", labels.kind),
            ));
        };
        let found = match content {
            pb::body::Content::ThreatAssessment(t) => {
                check_text("body.threat_assessment.summary", &t.summary, 1, MAX_TEXT)?;
                check_text(
                    "body.threat_assessment.assessment",
                    &t.assessment,
                    0,
                    MAX_TEXT,
                )?;
                check_line("body.threat_assessment.horizon", &t.horizon, 0, MAX_SHORT)?;
                Kind::ThreatAssessment
            }
            pb::body::Content::OperationalPlan(p) => {
                validate_plan(p, labels)?;
                Kind::OperationalPlan
            }
            pb::body::Content::StrategicPlan(p) => {
                check_text("body.strategic_plan.summary", &p.summary, 1, MAX_TEXT)?;
                check_line("body.strategic_plan.cycle", &p.cycle, 1, MAX_SHORT)?;
                check_window(
                    "body.strategic_plan",
                    p.window_start_ms,
                    p.window_end_ms,
                    "cycle",
                )?;
                Kind::StrategicPlan
            }
            pb::body::Content::Alert(a) => {
                check_text("body.alert.text", &a.text, 1, MAX_TEXT)?;
                check_list("body.alert.indicators", &a.indicators)?;
                for (i, ind) in a.indicators.iter().enumerate() {
                    check_line(&format!("body.alert.indicators[{i}]"), ind, 1, MAX_SHORT)?;
                }
                Kind::Alert
            }
        };
        if found != labels.kind {
            return Err(ValidationError::new(
                "body.content",
                format!("is a {found} body but labels.kind is {}", labels.kind),
            ));
        }
        Ok(Self(body))
    }

    /// Decodes and validates body bytes against the labels.
    pub fn decode(bytes: &[u8], labels: &Labels) -> Result<Self, ValidationError> {
        let body = pb::Body::decode(bytes)
            .map_err(|e| ValidationError::new("body", format!("not a valid encoded Body: {e}")))?;
        Self::validate(body, labels)
    }

    /// The title.
    pub fn title(&self) -> &str {
        &self.0.title
    }

    /// The regions a plan's body names (an operational plan's; none for
    /// other kinds).
    pub fn plan_regions(&self) -> &[String] {
        match &self.0.content {
            Some(pb::body::Content::OperationalPlan(p)) => &p.regions,
            _ => &[],
        }
    }

    /// A plan's window (start, end), ms since the epoch; `None` for other
    /// kinds.
    pub fn plan_window(&self) -> Option<(i64, i64)> {
        match &self.0.content {
            Some(pb::body::Content::OperationalPlan(p)) => {
                Some((p.window_start_ms, p.window_end_ms))
            }
            Some(pb::body::Content::StrategicPlan(p)) => Some((p.window_start_ms, p.window_end_ms)),
            _ => None,
        }
    }

    /// The bodies the content names (an operational plan's lead body), with
    /// the field that names each, so a caller can check they exist.
    pub fn named_bodies(&self) -> Vec<(&'static str, &str)> {
        match &self.0.content {
            Some(pb::body::Content::OperationalPlan(p)) => {
                vec![("body.operational_plan.lead_body", p.lead_body.as_str())]
            }
            _ => Vec::new(),
        }
    }
}

/// A plan's window: a start after 1970 and an end after it.
fn check_window(field: &str, start: i64, end: i64, what: &str) -> Result<(), ValidationError> {
    if start <= 0 {
        return Err(ValidationError::new(
            format!("{field}.window_start_ms"),
            format!("missing; give the start of the {what}"),
        ));
    }
    if end <= start {
        return Err(ValidationError::new(
            format!("{field}.window_end_ms"),
            format!(
                "{end} is not after window_start_ms {start}; the window must end after it starts"
            ),
        ));
    }
    Ok(())
}

fn validate_plan(p: &pb::OperationalPlan, labels: &Labels) -> Result<(), ValidationError> {
    check_text("body.operational_plan.summary", &p.summary, 1, MAX_TEXT)?;
    check_window(
        "body.operational_plan",
        p.window_start_ms,
        p.window_end_ms,
        "operational window",
    )?;
    BodyId::parse(&p.lead_body)
        .map_err(|e| ValidationError::new("body.operational_plan.lead_body", e))?;
    if p.regions.is_empty() {
        return Err(ValidationError::new(
            "body.operational_plan.regions",
            "empty; name at least one region the operation covers",
        ));
    }
    check_list("body.operational_plan.regions", &p.regions)?;
    for (i, r) in p.regions.iter().enumerate() {
        check_region(&format!("body.operational_plan.regions[{i}]"), r)?;
    }
    if p.crime_areas.is_empty() {
        return Err(ValidationError::new(
            "body.operational_plan.crime_areas",
            "empty; name at least one crime area the operation targets",
        ));
    }
    check_list("body.operational_plan.crime_areas", &p.crime_areas)?;
    for (i, c) in p.crime_areas.iter().enumerate() {
        let field = format!("body.operational_plan.crime_areas[{i}]");
        let area = CrimeArea::parse(c).map_err(|e| ValidationError::new(&field, e))?;
        if !labels.crime_areas.contains(&area) {
            return Err(ValidationError::new(
                field,
                format!("'{area}' is not in labels.crime_areas; the labels must cover every crime area of the plan"),
            ));
        }
    }
    check_list("body.operational_plan.target_ids", &p.target_ids)?;
    for (i, t) in p.target_ids.iter().enumerate() {
        check_line(
            &format!("body.operational_plan.target_ids[{i}]"),
            t,
            1,
            MAX_SHORT,
        )?;
    }
    Ok(())
}

impl TryFrom<pb::Labels> for Labels {
    type Error = ValidationError;

    fn try_from(l: pb::Labels) -> Result<Self, ValidationError> {
        let message_id = check_message_id(&l.message_id)?;
        let origin =
            BodyId::parse(&l.origin).map_err(|e| ValidationError::new("labels.origin", e))?;
        let kind = require(
            "labels.kind",
            Kind::from_proto(l.kind),
            "THREAT_ASSESSMENT, OPERATIONAL_PLAN, ALERT, STRATEGIC_PLAN",
        )?;
        let classification = require(
            "labels.classification",
            Classification::from_proto(l.classification),
            "UNCLASSIFIED, OFFICIAL_USE, RESTRICTED, CONFIDENTIAL, SECRET",
        )?;
        let priority = require(
            "labels.priority",
            Priority::from_proto(l.priority),
            "ROUTINE, PRIORITY, IMMEDIATE, FLASH",
        )?;
        let marking = if l.marking.is_empty() {
            None
        } else {
            check_line("labels.marking", &l.marking, 1, 80)?;
            Some(l.marking)
        };
        if l.crime_areas.is_empty() {
            return Err(ValidationError::new(
                "labels.crime_areas",
                "empty; name at least one crime area so the hub can check mandates",
            ));
        }
        check_list("labels.crime_areas", &l.crime_areas)?;
        let crime_areas = l
            .crime_areas
            .iter()
            .enumerate()
            .map(|(i, c)| {
                CrimeArea::parse(c)
                    .map_err(|e| ValidationError::new(format!("labels.crime_areas[{i}]"), e))
            })
            .collect::<Result<BTreeSet<_>, _>>()?;
        check_list("labels.regions", &l.regions)?;
        for (i, r) in l.regions.iter().enumerate() {
            check_region(&format!("labels.regions[{i}]"), r)?;
        }
        check_list("labels.countries", &l.countries)?;
        for (i, c) in l.countries.iter().enumerate() {
            if !crate::identity::is_iso_country(c) {
                return Err(ValidationError::new(
                    format!("labels.countries[{i}]"),
                    format!(
                        "'{}' is not an ISO 3166-1 alpha-2 country code (for example NG, FR, BR)",
                        c.escape_debug()
                    ),
                ));
            }
        }
        let releasable_to = body_set("labels.releasable_to", &l.releasable_to)?;
        let excluded = body_set("labels.excluded", &l.excluded)?;
        if let Some(both) = releasable_to.intersection(&excluded).next() {
            return Err(ValidationError::new(
                "labels.excluded",
                format!("'{both}' is both releasable and excluded; name it in one list only"),
            ));
        }
        if l.created_at_ms <= 0 {
            return Err(ValidationError::new(
                "labels.created_at_ms",
                "missing; the originating node sets the creation time",
            ));
        }
        let expires_at_ms = match l.expires_at_ms {
            0 => None,
            e if e <= l.created_at_ms => {
                return Err(ValidationError::new(
                    "labels.expires_at_ms",
                    format!(
                        "{e} is not after created_at_ms {}; give a future expiry or 0 for none",
                        l.created_at_ms
                    ),
                ))
            }
            e => Some(e),
        };
        let not_before_ms = match l.not_before_ms {
            0 => None,
            n if n < 0 => {
                return Err(ValidationError::new(
                    "labels.not_before_ms",
                    format!("{n} is before 1970; give a time or 0 for no embargo"),
                ))
            }
            n if expires_at_ms.is_some_and(|e| n >= e) => {
                return Err(ValidationError::new(
                    "labels.not_before_ms",
                    format!(
                    "embargo {n} is not before the expiry {}; the message would never be delivered",
                    l.expires_at_ms
                ),
                ))
            }
            n => Some(n),
        };
        let tlp = Tlp::from_proto(l.tlp).map_err(|_| {
            ValidationError::new(
                "labels.tlp",
                format!(
                    "{} is not a tlp; expected CLEAR, GREEN, AMBER, AMBER+STRICT or RED, or none",
                    l.tlp
                ),
            )
        })?;
        if tlp == Some(Tlp::Red) && releasable_to.is_empty() {
            return Err(ValidationError::new(
                "labels.releasable_to",
                "empty; TLP:RED goes only to named recipients, so name them in releasable_to",
            ));
        }
        let handling_code = HandlingCode::from_proto(l.handling_code).map_err(|_| {
            ValidationError::new(
                "labels.handling_code",
                format!(
                    "{} is not a handling code; expected H0, H1, H2 or H3, or none",
                    l.handling_code
                ),
            )
        })?;
        let handling_restriction = match (handling_code, l.handling_restriction.trim().is_empty()) {
            (Some(HandlingCode::H3), true) => {
                return Err(ValidationError::new(
                    "labels.handling_restriction",
                    "empty; handling code H3 needs the restriction stated in words",
                ))
            }
            (Some(HandlingCode::H3), false) => {
                check_line(
                    "labels.handling_restriction",
                    &l.handling_restriction,
                    1,
                    MAX_SHORT,
                )?;
                Some(l.handling_restriction)
            }
            (_, false) => {
                return Err(ValidationError::new(
                    "labels.handling_restriction",
                    "given without handling code H3; state a restriction only with H3",
                ))
            }
            (_, true) => None,
        };
        if l.third_party_release {
            let forbidden = match (tlp, handling_code) {
                (Some(t @ (Tlp::AmberStrict | Tlp::Red)), _) => Some(t.to_string()),
                (_, Some(HandlingCode::H2)) => Some("handling code H2".to_owned()),
                _ => None,
            };
            if let Some(why) = forbidden {
                return Err(ValidationError::new(
                    "labels.third_party_release",
                    format!("true, but {why} forbids passing the message on; leave it false"),
                ));
            }
        }
        let grading = match l.grading.trim() {
            "" => None,
            g => Some(Grading::parse(g).map_err(|e| ValidationError::new("labels.grading", e))?),
        };
        check_list("labels.working_groups", &l.working_groups)?;
        for (i, g) in l.working_groups.iter().enumerate() {
            check_region(&format!("labels.working_groups[{i}]"), g).map_err(|_| {
                ValidationError::new(
                    format!("labels.working_groups[{i}]"),
                    format!(
                        "'{}' is not a working group id; use lowercase letters, digits or hyphens",
                        truncate(g)
                    ),
                )
            })?;
        }
        let plan = l.plan.map(|p| PlanLabels::parse(p, kind)).transpose()?;
        Ok(Self {
            plan,
            message_id,
            origin,
            kind,
            classification,
            marking,
            crime_areas,
            regions: l.regions.into_iter().collect(),
            countries: l.countries.into_iter().collect(),
            personal_data: l.personal_data,
            releasable_to,
            excluded,
            priority,
            created_at_ms: l.created_at_ms,
            expires_at_ms,
            third_party_release: l.third_party_release,
            tlp,
            handling_code,
            handling_restriction,
            grading,
            not_before_ms,
            working_groups: l.working_groups.into_iter().collect(),
        })
    }
}

impl From<&Labels> for pb::Labels {
    fn from(l: &Labels) -> Self {
        pb::Labels {
            message_id: l.message_id.clone(),
            origin: l.origin.to_string(),
            kind: l.kind.to_proto() as i32,
            classification: l.classification.to_proto() as i32,
            marking: l.marking.clone().unwrap_or_default(),
            crime_areas: l.crime_areas.iter().map(|c| c.to_string()).collect(),
            regions: l.regions.iter().cloned().collect(),
            countries: l.countries.iter().cloned().collect(),
            personal_data: l.personal_data,
            releasable_to: l.releasable_to.iter().map(|b| b.to_string()).collect(),
            excluded: l.excluded.iter().map(|b| b.to_string()).collect(),
            priority: l.priority.to_proto() as i32,
            created_at_ms: l.created_at_ms,
            expires_at_ms: l.expires_at_ms.unwrap_or(0),
            third_party_release: l.third_party_release,
            tlp: l.tlp.map_or(0, |t| t.to_proto() as i32),
            handling_code: l.handling_code.map_or(0, |h| h.to_proto() as i32),
            handling_restriction: l.handling_restriction.clone().unwrap_or_default(),
            grading: l.grading.map(|g| g.to_string()).unwrap_or_default(),
            not_before_ms: l.not_before_ms.unwrap_or(0),
            working_groups: l.working_groups.iter().cloned().collect(),
            plan: l.plan.as_ref().map(pb::PlanLabels::from),
        }
    }
}

impl TryFrom<pb::Envelope> for Envelope {
    type Error = ValidationError;

    fn try_from(e: pb::Envelope) -> Result<Self, ValidationError> {
        Self::parse(e).map(|(env, _)| env)
    }
}

impl Envelope {
    /// Validates an envelope and returns it with its decoded body, for
    /// callers that check the body further (an operational plan's lead body).
    pub fn parse(e: pb::Envelope) -> Result<(Self, TypedBody), ValidationError> {
        let labels: Labels = e
            .labels
            .ok_or_else(|| {
                ValidationError::new("labels", "missing; every envelope carries its labels")
            })?
            .try_into()?;
        if e.body.len() > MAX_BODY_BYTES {
            return Err(ValidationError::new(
                "body",
                format!(
                    "{} bytes is over the limit of {MAX_BODY_BYTES} bytes",
                    e.body.len()
                ),
            ));
        }
        let typed = TypedBody::decode(&e.body, &labels)?;
        Ok((
            Self {
                labels,
                body: e.body,
            },
            typed,
        ))
    }
}

impl From<&Envelope> for pb::Envelope {
    fn from(e: &Envelope) -> Self {
        pb::Envelope {
            labels: Some((&e.labels).into()),
            body: e.body.clone(),
        }
    }
}

/// A new message id: a UUID of version 7, whose first 48 bits are the
/// time in milliseconds. Stores key messages by id (`m/<id>/..` at the hub,
/// `o/<id>` and `i/<id>` at a node), so ids that sort by time make each
/// write land at the end of the key space, on the same few leaves (which
/// stay small: large values are in the value log), where random ids
/// (version 4) would touch a different leaf per message. The time it
/// reveals is no secret: `created_at_ms` travels beside it. Ids an officer
/// chooses may be any UUID.
pub fn new_message_id() -> String {
    uuid::Uuid::now_v7().hyphenated().to_string()
}

/// The canonical form of a message id (lowercase hyphenated UUID), or `None`
/// if it is not a UUID.
pub fn normalise_message_id(id: &str) -> Option<String> {
    uuid::Uuid::parse_str(id)
        .ok()
        .map(|u| u.hyphenated().to_string())
}

/// A UUID field of a request or a message (a message id, a request id) in
/// its stored form; `field` names it in the error, which is the same
/// wherever the field arrives.
pub fn uuid_field(field: &str, value: &str) -> Result<String, ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(
            field,
            "empty; give a UUID (for example 1b4e28ba-2fa1-11d2-883f-0016d3cca427)",
        ));
    }
    normalise_message_id(value).ok_or_else(|| {
        ValidationError::new(
            field,
            format!(
                "'{}' is not a UUID (for example 1b4e28ba-2fa1-11d2-883f-0016d3cca427)",
                truncate(value)
            ),
        )
    })
}

fn check_message_id(id: &str) -> Result<String, ValidationError> {
    uuid_field("labels.message_id", id)
}

fn body_set(field: &str, ids: &[String]) -> Result<BTreeSet<BodyId>, ValidationError> {
    check_list(field, ids)?;
    ids.iter()
        .enumerate()
        .map(|(i, b)| {
            BodyId::parse(b).map_err(|e| ValidationError::new(format!("{field}[{i}]"), e))
        })
        .collect()
}

fn check_list(field: &str, items: &[String]) -> Result<(), ValidationError> {
    if items.len() > MAX_LIST {
        return Err(ValidationError::new(
            field,
            format!("{} entries is over the limit of {MAX_LIST}", items.len()),
        ));
    }
    Ok(())
}

fn check_region(field: &str, r: &str) -> Result<(), ValidationError> {
    let ok = (2..=40).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!(
                "'{}' is not a region code; use 2 to 40 lowercase letters, digits or hyphens (for example west-africa)",
                truncate(r)
            ),
        ))
    }
}

fn truncate(s: &str) -> String {
    let t: String = s.chars().take(40).collect();
    t.escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// New ids are canonical version-7 UUIDs that sort by creation time,
    /// and every one is new.
    #[test]
    fn new_message_ids_sort_by_time_and_are_canonical() {
        let first = new_message_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later: Vec<String> = (0..1000).map(|_| new_message_id()).collect();
        for id in &later {
            assert!(*id > first, "{id} sorts before {first}");
            assert_eq!(normalise_message_id(id).as_deref(), Some(id.as_str()));
            assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
        }
        let distinct: std::collections::BTreeSet<&String> = later.iter().collect();
        assert_eq!(distinct.len(), later.len());
    }

    fn labels() -> pb::Labels {
        pb::Labels {
            message_id: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
            origin: "europol".into(),
            kind: pb::Kind::Alert as i32,
            classification: pb::Classification::Restricted as i32,
            crime_areas: vec!["cybercrime".into()],
            countries: vec!["FR".into()],
            priority: pb::Priority::Flash as i32,
            created_at_ms: 1_700_000_000_000,
            ..Default::default()
        }
    }

    fn alert() -> Vec<u8> {
        pb::Body {
            title: "ransomware wave".into(),
            content: Some(pb::body::Content::Alert(pb::Alert {
                text: "patch now".into(),
                ..Default::default()
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_valid_envelope_converts() {
        let e = Envelope::try_from(pb::Envelope {
            labels: Some(labels()),
            body: alert(),
        })
        .unwrap();
        assert_eq!(e.labels.kind, Kind::Alert);
        let back = pb::Labels::from(&e.labels);
        assert_eq!(back, labels());
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = Box<dyn Fn(&mut pb::Labels)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("labels.message_id", Box::new(|l| l.message_id = "x".into())),
            ("labels.origin", Box::new(|l| l.origin = "EU".into())),
            ("labels.kind", Box::new(|l| l.kind = 0)),
            ("labels.classification", Box::new(|l| l.classification = 42)),
            ("labels.priority", Box::new(|l| l.priority = 0)),
            ("labels.crime_areas", Box::new(|l| l.crime_areas.clear())),
            (
                "labels.crime_areas[1]",
                Box::new(|l| l.crime_areas.push("jaywalking".into())),
            ),
            (
                "labels.countries[1]",
                Box::new(|l| l.countries.push("XX".into())),
            ),
            (
                "labels.regions[0]",
                Box::new(|l| l.regions.push("West Africa".into())),
            ),
            (
                "labels.excluded",
                Box::new(|l| {
                    l.releasable_to = vec!["sco".into()];
                    l.excluded = vec!["sco".into()];
                }),
            ),
            ("labels.created_at_ms", Box::new(|l| l.created_at_ms = 0)),
            ("labels.expires_at_ms", Box::new(|l| l.expires_at_ms = 5)),
            (
                "labels.releasable_to",
                Box::new(|l| l.releasable_to = vec!["a".repeat(2); 65]),
            ),
            ("labels.tlp", Box::new(|l| l.tlp = 9)),
            (
                "labels.releasable_to",
                Box::new(|l| l.tlp = pb::Tlp::Red as i32),
            ),
            ("labels.handling_code", Box::new(|l| l.handling_code = 7)),
            (
                "labels.handling_restriction",
                Box::new(|l| l.handling_code = pb::HandlingCode::H3 as i32),
            ),
            (
                "labels.handling_restriction",
                Box::new(|l| l.handling_restriction = "court use only".into()),
            ),
            (
                "labels.third_party_release",
                Box::new(|l| {
                    l.tlp = pb::Tlp::AmberStrict as i32;
                    l.third_party_release = true;
                }),
            ),
            (
                "labels.third_party_release",
                Box::new(|l| {
                    l.handling_code = pb::HandlingCode::H2 as i32;
                    l.third_party_release = true;
                }),
            ),
            ("labels.grading", Box::new(|l| l.grading = "D5".into())),
            ("labels.not_before_ms", Box::new(|l| l.not_before_ms = -1)),
            (
                "labels.not_before_ms",
                Box::new(|l| {
                    l.expires_at_ms = l.created_at_ms + 10;
                    l.not_before_ms = l.created_at_ms + 10;
                }),
            ),
            (
                "labels.working_groups[0]",
                Box::new(|l| l.working_groups = vec!["Strategic WG".into()]),
            ),
        ];
        for (field, mutate) in cases {
            let mut l = labels();
            mutate(&mut l);
            let err = Envelope::try_from(pb::Envelope {
                labels: Some(l),
                body: alert(),
            })
            .unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn handling_labels_are_carried_and_restrict_onward_release() {
        let mut l = labels();
        l.tlp = pb::Tlp::Red as i32;
        l.releasable_to = vec!["interpol".into()];
        l.handling_code = pb::HandlingCode::H3 as i32;
        l.handling_restriction = "not for court use".into();
        l.grading = "b2".into();
        l.not_before_ms = l.created_at_ms + 1_000;
        l.working_groups = vec!["strategic".into()];
        let e = Envelope::try_from(pb::Envelope {
            labels: Some(l.clone()),
            body: alert(),
        })
        .unwrap();
        assert_eq!(e.labels.tlp, Some(Tlp::Red));
        assert_eq!(
            e.labels.grading.map(|g| g.to_string()).as_deref(),
            Some("B2")
        );
        assert!(!e.labels.onward_release_allowed());
        let back = pb::Labels::from(&e.labels);
        l.grading = "B2".into();
        assert_eq!(back, l);
        // JSON (the audit form) round-trips too.
        let json = serde_json::to_string(&e.labels).unwrap();
        assert_eq!(serde_json::from_str::<Labels>(&json).unwrap(), e.labels);

        let mut open = labels();
        open.third_party_release = true;
        open.tlp = pb::Tlp::Green as i32;
        let e = Envelope::try_from(pb::Envelope {
            labels: Some(open),
            body: alert(),
        })
        .unwrap();
        assert!(e.labels.onward_release_allowed());
    }

    #[test]
    fn body_must_match_kind_and_be_bounded() {
        let mut l = labels();
        l.kind = pb::Kind::ThreatAssessment as i32;
        let err = Envelope::try_from(pb::Envelope {
            labels: Some(l),
            body: alert(),
        })
        .unwrap_err();
        assert_eq!(err.field, "body.content");
        let err = Envelope::try_from(pb::Envelope {
            labels: Some(labels()),
            body: vec![0xff; 10],
        })
        .unwrap_err();
        assert_eq!(err.field, "body");
        let err = Envelope::try_from(pb::Envelope {
            labels: Some(labels()),
            body: vec![0; MAX_BODY_BYTES + 1],
        })
        .unwrap_err();
        assert!(err.problem.contains("over the limit"), "{err}");
    }

    #[test]
    fn a_plan_is_checked_for_consistency() {
        let mut l = labels();
        l.kind = pb::Kind::OperationalPlan as i32;
        let plan = |start, end, area: &str| {
            pb::Body {
                title: "op".into(),
                content: Some(pb::body::Content::OperationalPlan(pb::OperationalPlan {
                    summary: "s".into(),
                    window_start_ms: start,
                    window_end_ms: end,
                    lead_body: "europol".into(),
                    regions: vec!["west-africa".into()],
                    crime_areas: vec![area.into()],
                    target_ids: vec![],
                })),
            }
            .encode_to_vec()
        };
        assert!(Envelope::try_from(pb::Envelope {
            labels: Some(l.clone()),
            body: plan(10, 20, "cybercrime")
        })
        .is_ok());
        let err = Envelope::try_from(pb::Envelope {
            labels: Some(l.clone()),
            body: plan(20, 10, "cybercrime"),
        })
        .unwrap_err();
        assert_eq!(err.field, "body.operational_plan.window_end_ms");
        let err = Envelope::try_from(pb::Envelope {
            labels: Some(l),
            body: plan(10, 20, "drugs"),
        })
        .unwrap_err();
        assert_eq!(err.field, "body.operational_plan.crime_areas[0]");
    }
}

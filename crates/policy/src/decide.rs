//! The routing decision: for one message, deliver or withhold for every
//! candidate recipient, and the rule that decided.
//!
//! Deny by default: a recipient gets the message only if every rule allows
//! it. The rules run in the fixed order of [`Rule::ALL`]; the first that
//! refuses names the decision, so an auditor always sees the most basic
//! reason (a suspended peer is reported as such, not as lacking clearance).
//! Reasons name the values compared (levels, kinds, crime areas, body ids),
//! never anything from the message body.

use std::fmt;
use std::str::FromStr;

use liaison_proto::v1 as pb;
use liaison_types::{BodyId, Labels, Tlp};

use crate::config::{BodyPolicy, Governance, State};

/// A governance rule, or the outcome of passing them all.
///
/// Each has a stable dotted id ([`Rule::as_str`]) written to audit records
/// and shown by the CLI; the ids never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// The originator is suspended, revoked or unknown: nothing it sends is
    /// delivered.
    OriginState,
    /// The recipient is suspended or revoked.
    PeerState,
    /// The message expired before it was routed.
    MessageExpired,
    /// The originator excluded the recipient.
    OriginatorExclusion,
    /// The message is TLP:RED and the recipient is not named in it.
    HandlingTlpRed,
    /// The originator restricted the message to other bodies.
    OriginatorReleasability,
    /// The message is addressed to working groups the recipient is not in.
    WorkingGroupMembership,
    /// The originator's own outbound rules refuse the recipient.
    OriginatorOutbound,
    /// The recipient's clearance is below the classification.
    RecipientClearance,
    /// The recipient does not accept this kind of message.
    RecipientKind,
    /// No crime area of the message is in the recipient's mandate.
    RecipientMandate,
    /// The recipient is an observer and the message exceeds what observers
    /// receive.
    ObserverRestriction,
    /// Personal data without a personal-data agreement between originator
    /// and recipient.
    AgreementPersonalData,
    /// Every rule allowed delivery.
    AllRulesPassed,
    // Rules the hub records outside routing decisions (see
    // [`Rule::RECORDED`]).
    /// A forward request from a body the message was never delivered to.
    ForwardNotARecipient,
    /// A forward request the message's TLP or handling code forbids.
    ForwardTlp,
    /// A node named another body as a message's origin.
    IdentityOriginMismatch,
    /// A body tried to retract a message it did not originate.
    IdentityNotOriginator,
    /// A message's content was erased at the end of its retention period.
    Retention,
    /// A new governance version was put in force.
    PolicyReload,
    /// A governance reload was refused; the version in force stays.
    PolicyReloadRefused,
    /// A body tried to change a plan it did not originate.
    PlanOriginator,
    /// A plan message out of turn: a new plan that exists, an update of a
    /// plan the hub does not hold or that ended, a version not above the
    /// one held, a change of kind.
    PlanLifecycle,
    /// A body sent more plan versions (new plans and updates) in the last
    /// hour than the governance's `[plans] max_versions_per_hour`.
    PlanRate,
    /// Two plans overlap and each may be released to the other body: both
    /// originators get a full notice.
    DeconflictionFull,
    /// Two plans overlap but the policy withholds one from the other body:
    /// both originators get a blind notice.
    DeconflictionBlind,
}

impl Rule {
    /// The rules the hub records outside routing decisions: refusals of
    /// identity and forwarding, erasure, governance changes.
    pub const RECORDED: [Rule; 12] = [
        Self::ForwardNotARecipient,
        Self::ForwardTlp,
        Self::IdentityOriginMismatch,
        Self::IdentityNotOriginator,
        Self::Retention,
        Self::PolicyReload,
        Self::PolicyReloadRefused,
        Self::PlanOriginator,
        Self::PlanLifecycle,
        Self::PlanRate,
        Self::DeconflictionFull,
        Self::DeconflictionBlind,
    ];

    /// Every routing rule in evaluation order, then
    /// [`Rule::AllRulesPassed`].
    pub const ALL: [Rule; 14] = [
        Self::OriginState,
        Self::PeerState,
        Self::MessageExpired,
        Self::OriginatorExclusion,
        Self::HandlingTlpRed,
        Self::OriginatorReleasability,
        Self::WorkingGroupMembership,
        Self::OriginatorOutbound,
        Self::RecipientClearance,
        Self::RecipientKind,
        Self::RecipientMandate,
        Self::ObserverRestriction,
        Self::AgreementPersonalData,
        Self::AllRulesPassed,
    ];

    /// The stable dotted id, as in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OriginState => "origin.state",
            Self::PeerState => "peer.state",
            Self::MessageExpired => "message.expired",
            Self::OriginatorExclusion => "originator.exclusion",
            Self::HandlingTlpRed => "handling.tlp_red",
            Self::OriginatorReleasability => "originator.releasability",
            Self::WorkingGroupMembership => "working_group.membership",
            Self::OriginatorOutbound => "originator.outbound",
            Self::RecipientClearance => "recipient.clearance",
            Self::RecipientKind => "recipient.kind",
            Self::RecipientMandate => "recipient.mandate",
            Self::ObserverRestriction => "observer.restriction",
            Self::AgreementPersonalData => "agreement.personal_data",
            Self::AllRulesPassed => "deliver.all_rules_passed",
            Self::ForwardNotARecipient => "forward.not_a_recipient",
            Self::ForwardTlp => "forward.tlp",
            Self::IdentityOriginMismatch => "identity.origin_mismatch",
            Self::IdentityNotOriginator => "identity.not_originator",
            Self::Retention => "retention",
            Self::PolicyReload => "policy.reload",
            Self::PolicyReloadRefused => "policy.reload_refused",
            Self::PlanOriginator => "plan.originator",
            Self::PlanLifecycle => "plan.lifecycle",
            Self::PlanRate => "plan.rate",
            Self::DeconflictionFull => "deconfliction.full",
            Self::DeconflictionBlind => "deconfliction.blind",
        }
    }
}

impl From<Rule> for String {
    fn from(rule: Rule) -> Self {
        rule.as_str().to_owned()
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .chain(Self::RECORDED)
            .find(|r| r.as_str() == s.trim())
            .ok_or_else(|| {
                format!(
                    "unknown rule '{}'; expected one of {}",
                    s.escape_debug(),
                    Self::ALL.map(Rule::as_str).join(", ")
                )
            })
    }
}

const EXPLANATIONS: [(Rule, &str); 14] = [
    (
        Rule::OriginState,
        "an originator that is suspended, revoked or not configured has nothing delivered",
    ),
    (Rule::PeerState, "a suspended or revoked recipient gets nothing"),
    (Rule::MessageExpired, "a message past its expiry is delivered to nobody"),
    (
        Rule::OriginatorExclusion,
        "a body on the message's exclusion list never gets it",
    ),
    (
        Rule::HandlingTlpRed,
        "a TLP:RED message goes only to the bodies named in its releasability list",
    ),
    (
        Rule::OriginatorReleasability,
        "if the message has a releasability list, only the bodies on it get it",
    ),
    (
        Rule::WorkingGroupMembership,
        "a message addressed to working groups goes only to their members (never to anyone the other rules refuse)",
    ),
    (
        Rule::OriginatorOutbound,
        "the originator's configured outbound rules: bodies it never shares with, its limit for observers, \
         the level from which recipients must be named",
    ),
    (
        Rule::RecipientClearance,
        "the recipient's clearance must be at or above the classification",
    ),
    (Rule::RecipientKind, "the recipient must accept the kind of message"),
    (
        Rule::RecipientMandate,
        "at least one crime area of the message must be in the recipient's mandate",
    ),
    (
        Rule::ObserverRestriction,
        "observers get only the allowed kinds, up to the observer level, never personal data",
    ),
    (
        Rule::AgreementPersonalData,
        "personal data goes only where a personal-data agreement exists between originator and recipient",
    ),
    (
        Rule::AllRulesPassed,
        "every rule allowed delivery (deny by default otherwise)",
    ),
];

/// Each rule id with a one-line description, in evaluation order, for
/// documentation and the CLI.
pub fn explain_rules() -> &'static [(Rule, &'static str)] {
    &EXPLANATIONS
}

/// Whether a recipient gets the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Every rule allowed delivery.
    Deliver,
    /// A rule withheld the message from this recipient.
    Withhold,
}

impl Outcome {
    /// `deliver` or `withhold`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deliver => "deliver",
            Self::Withhold => "withhold",
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::Outcome {
        match self {
            Self::Deliver => pb::Outcome::Deliver,
            Self::Withhold => pb::Outcome::Withhold,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The decision for one candidate recipient.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decision {
    /// The candidate recipient.
    pub recipient: BodyId,
    /// Deliver or withhold.
    pub outcome: Outcome,
    /// The rule that decided: the first that withheld, or
    /// [`Rule::AllRulesPassed`].
    pub rule: Rule,
    /// The values compared, for people (never body content).
    pub reason: String,
}

impl Decision {
    /// Whether the recipient gets the message.
    pub fn delivers(&self) -> bool {
        self.outcome == Outcome::Deliver
    }
}

impl From<&Decision> for pb::RoutingDecision {
    fn from(d: &Decision) -> Self {
        pb::RoutingDecision {
            recipient: d.recipient.to_string(),
            outcome: d.outcome.to_proto() as i32,
            rule: d.rule.as_str().to_owned(),
            reason: d.reason.clone(),
        }
    }
}

/// Decides, for every configured body except the origin (in id order),
/// whether it gets a message with these labels at time `now_ms`.
///
/// Pure and deterministic: the same governance, labels and time always give
/// the same decisions.
pub fn decide(gov: &Governance, labels: &Labels, now_ms: i64) -> Vec<Decision> {
    let origin = gov.body(&labels.origin);
    gov.bodies()
        .filter(|r| r.id != labels.origin)
        .map(|recipient| decision(gov, origin, recipient, labels, now_ms))
        .collect()
}

/// Bodies a message did not address, withheld under one rule: counted, not
/// listed. A message that names its recipients (`releasable_to`, or any
/// TLP:RED message) or addresses working groups is not for every other
/// body, and a decision per unaddressed body would make routing, the audit
/// log and every answer grow with the size of the federation rather than
/// with the message's recipients.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Unaddressed {
    /// [`Rule::HandlingTlpRed`], [`Rule::OriginatorReleasability`] or
    /// [`Rule::WorkingGroupMembership`].
    pub rule: Rule,
    /// How many bodies.
    pub bodies: u32,
    /// The rule in words, with the values it compared.
    pub reason: String,
}

impl Unaddressed {
    /// Whether `rule` only says that a message did not address a body, so
    /// that its withheld decisions are counted rather than listed.
    pub fn counts(rule: Rule) -> bool {
        matches!(
            rule,
            Rule::HandlingTlpRed | Rule::OriginatorReleasability | Rule::WorkingGroupMembership
        )
    }

    fn new(rule: Rule, bodies: u32, l: &Labels) -> Self {
        let reason = match rule {
            Rule::HandlingTlpRed => {
                format!(
                    "TLP:RED goes to named recipients only; {bodies} other bodies are not named"
                )
            }
            Rule::OriginatorReleasability => format!(
                "{bodies} other bodies are not in releasable_to [{}]",
                join(l.releasable_to.iter())
            ),
            _ => format!(
                "{bodies} other bodies are in none of the addressed working groups ({})",
                join(l.working_groups.iter())
            ),
        };
        Self {
            rule,
            bodies,
            reason,
        }
    }
}

impl From<&Unaddressed> for pb::Unaddressed {
    fn from(u: &Unaddressed) -> Self {
        pb::Unaddressed {
            rule: u.rule.as_str().to_owned(),
            bodies: u.bodies,
            reason: u.reason.clone(),
        }
    }
}

/// What the hub decides for a message: a decision for every body the
/// message addressed, every body it names, and any body withheld by a rule
/// other than addressing; and a count per rule of the other bodies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    /// In body id order.
    pub decisions: Vec<Decision>,
    /// In rule order; each rule at most once.
    pub unaddressed: Vec<Unaddressed>,
}

impl Routing {
    fn new(
        decisions: Vec<Decision>,
        counts: std::collections::BTreeMap<Rule, u32>,
        labels: &Labels,
    ) -> Self {
        Self {
            decisions,
            unaddressed: counts
                .into_iter()
                .map(|(rule, n)| Unaddressed::new(rule, n, labels))
                .collect(),
        }
    }
}

/// [`decide`], with the decisions for bodies the message did not address
/// counted per rule ([`Unaddressed`]) instead of listed. Exactly
/// [`summarize`] of [`decide`], but without building a decision and its
/// reason for each unaddressed body, so that its cost grows with the
/// bodies a message addresses, not with the federation.
pub fn route(gov: &Governance, labels: &Labels, now_ms: i64) -> Routing {
    let origin = gov.body(&labels.origin);
    let mut decisions = Vec::new();
    let mut counts = std::collections::BTreeMap::<Rule, u32>::new();
    for recipient in gov.bodies().filter(|r| r.id != labels.origin) {
        match unaddressed(gov, origin, recipient, labels, now_ms) {
            Some(rule) => *counts.entry(rule).or_default() += 1,
            None => decisions.push(decision(gov, origin, recipient, labels, now_ms)),
        }
    }
    Routing::new(decisions, counts, labels)
}

/// Counts the withheld decisions whose rule [`Unaddressed::counts`] for
/// bodies not named in `releasable_to`, as [`route`] does; the others stay
/// listed, in order.
pub fn summarize(decisions: Vec<Decision>, labels: &Labels) -> Routing {
    let mut counts = std::collections::BTreeMap::<Rule, u32>::new();
    let decisions = decisions
        .into_iter()
        .filter(|d| {
            let counted = d.outcome == Outcome::Withhold
                && Unaddressed::counts(d.rule)
                && !labels.releasable_to.contains(&d.recipient);
            if counted {
                *counts.entry(d.rule).or_default() += 1;
            }
            !counted
        })
        .collect();
    Routing::new(decisions, counts, labels)
}

/// The addressing rule that withholds the message from `r`, if it is the
/// first rule of [`evaluate`] to refuse: the rules before it (the states,
/// expiry, exclusion) are checked in the same order, without building a
/// reason.
fn unaddressed(
    gov: &Governance,
    origin: Option<&BodyPolicy>,
    r: &BodyPolicy,
    l: &Labels,
    now_ms: i64,
) -> Option<Rule> {
    let before = origin.is_some_and(|o| o.state == State::Active)
        && r.state == State::Active
        && l.expires_at_ms.is_none_or(|e| e > now_ms)
        && !l.excluded.contains(&r.id);
    // A body the originator named is always decided on its own.
    if !before || l.releasable_to.contains(&r.id) {
        return None;
    }
    if l.tlp == Some(Tlp::Red) {
        Some(Rule::HandlingTlpRed)
    } else if !l.releasable_to.is_empty() {
        Some(Rule::OriginatorReleasability)
    } else if !l.working_groups.is_empty()
        && !l.working_groups.iter().any(|g| {
            gov.working_group(g)
                .is_some_and(|wg| wg.members.contains(&r.id))
        })
    {
        Some(Rule::WorkingGroupMembership)
    } else {
        None
    }
}

fn decision(
    gov: &Governance,
    origin: Option<&BodyPolicy>,
    recipient: &BodyPolicy,
    labels: &Labels,
    now_ms: i64,
) -> Decision {
    let (outcome, rule, reason) = match evaluate(gov, origin, recipient, labels, now_ms) {
        Ok(summary) => (Outcome::Deliver, Rule::AllRulesPassed, summary),
        Err((rule, reason)) => (Outcome::Withhold, rule, reason),
    };
    Decision {
        recipient: recipient.id.clone(),
        outcome,
        rule,
        reason,
    }
}

type Refusal = (Rule, String);

/// Runs the rules in order; `Ok` carries the summary of a delivery.
fn evaluate(
    gov: &Governance,
    origin: Option<&BodyPolicy>,
    r: &BodyPolicy,
    l: &Labels,
    now_ms: i64,
) -> Result<String, Refusal> {
    let c = l.classification;

    // origin.state
    let Some(origin) = origin else {
        return Err((
            Rule::OriginState,
            format!("originator {} is not a configured body", l.origin),
        ));
    };
    if origin.state != State::Active {
        return Err((
            Rule::OriginState,
            format!("originator {} is {}", origin.id, origin.state),
        ));
    }

    // peer.state
    if r.state != State::Active {
        return Err((
            Rule::PeerState,
            format!("recipient {} is {}", r.id, r.state),
        ));
    }

    // message.expired
    if let Some(expires) = l.expires_at_ms {
        if expires <= now_ms {
            return Err((
                Rule::MessageExpired,
                format!(
                    "expired at {}, now {}",
                    liaison_types::rfc3339(expires),
                    liaison_types::rfc3339(now_ms)
                ),
            ));
        }
    }

    // originator.exclusion
    if l.excluded.contains(&r.id) {
        return Err((
            Rule::OriginatorExclusion,
            format!("{} is on the originator's exclusion list", r.id),
        ));
    }

    // handling.tlp_red
    if l.tlp == Some(Tlp::Red) && !l.releasable_to.contains(&r.id) {
        return Err((
            Rule::HandlingTlpRed,
            format!(
                "TLP:RED goes to named recipients only; {} is not named",
                r.id
            ),
        ));
    }

    // originator.releasability
    if !l.releasable_to.is_empty() && !l.releasable_to.contains(&r.id) {
        return Err((
            Rule::OriginatorReleasability,
            format!(
                "{} is not in releasable_to [{}]",
                r.id,
                join(l.releasable_to.iter())
            ),
        ));
    }

    // working_group.membership
    if !l.working_groups.is_empty() {
        let member_of: Vec<&str> = l
            .working_groups
            .iter()
            .filter(|g| {
                gov.working_group(g)
                    .is_some_and(|wg| wg.members.contains(&r.id))
            })
            .map(String::as_str)
            .collect();
        if member_of.is_empty() {
            return Err((
                Rule::WorkingGroupMembership,
                format!(
                    "{} is in none of the addressed working groups ({})",
                    r.id,
                    join(l.working_groups.iter())
                ),
            ));
        }
    }

    // originator.outbound
    let out = &origin.outbound;
    if out.never_share_with.contains(&r.id) {
        return Err((
            Rule::OriginatorOutbound,
            format!("{} never shares with {}", origin.id, r.id),
        ));
    }
    if let Some(max) = out.max_to_observers {
        if r.is_observer() && c > max {
            return Err((
                Rule::OriginatorOutbound,
                format!(
                    "{} releases at most {max} to observers; message is {c}",
                    origin.id
                ),
            ));
        }
    }
    if let Some(from) = out.releasability_required_from {
        if c >= from && !l.releasable_to.contains(&r.id) {
            return Err((
                Rule::OriginatorOutbound,
                format!(
                    "{} releases {from} and above only to bodies named in releasable_to; {} is not named",
                    origin.id, r.id
                ),
            ));
        }
    }

    // recipient.clearance
    if r.clearance < c {
        return Err((
            Rule::RecipientClearance,
            format!("clearance {} < {c}", r.clearance),
        ));
    }

    // recipient.kind
    if !r.kinds.contains(&l.kind) {
        return Err((
            Rule::RecipientKind,
            format!(
                "{} does not accept {} (accepts {})",
                r.id,
                l.kind,
                join(r.kinds.iter())
            ),
        ));
    }

    // recipient.mandate
    let covered: Vec<_> = l.crime_areas.intersection(&r.mandate).collect();
    if covered.is_empty() {
        let mandate = if r.mandate.is_empty() {
            "empty".to_owned()
        } else {
            join(r.mandate.iter())
        };
        return Err((
            Rule::RecipientMandate,
            format!(
                "mandate ({mandate}) covers none of {}",
                join(l.crime_areas.iter())
            ),
        ));
    }

    // observer.restriction
    if r.is_observer() {
        let limits = gov.observers();
        if !limits.kinds.contains(&l.kind) {
            return Err((
                Rule::ObserverRestriction,
                format!(
                    "observers receive only {}; message is {}",
                    join(limits.kinds.iter()),
                    l.kind
                ),
            ));
        }
        if l.personal_data {
            return Err((
                Rule::ObserverRestriction,
                "observers never receive personal data; message holds personal data".to_owned(),
            ));
        }
        if c > limits.max_classification {
            return Err((
                Rule::ObserverRestriction,
                format!(
                    "observers receive at most {}; message is {c}",
                    limits.max_classification
                ),
            ));
        }
    }

    // agreement.personal_data
    let personal = if l.personal_data {
        match gov.agreement(&origin.id, &r.id) {
            Some(a) if a.personal_data => {
                let reference = a
                    .reference
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                format!(
                    "personal data under agreement {}-{}{reference}",
                    a.between.0, a.between.1
                )
            }
            Some(a) => {
                return Err((
                    Rule::AgreementPersonalData,
                    format!(
                        "the agreement between {} and {} does not cover personal data",
                        a.between.0, a.between.1
                    ),
                ))
            }
            None => {
                return Err((
                    Rule::AgreementPersonalData,
                    format!(
                        "no personal-data agreement between {} and {}",
                        origin.id, r.id
                    ),
                ))
            }
        }
    } else {
        "no personal data".to_owned()
    };

    let mut summary = format!(
        "clearance {} >= {c}; accepts {}; mandate covers {}; {personal}",
        r.clearance,
        l.kind,
        join(covered.into_iter())
    );
    if let Some(t) = l.tlp {
        summary.push_str(&format!("; {t}"));
    }
    if let Some(until) = l.not_before_ms.filter(|n| *n > now_ms) {
        summary.push_str(&format!(
            "; held under embargo until {}",
            liaison_types::rfc3339(until)
        ));
    }
    Ok(summary)
}

fn join<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use liaison_types::{Classification, CrimeArea, Kind, Priority};

    use super::*;
    use crate::builder::{BodySpec, GovernanceBuilder};
    use crate::config::State;

    use Classification::{Confidential, OfficialUse, Restricted, Secret, Unclassified};

    const NOW: i64 = 1_700_000_000_000;

    /// interpol (hub), europol, frontex and an observer; every recipient
    /// gets a plain RESTRICTED cybercrime alert from europol.
    fn base() -> GovernanceBuilder {
        Governance::for_test()
            .member("interpol", Secret, &["terrorism", "cybercrime", "drugs"])
            .member("europol", Secret, &["cybercrime", "drugs"])
            .member("frontex", Confidential, &["cybercrime", "border_security"])
            .body(BodySpec::observer("unodc", &["cybercrime", "drugs"]))
            .agreement("europol", "interpol", true)
    }

    fn build(b: GovernanceBuilder) -> Governance {
        b.build().expect("valid test governance")
    }

    fn labels(origin: &str) -> Labels {
        Labels {
            plan: None,
            message_id: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
            origin: BodyId::parse(origin).expect("id"),
            kind: Kind::Alert,
            classification: Restricted,
            marking: None,
            crime_areas: [CrimeArea::parse("cybercrime").expect("area")].into(),
            regions: BTreeSet::new(),
            countries: BTreeSet::new(),
            personal_data: false,
            releasable_to: BTreeSet::new(),
            excluded: BTreeSet::new(),
            priority: Priority::Immediate,
            created_at_ms: NOW - 1000,
            expires_at_ms: None,
            third_party_release: false,
            tlp: None,
            handling_code: None,
            handling_restriction: None,
            grading: None,
            not_before_ms: None,
            working_groups: BTreeSet::new(),
        }
    }

    fn ids(list: &[&str]) -> BTreeSet<BodyId> {
        list.iter().map(|i| BodyId::parse(i).expect("id")).collect()
    }

    fn for_(decisions: &[Decision], recipient: &str) -> Decision {
        decisions
            .iter()
            .find(|d| d.recipient.as_str() == recipient)
            .cloned()
            .unwrap_or_else(|| panic!("no decision for {recipient}"))
    }

    fn assert_withheld(d: &Decision, rule: Rule, words: &str) {
        assert_eq!(d.outcome, Outcome::Withhold, "{d:?}");
        assert_eq!(d.rule, rule, "{d:?}");
        assert!(
            d.reason.contains(words),
            "reason {:?} lacks {words:?}",
            d.reason
        );
    }

    fn assert_delivered(d: &Decision) {
        assert_eq!(d.outcome, Outcome::Deliver, "{d:?}");
        assert_eq!(d.rule, Rule::AllRulesPassed, "{d:?}");
    }

    #[test]
    fn tlp_red_goes_only_to_named_recipients() {
        let g = build(base());
        let mut l = labels("europol");
        l.tlp = Some(Tlp::Red);
        l.releasable_to = ids(&["interpol"]);
        let d = decide(&g, &l, NOW);
        assert_delivered(&for_(&d, "interpol"));
        assert!(for_(&d, "interpol").reason.ends_with("; TLP:RED"));
        assert_withheld(
            &for_(&d, "frontex"),
            Rule::HandlingTlpRed,
            "frontex is not named",
        );
        // Even with no list at all (labels that skipped validation), RED
        // reaches nobody unnamed.
        l.releasable_to.clear();
        assert!(decide(&g, &l, NOW)
            .iter()
            .all(|d| d.rule == Rule::HandlingTlpRed));
        // Other TLP levels do not restrict routing.
        l.tlp = Some(Tlp::AmberStrict);
        assert_delivered(&for_(&decide(&g, &l, NOW), "frontex"));
    }

    #[test]
    fn working_groups_narrow_recipients_and_never_widen_them() {
        let g = build(
            base()
                .working_group("strategic", &["interpol", "europol", "unodc"])
                .working_group("border", &["frontex"]),
        );
        let mut l = labels("europol");
        l.working_groups = ["strategic".to_owned()].into();
        let d = decide(&g, &l, NOW);
        assert_delivered(&for_(&d, "interpol"));
        assert_withheld(
            &for_(&d, "frontex"),
            Rule::WorkingGroupMembership,
            "frontex is in none of the addressed working groups (strategic)",
        );
        // A member the other rules refuse is still refused.
        assert_withheld(&for_(&d, "unodc"), Rule::RecipientClearance, "<");
        // Two groups: membership of either is enough.
        l.working_groups.insert("border".to_owned());
        assert_delivered(&for_(&decide(&g, &l, NOW), "frontex"));
    }

    #[test]
    fn an_embargoed_delivery_says_until_when() {
        let g = build(base());
        let mut l = labels("europol");
        l.not_before_ms = Some(NOW + 60_000);
        let d = for_(&decide(&g, &l, NOW), "interpol");
        assert_delivered(&d);
        assert!(
            d.reason.contains("held under embargo until"),
            "{}",
            d.reason
        );
        // Once the time has come, nothing is held.
        let d = for_(&decide(&g, &l, NOW + 60_000), "interpol");
        assert!(!d.reason.contains("embargo"), "{}", d.reason);
    }

    #[test]
    fn candidates_are_every_other_body_in_id_order() {
        let g = build(base());
        let d = decide(&g, &labels("europol"), NOW);
        let got: Vec<_> = d.iter().map(|d| d.recipient.as_str()).collect();
        assert_eq!(got, ["frontex", "interpol", "unodc"]);
    }

    #[test]
    fn a_plain_message_is_delivered_with_a_summary() {
        let g = build(base());
        let d = decide(&g, &labels("europol"), NOW);
        let interpol = for_(&d, "interpol");
        assert_delivered(&interpol);
        assert_eq!(
            interpol.reason,
            "clearance SECRET >= RESTRICTED; accepts alert; mandate covers cybercrime; no personal data"
        );
        assert_delivered(&for_(&d, "frontex"));
        // The observer's clearance is checked before the kinds it accepts.
        assert_withheld(
            &for_(&d, "unodc"),
            Rule::RecipientClearance,
            "OFFICIAL_USE < RESTRICTED",
        );
    }

    #[test]
    fn origin_state() {
        for state in [State::Suspended, State::Revoked] {
            let g = build(
                base().body(BodySpec::member("afripol", Secret, &["cybercrime"]).with_state(state)),
            );
            for d in decide(&g, &labels("afripol"), NOW) {
                assert_withheld(
                    &d,
                    Rule::OriginState,
                    &format!("originator afripol is {state}"),
                );
            }
        }
        let g = build(base());
        for d in decide(&g, &labels("nobody"), NOW) {
            assert_withheld(&d, Rule::OriginState, "not a configured body");
        }
        assert!(decide(&g, &labels("europol"), NOW)
            .iter()
            .any(Decision::delivers));
    }

    #[test]
    fn peer_state() {
        for state in [State::Suspended, State::Revoked] {
            let g = build(
                base().body(BodySpec::member("afripol", Secret, &["cybercrime"]).with_state(state)),
            );
            let d = decide(&g, &labels("europol"), NOW);
            assert_withheld(
                &for_(&d, "afripol"),
                Rule::PeerState,
                &format!("afripol is {state}"),
            );
            assert_delivered(&for_(&d, "interpol"));
        }
        let g = build(base().member("afripol", Secret, &["cybercrime"]));
        assert_delivered(&for_(&decide(&g, &labels("europol"), NOW), "afripol"));
    }

    #[test]
    fn message_expired() {
        let g = build(base());
        let mut l = labels("europol");
        l.expires_at_ms = Some(NOW);
        for d in decide(&g, &l, NOW) {
            assert_withheld(&d, Rule::MessageExpired, "expired at");
        }
        l.expires_at_ms = Some(NOW + 1);
        assert_delivered(&for_(&decide(&g, &l, NOW), "interpol"));
    }

    #[test]
    fn originator_exclusion() {
        let g = build(base());
        let mut l = labels("europol");
        l.excluded = ids(&["frontex"]);
        let d = decide(&g, &l, NOW);
        assert_withheld(
            &for_(&d, "frontex"),
            Rule::OriginatorExclusion,
            "exclusion list",
        );
        assert_delivered(&for_(&d, "interpol"));
    }

    #[test]
    fn originator_releasability() {
        let g = build(base());
        let mut l = labels("europol");
        l.releasable_to = ids(&["interpol"]);
        let d = decide(&g, &l, NOW);
        assert_withheld(
            &for_(&d, "frontex"),
            Rule::OriginatorReleasability,
            "frontex is not in releasable_to [interpol]",
        );
        assert_delivered(&for_(&d, "interpol"));
    }

    #[test]
    fn originator_outbound_never_share_with() {
        let g = build(base().body(
            BodySpec::member("gccpol", Secret, &["cybercrime"]).with_never_share_with(&["frontex"]),
        ));
        let d = decide(&g, &labels("gccpol"), NOW);
        assert_withheld(
            &for_(&d, "frontex"),
            Rule::OriginatorOutbound,
            "gccpol never shares with frontex",
        );
        assert_delivered(&for_(&d, "interpol"));
    }

    #[test]
    fn originator_outbound_max_to_observers() {
        let g = build(base().body(
            BodySpec::member("gccpol", Secret, &["cybercrime"]).with_max_to_observers(Unclassified),
        ));
        let mut l = labels("gccpol");
        l.kind = Kind::ThreatAssessment;
        l.classification = OfficialUse;
        let d = decide(&g, &l, NOW);
        assert_withheld(
            &for_(&d, "unodc"),
            Rule::OriginatorOutbound,
            "releases at most UNCLASSIFIED to observers; message is OFFICIAL_USE",
        );
        assert_delivered(&for_(&d, "interpol"));
        l.classification = Unclassified;
        assert_delivered(&for_(&decide(&g, &l, NOW), "unodc"));
    }

    #[test]
    fn originator_outbound_releasability_required_from() {
        let g = build(
            base().body(
                BodySpec::member("gccpol", Secret, &["cybercrime"])
                    .with_releasability_required_from(Confidential),
            ),
        );
        let mut l = labels("gccpol");
        l.classification = Confidential;
        let d = decide(&g, &l, NOW);
        assert_withheld(
            &for_(&d, "interpol"),
            Rule::OriginatorOutbound,
            "only to bodies named",
        );
        l.releasable_to = ids(&["interpol"]);
        assert_delivered(&for_(&decide(&g, &l, NOW), "interpol"));
        l.releasable_to.clear();
        l.classification = Restricted;
        assert_delivered(&for_(&decide(&g, &l, NOW), "interpol"));
    }

    #[test]
    fn recipient_clearance() {
        let g = build(base());
        let mut l = labels("europol");
        l.classification = Secret;
        let d = decide(&g, &l, NOW);
        assert_withheld(
            &for_(&d, "frontex"),
            Rule::RecipientClearance,
            "clearance CONFIDENTIAL < SECRET",
        );
        assert_delivered(&for_(&d, "interpol"));
        l.classification = Confidential;
        assert_delivered(&for_(&decide(&g, &l, NOW), "frontex"));
    }

    #[test]
    fn recipient_kind() {
        let g = build(
            base().body(
                BodySpec::member("eco", Secret, &["cybercrime"])
                    .with_kinds(&[Kind::ThreatAssessment, Kind::Alert]),
            ),
        );
        let mut l = labels("europol");
        l.kind = Kind::OperationalPlan;
        let d = decide(&g, &l, NOW);
        assert_withheld(
            &for_(&d, "eco"),
            Rule::RecipientKind,
            "eco does not accept operational_plan (accepts threat_assessment, alert)",
        );
        assert_delivered(&for_(&d, "interpol"));
        l.kind = Kind::Alert;
        assert_delivered(&for_(&decide(&g, &l, NOW), "eco"));
    }

    #[test]
    fn recipient_mandate() {
        let g = build(
            base()
                .member("eco", Secret, &["drugs", "terrorism"])
                .member("aimc", Secret, &[]),
        );
        let mut l = labels("europol");
        let d = decide(&g, &l, NOW);
        assert_withheld(
            &for_(&d, "eco"),
            Rule::RecipientMandate,
            "mandate (drugs, terrorism) covers none of cybercrime",
        );
        assert_withheld(&for_(&d, "aimc"), Rule::RecipientMandate, "mandate (empty)");
        l.crime_areas
            .insert(CrimeArea::parse("drugs").expect("area"));
        let d = decide(&g, &l, NOW);
        assert_delivered(&for_(&d, "eco"));
        assert!(for_(&d, "eco").reason.contains("mandate covers drugs"));
        assert_withheld(&for_(&d, "aimc"), Rule::RecipientMandate, "empty");
    }

    #[test]
    fn observer_restriction() {
        let g = build(base());
        let mut l = labels("europol");
        l.kind = Kind::ThreatAssessment;
        l.classification = OfficialUse;
        assert_delivered(&for_(&decide(&g, &l, NOW), "unodc"));
        l.personal_data = true;
        let d = decide(&g, &l, NOW);
        assert_withheld(
            &for_(&d, "unodc"),
            Rule::ObserverRestriction,
            "never receive personal data",
        );
        assert_delivered(&for_(&d, "interpol"));
    }

    #[test]
    fn observer_restriction_kinds_and_level() {
        // Observers may be configured for alerts, and an observer may hold a
        // higher clearance than the kinds it is sent; the federation-wide
        // limits still apply.
        let g = build(
            Governance::for_test()
                .observers(&[Kind::ThreatAssessment, Kind::Alert], Restricted)
                .member("interpol", Secret, &["drugs"])
                .body(
                    BodySpec::observer("unodc", &["drugs"])
                        .with_kinds(&[Kind::ThreatAssessment, Kind::Alert]),
                ),
        );
        let mut l = labels("interpol");
        l.crime_areas = [CrimeArea::parse("drugs").expect("area")].into();
        l.classification = OfficialUse;
        assert_delivered(&for_(&decide(&g, &l, NOW), "unodc"));
    }

    #[test]
    fn agreement_personal_data() {
        let g = build(base().agreement("frontex", "europol", false));
        let mut l = labels("europol");
        l.personal_data = true;
        let d = decide(&g, &l, NOW);
        let interpol = for_(&d, "interpol");
        assert_delivered(&interpol);
        assert!(
            interpol
                .reason
                .contains("personal data under agreement europol-interpol"),
            "{interpol:?}"
        );
        assert_withheld(
            &for_(&d, "frontex"),
            Rule::AgreementPersonalData,
            "does not cover personal data",
        );

        let g = build(base());
        let d = decide(&g, &l, NOW);
        assert_withheld(
            &for_(&d, "frontex"),
            Rule::AgreementPersonalData,
            "no personal-data agreement between europol and frontex",
        );
        l.personal_data = false;
        assert_delivered(&for_(&decide(&g, &l, NOW), "frontex"));
    }

    #[test]
    fn the_first_rule_that_refuses_names_the_decision() {
        // frontex fails exclusion, clearance, kind, mandate and agreement at
        // once: exclusion comes first.
        let g = build(
            base().body(
                BodySpec::member("frontex2", Confidential, &["border_security"])
                    .with_kinds(&[Kind::Alert]),
            ),
        );
        let mut l = labels("europol");
        l.kind = Kind::OperationalPlan;
        l.classification = Secret;
        l.personal_data = true;
        l.excluded = ids(&["frontex2"]);
        let d = decide(&g, &l, NOW);
        assert_withheld(
            &for_(&d, "frontex2"),
            Rule::OriginatorExclusion,
            "exclusion",
        );

        // Without the exclusion, clearance is next.
        l.excluded.clear();
        assert_withheld(
            &for_(&decide(&g, &l, NOW), "frontex2"),
            Rule::RecipientClearance,
            "<",
        );

        // A suspended peer is reported as such even when excluded.
        let g = build(base().body(
            BodySpec::member("afripol", Secret, &["cybercrime"]).with_state(State::Suspended),
        ));
        let mut l = labels("europol");
        l.excluded = ids(&["afripol"]);
        assert_withheld(
            &for_(&decide(&g, &l, NOW), "afripol"),
            Rule::PeerState,
            "suspended",
        );
    }

    #[test]
    fn rule_ids_are_stable_unique_and_explained() {
        let ids: Vec<_> = Rule::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            ids,
            [
                "origin.state",
                "peer.state",
                "message.expired",
                "originator.exclusion",
                "handling.tlp_red",
                "originator.releasability",
                "working_group.membership",
                "originator.outbound",
                "recipient.clearance",
                "recipient.kind",
                "recipient.mandate",
                "observer.restriction",
                "agreement.personal_data",
                "deliver.all_rules_passed",
            ]
        );
        for rule in Rule::ALL {
            assert_eq!(rule.as_str().parse::<Rule>(), Ok(rule));
        }
        assert!("recipient.colour".parse::<Rule>().is_err());
        let explained: Vec<Rule> = explain_rules().iter().map(|(r, _)| *r).collect();
        assert_eq!(explained, Rule::ALL.to_vec());
        assert!(explain_rules()
            .iter()
            .all(|(_, text)| !text.is_empty() && !text.contains('\n')));
    }

    #[test]
    fn decisions_convert_to_proto() {
        let g = build(base());
        let d = for_(&decide(&g, &labels("europol"), NOW), "interpol");
        let p = pb::RoutingDecision::from(&d);
        assert_eq!(p.recipient, "interpol");
        assert_eq!(p.outcome, pb::Outcome::Deliver as i32);
        assert_eq!(p.rule, "deliver.all_rules_passed");
        assert_eq!(p.reason, d.reason);
        assert_eq!(Outcome::Withhold.to_proto(), pb::Outcome::Withhold);
    }
}

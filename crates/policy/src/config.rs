//! The governance configuration: its TOML format, its validation, and the
//! validated [`Governance`] the routing decision reads.
//!
//! # Format (version 1)
//!
//! ```toml
//! version = 1                      # required, the format version
//! federation = "liaison.dev"       # trust domain of the certificates
//! hub_body = "interpol"            # the member body that runs the hub
//!
//! [observers]                      # federation-wide limits for observers
//! kinds = ["threat_assessment"]    # never operational_plan
//! max_classification = "OFFICIAL_USE"
//! personal_data = false            # optional; can only be false
//!
//! [[body]]                         # one table per body
//! id = "europol"
//! name = "Europol"
//! status = "member"                # member | observer
//! state = "active"                 # active | suspended | revoked (default active)
//! clearance = "SECRET"             # highest level it may receive
//! kinds = ["threat_assessment", "operational_plan", "alert"]
//! mandate = ["terrorism", "cybercrime", "drugs"]
//! [body.markings]                  # native marking -> common level
//! "EU RESTRICTED" = "RESTRICTED"
//! "EU SECRET" = "SECRET"
//! [body.outbound]                  # optional: what this body releases
//! never_share_with = []
//! max_to_observers = "UNCLASSIFIED"
//! releasability_required_from = "SECRET"
//!
//! [[agreement]]                    # bilateral, order does not matter
//! between = ["europol", "interpol"]
//! personal_data = true
//! reference = "illustrative reference"
//! ```
//!
//! A level without a native marking in a body's table is shown to that body,
//! and may be given by it, under its canonical name (`SECRET`, ...).
//!
//! Validation happens in two steps: serde with `deny_unknown_fields` catches
//! syntax, unknown keys and values of the wrong type; the checks below catch
//! what serde cannot (unknown or duplicate bodies, colliding markings, rules
//! that contradict each other). Both report the file, line, column and key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use liaison_types::{BodyId, Classification, CrimeArea, Kind, Labels, ValidationError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::de::DeTable;
use toml::Spanned;

use crate::error::PolicyError;
use crate::span::{Source, TOP_LEVEL};

/// The configuration format version this build reads.
pub const CONFIG_VERSION: i64 = 1;

const MAX_NAME: usize = 100;
const MAX_MARKING: usize = 80;
const MAX_REFERENCE: usize = 200;

/// Whether a body takes part fully or with the restricted observer status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// A full member of the federation.
    Member,
    /// An observer: receives only what the `[observers]` limits allow.
    Observer,
}

impl Status {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Observer => "observer",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a body currently takes part at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Sends and receives under the rules.
    Active,
    /// Temporarily cut off: receives nothing, and nothing it sends is delivered.
    Suspended,
    /// Permanently cut off, as for suspended.
    Revoked,
}

impl State {
    /// The state named `name` (`active`, `suspended`, `revoked`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "active" => Some(Self::Active),
            "suspended" => Some(Self::Suspended),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }

    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Revoked => "revoked",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An originator's own rules on what it releases, beyond per-message labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outbound {
    /// Bodies this originator never shares with, whatever the labels say.
    pub never_share_with: BTreeSet<BodyId>,
    /// Highest level this originator releases to observers, if limited
    /// below the federation-wide observer limit.
    pub max_to_observers: Option<Classification>,
    /// From this level up, messages go only to bodies the originator named
    /// in the message's `releasable_to` list.
    pub releasability_required_from: Option<Classification>,
}

/// The validated rules for one body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BodyPolicy {
    /// The body's id, as in certificates and labels.
    pub id: BodyId,
    /// Display name.
    pub name: String,
    /// Member or observer.
    pub status: Status,
    /// Active, suspended or revoked.
    pub state: State,
    /// Highest classification the body may receive.
    pub clearance: Classification,
    /// Kinds of message the body accepts.
    pub kinds: BTreeSet<Kind>,
    /// Crime areas within the body's mandate.
    pub mandate: BTreeSet<CrimeArea>,
    /// The body's native marking for each level it has one for.
    pub markings: BTreeMap<Classification, String>,
    /// The body's outbound rules as an originator.
    pub outbound: Outbound,
}

impl BodyPolicy {
    /// Whether the body is an observer.
    pub fn is_observer(&self) -> bool {
        self.status == Status::Observer
    }

    /// Whether the body is active (neither suspended nor revoked).
    pub fn is_active(&self) -> bool {
        self.state == State::Active
    }

    /// How this body writes `level`: its native marking, or the canonical
    /// name when it has none for that level.
    pub fn marking_for(&self, level: Classification) -> &str {
        self.markings
            .get(&level)
            .map_or_else(|| level.as_str(), String::as_str)
    }

    /// The level a marking written by this body stands for: one of its
    /// native markings (exact text), or the canonical name of a level it has
    /// no native marking for. Never guessed.
    pub fn classification_of(&self, marking: &str) -> Option<Classification> {
        if let Some((level, _)) = self.markings.iter().find(|(_, m)| m.as_str() == marking) {
            return Some(*level);
        }
        Classification::ALL
            .into_iter()
            .find(|c| c.as_str() == marking && !self.markings.contains_key(c))
    }

    /// The markings this body may give, with their levels, for messages.
    fn allowed_markings(&self) -> String {
        Classification::ALL
            .into_iter()
            .map(|c| format!("'{}' ({c})", self.marking_for(c)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A bilateral agreement between two bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Agreement {
    /// The two bodies, lowest id first.
    pub between: (BodyId, BodyId),
    /// Whether personal data may be exchanged under it.
    pub personal_data: bool,
    /// The agreement's reference, for auditors.
    pub reference: Option<String>,
}

/// A named distribution group (for example the Dialogue's strategic
/// working group). Addressing a message to groups narrows its recipients to
/// their members; it never adds a recipient the other rules refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkingGroup {
    /// Group id, as messages name it.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Member bodies.
    pub members: BTreeSet<BodyId>,
}

/// Federation-wide limits on what observers receive.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObserverRestriction {
    /// Kinds observers may receive.
    pub kinds: BTreeSet<Kind>,
    /// Highest classification observers may receive.
    pub max_classification: Classification,
}

impl ObserverRestriction {
    /// Observers never receive personal data; this is fixed, not configured.
    pub const PERSONAL_DATA: bool = false;
}

/// The validated governance configuration.
///
/// Built only by [`Governance::from_toml`] (or the test builder, which goes
/// through it), so every value here has passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Governance {
    source_name: String,
    /// The exact text it was parsed from (what the hub hands to nodes).
    text: std::sync::Arc<str>,
    version: String,
    federation: String,
    hub_body: BodyId,
    bodies: BTreeMap<BodyId, BodyPolicy>,
    agreements: BTreeMap<(BodyId, BodyId), Agreement>,
    observers: ObserverRestriction,
    working_groups: BTreeMap<String, WorkingGroup>,
    retention_ms: BTreeMap<Classification, i64>,
    log_key: Option<String>,
    max_plan_versions_per_hour: u32,
}

/// Plan versions (new plans and updates) one body may send in an hour
/// unless the governance's `[plans] max_versions_per_hour` says otherwise.
pub const DEFAULT_PLAN_VERSIONS_PER_HOUR: u32 = 120;

impl Governance {
    /// Plan versions (new plans and updates; closing and cancelling are
    /// never limited) one body may send in any hour (`[plans]
    /// max_versions_per_hour`): each version can tell its sender whether it
    /// meets another body's plan, so the rate bounds how fast a body can
    /// probe where others plan.
    pub fn max_plan_versions_per_hour(&self) -> u32 {
        self.max_plan_versions_per_hour
    }

    /// The audit log's verifier key as the federation agreed it (`[audit]
    /// log_key`: a C2SP note verifier key named `<federation>/audit`), if
    /// the file names one: the hub's signing key must match it, and each
    /// node's configured log key too.
    pub fn audit_log_key(&self) -> Option<&str> {
        self.log_key.as_deref()
    }

    /// This governance with some bodies' states set by an administrator
    /// (suspension, revocation or reinstatement) on top of the file.
    ///
    /// The version then covers both: the file's hash and the overrides, so
    /// audit records show that the file alone did not decide. Unknown bodies
    /// are ignored; with no overrides this is the governance unchanged.
    pub fn with_states(&self, states: &BTreeMap<BodyId, State>) -> Governance {
        let mut g = self.clone();
        let mut applied = Vec::new();
        for (id, state) in states {
            if let Some(b) = g.bodies.get_mut(id) {
                if b.state != *state {
                    b.state = *state;
                    applied.push(format!("{id}={state}"));
                }
            }
        }
        if !applied.is_empty() {
            let text = format!("{}\n{}", self.version, applied.join("\n"));
            g.version = format!(
                "{}+{}",
                self.version,
                &hex::encode(Sha256::digest(text.as_bytes()))[..16]
            );
        }
        g
    }

    /// How long the hub keeps the content of a message at this level, in
    /// milliseconds after it was routed; `None` keeps it until an operator
    /// removes it.
    pub fn retention_ms(&self, level: Classification) -> Option<i64> {
        self.retention_ms.get(&level).copied()
    }

    /// Every working group, in id order.
    pub fn working_groups(&self) -> impl Iterator<Item = &WorkingGroup> + '_ {
        self.working_groups.values()
    }

    /// A working group by id.
    pub fn working_group(&self, id: &str) -> Option<&WorkingGroup> {
        self.working_groups.get(id)
    }

    /// Parses and validates a governance configuration.
    ///
    /// `source_name` is how errors name the text (usually its path). Every
    /// error carries that name, the line and column, the key, and what is
    /// wrong.
    pub fn from_toml(source_name: &str, text: &str) -> Result<Self, PolicyError> {
        let root = DeTable::parse(text).map_err(|e| syntax_error(source_name, text, &e))?;
        let src = Source {
            name: source_name,
            text,
            root: Some(root.get_ref()),
        };
        let probe = VersionProbe::deserialize(toml::de::Deserializer::from(root.clone()))
            .map_err(|e| serde_error(&src, &e))?;
        match probe.version {
            None => {
                return Err(src.invalid_key(
                    None,
                    "version".to_owned(),
                    format!("missing; put `version = {CONFIG_VERSION}` at the top of the file"),
                ))
            }
            Some(v) if *v.get_ref() != CONFIG_VERSION => {
                return Err(src.invalid(
                    &v.span(),
                    format!(
                        "unsupported version {}; this build reads version {CONFIG_VERSION}",
                        v.get_ref()
                    ),
                ))
            }
            Some(_) => {}
        }
        let raw = RawConfig::deserialize(toml::de::Deserializer::from(root.clone()))
            .map_err(|e| serde_error(&src, &e))?;
        let mut gov = Validator { src: &src }.validate(raw)?;
        gov.version = hex::encode(Sha256::digest(text.as_bytes()));
        Ok(gov)
    }

    /// The name the configuration was loaded under.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The exact text the configuration was parsed from: parsing it again
    /// (and applying the same state overrides) gives the same version.
    pub fn source_text(&self) -> &str {
        &self.text
    }

    /// Checks a parsed message against this governance exactly as the hub
    /// does before routing it: its labels ([`Governance::check_labels`])
    /// and every body its body names (a plan's lead body). Nodes run the
    /// same check before they answer an officer, so that an officer gets
    /// the hub's refusal at once.
    pub fn check_message(
        &self,
        labels: &liaison_types::Labels,
        body: &liaison_types::TypedBody,
    ) -> Result<(), ValidationError> {
        self.check_labels(labels)?;
        for (field, named) in body.named_bodies() {
            if !self.is_known(named) {
                let known: Vec<&str> = self.bodies().map(|b| b.id.as_str()).collect();
                return Err(ValidationError::new(
                    field,
                    format!(
                        "'{named}' is not a body of this federation; expected one of {}",
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The lowercase hex SHA-256 of the exact configuration text, stamped on
    /// every audit record.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The federation's trust domain (for example `liaison.dev`).
    pub fn federation(&self) -> &str {
        &self.federation
    }

    /// The member body that runs the hub.
    pub fn hub_body(&self) -> &BodyId {
        &self.hub_body
    }

    /// Every body, in id order.
    pub fn bodies(&self) -> impl Iterator<Item = &BodyPolicy> + '_ {
        self.bodies.values()
    }

    /// One body's rules, by id (a `&BodyId` or a `&str`).
    pub fn body<Q>(&self, id: &Q) -> Option<&BodyPolicy>
    where
        BodyId: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.bodies.get(id)
    }

    /// Whether `id` is a body of this federation.
    pub fn is_known(&self, id: &str) -> bool {
        self.bodies.contains_key(id)
    }

    /// Every agreement, ordered by the pair of bodies.
    pub fn agreements(&self) -> impl Iterator<Item = &Agreement> + '_ {
        self.agreements.values()
    }

    /// The agreement between two bodies, in either order, if any.
    pub fn agreement(&self, a: &BodyId, b: &BodyId) -> Option<&Agreement> {
        self.agreements.get(&ordered_pair(a, b))
    }

    /// The federation-wide observer limits.
    pub fn observers(&self) -> &ObserverRestriction {
        &self.observers
    }

    /// How `reader`'s own marking scheme renders `level`: its native marking,
    /// or the canonical name when it has none (or is not a known body).
    pub fn marking_for(&self, reader: &BodyId, level: Classification) -> String {
        self.body(reader)
            .map_or_else(|| level.as_str(), |b| b.marking_for(level))
            .to_owned()
    }

    /// The level `marking` stands for in `body`'s scheme, if it is one of
    /// that body's markings (see [`BodyPolicy::classification_of`]).
    pub fn classification_for_marking(
        &self,
        body: &BodyId,
        marking: &str,
    ) -> Option<Classification> {
        self.body(body)?.classification_of(marking)
    }

    /// Checks labels against this federation: the origin and every body in
    /// `releasable_to` and `excluded` must be known, and a native marking
    /// must be one of the origin's and stand for exactly the labels'
    /// classification.
    pub fn check_labels(&self, labels: &Labels) -> Result<(), ValidationError> {
        let Some(origin) = self.body(&labels.origin) else {
            return Err(ValidationError::new(
                "labels.origin",
                format!(
                    "'{}' is not a body of federation {}; known bodies: {}",
                    labels.origin,
                    self.federation,
                    self.known_list()
                ),
            ));
        };
        for (list, ids) in [
            ("labels.releasable_to", &labels.releasable_to),
            ("labels.excluded", &labels.excluded),
        ] {
            for (i, id) in ids.iter().enumerate() {
                if !self.bodies.contains_key(id) {
                    return Err(ValidationError::new(
                        format!("{list}[{i}]"),
                        format!(
                            "'{id}' is not a body of federation {}; known bodies: {}",
                            self.federation,
                            self.known_list()
                        ),
                    ));
                }
            }
        }
        for (i, group) in labels.working_groups.iter().enumerate() {
            if !self.working_groups.contains_key(group) {
                let known: Vec<&str> = self.working_groups.keys().map(String::as_str).collect();
                return Err(ValidationError::new(
                    format!("labels.working_groups[{i}]"),
                    format!(
                        "'{group}' is not a working group of federation {}; known groups: {}",
                        self.federation,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
        if let Some(marking) = &labels.marking {
            check_marking(origin, marking, labels.classification)?;
        }
        Ok(())
    }

    /// The known body ids, comma separated, for error messages.
    pub(crate) fn known_list(&self) -> String {
        self.bodies
            .keys()
            .map(BodyId::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn check_marking(
    origin: &BodyPolicy,
    marking: &str,
    classification: Classification,
) -> Result<(), ValidationError> {
    match origin.classification_of(marking) {
        Some(level) if level == classification => Ok(()),
        Some(level) => Err(ValidationError::new(
            "labels.marking",
            format!(
                "'{marking}' is {}'s marking for {level} but labels.classification is {classification}; \
                 make them agree ({} marks {classification} as '{}')",
                origin.id,
                origin.id,
                origin.marking_for(classification)
            ),
        )),
        None => {
            let hint = Classification::ALL
                .into_iter()
                .map(|c| origin.marking_for(c))
                .find(|m| normalise(m) == normalise(marking))
                .map(|m| format!(" (did you mean '{m}'? markings must match exactly)"))
                .unwrap_or_default();
            Err(ValidationError::new(
                "labels.marking",
                format!(
                    "'{}' is not a marking of {}{hint}; use one of {}, or leave the marking empty",
                    marking.escape_debug(),
                    origin.id,
                    origin.allowed_markings()
                ),
            ))
        }
    }
}

/// Marking text compared for collisions: case, spacing, hyphens and
/// underscores do not make two markings different.
fn normalise(marking: &str) -> String {
    marking
        .to_uppercase()
        .replace(['-', '_'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn ordered_pair(a: &BodyId, b: &BodyId) -> (BodyId, BodyId) {
    if a <= b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

// ---------------------------------------------------------------------------
// Raw, spanned form of the file, as serde reads it.

#[derive(Deserialize)]
struct VersionProbe {
    version: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[allow(dead_code)] // checked by VersionProbe, kept so the key is known
    version: i64,
    federation: Spanned<String>,
    hub_body: Spanned<BodyId>,
    observers: Spanned<RawObservers>,
    #[serde(default)]
    body: Vec<Spanned<RawBody>>,
    #[serde(default)]
    agreement: Vec<Spanned<RawAgreement>>,
    #[serde(default)]
    working_group: Vec<Spanned<RawWorkingGroup>>,
    #[serde(default)]
    retention: BTreeMap<Spanned<Classification>, Spanned<String>>,
    #[serde(default)]
    audit: Option<RawAudit>,
    #[serde(default)]
    plans: Option<RawPlans>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlans {
    max_versions_per_hour: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    log_key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkingGroup {
    id: Spanned<String>,
    name: Spanned<String>,
    members: Spanned<Vec<Spanned<BodyId>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObservers {
    kinds: Spanned<Vec<Spanned<Kind>>>,
    max_classification: Spanned<Classification>,
    personal_data: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBody {
    id: Spanned<BodyId>,
    name: Spanned<String>,
    status: Spanned<Status>,
    state: Option<Spanned<State>>,
    clearance: Spanned<Classification>,
    kinds: Spanned<Vec<Spanned<Kind>>>,
    // Read as text: `CrimeArea` only deserializes from 'static input.
    mandate: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    markings: BTreeMap<Spanned<String>, Spanned<Classification>>,
    outbound: Option<Spanned<RawOutbound>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbound {
    #[serde(default)]
    never_share_with: Vec<Spanned<BodyId>>,
    max_to_observers: Option<Spanned<Classification>>,
    releasability_required_from: Option<Spanned<Classification>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgreement {
    between: Spanned<Vec<Spanned<BodyId>>>,
    personal_data: Spanned<bool>,
    reference: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------
// Errors from the parser and from serde.

fn syntax_error(source_name: &str, text: &str, e: &toml::de::Error) -> PolicyError {
    let span = e.span();
    // Whatever could be parsed helps name the key being read.
    let (partial, _) = DeTable::parse_recoverable(text);
    let src = Source {
        name: source_name,
        text,
        root: Some(partial.get_ref()),
    };
    let mut key = src.key_at(span.as_ref());
    if key == TOP_LEVEL {
        if let Some(header) = span.as_ref().and_then(|s| header_before(text, s.start)) {
            key = header;
        }
    }
    PolicyError::Syntax {
        location: src.location(span.as_ref()),
        key,
        problem: e.message().trim().to_owned(),
    }
}

/// The name of the last `[table]` or `[[array]]` header before `offset`.
fn header_before(text: &str, offset: usize) -> Option<String> {
    let end = offset.min(text.len());
    let before = text.get(..end)?;
    before.lines().rev().skip(1).find_map(|line| {
        let t = line.trim();
        let inner = t.strip_prefix('[')?;
        let inner = inner.strip_prefix('[').unwrap_or(inner);
        let name = inner.split(']').next()?.trim();
        (!name.is_empty()).then(|| name.to_owned())
    })
}

fn serde_error(src: &Source<'_>, e: &toml::de::Error) -> PolicyError {
    let span = e.span();
    let message = e.message().trim().to_owned();
    let mut key = src.key_at(span.as_ref());
    // A missing key has no span of its own: name it after its table.
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        key = if key == TOP_LEVEL {
            field.to_owned()
        } else {
            format!("{key}.{field}")
        };
        return src.invalid_key(
            span.as_ref(),
            key,
            format!("missing; add `{field} = ...` here"),
        );
    }
    src.invalid_key(span.as_ref(), key, message)
}

// ---------------------------------------------------------------------------
// Semantic validation.

struct Validator<'a> {
    src: &'a Source<'a>,
}

impl Validator<'_> {
    fn err(&self, span: &Range<usize>, problem: impl Into<String>) -> PolicyError {
        self.src.invalid(span, problem)
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        self.src.location(Some(span)).line
    }

    fn validate(&self, raw: RawConfig) -> Result<Governance, PolicyError> {
        let federation = self.federation(&raw.federation)?;
        let observers = self.observers(&raw.observers)?;

        if raw.body.is_empty() {
            return Err(self.src.invalid_key(
                None,
                "body".to_owned(),
                "no bodies; add one [[body]] table for each body of the federation",
            ));
        }
        // First pass: each body on its own, so that later references can be
        // checked against the complete set of ids.
        let mut first_seen: BTreeMap<BodyId, Range<usize>> = BTreeMap::new();
        let mut bodies = BTreeMap::new();
        for body in &raw.body {
            let body = body.get_ref();
            let id = body.id.get_ref();
            if let Some(first) = first_seen.get(id) {
                return Err(self.err(
                    &body.id.span(),
                    format!(
                        "duplicate body id '{id}' (first defined on line {}); each body appears once",
                        self.line_of(first)
                    ),
                ));
            }
            first_seen.insert(id.clone(), body.id.span());
            bodies.insert(id.clone(), self.body(body, &observers)?);
        }
        let known = bodies
            .keys()
            .map(BodyId::as_str)
            .collect::<Vec<_>>()
            .join(", ");

        // Second pass: references between bodies.
        for body in &raw.body {
            let body = body.get_ref();
            if let Some(outbound) = &body.outbound {
                let rules = self.outbound(
                    body.id.get_ref(),
                    outbound.get_ref(),
                    &bodies,
                    &known,
                    &observers,
                )?;
                if let Some(policy) = bodies.get_mut(body.id.get_ref()) {
                    policy.outbound = rules;
                }
            }
        }

        let hub_body = raw.hub_body.get_ref();
        match bodies.get(hub_body) {
            None => {
                return Err(self.err(
                    &raw.hub_body.span(),
                    format!("'{hub_body}' is not a configured body; name one of: {known}"),
                ))
            }
            Some(b) if b.is_observer() => {
                return Err(self.err(
                    &raw.hub_body.span(),
                    format!("'{hub_body}' is an observer; the hub body must be a member"),
                ))
            }
            Some(_) => {}
        }

        let mut agreements = BTreeMap::new();
        let mut agreement_lines: BTreeMap<(BodyId, BodyId), Range<usize>> = BTreeMap::new();
        for agreement in &raw.agreement {
            let a = self.agreement(agreement, &bodies, &known)?;
            let pair = a.between.clone();
            if let Some(first) = agreement_lines.get(&pair) {
                return Err(self.err(
                    &agreement.get_ref().between.span(),
                    format!(
                        "a second agreement between {} and {} (the first is on line {}); \
                         keep one agreement per pair",
                        pair.0,
                        pair.1,
                        self.line_of(first)
                    ),
                ));
            }
            agreement_lines.insert(pair.clone(), agreement.get_ref().between.span());
            agreements.insert(pair, a);
        }

        let mut working_groups = BTreeMap::new();
        for group in &raw.working_group {
            let g = self.working_group(group.get_ref(), &bodies, &known)?;
            if let Some(first) = working_groups.get(&g.id) {
                let _: &WorkingGroup = first;
                return Err(self.err(
                    &group.get_ref().id.span(),
                    format!(
                        "duplicate working group id '{}'; each group appears once",
                        g.id
                    ),
                ));
            }
            working_groups.insert(g.id.clone(), g);
        }

        let mut retention_ms = BTreeMap::new();
        for (level, text) in &raw.retention {
            let ms = humantime::parse_duration(text.get_ref())
                .ok()
                .and_then(|d| i64::try_from(d.as_millis()).ok())
                .filter(|ms| *ms > 0)
                .ok_or_else(|| {
                    self.err(
                        &text.span(),
                        format!(
                            "'{}' is not a retention period; give a positive duration such as \"365d\" or \"90d\"",
                            text.get_ref()
                        ),
                    )
                })?;
            retention_ms.insert(*level.get_ref(), ms);
        }

        let log_key = match &raw.audit {
            None => None,
            Some(a) => {
                let text = a.log_key.get_ref().trim();
                let want = format!("{federation}/audit");
                let mut parts = text.splitn(3, '+');
                let (name, id, key) = (parts.next(), parts.next(), parts.next());
                let shaped = id
                    .is_some_and(|id| id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                    && key.is_some_and(|k| !k.is_empty());
                if !shaped {
                    return Err(self.err(
                        &a.log_key.span(),
                        "not a note verifier key; give the text of log.vkey (<name>+<key id>+<key>)",
                    ));
                }
                if name != Some(want.as_str()) {
                    return Err(self.err(
                        &a.log_key.span(),
                        format!(
                            "the log key is named {:?}; the federation's log is named {want:?}",
                            name.unwrap_or_default()
                        ),
                    ));
                }
                Some(text.to_owned())
            }
        };

        let max_plan_versions_per_hour = match &raw.plans {
            None => DEFAULT_PLAN_VERSIONS_PER_HOUR,
            Some(p) => {
                let n = *p.max_versions_per_hour.get_ref();
                u32::try_from(n)
                    .ok()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or_else(|| {
                        self.err(
                            &p.max_versions_per_hour.span(),
                            format!("{n} plan versions an hour; give a number from 1 to 1000000"),
                        )
                    })?
            }
        };

        Ok(Governance {
            source_name: self.src.name.to_owned(),
            text: std::sync::Arc::from(self.src.text),
            version: String::new(),
            federation,
            hub_body: hub_body.clone(),
            bodies,
            agreements,
            observers,
            working_groups,
            retention_ms,
            log_key,
            max_plan_versions_per_hour,
        })
    }

    fn working_group(
        &self,
        g: &RawWorkingGroup,
        bodies: &BTreeMap<BodyId, BodyPolicy>,
        known: &str,
    ) -> Result<WorkingGroup, PolicyError> {
        let id = g.id.get_ref();
        let id_ok = (2..=40).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            return Err(self.err(
                &g.id.span(),
                format!("'{id}' is not a working group id; use 2 to 40 lowercase letters, digits or hyphens"),
            ));
        }
        let name = g.name.get_ref();
        if name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
            return Err(self.err(
                &g.name.span(),
                "give a display name of 1 to 200 printable characters",
            ));
        }
        if g.members.get_ref().is_empty() {
            return Err(self.err(
                &g.members.span(),
                "no members; a working group has at least one member body",
            ));
        }
        let mut members = BTreeSet::new();
        for m in g.members.get_ref() {
            let b = m.get_ref();
            if !bodies.contains_key(b) {
                return Err(self.err(
                    &m.span(),
                    format!("'{b}' is not a configured body; name one of: {known}"),
                ));
            }
            if !members.insert(b.clone()) {
                return Err(self.err(
                    &m.span(),
                    format!("'{b}' is listed twice; name each member once"),
                ));
            }
        }
        Ok(WorkingGroup {
            id: id.clone(),
            name: name.clone(),
            members,
        })
    }

    fn federation(&self, value: &Spanned<String>) -> Result<String, PolicyError> {
        let f = value.get_ref();
        let ok = !f.is_empty()
            && f.len() <= 253
            && f.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        if ok {
            Ok(f.clone())
        } else {
            Err(self.err(
                &value.span(),
                format!(
                    "'{}' is not a trust domain; use a lowercase DNS name such as liaison.dev",
                    f.escape_debug()
                ),
            ))
        }
    }

    fn observers(&self, raw: &Spanned<RawObservers>) -> Result<ObserverRestriction, PolicyError> {
        let o = raw.get_ref();
        let kinds = self.kinds(&o.kinds)?;
        if let Some(k) = o
            .kinds
            .get_ref()
            .iter()
            .find(|k| *k.get_ref() == Kind::OperationalPlan)
        {
            return Err(self.err(
                &k.span(),
                "observers never receive operational plans; allow threat_assessment (and alert if needed)",
            ));
        }
        let max = *o.max_classification.get_ref();
        if max > Classification::Restricted {
            return Err(self.err(
                &o.max_classification.span(),
                format!(
                    "{max} is too high for observers, who receive only low-level material; \
                     use UNCLASSIFIED, OFFICIAL_USE or RESTRICTED"
                ),
            ));
        }
        if let Some(pd) = &o.personal_data {
            if *pd.get_ref() {
                return Err(self.err(
                    &pd.span(),
                    "observers never receive personal data; set personal_data = false or remove the key",
                ));
            }
        }
        Ok(ObserverRestriction {
            kinds,
            max_classification: max,
        })
    }

    fn kinds(&self, raw: &Spanned<Vec<Spanned<Kind>>>) -> Result<BTreeSet<Kind>, PolicyError> {
        if raw.get_ref().is_empty() {
            return Err(self.err(
                &raw.span(),
                "empty; list at least one of threat_assessment, operational_plan, alert",
            ));
        }
        let mut kinds = BTreeSet::new();
        for k in raw.get_ref() {
            if !kinds.insert(*k.get_ref()) {
                return Err(self.err(
                    &k.span(),
                    format!("'{}' is listed twice; list it once", k.get_ref()),
                ));
            }
        }
        Ok(kinds)
    }

    fn body(
        &self,
        b: &RawBody,
        observers: &ObserverRestriction,
    ) -> Result<BodyPolicy, PolicyError> {
        let id = b.id.get_ref();
        let name = b.name.get_ref();
        if name.trim().is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(self.err(
                &b.name.span(),
                format!("the display name of '{id}' must be 1 to {MAX_NAME} bytes of plain text"),
            ));
        }
        let status = *b.status.get_ref();
        let clearance = *b.clearance.get_ref();
        let kinds = self.kinds(&b.kinds)?;

        let mut mandate = BTreeSet::new();
        for area in b.mandate.get_ref() {
            let parsed = CrimeArea::parse(area.get_ref()).map_err(|e| self.err(&area.span(), e))?;
            if !mandate.insert(parsed) {
                return Err(self.err(
                    &area.span(),
                    format!(
                        "'{}' is listed twice in the mandate of '{id}'; list it once",
                        area.get_ref()
                    ),
                ));
            }
        }

        if status == Status::Observer {
            if let Some(k) = b
                .kinds
                .get_ref()
                .iter()
                .find(|k| !observers.kinds.contains(k.get_ref()))
            {
                return Err(self.err(
                    &k.span(),
                    format!(
                        "'{id}' is an observer and observers receive only {}; remove '{}'",
                        join(observers.kinds.iter()),
                        k.get_ref()
                    ),
                ));
            }
            if clearance > observers.max_classification {
                return Err(self.err(
                    &b.clearance.span(),
                    format!(
                        "'{id}' is an observer and observers receive at most {}; \
                         set its clearance to {} or lower",
                        observers.max_classification, observers.max_classification
                    ),
                ));
            }
        }

        let markings = self.markings(id, &b.markings)?;
        Ok(BodyPolicy {
            id: id.clone(),
            name: name.clone(),
            status,
            state: b.state.as_ref().map_or(State::Active, |s| *s.get_ref()),
            clearance,
            kinds,
            mandate,
            markings,
            outbound: Outbound::default(),
        })
    }

    fn markings(
        &self,
        id: &BodyId,
        raw: &BTreeMap<Spanned<String>, Spanned<Classification>>,
    ) -> Result<BTreeMap<Classification, String>, PolicyError> {
        // Check in file order, so the first error reported is the first in the file.
        let mut entries: Vec<_> = raw.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);

        let mut by_level: BTreeMap<Classification, (&Spanned<String>, Range<usize>)> =
            BTreeMap::new();
        let mut by_norm: BTreeMap<String, &Spanned<String>> = BTreeMap::new();
        for (marking, level) in entries {
            let text = marking.get_ref();
            let level_v = *level.get_ref();
            if text.trim().is_empty()
                || text.trim() != text
                || text.len() > MAX_MARKING
                || text.chars().any(char::is_control)
            {
                return Err(self.err(
                    &marking.span(),
                    format!(
                        "'{}' is not a usable marking; use 1 to {MAX_MARKING} bytes of plain text \
                         without leading or trailing spaces",
                        text.escape_debug()
                    ),
                ));
            }
            let norm = normalise(text);
            if let Some(other) = by_norm.get(&norm) {
                return Err(self.err(
                    &marking.span(),
                    format!(
                        "'{text}' collides with '{}' (line {}): markings of '{id}' must differ by more \
                         than case, spaces or hyphens",
                        other.get_ref(),
                        self.line_of(&other.span())
                    ),
                ));
            }
            if let Some(canonical) = Classification::ALL
                .into_iter()
                .find(|c| c.as_str().replace('_', " ") == norm && *c != level_v)
            {
                return Err(self.err(
                    &marking.span(),
                    format!(
                        "'{text}' reads as the common level {canonical} but is mapped to {level_v}; \
                         choose a marking that cannot be mistaken for another level"
                    ),
                ));
            }
            if let Some((other, _)) = by_level.get(&level_v) {
                return Err(self.err(
                    &marking.span(),
                    format!(
                        "'{text}' and '{}' (line {}) both map to {level_v}; give '{id}' one native \
                         marking per level so readers see one rendering",
                        other.get_ref(),
                        self.line_of(&other.span())
                    ),
                ));
            }
            by_norm.insert(norm, marking);
            by_level.insert(level_v, (marking, level.span()));
        }
        Ok(by_level
            .into_iter()
            .map(|(level, (marking, _))| (level, marking.get_ref().clone()))
            .collect())
    }

    fn outbound(
        &self,
        id: &BodyId,
        raw: &RawOutbound,
        bodies: &BTreeMap<BodyId, BodyPolicy>,
        known: &str,
        observers: &ObserverRestriction,
    ) -> Result<Outbound, PolicyError> {
        let mut never = BTreeSet::new();
        for other in &raw.never_share_with {
            let o = other.get_ref();
            if o == id {
                return Err(self.err(
                    &other.span(),
                    format!("'{id}' cannot exclude itself; list other bodies only"),
                ));
            }
            if !bodies.contains_key(o) {
                return Err(self.err(
                    &other.span(),
                    format!("'{o}' is not a configured body; name one of: {known}"),
                ));
            }
            if !never.insert(o.clone()) {
                return Err(self.err(
                    &other.span(),
                    format!("'{o}' is listed twice; list it once"),
                ));
            }
        }
        let max_to_observers = raw
            .max_to_observers
            .as_ref()
            .map(|m| (*m.get_ref(), m.span()));
        if let Some((max, span)) = &max_to_observers {
            if *max > observers.max_classification {
                return Err(self.err(
                    span,
                    format!(
                        "{max} is above the federation-wide observer limit {} and would have no effect; \
                         use {} or lower",
                        observers.max_classification, observers.max_classification
                    ),
                ));
            }
        }
        Ok(Outbound {
            never_share_with: never,
            max_to_observers: max_to_observers.map(|(m, _)| m),
            releasability_required_from: raw
                .releasability_required_from
                .as_ref()
                .map(|r| *r.get_ref()),
        })
    }

    fn agreement(
        &self,
        raw: &Spanned<RawAgreement>,
        bodies: &BTreeMap<BodyId, BodyPolicy>,
        known: &str,
    ) -> Result<Agreement, PolicyError> {
        let a = raw.get_ref();
        let between = a.between.get_ref();
        if between.len() != 2 {
            return Err(self.err(
                &a.between.span(),
                format!(
                    "names {} bodies; an agreement is between exactly two, for example [\"europol\", \"interpol\"]",
                    between.len()
                ),
            ));
        }
        for b in between {
            let policy = bodies.get(b.get_ref()).ok_or_else(|| {
                self.err(
                    &b.span(),
                    format!(
                        "'{}' is not a configured body; name one of: {known}",
                        b.get_ref()
                    ),
                )
            })?;
            if *a.personal_data.get_ref() && policy.is_observer() {
                return Err(self.err(
                    &a.personal_data.span(),
                    format!(
                        "'{}' is an observer and observers never receive personal data; \
                         set personal_data = false",
                        policy.id
                    ),
                ));
            }
        }
        let (x, y) = (between[0].get_ref(), between[1].get_ref());
        if x == y {
            return Err(self.err(
                &between[1].span(),
                format!("an agreement of '{x}' with itself; name two different bodies"),
            ));
        }
        let reference = match &a.reference {
            None => None,
            Some(r) => {
                let t = r.get_ref();
                if t.trim().is_empty() || t.len() > MAX_REFERENCE || t.chars().any(char::is_control)
                {
                    return Err(self.err(
                        &r.span(),
                        format!("the reference must be 1 to {MAX_REFERENCE} bytes of plain text, or left out"),
                    ));
                }
                Some(t.clone())
            }
        };
        Ok(Agreement {
            between: ordered_pair(x, y),
            personal_data: *a.personal_data.get_ref(),
            reference,
        })
    }
}

fn join<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use liaison_types::Priority;

    /// A small, valid configuration; tests replace single lines (numbered in
    /// the comments) to check that each error names the right place.
    const BASE: &str = r#"version = 1
federation = "liaison.dev"
hub_body = "interpol"

[observers]
kinds = ["threat_assessment"]
max_classification = "OFFICIAL_USE"

[[body]]
id = "interpol"
name = "INTERPOL"
status = "member"
clearance = "SECRET"
kinds = ["threat_assessment", "operational_plan", "alert"]
mandate = ["terrorism", "cybercrime", "drugs"]
[body.markings]
"INTERPOL FOR OFFICIAL USE ONLY" = "OFFICIAL_USE"
"INTERPOL RESTRICTED" = "RESTRICTED"

[[body]]
id = "europol"
name = "Europol"
status = "member"
clearance = "SECRET"
kinds = ["threat_assessment", "alert"]
mandate = ["cybercrime", "drugs"]
[body.markings]
"EU RESTRICTED" = "RESTRICTED"
"EU SECRET" = "SECRET"
[body.outbound]
never_share_with = ["unodc"]

[[body]]
id = "unodc"
name = "UNODC"
status = "observer"
clearance = "OFFICIAL_USE"
kinds = ["threat_assessment"]
mandate = ["drugs"]

[[agreement]]
between = ["europol", "interpol"]
personal_data = true
reference = "TEST-1"
"#;

    fn with_line(line: usize, replacement: &str) -> String {
        let mut lines: Vec<&str> = BASE.lines().collect();
        assert!(line >= 1 && line <= lines.len(), "line {line} out of range");
        lines[line - 1] = replacement;
        lines.join("\n") + "\n"
    }

    fn load(text: &str) -> Result<Governance, PolicyError> {
        Governance::from_toml("test.toml", text)
    }

    fn gov() -> Governance {
        load(BASE).expect("BASE is valid")
    }

    #[test]
    fn base_loads_with_its_values() {
        let g = gov();
        assert_eq!(g.source_name(), "test.toml");
        assert_eq!(g.federation(), "liaison.dev");
        assert_eq!(g.hub_body().as_str(), "interpol");
        let ids: Vec<_> = g.bodies().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["europol", "interpol", "unodc"], "id order");
        let europol = g.body("europol").expect("europol");
        assert_eq!(europol.clearance, Classification::Secret);
        assert_eq!(europol.state, State::Active, "state defaults to active");
        assert!(
            europol.kinds.contains(&Kind::Alert) && !europol.kinds.contains(&Kind::OperationalPlan)
        );
        assert_eq!(europol.outbound.never_share_with.len(), 1);
        let unodc = BodyId::parse("unodc").expect("id");
        assert!(g.body(&unodc).expect("unodc").is_observer());
        assert!(g.is_known("unodc") && !g.is_known("sco"));
        let interpol = BodyId::parse("interpol").expect("id");
        let europol_id = BodyId::parse("europol").expect("id");
        let a = g.agreement(&interpol, &europol_id).expect("either order");
        assert!(a.personal_data);
        assert_eq!(a.reference.as_deref(), Some("TEST-1"));
        assert!(g.agreement(&interpol, &unodc).is_none());
        assert_eq!(
            g.observers().max_classification,
            Classification::OfficialUse
        );
        assert_eq!(g.agreements().count(), 1);
    }

    #[test]
    fn version_is_the_sha256_of_the_exact_text() {
        let g = gov();
        assert_eq!(g.version(), hex::encode(Sha256::digest(BASE.as_bytes())));
        assert_eq!(g.version().len(), 64);
        assert!(g
            .version()
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        let commented = format!("# a comment\n{BASE}");
        assert_ne!(load(&commented).expect("valid").version(), g.version());
        assert_eq!(load(BASE).expect("valid").version(), g.version());
    }

    /// (line replaced, replacement, expected line, expected key, expected words)
    const CASES: &[(usize, &str, usize, &str, &str)] = &[
        (1, "version = 2", 1, "version", "unsupported version 2"),
        (
            2,
            "federation = \"Liaison Dev\"",
            2,
            "federation",
            "not a trust domain",
        ),
        (3, "hub_body = \"unodc\"", 3, "hub_body", "observer"),
        (
            3,
            "hub_body = \"nobody\"",
            3,
            "hub_body",
            "not a configured body",
        ),
        (
            6,
            "kinds = [\"operational_plan\"]",
            6,
            "observers.kinds[0]",
            "never receive operational plans",
        ),
        (
            7,
            "max_classification = \"SECRET\"",
            7,
            "observers.max_classification",
            "too high",
        ),
        (
            13,
            "clearance = \"TOP_SECRET\"",
            13,
            "body[0].clearance",
            "unknown variant `TOP_SECRET`",
        ),
        (
            12,
            "status = \"partner\"",
            12,
            "body[0].status",
            "unknown variant `partner`",
        ),
        (
            21,
            "id = \"interpol\"",
            21,
            "body[1].id",
            "duplicate body id 'interpol' (first defined on line 10)",
        ),
        (21, "id = \"Europol\"", 21, "body[1].id", "invalid body id"),
        (22, "name = \"\"", 22, "body[1].name", "display name"),
        (
            22,
            "nom = \"Europol\"",
            22,
            "body[1].nom",
            "unknown field `nom`",
        ),
        (24, "", 20, "body[1].clearance", "missing"),
        (25, "kinds = []", 25, "body[1].kinds", "empty"),
        (
            25,
            "kinds = [\"alert\", \"alert\"]",
            25,
            "body[1].kinds[1]",
            "listed twice",
        ),
        (
            26,
            "mandate = [\"cybercrime\", \"jaywalking\"]",
            26,
            "body[1].mandate[1]",
            "unknown crime area 'jaywalking'",
        ),
        (
            26,
            "mandate = [\"drugs\", \"drugs\"]",
            26,
            "body[1].mandate[1]",
            "listed twice",
        ),
        (
            29,
            "\"EU SECRET\" = \"TOP\"",
            29,
            "body[1].markings.\"EU SECRET\"",
            "unknown variant `TOP`",
        ),
        (
            29,
            "\"eu-restricted\" = \"SECRET\"",
            29,
            "body[1].markings.eu-restricted",
            "collides with 'EU RESTRICTED' (line 28)",
        ),
        (
            29,
            "\"EU LIMITED\" = \"RESTRICTED\"",
            29,
            "body[1].markings.\"EU LIMITED\"",
            "both map to RESTRICTED",
        ),
        (
            29,
            "\"CONFIDENTIAL\" = \"SECRET\"",
            29,
            "body[1].markings.CONFIDENTIAL",
            "common level CONFIDENTIAL",
        ),
        (
            31,
            "never_share_with = [\"unodc\", \"sco\"]",
            31,
            "body[1].outbound.never_share_with[1]",
            "'sco' is not a configured body",
        ),
        (
            31,
            "never_share_with = [\"europol\"]",
            31,
            "body[1].outbound.never_share_with[0]",
            "cannot exclude itself",
        ),
        (
            31,
            "max_to_observers = \"RESTRICTED\"",
            31,
            "body[1].outbound.max_to_observers",
            "no effect",
        ),
        (
            31,
            "always_share_with = []",
            31,
            "body[1].outbound.always_share_with",
            "unknown field",
        ),
        (
            37,
            "clearance = \"RESTRICTED\"",
            37,
            "body[2].clearance",
            "observer",
        ),
        (
            38,
            "kinds = [\"threat_assessment\", \"alert\"]",
            38,
            "body[2].kinds[1]",
            "remove 'alert'",
        ),
        (
            42,
            "between = [\"europol\", \"interpool\"]",
            42,
            "agreement[0].between[1]",
            "'interpool' is not a configured body",
        ),
        (
            42,
            "between = [\"europol\", \"europol\"]",
            42,
            "agreement[0].between[1]",
            "with itself",
        ),
        (
            42,
            "between = [\"europol\"]",
            42,
            "agreement[0].between",
            "exactly two",
        ),
        (
            42,
            "between = [\"interpol\", \"unodc\"]",
            43,
            "agreement[0].personal_data",
            "never receive personal data",
        ),
        (
            43,
            "personal_data = \"yes\"",
            43,
            "agreement[0].personal_data",
            "expected a boolean",
        ),
        (
            44,
            "reference = \"\"",
            44,
            "agreement[0].reference",
            "reference",
        ),
    ];

    #[test]
    fn config_errors_name_file_line_key_and_problem() {
        for (line, replacement, want_line, want_key, words) in CASES {
            let err = load(&with_line(*line, replacement)).expect_err(replacement);
            assert!(
                matches!(err, PolicyError::Invalid { .. }),
                "{replacement}: {err}"
            );
            let loc = err.location();
            assert_eq!(loc.source_name, "test.toml", "{replacement}: {err}");
            assert_eq!(loc.line, *want_line, "{replacement}: {err}");
            assert!(loc.column.is_some(), "{replacement}: {err}");
            assert_eq!(err.key(), *want_key, "{replacement}: {err}");
            assert!(err.problem().contains(words), "{replacement}: {err}");
            let shown = err.to_string();
            assert!(
                shown.starts_with(&format!("test.toml:{want_line}:")),
                "{shown}"
            );
        }
    }

    #[test]
    fn columns_point_at_the_value() {
        let err =
            load(&with_line(42, "between = [\"europol\", \"interpool\"]")).expect_err("bad body");
        assert_eq!(err.location().column, Some(23));
        let err = load(&with_line(13, "clearance = \"TOP_SECRET\"")).expect_err("bad level");
        assert_eq!(err.location().column, Some(13));
    }

    #[test]
    fn a_second_agreement_for_a_pair_names_the_first() {
        let text = format!(
            "{BASE}\n[[agreement]]\nbetween = [\"interpol\", \"europol\"]\npersonal_data = false\n"
        );
        let err = load(&text).expect_err("duplicate pair");
        assert_eq!(err.location().line, 47, "{err}");
        assert!(err.problem().contains("first is on line 42"), "{err}");
    }

    #[test]
    fn state_overrides_change_states_and_mark_the_version() {
        let g = load(BASE).expect("valid");
        let europol = BodyId::parse("europol").unwrap();
        let same = g.with_states(&BTreeMap::new());
        assert_eq!(same, g);
        let suspended = g.with_states(&[(europol.clone(), State::Suspended)].into());
        assert_eq!(suspended.body(&europol).unwrap().state, State::Suspended);
        assert!(suspended
            .version()
            .starts_with(&format!("{}+", g.version())));
        // Setting the state the file already says changes nothing.
        assert_eq!(g.with_states(&[(europol, State::Active)].into()), g);
    }

    #[test]
    fn retention_periods_are_read_per_level_and_validated() {
        let g = load(&format!(
            "{BASE}\n[retention]\nSECRET = \"90d\"\nOFFICIAL_USE = \"365d\"\n"
        ))
        .expect("valid");
        assert_eq!(
            g.retention_ms(Classification::Secret),
            Some(90 * 86_400_000)
        );
        assert_eq!(
            g.retention_ms(Classification::OfficialUse),
            Some(365 * 86_400_000)
        );
        assert_eq!(
            g.retention_ms(Classification::Restricted),
            None,
            "kept until removed"
        );
        let err =
            load(&format!("{BASE}\n[retention]\nSECRET = \"soon\"\n")).expect_err("bad period");
        assert!(
            err.problem().contains("'soon' is not a retention period"),
            "{err}"
        );
        assert_eq!(err.location().line, BASE.lines().count() + 3, "{err}");
        assert!(load(&format!("{BASE}\n[retention]\nTOP_SECRET = \"1d\"\n")).is_err());
    }

    #[test]
    fn the_audit_log_key_is_named_for_the_federation_and_shaped_as_a_verifier_key() {
        let fed = load(BASE).expect("valid").federation().to_owned();
        assert_eq!(load(BASE).unwrap().audit_log_key(), None);
        let key = format!("{fed}/audit+0aa6d0ad+AYqI4910CfGV/VLbLTy6XXLKZwm/HZQSG/N0iAG0D29c");
        let g = load(&format!("{BASE}\n[audit]\nlog_key = \"{key}\"\n")).expect("valid");
        assert_eq!(g.audit_log_key(), Some(key.as_str()));
        let err = load(&format!(
            "{BASE}\n[audit]\nlog_key = \"other/audit+0aa6d0ad+AYqI\"\n"
        ))
        .expect_err("another log's name");
        assert!(err.problem().contains("is named \"other/audit\""), "{err}");
        assert_eq!(err.location().line, BASE.lines().count() + 3, "{err}");
        for bad in ["not a key", "x/audit+zz+AY", "x/audit+0aa6d0ad+"] {
            let err = load(&format!("{BASE}\n[audit]\nlog_key = \"{bad}\"\n")).expect_err(bad);
            assert!(
                err.problem().contains("not a note verifier key"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_plan_rate_defaults_and_is_bounded() {
        assert_eq!(
            load(BASE).unwrap().max_plan_versions_per_hour(),
            DEFAULT_PLAN_VERSIONS_PER_HOUR
        );
        let g = load(&format!("{BASE}\n[plans]\nmax_versions_per_hour = 7\n")).unwrap();
        assert_eq!(g.max_plan_versions_per_hour(), 7);
        for bad in ["0", "-1", "1000001"] {
            let err =
                load(&format!("{BASE}\n[plans]\nmax_versions_per_hour = {bad}\n")).expect_err(bad);
            assert!(err.problem().contains("from 1 to 1000000"), "{bad}: {err}");
            assert_eq!(err.location().line, BASE.lines().count() + 3, "{err}");
        }
        assert!(load(&format!("{BASE}\n[plans]\nmax_plans = 7\n")).is_err());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = load(&with_line(24, "clearance = SECRET")).expect_err("unquoted");
        assert!(matches!(err, PolicyError::Syntax { .. }), "{err}");
        assert_eq!(err.location().line, 24, "{err}");
        assert!(err.to_string().starts_with("test.toml:24:"), "{err}");
        assert!(err.to_string().contains("invalid toml"), "{err}");

        let err = load(&with_line(20, "[[body]")).expect_err("bad header");
        assert_eq!(err.location().line, 20, "{err}");
    }

    #[test]
    fn missing_version_and_missing_bodies_are_named() {
        let err = load(&with_line(1, "")).expect_err("no version");
        assert_eq!(err.key(), "version");
        assert!(err.problem().contains("version = 1"), "{err}");

        let head: String = BASE.lines().take(8).collect::<Vec<_>>().join("\n");
        let err = load(&head).expect_err("no bodies");
        assert_eq!(err.key(), "body");
        assert!(err.problem().contains("no bodies"), "{err}");

        let err = load(&with_line(5, "[observatory]")).expect_err("unknown table");
        assert_eq!(err.location().line, 5, "{err}");
        assert!(
            err.problem().contains("unknown field `observatory`"),
            "{err}"
        );
    }

    #[test]
    fn observers_personal_data_can_only_be_false() {
        let ok = with_line(
            7,
            "max_classification = \"OFFICIAL_USE\"\npersonal_data = false",
        );
        assert!(load(&ok).is_ok());
        let err = load(&with_line(
            7,
            "max_classification = \"OFFICIAL_USE\"\npersonal_data = true",
        ))
        .expect_err("observers with personal data");
        assert_eq!(err.key(), "observers.personal_data");
        assert_eq!(err.location().line, 8);
    }

    #[test]
    fn markings_render_and_fall_back_to_canonical_names() {
        let g = gov();
        let europol = BodyId::parse("europol").expect("id");
        let interpol = BodyId::parse("interpol").expect("id");
        assert_eq!(
            g.marking_for(&europol, Classification::Restricted),
            "EU RESTRICTED"
        );
        assert_eq!(
            g.marking_for(&europol, Classification::Confidential),
            "CONFIDENTIAL"
        );
        assert_eq!(
            g.marking_for(&interpol, Classification::OfficialUse),
            "INTERPOL FOR OFFICIAL USE ONLY"
        );
        let stranger = BodyId::parse("stranger").expect("id");
        assert_eq!(g.marking_for(&stranger, Classification::Secret), "SECRET");
        assert_eq!(
            g.classification_for_marking(&europol, "EU SECRET"),
            Some(Classification::Secret)
        );
        assert_eq!(g.classification_for_marking(&europol, "eu secret"), None);
        assert_eq!(
            g.classification_for_marking(&europol, "CONFIDENTIAL"),
            Some(Classification::Confidential)
        );
        assert_eq!(
            g.classification_for_marking(&europol, "SECRET"),
            None,
            "has a native marking"
        );
    }

    fn labels(origin: &str) -> Labels {
        Labels {
            plan: None,
            message_id: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
            origin: BodyId::parse(origin).expect("id"),
            kind: Kind::Alert,
            classification: Classification::Restricted,
            marking: None,
            crime_areas: [CrimeArea::parse("drugs").expect("area")].into(),
            regions: BTreeSet::new(),
            countries: BTreeSet::new(),
            personal_data: false,
            releasable_to: BTreeSet::new(),
            excluded: BTreeSet::new(),
            priority: Priority::Routine,
            created_at_ms: 1,
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

    #[test]
    fn check_labels_requires_known_bodies() {
        let g = gov();
        assert_eq!(g.check_labels(&labels("europol")), Ok(()));

        let err = g.check_labels(&labels("sco")).expect_err("unknown origin");
        assert_eq!(err.field, "labels.origin");
        assert!(err.problem.contains("europol, interpol, unodc"), "{err}");

        let mut l = labels("europol");
        l.releasable_to = ids(&["interpol", "zz-unknown"]);
        let err = g.check_labels(&l).expect_err("unknown releasable");
        assert_eq!(err.field, "labels.releasable_to[1]");
        assert!(
            err.problem.contains("'zz-unknown'") && err.problem.contains("known bodies"),
            "{err}"
        );

        let mut l = labels("europol");
        l.excluded = ids(&["aa-unknown"]);
        let err = g.check_labels(&l).expect_err("unknown excluded");
        assert_eq!(err.field, "labels.excluded[0]");
    }

    #[test]
    fn check_labels_never_guesses_a_marking() {
        let g = gov();
        let mut l = labels("europol");
        l.marking = Some("EU RESTRICTED".into());
        assert_eq!(g.check_labels(&l), Ok(()));

        l.marking = Some("EU SECRET".into());
        let err = g.check_labels(&l).expect_err("marking for another level");
        assert_eq!(err.field, "labels.marking");
        assert!(
            err.problem.contains("SECRET") && err.problem.contains("'EU RESTRICTED'"),
            "{err}"
        );

        l.marking = Some("eu restricted".into());
        let err = g.check_labels(&l).expect_err("case differs");
        assert!(
            err.problem.contains("did you mean 'EU RESTRICTED'"),
            "{err}"
        );

        l.marking = Some("INTERPOL RESTRICTED".into());
        let err = g.check_labels(&l).expect_err("another body's marking");
        assert!(err.problem.contains("not a marking of europol"), "{err}");
        assert!(
            err.problem.contains("'EU RESTRICTED' (RESTRICTED)"),
            "{err}"
        );

        l.marking = Some("RESTRICTED".into());
        assert!(
            g.check_labels(&l).is_err(),
            "canonical name where a native marking exists"
        );

        l.classification = Classification::Confidential;
        l.marking = Some("CONFIDENTIAL".into());
        assert_eq!(
            g.check_labels(&l),
            Ok(()),
            "canonical name where none is native"
        );
    }
}

//! Building a small governance in code, for tests of this and other crates.
//!
//! The builder writes TOML text and loads it with [`Governance::from_toml`],
//! so a test governance is validated exactly like the shipped file and has a
//! real content-hash version. [`GovernanceBuilder::to_toml`] shows the text,
//! which a test can also write to a file for a hub to load.
//!
//! ```
//! use liaison_policy::{BodySpec, Governance, State};
//! use liaison_types::Classification;
//!
//! let gov = Governance::for_test()
//!     .member("interpol", Classification::Secret, &["terrorism", "cybercrime"])
//!     .member("europol", Classification::Secret, &["cybercrime", "drugs"])
//!     .body(BodySpec::member("frontex", Classification::Confidential, &["drugs"])
//!         .with_state(State::Suspended))
//!     .observer("unodc", &["drugs"])
//!     .agreement("europol", "interpol", true)
//!     .build()
//!     .expect("valid test governance");
//! assert_eq!(gov.bodies().count(), 4);
//! ```

use liaison_types::{Classification, Kind};

use crate::config::{Governance, State, Status};
use crate::error::PolicyError;

/// One body for [`GovernanceBuilder`]; fields map one to one to the keys of
/// a `[[body]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodySpec {
    /// `id`.
    pub id: String,
    /// `name`.
    pub name: String,
    /// `status`.
    pub status: Status,
    /// `state`.
    pub state: State,
    /// `clearance`.
    pub clearance: Classification,
    /// `kinds`.
    pub kinds: Vec<Kind>,
    /// `mandate` (crime area names).
    pub mandate: Vec<String>,
    /// `[body.markings]`, native marking to level.
    pub markings: Vec<(String, Classification)>,
    /// `outbound.never_share_with`.
    pub never_share_with: Vec<String>,
    /// `outbound.max_to_observers`.
    pub max_to_observers: Option<Classification>,
    /// `outbound.releasability_required_from`.
    pub releasability_required_from: Option<Classification>,
}

impl BodySpec {
    /// An active member accepting every kind, with no native markings.
    pub fn member(id: &str, clearance: Classification, mandate: &[&str]) -> Self {
        Self {
            id: id.to_owned(),
            name: id.to_uppercase(),
            status: Status::Member,
            state: State::Active,
            clearance,
            kinds: Kind::ALL.to_vec(),
            mandate: mandate.iter().map(|m| (*m).to_owned()).collect(),
            markings: Vec::new(),
            never_share_with: Vec::new(),
            max_to_observers: None,
            releasability_required_from: None,
        }
    }

    /// An active observer accepting threat assessments up to OFFICIAL_USE
    /// (the builder's default observer limits).
    pub fn observer(id: &str, mandate: &[&str]) -> Self {
        Self {
            status: Status::Observer,
            kinds: vec![Kind::ThreatAssessment],
            ..Self::member(id, Classification::OfficialUse, mandate)
        }
    }

    /// Sets the state.
    pub fn with_state(mut self, state: State) -> Self {
        self.state = state;
        self
    }

    /// Sets the accepted kinds.
    pub fn with_kinds(mut self, kinds: &[Kind]) -> Self {
        self.kinds = kinds.to_vec();
        self
    }

    /// Adds a native marking.
    pub fn with_marking(mut self, marking: &str, level: Classification) -> Self {
        self.markings.push((marking.to_owned(), level));
        self
    }

    /// Sets the bodies this one never shares with.
    pub fn with_never_share_with(mut self, ids: &[&str]) -> Self {
        self.never_share_with = ids.iter().map(|i| (*i).to_owned()).collect();
        self
    }

    /// Sets the highest level released to observers.
    pub fn with_max_to_observers(mut self, level: Classification) -> Self {
        self.max_to_observers = Some(level);
        self
    }

    /// Sets the level from which recipients must be named in releasable_to.
    pub fn with_releasability_required_from(mut self, level: Classification) -> Self {
        self.releasability_required_from = Some(level);
        self
    }
}

/// Builds a governance configuration in code; see the module example.
///
/// Defaults: federation `liaison.dev`, hub body `interpol` (which the test
/// must add as a member), observers limited to threat assessments up to
/// OFFICIAL_USE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GovernanceBuilder {
    federation: String,
    hub_body: String,
    observer_kinds: Vec<Kind>,
    observer_max: Classification,
    bodies: Vec<BodySpec>,
    agreements: Vec<(String, String, bool)>,
    working_groups: Vec<(String, Vec<String>)>,
}

impl Default for GovernanceBuilder {
    fn default() -> Self {
        Self {
            federation: "liaison.dev".to_owned(),
            hub_body: "interpol".to_owned(),
            observer_kinds: vec![Kind::ThreatAssessment],
            observer_max: Classification::OfficialUse,
            bodies: Vec::new(),
            agreements: Vec::new(),
            working_groups: Vec::new(),
        }
    }
}

impl Governance {
    /// Starts a [`GovernanceBuilder`] for tests.
    pub fn for_test() -> GovernanceBuilder {
        GovernanceBuilder::default()
    }
}

impl GovernanceBuilder {
    /// Sets the federation trust domain.
    pub fn federation(mut self, federation: &str) -> Self {
        self.federation = federation.to_owned();
        self
    }

    /// Sets the hub body.
    pub fn hub_body(mut self, id: &str) -> Self {
        self.hub_body = id.to_owned();
        self
    }

    /// Sets the federation-wide observer limits.
    pub fn observers(mut self, kinds: &[Kind], max: Classification) -> Self {
        self.observer_kinds = kinds.to_vec();
        self.observer_max = max;
        self
    }

    /// Adds an active member accepting every kind.
    pub fn member(self, id: &str, clearance: Classification, mandate: &[&str]) -> Self {
        self.body(BodySpec::member(id, clearance, mandate))
    }

    /// Adds an active observer (see [`BodySpec::observer`]).
    pub fn observer(self, id: &str, mandate: &[&str]) -> Self {
        self.body(BodySpec::observer(id, mandate))
    }

    /// Adds a body.
    pub fn body(mut self, spec: BodySpec) -> Self {
        self.bodies.push(spec);
        self
    }

    /// Adds a working group with these members.
    pub fn working_group(mut self, id: &str, members: &[&str]) -> Self {
        self.working_groups.push((
            id.to_owned(),
            members.iter().map(|m| (*m).to_owned()).collect(),
        ));
        self
    }

    /// Adds an agreement between two bodies.
    pub fn agreement(mut self, a: &str, b: &str, personal_data: bool) -> Self {
        self.agreements
            .push((a.to_owned(), b.to_owned(), personal_data));
        self
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        out.push_str("version = 1\n");
        out.push_str(&format!("federation = {}\n", quote(&self.federation)));
        out.push_str(&format!("hub_body = {}\n\n", quote(&self.hub_body)));
        out.push_str("[observers]\n");
        out.push_str(&format!(
            "kinds = {}\n",
            list(self.observer_kinds.iter().map(|k| k.as_str()))
        ));
        out.push_str(&format!(
            "max_classification = {}\n",
            quote(self.observer_max.as_str())
        ));
        for b in &self.bodies {
            out.push_str("\n[[body]]\n");
            out.push_str(&format!("id = {}\n", quote(&b.id)));
            out.push_str(&format!("name = {}\n", quote(&b.name)));
            out.push_str(&format!("status = {}\n", quote(b.status.as_str())));
            out.push_str(&format!("state = {}\n", quote(b.state.as_str())));
            out.push_str(&format!("clearance = {}\n", quote(b.clearance.as_str())));
            out.push_str(&format!(
                "kinds = {}\n",
                list(b.kinds.iter().map(|k| k.as_str()))
            ));
            out.push_str(&format!(
                "mandate = {}\n",
                list(b.mandate.iter().map(String::as_str))
            ));
            if !b.markings.is_empty() {
                out.push_str("[body.markings]\n");
                for (marking, level) in &b.markings {
                    out.push_str(&format!("{} = {}\n", quote(marking), quote(level.as_str())));
                }
            }
            if !b.never_share_with.is_empty()
                || b.max_to_observers.is_some()
                || b.releasability_required_from.is_some()
            {
                out.push_str("[body.outbound]\n");
                out.push_str(&format!(
                    "never_share_with = {}\n",
                    list(b.never_share_with.iter().map(String::as_str))
                ));
                if let Some(m) = b.max_to_observers {
                    out.push_str(&format!("max_to_observers = {}\n", quote(m.as_str())));
                }
                if let Some(r) = b.releasability_required_from {
                    out.push_str(&format!(
                        "releasability_required_from = {}\n",
                        quote(r.as_str())
                    ));
                }
            }
        }
        for (a, b, personal_data) in &self.agreements {
            out.push_str("\n[[agreement]]\n");
            out.push_str(&format!(
                "between = {}\n",
                list([a.as_str(), b.as_str()].into_iter())
            ));
            out.push_str(&format!("personal_data = {personal_data}\n"));
        }
        for (id, members) in &self.working_groups {
            out.push_str("\n[[working_group]]\n");
            out.push_str(&format!("id = {}\nname = {}\n", quote(id), quote(id)));
            out.push_str(&format!(
                "members = {}\n",
                list(members.iter().map(String::as_str))
            ));
        }
        out
    }

    /// Loads the configuration, validated as any file would be (errors name
    /// the source `for_test`).
    pub fn build(&self) -> Result<Governance, PolicyError> {
        Governance::from_toml("for_test", &self.to_toml())
    }
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = items.map(quote).collect();
    format!("[{}]", quoted.join(", "))
}

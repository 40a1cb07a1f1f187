//! The label vocabulary: classification scale, kinds, priorities, body ids
//! and crime areas.

use std::fmt;
use std::str::FromStr;

use liaison_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// The federation's common, ordered classification scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Classification {
    /// Public information.
    Unclassified,
    /// For official use only.
    OfficialUse,
    /// Restricted.
    Restricted,
    /// Confidential.
    Confidential,
    /// Secret.
    Secret,
}

impl Classification {
    /// Every level, lowest first.
    pub const ALL: [Classification; 5] = [
        Self::Unclassified,
        Self::OfficialUse,
        Self::Restricted,
        Self::Confidential,
        Self::Secret,
    ];

    /// The canonical name, as in configuration files and the proto enum.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unclassified => "UNCLASSIFIED",
            Self::OfficialUse => "OFFICIAL_USE",
            Self::Restricted => "RESTRICTED",
            Self::Confidential => "CONFIDENTIAL",
            Self::Secret => "SECRET",
        }
    }

    /// Converts from the proto enum value.
    pub fn from_proto(value: i32) -> Option<Self> {
        match pb::Classification::try_from(value).ok()? {
            pb::Classification::Unspecified => None,
            pb::Classification::Unclassified => Some(Self::Unclassified),
            pb::Classification::OfficialUse => Some(Self::OfficialUse),
            pb::Classification::Restricted => Some(Self::Restricted),
            pb::Classification::Confidential => Some(Self::Confidential),
            pb::Classification::Secret => Some(Self::Secret),
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::Classification {
        match self {
            Self::Unclassified => pb::Classification::Unclassified,
            Self::OfficialUse => pb::Classification::OfficialUse,
            Self::Restricted => pb::Classification::Restricted,
            Self::Confidential => pb::Classification::Confidential,
            Self::Secret => pb::Classification::Secret,
        }
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Classification {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_uppercase().replace(['-', ' '], "_");
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == norm)
            .ok_or_else(|| {
                format!(
                    "unknown classification '{s}'; expected one of {}",
                    Self::ALL.map(|c| c.as_str()).join(", ")
                )
            })
    }
}

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A strategic threat assessment.
    ThreatAssessment,
    /// An operational plan.
    OperationalPlan,
    /// An urgent alert.
    Alert,
    /// A strategic plan: priorities for a planning cycle.
    StrategicPlan,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 4] = [
        Self::ThreatAssessment,
        Self::OperationalPlan,
        Self::Alert,
        Self::StrategicPlan,
    ];

    /// Whether messages of this kind are versions of a plan.
    pub fn is_plan(self) -> bool {
        matches!(self, Self::OperationalPlan | Self::StrategicPlan)
    }

    /// The canonical name, as in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ThreatAssessment => "threat_assessment",
            Self::OperationalPlan => "operational_plan",
            Self::Alert => "alert",
            Self::StrategicPlan => "strategic_plan",
        }
    }

    /// Converts from the proto enum value.
    pub fn from_proto(value: i32) -> Option<Self> {
        match pb::Kind::try_from(value).ok()? {
            pb::Kind::Unspecified => None,
            pb::Kind::ThreatAssessment => Some(Self::ThreatAssessment),
            pb::Kind::OperationalPlan => Some(Self::OperationalPlan),
            pb::Kind::Alert => Some(Self::Alert),
            pb::Kind::StrategicPlan => Some(Self::StrategicPlan),
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::Kind {
        match self {
            Self::ThreatAssessment => pb::Kind::ThreatAssessment,
            Self::OperationalPlan => pb::Kind::OperationalPlan,
            Self::Alert => pb::Kind::Alert,
            Self::StrategicPlan => pb::Kind::StrategicPlan,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace(['-', ' '], "_");
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == norm)
            .ok_or_else(|| {
                format!(
                    "unknown kind '{s}'; expected one of {}",
                    Self::ALL.map(|k| k.as_str()).join(", ")
                )
            })
    }
}

/// Handling priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Routine.
    Routine,
    /// Before routine traffic.
    Priority,
    /// At once.
    Immediate,
    /// Highest precedence.
    Flash,
}

impl Priority {
    /// Every priority, lowest first.
    pub const ALL: [Priority; 4] = [Self::Routine, Self::Priority, Self::Immediate, Self::Flash];

    /// The canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Routine => "routine",
            Self::Priority => "priority",
            Self::Immediate => "immediate",
            Self::Flash => "flash",
        }
    }

    /// Converts from the proto enum value.
    pub fn from_proto(value: i32) -> Option<Self> {
        match pb::Priority::try_from(value).ok()? {
            pb::Priority::Unspecified => None,
            pb::Priority::Routine => Some(Self::Routine),
            pb::Priority::Priority => Some(Self::Priority),
            pb::Priority::Immediate => Some(Self::Immediate),
            pb::Priority::Flash => Some(Self::Flash),
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::Priority {
        match self {
            Self::Routine => pb::Priority::Routine,
            Self::Priority => pb::Priority::Priority,
            Self::Immediate => pb::Priority::Immediate,
            Self::Flash => pb::Priority::Flash,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == norm)
            .ok_or_else(|| {
                format!(
                    "unknown priority '{s}'; expected one of {}",
                    Self::ALL.map(|p| p.as_str()).join(", ")
                )
            })
    }
}

/// Traffic Light Protocol 2.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Tlp {
    /// TLP:CLEAR.
    #[serde(rename = "CLEAR")]
    Clear,
    /// TLP:GREEN.
    #[serde(rename = "GREEN")]
    Green,
    /// TLP:AMBER.
    #[serde(rename = "AMBER")]
    Amber,
    /// TLP:AMBER+STRICT: never beyond the receiving body.
    #[serde(rename = "AMBER+STRICT")]
    AmberStrict,
    /// TLP:RED: named recipients only.
    #[serde(rename = "RED")]
    Red,
}

impl Tlp {
    /// Every level, least restrictive first.
    pub const ALL: [Tlp; 5] = [
        Self::Clear,
        Self::Green,
        Self::Amber,
        Self::AmberStrict,
        Self::Red,
    ];

    /// The TLP 2.0 name without the `TLP:` prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clear => "CLEAR",
            Self::Green => "GREEN",
            Self::Amber => "AMBER",
            Self::AmberStrict => "AMBER+STRICT",
            Self::Red => "RED",
        }
    }

    /// Converts from the proto enum value; `Ok(None)` for unspecified, the
    /// value back as the error when it is not a level.
    pub fn from_proto(value: i32) -> Result<Option<Self>, i32> {
        Ok(match pb::Tlp::try_from(value).map_err(|_| value)? {
            pb::Tlp::Unspecified => None,
            pb::Tlp::Clear => Some(Self::Clear),
            pb::Tlp::Green => Some(Self::Green),
            pb::Tlp::Amber => Some(Self::Amber),
            pb::Tlp::AmberStrict => Some(Self::AmberStrict),
            pb::Tlp::Red => Some(Self::Red),
        })
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::Tlp {
        match self {
            Self::Clear => pb::Tlp::Clear,
            Self::Green => pb::Tlp::Green,
            Self::Amber => pb::Tlp::Amber,
            Self::AmberStrict => pb::Tlp::AmberStrict,
            Self::Red => pb::Tlp::Red,
        }
    }
}

impl fmt::Display for Tlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLP:{}", self.as_str())
    }
}

impl FromStr for Tlp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        let norm = upper
            .strip_prefix("TLP:")
            .unwrap_or(&upper)
            .replace(['_', ' '], "+");
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == norm)
            .ok_or_else(|| {
                format!("unknown tlp '{s}'; expected CLEAR, GREEN, AMBER, AMBER+STRICT or RED")
            })
    }
}

/// Europol-style handling codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HandlingCode {
    /// For law enforcement purposes only.
    H0,
    /// Not to be used as evidence without the originator's permission.
    H1,
    /// Not to be disseminated without the originator's permission.
    H2,
    /// Other restrictions, stated in words.
    H3,
}

impl HandlingCode {
    /// Every code.
    pub const ALL: [HandlingCode; 4] = [Self::H0, Self::H1, Self::H2, Self::H3];

    /// The code's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::H0 => "H0",
            Self::H1 => "H1",
            Self::H2 => "H2",
            Self::H3 => "H3",
        }
    }

    /// What the code means, for people.
    pub fn meaning(self) -> &'static str {
        match self {
            Self::H0 => "for law enforcement purposes only",
            Self::H1 => "not to be used as evidence in judicial proceedings without the originator's permission",
            Self::H2 => "not to be disseminated without the originator's permission",
            Self::H3 => "other restrictions apply",
        }
    }

    /// Converts from the proto enum value; `Ok(None)` for unspecified, the
    /// value back as the error when it is not a code.
    pub fn from_proto(value: i32) -> Result<Option<Self>, i32> {
        Ok(
            match pb::HandlingCode::try_from(value).map_err(|_| value)? {
                pb::HandlingCode::Unspecified => None,
                pb::HandlingCode::H0 => Some(Self::H0),
                pb::HandlingCode::H1 => Some(Self::H1),
                pb::HandlingCode::H2 => Some(Self::H2),
                pb::HandlingCode::H3 => Some(Self::H3),
            },
        )
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::HandlingCode {
        match self {
            Self::H0 => pb::HandlingCode::H0,
            Self::H1 => pb::HandlingCode::H1,
            Self::H2 => pb::HandlingCode::H2,
            Self::H3 => pb::HandlingCode::H3,
        }
    }
}

impl fmt::Display for HandlingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HandlingCode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_uppercase();
        Self::ALL
            .into_iter()
            .find(|h| h.as_str() == norm)
            .ok_or_else(|| format!("unknown handling code '{s}'; expected H0, H1, H2 or H3"))
    }
}

/// Source and information grading on the 4x4 scale (for example `B2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Grading {
    /// Source reliability: `A` (reliable), `B` (mostly reliable), `C` (not
    /// reliable) or `X` (cannot be judged).
    pub source: char,
    /// Information assessment: 1 (known true), 2 (known to the source), 3
    /// (not known to the source but corroborated) or 4 (cannot be judged).
    pub information: u8,
}

impl Grading {
    /// Parses `A1` to `X4`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_uppercase();
        let mut chars = t.chars();
        match (chars.next(), chars.next(), chars.next()) {
            (Some(src @ ('A' | 'B' | 'C' | 'X')), Some(info @ '1'..='4'), None) => Ok(Self {
                source: src,
                information: info as u8 - b'0',
            }),
            _ => Err(format!(
                "'{}' is not a 4x4 grading; give source reliability A, B, C or X then information assessment 1 to 4 (for example B2)",
                s.escape_debug()
            )),
        }
    }
}

impl fmt::Display for Grading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.source, self.information)
    }
}

impl TryFrom<String> for Grading {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<Grading> for String {
    fn from(g: Grading) -> String {
        g.to_string()
    }
}

/// Identifier of a federation body: lowercase ASCII letters, digits and
/// hyphens, 2 to 32 characters (for example `europol`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BodyId(String);

impl BodyId {
    /// Parses and validates a body id.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = (2..=32).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "invalid body id '{}'; use 2 to 32 lowercase letters, digits or hyphens",
                s.escape_debug()
            ))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BodyId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<BodyId> for String {
    fn from(b: BodyId) -> String {
        b.0
    }
}

impl fmt::Display for BodyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for BodyId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The crime areas the federation routes on.
pub const CRIME_AREAS: &[&str] = &[
    "terrorism",
    "organised_crime",
    "cybercrime",
    "drugs",
    "human_trafficking",
    "migrant_smuggling",
    "firearms",
    "financial_crime",
    "border_security",
    "environmental_crime",
    "maritime_crime",
    "corruption",
    "cultural_property",
    "war_crimes",
];

/// One crime area from [`CRIME_AREAS`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct CrimeArea(&'static str);

impl<'de> Deserialize<'de> for CrimeArea {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl CrimeArea {
    /// Parses a crime area name.
    pub fn parse(s: &str) -> Result<Self, String> {
        let norm = s.trim().to_ascii_lowercase().replace(['-', ' '], "_");
        CRIME_AREAS
            .iter()
            .find(|a| **a == norm)
            .map(|a| Self(a))
            .ok_or_else(|| {
                format!(
                    "unknown crime area '{}'; expected one of {}",
                    s.escape_debug(),
                    CRIME_AREAS.join(", ")
                )
            })
    }

    /// The canonical name.
    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl TryFrom<String> for CrimeArea {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<CrimeArea> for String {
    fn from(c: CrimeArea) -> String {
        c.0.to_owned()
    }
}

impl fmt::Display for CrimeArea {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

pub(crate) fn require<T>(
    field: &str,
    value: Option<T>,
    allowed: &str,
) -> Result<T, ValidationError> {
    value.ok_or_else(|| {
        ValidationError::new(
            field,
            format!("missing or unknown; expected one of {allowed}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_is_ordered_and_parses() {
        assert!(Classification::Unclassified < Classification::Secret);
        assert_eq!("official-use".parse(), Ok(Classification::OfficialUse));
        assert!("TOP_SECRET".parse::<Classification>().is_err());
        for c in Classification::ALL {
            assert_eq!(Classification::from_proto(c.to_proto() as i32), Some(c));
        }
        assert_eq!(Classification::from_proto(0), None);
        assert_eq!(Classification::from_proto(99), None);
    }

    #[test]
    fn body_ids_are_validated() {
        assert!(BodyId::parse("europol").is_ok());
        assert!(BodyId::parse("e").is_err());
        assert!(BodyId::parse("Europol").is_err());
        assert!(BodyId::parse("-x").is_err());
        assert!(BodyId::parse("a/b").is_err());
    }

    #[test]
    fn handling_labels_parse_and_round_trip() {
        assert_eq!("tlp:amber+strict".parse(), Ok(Tlp::AmberStrict));
        assert_eq!("AMBER STRICT".parse(), Ok(Tlp::AmberStrict));
        assert!("PURPLE".parse::<Tlp>().is_err());
        for t in Tlp::ALL {
            assert_eq!(Tlp::from_proto(t.to_proto() as i32), Ok(Some(t)));
        }
        assert_eq!(Tlp::from_proto(0), Ok(None));
        assert!(Tlp::from_proto(9).is_err());
        assert_eq!("h2".parse(), Ok(HandlingCode::H2));
        assert!("H4".parse::<HandlingCode>().is_err());
        assert_eq!(
            Grading::parse("b2").map(|g| g.to_string()),
            Ok("B2".to_owned())
        );
        for bad in ["", "B", "B5", "D1", "B22", "2B"] {
            assert!(Grading::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn crime_areas_normalise() {
        assert_eq!(
            CrimeArea::parse("Organised-Crime").map(|c| c.as_str()),
            Ok("organised_crime")
        );
        assert!(CrimeArea::parse("jaywalking").is_err());
    }
}

//! Caller identities, as carried in a certificate's single URI SAN:
//! `spiffe://<federation>/org/<body>/<role>/<name>`.

use std::fmt;
use std::str::FromStr;

use crate::BodyId;

/// What a certificate holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The federation hub (server, and client of nothing).
    Hub,
    /// An organisation node: server for its officers, client of the hub.
    Node,
    /// A liaison officer using the CLI against their own body's node.
    Officer,
    /// An auditor reading the hub's routing log.
    Auditor,
    /// An operator administering a hub or node.
    Admin,
    /// An auditor of the federation's independent control body, who reads
    /// the whole audit log (a body's own auditors read what concerns it).
    Oversight,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 6] = [
        Self::Hub,
        Self::Node,
        Self::Officer,
        Self::Auditor,
        Self::Admin,
        Self::Oversight,
    ];

    /// The name used in the SPIFFE path.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hub => "hub",
            Self::Node => "node",
            Self::Officer => "officer",
            Self::Auditor => "auditor",
            Self::Admin => "admin",
            Self::Oversight => "oversight",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, IdentityError> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                IdentityError(format!(
                    "unknown role '{s}'; expected hub, node, officer, auditor, oversight or admin"
                ))
            })
    }
}

/// A malformed identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdentityError(pub String);

/// Who a caller is, as proven by its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Federation trust domain (for example `liaison.dev`).
    pub federation: String,
    /// The caller's body.
    pub body: BodyId,
    /// The caller's role.
    pub role: Role,
    /// The holder's name within body and role (for example `alice`).
    pub name: String,
}

impl Identity {
    /// Builds an identity, validating every part.
    pub fn new(
        federation: &str,
        body: &str,
        role: Role,
        name: &str,
    ) -> Result<Self, IdentityError> {
        let uri = format!("spiffe://{federation}/org/{body}/{role}/{name}");
        uri.parse()
    }

    /// The SPIFFE URI.
    pub fn uri(&self) -> String {
        format!(
            "spiffe://{}/org/{}/{}/{}",
            self.federation, self.body, self.role, self.name
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

fn is_segment(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(uri: &str) -> Result<Self, IdentityError> {
        let bad = |why: &str| {
            IdentityError(format!(
                "'{}' is not a liaison identity ({why}); expected spiffe://<federation>/org/<body>/<role>/<name>",
                uri.escape_debug()
            ))
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("not a spiffe uri"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [federation, "org", body, role, name] = parts.as_slice() else {
            return Err(bad("wrong path"));
        };
        if !is_segment(federation) || !is_segment(name) {
            return Err(bad("bad federation or name"));
        }
        let body = BodyId::parse(body).map_err(|e| bad(&e))?;
        let role = role.parse::<Role>().map_err(|e| bad(&e.0))?;
        Ok(Self {
            federation: (*federation).to_owned(),
            body,
            role,
            name: (*name).to_owned(),
        })
    }
}

/// ISO 3166-1 alpha-2 codes, officially assigned.
const ISO_COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

pub(crate) fn is_iso_country(code: &str) -> bool {
    code.len() == 2 && ISO_COUNTRIES.split(' ').any(|c| c == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let id: Identity = "spiffe://liaison.dev/org/europol/officer/alice"
            .parse()
            .unwrap();
        assert_eq!(id.body.as_str(), "europol");
        assert_eq!(id.role, Role::Officer);
        assert_eq!(id.uri(), "spiffe://liaison.dev/org/europol/officer/alice");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "https://liaison.dev/org/europol/node/n",
            "spiffe://liaison.dev/org/europol/node",
            "spiffe://liaison.dev/team/europol/node/n",
            "spiffe://liaison.dev/org/europol/king/n",
            "spiffe://liaison.dev/org/EUROPOL/node/n",
            "spiffe://liaison.dev/org/europol/node/n/extra",
            "spiffe:///org/europol/node/n",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }

    #[test]
    fn iso_countries() {
        assert!(is_iso_country("NG"));
        assert!(!is_iso_country("XX"));
        assert!(!is_iso_country("ng"));
    }
}

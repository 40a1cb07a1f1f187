//! Target identifiers: normalised per type, then hashed under the
//! federation's deconfliction key.
//!
//! Normalising first makes two bodies' spellings of one identifier
//! (`IMO 9074729` and `9074729`, `+44 20 7946 0958` and `0044-20-7946-0958`)
//! the same bytes, so that their hashes match; the kind is hashed with the
//! identifier, so that a phone number and a company number that happen to
//! be the same digits never match each other.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::PlanError;

/// The kinds of target identifier a plan can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetKind {
    /// A passport or identity card number.
    TravelDocument,
    /// A vessel's IMO number (seven digits, the last a check digit).
    Imo,
    /// A phone number, in international form.
    Phone,
    /// A vehicle registration plate.
    VehiclePlate,
    /// A cryptocurrency wallet address.
    CryptoWallet,
    /// A company registration number.
    CompanyRegistration,
}

impl TargetKind {
    /// Every kind, in a fixed order.
    pub const ALL: [TargetKind; 6] = [
        TargetKind::TravelDocument,
        TargetKind::Imo,
        TargetKind::Phone,
        TargetKind::VehiclePlate,
        TargetKind::CryptoWallet,
        TargetKind::CompanyRegistration,
    ];

    /// The kind's name, as written in plans and notices.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::TravelDocument => "travel_document",
            TargetKind::Imo => "imo",
            TargetKind::Phone => "phone",
            TargetKind::VehiclePlate => "vehicle_plate",
            TargetKind::CryptoWallet => "crypto_wallet",
            TargetKind::CompanyRegistration => "company_registration",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The identifier in its one canonical spelling, or why it is not an
    /// identifier of this kind.
    pub fn normalise(self, raw: &str) -> Result<String, PlanError> {
        let bad = |problem: String| PlanError::Target {
            kind: self.as_str(),
            problem,
        };
        let raw = raw.trim();
        // Separators people type inside identifiers.
        let squeezed: String = raw
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '/' | '(' | ')' | '\t'))
            .collect();
        match self {
            TargetKind::TravelDocument
            | TargetKind::VehiclePlate
            | TargetKind::CompanyRegistration => {
                let up = squeezed.to_ascii_uppercase();
                if up.is_empty() || up.len() > 32 || !up.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err(bad(
                        "give 1 to 32 letters and digits (spaces and dashes are ignored)".into(),
                    ));
                }
                Ok(up)
            }
            TargetKind::Imo => {
                let up = squeezed.to_ascii_uppercase();
                let digits = up.strip_prefix("IMO").unwrap_or(&up);
                if digits.len() != 7 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad(
                        "an IMO number is seven digits, optionally after \"IMO\"".into(),
                    ));
                }
                let d: Vec<u32> = digits.bytes().map(|b| u32::from(b - b'0')).collect();
                let sum: u32 = d[..6]
                    .iter()
                    .zip((2..=7).rev())
                    .map(|(digit, weight)| digit * weight)
                    .sum();
                if sum % 10 != d[6] {
                    // The number is not echoed: it may be the very
                    // identifier to keep.
                    return Err(bad("the number fails the IMO check digit; check it".into()));
                }
                Ok(digits.to_owned())
            }
            TargetKind::Phone => {
                let international = match squeezed.strip_prefix("00") {
                    Some(rest) => format!("+{rest}"),
                    None => squeezed.clone(),
                };
                let digits = international.strip_prefix('+').ok_or_else(|| {
                    bad("give the number in international form, +<country code><number>".into())
                })?;
                if !(8..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(bad(
                        "an international number has 8 to 15 digits after the +".into(),
                    ));
                }
                Ok(format!("+{digits}"))
            }
            TargetKind::CryptoWallet => {
                if squeezed.is_empty()
                    || squeezed.len() > 128
                    || !squeezed.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err(bad("give the address's letters and digits".into()));
                }
                let lower = squeezed.to_ascii_lowercase();
                // Hex (0x…) and bech32 (bc1…, ltc1…) addresses are case
                // insensitive; base58 addresses are not, and stay as given.
                if lower.starts_with("0x") || lower.starts_with("bc1") || lower.starts_with("ltc1")
                {
                    Ok(lower)
                } else {
                    Ok(squeezed)
                }
            }
        }
    }
}

/// A target identifier as the hub holds it: its kind and a keyed hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetHash {
    /// The kind (the hub may tell a notice's reader which kinds matched).
    pub kind: TargetKind,
    /// HMAC-SHA-256 of the kind's name, a zero byte and the normalised
    /// identifier, under the deconfliction key.
    pub hash: [u8; 32],
}

/// The federation's deconfliction key, which only nodes hold.
#[derive(Clone)]
pub struct DeconflictionKey(Vec<u8>);

impl std::fmt::Debug for DeconflictionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeconflictionKey(..)")
    }
}

impl DeconflictionKey {
    /// A key of at least 32 bytes.
    pub fn new(bytes: Vec<u8>) -> Result<Self, PlanError> {
        if bytes.len() < 32 {
            return Err(PlanError::ShortKey(bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// The identifier `raw` of `kind`, normalised and hashed.
    pub fn hash(&self, kind: TargetKind, raw: &str) -> Result<TargetHash, PlanError> {
        let normalised = kind.normalise(raw)?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .map_err(|_| PlanError::ShortKey(self.0.len()))?;
        mac.update(kind.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(normalised.as_bytes());
        Ok(TargetHash {
            kind,
            hash: mac.finalize().into_bytes().into(),
        })
    }
}

/// The hub's secret for deconfliction references, which never leaves the
/// hub: a reference is keyed under it, so that no one who knows two plan
/// ids can compute, and so recognise, the reference of their overlap.
#[derive(Clone, PartialEq, Eq)]
pub struct ReferenceKey([u8; 32]);

impl std::fmt::Debug for ReferenceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReferenceKey(..)")
    }
}

impl ReferenceKey {
    /// The key of these bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key's bytes, to store.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The reference of the overlap of plans `a` and `b` in its
    /// `generation` (a new generation when an overlap both sides could see
    /// becomes blind): the same whichever plan is named first, `dx-` and 16
    /// hex digits.
    pub fn reference(&self, a: &str, b: &str, generation: u32) -> String {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        // A 32-byte key is always a valid HMAC key.
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.0) else {
            unreachable!("HMAC takes a key of any length")
        };
        mac.update(b"liaison deconfliction reference\0");
        mac.update(lo.as_bytes());
        mac.update(&[0]);
        mac.update(hi.as_bytes());
        mac.update(&[0]);
        mac.update(&generation.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("dx-{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DeconflictionKey {
        DeconflictionKey::new(vec![7; 32]).unwrap()
    }

    #[test]
    fn a_reference_is_keyed_symmetric_and_new_in_each_generation() {
        let k = ReferenceKey::new([1; 32]);
        let r = k.reference("plan-a", "plan-b", 0);
        assert_eq!(r, k.reference("plan-b", "plan-a", 0));
        assert!(r.starts_with("dx-") && r.len() == 19, "{r}");
        assert!(r[3..].bytes().all(|b| b.is_ascii_hexdigit()), "{r}");
        assert_ne!(r, k.reference("plan-a", "plan-b", 1));
        assert_ne!(
            r,
            ReferenceKey::new([2; 32]).reference("plan-a", "plan-b", 0)
        );
        // The ids are separated: moving a byte from one to the other is
        // another pair.
        assert_ne!(k.reference("ab", "c", 0), k.reference("a", "bc", 0));
        assert_eq!(format!("{k:?}"), "ReferenceKey(..)");
    }

    #[test]
    fn spellings_of_one_identifier_hash_alike_and_kinds_never_match() {
        let k = key();
        let same = |kind, a: &str, b: &str| {
            assert_eq!(
                k.hash(kind, a).unwrap(),
                k.hash(kind, b).unwrap(),
                "{a} / {b}"
            );
        };
        same(TargetKind::Imo, "IMO 9074729", "9074729");
        same(TargetKind::Phone, "+44 20 7946 0958", "0044-20-7946-0958");
        same(TargetKind::TravelDocument, "p12 345-67", "P1234567");
        same(TargetKind::VehiclePlate, "ab-123-cd", "AB 123 CD");
        same(
            TargetKind::CryptoWallet,
            "0xAbC0000000000000000000000000000000000001",
            "0xabc0000000000000000000000000000000000001",
        );
        // Base58 addresses keep their case.
        assert_ne!(
            k.hash(
                TargetKind::CryptoWallet,
                "1BoatSLRHtKNngkdXEeobR76b53LETtpyT"
            )
            .unwrap(),
            k.hash(
                TargetKind::CryptoWallet,
                "1boatslrhtknngkdxeeobr76b53lettpyt"
            )
            .unwrap()
        );
        // The same characters as two kinds are two targets.
        assert_ne!(
            k.hash(TargetKind::TravelDocument, "12345678").unwrap().hash,
            k.hash(TargetKind::CompanyRegistration, "12345678")
                .unwrap()
                .hash
        );
        // Another key, another hash: the hub cannot test guesses without it.
        let other = DeconflictionKey::new(vec![8; 32]).unwrap();
        assert_ne!(
            k.hash(TargetKind::Imo, "9074729").unwrap(),
            other.hash(TargetKind::Imo, "9074729").unwrap()
        );
    }

    #[test]
    fn what_is_not_an_identifier_of_its_kind_is_refused_saying_why() {
        let k = key();
        for (kind, raw, says) in [
            (TargetKind::Imo, "9074728", "check digit"),
            (TargetKind::Imo, "907472", "seven digits"),
            (TargetKind::Phone, "020 7946 0958", "international form"),
            (TargetKind::Phone, "+44", "8 to 15 digits"),
            (TargetKind::TravelDocument, "", "letters and digits"),
            (TargetKind::VehiclePlate, "AB#123", "letters and digits"),
            (
                TargetKind::CryptoWallet,
                "not a wallet!",
                "letters and digits",
            ),
        ] {
            let e = k.hash(kind, raw).unwrap_err().to_string();
            assert!(
                e.starts_with(kind.as_str()) && e.contains(says),
                "{raw}: {e}"
            );
        }
        assert_eq!(
            DeconflictionKey::new(vec![1; 16]).unwrap_err(),
            PlanError::ShortKey(16)
        );
        assert!(
            !format!("{:?}", key()).contains('7'),
            "the key is never printed"
        );
    }

    #[test]
    fn every_kind_has_a_name_that_parses_back() {
        for k in TargetKind::ALL {
            assert_eq!(TargetKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(TargetKind::parse("email"), None);
    }
}

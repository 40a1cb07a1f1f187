//! Checkpoints, signed notes and cosignatures, in the C2SP formats.
//!
//! A checkpoint is three lines of text (C2SP `tlog-checkpoint`):
//!
//! ```text
//! <origin>
//! <tree size, decimal>
//! <root hash, standard base64>
//! ```
//!
//! The hub signs it as a C2SP `signed-note`: the text, an empty line, and
//! one line `— <key name> <base64(key id || Ed25519 signature)>` per
//! signature, where the key id is the first four bytes of
//! `SHA-256(<key name> || "\n" || 0x01 || public key)` and the key name is
//! the origin. Each witness adds a line of its own (C2SP
//! `tlog-cosignature` v1): the key id is computed with `0x04` in place of
//! `0x01`, and the signed bytes are `cosignature/v1\ntime <t>\n` followed by
//! the checkpoint text, where `t` is the POSIX time of the cosignature, sent
//! as eight big-endian bytes before the 64 of the signature.
//!
//! Keys are text, as Go's `sumdb/note` writes them: a verifier key is
//! `<name>+<key id, 8 hex digits>+<base64(type || 32-byte public key)>` and
//! a signer key `PRIVATE+KEY+<name>+<key id>+<base64(type || 32-byte seed)>`,
//! with type `0x01` for the log and `0x04` for a witness.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use signed_note::{Note, Signature as NoteSignature, Verifiers};

use crate::tree::{Hash, HASH_SIZE};
use crate::TlogError;

/// The key type byte of a log's Ed25519 key (C2SP `signed-note`).
pub const LOG_KEY_TYPE: u8 = 0x01;
/// The key type byte of a witness's Ed25519 cosignature v1 key (C2SP
/// `tlog-cosignature`).
pub const WITNESS_KEY_TYPE: u8 = 0x04;

/// A tree head: which log, how many leaves, and the root hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The log's origin line, which is also its key name.
    pub origin: String,
    /// How many leaves.
    pub size: u64,
    /// The root hash of those leaves.
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint's text: three lines, each ending in a newline.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root.0)
        )
    }

    /// Parses a checkpoint's text (extension lines, which Liaison never
    /// writes, are refused).
    pub fn parse(text: &[u8]) -> Result<Self, TlogError> {
        let c = tlog_tiles::Checkpoint::from_bytes(text)
            .map_err(|e| TlogError::malformed("checkpoint", e))?;
        if !c.extension().is_empty() {
            return Err(TlogError::malformed(
                "checkpoint",
                "it has extension lines, which this log never writes",
            ));
        }
        Ok(Self {
            origin: c.origin().to_owned(),
            size: c.size(),
            root: *c.hash(),
        })
    }
}

/// A checkpoint and the signed note that carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedCheckpoint {
    /// What the note says.
    pub checkpoint: Checkpoint,
    /// The whole note: the text, then every signature line.
    pub note: Vec<u8>,
}

/// A witness's cosignature on a checkpoint, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosignature {
    /// The witness's key name.
    pub name: String,
    /// When it cosigned, POSIX seconds.
    pub timestamp: u64,
    /// Its signature line, as it goes in the note (ending in a newline).
    pub line: Vec<u8>,
}

fn key_id(name: &str, key_type: u8, public: &[u8; 32]) -> u32 {
    let mut key = Vec::with_capacity(33);
    key.push(key_type);
    key.extend_from_slice(public);
    signed_note::key_id(name, &key)
}

fn check_name(name: &str) -> Result<(), TlogError> {
    if signed_note::is_key_name_valid(name) {
        Ok(())
    } else {
        Err(TlogError::malformed(
            "key name",
            format!("{name:?} must be non-empty, without spaces or '+'"),
        ))
    }
}

/// A key's text: the signer key (secret) and the verifier key (public).
pub fn key_pair(name: &str, key_type: u8, seed: [u8; 32]) -> Result<(String, String), TlogError> {
    check_name(name)?;
    let signing = SigningKey::from_bytes(&seed);
    let public = signing.verifying_key().to_bytes();
    let id = key_id(name, key_type, &public);
    let mut private = vec![key_type];
    private.extend_from_slice(&seed);
    let mut pubkey = vec![key_type];
    pubkey.extend_from_slice(&public);
    Ok((
        format!("PRIVATE+KEY+{name}+{id:08x}+{}", B64.encode(private)),
        format!("{name}+{id:08x}+{}", B64.encode(pubkey)),
    ))
}

/// Parses `<name>+<id>+<base64(type || 32 bytes)>`, checking the id.
fn parse_key(
    text: &str,
    key_type: u8,
    what: &'static str,
) -> Result<(String, u32, [u8; 32]), TlogError> {
    let bad = |problem: &str| TlogError::malformed(what, problem);
    let mut parts = text.trim().splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("expected <name>+<key id>+<key>"));
    };
    check_name(name)?;
    if id.len() != 8 {
        return Err(bad("the key id must be 8 hex digits"));
    }
    let id = u32::from_str_radix(id, 16).map_err(|_| bad("the key id must be 8 hex digits"))?;
    let key = B64.decode(key).map_err(|_| bad("the key is not base64"))?;
    let (&ty, rest) = key.split_first().ok_or_else(|| bad("the key is empty"))?;
    if ty != key_type {
        return Err(TlogError::malformed(
            what,
            format!("key type 0x{ty:02x}, where 0x{key_type:02x} is expected"),
        ));
    }
    let bytes: [u8; 32] = rest
        .try_into()
        .map_err(|_| bad("an Ed25519 key is 32 bytes"))?;
    Ok((name.to_owned(), id, bytes))
}

/// Parses a verifier key, checking its id against its name and key.
fn parse_public(
    text: &str,
    key_type: u8,
    what: &'static str,
) -> Result<(String, u32, VerifyingKey), TlogError> {
    let (name, id, bytes) = parse_key(text, key_type, what)?;
    if key_id(&name, key_type, &bytes) != id {
        return Err(TlogError::malformed(
            what,
            "the key id does not match the name and key",
        ));
    }
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| TlogError::malformed(what, "not an Ed25519 public key"))?;
    Ok((name, id, key))
}

/// Parses a signer key, checking its id against the public key it derives.
fn parse_signer(
    text: &str,
    key_type: u8,
    what: &'static str,
) -> Result<(String, u32, SigningKey), TlogError> {
    let rest = text
        .trim()
        .strip_prefix("PRIVATE+KEY+")
        .ok_or_else(|| TlogError::malformed(what, "a signer key starts with PRIVATE+KEY+"))?;
    let (name, id, seed) = parse_key(rest, key_type, what)?;
    let signing = SigningKey::from_bytes(&seed);
    if key_id(&name, key_type, &signing.verifying_key().to_bytes()) != id {
        return Err(TlogError::malformed(
            what,
            "the key id does not match the key",
        ));
    }
    Ok((name, id, signing))
}

/// The log's signing key.
#[derive(Clone)]
pub struct LogSigner {
    name: String,
    id: u32,
    key: SigningKey,
}

impl std::fmt::Debug for LogSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSigner")
            .field("name", &self.name)
            .field("id", &format_args!("{:08x}", self.id))
            .finish_non_exhaustive()
    }
}

impl LogSigner {
    /// From the signer key's text.
    pub fn from_text(text: &str) -> Result<Self, TlogError> {
        let (name, id, key) = parse_signer(text, LOG_KEY_TYPE, "log signing key")?;
        Ok(Self { name, id, key })
    }

    /// The key name, which is the log's origin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key's text.
    pub fn verifier_text(&self) -> String {
        let mut pubkey = vec![LOG_KEY_TYPE];
        pubkey.extend_from_slice(&self.key.verifying_key().to_bytes());
        format!("{}+{:08x}+{}", self.name, self.id, B64.encode(pubkey))
    }

    /// The checkpoint of a tree of `size` leaves with root `root`, signed.
    pub fn sign(&self, size: u64, root: Hash) -> SignedCheckpoint {
        let checkpoint = Checkpoint {
            origin: self.name.clone(),
            size,
            root,
        };
        let text = checkpoint.text();
        let sig = self.key.sign(text.as_bytes()).to_bytes();
        let mut note = text.into_bytes();
        note.push(b'\n');
        note.extend(signature_line(&self.name, self.id, &sig));
        SignedCheckpoint { checkpoint, note }
    }
}

fn signature_line(name: &str, id: u32, sig: &[u8]) -> Vec<u8> {
    let mut raw = id.to_be_bytes().to_vec();
    raw.extend_from_slice(sig);
    format!("— {name} {}\n", B64.encode(raw)).into_bytes()
}

/// The log's public key, to check checkpoints with.
#[derive(Debug, Clone)]
pub struct LogVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl signed_note::Verifier for LogVerifier {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        ed25519_dalek::Signature::from_slice(sig)
            .map(|s| self.key.verify(msg, &s).is_ok())
            .unwrap_or(false)
    }
}

impl Verifiers for LogVerifier {
    fn verifier(
        &self,
        name: &str,
        id: u32,
    ) -> Result<&dyn signed_note::Verifier, signed_note::VerificationError> {
        if name == self.name && id == self.id {
            Ok(self)
        } else {
            Err(signed_note::VerificationError::UnknownKey {
                name: name.to_owned(),
                id,
            })
        }
    }
}

impl LogVerifier {
    /// From the verifier key's text.
    pub fn from_text(text: &str) -> Result<Self, TlogError> {
        let (name, id, key) = parse_public(text, LOG_KEY_TYPE, "log verifier key")?;
        Ok(Self { name, id, key })
    }

    /// The key name, which is the log's origin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `text` is this same verifier key (another key's text, or
    /// text that is no verifier key, is not).
    pub fn is(&self, text: &str) -> bool {
        Self::from_text(text.trim()).is_ok_and(|other| {
            other.name == self.name && other.id == self.id && other.key == self.key
        })
    }

    /// Checks a signed checkpoint: a note signed by this key, whose text is
    /// a checkpoint of this log. Other signature lines (cosignatures) are
    /// left for [`LogVerifier::cosignatures`].
    pub fn verify(&self, note: &[u8]) -> Result<SignedCheckpoint, TlogError> {
        let parsed = Note::from_bytes(note).map_err(|e| TlogError::malformed("signed note", e))?;
        parsed.verify(self).map_err(|e| TlogError::Signature {
            problem: format!(
                "the checkpoint is not signed by the log key {}: {e}",
                self.name
            ),
        })?;
        let checkpoint = Checkpoint::parse(parsed.text())?;
        if checkpoint.origin != self.name {
            return Err(TlogError::Signature {
                problem: format!(
                    "the checkpoint names the log {:?}, not {:?}",
                    checkpoint.origin, self.name
                ),
            });
        }
        Ok(SignedCheckpoint {
            checkpoint,
            note: note.to_vec(),
        })
    }

    /// The cosignatures on a note that one of `witnesses` made and that
    /// verify; lines by keys not among them are ignored, and a line by one
    /// of them that does not verify is an error naming the witness.
    pub fn cosignatures(
        &self,
        note: &[u8],
        witnesses: &[WitnessVerifier],
    ) -> Result<Vec<Cosignature>, TlogError> {
        let parsed = Note::from_bytes(note).map_err(|e| TlogError::malformed("signed note", e))?;
        let (_, others) = parsed.verify(self).map_err(|e| TlogError::Signature {
            problem: format!(
                "the checkpoint is not signed by the log key {}: {e}",
                self.name
            ),
        })?;
        let mut out = Vec::new();
        for sig in others {
            let Some(w) = witnesses
                .iter()
                .find(|w| w.name == sig.name() && w.id == sig.id())
            else {
                continue;
            };
            let timestamp =
                w.check(parsed.text(), sig.signature())
                    .ok_or_else(|| TlogError::Signature {
                        problem: format!("the cosignature of {} does not verify", w.name),
                    })?;
            out.push(Cosignature {
                name: w.name.clone(),
                timestamp,
                line: sig.to_bytes(),
            });
        }
        Ok(out)
    }
}

/// The signed bytes of a cosignature v1 at `timestamp` on checkpoint text.
fn cosigned_message(text: &[u8], timestamp: u64) -> Vec<u8> {
    let mut msg = format!("cosignature/v1\ntime {timestamp}\n").into_bytes();
    msg.extend_from_slice(text);
    msg
}

/// A witness's key, to cosign checkpoints it has verified.
#[derive(Clone)]
pub struct WitnessSigner {
    name: String,
    id: u32,
    key: SigningKey,
}

impl std::fmt::Debug for WitnessSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WitnessSigner")
            .field("name", &self.name)
            .field("id", &format_args!("{:08x}", self.id))
            .finish_non_exhaustive()
    }
}

impl WitnessSigner {
    /// From the signer key's text.
    pub fn from_text(text: &str) -> Result<Self, TlogError> {
        let (name, id, key) = parse_signer(text, WITNESS_KEY_TYPE, "witness signing key")?;
        Ok(Self { name, id, key })
    }

    /// The witness's key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key's text.
    pub fn verifier_text(&self) -> String {
        let mut pubkey = vec![WITNESS_KEY_TYPE];
        pubkey.extend_from_slice(&self.key.verifying_key().to_bytes());
        format!("{}+{:08x}+{}", self.name, self.id, B64.encode(pubkey))
    }

    /// Cosigns a checkpoint (already verified by the caller) at `timestamp`
    /// (POSIX seconds): the signature line to add to its note.
    pub fn cosign(&self, checkpoint: &Checkpoint, timestamp: u64) -> Cosignature {
        let text = checkpoint.text();
        let sig = self
            .key
            .sign(&cosigned_message(text.as_bytes(), timestamp))
            .to_bytes();
        let mut raw = timestamp.to_be_bytes().to_vec();
        raw.extend_from_slice(&sig);
        Cosignature {
            name: self.name.clone(),
            timestamp,
            line: signature_line(&self.name, self.id, &raw),
        }
    }
}

/// A witness's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl WitnessVerifier {
    /// From the verifier key's text.
    pub fn from_text(text: &str) -> Result<Self, TlogError> {
        let (name, id, key) = parse_public(text, WITNESS_KEY_TYPE, "witness verifier key")?;
        Ok(Self { name, id, key })
    }

    /// The witness's key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The timestamp of a valid cosignature `sig` (timestamp and signature)
    /// on checkpoint text; `None` if it does not verify.
    fn check(&self, text: &[u8], sig: &[u8]) -> Option<u64> {
        let (ts, sig) = sig.split_first_chunk::<8>()?;
        let timestamp = u64::from_be_bytes(*ts);
        if timestamp > i64::MAX as u64 {
            return None;
        }
        let sig = ed25519_dalek::Signature::from_slice(sig).ok()?;
        self.key
            .verify(&cosigned_message(text, timestamp), &sig)
            .ok()
            .map(|()| timestamp)
    }

    /// Checks one signature line (as a witness sent it) on a checkpoint.
    pub fn verify_line(
        &self,
        checkpoint: &Checkpoint,
        line: &[u8],
    ) -> Result<Cosignature, TlogError> {
        let sig = NoteSignature::from_bytes(line.strip_suffix(b"\n").unwrap_or(line))
            .map_err(|e| TlogError::malformed("cosignature line", e))?;
        if sig.name() != self.name || sig.id() != self.id {
            return Err(TlogError::Signature {
                problem: format!(
                    "the cosignature is by {} (key {:08x}), not by the witness {}",
                    sig.name(),
                    sig.id(),
                    self.name
                ),
            });
        }
        let timestamp = self
            .check(checkpoint.text().as_bytes(), sig.signature())
            .ok_or_else(|| TlogError::Signature {
                problem: format!("the cosignature of {} does not verify", self.name),
            })?;
        Ok(Cosignature {
            name: self.name.clone(),
            timestamp,
            line: sig.to_bytes(),
        })
    }
}

/// A signed checkpoint's note with cosignature lines added after the log's
/// signature.
pub fn with_cosignatures(signed: &SignedCheckpoint, cosignatures: &[Cosignature]) -> Vec<u8> {
    let mut note = signed.note.clone();
    for c in cosignatures {
        note.extend_from_slice(&c.line);
    }
    note
}

/// The root hash as the checkpoint writes it (standard base64).
pub fn root_text(root: &Hash) -> String {
    B64.encode(root.0)
}

/// A root hash from its base64 text.
pub fn parse_root(text: &str) -> Result<Hash, TlogError> {
    let raw = B64
        .decode(text.trim())
        .map_err(|_| TlogError::malformed("root hash", "not base64"))?;
    let bytes: [u8; HASH_SIZE] = raw
        .try_into()
        .map_err(|_| TlogError::malformed("root hash", "a SHA-256 hash is 32 bytes"))?;
    Ok(Hash(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::leaf_hash;

    /// The README's worked example ("Checkpoints"), byte for byte: keys
    /// from fixed seeds, a tree of three leaves, a cosignature at a fixed
    /// time. Ed25519 signatures are deterministic, so the note is too.
    #[test]
    fn the_readme_worked_example() {
        let (skey, vkey) = key_pair("liaison.example/audit", LOG_KEY_TYPE, [1; 32]).unwrap();
        let (wkey, wvkey) =
            key_pair("liaison.example/witness/europol", WITNESS_KEY_TYPE, [2; 32]).unwrap();
        let mut t = crate::tree::MemoryTree::new();
        for leaf in [&b"leaf 0"[..], b"leaf 1", b"leaf 2"] {
            t.push(leaf);
        }
        let signed = LogSigner::from_text(&skey)
            .unwrap()
            .sign(t.size(), t.root());
        let witness = WitnessSigner::from_text(&wkey).unwrap();
        let cosig = witness.cosign(&signed.checkpoint, 1_796_184_000);
        let note = with_cosignatures(&signed, &[cosig]);
        let text = String::from_utf8(note.clone()).unwrap();
        assert_eq!(vkey, README_LOG_VKEY);
        assert_eq!(wvkey, README_WITNESS_VKEY);
        assert_eq!(text, README_NOTE);
        // And it verifies as any reader would check it.
        let verifier = LogVerifier::from_text(&vkey).unwrap();
        let w = WitnessVerifier::from_text(&wvkey).unwrap();
        assert_eq!(
            verifier.verify(&note).unwrap().checkpoint,
            signed.checkpoint
        );
        assert_eq!(verifier.cosignatures(&note, &[w]).unwrap().len(), 1);
    }

    const README_LOG_VKEY: &str =
        "liaison.example/audit+0aa6d0ad+AYqI4910CfGV/VLbLTy6XXLKZwm/HZQSG/N0iAG0D29c";
    const README_WITNESS_VKEY: &str =
        "liaison.example/witness/europol+10238d32+BIE5dw6ofRdfVqNUZsNMfszLjYqRtO43ol32D1uPybOU";
    const README_NOTE: &str = "liaison.example/audit
3
1Pksj7uJcg6ztVZ3x9fvrd/rENEaGoSguo8aIzN/qpU=

\u{2014} liaison.example/audit CqbQrQ5/9kWwVqQHt2sa57YtmZuMKkB5FtmuFTeFQodY1NbRGhDa7XDLWxNz+rtFZa3Ix3Fvsw82jhFyozXMRjpQmAA=
\u{2014} liaison.example/witness/europol ECONMgAAAABrD5fAgS63TTjds7y9hwbC4mFKi7kEDlTSkB2OpquztlvIiTQfVo9wxlLYwc1vw9vzXcEehMmjQtpC8RX6ChXMiHkeAw==
";

    fn log() -> (LogSigner, LogVerifier) {
        let (s, v) = key_pair("example.org/audit", LOG_KEY_TYPE, [7; 32]).unwrap();
        (
            LogSigner::from_text(&s).unwrap(),
            LogVerifier::from_text(&v).unwrap(),
        )
    }

    fn witness(n: u8) -> (WitnessSigner, WitnessVerifier) {
        let (s, v) = key_pair(
            &format!("example.org/witness/{n}"),
            WITNESS_KEY_TYPE,
            [n; 32],
        )
        .unwrap();
        (
            WitnessSigner::from_text(&s).unwrap(),
            WitnessVerifier::from_text(&v).unwrap(),
        )
    }

    #[test]
    fn a_signed_checkpoint_has_the_c2sp_layout_and_verifies() {
        let (signer, verifier) = log();
        assert_eq!(signer.verifier_text(), {
            let (_, v) = key_pair("example.org/audit", LOG_KEY_TYPE, [7; 32]).unwrap();
            v
        });
        let root = leaf_hash(b"");
        let signed = signer.sign(1, root);
        let text = String::from_utf8(signed.note.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "example.org/audit");
        assert_eq!(lines[1], "1");
        assert_eq!(lines[2], "bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=");
        assert_eq!(lines[3], "");
        assert!(lines[4].starts_with("— example.org/audit "), "{text}");
        assert_eq!(lines.len(), 5);
        // The signature line holds the key id and 64 bytes of signature.
        let raw = B64.decode(lines[4].rsplit(' ').next().unwrap()).unwrap();
        assert_eq!(raw.len(), 68);
        let got = verifier.verify(&signed.note).unwrap();
        assert_eq!(got.checkpoint, signed.checkpoint);
        // Ed25519 is deterministic: the same tree head, the same note.
        assert_eq!(signer.sign(1, root), signed);
    }

    #[test]
    fn a_tampered_note_or_another_logs_key_is_refused() {
        let (signer, verifier) = log();
        let signed = signer.sign(5, leaf_hash(b"x"));
        let text = String::from_utf8(signed.note.clone()).unwrap();
        for bad in [
            text.replacen("\n5\n", "\n6\n", 1),
            text.replacen("example.org/audit\n", "example.org/other\n", 1),
            text.replacen("— ", "", 1),
        ] {
            assert!(verifier.verify(bad.as_bytes()).is_err(), "{bad}");
        }
        let (other, _) = key_pair("example.org/audit", LOG_KEY_TYPE, [9; 32]).unwrap();
        let forged = LogSigner::from_text(&other)
            .unwrap()
            .sign(5, leaf_hash(b"x"));
        let e = verifier.verify(&forged.note).unwrap_err();
        assert!(e.to_string().contains("not signed by the log key"), "{e}");
    }

    #[test]
    fn cosignatures_verify_are_timestamped_and_a_forged_one_is_named() {
        let (signer, verifier) = log();
        let (w1, v1) = witness(1);
        let (w2, v2) = witness(2);
        let signed = signer.sign(9, leaf_hash(b"y"));
        let c1 = w1.cosign(&signed.checkpoint, 1_700_000_000);
        let c2 = w2.cosign(&signed.checkpoint, 1_700_000_005);
        assert_eq!(v1.verify_line(&signed.checkpoint, &c1.line).unwrap(), c1);
        assert!(v2.verify_line(&signed.checkpoint, &c1.line).is_err());
        let note = with_cosignatures(&signed, &[c1.clone(), c2.clone()]);
        // The log's signature still verifies with cosignatures after it.
        verifier.verify(&note).unwrap();
        let got = verifier
            .cosignatures(&note, &[v1.clone(), v2.clone()])
            .unwrap();
        assert_eq!(got, vec![c1.clone(), c2]);
        // Witnesses not configured are ignored.
        assert_eq!(
            verifier
                .cosignatures(&note, std::slice::from_ref(&v1))
                .unwrap(),
            vec![c1.clone()]
        );
        // A cosignature over another checkpoint does not verify on this one.
        let other = signer.sign(10, leaf_hash(b"z"));
        let moved = with_cosignatures(&other, &[c1]);
        let e = verifier.cosignatures(&moved, &[v1]).unwrap_err();
        assert!(e.to_string().contains("example.org/witness/1"), "{e}");
    }

    #[test]
    fn keys_round_trip_and_damaged_keys_are_refused() {
        let (s, v) = key_pair("a.example/log", LOG_KEY_TYPE, [3; 32]).unwrap();
        assert!(s.starts_with("PRIVATE+KEY+a.example/log+"));
        assert_eq!(LogSigner::from_text(&s).unwrap().verifier_text(), v);
        // A witness key is not a log key, and the other way round.
        let (ws, wv) = key_pair("a.example/w", WITNESS_KEY_TYPE, [3; 32]).unwrap();
        assert!(LogSigner::from_text(&ws).is_err());
        assert!(LogVerifier::from_text(&wv).is_err());
        assert!(WitnessVerifier::from_text(&v).is_err());
        assert_eq!(WitnessSigner::from_text(&ws).unwrap().verifier_text(), wv);
        for bad in [
            v.replacen("a.example/log", "b.example/log", 1),
            v[..v.len() - 4].to_owned(),
            "nothing".to_owned(),
            v.replacen('+', " +", 1),
        ] {
            assert!(LogVerifier::from_text(&bad).is_err(), "{bad}");
        }
        assert!(key_pair("has space", LOG_KEY_TYPE, [0; 32]).is_err());
        assert!(key_pair("has+plus", LOG_KEY_TYPE, [0; 32]).is_err());
    }

    #[test]
    fn a_checkpoint_parses_back_and_extension_lines_are_refused() {
        let c = Checkpoint {
            origin: "o".into(),
            size: 3,
            root: leaf_hash(b"r"),
        };
        assert_eq!(Checkpoint::parse(c.text().as_bytes()).unwrap(), c);
        let ext = format!("{}extra\n", c.text());
        assert!(Checkpoint::parse(ext.as_bytes()).is_err());
        assert_eq!(parse_root(&root_text(&c.root)).unwrap(), c.root);
    }
}

//! The node as a witness of the hub's audit log.
//!
//! The node keeps the newest checkpoint it has verified. Every
//! `witness_every_ms` (at most 10 s) and when the link to the hub comes
//! back it checks the hub's latest checkpoint, and the last one the hub
//! handed it (in a submission's answer), against that one: signed by the log key;
//! the same root for the same size; a consistency proof from the smaller
//! tree to the larger. A checkpoint that passes becomes the one held and the
//! node cosigns it (C2SP tlog-cosignature) for the hub to serve beside it,
//! so that anyone can see which bodies vouch for a tree.
//!
//! A checkpoint that fails raises the alarm: an error log line, the alarm
//! and the evidence (the checkpoint held, the one served, the proof that
//! did not connect them) in the store, the alarm in `Officer.Status`, and
//! every delivery stored until an operator clears it marked as received
//! under an unverified log. The decisions ([`judge`]) are pure; the checks
//! that need the hub are in [`Witness::check`].

use std::sync::Mutex;
use std::time::Duration;

use liaison_proto::v1 as pb;
use liaison_store::{from_json as parse, keys, to_json as json, Db, StoreError};
use liaison_tlog::tree::{self, Hash};
use liaison_tlog::{Checkpoint, LogVerifier, SignedCheckpoint, WitnessSigner};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::NodeError;

/// The newest checkpoint verified.
const HELD: &[u8] = b"meta/witness";
/// The alarm, while raised.
const ALARM: &[u8] = b"meta/witness_alarm";
/// Evidence, by number.
const EVIDENCE_PREFIX: &[u8] = b"we/";
/// The last evidence number.
const EVIDENCE_NEXT: &[u8] = b"meta/witness_evidence_next";

/// What the witness holds (JSON under `meta/witness`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Held {
    /// The signed note, as served.
    pub note: String,
    /// Its tree size.
    pub size: u64,
    /// When it was verified.
    pub verified_at_ms: i64,
    /// When this node last cosigned, and which size.
    pub cosigned_at_ms: i64,
    /// The size it cosigned.
    pub cosigned_size: u64,
}

/// The alarm (JSON under `meta/witness_alarm`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Alarm {
    /// Why.
    pub problem: String,
    /// Since when.
    pub at_ms: i64,
}

/// What a failed check saw (JSON under `we/<n>`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Evidence {
    /// Its number.
    pub id: u64,
    /// When.
    pub at_ms: i64,
    /// What was wrong.
    pub problem: String,
    /// The checkpoint held (a signed note), if any.
    pub held: String,
    /// The checkpoint served.
    pub served: String,
    /// The proof that failed, hex.
    pub proof: Vec<String>,
}

/// How a served checkpoint relates to the one held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// Nothing is held yet: take it (trust on first use).
    First,
    /// The same tree.
    Same,
    /// A larger tree: it must be proven to extend the one held.
    Larger,
    /// A smaller tree: the one held must be proven to extend it.
    Smaller,
    /// The same size and another root: two views of one log.
    Split,
}

/// The pure decision: what must be checked before `served` is believed.
pub fn judge(held: Option<&Checkpoint>, served: &Checkpoint) -> Judgement {
    match held {
        None => Judgement::First,
        Some(h) if h.size == served.size && h.root == served.root => Judgement::Same,
        Some(h) if h.size == served.size => Judgement::Split,
        Some(h) if h.size < served.size => Judgement::Larger,
        Some(_) => Judgement::Smaller,
    }
}

/// The witness: its keys, its timing and the alarm as it stands.
#[derive(Debug)]
pub struct Witness {
    log: LogVerifier,
    key: WitnessSigner,
    /// How often it checks.
    pub every: Duration,
    /// The alarm as it stands, for the inbox writes (mirror of the store).
    alarm: watch::Sender<Option<Alarm>>,
    /// A checkpoint the hub handed over (in an answer), to check soon.
    offered: watch::Sender<Option<Vec<u8>>>,
    /// The last check: when, and why it could not be made.
    last_check: Mutex<(i64, String)>,
    /// Where the held checkpoint is also written as a plain file, for
    /// operators to compare (`liaison audit compare`).
    file: std::path::PathBuf,
}

impl Witness {
    /// A witness over the node's store.
    pub fn open(
        db: &Db,
        log: LogVerifier,
        key: WitnessSigner,
        every: Duration,
        file: std::path::PathBuf,
    ) -> Result<Self, StoreError> {
        let alarm = match db.get(ALARM)? {
            Some(b) => Some(parse::<Alarm>(ALARM, &b)?),
            None => None,
        };
        Ok(Self {
            log,
            key,
            every,
            alarm: watch::channel(alarm).0,
            offered: watch::channel(None).0,
            last_check: Mutex::new((0, String::new())),
            file,
        })
    }

    /// The alarm, if raised.
    pub fn alarm(&self) -> Option<Alarm> {
        self.alarm.borrow().clone()
    }

    /// Hands over a checkpoint the hub sent, checked at the next round
    /// (within `every`) without waking the witness: a check costs the hub a
    /// proof and a cosignature write, and answers come with every push.
    pub fn offer(&self, note: Vec<u8>) {
        if !note.is_empty() {
            self.offered.send_if_modified(|held| {
                *held = Some(note);
                false
            });
        }
    }

    /// Asks for a check now (the link to the hub came back).
    pub fn nudge(&self) {
        self.offered.send_modify(|_| {});
    }

    /// The checkpoint held, if any.
    pub fn held(db: &Db) -> Result<Option<Held>, StoreError> {
        match db.get(HELD)? {
            Some(b) => Ok(Some(parse(HELD, &b)?)),
            None => Ok(None),
        }
    }

    /// The held checkpoint, checked again (it is the trust anchor).
    fn held_checkpoint(&self, db: &Db) -> Result<Option<(Held, SignedCheckpoint)>, NodeError> {
        let Some(held) = Self::held(db)? else {
            return Ok(None);
        };
        let signed = self.log.verify(held.note.as_bytes()).map_err(|e| {
            NodeError::Store(StoreError::Corrupt {
                key: "meta/witness".into(),
                problem: format!("the checkpoint held does not verify: {e}"),
            })
        })?;
        Ok(Some((held, signed)))
    }

    /// What `Officer.Status` and `NodeAudit.WitnessStatus` show.
    pub fn status(&self, db: &Db) -> Result<pb::WitnessStatus, StoreError> {
        let held = Self::held(db)?.unwrap_or_default();
        let alarm = self.alarm();
        let mut evidence = Vec::new();
        for (_, v) in db.scan_rev(EVIDENCE_PREFIX, &keys::prefix_end(EVIDENCE_PREFIX), 20)? {
            let e: Evidence = parse(EVIDENCE_PREFIX, &v)?;
            evidence.push(pb::WitnessEvidence {
                id: e.id,
                at_ms: e.at_ms,
                problem: e.problem,
                held: e.held.into_bytes(),
                served: e.served.into_bytes(),
                proof: e.proof.iter().filter_map(|h| hex::decode(h).ok()).collect(),
            });
        }
        let (checked_at_ms, check_error) = self
            .last_check
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(pb::WitnessStatus {
            checkpoint: held.note.into_bytes(),
            tree_size: held.size,
            verified_at_ms: held.verified_at_ms,
            cosigned_at_ms: held.cosigned_at_ms,
            cosigned_size: held.cosigned_size,
            alarm: alarm
                .as_ref()
                .map(|a| a.problem.clone())
                .unwrap_or_default(),
            alarm_at_ms: alarm.map(|a| a.at_ms).unwrap_or_default(),
            evidence,
            checked_at_ms,
            check_error,
        })
    }

    /// Checks the hub's latest checkpoint (and one it handed over), until
    /// the node stops.
    pub async fn run(
        self: std::sync::Arc<Self>,
        db: Db,
        hub: pb::federation_client::FederationClient<tonic::transport::Channel>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let mut offered = self.offered.subscribe();
        loop {
            let handed = offered.borrow_and_update().clone();
            let mut hub = hub.clone();
            let outcome = async {
                if let Some(note) = handed {
                    self.check(&db, &mut hub, &note).await?;
                }
                let latest = hub
                    .get_checkpoint(pb::CheckpointRequest::default())
                    .await
                    .map_err(|s| format!("fetching the hub's checkpoint: {}", s.message()))?
                    .into_inner();
                self.check(&db, &mut hub, &latest.note).await
            }
            .await;
            let error = match outcome {
                Ok(()) => String::new(),
                Err(e) => {
                    tracing::debug!(error = %e, "the witness could not check the hub's log");
                    e
                }
            };
            *self.last_check.lock().unwrap_or_else(|p| p.into_inner()) =
                (liaison_types::now_ms(), error);
            tokio::select! {
                () = tokio::time::sleep(self.every) => {}
                changed = offered.changed() => if changed.is_err() { return },
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
    }

    /// Checks one served checkpoint (a signed note) against the one held;
    /// adopts and cosigns it, or raises the alarm. `Err` when the check
    /// could not be made (the hub unreachable): nothing is concluded.
    pub async fn check(
        &self,
        db: &Db,
        hub: &mut pb::federation_client::FederationClient<tonic::transport::Channel>,
        note: &[u8],
    ) -> Result<(), String> {
        let held = self.held_checkpoint(db).map_err(|e| e.to_string())?;
        let held_note = held
            .as_ref()
            .map(|(h, _)| h.note.clone())
            .unwrap_or_default();
        let served = match self.log.verify(note) {
            Ok(s) => s,
            Err(e) => {
                self.raise(
                    db,
                    format!("the hub served a checkpoint that its log key did not sign ({e})"),
                    &held_note,
                    note,
                    &[],
                )
                .await;
                return Ok(());
            }
        };
        let held_cp = held.as_ref().map(|(_, s)| &s.checkpoint);
        match judge(held_cp, &served.checkpoint) {
            Judgement::First => self.adopt(db, hub, &served).await,
            Judgement::Same => {
                let cosigned = held
                    .as_ref()
                    .is_some_and(|(h, _)| h.cosigned_size == served.checkpoint.size);
                if !cosigned {
                    self.adopt(db, hub, &served).await?;
                }
                Ok(())
            }
            Judgement::Split => {
                let size = served.checkpoint.size;
                self.raise(
                    db,
                    format!(
                        "two checkpoints of {size} records with different roots: the hub shows this node another log than before"
                    ),
                    &held_note,
                    note,
                    &[],
                )
                .await;
                Ok(())
            }
            Judgement::Larger | Judgement::Smaller => {
                let Some(held_cp) = held_cp else {
                    return Ok(());
                };
                let (old, new) = if held_cp.size < served.checkpoint.size {
                    (held_cp, &served.checkpoint)
                } else {
                    (&served.checkpoint, held_cp)
                };
                let asked = hub
                    .prove_consistency(pb::ConsistencyRequest {
                        old_size: old.size,
                        tree_size: new.size,
                    })
                    .await;
                let proof = match asked {
                    Ok(p) => p.into_inner(),
                    // The hub's log is shorter than the tree this node
                    // verified: records it had signed are gone (a
                    // truncated or replaced log). An honest hub's log only
                    // grows, so this is no passing failure.
                    Err(s) if s.code() == tonic::Code::OutOfRange && new.size == held_cp.size => {
                        self.raise(
                            db,
                            format!(
                                "the hub's log holds {} records, fewer than the {} of the checkpoint held here (it was truncated or replaced): {}",
                                served.checkpoint.size,
                                held_cp.size,
                                s.message()
                            ),
                            &held_note,
                            note,
                            &[],
                        )
                        .await;
                        return Ok(());
                    }
                    Err(s) => {
                        return Err(format!("asking for a consistency proof: {}", s.message()))
                    }
                };
                let hashes: Result<Vec<Hash>, String> = proof
                    .hashes
                    .iter()
                    .map(|h| {
                        <[u8; 32]>::try_from(h.as_slice())
                            .map(Hash)
                            .map_err(|_| "a proof hash is not 32 bytes".to_owned())
                    })
                    .collect();
                let verdict = hashes.and_then(|h| {
                    tree::verify_consistency(&h, old.size, old.root, new.size, new.root)
                        .map_err(|e| e.to_string())
                });
                match verdict {
                    Ok(()) if new.size == served.checkpoint.size => {
                        self.adopt(db, hub, &served).await
                    }
                    // An older tree that the one held extends: nothing new.
                    Ok(()) => Ok(()),
                    Err(e) => {
                        self.raise(
                            db,
                            format!(
                                "the hub's checkpoint of {} records is not consistent with the one of {} held here ({e})",
                                served.checkpoint.size, held_cp.size
                            ),
                            &held_note,
                            note,
                            &proof.hashes,
                        )
                        .await;
                        Ok(())
                    }
                }
            }
        }
    }

    /// Takes `served` as the checkpoint held, then cosigns it.
    async fn adopt(
        &self,
        db: &Db,
        hub: &mut pb::federation_client::FederationClient<tonic::transport::Channel>,
        served: &SignedCheckpoint,
    ) -> Result<(), String> {
        let now = liaison_types::now_ms();
        let mut held = Self::held(db)
            .map_err(|e| e.to_string())?
            .filter(|h| h.size == served.checkpoint.size)
            .unwrap_or_default();
        held.note = String::from_utf8_lossy(&served.note).into_owned();
        held.size = served.checkpoint.size;
        if held.verified_at_ms == 0 {
            held.verified_at_ms = now;
        }
        self.store_held(db, &held).await?;
        let cosignature = self
            .key
            .cosign(&served.checkpoint, u64::try_from(now / 1000).unwrap_or(0));
        hub.cosign(pb::CosignRequest {
            tree_size: served.checkpoint.size,
            signature_line: cosignature.line,
        })
        .await
        .map_err(|s| format!("sending the cosignature: {}", s.message()))?;
        held.cosigned_at_ms = now;
        held.cosigned_size = served.checkpoint.size;
        self.store_held(db, &held).await
    }

    async fn store_held(&self, db: &Db, held: &Held) -> Result<(), String> {
        let value = json(held);
        db.write(move |txn| {
            txn.put(HELD.to_vec(), value);
            Ok::<_, StoreError>(())
        })
        .await
        .map_err(|e| e.to_string())?;
        // The plain file beside the store, replaced whole.
        let tmp = self.file.with_extension("tmp");
        if std::fs::write(&tmp, held.note.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, &self.file))
            .is_err()
        {
            tracing::warn!(file = %self.file.display(), "cannot write the witnessed checkpoint file");
        }
        Ok(())
    }

    /// Checks the log key this witness uses against the one the
    /// federation's governance names (`[audit] log_key`), if it names one;
    /// a different key raises the alarm: checkpoints this node verifies
    /// would not be the federation's log.
    pub async fn check_agreed_key(&self, db: &Db, agreed: Option<&str>) {
        let Some(agreed) = agreed else { return };
        if !self.log.is(agreed) {
            self.raise(
                db,
                format!(
                    "the federation's governance names the log key {}, but this node checks checkpoints with the key named {} in its [audit] log_key; configure the key the federation agreed",
                    liaison_types::text::escape_line(agreed),
                    self.log.name()
                ),
                "",
                &[],
                &[],
            )
            .await;
        }
    }

    /// Raises the alarm with its evidence (one write), unless the same
    /// problem is already raised.
    async fn raise(&self, db: &Db, problem: String, held: &str, served: &[u8], proof: &[Vec<u8>]) {
        let now = liaison_types::now_ms();
        tracing::error!(problem = %problem, "AUDIT LOG ALARM: the hub's checkpoint does not verify against the one this node holds; deliveries are marked as received under an unverified log until an operator clears the alarm");
        let alarm = Alarm {
            problem: problem.clone(),
            at_ms: self.alarm().map_or(now, |a| a.at_ms),
        };
        let evidence = Evidence {
            id: 0,
            at_ms: now,
            problem,
            held: held.to_owned(),
            served: String::from_utf8_lossy(served).into_owned(),
            proof: proof.iter().map(hex::encode).collect(),
        };
        let keep = alarm.clone();
        let written = db
            .write(move |txn| {
                let id = keys::u64_value(txn.get(EVIDENCE_NEXT)?) + 1;
                txn.put(EVIDENCE_NEXT.to_vec(), id.to_be_bytes().to_vec());
                let e = Evidence { id, ..evidence };
                txn.put(keys::seq_key(EVIDENCE_PREFIX, id), json(&e));
                txn.put(ALARM.to_vec(), json(&keep));
                Ok::<_, StoreError>(())
            })
            .await;
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot store the audit log alarm");
        }
        self.alarm.send_replace(Some(alarm));
    }

    /// Clears the alarm; with `trust_latest`, the hub's latest checkpoint
    /// becomes the one held (after an investigation). Evidence is kept.
    pub async fn clear(
        &self,
        db: &Db,
        hub: &mut pb::federation_client::FederationClient<tonic::transport::Channel>,
        trust_latest: bool,
    ) -> Result<(), NodeError> {
        if trust_latest {
            let latest = hub
                .get_checkpoint(pb::CheckpointRequest::default())
                .await
                .map_err(NodeError::Hub)?
                .into_inner();
            let served = self.log.verify(&latest.note).map_err(|e| {
                NodeError::Witness(format!("the hub's checkpoint does not verify: {e}"))
            })?;
            let held = Held {
                note: String::from_utf8_lossy(&served.note).into_owned(),
                size: served.checkpoint.size,
                verified_at_ms: liaison_types::now_ms(),
                ..Held::default()
            };
            self.store_held(db, &held)
                .await
                .map_err(NodeError::Witness)?;
        }
        db.write(|txn| {
            txn.delete(ALARM.to_vec());
            Ok::<_, StoreError>(())
        })
        .await?;
        self.alarm.send_replace(None);
        self.nudge();
        Ok(())
    }

    /// The log's key, to check proofs with.
    pub fn log_key(&self) -> &LogVerifier {
        &self.log
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A witness with fixed keys, for tests.
    pub(crate) fn witness(db: &Db) -> Witness {
        use liaison_tlog::note::{key_pair, LOG_KEY_TYPE, WITNESS_KEY_TYPE};
        let (_, log) = key_pair("liaison.test/audit", LOG_KEY_TYPE, [1; 32]).unwrap();
        let (key, _) = key_pair("liaison.test/witness/body01", WITNESS_KEY_TYPE, [2; 32]).unwrap();
        Witness::open(
            db,
            LogVerifier::from_text(&log).unwrap(),
            WitnessSigner::from_text(&key).unwrap(),
            Duration::from_secs(5),
            std::env::temp_dir().join("liaison-test-witness-checkpoint"),
        )
        .unwrap()
    }

    fn cp(size: u64, root: &[u8]) -> Checkpoint {
        Checkpoint {
            origin: "o".into(),
            size,
            root: tree::leaf_hash(root),
        }
    }

    #[tokio::test]
    async fn a_log_key_other_than_the_federations_raises_the_alarm() {
        use liaison_tlog::note::{key_pair, LOG_KEY_TYPE};
        let db = Db::in_memory();
        let w = witness(&db);
        let (_, same) = key_pair("liaison.test/audit", LOG_KEY_TYPE, [1; 32]).unwrap();
        let (_, other) = key_pair("liaison.test/audit", LOG_KEY_TYPE, [9; 32]).unwrap();
        w.check_agreed_key(&db, None).await;
        w.check_agreed_key(&db, Some(&same)).await;
        assert!(w.alarm().is_none());
        w.check_agreed_key(&db, Some(&other)).await;
        let alarm = w.alarm().expect("raised");
        assert!(
            alarm.problem.contains("names the log key"),
            "{}",
            alarm.problem
        );
        assert!(w.status(&db).unwrap().alarm.contains(&other));
    }

    #[test]
    fn every_relation_of_two_checkpoints_is_judged() {
        let held = cp(5, b"a");
        assert_eq!(judge(None, &held), Judgement::First);
        assert_eq!(judge(Some(&held), &cp(5, b"a")), Judgement::Same);
        assert_eq!(judge(Some(&held), &cp(5, b"b")), Judgement::Split);
        assert_eq!(judge(Some(&held), &cp(6, b"b")), Judgement::Larger);
        assert_eq!(judge(Some(&held), &cp(4, b"a")), Judgement::Smaller);
        assert_eq!(judge(Some(&held), &cp(0, b"")), Judgement::Smaller);
    }
}

//! The governance in force: one value, changed under one lock.
//!
//! What decides a message is the governance file as last loaded *and* the
//! administrators' state overrides (a body suspended, revoked or reinstated
//! on top of the file). [`InForce`] holds both and derives the effective
//! governance from them when it is built; nothing stores the effective
//! governance apart from its sources, so the three can never disagree.
//!
//! Readers take a snapshot ([`GovernanceCell::current`]): a cheap `Arc`
//! clone, never blocked by a change in progress. Every change (a reload of
//! the file, a state override) runs under [`GovernanceCell::change`], one
//! async lock held from reading the value in force, through the awaited
//! audit write, to installing the new value. So two changes can never
//! interleave: a reload cannot undo a state change made while it read the
//! file, and of two concurrent state changes neither is lost.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use liaison_policy::{Governance, State};
use liaison_types::BodyId;

/// The governance file, the administrators' overrides, and the effective
/// governance derived from them.
#[derive(Debug)]
pub struct InForce {
    file: Arc<Governance>,
    overrides: BTreeMap<BodyId, State>,
    effective: Arc<Governance>,
}

impl InForce {
    /// The value for a file and overrides. The overrides are kept as given
    /// (they are what the store holds, so a restart derives the same
    /// value); one of a body the file does not know, or that repeats the
    /// file's state, changes nothing in the effective governance.
    pub fn new(file: Arc<Governance>, overrides: BTreeMap<BodyId, State>) -> Self {
        let effective = Arc::new(file.with_states(&overrides));
        Self {
            file,
            overrides,
            effective,
        }
    }

    /// The governance every decision uses: the file with the overrides.
    pub fn effective(&self) -> &Arc<Governance> {
        &self.effective
    }

    /// The governance file as last loaded.
    pub fn file(&self) -> &Arc<Governance> {
        &self.file
    }

    /// The administrators' overrides, as stored.
    pub fn overrides(&self) -> &BTreeMap<BodyId, State> {
        &self.overrides
    }

    /// This value with a new file; the overrides stay.
    pub fn with_file(&self, file: Governance) -> Self {
        Self::new(Arc::new(file), self.overrides.clone())
    }

    /// This value with `body` in `state` (an override, or none when the file
    /// already says so).
    pub fn with_state(&self, body: &BodyId, state: State) -> Self {
        let mut overrides = self.overrides.clone();
        if self.file.body(body).map(|b| b.state) == Some(state) {
            overrides.remove(body);
        } else {
            overrides.insert(body.clone(), state);
        }
        Self::new(Arc::clone(&self.file), overrides)
    }
}

/// The value in force, and the lock every change holds.
#[derive(Debug)]
pub struct GovernanceCell {
    current: RwLock<Arc<InForce>>,
    changes: tokio::sync::Mutex<()>,
}

impl GovernanceCell {
    /// A cell holding `value`.
    pub fn new(value: InForce) -> Self {
        Self {
            current: RwLock::new(Arc::new(value)),
            changes: tokio::sync::Mutex::new(()),
        }
    }

    /// A snapshot of the value in force.
    pub fn current(&self) -> Arc<InForce> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits for the change lock: the value read through the guard stays in
    /// force until the guard installs another or is dropped.
    pub async fn change(&self) -> Change<'_> {
        let guard = self.changes.lock().await;
        Change {
            cell: self,
            _guard: guard,
        }
    }
}

/// A change in progress (see [`GovernanceCell::change`]).
#[derive(Debug)]
pub struct Change<'a> {
    cell: &'a GovernanceCell,
    _guard: tokio::sync::MutexGuard<'a, ()>,
}

impl Change<'_> {
    /// The value in force (no other change can replace it meanwhile).
    pub fn current(&self) -> Arc<InForce> {
        self.cell.current()
    }

    /// Puts `value` in force; returns the previous one.
    pub fn install(&self, value: InForce) -> Arc<InForce> {
        let mut current = self.cell.current.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *current, Arc::new(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use liaison_types::Classification::Secret;

    fn gov(tag: &str) -> Governance {
        Governance::for_test()
            .member("interpol", Secret, &["drugs"])
            .member("alpha", Secret, &["drugs"])
            .member("bravo", Secret, &[tag])
            .build()
            .unwrap()
    }

    fn body(id: &str) -> BodyId {
        BodyId::parse(id).unwrap()
    }

    #[test]
    fn the_effective_governance_is_derived_from_file_and_overrides() {
        let v = InForce::new(Arc::new(gov("drugs")), BTreeMap::new());
        assert_eq!(v.effective().version(), v.file().version());
        let suspended = v.with_state(&body("alpha"), State::Suspended);
        assert_ne!(suspended.effective().version(), v.file().version());
        assert_eq!(
            suspended.effective().body(&body("alpha")).unwrap().state,
            State::Suspended
        );
        // A new file keeps the override.
        let reloaded = suspended.with_file(gov("terrorism"));
        assert_eq!(
            reloaded.effective().body(&body("alpha")).unwrap().state,
            State::Suspended
        );
        assert_ne!(reloaded.file().version(), v.file().version());
        // Reinstating to the file's own state drops the override.
        let back = reloaded.with_state(&body("alpha"), State::Active);
        assert!(back.overrides().is_empty());
        assert_eq!(back.effective().version(), back.file().version());
    }

    #[test]
    fn an_override_of_an_unknown_body_changes_nothing_until_the_file_adds_it() {
        let mut o = BTreeMap::new();
        o.insert(body("zulu"), State::Revoked);
        let v = InForce::new(Arc::new(gov("drugs")), o);
        assert_eq!(v.effective().version(), v.file().version());
        assert_eq!(v.overrides().len(), 1, "kept as stored");
    }

    #[tokio::test]
    async fn changes_run_one_at_a_time() {
        let cell = Arc::new(GovernanceCell::new(InForce::new(
            Arc::new(gov("drugs")),
            BTreeMap::new(),
        )));
        let first = cell.change().await;
        let other = Arc::clone(&cell);
        let waiting = tokio::spawn(async move {
            let c = other.change().await;
            let v = c.current().with_state(&body("bravo"), State::Suspended);
            c.install(v);
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "a second change waits for the first"
        );
        let v = first.current().with_state(&body("alpha"), State::Suspended);
        first.install(v);
        drop(first);
        waiting.await.unwrap();
        // Both changes are in force: neither undid the other.
        assert_eq!(cell.current().overrides().len(), 2);
    }
}

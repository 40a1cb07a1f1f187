//! The rate at which each officer may submit (`[officers]
//! max_submissions_per_minute`): a flood from one certificate is refused
//! with `RESOURCE_EXHAUSTED` while every other officer of the node is
//! served as before. The limit is a generic cell rate (governor's GCRA)
//! per officer identity: up to the per-minute number at once, then one
//! more each sixtieth of the minute.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use serde::Deserialize;

use crate::NodeError;

/// The `[officers]` table of the node's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Officers {
    /// Messages one officer certificate may submit per minute (with a burst
    /// of as many); 0 means no limit.
    pub max_submissions_per_minute: u32,
}

impl Default for Officers {
    fn default() -> Self {
        Self {
            max_submissions_per_minute: 1200,
        }
    }
}

/// One limiter per node, keyed by the officer's SPIFFE id.
#[derive(Debug)]
pub struct OfficerRate {
    per_minute: u32,
    limiter: Option<RateLimiter<String, HashMapStateStore<String>, DefaultClock>>,
}

impl OfficerRate {
    /// The limiter for `officers`.
    pub fn new(officers: Officers) -> Self {
        let limiter = NonZeroU32::new(officers.max_submissions_per_minute)
            .map(|n| RateLimiter::hashmap(Quota::per_minute(n).allow_burst(n)));
        Self {
            per_minute: officers.max_submissions_per_minute,
            limiter,
        }
    }

    /// Takes `n` submissions from `officer`'s allowance, or refuses them
    /// all (nothing is taken) with the time to wait.
    pub fn admit(&self, officer: &str, n: usize) -> Result<(), NodeError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let Some(cells) = u32::try_from(n).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        match limiter.check_key_n(&officer.to_owned(), cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(NodeError::RateLimited {
                    officer: officer.to_owned(),
                    limit: self.per_minute,
                    retry_in_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
                })
            }
            Err(_) => Err(NodeError::BadRequest {
                field: "messages",
                problem: format!(
                    "{n} messages in one batch are more than this node lets one officer submit in a minute ([officers] max_submissions_per_minute = {}); send smaller batches",
                    self.per_minute
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(per_minute: u32) -> OfficerRate {
        OfficerRate::new(Officers {
            max_submissions_per_minute: per_minute,
        })
    }

    #[test]
    fn an_officer_over_the_limit_is_refused_and_others_are_not() {
        let rate = limited(3);
        let alice = "spiffe://t/org/alpha/officer/alice";
        let bob = "spiffe://t/org/alpha/officer/bob";
        for _ in 0..3 {
            rate.admit(alice, 1).unwrap();
        }
        match rate.admit(alice, 1) {
            Err(NodeError::RateLimited {
                officer,
                limit,
                retry_in_ms,
            }) => {
                assert_eq!((officer.as_str(), limit), (alice, 3));
                // One cell comes back every 20 s.
                assert!((1..=20_000).contains(&retry_in_ms), "{retry_in_ms}");
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        rate.admit(bob, 3).unwrap();
    }

    #[test]
    fn a_refused_batch_takes_nothing() {
        let rate = limited(4);
        let alice = "spiffe://t/org/alpha/officer/alice";
        rate.admit(alice, 3).unwrap();
        assert!(rate.admit(alice, 2).is_err());
        // The one left is still there.
        rate.admit(alice, 1).unwrap();
    }

    #[test]
    fn a_batch_larger_than_the_limit_can_never_pass_and_says_so() {
        let rate = limited(4);
        let e = rate.admit("o", 5).unwrap_err().to_string();
        assert!(e.contains("max_submissions_per_minute = 4"), "{e}");
    }

    #[test]
    fn zero_means_no_limit() {
        let rate = limited(0);
        for _ in 0..10_000 {
            rate.admit("o", 1).unwrap();
        }
    }
}

//! Provider-wide backoff: a failure that hits every row (model broken, remote provider down, bad
//! credentials) must not burn every row's attempts in seconds.
//!
//! The rule: the first failing row pays an attempt. If another, different row fails before
//! anything succeeds, the provider is suspect (the worker then embeds a known-good canary
//! text: if that works, the rows are at fault and pay their attempts, and the breaker closes).
//! A suspect provider gets the row back without an attempt and the whole pipeline pauses with
//! a growing, jittered delay; while suspect it probes with one row at a time. One success
//! closes the breaker. A single poison row keeps failing alone, pays an attempt each time and
//! ends `failed`, as it should.

use std::time::{Duration, Instant};

use super::backoff::Backoff;

/// What to do with a row whose embedding failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Count an attempt on the row (it may be the row's fault).
    CountAttempt,
    /// Give the row back untouched and pause the pipeline for this long.
    ProviderDown(Duration),
}

#[derive(Debug)]
pub struct Breaker {
    backoff: Backoff,
    last_failed: Option<String>,
    paused_until: Option<Instant>,
    suspect: bool,
}

impl Breaker {
    pub fn new(base: Duration, cap: Duration) -> Breaker {
        Breaker {
            backoff: Backoff::new(base, cap),
            last_failed: None,
            paused_until: None,
            suspect: false,
        }
    }

    pub fn on_success(&mut self) {
        self.backoff.reset();
        self.last_failed = None;
        self.paused_until = None;
        self.suspect = false;
    }

    pub fn on_failure(&mut self, row_id: &str, now: Instant) -> Verdict {
        let other_row_failed_before = self.last_failed.as_deref().is_some_and(|id| id != row_id);
        self.last_failed = Some(row_id.to_string());
        if self.suspect || other_row_failed_before {
            self.suspect = true;
            let pause = self.backoff.next_delay();
            self.paused_until = Some(now + pause);
            Verdict::ProviderDown(pause)
        } else {
            Verdict::CountAttempt
        }
    }

    /// How long claiming must still wait.
    pub fn pause_left(&self, now: Instant) -> Option<Duration> {
        self.paused_until
            .and_then(|t| t.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// While suspect, claim one row at a time (a probe), not a full batch.
    pub fn claim_limit(&self, batch_size: usize) -> usize {
        if self.suspect {
            1
        } else {
            batch_size
        }
    }

    #[cfg(test)]
    fn is_open(&self) -> bool {
        self.suspect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(Duration::from_millis(100), Duration::from_secs(60))
    }

    #[test]
    fn a_poison_row_alone_pays_every_attempt() {
        let mut b = breaker();
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(b.on_failure("poison", now), Verdict::CountAttempt);
        }
        assert!(!b.is_open());
        assert_eq!(b.claim_limit(32), 32);
    }

    #[test]
    fn failures_across_rows_open_the_breaker_and_grow_the_pause() {
        let mut b = breaker();
        let now = Instant::now();
        assert_eq!(b.on_failure("a", now), Verdict::CountAttempt);
        let Verdict::ProviderDown(p1) = b.on_failure("b", now) else {
            panic!("expected pause")
        };
        assert!(b.is_open());
        assert_eq!(b.claim_limit(32), 1);
        assert!(b.pause_left(now).is_some());
        let mut last = p1;
        for _ in 0..10 {
            // Even the same row again is not charged while the provider is suspect.
            let Verdict::ProviderDown(p) = b.on_failure("b", now) else {
                panic!("expected pause")
            };
            last = p;
        }
        assert!(last > p1 && last <= Duration::from_secs(60));
        assert!(b.pause_left(now + Duration::from_secs(61)).is_none());
    }

    #[test]
    fn one_success_closes_it() {
        let mut b = breaker();
        let now = Instant::now();
        b.on_failure("a", now);
        b.on_failure("b", now);
        b.on_success();
        assert!(!b.is_open());
        assert!(b.pause_left(now).is_none());
        assert_eq!(b.on_failure("c", now), Verdict::CountAttempt);
    }
}

//! Per-terminal rate limiting (token buckets), so one noisy or looping terminal cannot take the
//! edge's WAL bandwidth and Kafka quota from the rest of its city. Pure: time is passed in.
//!
//! A message over its terminal's budget is not dropped: the edge answers it with a `deferred`
//! ack and a retry delay, and the event stays in the terminal's durable outbox until a resend
//! fits the budget. It never reaches the WAL, so it costs the edge one topic lookup and one
//! id peek.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A terminal may send `burst` events at once, then `per_second` on average.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

/// The verdict on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// Over budget: ask the terminal to resend after this long.
    RetryAfter(Duration),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets keyed by the terminal's topic. The broker's ACL lets a login publish only on
/// its own topic, so keys are bounded by the terminals provisioned for the city; idle buckets
/// (full again) are dropped by [`TerminalRateLimiter::forget_idle`].
#[derive(Debug)]
pub struct TerminalRateLimiter {
    limit: RateLimit,
    buckets: HashMap<String, Bucket>,
}

/// The shortest retry delay handed out: resends come in waves, not one per freed token.
pub const MIN_RETRY_AFTER: Duration = Duration::from_millis(500);

impl TerminalRateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self { limit, buckets: HashMap::new() }
    }

    /// Takes one token from `terminal`'s bucket at `now`.
    pub fn admit(&mut self, terminal: &str, now: Instant) -> Admission {
        let RateLimit { per_second, burst } = self.limit;
        let bucket = match self.buckets.get_mut(terminal) {
            Some(b) => b,
            None => self.buckets.entry(terminal.to_string()).or_insert(Bucket { tokens: burst, at: now }),
        };
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Admission::Admit
        } else {
            let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / per_second);
            Admission::RetryAfter(wait.max(MIN_RETRY_AFTER))
        }
    }

    /// Drops buckets that have refilled completely by `now`: they hold no state worth keeping.
    pub fn forget_idle(&mut self, now: Instant) {
        let RateLimit { per_second, burst } = self.limit;
        self.buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_second < burst);
    }

    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> TerminalRateLimiter {
        TerminalRateLimiter::new(RateLimit { per_second: 10.0, burst: 5.0 })
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let mut l = limiter();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(l.admit("noisy", t0), Admission::Admit);
        }
        assert_eq!(l.admit("noisy", t0), Admission::RetryAfter(MIN_RETRY_AFTER));
        // 10/s: one token back every 100 ms.
        assert_eq!(l.admit("noisy", t0 + Duration::from_millis(100)), Admission::Admit);
        assert!(matches!(l.admit("noisy", t0 + Duration::from_millis(150)), Admission::RetryAfter(_)));
        // Over one simulated minute of constant pressure, about 10/s get through.
        let admitted = (0..60_000u64).filter(|ms| l.admit("noisy", t0 + Duration::from_millis(200 + ms)) == Admission::Admit).count();
        assert!((595..=605).contains(&admitted), "{admitted}");
    }

    #[test]
    fn a_noisy_terminal_does_not_spend_another_terminals_budget() {
        let mut l = limiter();
        let t0 = Instant::now();
        for _ in 0..1000 {
            l.admit("noisy", t0);
        }
        for _ in 0..5 {
            assert_eq!(l.admit("quiet", t0), Admission::Admit);
        }
    }

    #[test]
    fn the_retry_delay_covers_the_missing_token() {
        let mut l = TerminalRateLimiter::new(RateLimit { per_second: 0.5, burst: 1.0 });
        let t0 = Instant::now();
        assert_eq!(l.admit("t", t0), Admission::Admit);
        assert_eq!(l.admit("t", t0), Admission::RetryAfter(Duration::from_secs(2)));
    }

    #[test]
    fn idle_buckets_are_forgotten_busy_ones_kept() {
        let mut l = limiter();
        let t0 = Instant::now();
        l.admit("idle", t0);
        for _ in 0..5 {
            l.admit("busy", t0 + Duration::from_millis(400));
        }
        l.forget_idle(t0 + Duration::from_millis(450));
        assert_eq!(l.tracked(), 1, "only the bucket still refilling is kept");
    }
}

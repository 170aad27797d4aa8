//! Per-terminal rate limiting (token buckets), so one noisy or looping terminal cannot take the
//! edge's WAL bandwidth and Kafka quota from the rest of its city. Pure: time is passed in.
//!
//! An event over its terminal's budget is not dropped: the edge answers it with a `deferred`
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

/// The verdict on one event.
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
/// its own topic, so keys are bounded by the terminals provisioned for the city. A bucket's last
/// use is also when its terminal was last heard from, so the buckets double as the edge's view
/// of which terminals are active; [`TerminalRateLimiter::forget_unheard`] drops the rest.
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
        match self.admit_up_to(terminal, now, 1) {
            (1, _) => Admission::Admit,
            (_, wait) => Admission::RetryAfter(wait.expect("a refused event has a retry delay")),
        }
    }

    /// Takes up to `events` tokens from `terminal`'s bucket at `now` (the events of one message,
    /// with one lookup): how many are admitted, the first ones, and when there are fewer than
    /// `events`, how long the rest should wait. The same verdicts as [`Self::admit`] called
    /// `events` times at `now`.
    pub fn admit_up_to(&mut self, terminal: &str, now: Instant, events: usize) -> (usize, Option<Duration>) {
        let RateLimit { per_second, burst } = self.limit;
        let bucket = match self.buckets.get_mut(terminal) {
            Some(b) => b,
            None => self.buckets.entry(terminal.to_string()).or_insert(Bucket { tokens: burst, at: now }),
        };
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.at = now;
        let admitted = (bucket.tokens.max(0.0).floor() as usize).min(events);
        bucket.tokens -= admitted as f64;
        if admitted == events {
            return (admitted, None);
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / per_second);
        (admitted, Some(wait.max(MIN_RETRY_AFTER)))
    }

    /// Drops the buckets of terminals not heard from within `window` before `now` and returns
    /// how many terminals were (the `terminals_active` gauge). A dropped bucket would have been
    /// full again: forgetting it changes no verdict.
    pub fn forget_unheard(&mut self, now: Instant, window: Duration) -> usize {
        let RateLimit { per_second, burst } = self.limit;
        let refill = Duration::from_secs_f64(burst / per_second);
        let keep = window.max(refill);
        self.buckets.retain(|_, b| now.saturating_duration_since(b.at) < keep);
        if keep == window {
            self.buckets.len()
        } else {
            self.buckets.values().filter(|b| now.saturating_duration_since(b.at) < window).count()
        }
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

    /// A message's events admitted at once get the verdicts they would get one by one.
    #[test]
    fn admitting_a_message_at_once_is_admitting_its_events_one_by_one() {
        let (mut one, mut many) = (limiter(), limiter());
        let t0 = Instant::now();
        for (ms, n) in [(0u64, 3usize), (0, 4), (30, 1), (250, 6), (260, 0), (900, 9), (5000, 2)] {
            let now = t0 + Duration::from_millis(ms);
            let verdicts: Vec<Admission> = (0..n).map(|_| one.admit("t", now)).collect();
            let admitted = verdicts.iter().filter(|v| **v == Admission::Admit).count();
            assert!(verdicts[..admitted].iter().all(|v| *v == Admission::Admit), "the first ones are admitted");
            let wait = verdicts.get(admitted).map(|v| match v {
                Admission::RetryAfter(w) => *w,
                Admission::Admit => unreachable!(),
            });
            assert_eq!(many.admit_up_to("t", now, n), (admitted, wait), "at {ms} ms, {n} events");
        }
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
    fn terminals_heard_within_the_window_count_as_active_the_rest_are_forgotten() {
        let mut l = limiter();
        let t0 = Instant::now();
        l.admit("gone", t0);
        for _ in 0..5 {
            l.admit("busy", t0 + Duration::from_secs(50));
        }
        l.admit("quiet", t0 + Duration::from_secs(59));
        assert_eq!(l.forget_unheard(t0 + Duration::from_secs(60), Duration::from_secs(30)), 2);
        assert_eq!(l.tracked(), 2, "the terminal unheard for 60 s is forgotten");
        assert_eq!(l.forget_unheard(t0 + Duration::from_secs(200), Duration::from_secs(30)), 0);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn a_bucket_still_refilling_is_kept_even_when_its_terminal_counts_as_gone() {
        // 1 token/s with a burst of 100: an emptied bucket needs 100 s to be full again.
        let mut l = TerminalRateLimiter::new(RateLimit { per_second: 1.0, burst: 100.0 });
        let t0 = Instant::now();
        for _ in 0..100 {
            l.admit("looping", t0);
        }
        assert_eq!(l.forget_unheard(t0 + Duration::from_secs(40), Duration::from_secs(30)), 0);
        assert_eq!(l.tracked(), 1, "forgetting it would hand the looping terminal a fresh burst");
        assert!(matches!(l.admit("looping", t0 + Duration::from_secs(40)), Admission::Admit));
        assert_eq!(l.forget_unheard(t0 + Duration::from_secs(150), Duration::from_secs(30)), 0);
        assert_eq!(l.tracked(), 0);
    }
}

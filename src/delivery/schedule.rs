//! When to try a parked message again: the retry schedule, jitter, Retry-After.
//!
//! Pure: the caller passes the clock and the random draw, so the tests can pin both.

use std::time::{Duration, SystemTime};

/// The retry policy from `[delivery]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Delay before retry N (1-based); the last entry repeats.
    pub schedule: Vec<Duration>,
    /// A message still failing this long after it arrived goes to the dead letters.
    pub max_age: Duration,
    /// Each delay is scaled by a random factor in `1 ± jitter`.
    pub jitter: f64,
}

impl RetryPolicy {
    /// The default: roughly 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, then every 4 h, for 24 h.
    pub fn standard() -> RetryPolicy {
        RetryPolicy {
            schedule: [5, 30, 120, 600, 1800, 3600, 7200, 14400].map(Duration::from_secs).to_vec(),
            max_age: Duration::from_secs(24 * 3600),
            jitter: 0.2,
        }
    }

    /// The delay before retry number `attempt` (1 = the first retry), scaled by
    /// `1 + jitter * (2 * draw - 1)` with `draw` uniform in `[0, 1)`, and never
    /// shorter than what the tenant asked for with `Retry-After`.
    pub fn delay(&self, attempt: u32, draw: f64, retry_after: Option<Duration>) -> Duration {
        let index = (attempt.max(1) as usize - 1).min(self.schedule.len().saturating_sub(1));
        let base = self.schedule.get(index).copied().unwrap_or(Duration::from_secs(5));
        let factor = 1.0 + self.jitter * (2.0 * draw.clamp(0.0, 1.0) - 1.0);
        let jittered = base.mul_f64(factor.max(0.0));
        match retry_after {
            // Honour the tenant, but never beyond the message's lifetime.
            Some(asked) => jittered.max(asked.min(self.max_age)),
            None => jittered,
        }
    }

    /// True when a message that arrived `age` ago should stop being retried.
    pub fn expired(&self, age: Duration) -> bool {
        age >= self.max_age
    }
}

/// Parses `Retry-After`: delta seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(attempt: u32, draw: f64, retry_after: Option<u64>, expected_ms: u64) {
        let policy = RetryPolicy::standard();
        let got = policy.delay(attempt, draw, retry_after.map(Duration::from_secs));
        assert_eq!(got.as_millis() as u64, expected_ms, "attempt {attempt}, draw {draw}");
    }

    #[test]
    fn schedule_with_jitter_and_retry_after() {
        check(1, 0.5, None, 5_000);
        check(1, 0.0, None, 4_000);
        check(1, 1.0, None, 6_000);
        check(2, 0.5, None, 30_000);
        check(3, 0.5, None, 120_000);
        check(8, 0.5, None, 14_400_000);
        check(30, 0.5, None, 14_400_000);
        check(0, 0.5, None, 5_000);
        check(1, 0.5, Some(60), 60_000);
        check(2, 0.5, Some(1), 30_000);
        check(1, 0.5, Some(10 * 24 * 3600), 24 * 3600 * 1000);
    }

    #[test]
    fn expiry() {
        let p = RetryPolicy::standard();
        assert!(!p.expired(Duration::from_secs(3600)));
        assert!(p.expired(Duration::from_secs(24 * 3600)));
    }

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Fri, 04 Dec 2026 16:00:00 GMT").unwrap();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Fri, 04 Dec 2026 16:01:30 GMT", now), Some(Duration::from_secs(90)));
        assert_eq!(parse_retry_after("Fri, 04 Dec 2026 15:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}

//! Failed AUTH attempts, limited per source address: a token bucket per address holds
//! [`BURST`] failures and refills at one per [`REFILL`]. While an address's bucket is
//! empty, its AUTH attempts are refused without looking at the password, so a guesser
//! learns nothing from them. Addresses whose bucket is full again are forgotten once
//! more than [`TRACKED`] are tracked.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed attempts an address may make in a burst.
pub const BURST: f64 = 10.0;
/// One more failed attempt is allowed after each of these.
pub const REFILL: Duration = Duration::from_secs(1);
/// Addresses tracked before full buckets are dropped.
const TRACKED: usize = 10_000;

#[derive(Default)]
pub struct AuthLimit {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl AuthLimit {
    /// `Err(wait)` while `ip` may not try: the time until its next attempt.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        match buckets.get(&ip) {
            Some(&(tokens, at)) => {
                let tokens = refilled(tokens, at, now);
                if tokens >= 1.0 {
                    Ok(())
                } else {
                    Err(REFILL.mul_f64(1.0 - tokens))
                }
            }
            None => Ok(()),
        }
    }

    /// Counts a failed attempt from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= TRACKED {
            buckets.retain(|_, (tokens, at)| refilled(*tokens, *at, now) < BURST);
        }
        let (tokens, at) = buckets.entry(ip).or_insert((BURST, now));
        *tokens = (refilled(*tokens, *at, now) - 1.0).max(0.0);
        *at = now;
    }
}

fn refilled(tokens: f64, at: Instant, now: Instant) -> f64 {
    let gained = now.saturating_duration_since(at).as_secs_f64() / REFILL.as_secs_f64();
    (tokens + gained).min(BURST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_a_burst_then_one_attempt_a_second() {
        let limit = AuthLimit::default();
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = Instant::now();
        for _ in 0..BURST as usize {
            assert!(limit.check(a, t).is_ok());
            limit.failed(a, t);
        }
        let wait = limit.check(a, t).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= REFILL, "{wait:?}");
        assert!(limit.check(b, t).is_ok(), "another address is not limited");
        assert!(
            limit.check(a, t + REFILL).is_ok(),
            "one more after a second"
        );
        limit.failed(a, t + REFILL);
        assert!(limit.check(a, t + REFILL).is_err());
    }
}

//! Failed authentications, limited per source address: a token bucket of
//! `auth_failures_per_minute` tokens per address, refilled continuously over
//! a minute. Each failed authentication takes a token; an address with no
//! token left gets 429 with `Retry-After` for every authenticated request,
//! before its key is even looked at. Successful authentications cost nothing.
//!
//! Memory is bounded: at most [`MAX_TRACKED`] addresses. When full, buckets
//! that have refilled are forgotten first (they hold no state), then the
//! fullest one (the least suspicious). IPv6 addresses count per /64, the
//! block one subscriber usually holds, so one host cannot rotate through its
//! own prefix. The source is the TCP peer: behind a reverse proxy all
//! clients share the proxy's bucket (see docs/operations.md).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Most source addresses tracked at once.
pub const MAX_TRACKED: usize = 10_000;

/// A source: an IPv4 address or an IPv6 /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Source(u128);

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(u128::from(u32::from(v4))),
                None => Source((u128::from(v6) >> 64) | (1 << 127)),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The per-address failure buckets, shared by all workers.
#[derive(Debug)]
pub struct AuthFailureLimiter {
    per_minute: f64,
    buckets: Mutex<HashMap<Source, Bucket>>,
}

impl AuthFailureLimiter {
    /// A limiter allowing `per_minute` failures per address per minute.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(per_minute.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` when `ip` has no failure left.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let buckets = crate::services::lock(&self.buckets);
        let Some(bucket) = buckets.get(&Source::from(ip)) else {
            return Ok(());
        };
        let tokens = self.refilled(bucket, now);
        if tokens >= 1.0 {
            return Ok(());
        }
        let wait = (1.0 - tokens) * 60.0 / self.per_minute;
        Err((wait.ceil() as u64).max(1))
    }

    /// Count one failed authentication from `ip`.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        let mut buckets = crate::services::lock(&self.buckets);
        let source = Source::from(ip);
        if !buckets.contains_key(&source) && buckets.len() >= MAX_TRACKED {
            self.make_room(&mut buckets, now);
        }
        let full = Bucket {
            tokens: self.per_minute,
            updated: now,
        };
        let bucket = buckets.entry(source).or_insert(full);
        bucket.tokens = (self.refilled(bucket, now) - 1.0).max(0.0);
        bucket.updated = now;
    }

    /// Addresses tracked now (for tests of the bound).
    pub fn tracked(&self) -> usize {
        crate::services::lock(&self.buckets).len()
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated);
        let earned = elapsed.as_secs_f64() * self.per_minute / 60.0;
        (bucket.tokens + earned).min(self.per_minute)
    }

    /// Forget refilled buckets; if none, the fullest one.
    fn make_room(&self, buckets: &mut HashMap<Source, Bucket>, now: Instant) {
        buckets.retain(|_, b| self.refilled(b, now) < self.per_minute);
        if buckets.len() < MAX_TRACKED {
            return;
        }
        let fullest = buckets
            .iter()
            .max_by(|a, b| self.refilled(a.1, now).total_cmp(&self.refilled(b.1, now)))
            .map(|(s, _)| *s);
        if let Some(source) = fullest {
            buckets.remove(&source);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn failures_past_the_bucket_are_refused_until_it_refills() {
        let limiter = AuthFailureLimiter::new(3);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(limiter.check(a, t0), Ok(()));
            limiter.record_failure(a, t0);
        }
        // Empty: one token comes back after 20 s.
        assert_eq!(limiter.check(a, t0), Err(20));
        assert_eq!(limiter.check(a, t0 + Duration::from_secs(15)), Err(5));
        assert_eq!(limiter.check(a, t0 + Duration::from_secs(20)), Ok(()));
        // Another address is not affected.
        assert_eq!(limiter.check(ip("192.0.2.2"), t0), Ok(()));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let limiter = AuthFailureLimiter::new(1);
        let t0 = Instant::now();
        limiter.record_failure(ip("2001:db8::1"), t0);
        assert!(limiter.check(ip("2001:db8::ffff:1"), t0).is_err());
        assert!(limiter.check(ip("2001:db8:0:1::1"), t0).is_ok());
        limiter.record_failure(ip("::ffff:192.0.2.7"), t0);
        assert!(limiter.check(ip("192.0.2.7"), t0).is_err());
    }

    #[test]
    fn tracked_addresses_stay_bounded_and_blocked_ones_are_kept() {
        let limiter = AuthFailureLimiter::new(2);
        let t0 = Instant::now();
        let blocked = ip("198.51.100.1");
        limiter.record_failure(blocked, t0);
        limiter.record_failure(blocked, t0);
        for n in 0..(MAX_TRACKED as u32 + 50) {
            let other = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            limiter.record_failure(other, t0);
        }
        assert!(limiter.tracked() <= MAX_TRACKED);
        assert!(limiter.check(blocked, t0).is_err());
    }
}

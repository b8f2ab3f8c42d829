//! Reading a request body within its size limit and its pace. actix's
//! `client_request_timeout` covers only the request head; without a pace a
//! client sending one byte a second would hold a connection (and its body
//! buffer) for ever.
//!
//! The pace has two rules, both from the configuration: no pause between two
//! chunks longer than `client_body_timeout`, and after `client_body_timeout`
//! from the first read, an average of at least `client_body_min_rate` bytes
//! per second. With the defaults (30 s, 1 KiB/s) a 16 MiB batch on a link of
//! 1 Mbit/s (about 130 s) passes with a wide margin; a trickle is cut at 30 s.

use crate::error::ApiError;
use actix_web::web;
use futures_util::StreamExt as _;
use std::time::Duration;
use tokio::time::Instant;

/// The pace a body must keep.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    /// Longest pause, and the time before the average rate counts.
    pub timeout: Duration,
    /// Slowest average rate after `timeout`, bytes per second (at least 1).
    pub min_rate: u64,
}

impl BodyPace {
    /// When the next chunk must have arrived, given when reading started,
    /// when the last chunk came and how many bytes came so far.
    fn next_deadline(&self, started: Instant, last: Instant, received: usize) -> Instant {
        let earned_ms = (received as u64).saturating_mul(1000) / self.min_rate.max(1);
        let average = started + self.timeout + Duration::from_millis(earned_ms);
        (last + self.timeout).min(average)
    }
}

/// Read a body up to `limit` bytes (413 beyond) at `pace` (408 when slower).
pub async fn read(
    mut payload: web::Payload,
    limit: usize,
    pace: BodyPace,
) -> Result<web::Bytes, ApiError> {
    let mut body = web::BytesMut::new();
    let started = Instant::now();
    let mut last = started;
    loop {
        let deadline = pace.next_deadline(started, last, body.len());
        let next = tokio::time::timeout_at(deadline, payload.next())
            .await
            .map_err(|_| ApiError::BodyTimeout)?;
        let Some(chunk) = next else {
            return Ok(body.freeze());
        };
        // The transport's error text stays out of the answer.
        let chunk = chunk.map_err(|_| ApiError::BadRequest("cannot read the body".into()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
        last = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_is_the_earlier_of_the_pause_and_the_average_rate() {
        let pace = BodyPace {
            timeout: Duration::from_secs(30),
            min_rate: 1024,
        };
        let t0 = Instant::now();
        // Nothing yet: 30 s for the first chunk.
        assert_eq!(pace.next_deadline(t0, t0, 0), t0 + Duration::from_secs(30));
        // 1 KiB over 25 s: the average rule (30 s + 1 s) comes first.
        let last = t0 + Duration::from_secs(25);
        assert_eq!(
            pace.next_deadline(t0, last, 1024),
            t0 + Duration::from_secs(31)
        );
        // 1 MiB in 1 s: the pause rule (1 s + 30 s) comes first.
        let last = t0 + Duration::from_secs(1);
        assert_eq!(
            pace.next_deadline(t0, last, 1 << 20),
            last + Duration::from_secs(30)
        );
        // 16 MiB earns 16384 s of average, but a pause still ends at 30 s.
        let last = t0 + Duration::from_secs(200);
        assert_eq!(
            pace.next_deadline(t0, last, 16 << 20),
            last + Duration::from_secs(30)
        );
    }
}

//! Prometheus text metrics, hand-written: request counts per route pattern
//! and status, a request-duration histogram, imported identifiers, jobs by
//! status. Labels are route patterns, never concrete paths or identifiers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Histogram bucket bounds in seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Request metrics shared by all workers.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Record one request.
    pub fn observe(&self, route: &str, status: u16, seconds: f64) {
        let mut m = crate::services::lock(&self.inner);
        *m.requests.entry((route.to_string(), status)).or_default() += 1;
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                m.buckets[i] += 1;
            }
        }
        m.count += 1;
        m.sum += seconds;
    }

    /// The exposition text.
    pub fn render(
        &self,
        identifiers_imported: u64,
        job_counts: &BTreeMap<&'static str, u64>,
    ) -> String {
        let m = crate::services::lock(&self.inner);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP onboard_http_requests_total HTTP requests by route pattern and status."
        );
        let _ = writeln!(out, "# TYPE onboard_http_requests_total counter");
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "onboard_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP onboard_http_request_duration_seconds HTTP request duration."
        );
        let _ = writeln!(
            out,
            "# TYPE onboard_http_request_duration_seconds histogram"
        );
        for (b, n) in BUCKETS.iter().zip(m.buckets) {
            let _ = writeln!(
                out,
                "onboard_http_request_duration_seconds_bucket{{le=\"{b}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "onboard_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            m.count
        );
        let _ = writeln!(out, "onboard_http_request_duration_seconds_sum {}", m.sum);
        let _ = writeln!(
            out,
            "onboard_http_request_duration_seconds_count {}",
            m.count
        );
        let _ = writeln!(
            out,
            "# HELP onboard_graph_identifiers_imported_total Identifiers imported since start."
        );
        let _ = writeln!(
            out,
            "# TYPE onboard_graph_identifiers_imported_total counter"
        );
        let _ = writeln!(
            out,
            "onboard_graph_identifiers_imported_total {identifiers_imported}"
        );
        let _ = writeln!(out, "# HELP onboard_jobs_total Jobs by status.");
        let _ = writeln!(out, "# TYPE onboard_jobs_total gauge");
        for (s, n) in job_counts {
            let _ = writeln!(out, "onboard_jobs_total{{status=\"{s}\"}} {n}");
        }
        out
    }
}

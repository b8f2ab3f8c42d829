//! Review hole 4 end to end: finishes racing over real TLS cannot spend
//! more than the advertiser's budget, because check-and-spend is one atomic
//! step (before the fix, both finishes passed the check and both spent).

mod common;

use common::*;
use onboard_protocol::{Digest, MatchKind, SecretKey};
use std::sync::Barrier;

#[test]
fn concurrent_finishes_never_overspend() {
    const JOBS: usize = 4;
    let s = TestServer::start_with(|c| {
        c.epsilon = onboard_server::config::Epsilon::new(1, 1).unwrap();
        // One job of one segment releases 3 values: 3 ε. The budget pays for one.
        c.privacy_budget_micro = 3_000_000;
        c.max_open_jobs = JOBS;
    });
    let adv = s.principal("acme", "advertiser");
    s.principal("dsp-a", "destination");
    s.import(&synthetic_graph(300));
    let a = SecretKey::generate(&mut rand::thread_rng());
    let rows: Vec<Record> = (0..150)
        .map(|i| rec("S", vec![(MatchKind::Email, Digest::of(&email(i)))]))
        .collect();
    let jobs: Vec<(String, u32)> = (0..JOBS)
        .map(|_| {
            let (job, _) = s.create_job_and_pass(&adv, &a, "dsp-a", &["email"]);
            let n = s.upload(&adv, &job, &a, &rows);
            (job, n)
        })
        .collect();
    // Every finish is sent at once.
    let start = Barrier::new(JOBS);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(job, n)| {
                let (s, adv, start) = (&s, &adv, &start);
                scope.spawn(move || {
                    start.wait();
                    s.finish(adv, job, *n).status().as_u16()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let granted = statuses.iter().filter(|&&st| st == 200).count();
    let refused = statuses.iter().filter(|&&st| st == 429).count();
    assert_eq!((granted, refused), (1, JOBS - 1), "{statuses:?}");
    // And the store agrees: exactly one finished job.
    let listed: serde_json::Value = s.get("/v1/jobs", &adv).json().unwrap();
    let finished = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["status"] == "finished")
        .count();
    assert_eq!(finished, 1, "{listed}");
}

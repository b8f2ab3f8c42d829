//! A timing smoke test, ignored by default:
//! `cargo test -p onboard-server --release --test scale_smoke -- --ignored --nocapture`.

mod common;

use common::*;
use onboard_protocol::{Digest, MatchKind, SecretKey};
use std::time::Instant;

#[test]
#[ignore]
fn timing_of_import_graph_pass_upload_and_finish() {
    let persons: usize = std::env::var("SMOKE_PERSONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rows: usize = std::env::var("SMOKE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let s = TestServer::start_with(|c| {
        c.page_size = 8192;
        c.max_frame_body = 48 << 20;
    });
    let adv = s.principal("acme", "advertiser");
    s.principal("dsp-a", "destination");
    let t = Instant::now();
    s.import(&synthetic_graph(persons));
    println!(
        "import of {} identifiers: {:.2} s",
        persons * 2,
        t.elapsed().as_secs_f64()
    );
    let a = SecretKey::generate(&mut rand::thread_rng());
    let t = Instant::now();
    let (job, _) = s.create_job_and_pass(&adv, &a, "dsp-a", &["email", "phone"]);
    println!(
        "job create + graph pass of {} points: {:.2} s",
        persons * 2,
        t.elapsed().as_secs_f64()
    );
    let records: Vec<Record> = (0..rows)
        .map(|i| {
            rec(
                if i % 2 == 0 { "A" } else { "B" },
                vec![(MatchKind::Email, Digest::of(&email(i)))],
            )
        })
        .collect();
    let t = Instant::now();
    let n = s.upload(&adv, &job, &a, &records);
    println!("upload of {rows} rows: {:.2} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let r = s.finish(&adv, &job, n);
    assert_eq!(r.status(), 200);
    println!("finish: {:.2} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let (_, created) = s.create_job_and_pass(&adv, &a, "dsp-a", &["email", "phone"]);
    println!(
        "repeat job create (cache hit): {:.2} s {}",
        t.elapsed().as_secs_f64(),
        created["graph_pass"]
    );
}

//! Hostile input against the real server over TLS: every bad request gets a
//! specific 4xx with a stable error code and leaves the stored state as it was.

mod common;

use common::http::{answer, batch, Http};
use common::{simple_graph, TestServer};
use onboard_protocol::wire::PointPage;
use onboard_protocol::{blind, Digest, MatchKind, PointBytes, SecretKey};
use serde_json::{json, Value};

/// The observable state: stats, the open job, the destination's audiences.
fn snapshot(http: &Http, admin: &str, advertiser: &str, job: &str) -> Value {
    let stats = http.get("/v1/admin/stats", admin).1;
    let job = http.get(&format!("/v1/jobs/{job}"), advertiser).1;
    json!({"stats": stats, "job": job})
}

#[test]
fn bad_requests_get_specific_errors_and_change_nothing() {
    let server = TestServer::start(&[
        ("K", "50"),
        ("MIN_JOB_ROWS", "10"),
        ("MAX_FRAME_BODY", "200000"),
    ]);
    let admin = server.admin_key.clone();
    let advertiser = server.create("advertiser", "acme");
    let destination = server.create("destination", "dsp-alpha");
    simple_graph(&server, 60, "dsp-alpha");
    let http = Http::new(&server);

    let key = SecretKey::generate(&mut rand::thread_rng());
    let (status, created) = http.json(
        "POST",
        "/v1/jobs",
        &advertiser,
        json!({"destination": "dsp-alpha", "kinds": ["email"], "key_fingerprint": key.fingerprint().to_string()}),
    );
    assert_eq!(status, 201, "{created}");
    let job = created["job_id"].as_str().unwrap().to_string();
    let items: Vec<_> = (0..20)
        .map(|i| {
            (
                MatchKind::Email,
                Digest::of(&format!("person{i}@example.com")),
            )
        })
        .collect();
    let points = blind::hash_and_blind(&key, &items);
    let good = batch(0, &points);
    let (status, body) = http.frame(
        &format!("/v1/jobs/{job}/batches/0"),
        &advertiser,
        good.clone(),
    );
    assert_eq!(status, 200, "{body}");

    let mut wrong_version = good.clone();
    wrong_version[4] = 2;
    let mut non_canonical = points.clone();
    non_canonical[3] = PointBytes([0xff; 32]);
    let mut identity = points.clone();
    identity[5] = PointBytes([0; 32]);
    let short_page = {
        let mut p = PointPage {
            kind: MatchKind::Email,
            page_no: 0,
            points: vec![points[0]],
        }
        .encode();
        p.pop();
        p
    };
    let other_content = batch(0, &points[..10]);
    let batches = format!("/v1/jobs/{job}/batches");

    type Case<'a> = (&'a str, Box<dyn Fn() -> (u16, Value) + 'a>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "garbage frame",
            Box::new(|| http.frame(&format!("{batches}/1"), &advertiser, b"hello".to_vec())),
            400,
            "bad-frame",
        ),
        (
            "wrong wire version",
            Box::new(|| {
                http.frame(&format!("{batches}/1"), &advertiser, {
                    let mut w = wrong_version.clone();
                    w[5..9].copy_from_slice(&1u32.to_be_bytes());
                    w
                })
            }),
            400,
            "bad-frame",
        ),
        (
            "truncated frame",
            Box::new(|| {
                http.frame(
                    &format!("{batches}/1"),
                    &advertiser,
                    batch(1, &points)[..100].to_vec(),
                )
            }),
            400,
            "bad-frame",
        ),
        (
            "point page of a wrong length",
            Box::new(|| {
                http.frame(
                    &format!("/v1/jobs/{job}/graph/email/0"),
                    &advertiser,
                    short_page.clone(),
                )
            }),
            400,
            "bad-frame",
        ),
        (
            "non-canonical point",
            Box::new(|| {
                http.frame(
                    &format!("{batches}/1"),
                    &advertiser,
                    batch(1, &non_canonical),
                )
            }),
            400,
            "bad-point",
        ),
        (
            "identity point",
            Box::new(|| http.frame(&format!("{batches}/1"), &advertiser, batch(1, &identity))),
            400,
            "bad-point",
        ),
        (
            "batch number differs from the path",
            Box::new(|| http.frame(&format!("{batches}/2"), &advertiser, batch(1, &points))),
            400,
            "bad-frame",
        ),
        (
            "replayed batch with other content",
            Box::new(|| http.frame(&format!("{batches}/0"), &advertiser, other_content.clone())),
            409,
            "conflict",
        ),
        (
            "oversized body",
            Box::new(|| http.frame(&format!("{batches}/1"), &advertiser, vec![0u8; 300_000])),
            413,
            "too-large",
        ),
        (
            "wrong content type",
            Box::new(|| {
                answer(
                    http.req("PUT", &format!("{batches}/1"), Some(&advertiser))
                        .header("content-type", "text/plain")
                        .body(batch(1, &points)),
                )
            }),
            415,
            "unsupported-media-type",
        ),
        (
            "unknown job",
            Box::new(|| {
                http.frame(
                    "/v1/jobs/j-does-not-exist/batches/0",
                    &advertiser,
                    good.clone(),
                )
            }),
            404,
            "not-found",
        ),
        (
            "no API key",
            Box::new(|| answer(http.req("GET", "/v1/jobs", None))),
            401,
            "unauthenticated",
        ),
        (
            "wrong API key",
            Box::new(|| {
                http.get(
                    "/v1/jobs",
                    "obk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                )
            }),
            401,
            "unauthenticated",
        ),
        (
            "wrong role",
            Box::new(|| http.frame(&format!("{batches}/1"), &destination, batch(1, &points))),
            403,
            "forbidden",
        ),
        (
            "malformed job JSON",
            Box::new(|| {
                answer(
                    http.req("POST", "/v1/jobs", Some(&advertiser))
                        .header("content-type", "application/json")
                        .body("{\"destination\": 5"),
                )
            }),
            400,
            "bad-request",
        ),
        (
            "unknown destination",
            Box::new(|| {
                http.json("POST", "/v1/jobs", &advertiser, json!({"destination": "nobody", "kinds": ["email"], "key_fingerprint": key.fingerprint().to_string()}))
            }),
            422,
            "invalid",
        ),
        (
            "unknown audience",
            Box::new(|| http.get("/v1/audiences/a-none/members", &destination)),
            404,
            "not-found",
        ),
    ];

    let before = snapshot(&http, &admin, &advertiser, &job);
    let mut failures = Vec::new();
    for (name, call, status, code) in &cases {
        let (got_status, body) = call();
        let got_code = body["error"]["code"].as_str().unwrap_or_default();
        let message = body["error"]["message"].as_str().unwrap_or_default();
        if got_status != *status || got_code != *code || message.is_empty() {
            failures.push(format!(
                "{name}: expected {status} {code}, got {got_status} {body}"
            ));
        }
        let after = snapshot(&http, &admin, &advertiser, &job);
        if after != before {
            failures.push(format!(
                "{name}: the stored state changed: {before} → {after}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Errors name where: the bad point's index.
    let (_, body) = http.frame(
        &format!("{batches}/1"),
        &advertiser,
        batch(1, &non_canonical),
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains('3'),
        "{body}"
    );

    // A finished job takes no more uploads.
    let (status, body) = answer(http.req("DELETE", &format!("/v1/jobs/{job}"), Some(&advertiser)));
    assert!(status < 300, "{body}");
    let (status, body) = http.frame(&format!("{batches}/1"), &advertiser, batch(1, &points));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("job-not-open")),
        "{body}"
    );
}

#[test]
fn invalid_config_values_stop_the_server_naming_the_key() {
    let mut server = TestServer::start(&[]);
    server.stop();
    for (key, value) in [
        ("ONBOARD_K", "10"),
        ("ONBOARD_EPSILON", "-1"),
        ("ONBOARD_MIN_JOB_ROWS", "many"),
    ] {
        let out = std::process::Command::new(common::SUITE)
            .args(["server", "serve", "--data-dir"])
            .arg(&server.data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .env(key, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{key}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        let name = key.trim_start_matches("ONBOARD_").to_lowercase();
        assert!(stderr.contains(&name), "{key}={value}: {stderr}");
    }
}

#[test]
fn bad_cursor_and_expired_audience() {
    let server = TestServer::start(&[("K", "50"), ("MIN_JOB_ROWS", "50"), ("AUDIENCE_TTL", "4s")]);
    let advertiser = server.create("advertiser", "acme");
    let destination = server.create("destination", "dsp-alpha");
    simple_graph(&server, 130, "dsp-alpha");
    let key = server.path("acme.key");
    server.ok(&advertiser, &["keygen", "--out", key.to_str().unwrap()]);
    // 120 persons: clear of k = 50 plus the release margin (28 at ε = 0.5).
    let crm = common::crm_file(&server, "crm.csv", "Gold", 0..120, 0);
    let out = common::match_emails(&server, &advertiser, &key, &crm, "dsp-alpha");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let http = Http::new(&server);
    let (status, listed) = http.get("/v1/audiences", &destination);
    assert_eq!(status, 200, "{listed}");
    let id = listed["audiences"][0]["id"]
        .as_str()
        .expect("one audience")
        .to_string();

    for cursor in ["%%%", "AAAA", "bm90LWEtY3Vyc29y"] {
        let (status, body) = http.get(
            &format!("/v1/audiences/{id}/members?cursor={cursor}"),
            &destination,
        );
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("bad-cursor")),
            "{cursor}: {body}"
        );
    }

    // Bounded wait past the 4 s time-to-live.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (status, body) = http.get(&format!("/v1/audiences/{id}/members"), &destination);
        if status == 410 {
            assert_eq!(body["error"]["code"], "expired", "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the audience never expired: {status} {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

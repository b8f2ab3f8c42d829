//! Full jobs over real TLS on a synthetic graph with known ground truth.

mod common;

use common::*;
use onboard_protocol::{Digest, MatchKind, SecretKey};
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn e(i: usize) -> (MatchKind, Digest) {
    (MatchKind::Email, Digest::of(&email(i)))
}
fn p(i: usize) -> (MatchKind, Digest) {
    (MatchKind::Phone, Digest::of(&phone(i)))
}
fn stranger(i: usize) -> (MatchKind, Digest) {
    (
        MatchKind::Email,
        Digest::of(&format!("nobody{i}@elsewhere.org")),
    )
}

/// Gold: persons 0..150 via email, again 0..20 via phone (duplicates), and
/// 20..40 with both identifiers (multi-identifier) plus 50 strangers → 150.
/// Silver: persons 200..360 (160: clear of k = 100 plus the release margin
/// of 28 at ε = 0.5, with room for the noise). Bronze: 400..499 (99).
fn crm() -> Vec<Record> {
    let mut r = Vec::new();
    for i in 0..150 {
        r.push(rec("Gold", vec![e(i)]));
    }
    for i in 0..20 {
        r.push(rec("Gold", vec![p(i)]));
    }
    for i in 20..40 {
        r.push(rec("Gold", vec![e(i), p(i)]));
    }
    for i in 0..50 {
        r.push(rec("Gold", vec![stranger(i)]));
    }
    for i in 200..360 {
        r.push(rec("Silver", vec![p(i)]));
    }
    for i in 400..499 {
        r.push(rec("Bronze", vec![e(i)]));
    }
    r
}

fn segment<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

fn audience_cookies(
    s: &TestServer,
    dest_key: &str,
    report: &Value,
    name: &str,
) -> BTreeSet<String> {
    let id = segment(report, name)["audience_id"]
        .as_str()
        .unwrap()
        .to_string();
    s.pull(dest_key, &id, 37, false).into_iter().collect()
}

/// A shown count that is a number (not "< k").
fn noisy_number(v: &Value) -> i64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(i64::MAX)
}

/// A shown match rate in whole percent ("> 85%" reads 100).
fn percent(v: &Value) -> u64 {
    match v.as_str() {
        Some("> 85%") => 100,
        Some(s) => s.trim_end_matches('%').parse().unwrap_or(100),
        None => 100,
    }
}

#[test]
fn full_job_releases_exactly_the_expected_audiences() {
    let mut s = TestServer::start();
    let adv = s.principal("acme", "advertiser");
    let other_adv = s.principal("globex", "advertiser");
    let dsp_a = s.principal("dsp-a", "destination");
    let dsp_b = s.principal("dsp-b", "destination");
    s.import(&synthetic_graph(1000));
    let a = SecretKey::generate(&mut rand::thread_rng());

    let (job, created) = s.create_job_and_pass(&adv, &a, "dsp-a", &["email", "phone"]);
    assert_eq!(created["graph_pass"]["email"]["points"], 1000);
    assert_eq!(created["graph_pass"]["email"]["pages"], 8);
    assert_eq!(created["page_size"], 128);

    // Another advertiser sees nothing of this job.
    assert_eq!(
        error_code(s.get(&format!("/v1/jobs/{job}"), &other_adv)),
        (404, "not-found".into())
    );
    assert_eq!(
        error_code(s.get(&format!("/v1/jobs/{job}/graph/email/0"), &other_adv)).0,
        404
    );
    assert!(
        s.get("/v1/jobs", &other_adv).json::<Value>().unwrap()["jobs"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let records = crm();
    let batches = s.upload(&adv, &job, &a, &records);
    // Idempotent re-send, conflicting re-send.
    let same = record_batch(0, &a, &records[..300]);
    let r: Value = s
        .put_bytes(&format!("/v1/jobs/{job}/batches/0"), &adv, same)
        .json()
        .unwrap();
    assert_eq!(r["duplicate"], true);
    let different = record_batch(0, &a, &records[1..301]);
    assert_eq!(
        error_code(s.put_bytes(&format!("/v1/jobs/{job}/batches/0"), &adv, different)),
        (409, "conflict".into())
    );
    // Finishing with a batch missing is refused.
    assert_eq!(
        error_code(s.finish(&adv, &job, batches + 1)),
        (409, "incomplete".into())
    );

    let r = s.finish(&adv, &job, batches);
    assert_eq!(r.status(), 200);
    let report: Value = r.json().unwrap();
    assert_eq!(report["rows_uploaded"], records.len());
    assert_eq!(report["k"], 100);
    let gold = segment(&report, "Gold");
    assert_eq!(gold["rows_uploaded"], 240);
    assert_eq!(gold["status"], "delivered");
    assert_ne!(gold["matched"], "< 100");
    let silver = segment(&report, "Silver");
    assert_eq!(silver["status"], "delivered");
    let bronze = segment(&report, "Bronze");
    assert_eq!(bronze["status"], "withheld");
    assert_eq!(bronze["reason"], "below-minimum-size");
    // 99 reachable persons: the shown count is noisy (ε = ½), so it reads
    // "< 100" or, when the noise is positive, a number near 100.
    assert!(
        bronze["matched"] == "< 100" || noisy_number(&bronze["matched"]) < 140,
        "{bronze}"
    );
    assert!(bronze["audience_id"].is_null());
    // 449 of 499 distinct identifiers matched: 89% → capped.
    assert_eq!(report["match_rate"], "> 85%");

    // Released audiences are exactly the expected cookie sets.
    assert_eq!(
        audience_cookies(&s, &dsp_a, &report, "Gold"),
        dsp_a_cookies(0..150)
    );
    let silver_id = segment(&report, "Silver")["audience_id"]
        .as_str()
        .unwrap()
        .to_string();
    let silver_csv: BTreeSet<String> = s.pull(&dsp_a, &silver_id, 1000, true).into_iter().collect();
    assert_eq!(silver_csv, dsp_a_cookies(200..360));
    let listed: Value = s.get("/v1/audiences", &dsp_a).json().unwrap();
    let listed = listed["audiences"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed
        .iter()
        .all(|a| a["pulled"] == true && a["advertiser"] == "acme"));
    let gold_entry = listed.iter().find(|a| a["segment"] == "Gold").unwrap();
    // The size a destination sees counts its cookies (150 persons, 15 of
    // them with a second cookie), never the persons behind them.
    assert_eq!(gold_entry["size"], dsp_a_cookies(0..150).len());
    assert_eq!(gold_entry["size"], 165);

    // The other destination sees and pulls nothing; advertisers cannot list audiences.
    assert!(
        s.get("/v1/audiences", &dsp_b).json::<Value>().unwrap()["audiences"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        error_code(s.get(&format!("/v1/audiences/{silver_id}/members"), &dsp_b)).0,
        404
    );
    assert_eq!(
        error_code(s.get("/v1/audiences", &adv)),
        (403, "forbidden".into())
    );
    assert_eq!(
        error_code(s.get(
            &format!("/v1/audiences/{silver_id}/members?cursor=AAAAAAAAAAAAAAAAAAAAAAAA"),
            &dsp_a
        )),
        (400, "bad-cursor".into())
    );

    // A repeat job with the same key: empty graph pass, the same persons —
    // so each segment's refresh changes nothing and is held back.
    let (job2, created2) = s.create_job_and_pass(&adv, &a, "dsp-a", &["email", "phone"]);
    for kind in ["email", "phone"] {
        assert_eq!(
            created2["graph_pass"][kind],
            json!({"pages": 0, "points": 0})
        );
    }
    let n = s.upload(&adv, &job2, &a, &records);
    let report2: Value = s.finish(&adv, &job2, n).json().unwrap();
    assert_eq!(report2["identifiers"], report["identifiers"]);
    for name in ["Gold", "Silver"] {
        let seg = segment(&report2, name);
        assert_eq!(seg["status"], "withheld", "{report2}");
        assert_eq!(seg["reason"], "refresh-change-below-k", "{report2}");
        assert_ne!(seg["matched"], "< 100", "the cache found the same persons");
    }

    // A job whose graph pass used another key than its uploads matches nothing.
    let a1 = SecretKey::generate(&mut rand::thread_rng());
    let a2 = SecretKey::generate(&mut rand::thread_rng());
    let (job3, created3) = s.create_job_and_pass(&adv, &a1, "dsp-a", &["email", "phone"]);
    assert_eq!(created3["graph_pass"]["email"]["points"], 1000);
    let n = s.upload(&adv, &job3, &a2, &records);
    let report3: Value = s.finish(&adv, &job3, n).json().unwrap();
    // Nothing matched: the noisy matched count over 499 identifiers stays
    // within a few percent of zero.
    assert!(percent(&report3["match_rate"]) <= 5, "{report3}");
    for seg in report3["segments"].as_array().unwrap() {
        assert_eq!(seg["status"], "withheld");
        assert_eq!(seg["matched"], "< 100");
    }

    // Finished jobs are not open any more.
    assert_eq!(
        error_code(s.finish(&adv, &job, batches)),
        (409, "job-not-open".into())
    );
    let status: Value = s.get(&format!("/v1/jobs/{job}"), &adv).json().unwrap();
    assert_eq!(status["status"], "finished");
    assert_eq!(status["report"]["rows_uploaded"], records.len());

    // After finish no blinded upload or join state remains in the store.
    s.stop();
    let repo = onboard_server::storage::open_sled(&s.data_dir()).unwrap();
    for j in [&job, &job2, &job3] {
        assert_eq!(repo.job_data_count(j).unwrap(), 0);
        assert!(repo.upload_numbers(j).unwrap().is_empty());
    }
}

#[test]
fn segments_of_one_job_are_checked_against_each_other() {
    let s = TestServer::start();
    let adv = s.principal("acme", "advertiser");
    s.principal("dsp-a", "destination");
    s.import(&synthetic_graph(600));
    let a = SecretKey::generate(&mut rand::thread_rng());
    // A: persons 0..200; B: 0..201 (one person more than A); C: 300..500.
    let mut records: Vec<Record> = (0..200).map(|i| rec("A", vec![e(i)])).collect();
    records.extend((0..201).map(|i| rec("B", vec![e(i)])));
    records.extend((300..500).map(|i| rec("C", vec![e(i)])));
    let report = s.run_job(&adv, &a, "dsp-a", &records);
    assert_eq!(segment(&report, "A")["status"], "delivered", "{report}");
    // B alone would pass, but with A released it would single out person 200.
    assert_eq!(segment(&report, "B")["status"], "withheld", "{report}");
    assert_eq!(
        segment(&report, "B")["reason"],
        "too-close-to-earlier-audience"
    );
    assert_eq!(segment(&report, "C")["status"], "delivered", "{report}");
}

#[test]
fn difference_check_and_opt_out_and_erase() {
    let s = TestServer::start();
    let adv = s.principal("acme", "advertiser");
    let dsp_a = s.principal("dsp-a", "destination");
    s.import(&synthetic_graph(600));
    let a = SecretKey::generate(&mut rand::thread_rng());

    let first: Vec<Record> = (0..200).map(|i| rec("Seg", vec![e(i)])).collect();
    let report = s.run_job(&adv, &a, "dsp-a", &first);
    assert_eq!(segment(&report, "Seg")["status"], "delivered");
    let first_id = segment(&report, "Seg")["audience_id"]
        .as_str()
        .unwrap()
        .to_string();

    // 1..201: symmetric difference 2 < k → withheld, as a refresh of `Seg`
    // (one person added, one removed) and as another segment.
    let second: Vec<Record> = (1..201).map(|i| rec("Seg", vec![e(i)])).collect();
    let report = s.run_job(&adv, &a, "dsp-a", &second);
    let seg = segment(&report, "Seg");
    assert_eq!(seg["status"], "withheld");
    assert_eq!(seg["reason"], "refresh-change-below-k");
    let second: Vec<Record> = (1..201).map(|i| rec("Seg2", vec![e(i)])).collect();
    let report = s.run_job(&adv, &a, "dsp-a", &second);
    let seg = segment(&report, "Seg2");
    assert_eq!(seg["status"], "withheld");
    assert_eq!(seg["reason"], "too-close-to-earlier-audience");

    // Opt out person 5 (by email digest): removed from the unpulled audience.
    let frame = onboard_protocol::wire::DigestBatch {
        batch_no: 0,
        entries: vec![onboard_protocol::wire::DigestEntry {
            person: String::new(),
            kind: MatchKind::Email,
            digest: Digest::of(&email(5)),
        }],
    }
    .encode()
    .unwrap();
    let r: Value = s
        .post_bytes("/v1/admin/optouts", &s.admin, frame)
        .json()
        .unwrap();
    assert_eq!(r, json!({"accepted": 1, "persons_suppressed": 1}));
    // Erase person 7.
    let r: Value = s
        .post("/v1/admin/erase", &s.admin, json!({"person": "p7"}))
        .json()
        .unwrap();
    assert_eq!(r["audiences_updated"], 1);
    let members: BTreeSet<String> = s.pull(&dsp_a, &first_id, 1000, false).into_iter().collect();
    let mut expected = dsp_a_cookies(0..200);
    for gone in [5, 7] {
        for c in dsp_a_cookies([gone]) {
            expected.remove(&c);
        }
    }
    assert_eq!(members, expected);

    // Later matches skip them too.
    let third: Vec<Record> = [5, 7]
        .into_iter()
        .chain(300..450)
        .map(|i| rec("Other", vec![p(i)]))
        .collect();
    let report = s.run_job(&adv, &a, "dsp-a", &third);
    let id = segment(&report, "Other")["audience_id"]
        .as_str()
        .unwrap()
        .to_string();
    let members: BTreeSet<String> = s.pull(&dsp_a, &id, 1000, false).into_iter().collect();
    assert_eq!(members, dsp_a_cookies(300..450));

    let stats: Value = s.get("/v1/admin/stats", &s.admin).json().unwrap();
    assert_eq!(stats["optouts"], 1);
    assert_eq!(stats["jobs"]["finished"], 4);
}

#[test]
fn too_few_rows_bad_points_and_budget() {
    let mut s = TestServer::start_with(|c| {
        c.epsilon = onboard_server::config::Epsilon::new(1, 1).unwrap();
        // One job of one segment releases 3 values (its count, its
        // difference, the match rate): 3 ε.
        c.privacy_budget_micro = 3_000_000;
    });
    let adv = s.principal("acme", "advertiser");
    s.principal("dsp-a", "destination");
    s.import(&synthetic_graph(300));
    let a = SecretKey::generate(&mut rand::thread_rng());

    // Too few rows: 422, job failed, uploads deleted.
    let (job, _) = s.create_job_and_pass(&adv, &a, "dsp-a", &["email"]);
    let few: Vec<Record> = (0..50).map(|i| rec("S", vec![e(i)])).collect();
    let n = s.upload(&adv, &job, &a, &few);
    assert_eq!(
        error_code(s.finish(&adv, &job, n)),
        (422, "too-few-rows".into())
    );
    let status: Value = s.get(&format!("/v1/jobs/{job}"), &adv).json().unwrap();
    assert_eq!(status["status"], "failed");

    // A bad point names the batch and point.
    let (job2, _) = s.create_job_and_pass(&adv, &a, "dsp-a", &["email"]);
    let mut batch = onboard_protocol::wire::RecordBatch::new(0, vec!["S".into()]).unwrap();
    batch
        .push(
            &[0],
            [(MatchKind::Email, onboard_protocol::PointBytes([0; 32]))],
        )
        .unwrap();
    let r = s.put_bytes(&format!("/v1/jobs/{job2}/batches/0"), &adv, batch.encode());
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "bad-point");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("batch 0: point 0"));
    let r = s.put_bytes(&format!("/v1/jobs/{job2}/batches/0"), &adv, vec![1, 2, 3]);
    assert_eq!(error_code(r), (400, "bad-frame".into()));
    // Abort.
    assert_eq!(
        s.client
            .delete(format!("{}/v1/jobs/{job2}", s.base))
            .bearer_auth(&adv)
            .send()
            .unwrap()
            .status(),
        200
    );

    // Budget 3 with ε 1 and 3 values a job: one report, then 429 (the
    // repeat would refresh `S`: two values more).
    let rows: Vec<Record> = (0..150).map(|i| rec("S", vec![e(i)])).collect();
    s.run_job(&adv, &a, "dsp-a", &rows);
    let (job3, _) = s.create_job_and_pass(&adv, &a, "dsp-a", &["email"]);
    let n = s.upload(&adv, &job3, &a, &rows);
    let refused = s.finish(&adv, &job3, n);
    assert_eq!(refused.status(), 429);
    let v: Value = refused.json().unwrap();
    assert_eq!(v["error"]["code"], "privacy-budget-exhausted");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("3 of 3 ε spent, this job needs 5 ε"),
        "{message}"
    );

    s.stop();
    let repo = onboard_server::storage::open_sled(&s.data_dir()).unwrap();
    for j in [&job, &job2, &job3] {
        assert_eq!(repo.job_data_count(j).unwrap(), 0, "{j}");
    }
}

#[test]
fn expiry_abandonment_and_job_limits() {
    let mut s = TestServer::start_with(|c| {
        c.max_open_jobs = 1;
        c.audience_ttl = std::time::Duration::from_secs(2);
        c.abandoned_job_ttl = std::time::Duration::from_secs(1);
        c.cleanup_interval = std::time::Duration::from_millis(500);
    });
    let adv = s.principal("acme", "advertiser");
    let dsp_a = s.principal("dsp-a", "destination");
    s.import(&synthetic_graph(300));
    let a = SecretKey::generate(&mut rand::thread_rng());

    // Unknown destination → 422 invalid; bad fingerprint → 400.
    let r = s.post("/v1/jobs", &adv, json!({"destination": "nope", "kinds": ["email"], "key_fingerprint": a.fingerprint().to_string()}));
    assert_eq!(error_code(r), (422, "invalid".into()));
    let r = s.post(
        "/v1/jobs",
        &adv,
        json!({"destination": "dsp-a", "kinds": ["email"], "key_fingerprint": "xyz"}),
    );
    assert_eq!(error_code(r), (400, "bad-request".into()));

    let rows: Vec<Record> = (0..150).map(|i| rec("S", vec![e(i)])).collect();
    let report = s.run_job(&adv, &a, "dsp-a", &rows);
    let aud = segment(&report, "S")["audience_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        s.get("/v1/audiences", &dsp_a).json::<Value>().unwrap()["audiences"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // One open job at most.
    let (job, _) = s.create_job_and_pass(&adv, &a, "dsp-a", &["email"]);
    s.upload(&adv, &job, &a, &rows[..10]);
    let r = s.post("/v1/jobs", &adv, json!({"destination": "dsp-a", "kinds": ["email"], "key_fingerprint": a.fingerprint().to_string()}));
    assert_eq!(error_code(r), (429, "too-many-jobs".into()));

    // An import left open is abandoned too.
    let r: Value = s
        .post("/v1/admin/graph/imports", &s.admin, json!({}))
        .json()
        .unwrap();
    let import = r["import_id"].as_str().unwrap().to_string();

    // The abandoned job is failed and its uploads deleted, the import is
    // abandoned, the audience's members are dropped: wait (bounded) for the
    // clean-up to have done all three, as the API and the audit log show.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status: Value = s.get(&format!("/v1/jobs/{job}"), &adv).json().unwrap();
        let audit: Value = s
            .get("/v1/admin/audit?after=0&limit=1000", &s.admin)
            .json()
            .unwrap();
        let audited = |action: &str, object: &str| {
            audit["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == action && e["object"] == object)
        };
        let abandoned = audited("graph.import.abandon", &import);
        let expired = audited("audience.expire", &aud);
        if status["status"] == "failed" && expired && abandoned {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "clean-up not done within 30 s: job {status}, audience expired {expired}, import abandoned {abandoned}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        s.get("/v1/audiences", &dsp_a).json::<Value>().unwrap()["audiences"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        error_code(s.get(&format!("/v1/audiences/{aud}/members"), &dsp_a)),
        (410, "expired".into())
    );
    s.stop();
    let repo = onboard_server::storage::open_sled(&s.data_dir()).unwrap();
    assert_eq!(repo.job_data_count(&job).unwrap(), 0);
    assert_eq!(repo.audience(&aud).unwrap().unwrap().size, 0);
    assert_eq!(repo.import(&import).unwrap().unwrap().status, "retired");
    assert_eq!(repo.current_graph().unwrap().unwrap().version, 1);
    assert!(repo.members_after(&aud, None, 10).unwrap().is_empty());
}

#[test]
fn opt_outs_apply_to_later_graph_versions() {
    let s = TestServer::start();
    let adv = s.principal("acme", "advertiser");
    let dsp_a = s.principal("dsp-a", "destination");
    s.import(&synthetic_graph(300));
    let frame = onboard_protocol::wire::DigestBatch {
        batch_no: 0,
        entries: vec![onboard_protocol::wire::DigestEntry {
            person: String::new(),
            kind: MatchKind::Phone,
            digest: Digest::of(&phone(11)),
        }],
    }
    .encode()
    .unwrap();
    assert_eq!(
        s.post_bytes("/v1/admin/optouts", &s.admin, frame).status(),
        200
    );
    // Re-import: person 11 comes back with the opted-out phone and is suppressed,
    // even when matched through its email.
    s.import(&synthetic_graph(300));
    let a = SecretKey::generate(&mut rand::thread_rng());
    let rows: Vec<Record> = (0..150).map(|i| rec("S", vec![e(i)])).collect();
    let report = s.run_job(&adv, &a, "dsp-a", &rows);
    let id = segment(&report, "S")["audience_id"]
        .as_str()
        .unwrap()
        .to_string();
    let members: BTreeSet<String> = s.pull(&dsp_a, &id, 1000, false).into_iter().collect();
    let mut expected = dsp_a_cookies(0..150);
    for c in dsp_a_cookies([11]) {
        expected.remove(&c);
    }
    assert_eq!(members, expected);
}

//! [`PgStore`] against a real PostgreSQL (see [`TestDb`]).

use super::test_db::{admin, TestDb};
use super::*;
use crate::services::audit::{self, AuditKey};

fn point(i: u32) -> PointBytes {
    let mut p = [0u8; 32];
    p[..4].copy_from_slice(&i.to_be_bytes());
    p[31] = 1;
    PointBytes(p)
}

fn person(i: u32) -> PersonKey {
    let mut p = [0u8; 16];
    p[..4].copy_from_slice(&i.to_be_bytes());
    p
}

fn cookie(i: u32) -> SealedCookie {
    SealedCookie {
        tag: [i as u8; 16],
        sealed: format!("sealed-{i}").into_bytes(),
    }
}

#[test]
fn principals_keys_optouts_and_tombstones_round_trip() {
    let Some(db) = TestDb::new() else { return };
    let s = db.store();
    let p = Principal {
        name: "acme".into(),
        role: Role::Advertiser,
        created: "2026-01-01T00:00:00Z".into(),
        webhook_url: None,
    };
    assert_eq!(s.create_principal(&p).unwrap(), Ok(()));
    assert_eq!(s.create_principal(&p).unwrap(), Err(AlreadyExists));
    assert_eq!(s.principal("acme").unwrap().unwrap().role, Role::Advertiser);
    assert!(s.principal("nobody").unwrap().is_none());
    assert!(s.has_deployment().unwrap());
    let key = ApiKeyRecord {
        key_id: "k1".into(),
        principal: "acme".into(),
        hash: [7; 32],
        created: String::new(),
        revoked: false,
        pepper: String::new(),
    };
    s.insert_key(&key).unwrap();
    assert_eq!(s.key_by_hash(&[7; 32]).unwrap().unwrap().key_id, "k1");
    assert!(s.key_by_hash(&[8; 32]).unwrap().is_none());
    s.insert_key(&ApiKeyRecord {
        revoked: true,
        ..key
    })
    .unwrap();
    assert!(s.key("k1").unwrap().unwrap().revoked);
    assert_eq!(s.keys().unwrap().len(), 1);
    // A re-hashed key (pepper rotation) is found by its new hash only.
    s.insert_key(&ApiKeyRecord {
        hash: [9; 32],
        ..s.key("k1").unwrap().unwrap()
    })
    .unwrap();
    assert!(s.key_by_hash(&[7; 32]).unwrap().is_none());
    assert_eq!(s.key_by_hash(&[9; 32]).unwrap().unwrap().key_id, "k1");

    assert_eq!(s.add_optouts(&[point(1), point(2)]).unwrap(), 2);
    assert_eq!(s.add_optouts(&[point(2), point(3)]).unwrap(), 1);
    assert!(s.is_opted_out(&point(3)).unwrap());
    assert!(!s.is_opted_out(&point(4)).unwrap());
    assert_eq!(s.optouts().unwrap(), vec![point(1), point(2), point(3)]);

    assert_eq!(
        s.add_erasure(&person(1), &[point(9)]).unwrap(),
        vec![point(9)]
    );
    assert_eq!(
        s.add_erasure(&person(1), &[point(8)]).unwrap(),
        vec![point(8), point(9)]
    );
    assert!(s.is_erased_person(&person(1)).unwrap());
    assert!(s.is_erased_point(&point(8)).unwrap());
    assert_eq!(s.erasure_count().unwrap(), 1);
    assert_eq!(
        s.erased_points_among(&[point(8), point(5), point(9)])
            .unwrap(),
        [true, false, true]
    );
    assert_eq!(
        s.erased_persons_among(&[person(2), person(1)]).unwrap(),
        [false, true]
    );
    // An erased point is never cached again.
    s.cache_put(&[1; 16], &[(point(8), point(80)), (point(7), point(70))])
        .unwrap();
    assert!(!s.cache_contains(&[1; 16], &point(8)).unwrap());
    assert!(s.cache_contains(&[1; 16], &point(7)).unwrap());
    assert!(s.lift_erasure(&person(1)).unwrap());
    assert!(!s.lift_erasure(&person(1)).unwrap());
    assert!(!s.is_erased_point(&point(8)).unwrap());
}

#[test]
fn graph_versions_import_seal_look_up_and_erase() {
    let Some(db) = TestDb::new() else { return };
    let s = db.store();
    let v = s.allocate_version().unwrap();
    assert!(s.allocate_version().unwrap() > v);
    s.set_import_batch_hash("imp", b'i', 0, [3; 32]).unwrap();
    assert_eq!(s.import_batch_hash("imp", b'i', 0).unwrap(), Some([3; 32]));
    assert_eq!(s.import_batch_hash("imp", b'c', 0).unwrap(), None);
    let rows: Vec<IdentifierRow> = (0..1000)
        .map(|i| (MatchKind::Email, point(i), person(i / 2)))
        .chain([(MatchKind::Phone, point(5), person(900))])
        .collect();
    s.put_identifier_run(v, 0, rows).unwrap();
    // A repeated point keeps its first owner.
    s.put_identifier_run(v, 1, vec![(MatchKind::Email, point(4), person(777))])
        .unwrap();
    s.put_cookie_run(
        v,
        0,
        vec![
            ("dsp".into(), person(1), cookie(1)),
            ("dsp".into(), person(1), cookie(2)),
            ("dsp".into(), person(3), cookie(3)),
        ],
    )
    .unwrap();
    let info = s.seal_version(v).unwrap();
    assert_eq!(info.identifiers["email"], 1000);
    assert_eq!(info.identifiers["phone"], 1);
    assert_eq!(info.cookies["dsp"], 3);
    assert_eq!(info.persons, 501);
    assert_eq!(s.seal_version(v).unwrap(), info);
    assert_eq!(s.commit_graph(&info).unwrap(), None);
    assert_eq!(s.commit_graph(&info).unwrap(), Some(v));
    assert_eq!(s.current_graph().unwrap(), Some(info));

    assert_eq!(
        s.point_owner(v, MatchKind::Email, &point(4)).unwrap(),
        Some(person(2))
    );
    assert_eq!(s.point_owner(v, MatchKind::Phone, &point(4)).unwrap(), None);
    let first = s.points_after(v, MatchKind::Email, None, 10).unwrap();
    assert_eq!(first.len(), 10);
    assert_eq!(first[0], (point(0), person(0)));
    let next = s
        .points_after(v, MatchKind::Email, Some(&first[9].0), 5000)
        .unwrap();
    assert_eq!(next.len(), 990);
    assert_eq!(next[0].0, point(10));
    let owners = s
        .owners_of_sorted(v, MatchKind::Email, &[point(1), point(2000), point(3)])
        .unwrap();
    assert_eq!(owners, vec![Some(person(0)), None, Some(person(1))]);
    let cookies = s
        .cookies_of_sorted(v, "dsp", &[person(1), person(2), person(3)])
        .unwrap();
    assert_eq!(
        cookies,
        vec![
            (person(1), vec![cookie(1), cookie(2)]),
            (person(3), vec![cookie(3)])
        ]
    );
    assert!(s.has_destination(v, "dsp").unwrap());
    assert!(!s.has_destination(v, "other").unwrap());
    assert!(s.suppress(v, &person(4)).unwrap());
    assert!(!s.suppress(v, &person(4)).unwrap());
    assert_eq!(s.suppressed_persons(v).unwrap(), vec![person(4)]);

    assert_eq!(
        s.person_points(v, &person(1)).unwrap(),
        vec![point(2), point(3)]
    );
    let erased = s.erase_person(v, &person(1)).unwrap();
    assert!(erased.person);
    assert_eq!(erased.identifiers["email"], 2);
    assert_eq!(erased.cookies["dsp"], 2);
    assert!(s.person_points(v, &person(1)).unwrap().is_empty());
    assert!(s
        .cookies_of_sorted(v, "dsp", &[person(1)])
        .unwrap()
        .is_empty());
    s.delete_version(v).unwrap();
    assert!(s
        .points_after(v, MatchKind::Email, None, 10)
        .unwrap()
        .is_empty());
}

#[test]
fn cache_runs_are_the_pages_cached_in_order_of_their_first_point() {
    let Some(db) = TestDb::new() else { return };
    let s = db.store();
    let ns = [5u8; 16];
    let pairs = |range: std::ops::Range<u32>| -> Vec<(PointBytes, PointBytes)> {
        range.map(|i| (point(i * 2), point(i * 2 + 1))).collect()
    };
    // Out of order, overlapping, one page twice, one page unsorted.
    s.cache_put(&ns, &pairs(69_000..140_000)).unwrap();
    let mut unsorted = pairs(0..70_000);
    unsorted.reverse();
    s.cache_put(&ns, &unsorted).unwrap();
    s.cache_put(&ns, &pairs(69_000..140_000)).unwrap();
    s.cache_put(&[6; 16], &pairs(0..10)).unwrap();
    let keys = s.cache_run_keys(&ns).unwrap();
    assert_eq!(keys.len(), 2, "one run per page, a page cached twice once");
    let runs: Vec<_> = keys.iter().map(|k| s.cache_run(&ns, k).unwrap()).collect();
    assert_eq!(runs, vec![pairs(0..70_000), pairs(69_000..140_000)]);
    let mut paged = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let runs = s.cache_runs_after(&ns, after.as_deref(), 1).unwrap();
        let Some((k, _)) = runs.last() else { break };
        after = Some(k.clone());
        paged.extend(runs.into_iter().map(|r| r.1));
    }
    assert_eq!(paged, runs);
    assert!(s.cache_contains(&ns, &point(139_000)).unwrap());
    assert!(!s.cache_contains(&ns, &point(139_001)).unwrap());
    assert_eq!(
        s.cache_remove_points(&[point(0), point(4), point(138_000)])
            .unwrap(),
        6,
        "in both namespaces, in both overlapping runs"
    );
    assert!(!s.cache_contains(&ns, &point(138_000)).unwrap());
    assert!(s.cache_contains(&ns, &point(138_002)).unwrap());
    assert!(!s.cache_contains(&ns, &point(0)).unwrap());
    assert!(!s.cache_contains(&[6; 16], &point(4)).unwrap());
    assert!(!s.cache_complete(&ns, 1, MatchKind::Email).unwrap());
    s.set_cache_complete(&ns, 1, MatchKind::Email).unwrap();
    assert!(s.cache_complete(&ns, 1, MatchKind::Email).unwrap());
    assert!(!s.cache_complete(&ns, 1, MatchKind::Phone).unwrap());
}

fn job(id: &str, advertiser: &str, status: &str, touched: u64) -> Job {
    Job {
        id: id.into(),
        advertiser: advertiser.into(),
        destination: "dsp".into(),
        kinds: vec!["email".into()],
        key_fingerprint: "f".into(),
        graph_version: 1,
        status: status.into(),
        created: String::new(),
        touched,
        batches: 0,
        records: 0,
        pass: BTreeMap::new(),
        report: Some(serde_json::json!({"rate": 0.5, "big": u64::MAX})),
        new_audience: false,
    }
}

#[test]
fn jobs_pages_and_uploads() {
    let Some(db) = TestDb::new() else { return };
    let s = db.store();
    s.put_job(&job("j1", "acme", "open", 100)).unwrap();
    s.put_job(&job("j2", "acme", "open", 50)).unwrap();
    s.put_job(&job("j3", "beta", "finished", 10)).unwrap();
    assert_eq!(s.jobs_of("acme").unwrap().len(), 2);
    let old = s.jobs_touched_before("open", 100, 10).unwrap();
    assert_eq!(
        old.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["j2", "j1"]
    );
    assert_eq!(s.jobs_touched_before("open", 99, 10).unwrap().len(), 1);
    assert_eq!(s.jobs_touched_before("open", 100, 1).unwrap().len(), 1);
    // Recovery asks for every job: the largest bounds must not wrap.
    assert_eq!(
        s.jobs_touched_before("open", u64::MAX, usize::MAX)
            .unwrap()
            .len(),
        2
    );
    let counts = s.job_counts().unwrap();
    assert_eq!((counts["open"], counts["finished"]), (2, 1));
    assert_eq!(
        s.job("j1").unwrap().unwrap().report,
        job("j1", "acme", "open", 100).report
    );

    s.put_pass_pages("j1", MatchKind::Email, 0, &[vec![1; 64], vec![2; 32]])
        .unwrap();
    assert_eq!(
        s.pass_page("j1", MatchKind::Email, 1).unwrap(),
        Some(vec![2; 32])
    );
    assert_eq!(s.pass_page("j1", MatchKind::Phone, 1).unwrap(), None);
    assert!(!s.page_done("j1", MatchKind::Email, 0).unwrap());
    s.mark_page_done("j1", MatchKind::Email, 0).unwrap();
    s.mark_page_done("j1", MatchKind::Email, 0).unwrap();
    assert!(s.page_done("j1", MatchKind::Email, 0).unwrap());
    let mut counted = job("j1", "acme", "open", 200);
    counted.batches = 2;
    s.put_upload(&counted, 1, [9; 32], b"frame-1").unwrap();
    s.put_upload(&counted, 0, [8; 32], b"frame-0").unwrap();
    assert_eq!(s.job("j1").unwrap().unwrap().batches, 2);
    assert_eq!(s.upload_hash("j1", 1).unwrap(), Some([9; 32]));
    assert_eq!(s.upload("j1", 0).unwrap(), Some(b"frame-0".to_vec()));
    assert_eq!(s.upload_numbers("j1").unwrap(), vec![0, 1]);
    assert_eq!(s.job_data_count("j1").unwrap(), 5);
    s.delete_job_data("j1").unwrap();
    assert_eq!(s.job_data_count("j1").unwrap(), 0);
    s.delete_job("j1").unwrap();
    assert!(s.job("j1").unwrap().is_none());
}

#[test]
fn frames_and_pages_are_stored_without_a_compression_attempt() {
    let Some(db) = TestDb::new() else { return };
    let s = db.store();
    let j = job("j1", "acme", "open", 100);
    s.put_job(&j).unwrap();
    // Values pglz would shrink (a run of one byte), large enough to leave
    // the row: stored as given all the same, so a real frame of blinded
    // points never pays for a whole failed attempt.
    let bulk = vec![7u8; 64 * 1024];
    s.put_upload(&j, 0, [1; 32], &bulk).unwrap();
    s.put_pass_pages("j1", MatchKind::Email, 0, std::slice::from_ref(&bulk))
        .unwrap();
    let compressed = s
        .query(
            "SELECT (SELECT pg_column_compression(frame) FROM job_uploads WHERE job = $1),
                    (SELECT pg_column_compression(points) FROM job_pages WHERE job = $1)",
            &[&"j1"],
        )
        .unwrap();
    let row = &compressed[0];
    assert_eq!(row.get::<_, Option<String>>(0), None);
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert_eq!(s.upload("j1", 0).unwrap(), Some(bulk.clone()));
    assert_eq!(s.pass_page("j1", MatchKind::Email, 0).unwrap(), Some(bulk));
}

fn audience(id: &str, expires_unix: u64) -> Audience {
    Audience {
        id: id.into(),
        segment: "Gold".into(),
        advertiser: "acme".into(),
        destination: "dsp".into(),
        job_id: "j".into(),
        size: 0,
        created: String::new(),
        expires: String::new(),
        expires_unix,
        pulled: false,
        version: 1,
        refreshed: None,
        changes_from: None,
        prior: None,
    }
}

#[test]
fn refresh_replaces_members_and_changes() {
    let Some(db) = TestDb::new() else { return };
    let s = db.store();
    crate::storage::audience_checks::refresh_replaces_members_and_changes(&s, audience("a-r", 100));
}

#[test]
fn reseal_covers_the_kept_changes() {
    let Some(db) = TestDb::new() else { return };
    let s = db.store();
    crate::storage::audience_checks::reseal_covers_the_kept_changes(&s, audience("a-s", 100));
}

#[test]
fn audience_members_page_stably_through_removals() {
    let Some(db) = TestDb::new() else { return };
    let s = db.store();
    let members: Vec<(String, Vec<SealedCookie>)> = (0..3000u32)
        .map(|i| {
            (
                format!("person{i:05}"),
                vec![cookie(2 * i), cookie(2 * i + 1)],
            )
        })
        .collect();
    let borrowed: Vec<(String, &[SealedCookie])> = members
        .iter()
        .map(|(p, c)| (p.clone(), c.as_slice()))
        .collect();
    s.create_audience(&audience("a-1", 100), &borrowed).unwrap();
    s.create_audience(&audience("a-2", 300), &[]).unwrap();
    assert_eq!(s.audience_persons("a-1").unwrap().len(), 3000);
    let first = s.members_after("a-1", None, 1000).unwrap();
    assert_eq!(first.len(), 1000);
    assert_eq!(s.remove_member("a-1", "person00010").unwrap(), 2);
    assert_eq!(s.remove_member("a-1", "person02999").unwrap(), 2);
    assert_eq!(s.remove_member("a-1", "person02999").unwrap(), 0);
    let mut total = first.len();
    let mut after = first.last().map(|m| m.0.clone());
    loop {
        let page = s.members_after("a-1", after.as_deref(), 1000).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.0.clone());
        total += page.len();
    }
    assert_eq!(total, 6000 - 2, "each remaining cookie once");

    // A sealing-key rotation replaces every sealed value, positions kept;
    // one value that does not reseal leaves all of them as they were.
    let before = s.members_after("a-1", None, usize::MAX).unwrap();
    assert_eq!(s.reseal_members("a-1", &|_| None).unwrap(), None);
    assert_eq!(s.members_after("a-1", None, usize::MAX).unwrap(), before);
    let flipped = |v: &[u8]| Some(v.iter().map(|b| !b).collect::<Vec<u8>>());
    assert_eq!(
        s.reseal_members("a-1", &flipped).unwrap(),
        Some(before.len() as u64)
    );
    let after_reseal = s.members_after("a-1", None, usize::MAX).unwrap();
    assert_eq!(after_reseal.len(), before.len());
    for ((p0, v0), (p1, v1)) in before.iter().zip(&after_reseal) {
        assert_eq!(p0, p1);
        assert_eq!(flipped(v0).as_ref(), Some(v1));
    }
    assert_eq!(s.reseal_members("a-2", &flipped).unwrap(), Some(0));

    assert_eq!(s.audiences_for_destination("dsp").unwrap().len(), 2);
    assert_eq!(s.audiences_of("acme", "dsp").unwrap().len(), 2);
    assert!(s.audiences_of("acme", "other").unwrap().is_empty());
    assert_eq!(s.unpulled_audiences().unwrap().len(), 2);
    s.put_audience(&Audience {
        pulled: true,
        ..audience("a-2", 300)
    })
    .unwrap();
    assert_eq!(s.unpulled_audiences().unwrap().len(), 1);
    assert_eq!(s.audiences_expiring_by(100).unwrap().len(), 1);
    assert_eq!(s.audiences_expiring_by(u64::MAX).unwrap().len(), 2);
    assert_eq!(s.live_audience_count(100).unwrap(), 1);
    s.delete_members("a-1").unwrap();
    assert!(s.members_after("a-1", None, 10).unwrap().is_empty());
    s.delete_audience("a-1").unwrap();
    assert!(s.audience("a-1").unwrap().is_none());
}

#[test]
fn concurrent_spends_on_two_stores_never_exceed_the_budget() {
    let Some(db) = TestDb::new() else { return };
    let stores = [db.store(), db.store()];
    let granted = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for (n, s) in stores.iter().enumerate() {
            let granted = &granted;
            scope.spawn(move || {
                for j in 0..15 {
                    let job = format!("job-{n}-{j}");
                    if s.try_spend("acme", &job, 1000, 0, 1_000_000, 20_000_000)
                        .unwrap()
                        .is_ok()
                    {
                        granted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
        }
    });
    assert_eq!(granted.into_inner(), 20, "exactly the budget, never more");
    assert_eq!(stores[0].budget_spent("acme", 0).unwrap(), 20_000_000);
    // A job already charged gets its charge back, not a second one.
    let again = stores[1]
        .try_spend("acme", "job-0-0", 1000, 0, 1_000_000, 20_000_000)
        .unwrap()
        .unwrap();
    assert_eq!(again.charged_micro, 1_000_000);
    assert_eq!(stores[1].budget_spent("acme", 0).unwrap(), 20_000_000);
}

#[test]
fn concurrent_audit_appends_on_two_stores_form_one_chain() {
    let Some(db) = TestDb::new() else { return };
    let stores = [db.store(), db.store()];
    let key = AuditKey::generate();
    std::thread::scope(|scope| {
        for s in &stores {
            let key = &key;
            scope.spawn(move || {
                for i in 0..25 {
                    let _chain = s.lock("audit").unwrap();
                    audit::append(s, key, "admin", "test", &i.to_string(), "ok").unwrap();
                }
            });
        }
    });
    assert_eq!(audit::verify(&stores[0], &key, &[]).unwrap().unwrap(), 50);
}

#[test]
fn try_lock_is_exclusive_across_stores_and_released_on_drop() {
    let Some(db) = TestDb::new() else { return };
    let (a, b) = (db.store(), db.store());
    let held = a.try_lock("cleanup").unwrap();
    assert!(held.is_some());
    assert!(b.try_lock("cleanup").unwrap().is_none());
    assert!(b.try_lock("other").unwrap().is_some());
    drop(held);
    assert!(b.try_lock("cleanup").unwrap().is_some());
}

/// Look-ups longer than one `= ANY` slice come back whole and in order.
#[test]
fn look_ups_of_several_slices_find_every_owner_and_cookie() {
    let Some(db) = TestDb::new() else { return };
    let s = db.store();
    let v = s.allocate_version().unwrap();
    let n = 2 * ANY_SLICE as u32 + 7;
    // Even points and even persons are in the graph, odd ones are not.
    let rows = (0..n)
        .step_by(2)
        .map(|i| (MatchKind::Email, point(i), person(i)))
        .collect();
    s.put_identifier_run(v, 0, rows).unwrap();
    let cookies = (0..n)
        .step_by(2)
        .map(|i| ("dsp".to_string(), person(i), cookie(i)))
        .collect();
    s.put_cookie_run(v, 0, cookies).unwrap();
    s.seal_version(v).unwrap();

    let points: Vec<PointBytes> = (0..n).map(point).collect();
    let owners = s.owners_of_sorted(v, MatchKind::Email, &points).unwrap();
    let expected: Vec<Option<PersonKey>> =
        (0..n).map(|i| (i % 2 == 0).then(|| person(i))).collect();
    assert_eq!(owners, expected);

    let persons: Vec<PersonKey> = (0..n).map(person).collect();
    let found = s.cookies_of_sorted(v, "dsp", &persons).unwrap();
    let expected: Vec<(PersonKey, Vec<SealedCookie>)> = (0..n)
        .step_by(2)
        .map(|i| (person(i), vec![cookie(i)]))
        .collect();
    assert_eq!(found, expected);
}

/// Whether `table` (a name on the search path) has a primary key.
fn has_primary_key(s: &PgStore, table: &str) -> bool {
    s.exists(
        "SELECT 1 FROM pg_index WHERE indrelid = to_regclass($1) AND indisprimary",
        &[&table],
    )
    .unwrap()
}

#[test]
fn an_import_fills_unindexed_partitions_and_sealing_keys_them() {
    let Some(db) = TestDb::new() else { return };
    let s = db.store();
    let v = s.allocate_version().unwrap();
    let points = format!("graph_points_v{v}");
    s.put_identifier_run(v, 0, vec![(MatchKind::Email, point(1), person(1))])
        .unwrap();
    assert!(!has_primary_key(&s, &points));
    s.seal_version(v).unwrap();
    assert!(has_primary_key(&s, &points));
    assert!(has_primary_key(&s, &format!("graph_cookies_v{v}")));
    s.delete_version(v).unwrap();
    assert!(!s
        .exists("SELECT 1 WHERE to_regclass($1) IS NOT NULL", &[&points])
        .unwrap());
    // A batch for a version whose partitions are missing (an import opened
    // before they existed) creates them.
    s.put_identifier_run(v + 100, 0, vec![(MatchKind::Email, point(2), person(2))])
        .unwrap();
    assert_eq!(
        s.point_owner(v + 100, MatchKind::Email, &point(2)).unwrap(),
        Some(person(2))
    );
}

/// The test's schema as a build at migration `n` left it (its migrations
/// applied and recorded by hand), then `rows` run in it.
fn database_at_schema(db: &TestDb, n: usize, rows: &str) {
    let migrations: String = super::migrate::MIGRATIONS[..n]
        .iter()
        .map(|m| m.2)
        .collect::<Vec<_>>()
        .join("\n");
    admin(
        &db.admin_url,
        &format!(
            "SET search_path TO {};
             CREATE TABLE schema_migrations (
                 version integer PRIMARY KEY, name text NOT NULL,
                 applied timestamptz NOT NULL DEFAULT now());
             {migrations}
             INSERT INTO schema_migrations (version, name)
                 SELECT g, 'm' FROM generate_series(1, {n}) g;
             {rows}",
            db.schema,
        ),
    );
}

#[test]
fn a_graph_stored_before_partitions_moves_into_them_keys_and_all() {
    let Some(db) = TestDb::new() else { return };
    // A database at schema 2, with a stored version 7.
    database_at_schema(
        &db,
        2,
        "INSERT INTO graph_points VALUES (7, 1, '\\x0102', '\\x0a'), (7, 1, '\\x0103', '\\x0b');
         INSERT INTO graph_cookies VALUES (7, 'dsp', '\\x0a', '\\x01', '\\x02');",
    );
    let s = db.store();
    assert_eq!(s.schema_version().unwrap(), Some(PG_SCHEMA_VERSION));
    assert!(has_primary_key(&s, "graph_points_v7"));
    assert!(has_primary_key(&s, "graph_cookies_v7"));
    assert_eq!(
        s.count("SELECT count(*) FROM graph_points WHERE version = 7", &[])
            .unwrap(),
        2
    );
    assert_eq!(
        s.count("SELECT count(*) FROM graph_cookies_v7", &[])
            .unwrap(),
        1
    );
}

#[test]
fn a_cache_stored_as_pairs_moves_into_runs() {
    let Some(db) = TestDb::new() else { return };
    // A database at schema 6 caching 10,000 pairs in one namespace, 3 in another.
    let hex = |p: &PointBytes| format!("'\\x{}'", hex::encode(p.0));
    let abpy = |i: u32| point(i + 1_000_000);
    let insert = |ns: &str, range: std::ops::Range<u32>| {
        range
            .map(|i| format!("('\\x{ns}', {}, {})", hex(&point(i)), hex(&abpy(i))))
            .collect::<Vec<_>>()
            .join(",")
    };
    database_at_schema(
        &db,
        6,
        &format!(
            "INSERT INTO cache_pairs (ns, bpy, abpy) VALUES {};
             INSERT INTO cache_pairs (ns, bpy, abpy) VALUES {};",
            insert(&"01".repeat(16), 0..10_000),
            insert(&"02".repeat(16), 5..8),
        ),
    );
    let s = db.store();
    assert_eq!(s.schema_version().unwrap(), Some(PG_SCHEMA_VERSION));
    let (a, b) = ([1u8; 16], [2u8; 16]);
    assert_eq!(s.cached_namespaces().unwrap(), vec![a, b]);
    // Runs of 8,192, in order, keyed by their first and last points.
    let keys = s.cache_run_keys(&a).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(&keys[0][..64], [point(0).0, point(8191).0].concat());
    let pairs: Vec<_> = keys
        .iter()
        .flat_map(|k| s.cache_run(&a, k).unwrap())
        .collect();
    let expected: Vec<_> = (0..10_000).map(|i| (point(i), abpy(i))).collect();
    assert_eq!(pairs, expected);
    assert!(s.cache_contains(&b, &point(6)).unwrap());
    assert!(!s.cache_contains(&b, &point(9)).unwrap());
    // The migrated key is the one caching computes: the same page again is
    // stored once.
    s.cache_put(
        &b,
        &[
            (point(7), abpy(7)),
            (point(5), abpy(5)),
            (point(6), abpy(6)),
        ],
    )
    .unwrap();
    assert_eq!(s.cache_run_keys(&b).unwrap().len(), 1);
}

#[test]
fn a_lock_whose_session_ends_says_it_is_no_longer_held() {
    let Some(db) = TestDb::new() else { return };
    let (a, b) = (db.store(), db.store());
    // Advisory locks are per database: a name of this test's own, so that
    // servers of other tests on the same database cannot hold it.
    let name = format!("lock-test-{}", db.schema);
    let held = a.try_lock(&name).unwrap().expect("free");
    assert!(held.is_held());
    assert!(b.try_lock(&name).unwrap().is_none());
    // The database ends the holder's session (a failover, a cut network).
    admin(
        &db.admin_url,
        &format!(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l
             JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND a.application_name = '{}'",
            db.schema
        ),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while held.is_held() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lost lock still says held"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(b.try_lock(&name).unwrap().is_some());
}

#[test]
fn migrations_apply_once_and_a_newer_schema_is_refused() {
    let Some(db) = TestDb::new() else { return };
    let s = db.store();
    assert_eq!(s.schema_version().unwrap(), Some(PG_SCHEMA_VERSION));
    // A second server on the same database applies nothing and works.
    drop(db.store());
    let newer = i32::try_from(PG_SCHEMA_VERSION + 1).unwrap();
    s.execute(
        "INSERT INTO schema_migrations (version, name) VALUES ($1, 'from the future')",
        &[&newer],
    )
    .unwrap();
    match PgStore::connect(&db.url) {
        Err(e @ StoreError::Schema { found, expected }) => {
            assert_eq!(
                (found, expected),
                (PG_SCHEMA_VERSION + 1, PG_SCHEMA_VERSION)
            );
            let text = e.to_string();
            assert!(text.contains(&found.to_string()) && text.contains(&expected.to_string()));
        }
        Err(other) => panic!("expected a schema error, got {other}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}

#[test]
fn a_lost_database_is_unavailable_and_the_pool_reconnects() {
    let Some(db) = TestDb::new() else { return };
    // Nothing listens on port 1: connecting fails as unavailable.
    let nowhere: DatabaseUrl = "postgres://u:secret-pw@127.0.0.1:1/db".parse().unwrap();
    match PgStore::connect(&nowhere) {
        Err(StoreError::Unavailable(m)) => assert!(!m.contains("secret-pw"), "{m}"),
        Err(other) => panic!("expected unavailable, got {other}"),
        Ok(_) => panic!("connected to nothing"),
    }
    let s = db.store();
    s.put_audit(&AuditEntry {
        seq: 1,
        time: String::new(),
        actor: "a".into(),
        action: "b".into(),
        object: "c".into(),
        outcome: "ok".into(),
        prev_hash: String::new(),
        hash: String::new(),
    })
    .unwrap();
    // Every session of this store is terminated by the server.
    admin(
        &db.admin_url,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{}'",
            db.schema
        ),
    );
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        match s.last_audit() {
            Ok(e) => outcomes.push(e.map(|e| e.seq)),
            Err(StoreError::Unavailable(_)) => outcomes.push(None),
            Err(other) => panic!("a lost connection must be `Unavailable`, got {other}"),
        }
    }
    assert_eq!(outcomes.last(), Some(&Some(1)), "reconnected: {outcomes:?}");
}

#[test]
fn database_urls_never_show_their_password() {
    let url: DatabaseUrl = "postgres://onboard:hunter2@db.example:5432/onboard"
        .parse()
        .unwrap();
    assert_eq!(
        url.to_string(),
        "postgres://onboard:***@db.example:5432/onboard"
    );
    assert!(!format!("{url:?}").contains("hunter2"));
    let err = "mysql://u:hunter2@h/db".parse::<DatabaseUrl>().unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn console_operators_and_sessions() {
    let Some(db) = TestDb::new() else { return };
    crate::storage::console_tests::console_contract(&db.store());
}

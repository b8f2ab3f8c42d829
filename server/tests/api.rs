//! Authentication, admin API, secrets on disk, audit chain and the binary's
//! `init` / `serve` / `audit verify`, over real TLS.

mod common;

use common::*;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::path::Path;
use std::process::Command;

#[test]
fn keys_roles_and_revocation() {
    let s = TestServer::start();
    let adv = s.principal("acme", "advertiser");
    let dst = s.principal("dsp-a", "destination");

    // Missing, malformed, wrong key → 401.
    let r = s.client.get(format!("{}/v1/jobs", s.base)).send().unwrap();
    assert_eq!(error_code(r), (401, "unauthenticated".into()));
    assert_eq!(
        error_code(s.get(
            "/v1/jobs",
            "obk_wrongwrongwrongwrongwrongwrongwrongwrongwro"
        ))
        .0,
        401
    );
    assert_eq!(error_code(s.get("/v1/jobs", "hello")).0, 401);
    // Wrong role → 403.
    assert_eq!(
        error_code(s.get("/v1/admin/stats", &adv)),
        (403, "forbidden".into())
    );
    assert_eq!(
        error_code(s.get("/v1/jobs", &dst)),
        (403, "forbidden".into())
    );
    assert_eq!(
        error_code(s.get("/v1/audiences", &adv)),
        (403, "forbidden".into())
    );
    assert_eq!(s.get("/v1/jobs", &adv).status(), 200);
    // Duplicate principal → 409.
    let r = s.post(
        "/v1/admin/principals",
        &s.admin,
        json!({"name": "acme", "role": "advertiser"}),
    );
    assert_eq!(error_code(r), (409, "conflict".into()));

    // Rotation and revocation.
    let r: Value = s
        .post("/v1/admin/principals/acme/keys", &s.admin, json!({}))
        .json()
        .unwrap();
    let second = r["api_key"].as_str().unwrap().to_string();
    let second_id = r["key_id"].as_str().unwrap().to_string();
    assert!(second.starts_with("obk_") && second.len() == 47);
    assert_eq!(s.get("/v1/jobs", &second).status(), 200);
    let r: Value = s
        .post(
            &format!("/v1/admin/keys/{second_id}/revoke"),
            &s.admin,
            json!({}),
        )
        .json()
        .unwrap();
    assert_eq!(r["revoked"], true);
    assert_eq!(error_code(s.get("/v1/jobs", &second)).0, 401);
    assert_eq!(s.get("/v1/jobs", &adv).status(), 200);
    let r: Value = s
        .post("/v1/admin/principals/acme/revoke", &s.admin, json!({}))
        .json()
        .unwrap();
    assert_eq!(r["revoked_keys"], 1);
    assert_eq!(error_code(s.get("/v1/jobs", &adv)).0, 401);

    let list: Value = s.get("/v1/admin/principals", &s.admin).json().unwrap();
    let acme = list["principals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "acme")
        .unwrap()
        .clone();
    assert_eq!(acme["keys"].as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains(&second[4..]));
}

#[test]
fn http_edges_health_metrics_openapi() {
    let s = TestServer::start_with(|c| c.metrics_listen = Some(([127, 0, 0, 1], 0).into()));
    let r: Value = s
        .client
        .get(format!("{}/healthz", s.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(r, json!({"status": "ok", "graph_version": 0}));
    let doc: Value = s
        .client
        .get(format!("{}/v1/openapi.json", s.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/jobs/{id}/finish",
        "/v1/audiences/{id}/members",
        "/v1/admin/graph/imports/{id}/commit",
    ] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    // Wrong Content-Type → 415; too large → 413; bad JSON → 400.
    let r = s
        .client
        .post(format!("{}/v1/admin/principals", s.base))
        .bearer_auth(&s.admin)
        .header("Content-Type", "text/plain")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(error_code(r), (415, "unsupported-media-type".into()));
    let r: Value = s
        .post("/v1/admin/graph/imports", &s.admin, json!({}))
        .json()
        .unwrap();
    let import = r["import_id"].as_str().unwrap().to_string();
    let big = vec![0u8; 300 * 1024];
    let r = s.put_bytes(
        &format!("/v1/admin/graph/imports/{import}/identifiers/0"),
        &s.admin,
        big,
    );
    assert_eq!(error_code(r), (413, "too-large".into()));
    let r = s.put_json(
        &format!("/v1/admin/graph/imports/{import}/identifiers/0"),
        &s.admin,
        json!({}),
    );
    assert_eq!(error_code(r), (415, "unsupported-media-type".into()));
    let r = s.post("/v1/admin/principals", &s.admin, json!({"name": "x"}));
    assert_eq!(error_code(r), (400, "bad-request".into()));
    let r = s.post(
        "/v1/admin/graph/imports/nope/commit",
        &s.admin,
        json!({"identifier_batches": 1}),
    );
    assert_eq!(error_code(r), (404, "not-found".into()));
    let r = s.post(
        &format!("/v1/admin/graph/imports/{import}/commit"),
        &s.admin,
        json!({"identifier_batches": 1}),
    );
    assert_eq!(error_code(r), (409, "incomplete".into()));
    // The TLS listener does not serve /metrics; the metrics listener does.
    let r = s.client.get(format!("{}/metrics", s.base)).send().unwrap();
    assert_eq!(error_code(r), (404, "not-found".into()));
    let metrics = s.handle.as_ref().unwrap().metrics_addr.unwrap();
    assert!(metrics.ip().is_loopback());
    let text = s
        .client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains(
            "onboard_http_requests_total{route=\"/v1/admin/principals\",status=\"415\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("onboard_http_request_duration_seconds_count"));
    assert!(text.contains("onboard_jobs_total{status=\"open\"} 0"));
}

#[test]
fn graph_import_stats_and_versions() {
    let s = TestServer::start();
    s.principal("dsp-a", "destination");
    let c = s.import(&synthetic_graph(500));
    assert_eq!(c["version"], 1);
    assert_eq!(c["persons"], 500);
    assert_eq!(
        c["identifiers"],
        json!({"email": 500, "phone": 500, "maid": 0})
    );
    assert_eq!(c["cookies"], json!({"dsp-a": 550, "dsp-b": 250}));
    // An uncommitted import never affects the current version.
    let r: Value = s
        .post("/v1/admin/graph/imports", &s.admin, json!({}))
        .json()
        .unwrap();
    let pending = r["import_id"].as_str().unwrap().to_string();
    let frame = onboard_protocol::wire::DigestBatch {
        batch_no: 0,
        entries: synthetic_graph(10)[0]
            .ids
            .iter()
            .map(|(k, d)| onboard_protocol::wire::DigestEntry {
                person: "p0".into(),
                kind: *k,
                digest: *d,
            })
            .collect(),
    }
    .encode()
    .unwrap();
    let r: Value = s
        .put_bytes(
            &format!("/v1/admin/graph/imports/{pending}/identifiers/0"),
            &s.admin,
            frame.clone(),
        )
        .json()
        .unwrap();
    assert_eq!(r, json!({"batch_no": 0, "accepted": 2}));
    // Idempotent.
    assert_eq!(
        s.put_bytes(
            &format!("/v1/admin/graph/imports/{pending}/identifiers/0"),
            &s.admin,
            frame
        )
        .status(),
        200
    );
    let stats: Value = s.get("/v1/admin/stats", &s.admin).json().unwrap();
    assert_eq!(stats["graph_version"], 1);
    assert_eq!(stats["persons"], 500);
    assert_eq!(
        stats["principals"],
        json!({"admin": 1, "advertiser": 0, "destination": 1})
    );
    // A new committed version replaces it as current; the old one is kept
    // (graph_versions_kept, default 3).
    let c = s.import(&synthetic_graph(200));
    assert_eq!(c["version"], 3);
    let stats: Value = s.get("/v1/admin/stats", &s.admin).json().unwrap();
    assert_eq!(stats["graph_version"], 3);
    assert_eq!(stats["persons"], 200);
    let h: Value = s
        .client
        .get(format!("{}/healthz", s.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(h["graph_version"], 3);

    // The replaced version is kept whole; the pending import's batch is
    // still staged (uncommitted, not current).
    let mut s = s;
    s.stop();
    let mut files = Vec::new();
    files_under(&s.data_dir(), &mut files);
    let names: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    assert!(names.iter().any(|n| n == "graph-1.0"), "{names:?}");
    assert!(names.iter().any(|n| n == "graph-2-runs.0"), "{names:?}");
    assert!(names.iter().any(|n| n == "graph-3.0"), "{names:?}");
    let repo = onboard_server::storage::open_sled(&s.data_dir()).unwrap();
    use onboard_protocol::MatchKind::{Email, Phone};
    assert_eq!(repo.points_after(1, Email, None, 10).unwrap().len(), 10);
    assert_eq!(repo.points_after(1, Phone, None, 10).unwrap().len(), 10);
    assert!(repo.points_after(2, Email, None, 10).unwrap().is_empty());
    assert_eq!(repo.points_after(3, Email, None, 1000).unwrap().len(), 200);
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn no_identifier_or_digest_is_ever_written_to_disk() {
    let mut s = TestServer::start();
    s.principal("dsp-a", "destination");
    let n = 300;
    let mut graph = synthetic_graph(n);
    for p in &mut graph {
        for (_, c) in &mut p.cookies {
            *c = format!("cookie-id-{c}-of-{}", p.id);
        }
    }
    s.import(&graph);
    // Opt-outs go through the same path.
    let frame = onboard_protocol::wire::DigestBatch {
        batch_no: 0,
        entries: vec![onboard_protocol::wire::DigestEntry {
            person: String::new(),
            kind: onboard_protocol::MatchKind::Email,
            digest: onboard_protocol::Digest::of(&email(3)),
        }],
    }
    .encode()
    .unwrap();
    assert_eq!(
        s.post_bytes("/v1/admin/optouts", &s.admin, frame).status(),
        200
    );
    s.stop();

    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..n {
        for value in [email(i), phone(i)] {
            let digest = Sha256::digest(value.as_bytes());
            needles.push((format!("{value} (normalised)"), value.clone().into_bytes()));
            needles.push((
                format!("{value} (sha256 hex)"),
                hex::encode(digest).into_bytes(),
            ));
            needles.push((
                format!("{value} (sha256 HEX)"),
                hex::encode_upper(digest).into_bytes(),
            ));
            needles.push((format!("{value} (sha256 raw)"), digest.to_vec()));
        }
    }
    // Cookie IDs are encrypted at rest.
    for p in &graph {
        for (_, c) in &p.cookies {
            needles.push((format!("cookie {c}"), c.clone().into_bytes()));
        }
    }
    let mut by_len: std::collections::HashMap<usize, std::collections::HashMap<Vec<u8>, String>> =
        Default::default();
    for (what, needle) in needles {
        by_len.entry(needle.len()).or_default().insert(needle, what);
    }
    let mut files = Vec::new();
    files_under(s.dir.path(), &mut files);
    assert!(files.len() > 3);
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for (len, set) in &by_len {
            for w in bytes.windows(*len) {
                if let Some(what) = set.get(w) {
                    panic!("{what} found in {}", file.display());
                }
            }
        }
    }
}

#[test]
fn audit_chain_detects_tampering() {
    let mut s = TestServer::start();
    s.principal("acme", "advertiser");
    s.principal("dsp-a", "destination");
    s.import(&synthetic_graph(10));
    let log: Value = s
        .get("/v1/admin/audit?after=0&limit=100", &s.admin)
        .json()
        .unwrap();
    let entries = log["entries"].as_array().unwrap();
    assert!(entries.len() >= 5);
    assert_eq!(entries[1]["action"], "principal.create.advertiser");
    assert_eq!(entries[1]["prev_hash"], entries[0]["hash"]);
    s.stop();
    let bin = env!("CARGO_BIN_EXE_onboard-server");
    let data = s.data_dir();
    let ok = Command::new(bin)
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    {
        let repo = onboard_server::storage::open_sled(&data).unwrap();
        let mut e = repo.audit_after(2, 1).unwrap().remove(0);
        assert_eq!(e.seq, 3);
        e.outcome = "refused".into();
        repo.put_audit(&e).unwrap();
        repo.flush().unwrap();
    }
    let bad = Command::new(bin)
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("entry 3"), "{stderr}");
}

#[test]
fn cli_init_and_serve_refuses_open_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bin = env!("CARGO_BIN_EXE_onboard-server");
    let out = Command::new(bin)
        .args(["init", "--dev-tls", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout.lines().last().unwrap();
    assert!(key.starts_with("obk_") && key.len() == 47, "{stdout}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let tls = ["tls/key.pem"];
        for f in onboard_server::keyfiles::KEY_FILES.into_iter().chain(tls) {
            let mode = std::fs::metadata(data.join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        // Second init refuses to overwrite.
        let again = Command::new(bin)
            .args(["init", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(!again.status.success());

        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let out = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("server.key") && stderr.contains("group or others"),
            "{stderr}"
        );
    }
    // k below the floor is refused, naming the key.
    let out = Command::new(bin)
        .args(["serve", "--k", "10", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`k`"));
    // --admin-key-out writes the key to a 0600 file.
    let data2 = dir.path().join("data2");
    let key_file = dir.path().join("admin.key");
    let out = Command::new(bin)
        .args(["init", "--data-dir"])
        .arg(&data2)
        .arg("--admin-key-out")
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(std::fs::read_to_string(&key_file)
        .unwrap()
        .starts_with("obk_"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("obk_"));
}

#[test]
fn start_refuses_a_programmatic_k_below_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    onboard_server::init(&onboard_server::InitOptions {
        data_dir: data.clone(),
        dev_tls: true,
        admin_key_out: None,
        database_url: None,
    })
    .unwrap();
    let config = onboard_server::Config {
        data_dir: data,
        k: 10,
        ..onboard_server::Config::default()
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = onboard_server::start(config, listener)
        .err()
        .expect("k = 10 must be refused");
    assert!(err.to_string().contains("`k`"), "{err}");
}

/// Status, code and message of an error answer.
fn error_parts(r: reqwest::blocking::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().unwrap();
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
        v["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

/// Request-parsing errors: the stable code `bad-request`, a message naming
/// our field (and the line/column), never the caller's value, a key the
/// caller made up, serde's wording or a Rust type.
#[test]
fn parsing_errors_name_the_field_and_nothing_else() {
    let s = TestServer::start();
    let adv = s.principal("acme", "advertiser");
    let dst = s.principal("dsp-a", "destination");
    let huge = format!("{}SECRET-HUGE", "A".repeat(200_000));
    let raw = |method: reqwest::Method, path: &str, key: &str, body: String| {
        s.client
            .request(method, format!("{}{path}", s.base))
            .bearer_auth(key)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .unwrap()
    };
    let import: Value = s
        .post("/v1/admin/graph/imports", &s.admin, json!({}))
        .json()
        .unwrap();
    let import = import["import_id"].as_str().unwrap().to_string();
    let cases: Vec<(&str, reqwest::blocking::Response, &str, &str)> = vec![
        (
            "wrong type",
            s.post(
                "/v1/admin/principals",
                &s.admin,
                json!({"name": 424242, "role": "advertiser"}),
            ),
            "424242",
            "field `name` has an invalid value",
        ),
        (
            "unknown field",
            s.post(
                "/v1/admin/principals",
                &s.admin,
                json!({"name": "x", "role": "advertiser", "SECRET_FIELD": 1}),
            ),
            "SECRET_FIELD",
            "unknown field",
        ),
        (
            "missing field",
            s.post(
                "/v1/admin/principals",
                &s.admin,
                json!({"role": "advertiser"}),
            ),
            "advertiser",
            "missing field `name`",
        ),
        (
            "not JSON",
            raw(
                reqwest::Method::POST,
                "/v1/jobs",
                &adv,
                "<job>SECRET-XML</job>".into(),
            ),
            "SECRET-XML",
            "not valid JSON (line 1, column 1)",
        ),
        (
            "cut short",
            raw(
                reqwest::Method::POST,
                "/v1/jobs",
                &adv,
                r#"{"destination": "SECRET-CUT"#.into(),
            ),
            "SECRET-CUT",
            "ends early",
        ),
        (
            "huge string where an enum is",
            s.post(
                "/v1/admin/principals",
                &s.admin,
                json!({"name": "x", "role": huge}),
            ),
            "SECRET-HUGE",
            "field `role` has an invalid value",
        ),
        (
            "wrong type in a nested row",
            s.put_json(
                &format!("/v1/admin/graph/imports/{import}/cookies/0"),
                &s.admin,
                json!({"cookies": [{"person": "p", "destination": "dsp-a", "cookie": 987654321}]}),
            ),
            "987654321",
            "field `cookies[0].cookie` has an invalid value",
        ),
        (
            "bad query parameter",
            s.get("/v1/admin/audit?after=0&limit=abcSECRET", &s.admin),
            "abcSECRET",
            "query parameter `limit` has an invalid value",
        ),
        (
            "bad members limit",
            s.get("/v1/audiences/a-none/members?limit=-SECRET7", &dst),
            "SECRET7",
            "query parameter `limit` has an invalid value",
        ),
        (
            "bad path number",
            s.put_bytes("/v1/jobs/j-none/batches/SECRET88", &adv, vec![0]),
            "SECRET88",
            "batch_no",
        ),
    ];
    for (name, response, secret, wanted) in cases {
        let (status, code, message) = error_parts(response);
        assert_eq!((status, code.as_str()), (400, "bad-request"), "{name}");
        assert!(message.contains(wanted), "{name}: {message:?}");
        assert!(
            !message.contains(secret),
            "{name} echoes the value: {message:?}"
        );
        for internal in [
            "invalid type",
            "invalid value:",
            "expected",
            "variant",
            "invalid digit",
            "String",
            "usize",
            "u32",
            "u64",
            "struct",
            "NewPrincipal",
            "CreateJob",
            "at line",
        ] {
            assert!(
                !message.contains(internal),
                "{name}: parser wording {internal:?} in {message:?}"
            );
        }
        assert!(message.len() < 200, "{name}: {message:?}");
    }
}

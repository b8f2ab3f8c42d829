//! The operator console over real HTTPS, below the browser: login with
//! password and TOTP (wrong password, wrong code, replayed code, the
//! failure budget), sessions (cookie flags, idle and absolute expiry,
//! logout), CSRF refusal, security headers, API keys kept out, and no page
//! showing an identifier, a digest or a cookie ID of the test data.

mod common;

use common::console::{add_operator, console_links, ConsoleClient, Scenario};
use common::TestServer;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// The console's audit entries, as the admin API lists them.
fn audit_entries(server: &TestServer) -> Vec<serde_json::Value> {
    let listed = server.json(&server.admin_key.clone(), &["admin", "audit", "--json"]);
    listed["entries"]
        .as_array()
        .or_else(|| listed.as_array())
        .cloned()
        .unwrap_or_default()
}

fn has_entry(
    entries: &[serde_json::Value],
    actor: &str,
    action: &str,
    object: &str,
    outcome: &str,
) -> bool {
    entries.iter().any(|e| {
        e["actor"] == actor
            && e["action"] == action
            && e["object"] == object
            && e["outcome"] == outcome
    })
}

#[test]
fn login_refuses_a_wrong_password_a_wrong_code_a_replayed_code_and_api_keys() {
    let mut server = TestServer::start(&[]);
    let mut ana = add_operator(&mut server, "ana");
    let mut c = ConsoleClient::new(&server);

    // Not logged in: every page sends to the login form, also with an API key.
    for path in ["/console/", "/console/jobs", "/console/audit"] {
        let a = c.get(path);
        assert_eq!(
            (a.status, a.location.as_deref()),
            (303, Some("/console/login")),
            "{path}"
        );
        let a = c.get_with_bearer(path, &server.admin_key);
        assert_eq!(
            (a.status, a.location.as_deref()),
            (303, Some("/console/login")),
            "{path}"
        );
    }
    // An API key is no password.
    let code = ana.code_at(0);
    let a = c.login_with("ana", &server.admin_key, &code);
    assert_eq!(a.status, 401);
    let a = c.login_with("admin", &server.admin_key, &code);
    assert_eq!(a.status, 401);

    let a = c.login_with("ana", "not-the-password", &code);
    assert_eq!(a.status, 401);
    assert!(a.body.contains("Login failed"), "{}", a.body);
    assert!(!c.cookies.contains_key("onboard_console"));
    let a = c.login_with("ana", &ana.password.clone(), &ana.wrong_code());
    assert_eq!(a.status, 401);
    assert!(!c.cookies.contains_key("onboard_console"));

    // The right password and code: a session, with the cookie's flags.
    let code = ana.fresh_code();
    let a = c.login_with("ana", &ana.password.clone(), &code);
    assert_eq!(
        (a.status, a.location.as_deref()),
        (303, Some("/console/")),
        "{}",
        a.body
    );
    let session = a
        .set_cookies
        .iter()
        .find(|s| s.starts_with("onboard_console="))
        .expect("a session cookie");
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(
            session.split("; ").any(|f| f == flag),
            "{flag} missing: {session}"
        );
    }
    let overview = c.get("/console/");
    assert_eq!(overview.status, 200);
    assert!(
        overview.body.contains("operator <strong>ana</strong>"),
        "{}",
        overview.body
    );

    // Logout ends the session on the server, not just in this client.
    let stolen = c.cookies.clone();
    let csrf = c.csrf("/console/");
    let a = c.post("/console/logout", &[("csrf", &csrf)]);
    assert_eq!(
        (a.status, a.location.as_deref()),
        (303, Some("/console/login"))
    );
    c.cookies = stolen;
    assert_eq!(c.get("/console/").status, 303);

    // The code that just logged in is refused a second time.
    c.cookies.clear();
    let a = c.login_with("ana", &ana.password.clone(), &code);
    assert_eq!(a.status, 401, "a replayed code logged in");

    let entries = audit_entries(&server);
    for (object, outcome) in [
        ("wrong-password", "refused"),
        ("wrong-code", "refused"),
        ("replayed-code", "refused"),
        ("session", "ok"),
    ] {
        assert!(
            has_entry(&entries, "operator:ana", "console.login", object, outcome),
            "no console.login {object} in {entries:?}"
        );
    }
    assert!(has_entry(
        &entries,
        "operator:ana",
        "console.logout",
        "session",
        "ok"
    ));
    assert!(has_entry(
        &entries,
        "operator:admin",
        "console.login",
        "wrong-password",
        "refused"
    ));
    assert!(has_entry(&entries, "cli", "operator.add", "ana", "ok"));
    server.stop();
    server.assert_audit_verifies("after console logins");
}

#[test]
fn failed_logins_are_rate_limited_per_address() {
    let mut server = TestServer::start(&[("AUTH_FAILURES_PER_MINUTE", "3")]);
    let mut ana = add_operator(&mut server, "ana");
    let mut c = ConsoleClient::new(&server);
    for _ in 0..3 {
        let code = ana.code_at(0);
        assert_eq!(c.login_with("ana", "wrong", &code).status, 401);
    }
    // Past the budget even the right credentials are refused, with Retry-After.
    let code = ana.fresh_code();
    let a = c.login_with("ana", &ana.password.clone(), &code);
    assert_eq!(a.status, 429, "{}", a.body);
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(!c.cookies.contains_key("onboard_console"));
}

#[test]
fn sessions_expire_idle_and_absolute_and_forms_need_their_csrf_token() {
    let mut server = TestServer::start(&[
        ("CONSOLE_IDLE_TIMEOUT", "2s"),
        ("CONSOLE_SESSION_LIFETIME", "8s"),
    ]);
    let mut ana = add_operator(&mut server, "ana");

    // CSRF: a form without the token, with a wrong one, with another session's.
    let mut c = ConsoleClient::new(&server);
    c.login(&mut ana);
    let mut other = ConsoleClient::new(&server);
    other.login(&mut ana);
    let foreign = other.csrf("/console/principals");
    let own = c.csrf("/console/principals");
    assert_ne!(own, foreign);
    let missing = c.post(
        "/console/principals",
        &[("name", "dsp-x"), ("role", "destination")],
    );
    assert_eq!(missing.status, 400);
    for token in ["0".repeat(32), foreign] {
        let a = c.post(
            "/console/principals",
            &[("name", "dsp-x"), ("role", "destination"), ("csrf", &token)],
        );
        assert_eq!(a.status, 403, "{}", a.body);
    }
    let listed = server.json(
        &server.admin_key.clone(),
        &["admin", "principals", "list", "--json"],
    );
    assert!(
        !listed.to_string().contains("dsp-x"),
        "a refused form acted: {listed}"
    );
    // The login form's token does not pass for a session's form either.
    let mut fresh = ConsoleClient::new(&server);
    let login_token = fresh.csrf("/console/login");
    let a = c.post(
        "/console/principals",
        &[
            ("name", "dsp-x"),
            ("role", "destination"),
            ("csrf", &login_token),
        ],
    );
    assert_eq!(a.status, 403);
    let a = c.post(
        "/console/principals",
        &[("name", "dsp-x"), ("role", "destination"), ("csrf", &own)],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("obk_"), "the new key is shown once");

    // Idle and absolute expiry: `c` keeps its session busy while `other`
    // makes no request for longer than the idle timeout; then `c` reaches
    // its lifetime however busy.
    let started = std::time::Instant::now();
    let (mut other_checked, mut ended) = (false, None);
    while started.elapsed() < std::time::Duration::from_secs(20) {
        let a = c.get("/console/");
        if a.status == 303 {
            ended = Some(started.elapsed());
            break;
        }
        assert_eq!(a.status, 200);
        if !other_checked && started.elapsed() > std::time::Duration::from_millis(3_200) {
            let idle = other.get("/console/");
            assert_eq!(
                idle.location.as_deref(),
                Some("/console/login"),
                "idle session lived on"
            );
            other_checked = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(700));
    }
    assert!(
        other_checked,
        "the busy session ended before the idle one was checked"
    );
    assert!(ended.is_some(), "a busy session outlived its lifetime");
}

#[test]
fn pages_carry_security_headers_and_show_no_identifier_digest_or_cookie_id() {
    let mut server = TestServer::start(&[("K", "50"), ("MIN_JOB_ROWS", "100")]);
    let admin = server.admin_key.clone();
    let persons = 300;
    let data = Scenario {
        persons,
        email: |i| format!("cons.person{i}@mail.example"),
        cookie_id: |i| format!("zqcookie{i:04}x"),
    };
    let (email, cookie_id) = (data.email, data.cookie_id);
    let advertiser = server.create("advertiser", "acme");
    server.create("destination", "dsp-alpha");
    data.import_and_match(&server, &advertiser, "dsp-alpha", 250, 60, 5);

    let mut ana = add_operator(&mut server, "ana");
    let mut c = ConsoleClient::new(&server);
    c.login(&mut ana);
    // Console actions: an opt-out by digest and an erasure.
    let digest0 = hex::encode(Sha256::digest(email(0).as_bytes()));
    let csrf = c.csrf("/console/privacy");
    let a = c.post(
        "/console/privacy/optout",
        &[("csrf", &csrf), ("lines", &format!("email,{digest0}\n"))],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("Opt-outs accepted: 1"), "{}", a.body);
    let a = c.post(
        "/console/privacy/erase",
        &[("csrf", &csrf), ("person", "person-1")],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    // An open job (created through the API, never finished), aborted here.
    let http = common::http::Http::new(&server);
    let (status, created) = http.json(
        "POST",
        "/v1/jobs",
        &advertiser,
        serde_json::json!({"destination": "dsp-alpha", "kinds": ["email"], "key_fingerprint": "ab".repeat(16)}),
    );
    assert_eq!(status, 201, "{created}");
    let job = created["job_id"].as_str().unwrap().to_string();
    let page = format!("/console/jobs/{job}");
    let csrf = c.csrf(&page);
    let a = c.post(&format!("{page}/abort"), &[("csrf", &csrf)]);
    assert_eq!(
        (a.status, a.location.as_deref()),
        (303, Some(page.as_str()))
    );
    assert!(c.get(&page).body.contains("failed"));
    let a = c.post(&format!("{page}/abort"), &[("csrf", &csrf)]);
    assert_eq!(a.status, 409, "a failed job is not aborted twice");
    let entries = audit_entries(&server);
    assert!(has_entry(
        &entries,
        "operator:ana",
        "job.abort",
        &job,
        "failed"
    ));
    assert!(
        entries
            .iter()
            .any(|e| e["actor"] == "operator:ana" && e["action"] == "optout"),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|e| e["actor"] == "operator:ana"
            && e["action"].as_str().unwrap_or("").starts_with("erase")),
        "{entries:?}"
    );

    // Crawl every console page reachable from the navigation and the lists.
    let mut seen = BTreeSet::new();
    let mut queue = vec!["/console/".to_string()];
    let mut pages = Vec::new();
    while let Some(path) = queue.pop() {
        if !seen.insert(path.clone()) || seen.len() > 200 {
            continue;
        }
        let a = c.get(&path);
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        for (name, value) in [
            ("content-security-policy", "default-src 'none'"),
            ("x-frame-options", "DENY"),
            ("x-content-type-options", "nosniff"),
        ] {
            let got = a.headers.get(name).map(|v| v.to_str().unwrap().to_string());
            assert!(
                got.as_deref().is_some_and(|g| g.contains(value)),
                "{path}: {name} = {got:?}"
            );
        }
        let csp = a.headers["content-security-policy"].to_str().unwrap();
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("script-src"),
            "{csp}"
        );
        assert!(!a.body.contains("<script"), "{path} has a script");
        queue.extend(
            console_links(&a.body)
                .into_iter()
                .filter(|l| !l.contains('?')),
        );
        pages.push((path, a.body));
    }
    for must in [
        "/console/jobs",
        "/console/audiences",
        "/console/quality",
        "/console/audit",
        "/console/graph",
    ] {
        assert!(seen.contains(must), "{must} not reached: {seen:?}");
    }
    assert!(
        seen.iter().any(|p| p.starts_with("/console/jobs/j-")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|p| p.starts_with("/console/audiences/a-")),
        "{seen:?}"
    );
    let quality = &pages
        .iter()
        .find(|(p, _)| p == "/console/quality")
        .unwrap()
        .1;
    assert!(quality.contains("<svg"), "no chart: {quality}");
    for (path, body) in &pages {
        let lower = body.to_lowercase();
        for i in 0..persons {
            let digest = hex::encode(Sha256::digest(email(i).as_bytes()));
            assert!(!lower.contains(&email(i)), "{path} shows an email");
            assert!(!lower.contains(&digest), "{path} shows a digest");
            assert!(!lower.contains(&cookie_id(i)), "{path} shows a cookie ID");
        }
        assert!(
            !body.contains("zqcookie") && !body.contains("mail.example"),
            "{path}"
        );
        assert!(
            !body.contains("person-1<") && !body.contains("person-1\""),
            "{path} echoes the erased person ID"
        );
        assert!(
            !body.contains(&admin) && !body.contains(&advertiser),
            "{path} shows an API key"
        );
    }
    // The stylesheet is the only other resource, served from the console itself.
    let css = c.get("/console/style.css");
    assert_eq!(css.status, 200);
    assert!(css.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));
    assert!(!css.body.contains("url("), "the stylesheet loads something");
}

#[test]
fn the_console_can_be_switched_off() {
    let mut server = TestServer::start(&[("CONSOLE", "false")]);
    add_operator(&mut server, "ana");
    let mut c = ConsoleClient::new(&server);
    for path in ["/console/", "/console/login", "/console/style.css"] {
        assert_eq!(c.get(path).status, 404, "{path}");
    }
}

#[test]
fn operator_commands_reset_the_second_factor_and_remove_and_store_no_secret_in_clear() {
    let mut server = TestServer::start(&[]);
    let mut ana = add_operator(&mut server, "ana");
    let data_dir = server.data_dir.to_str().unwrap().to_string();
    let old_secret = totp_rs::TOTP::from_url(&ana.otpauth_uri).unwrap().secret;
    for (path, bytes) in server.stored_bytes() {
        assert!(
            !common::contains(&bytes, &old_secret),
            "TOTP secret in clear in {path:?}"
        );
        assert!(
            !common::contains(&bytes, ana.password.as_bytes()),
            "password in clear in {path:?}"
        );
    }
    let mut c = ConsoleClient::new(&server);
    c.login(&mut ana);
    let old_cookies = c.cookies.clone();

    // Refused: an existing name, a malformed one, an unknown one.
    server.stop();
    for (args, what) in [
        (vec!["operator", "add", "ana"], "exists"),
        (vec!["operator", "add", "bad name"], "operator name"),
        (vec!["operator", "remove", "nobody"], "no operator"),
        (vec!["operator", "reset-2fa", "nobody"], "no operator"),
    ] {
        let out = server.server_cmd(&[&args[..], &["--data-dir", &data_dir]].concat());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(what),
            "{args:?}"
        );
    }
    // A new second factor: the old one stops working, the sessions end.
    let out = server.server_cmd(&["operator", "reset-2fa", "ana", "--data-dir", &data_dir]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let new_uri = stdout.trim().to_string();
    assert!(
        new_uri.starts_with("otpauth://totp/onboard:ana?"),
        "{new_uri}"
    );
    server.serve();
    let mut c = ConsoleClient::new(&server);
    c.cookies = old_cookies;
    assert_eq!(
        c.get("/console/").status,
        303,
        "a session outlived reset-2fa"
    );
    let old_code = ana.fresh_code();
    assert_eq!(
        c.login_with("ana", &ana.password.clone(), &old_code).status,
        401
    );
    let new_totp = totp_rs::TOTP::from_url(&new_uri).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let new_code = new_totp.generate(now);
    assert_eq!(
        c.login_with("ana", &ana.password.clone(), &new_code).status,
        303
    );

    server.stop();
    let out = server.server_cmd(&["operator", "remove", "ana", "--data-dir", &data_dir]);
    assert!(out.status.success());
    server.serve();
    let mut c = ConsoleClient::new(&server);
    let code = new_totp.generate(now + 30);
    assert_eq!(
        c.login_with("ana", &ana.password.clone(), &code).status,
        401
    );
    let entries = audit_entries(&server);
    for action in ["operator.add", "operator.reset-2fa", "operator.remove"] {
        assert!(has_entry(&entries, "cli", action, "ana", "ok"), "{action}");
    }
}

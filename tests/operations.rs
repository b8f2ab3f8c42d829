//! Operations, through the real `onboard-server` process: its stderr going
//! to a file carries no colour codes, `log_format = "json"` gives one JSON
//! object per line, `/metrics` is served only on the metrics listener, and
//! an address presenting bad keys gets 429 without the key ever reaching
//! the log.

mod common;

use common::TestServer;
use std::time::Duration;

/// A client trusting the server's dev CA (plain http for the metrics port).
fn http_client(server: &TestServer) -> reqwest::blocking::Client {
    let ca = std::fs::read(&server.ca).expect("read the dev CA");
    reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA pem"))
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

#[test]
fn a_log_file_gets_no_colour_codes() {
    let mut s = TestServer::start(&[]);
    let admin = s.admin_key.clone();
    s.ok(&admin, &["admin", "stats"]);
    s.stop();
    let log = std::fs::read(s.path("server.log")).expect("server.log");
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("request"), "no request logged: {text}");
    assert!(
        !log.contains(&0x1b),
        "an escape code in the log file: {text:?}"
    );
}

#[test]
fn json_logs_metrics_listener_and_failed_authentications() {
    let wrong_key = "ob_wrong-key-that-must-never-be-logged-7f3a";
    let mut s = TestServer::start(&[
        ("LOG_FORMAT", "json"),
        ("LOG", "onboard_server=debug"),
        ("AUTH_FAILURES_PER_MINUTE", "2"),
    ]);
    let client = http_client(&s);
    let get = |url: String, key: &str| client.get(url).bearer_auth(key).send().unwrap();

    // Two failures are answered 401, the third 429 with Retry-After.
    let principals = format!("{}/v1/admin/principals", s.url);
    for _ in 0..2 {
        assert_eq!(get(principals.clone(), wrong_key).status(), 401);
    }
    let refused = get(principals, wrong_key);
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));

    // The TLS listener has no /metrics; the loopback metrics listener has.
    assert_eq!(
        get(format!("{}/metrics", s.url), &s.admin_key).status(),
        404
    );
    let log = s.log();
    let metrics = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["metrics"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no metrics address logged: {log}"));
    let text = client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains("route=\"/v1/admin/principals\",status=\"429\"} 1"),
        "{text}"
    );

    s.stop();
    let log = s.log();
    assert!(!log.contains(wrong_key), "the presented key was logged");
    assert!(!log.contains(&s.admin_key), "an API key was logged");
    let mut lines = 0;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines >= 5, "too few log lines: {log}");
    assert!(log.contains("listening on https://"), "{log}");
}

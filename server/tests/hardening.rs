//! Slow clients and failed authentications, through the real server over
//! TLS: a body trickling in is cut off while other requests are served, and
//! an address that keeps presenting bad keys gets 429 with Retry-After.

mod common;

use common::{error_code, TestServer};
use serde_json::json;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

/// Bytes the trickling body announces and would send (one per second): far
/// more than the test's pace allows, so sending them all would mean nothing
/// cut the request off.
const TRICKLE_BYTES: usize = 40;

/// A raw TLS connection to the test server (reqwest would keep sending a
/// body after an early answer, hiding whether the server cut it off).
fn raw_tls(s: &TestServer) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let ca = std::fs::read(s.data_dir().join("tls").join("ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let port = s.handle.as_ref().unwrap().addr.port();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Wait up to the read timeout for bytes of the answer; whether the
/// connection is closed.
fn read_some(conn: &mut impl Read, answer: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    match conn.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => {
            answer.extend_from_slice(&buf[..n]);
            false
        }
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

#[test]
fn a_trickling_body_is_cut_off_while_others_are_served() {
    let s = TestServer::start_with(|c| c.client_body_timeout = Duration::from_secs(2));
    let mut conn = raw_tls(&s);
    write!(
        conn,
        "POST /v1/admin/principals HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {TRICKLE_BYTES}\r\n\r\n",
        s.admin
    )
    .unwrap();
    // The client's pace: each read waits up to a second for an answer,
    // then one more byte goes out.
    conn.sock
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let (mut sent, mut answer, mut closed) = (0, Vec::new(), false);
    let mut served_meanwhile = false;
    while sent < TRICKLE_BYTES && !closed {
        if conn.write_all(b" ").and_then(|_| conn.flush()).is_err() {
            closed = true;
            break;
        }
        sent += 1;
        if sent == 2 {
            // While the trickle is in flight, a normal request is answered.
            assert_eq!(s.get("/v1/admin/principals", &s.admin).status(), 200);
            served_meanwhile = true;
        }
        closed = read_some(&mut conn, &mut answer);
        if !answer.is_empty() {
            break;
        }
    }
    assert!(served_meanwhile);
    // And the connection is closed (within `client_disconnect_timeout`):
    // the trickler holds nothing.
    for _ in 0..10 {
        if closed {
            break;
        }
        closed = read_some(&mut conn, &mut answer);
    }
    assert!(closed, "the connection stayed open");
    assert!(sent < TRICKLE_BYTES, "the whole trickle was accepted");
    // Cut off: answered 408 `body-timeout`, or just disconnected.
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() && closed
            || answer.starts_with("HTTP/1.1 408") && answer.contains("body-timeout"),
        "{answer}"
    );
    // The server still serves afterwards.
    assert_eq!(s.get("/v1/admin/principals", &s.admin).status(), 200);
}

#[test]
fn repeated_failed_authentications_get_429_with_retry_after() {
    let s = TestServer::start_with(|c| c.auth_failures_per_minute = 3);
    // Successful authentications cost nothing.
    for _ in 0..10 {
        assert_eq!(s.get("/v1/admin/principals", &s.admin).status(), 200);
    }
    let bad = "ob_definitely-not-a-key";
    for _ in 0..3 {
        let r = s.get("/v1/admin/principals", bad);
        assert_eq!(error_code(r), (401, "unauthenticated".into()));
    }
    // The fourth failure is refused before the key is looked at, and so is
    // a good key from the same address until a token comes back (20 s).
    for key in [bad, s.admin.as_str()] {
        let r = s.get("/v1/admin/principals", key);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=20).contains(&retry), "Retry-After {retry}");
        assert_eq!(error_code(r), (429, "too-many-auth-failures".into()));
    }
    // Endpoints without authentication are not limited.
    let r = s.client.get(format!("{}/healthz", s.base)).send().unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn the_metrics_listener_serves_metrics_alone_over_plain_http() {
    let s = TestServer::start_with(|c| c.metrics_listen = Some(([127, 0, 0, 1], 0).into()));
    let metrics = s.handle.as_ref().unwrap().metrics_addr.unwrap();
    let r = s
        .client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().unwrap().contains("onboard_jobs_total"));
    // No API on it, not even with a key.
    let r = s
        .client
        .get(format!("http://{metrics}/v1/admin/principals"))
        .bearer_auth(&s.admin)
        .send()
        .unwrap();
    assert_eq!(error_code(r), (404, "not-found".into()));
    let r = s
        .client
        .post(format!("http://{metrics}/v1/admin/principals"))
        .bearer_auth(&s.admin)
        .json(&json!({"name": "x", "role": "advertiser"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    // Switched off, nothing is bound.
    let off = TestServer::start_with(|c| c.metrics_listen = None);
    assert!(off.handle.as_ref().unwrap().metrics_addr.is_none());
}

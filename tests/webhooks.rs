//! Push delivery end to end: the real server over TLS pushes to receivers on
//! 127.0.0.1 that present the server's dev certificate (the server trusts
//! its dev CA through `webhook_ca` and may call loopback through
//! `webhook_allow_private_targets`). The reference receiver is the real
//! `onboard destination listen`; a test receiver answers as told and
//! records what it got.

mod common;

use common::{crm_file, match_emails, segment_of, TestServer};
use onboard_protocol::webhook::{self, SigningSecret};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Persons in the released segment: k = 50 plus the release margin 28 and slack.
const SEGMENT: usize = 200;

/// Server settings of these tests; the CA is added by [`push_server`].
const SETTINGS: &[(&str, &str)] = &[
    ("K", "50"),
    ("MIN_JOB_ROWS", "100"),
    ("MEMBERS_PAGE_LIMIT", "64"),
    ("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true"),
    ("WEBHOOK_RETRY_BASE", "50ms"),
];

/// A server that trusts its own dev CA for webhook receivers (restarted
/// once: the CA exists only after `init`).
fn push_server() -> TestServer {
    push_server_with(&[])
}

/// [`push_server`] with settings beside (or instead of) [`SETTINGS`].
fn push_server_with(extra: &[(&str, &str)]) -> TestServer {
    let settings: Vec<(&str, &str)> = SETTINGS.iter().chain(extra).copied().collect();
    let mut server = TestServer::start(&settings);
    server.stop();
    serve_trusting_ca(&mut server);
    server
}

fn serve_trusting_ca(server: &mut TestServer) {
    let ca = server.ca.to_str().unwrap().to_owned();
    server.serve_with(&[("ONBOARD_WEBHOOK_CA", &ca)]);
}

/// A graph where person `p{i}` has `person{i}@example.com` and the cookie
/// `{destination}-ck-{i}` at each destination.
fn graph(server: &TestServer, persons: usize, destinations: &[&str]) {
    let ids = server.path("ids.csv");
    let cookies = server.path("cookies.csv");
    let mut id_lines = String::from("person_id,kind,value\n");
    let mut cookie_lines = String::from("person_id,destination,cookie_id\n");
    for i in 0..persons {
        id_lines.push_str(&format!("p{i},email,person{i}@example.com\n"));
        for d in destinations {
            cookie_lines.push_str(&format!("p{i},{d},{d}-ck-{i}\n"));
        }
    }
    std::fs::write(&ids, id_lines).unwrap();
    std::fs::write(&cookies, cookie_lines).unwrap();
    server.import(&ids, Some(&cookies));
}

/// Match the segment `Gold` (persons 0..SEGMENT plus strangers) for
/// `destination`; returns the released audience's ID.
fn release(server: &TestServer, advertiser: &str, key: &Path, destination: &str) -> String {
    let crm = crm_file(
        server,
        &format!("crm-{destination}.csv"),
        "Gold",
        0..SEGMENT,
        60,
    );
    let out = match_emails(server, advertiser, key, &crm, destination);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gold = segment_of(&report, "Gold");
    assert_eq!(gold["status"], "delivered", "{report}");
    gold["audience_id"].as_str().unwrap().to_owned()
}

fn advertiser(server: &TestServer) -> (String, PathBuf) {
    let key = server.create("advertiser", "acme");
    let key_file = server.path("acme.key");
    server.ok(&key, &["keygen", "--out", key_file.to_str().unwrap()]);
    (key, key_file)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `destination webhook set`: the secret printed alone on the last line.
fn set_webhook(server: &TestServer, key: &str, port: u16, mode: &str) -> String {
    let url = format!("https://127.0.0.1:{port}/hooks/onboard");
    let out = server.ok(
        key,
        &[
            "destination",
            "webhook",
            "set",
            "--url",
            &url,
            "--mode",
            mode,
        ],
    );
    let secret = out.lines().last().unwrap().trim().to_owned();
    assert!(secret.starts_with("whsec_"), "{out}");
    secret
}

/// A destination `name` with its own key, in a graph of 300 persons, whose
/// endpoint in `mode` is a free port of 127.0.0.1 (nothing listens yet).
struct Endpoint {
    dsp: String,
    port: u16,
    secret: String,
}

fn endpoint(server: &TestServer, name: &str, mode: &str) -> Endpoint {
    let dsp = server.create("destination", name);
    graph(server, 300, &[name]);
    let port = free_port();
    let secret = set_webhook(server, &dsp, port, mode);
    Endpoint { dsp, port, secret }
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
}

/// Wait (bounded) until `f` gives a value.
fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn deliveries(server: &TestServer, key: &str) -> Vec<serde_json::Value> {
    server.json(key, &["destination", "deliveries", "--json"])["deliveries"]
        .as_array()
        .cloned()
        .unwrap()
}

/// `key`'s one message, once it has had `attempts` attempts or more.
fn attempted(server: &TestServer, key: &str, attempts: u64) -> serde_json::Value {
    wait_for("the attempts", Duration::from_secs(60), || {
        let list = deliveries(server, key);
        (list.len() == 1 && list[0]["attempts"].as_u64() >= Some(attempts)).then(|| list[0].clone())
    })
}

/// The reference receiver, as a DSP would run it.
struct Listener {
    child: Child,
    out: PathBuf,
    port: u16,
}

impl Listener {
    fn spawn(server: &TestServer, name: &str, port: u16, secret: &str) -> Self {
        let secret_file = server.path(&format!("{name}.secret"));
        write_private(&secret_file, secret);
        let out = server.path(&format!("{name}-received"));
        let tls = server.data_dir.join("tls");
        let child = Command::new(common::SUITE)
            .args(["client", "destination", "listen", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--secret-file")
            .arg(&secret_file)
            .arg("--out")
            .arg(&out)
            .arg("--tls-cert")
            .arg(tls.join("cert.pem"))
            .arg("--tls-key")
            .arg(tls.join("key.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("the receiver to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Self { child, out, port }
    }

    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.out.join("events.ndjson"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTPS client trusting the server's dev CA.
fn https_client(server: &TestServer) -> reqwest::blocking::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&server.ca).unwrap()).unwrap();
    reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap()
}

/// The server's `/metrics` text.
fn metrics(server: &TestServer) -> String {
    reqwest::blocking::Client::new()
        .get(server.metrics_url())
        .send()
        .unwrap()
        .text()
        .unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// POST a body with the given signing inputs to a receiver; the status.
fn post_signed(
    client: &reqwest::blocking::Client,
    port: u16,
    secret: &SigningSecret,
    id: &str,
    timestamp: u64,
    signed: &[u8],
    sent: &[u8],
) -> u16 {
    client
        .post(format!("https://127.0.0.1:{port}/"))
        .header(webhook::HEADER_ID, id)
        .header(webhook::HEADER_TIMESTAMP, timestamp.to_string())
        .header(
            webhook::HEADER_SIGNATURE,
            secret.sign(id, timestamp, signed),
        )
        .body(sent.to_vec())
        .send()
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn notify_and_members_modes_deliver_exactly_the_released_audience() {
    let server = push_server();
    let (advertiser, key_file) = advertiser(&server);
    let notify = server.create("destination", "dsp-n");
    let members = server.create("destination", "dsp-m");
    graph(&server, 400, &["dsp-n", "dsp-m"]);
    let (port_n, port_m) = (free_port(), free_port());
    let secret_n = set_webhook(&server, &notify, port_n, "notify");
    let secret_m = set_webhook(&server, &members, port_m, "members");
    let listener_n = Listener::spawn(&server, "dsp-n", port_n, &secret_n);
    let listener_m = Listener::spawn(&server, "dsp-m", port_m, &secret_m);

    let audience_n = release(&server, &advertiser, &key_file, "dsp-n");
    let audience_m = release(&server, &advertiser, &key_file, "dsp-m");

    // Members mode: the pushed file is exactly what a pull returns.
    let csv = listener_m.out.join(format!("{audience_m}.csv"));
    let pushed = wait_for("the pushed audience", Duration::from_secs(60), || {
        std::fs::read_to_string(&csv).ok()
    });
    let mut lines = pushed.lines();
    assert_eq!(lines.next(), Some("cookie_id"));
    let pushed: BTreeSet<String> = lines.map(str::to_owned).collect();
    let pulled: BTreeSet<String> = server
        .ok(
            &members,
            &["audiences", "pull", &audience_m, "--page-size", "64"],
        )
        .lines()
        .map(str::to_owned)
        .collect();
    let truth: BTreeSet<String> = (0..SEGMENT).map(|i| format!("dsp-m-ck-{i}")).collect();
    assert_eq!(pushed, truth);
    assert_eq!(pulled, truth);
    let events_m = listener_m.events();
    assert_eq!(
        events_m[0]["type"], "audience.released",
        "released comes first"
    );
    let pages = events_m[0]["data"]["pages"].as_u64().unwrap();
    assert_eq!(pages, SEGMENT.div_ceil(64) as u64);
    let page_numbers: Vec<u64> = events_m[1..]
        .iter()
        .map(|e| e["data"]["page"].as_u64().unwrap())
        .collect();
    assert_eq!(
        page_numbers,
        (1..=pages).collect::<Vec<_>>(),
        "pages in order"
    );

    // Notify mode: one event describing the audience, no members.
    let released = wait_for("the notification", Duration::from_secs(60), || {
        listener_n.events().into_iter().next()
    });
    assert_eq!(released["type"], "audience.released");
    let data = &released["data"];
    assert_eq!(data["audience_id"], audience_n.as_str());
    assert_eq!(data["segment"], "Gold");
    assert_eq!(data["advertiser"], "acme");
    assert_eq!(data["size"], SEGMENT);
    assert_eq!(
        data["members_url"],
        format!("/v1/audiences/{audience_n}/members")
    );
    assert!(!listener_n.out.join(format!("{audience_n}.csv")).exists());
    assert!(
        !std::fs::read_to_string(listener_n.out.join("events.ndjson"))
            .unwrap()
            .contains("-ck-")
    );

    // Every request verified the first time: one attempt each, all delivered.
    for key in [&notify, &members] {
        let list = wait_for(
            "every delivery acknowledged",
            Duration::from_secs(30),
            || {
                let list = deliveries(&server, key);
                list.iter()
                    .all(|d| d["status"] == "delivered")
                    .then_some(list)
            },
        );
        assert!(!list.is_empty());
        for d in &list {
            assert_eq!(d["attempts"], 1, "{d}");
            assert_eq!(d["last_status"], 200, "{d}");
        }
    }
    assert_eq!(deliveries(&server, &members).len() as u64, pages + 1);
    // Pushed pages are audited like pulled ones.
    let audit = server.ok(&server.admin_key, &["admin", "audit", "--json"]);
    assert_eq!(
        audit.matches("audience.push").count() as u64,
        pages,
        "{audit}"
    );

    // The reference receiver refuses a tampered body and an old timestamp.
    let client = https_client(&server);
    let secret = SigningSecret::parse(&secret_n).unwrap();
    let body = br#"{"type":"audience.expired","timestamp":"x","data":{}}"#;
    let now = unix_now();
    let port = listener_n.port;
    assert_eq!(
        post_signed(
            &client,
            port,
            &secret,
            "msg_t1",
            now,
            body,
            b"{\"tampered\":1}"
        ),
        401
    );
    assert_eq!(
        post_signed(&client, port, &secret, "msg_t2", now - 600, body, body),
        401
    );
    let stranger = SigningSecret::generate(&mut rand::thread_rng());
    assert_eq!(
        post_signed(&client, port, &stranger, "msg_t3", now, body, body),
        401
    );
    assert_eq!(
        post_signed(&client, port, &secret, "msg_t4", now, body, body),
        200
    );
    // A second request with a processed webhook-id is acknowledged, not processed again.
    let events = listener_n.events().len();
    assert_eq!(
        post_signed(&client, port, &secret, "msg_t4", now, body, body),
        200
    );
    assert_eq!(listener_n.events().len(), events);

    // No identifier or cookie ID in the server's log lines.
    let log = server.log();
    assert!(
        log.contains("webhook attempt"),
        "the dispatcher logs its attempts"
    );
    for needle in ["-ck-", "@example.com", "whsec_"] {
        assert!(!log.contains(needle), "{needle} in the server log");
    }
}

#[test]
fn a_refresh_pushes_its_counts_and_in_members_mode_exactly_its_changes() {
    let server = push_server();
    let (advertiser, key_file) = advertiser(&server);
    let members = server.create("destination", "dsp-m");
    graph(&server, SEGMENT + 150, &["dsp-m"]);
    let port = free_port();
    let secret = set_webhook(&server, &members, port, "members");
    let listener = Listener::spawn(&server, "dsp-m", port, &secret);
    let audience = release(&server, &advertiser, &key_file, "dsp-m");

    // The same segment with 150 more persons (k = 50): version 2.
    let crm = crm_file(&server, "crm-v2.csv", "Gold", 0..SEGMENT + 150, 60);
    let out = match_emails(&server, &advertiser, &key_file, &crm, "dsp-m");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(segment_of(&report, "Gold")["version"], 2, "{report}");

    let file = listener.out.join(format!("{audience}.v2.changes"));
    let pushed = wait_for("the pushed changes", Duration::from_secs(60), || {
        std::fs::read_to_string(&file).ok()
    });
    let pushed: BTreeSet<String> = pushed.lines().map(str::to_owned).collect();
    let truth: BTreeSet<String> = (SEGMENT..SEGMENT + 150)
        .map(|i| format!("+dsp-m-ck-{i}"))
        .collect();
    assert_eq!(pushed, truth);
    let pulled: BTreeSet<String> = server
        .ok(
            &members,
            &[
                "audiences",
                "pull",
                &audience,
                "--since",
                "1",
                "--page-size",
                "64",
            ],
        )
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(pulled, truth, "pushed and pulled changes agree");
    let refreshed = listener
        .events()
        .into_iter()
        .find(|e| e["type"] == "audience.refreshed")
        .expect("an audience.refreshed event");
    let data = &refreshed["data"];
    assert_eq!(data["audience_id"], audience.as_str());
    assert_eq!(
        (
            data["version"].as_u64(),
            data["added"].as_u64(),
            data["removed"].as_u64()
        ),
        (Some(2), Some(150), Some(0))
    );
    assert_eq!(data["size"], SEGMENT + 150);
    assert_eq!(data["pages"], 150u64.div_ceil(64));
    assert_eq!(
        data["changes_url"],
        format!("/v1/audiences/{audience}/changes?since=1")
    );
}

/// What a test receiver got: each request's headers.
#[derive(Default)]
struct Received {
    ids: Vec<String>,
    /// The path of each request.
    paths: Vec<String>,
    /// (timestamp, signature header, body) of each request.
    signed: Vec<(String, String, Vec<u8>)>,
}

/// How a test receiver answers.
#[derive(Clone, Copy)]
struct Answer {
    /// Requests answered `fail_status` before it answers 200.
    fail_first: usize,
    /// A 3xx comes with `Location: /elsewhere` on the same receiver.
    fail_status: u16,
    /// Time taken before every answer.
    delay: Duration,
}

/// A test receiver: answers as its [`Answer`] says and records what it got.
struct Recorder {
    received: Arc<Mutex<Received>>,
    _server: actix_web::dev::ServerHandle,
}

impl Recorder {
    /// Answers `fail_status` to the first `fail_first` requests, then 200.
    fn start(server: &TestServer, port: u16, fail_first: usize, fail_status: u16) -> Self {
        let answer = Answer {
            fail_first,
            fail_status,
            delay: Duration::ZERO,
        };
        Self::start_answering(server, port, answer)
    }

    fn start_answering(server: &TestServer, port: u16, answer: Answer) -> Self {
        use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
        let tls = server.data_dir.join("tls");
        let config =
            onboard_client::receiver::tls_config(&tls.join("cert.pem"), &tls.join("key.pem"))
                .unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let state = received.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let srv = HttpServer::new(move || {
                    let state = state.clone();
                    App::new().default_service(web::to(
                        move |req: HttpRequest, body: web::Bytes| {
                            let state = state.clone();
                            async move {
                                let header = |n: &str| {
                                    req.headers()
                                        .get(n)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or("")
                                        .to_owned()
                                };
                                let failing = {
                                    let mut r = state.lock().unwrap();
                                    r.ids.push(header(webhook::HEADER_ID));
                                    r.paths.push(req.path().to_owned());
                                    let signed = (
                                        header(webhook::HEADER_TIMESTAMP),
                                        header(webhook::HEADER_SIGNATURE),
                                        body.to_vec(),
                                    );
                                    r.signed.push(signed);
                                    r.ids.len() <= answer.fail_first
                                };
                                actix_web::rt::time::sleep(answer.delay).await;
                                if failing {
                                    let status =
                                        actix_web::http::StatusCode::from_u16(answer.fail_status)
                                            .unwrap();
                                    let mut reply = HttpResponse::build(status);
                                    if status.is_redirection() {
                                        reply.insert_header(("location", "/elsewhere"));
                                    }
                                    reply.finish()
                                } else {
                                    HttpResponse::Ok().finish()
                                }
                            }
                        },
                    ))
                })
                .workers(1)
                .disable_signals()
                .bind_rustls_0_23(("127.0.0.1", port), config)
                .unwrap()
                .run();
                tx.send(srv.handle()).unwrap();
                let _ = srv.await;
            });
        });
        let handle = rx.recv().unwrap();
        Self {
            received,
            _server: handle,
        }
    }

    fn ids(&self) -> Vec<String> {
        self.received.lock().unwrap().ids.clone()
    }

    fn paths(&self) -> Vec<String> {
        self.received.lock().unwrap().paths.clone()
    }
}

#[test]
fn a_receiver_failing_three_times_gets_the_same_message_id_four_times() {
    let server = push_server();
    let (advertiser, key_file) = advertiser(&server);
    let Endpoint { dsp, port, .. } = endpoint(&server, "dsp-r", "notify");
    let recorder = Recorder::start(&server, port, 3, 500);
    release(&server, &advertiser, &key_file, "dsp-r");
    let list = wait_for("the delivery", Duration::from_secs(60), || {
        let list = deliveries(&server, &dsp);
        (list.len() == 1 && list[0]["status"] == "delivered").then_some(list)
    });
    assert_eq!(list[0]["attempts"], 4, "{list:?}");
    assert_eq!(list[0]["last_status"], 200);
    let ids = recorder.ids();
    assert_eq!(ids.len(), 4);
    assert!(
        ids.iter().all(|id| id == &ids[0] && id.starts_with("msg_")),
        "{ids:?}"
    );
    assert_eq!(list[0]["id"], ids[0].as_str());
    let metrics = metrics(&server);
    assert!(
        metrics.contains("onboard_webhook_deliveries_total{outcome=\"retried\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("onboard_webhook_deliveries_total{outcome=\"delivered\"} 1"));
    assert!(metrics.contains("onboard_webhook_outbox_depth 0"));
    assert!(metrics.contains("onboard_webhook_delivery_latency_seconds_count 1"));

    // Redelivery sends it again now, with the same webhook-id.
    let id = ids[0].clone();
    let out = server.ok(&dsp, &["destination", "redeliver", &id]);
    assert!(out.contains(&id), "{out}");
    let again = wait_for("the redelivery", Duration::from_secs(30), || {
        let ids = recorder.ids();
        (ids.len() == 5).then_some(ids)
    });
    assert_eq!(again[4], id);
    let list = wait_for("delivered again", Duration::from_secs(30), || {
        let list = deliveries(&server, &dsp);
        (list[0]["status"] == "delivered" && list[0]["attempts"] == 1).then_some(list)
    });
    assert_eq!(list.len(), 1, "{list:?}");
}

#[test]
fn a_message_failing_every_attempt_is_failed_after_the_tenth() {
    // The whole schedule, 16,993 × the base, in about 17 s.
    let server = push_server_with(&[("WEBHOOK_RETRY_BASE", "1ms")]);
    let (advertiser, key_file) = advertiser(&server);
    let Endpoint { dsp, port, .. } = endpoint(&server, "dsp-f", "notify");
    let recorder = Recorder::start(&server, port, usize::MAX, 503);
    release(&server, &advertiser, &key_file, "dsp-f");
    let m = wait_for("the message failed", Duration::from_secs(120), || {
        let list = deliveries(&server, &dsp);
        (list.len() == 1 && list[0]["status"] == "failed").then(|| list[0].clone())
    });
    assert_eq!(
        (m["attempts"].as_u64(), m["last_status"].as_u64()),
        (Some(10), Some(503)),
        "{m}"
    );
    assert!(m["next_attempt"].is_null(), "{m}");
    let ids = recorder.ids();
    assert_eq!(ids.len(), 10);
    assert!(ids.iter().all(|id| id == &ids[0]));
    let metrics = metrics(&server);
    for line in [
        "onboard_webhook_deliveries_total{outcome=\"retried\"} 9\n",
        "onboard_webhook_deliveries_total{outcome=\"failed\"} 1\n",
        "onboard_webhook_outbox_depth 0\n",
    ] {
        assert!(metrics.contains(line), "{line}{metrics}");
    }
}

#[test]
fn gone_fails_the_message_and_disables_the_endpoint() {
    let server = push_server();
    let (advertiser, key_file) = advertiser(&server);
    let Endpoint { dsp, port, .. } = endpoint(&server, "dsp-g", "members");
    let recorder = Recorder::start(&server, port, usize::MAX, 410);
    release(&server, &advertiser, &key_file, "dsp-g");
    let list = wait_for("every message ended", Duration::from_secs(60), || {
        let list = deliveries(&server, &dsp);
        (!list.is_empty() && list.iter().all(|d| d["status"] == "failed")).then_some(list)
    });
    // The first message got 410; the pages behind it failed without an attempt.
    let first = list.last().unwrap();
    assert_eq!(first["attempts"], 1, "{first}");
    assert_eq!(first["last_status"], 410, "{first}");
    assert!(list.len() > 1);
    for page in &list[..list.len() - 1] {
        assert_eq!(page["attempts"], 0, "{page}");
        assert_eq!(page["last_error"], "endpoint-disabled", "{page}");
    }
    assert_eq!(recorder.ids().len(), 1);
    let shown = server.json(&dsp, &["destination", "webhook", "show", "--json"]);
    assert_eq!(shown["status"], "disabled", "{shown}");
    assert_eq!(shown["disabled_reason"], "gone", "{shown}");
    assert!(metrics(&server).contains("onboard_webhook_deliveries_total{outcome=\"gone\"} 1"));
}

#[test]
fn expiry_and_withdrawal_reach_the_endpoint_as_counts_only() {
    // Audiences live 15 s here and the clean-up looks every second.
    let server = push_server_with(&[("AUDIENCE_TTL", "15s"), ("CLEANUP_INTERVAL", "1s")]);
    let (advertiser, key_file) = advertiser(&server);
    let Endpoint { port, secret, .. } = endpoint(&server, "dsp-w", "notify");
    let listener = Listener::spawn(&server, "dsp-w", port, &secret);
    let audience = release(&server, &advertiser, &key_file, "dsp-w");
    // p3 is in the released segment and has one cookie ID at dsp-w.
    server.ok(&server.admin_key, &["admin", "erase", "--person", "p3"]);

    let events = wait_for("the expiry", Duration::from_secs(60), || {
        let events = listener.events();
        events
            .iter()
            .any(|e| e["type"] == "audience.expired")
            .then_some(events)
    });
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types,
        [
            "audience.released",
            "audience.withdrawn",
            "audience.expired"
        ]
    );
    assert_eq!(
        events[1]["data"],
        serde_json::json!({"audience_id": audience, "removed": 1, "size": SEGMENT - 1})
    );
    let expired = &events[2]["data"];
    assert_eq!(expired["audience_id"], audience.as_str());
    assert_eq!(expired["expired"], events[0]["data"]["expires"]);
    let pushed = std::fs::read_to_string(listener.out.join("events.ndjson")).unwrap();
    for needle in ["-ck-", "@example.com", "p3"] {
        assert!(!pushed.contains(needle), "{needle} pushed: {pushed}");
    }
}

#[test]
fn a_target_allowed_at_registration_is_refused_again_at_each_attempt() {
    let mut server = push_server();
    let (advertiser, key_file) = advertiser(&server);
    let dsp = server.create("destination", "dsp-t");
    graph(&server, 300, &["dsp-t"]);
    let port = free_port();
    // The operator registers it (the secret is printed alike).
    let url = format!("https://127.0.0.1:{port}/hooks/onboard");
    let admin = [
        "admin",
        "destination",
        "webhook",
        "set",
        "dsp-t",
        "--url",
        &url,
    ];
    let out = server.ok(&server.admin_key, &admin);
    assert!(out.lines().last().unwrap().starts_with("whsec_"), "{out}");
    let shown = server.json(&dsp, &["destination", "webhook", "show", "--json"]);
    assert_eq!(shown["url"], url.as_str(), "{shown}");
    let recorder = Recorder::start(&server, port, 0, 200);
    // The operator withdraws the allowance after the loopback endpoint was set.
    server.stop();
    let ca = server.ca.to_str().unwrap().to_owned();
    server.serve_with(&[
        ("ONBOARD_WEBHOOK_CA", &ca),
        ("ONBOARD_WEBHOOK_ALLOW_PRIVATE_TARGETS", "false"),
    ]);
    release(&server, &advertiser, &key_file, "dsp-t");
    let m = attempted(&server, &dsp, 2);
    assert_eq!(m["status"], "pending", "{m}");
    assert_eq!(m["last_error"], "refused-target", "{m}");
    assert!(m["last_status"].is_null());
    assert!(recorder.ids().is_empty(), "nothing reached the receiver");
    assert!(!metrics(&server)
        .contains("onboard_webhook_deliveries_total{outcome=\"refused-target\"} 0\n"));

    // Removing the endpoint fails what is pending, without another attempt.
    server.ok(&dsp, &["destination", "webhook", "remove"]);
    let list = wait_for("the message failed", Duration::from_secs(60), || {
        let list = deliveries(&server, &dsp);
        (list[0]["status"] == "failed").then_some(list)
    });
    assert_eq!(list[0]["last_error"], "no-endpoint", "{list:?}");
    assert!(recorder.ids().is_empty());
}

#[test]
fn redirects_and_slow_answers_are_failed_attempts() {
    let server = push_server_with(&[("WEBHOOK_TIMEOUT", "1s")]);
    let (advertiser, key_file) = advertiser(&server);
    let moved = server.create("destination", "dsp-moved");
    let slow = server.create("destination", "dsp-slow");
    graph(&server, 300, &["dsp-moved", "dsp-slow"]);
    let (port_moved, port_slow) = (free_port(), free_port());
    set_webhook(&server, &moved, port_moved, "notify");
    set_webhook(&server, &slow, port_slow, "notify");
    let redirecting = Recorder::start(&server, port_moved, usize::MAX, 307);
    let answer = Answer {
        fail_first: 0,
        fail_status: 200,
        delay: Duration::from_secs(3),
    };
    let _sleepy = Recorder::start_answering(&server, port_slow, answer);
    release(&server, &advertiser, &key_file, "dsp-moved");
    release(&server, &advertiser, &key_file, "dsp-slow");
    let m = attempted(&server, &moved, 1);
    assert_eq!(
        (m["status"].as_str(), m["last_status"].as_u64()),
        (Some("pending"), Some(307)),
        "{m}"
    );
    let paths = redirecting.paths();
    assert!(!paths.is_empty());
    assert!(
        paths.iter().all(|p| p == "/hooks/onboard"),
        "the redirect was followed: {paths:?}"
    );
    let m = attempted(&server, &slow, 1);
    assert_eq!(
        (m["status"].as_str(), m["last_error"].as_str()),
        (Some("pending"), Some("timeout")),
        "{m}"
    );
}

#[test]
fn a_receiver_certificate_must_chain_to_the_system_roots_or_webhook_ca() {
    // Loopback is allowed, but the dev CA is not among the trusted roots.
    let mut server = TestServer::start(SETTINGS);
    let (advertiser, key_file) = advertiser(&server);
    let Endpoint { dsp, port, .. } = endpoint(&server, "dsp-c", "notify");
    let recorder = Recorder::start(&server, port, 0, 200);
    release(&server, &advertiser, &key_file, "dsp-c");
    let m = attempted(&server, &dsp, 1);
    assert_eq!(m["status"], "pending", "{m}");
    assert!(
        m["last_status"].is_null() && m["last_error"].is_string(),
        "{m}"
    );
    assert!(recorder.ids().is_empty(), "no request got through");

    // The dev CA as the system's trust store (read like OpenSSL reads it).
    server.stop();
    let ca = server.ca.to_str().unwrap().to_owned();
    server.serve_with(&[("SSL_CERT_FILE", &ca)]);
    wait_for("the delivery", Duration::from_secs(60), || {
        let list = deliveries(&server, &dsp);
        (list[0]["status"] == "delivered").then_some(())
    });
    assert_eq!(recorder.ids(), [m["id"].as_str().unwrap()]);
}

#[test]
fn a_message_pending_at_sigkill_is_delivered_after_restart_and_never_again() {
    let mut server = push_server();
    let (advertiser, key_file) = advertiser(&server);
    // Nothing listens yet: the first attempt fails and the message waits.
    let Endpoint { dsp, port, .. } = endpoint(&server, "dsp-k", "notify");
    release(&server, &advertiser, &key_file, "dsp-k");
    let pending = wait_for("a failed first attempt", Duration::from_secs(30), || {
        let list = deliveries(&server, &dsp);
        (list.len() == 1 && list[0]["attempts"].as_u64() >= Some(1)).then_some(list)
    });
    assert_eq!(pending[0]["status"], "pending");
    assert_eq!(pending[0]["last_error"], "connect");
    server.kill();

    let recorder = Recorder::start(&server, port, 0, 200);
    serve_trusting_ca(&mut server);
    wait_for(
        "the delivery after restart",
        Duration::from_secs(60),
        || {
            let list = deliveries(&server, &dsp);
            (list[0]["status"] == "delivered").then_some(())
        },
    );
    assert_eq!(recorder.ids(), [pending[0]["id"].as_str().unwrap()]);

    // Acknowledged: a second restart does not send it again. The dispatcher
    // reads the outbox at start and then every second; give it a few rounds.
    server.stop();
    serve_trusting_ca(&mut server);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(recorder.ids().len(), 1);
}

#[test]
fn a_url_resolving_to_loopback_is_refused_without_the_allow_flag() {
    let server = TestServer::start(&[("K", "50")]);
    let dsp = server.create("destination", "dsp-x");
    for url in [
        "https://127.0.0.1:8443/hook",
        "https://localhost:8443/hook",
        "https://10.0.0.1/hook",
        "https://[::1]/hook",
        "https://169.254.169.254/latest",
    ] {
        let out = server.onboard(&dsp, &["destination", "webhook", "set", "--url", url]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{url}: {stderr}");
        assert!(
            stderr.contains("webhook_allow_private_targets"),
            "{url}: {stderr}"
        );
    }
    let out = server.onboard(
        &dsp,
        &[
            "destination",
            "webhook",
            "set",
            "--url",
            "http://127.0.0.1/hook",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("https"));
    let out = server.onboard(&dsp, &["destination", "webhook", "show"]);
    assert_eq!(out.status.code(), Some(1), "nothing was registered");
    // The operator's command follows the same rule.
    let out = server.onboard(
        &server.admin_key,
        &[
            "admin",
            "destination",
            "webhook",
            "set",
            "dsp-x",
            "--url",
            "https://127.0.0.2/h",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn after_a_rotation_both_secrets_sign_during_the_overlap() {
    let server = push_server();
    let (advertiser, key_file) = advertiser(&server);
    let Endpoint {
        dsp,
        port,
        secret: old,
    } = endpoint(&server, "dsp-s", "notify");
    let out = server.ok(&dsp, &["destination", "webhook", "rotate-secret"]);
    let new = out.lines().last().unwrap().trim().to_owned();
    assert!(new.starts_with("whsec_") && new != old, "{out}");
    let shown = server.json(&dsp, &["destination", "webhook", "show", "--json"]);
    let secrets = shown["secrets"].as_array().unwrap();
    assert_eq!(secrets.len(), 2, "{shown}");
    assert!(
        secrets[0]["expires"].is_null() && secrets[1]["expires"].is_string(),
        "{shown}"
    );
    assert!(
        !shown.to_string().contains("whsec_"),
        "show never prints a secret"
    );

    let recorder = Recorder::start(&server, port, 0, 200);
    release(&server, &advertiser, &key_file, "dsp-s");
    wait_for("the delivery", Duration::from_secs(60), || {
        recorder.ids().first().cloned()
    });
    let (id, (timestamp, header, body)) = {
        let r = recorder.received.lock().unwrap();
        (r.ids[0].clone(), r.signed[0].clone())
    };
    assert_eq!(header.split(' ').count(), 2, "{header}");
    // Each secret alone verifies the request (a receiver may hold either).
    for secret in [&old, &new] {
        let secrets = [SigningSecret::parse(secret).unwrap()];
        let headers = webhook::SignedHeaders {
            id: Some(&id),
            timestamp: Some(&timestamp),
            signature: Some(&header),
        };
        assert_eq!(
            webhook::verify(&secrets, headers, &body, unix_now(), 300),
            Ok(id.as_str())
        );
    }
}

/// The latency histogram's sum and count from `/metrics`.
fn latency_totals(server: &TestServer) -> (f64, u64) {
    let text = metrics(server);
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    (
        value("onboard_webhook_delivery_latency_seconds_sum "),
        value("onboard_webhook_delivery_latency_seconds_count ") as u64,
    )
}

/// Release `persons` of segment `segment` for `destination` and wait until
/// the server has acknowledged `messages` more deliveries; the sum of those
/// messages' enqueue-to-acknowledgement latencies, in seconds.
fn timed_release(
    server: &TestServer,
    advertiser: (&str, &Path),
    destination: &str,
    segment: &str,
    persons: std::ops::Range<usize>,
    messages: u64,
) -> f64 {
    let before = latency_totals(server);
    let crm = crm_file(server, &format!("crm-{segment}.csv"), segment, persons, 100);
    let out = match_emails(server, advertiser.0, advertiser.1, &crm, destination);
    assert!(out.status.success());
    let after = wait_for("the acknowledgements", Duration::from_secs(600), || {
        let now = latency_totals(server);
        (now.1 >= before.1 + messages).then_some(now)
    });
    assert_eq!(after.1, before.1 + messages, "no other deliveries");
    after.0 - before.0
}

/// Not a test: the figures of README.md's push-delivery note (release build:
/// `cargo test --release --test webhooks measure -- --ignored --nocapture`).
///
/// Latency: `onboard_webhook_delivery_latency_seconds` (from the message's
/// enqueueing in the finish's transaction to the receiver's 2xx) around
/// three notify releases and one `members` release of 10,000 cookie IDs in
/// one page. Throughput: five destinations' members pushes in pages of 10
/// are held in the outbox (nothing listens at first; a retry base of an hour
/// keeps them waiting), then released to reference receivers by redelivering
/// each head: four destinations side by side (4 × 251 messages), then one
/// alone (991 messages), timed from the first redelivery to the last file.
#[test]
#[ignore]
fn measure_push_latency_and_throughput() {
    let server = push_server();
    let (advertiser_key, key_file) = advertiser(&server);
    let adv = (advertiser_key.as_str(), key_file.as_path());
    let notify = server.create("destination", "dsp-n");
    graph(&server, 900, &["dsp-n"]);
    let port_n = free_port();
    let secret_n = set_webhook(&server, &notify, port_n, "notify");
    let _n = Listener::spawn(&server, "dsp-n", port_n, &secret_n);
    for i in 0..3 {
        let latency = timed_release(
            &server,
            adv,
            "dsp-n",
            &format!("N{i}"),
            i * 300..(i + 1) * 300,
            1,
        );
        println!(
            "notify: audience.released acknowledged {:.0} ms after enqueueing",
            latency * 1000.0
        );
    }
    // One members page of 10,000 (members_page_limit is 64 here: raise it).
    drop(server);
    let server = push_server_with(&[("MEMBERS_PAGE_LIMIT", "10000")]);
    let (advertiser_key, key_file) = advertiser(&server);
    let adv = (advertiser_key.as_str(), key_file.as_path());
    let members = server.create("destination", "dsp-m");
    graph(&server, 10_000, &["dsp-m"]);
    let port_m = free_port();
    let secret_m = set_webhook(&server, &members, port_m, "members");
    let listener_m = Listener::spawn(&server, "dsp-m", port_m, &secret_m);
    let latencies = timed_release(&server, adv, "dsp-m", "Gold", 0..10_000, 2);
    let files = std::fs::read_dir(&listener_m.out).unwrap().count();
    // The page is acknowledged after the notification: its latency is
    // at least half the sum and at most all of it.
    println!(
        "members: audience.released and one page of 10,000 cookie IDs, latencies summing to {:.0} ms ({files} files written)",
        latencies * 1000.0
    );
    drop(server);

    let server = push_server_with(&[
        ("MEMBERS_PAGE_LIMIT", "10"),
        ("WEBHOOK_RETRY_BASE", "3600s"),
    ]);
    let (advertiser_key, key_file) = advertiser(&server);
    let names = ["dsp-0", "dsp-1", "dsp-2", "dsp-3", "dsp-solo"];
    let keys: Vec<String> = names
        .iter()
        .map(|n| server.create("destination", n))
        .collect();
    graph(&server, 10_000, &names);
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let secrets: Vec<String> = keys
        .iter()
        .zip(&ports)
        .map(|(k, p)| set_webhook(&server, k, *p, "members"))
        .collect();
    let mut audiences = Vec::new();
    for (i, name) in names.iter().enumerate() {
        // The solo audience's 991 messages fit one deliveries listing.
        let persons = if i < 4 { 2_500 } else { 9_900 };
        let crm = crm_file(&server, &format!("crm-{name}.csv"), "Gold", 0..persons, 100);
        let out = match_emails(&server, &advertiser_key, &key_file, &crm, name);
        assert!(out.status.success());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        audiences.push(
            segment_of(&report, "Gold")["audience_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Every head failed once (nothing listens) and waits an hour.
    let heads: Vec<String> = keys
        .iter()
        .map(|k| {
            wait_for("a failed head", Duration::from_secs(60), || {
                let all = ["destination", "deliveries", "--json", "--limit", "1000"];
                server.json(k, &all)["deliveries"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|d| d["event"] == "audience.released" && d["attempts"] == 1)
                    .map(|d| d["id"].as_str().unwrap().to_owned())
            })
        })
        .collect();
    let listeners: Vec<Listener> = names
        .iter()
        .zip(&ports)
        .zip(&secrets)
        .map(|((n, p), s)| Listener::spawn(&server, n, *p, s))
        .collect();
    for group in [0..4, 4..5] {
        let started = Instant::now();
        for i in group.clone() {
            server.ok(&keys[i], &["destination", "redeliver", &heads[i]]);
        }
        let files: Vec<PathBuf> = group
            .clone()
            .map(|i| listeners[i].out.join(format!("{}.csv", audiences[i])))
            .collect();
        wait_for("the pushed files", Duration::from_secs(600), || {
            files.iter().all(|f| f.exists()).then_some(())
        });
        let elapsed = started.elapsed().as_secs_f64();
        let messages: usize = group.clone().map(|i| listeners[i].events().len()).sum();
        println!(
            "{} destination(s) side by side: {messages} messages in {elapsed:.2} s, {:.0} messages/s",
            group.len(),
            messages as f64 / elapsed
        );
    }
}

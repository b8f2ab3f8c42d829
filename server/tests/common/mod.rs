//! Test harness: a real server over real TLS on 127.0.0.1:0 in a temp data
//! dir, a blocking reqwest client trusting the dev CA, and an advertiser
//! played with the protocol crate's `hash_and_blind` / `reblind`.
#![allow(dead_code)]

use onboard_protocol::wire::{DigestBatch, DigestEntry, PointPage, RecordBatch};
use onboard_protocol::{blind, Digest, MatchKind, SecretKey};
use onboard_server::{Config, InitOptions, ServerHandle};
use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use std::path::PathBuf;

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub handle: Option<ServerHandle>,
    pub base: String,
    pub client: Client,
    pub admin: String,
    pub config: Config,
}

pub fn test_config(data_dir: PathBuf) -> Config {
    Config {
        data_dir,
        min_job_rows: 100,
        page_size: 128,
        max_frame_body: 256 * 1024,
        workers: 2,
        metrics_listen: None,
        ..Config::default()
    }
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let out = onboard_server::init(&InitOptions {
            data_dir: data.clone(),
            dev_tls: true,
            admin_key_out: None,
            database_url: None,
        })
        .unwrap();
        let mut config = test_config(data);
        tweak(&mut config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let handle = onboard_server::start(config.clone(), listener).unwrap();
        let ca = std::fs::read(out.ca_cert.unwrap()).unwrap();
        let client = Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .unwrap();
        let base = format!("https://127.0.0.1:{}", handle.addr.port());
        TestServer {
            dir,
            handle: Some(handle),
            base,
            client,
            admin: out.admin_api_key,
            config,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
    }

    pub fn get(&self, path: &str, key: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .unwrap()
    }

    pub fn post(&self, path: &str, key: &str, body: Value) -> Response {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .unwrap()
    }

    pub fn put_json(&self, path: &str, key: &str, body: Value) -> Response {
        self.client
            .put(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .unwrap()
    }

    pub fn put_bytes(&self, path: &str, key: &str, body: Vec<u8>) -> Response {
        self.client
            .put(format!("{}{path}", self.base))
            .bearer_auth(key)
            .header("Content-Type", "application/octet-stream")
            .body(body)
            .send()
            .unwrap()
    }

    pub fn post_bytes(&self, path: &str, key: &str, body: Vec<u8>) -> Response {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .header("Content-Type", "application/octet-stream")
            .body(body)
            .send()
            .unwrap()
    }

    pub fn principal(&self, name: &str, role: &str) -> String {
        let r = self.post(
            "/v1/admin/principals",
            &self.admin,
            json!({"name": name, "role": role, "webhook_url": null}),
        );
        assert_eq!(r.status(), 201);
        r.json::<Value>().unwrap()["api_key"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Import a graph: per person its digests, plus cookie rows.
    pub fn import(&self, persons: &[Person]) -> Value {
        let r = self.post("/v1/admin/graph/imports", &self.admin, json!({}));
        assert_eq!(r.status(), 201);
        let id = r.json::<Value>().unwrap()["import_id"]
            .as_str()
            .unwrap()
            .to_string();
        let entries: Vec<DigestEntry> = persons
            .iter()
            .flat_map(|p| {
                p.ids.iter().map(|(kind, d)| DigestEntry {
                    person: p.id.clone(),
                    kind: *kind,
                    digest: *d,
                })
            })
            .collect();
        let mut id_batches = 0;
        for (n, chunk) in entries.chunks(1000).enumerate() {
            let frame = DigestBatch {
                batch_no: n as u32,
                entries: chunk.to_vec(),
            }
            .encode()
            .unwrap();
            let r = self.put_bytes(
                &format!("/v1/admin/graph/imports/{id}/identifiers/{n}"),
                &self.admin,
                frame,
            );
            assert_eq!(r.status(), 200, "{}", r.text().unwrap());
            id_batches += 1;
        }
        let cookies: Vec<Value> = persons
            .iter()
            .flat_map(|p| {
                p.cookies
                    .iter()
                    .map(|(d, c)| json!({"person": p.id, "destination": d, "cookie": c}))
            })
            .collect();
        let mut cookie_batches = 0;
        for (n, chunk) in cookies.chunks(1000).enumerate() {
            let r = self.put_json(
                &format!("/v1/admin/graph/imports/{id}/cookies/{n}"),
                &self.admin,
                json!({"cookies": chunk}),
            );
            assert_eq!(r.status(), 200, "{}", r.text().unwrap());
            cookie_batches += 1;
        }
        let r = self.post(
            &format!("/v1/admin/graph/imports/{id}/commit"),
            &self.admin,
            json!({"identifier_batches": id_batches, "cookie_batches": cookie_batches}),
        );
        assert_eq!(r.status(), 200);
        r.json().unwrap()
    }

    /// Create a job and do its graph pass with key `a`; returns (job id, create answer).
    pub fn create_job_and_pass(
        &self,
        key: &str,
        a: &SecretKey,
        destination: &str,
        kinds: &[&str],
    ) -> (String, Value) {
        let r = self.post(
            "/v1/jobs",
            key,
            json!({"destination": destination, "kinds": kinds, "key_fingerprint": a.fingerprint().to_string()}),
        );
        assert_eq!(r.status(), 201);
        let created: Value = r.json().unwrap();
        let job = created["job_id"].as_str().unwrap().to_string();
        for (kind, info) in created["graph_pass"].as_object().unwrap() {
            for page in 0..info["pages"].as_u64().unwrap() {
                let r = self.get(&format!("/v1/jobs/{job}/graph/{kind}/{page}"), key);
                assert_eq!(r.status(), 200);
                let p = PointPage::decode(&r.bytes().unwrap()).unwrap();
                let back = PointPage {
                    kind: p.kind,
                    page_no: p.page_no,
                    points: blind::reblind(a, &p.points).unwrap(),
                };
                let r = self.put_bytes(
                    &format!("/v1/jobs/{job}/graph/{kind}/{page}"),
                    key,
                    back.encode(),
                );
                assert_eq!(r.status(), 200);
            }
        }
        (job, created)
    }

    /// Upload records blinded with `a` in batches of 300; returns the batch count.
    pub fn upload(&self, key: &str, job: &str, a: &SecretKey, records: &[Record]) -> u32 {
        let mut n = 0;
        for chunk in records.chunks(300) {
            let frame = record_batch(n, a, chunk);
            let r = self.put_bytes(&format!("/v1/jobs/{job}/batches/{n}"), key, frame);
            assert_eq!(r.status(), 200, "{}", r.text().unwrap());
            n += 1;
        }
        n
    }

    pub fn finish(&self, key: &str, job: &str, batches: u32) -> Response {
        self.post(
            &format!("/v1/jobs/{job}/finish"),
            key,
            json!({"batches": batches}),
        )
    }

    /// A full job: pass, upload, finish; returns the report.
    pub fn run_job(
        &self,
        key: &str,
        a: &SecretKey,
        destination: &str,
        records: &[Record],
    ) -> Value {
        let (job, _) = self.create_job_and_pass(key, a, destination, &["email", "phone"]);
        let n = self.upload(key, &job, a, records);
        let r = self.finish(key, &job, n);
        assert_eq!(r.status(), 200);
        r.json().unwrap()
    }

    /// Pull every member of an audience, page by page.
    pub fn pull(&self, key: &str, audience: &str, limit: usize, csv: bool) -> Vec<String> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/v1/audiences/{audience}/members?limit={limit}",
                self.base
            );
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let r = self
                .client
                .get(url)
                .bearer_auth(key)
                .header(
                    "Accept",
                    if csv {
                        "text/csv"
                    } else {
                        "application/x-ndjson"
                    },
                )
                .send()
                .unwrap();
            assert_eq!(r.status(), 200);
            cursor = r
                .headers()
                .get("Onboard-Next-Cursor")
                .map(|v| v.to_str().unwrap().to_string());
            let text = r.text().unwrap();
            if csv {
                let mut lines = text.lines();
                assert_eq!(lines.next(), Some("cookie_id"));
                out.extend(lines.map(str::to_string));
            } else {
                for line in text.lines() {
                    let v: Value = serde_json::from_str(line).unwrap();
                    out.push(v["cookie"].as_str().unwrap().to_string());
                }
            }
            if cursor.is_none() {
                return out;
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn error_code(r: Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().unwrap();
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

#[derive(Clone, Debug)]
pub struct Person {
    pub id: String,
    pub ids: Vec<(MatchKind, Digest)>,
    pub cookies: Vec<(String, String)>,
}

pub fn email(i: usize) -> String {
    format!("user{i}@example.com")
}

pub fn phone(i: usize) -> String {
    format!("+3361{i:07}")
}

/// `n` persons, each with an email and a phone; cookies at dsp-a (two for
/// every tenth person) and at dsp-b for even persons.
pub fn synthetic_graph(n: usize) -> Vec<Person> {
    (0..n)
        .map(|i| {
            let mut cookies = vec![("dsp-a".to_string(), format!("a-{i}"))];
            if i % 10 == 0 {
                cookies.push(("dsp-a".to_string(), format!("a-{i}-second")));
            }
            if i % 2 == 0 {
                cookies.push(("dsp-b".to_string(), format!("b-{i}")));
            }
            Person {
                id: format!("p{i}"),
                ids: vec![
                    (MatchKind::Email, Digest::of(&email(i))),
                    (MatchKind::Phone, Digest::of(&phone(i))),
                ],
                cookies,
            }
        })
        .collect()
}

/// The dsp-a cookies of persons `range`.
pub fn dsp_a_cookies(range: impl IntoIterator<Item = usize>) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for i in range {
        out.insert(format!("a-{i}"));
        if i % 10 == 0 {
            out.insert(format!("a-{i}-second"));
        }
    }
    out
}

#[derive(Clone, Debug)]
pub struct Record {
    pub segments: Vec<String>,
    pub ids: Vec<(MatchKind, Digest)>,
}

pub fn rec(segment: &str, ids: Vec<(MatchKind, Digest)>) -> Record {
    Record {
        segments: vec![segment.to_string()],
        ids,
    }
}

pub fn record_batch(batch_no: u32, a: &SecretKey, records: &[Record]) -> Vec<u8> {
    let mut labels: Vec<String> = records.iter().flat_map(|r| r.segments.clone()).collect();
    labels.sort();
    labels.dedup();
    let mut batch = RecordBatch::new(batch_no, labels.clone()).unwrap();
    for r in records {
        let segs: Vec<u16> = r
            .segments
            .iter()
            .map(|s| labels.iter().position(|l| l == s).unwrap() as u16)
            .collect();
        let points = blind::hash_and_blind(a, &r.ids);
        batch
            .push(&segs, r.ids.iter().map(|(k, _)| *k).zip(points))
            .unwrap();
    }
    batch.encode()
}

//! Raw HTTP against a test server's API, for the tests that go below the
//! command line (hostile requests, requests split between two servers).

use super::TestServer;
use onboard_protocol::wire::RecordBatch;
use onboard_protocol::{MatchKind, PointBytes};
use reqwest::blocking::{Client, RequestBuilder};
use serde_json::Value;

pub struct Http {
    client: Client,
    pub base: String,
}

impl Http {
    pub fn new(server: &TestServer) -> Self {
        let pem = std::fs::read(&server.ca).unwrap();
        let client = Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        Self {
            client,
            base: server.url.clone(),
        }
    }

    pub fn req(&self, method: &str, path: &str, key: Option<&str>) -> RequestBuilder {
        let url = format!("{}{path}", self.base);
        let b = self.client.request(method.parse().unwrap(), url);
        match key {
            Some(k) => b.bearer_auth(k),
            None => b,
        }
    }

    pub fn json(&self, method: &str, path: &str, key: &str, body: Value) -> (u16, Value) {
        answer(self.req(method, path, Some(key)).json(&body))
    }

    pub fn get(&self, path: &str, key: &str) -> (u16, Value) {
        answer(self.req("GET", path, Some(key)))
    }

    /// GET of a binary body (a graph-pass page).
    pub fn get_bytes(&self, path: &str, key: &str) -> (u16, Vec<u8>) {
        let resp = self.req("GET", path, Some(key)).send().expect("request");
        let status = resp.status().as_u16();
        (status, resp.bytes().map(|b| b.to_vec()).unwrap_or_default())
    }

    pub fn frame(&self, path: &str, key: &str, body: Vec<u8>) -> (u16, Value) {
        answer(
            self.req("PUT", path, Some(key))
                .header("content-type", "application/octet-stream")
                .body(body),
        )
    }
}

pub fn answer(b: RequestBuilder) -> (u16, Value) {
    let resp = b.send().expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A record batch of email points, every record in segment `Gold`.
pub fn batch(batch_no: u32, points: &[PointBytes]) -> Vec<u8> {
    let mut b = RecordBatch::new(batch_no, vec!["Gold".into()]).unwrap();
    for p in points {
        b.push(&[0], [(MatchKind::Email, *p)]).unwrap();
    }
    b.encode()
}

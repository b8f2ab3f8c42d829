//! The attacks of the privacy review, each done through the real CLI (or
//! the real HTTP API a destination uses) against the real server over TLS.
//! Every test compares what an attacker sees when its target is in the graph
//! with what it sees when the target is not: the two must be the same. Each
//! one failed on the code before the fix it guards (see
//! docs/threat-model.md).

mod common;

use common::{match_emails, simple_graph, TestServer};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

const DSP: &str = "dsp-alpha";
/// A person of the graph (which holds person0 … person299).
const IN_GRAPH: &str = "person250@example.com";
/// Nobody in the graph.
const NOT_IN_GRAPH: &str = "nobody@elsewhere.example.org";

/// A server with a 300-person graph and two advertisers, one probing a
/// target in the graph and one a target not in it. ε is large so the noise
/// on counts far from a rounding boundary is (almost surely) zero, and the
/// comparison shows what the rules themselves reveal.
struct TwoProbes {
    server: TestServer,
    probes: [(String, PathBuf, &'static str); 2],
}

impl TwoProbes {
    fn start() -> Self {
        let server = TestServer::start(&[
            ("K", "50"),
            ("MIN_JOB_ROWS", "50"),
            ("EPSILON", "2"),
            ("PRIVACY_BUDGET", "1000"),
        ]);
        server.create("destination", DSP);
        simple_graph(&server, 300, DSP);
        let probe = |name: &str, target: &'static str| {
            let api_key = server.create("advertiser", name);
            let key = server.path(&format!("{name}.key"));
            server.ok(&api_key, &["keygen", "--out", key.to_str().unwrap()]);
            (api_key, key, target)
        };
        let probes = [
            probe("in-graph", IN_GRAPH),
            probe("not-in-graph", NOT_IN_GRAPH),
        ];
        Self { server, probes }
    }

    /// Run `match` for both advertisers on the CRM that `crm` writes for
    /// their target; the two outputs.
    fn both(&self, name: &str, crm: impl Fn(&str) -> String) -> Vec<std::process::Output> {
        self.probes
            .iter()
            .map(|(api_key, key, target)| {
                let path = self.server.path(&format!("{name}-{target}.csv"));
                std::fs::write(&path, crm(target)).unwrap();
                match_emails(&self.server, api_key, key, &path, DSP)
            })
            .collect()
    }
}

fn report(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "match failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("match --json prints JSON");
    out["report"].clone()
}

/// What an advertiser sees of a report, minus the IDs that differ anyway.
fn visible(report: &serde_json::Value) -> serde_json::Value {
    let segments: BTreeMap<String, serde_json::Value> = report["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| {
            let name = s["name"].as_str().unwrap_or_default().to_string();
            let seen = serde_json::json!({
                "rows_uploaded": s["rows_uploaded"],
                "matched": s["matched"],
                "status": s["status"],
                "reason": s["reason"],
            });
            (name, seen)
        })
        .collect();
    serde_json::json!({
        "rows_uploaded": report["rows_uploaded"],
        "identifiers": report["identifiers"],
        "match_rate": report["match_rate"],
        "segments": segments,
    })
}

/// A failed command's message without the job ID in it.
fn error_text(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    text.split_whitespace()
        .map(|w| if w.contains("j-") { "JOB" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `n` rows of emails unknown to the graph, in `segment`.
fn strangers(n: usize, segment: &str) -> String {
    let mut text = String::new();
    for i in 0..n {
        let _ = writeln!(text, "stranger{i}@elsewhere.example.org,{segment}");
    }
    text
}

#[test]
fn one_email_under_many_labels_reads_the_same_in_or_out_of_the_graph() {
    let t = TwoProbes::start();

    // The original attack: 1,000 rows of one email, each under its own
    // label. Before the fix the match rate read "> 85%" for a target in the
    // graph and "0%" for one outside it.
    let outs = t.both("labels", |target| {
        let mut text = String::from("email,segment\n");
        for i in 0..1000 {
            let _ = writeln!(text, "{target},L{i}");
        }
        text
    });
    assert!(
        outs.iter().all(|o| !o.status.success()),
        "one distinct identifier is below the job minimum"
    );
    assert_eq!(outs[0].status.code(), outs[1].status.code());
    assert_eq!(error_text(&outs[0]), error_text(&outs[1]));

    // The same probe carried past the minimum by 1,000 strangers, under as
    // many labels as a job may have.
    let outs = t.both("labels-padded", |target| {
        let mut text = String::from("email,segment\n");
        for i in 0..40 {
            let _ = writeln!(text, "{target},L{i}");
        }
        text + &strangers(1000, "Filler")
    });
    let (a, b) = (report(&outs[0]), report(&outs[1]));
    assert_eq!(a["identifiers"], 1001, "{a}");
    assert_eq!(visible(&a), visible(&b), "{a}\n{b}");
    assert_eq!(a["match_rate"], "0%", "{a}");
}

#[test]
fn base_and_base_plus_target_read_the_same_in_or_out_of_the_graph() {
    let t = TwoProbes::start();
    // Segment `Base` is persons 0..120; `BasePlus` is the same plus the
    // target. Before the fix, an identical audience was released while a
    // difference of one was withheld: the statuses told the target apart.
    let outs = t.both("base", |target| {
        let mut text = String::from("email,segment\n");
        for i in 0..120 {
            let _ = writeln!(text, "person{i}@example.com,Base|BasePlus");
        }
        let _ = writeln!(text, "{target},BasePlus");
        text
    });
    let (a, b) = (report(&outs[0]), report(&outs[1]));
    let statuses = |r: &serde_json::Value| -> Vec<(String, String, String)> {
        r["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["status"].as_str().unwrap().to_string(),
                    s["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    assert_eq!(statuses(&a), statuses(&b), "{a}\n{b}");
    assert_eq!(
        statuses(&a),
        [
            ("Base".into(), "delivered".into(), String::new()),
            (
                "BasePlus".into(),
                "withheld".into(),
                "too-close-to-earlier-audience".into()
            ),
        ]
    );

    // The same probe in a later job, against the released `Base`.
    let outs = t.both("later", |target| {
        let mut text = String::from("email,segment\n");
        for i in 0..120 {
            let _ = writeln!(text, "person{i}@example.com,Later");
        }
        let _ = writeln!(text, "{target},Later");
        text
    });
    let (a, b) = (report(&outs[0]), report(&outs[1]));
    assert_eq!(statuses(&a), statuses(&b), "{a}\n{b}");
    assert_eq!(statuses(&a)[0].1, "withheld", "{a}");

    // The destination received the two `Base` audiences only.
    let pulled = t
        .server
        .audiences(&t.server.create("destination", "dsp-other"));
    assert!(pulled.is_empty(), "another destination sees nothing");
}

/// Every cursor of an audience, paging one cookie at a time through the
/// destination's HTTP API.
fn cursors(server: &TestServer, api_key: &str, audience: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let pem = std::fs::read(&server.ca).unwrap();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _page in 0..1000 {
        let mut url = format!("{}/v1/audiences/{audience}/members?limit=1", server.url);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let resp = client.get(&url).bearer_auth(api_key).send().unwrap();
        assert_eq!(resp.status(), 200);
        let Some(next) = resp.headers().get("Onboard-Next-Cursor") else {
            return out;
        };
        let next = next.to_str().unwrap().to_string();
        out.push(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&next)
                .expect("cursors are base64url"),
        );
        cursor = Some(next);
    }
    panic!("more pages than members");
}

#[test]
fn members_cursors_of_two_audiences_share_no_value() {
    // Quiet logs: hundreds of requests would fill the unread stderr pipe.
    let server = TestServer::start(&[("K", "50"), ("MIN_JOB_ROWS", "50"), ("LOG", "warn")]);
    let destination = server.create("destination", DSP);
    simple_graph(&server, 300, DSP);
    let advertiser = server.create("advertiser", "acme");
    let key = server.path("acme.key");
    server.ok(&advertiser, &["keygen", "--out", key.to_str().unwrap()]);
    // S1 = persons 0..120 and S2 = persons 60..250 share 60 persons and
    // differ by 190 (both released).
    let crm = server.path("two.csv");
    let mut text = String::from("email,segment\n");
    for i in 0..250 {
        let segments = match i {
            0..60 => "S1",
            60..120 => "S1|S2",
            _ => "S2",
        };
        let _ = writeln!(text, "person{i}@example.com,{segments}");
    }
    std::fs::write(&crm, text).unwrap();
    let r = report(&match_emails(&server, &advertiser, &key, &crm, DSP));
    let ids: Vec<String> = ["S1", "S2"]
        .iter()
        .map(|s| {
            common::segment_of(&r, s)["audience_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let (c1, c2) = (
        cursors(&server, &destination, &ids[0]),
        cursors(&server, &destination, &ids[1]),
    );
    assert_eq!((c1.len(), c2.len()), (119, 189), "one page per cookie");
    // Before the fix each cursor held the person's pseudonym in clear: the
    // 60 shared persons' cursors had 16-byte runs in common.
    let windows = |cs: &[Vec<u8>]| -> std::collections::HashSet<Vec<u8>> {
        cs.iter()
            .flat_map(|c| c.windows(16).map(<[u8]>::to_vec))
            .collect()
    };
    let (w1, w2) = (windows(&c1), windows(&c2));
    assert!(!w1.is_empty() && !w2.is_empty());
    assert!(
        w1.is_disjoint(&w2),
        "a 16-byte value repeats across audiences"
    );
    // And the listed size counts cookies, as the pull shows them.
    for a in server.audiences(&destination) {
        assert_eq!(a["size"], if a["segment"] == "S1" { 120 } else { 190 });
    }
}

#[test]
fn copies_of_a_segment_pay_for_each_copy() {
    // ε 1/2 per released value; budget 67 = 1.5 + 64.5 + 1 (see below).
    let server = TestServer::start(&[
        ("K", "50"),
        ("MIN_JOB_ROWS", "50"),
        ("EPSILON", "1/2"),
        ("PRIVACY_BUDGET", "67"),
        ("MAX_SEGMENTS_PER_JOB", "64"),
    ]);
    server.create("destination", DSP);
    simple_graph(&server, 300, DSP);
    let advertiser = server.create("advertiser", "acme");
    let key = server.path("acme.key");
    server.ok(&advertiser, &["keygen", "--out", key.to_str().unwrap()]);
    let crm = |name: &str, segments: &str| {
        let path = server.path(name);
        let mut text = String::from("email,segment\n");
        for i in 0..120 {
            let _ = writeln!(text, "person{i}@example.com,{segments}");
        }
        std::fs::write(&path, text).unwrap();
        path
    };
    let spent = |path: &PathBuf| -> f64 {
        let r = report(&match_emails(&server, &advertiser, &key, path, DSP));
        r["epsilon_spent"].as_f64().expect("epsilon_spent")
    };
    let copies: Vec<String> = (0..64).map(|i| format!("C{i}")).collect();
    let one = spent(&crm("one.csv", "S"));
    let many = spent(&crm("copies.csv", &copies.join("|")));
    // Per segment 2 values (count, difference), per job 1 (match rate).
    let rate = 0.5;
    assert_eq!(one, 1.5);
    assert_eq!(many - rate, 64.0 * (one - rate), "64 copies pay 64 times");
    // The charge is real: 66 of 67 spent, a third job (1.5) is refused.
    let out = match_emails(&server, &advertiser, &key, &crm("third.csv", "T"), DSP);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("budget"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

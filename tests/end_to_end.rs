//! The three users end to end, through the real command lines against the
//! real server over TLS: the operator imports a synthetic graph, the
//! advertiser matches a CRM export, each destination pulls what it may.
//! Every delivered audience is compared with the generator's ground truth.

mod common;

use common::TestServer;
use onboard_suite::synth::{self, Graph, DESTINATIONS};
use std::collections::BTreeSet;

const K: usize = 50;

#[test]
fn operator_advertiser_and_destination_end_to_end() {
    let server = TestServer::start(&[("K", "50"), ("MIN_JOB_ROWS", "500")]);
    let admin = server.admin_key.clone();

    // Operator: principals and the graph.
    let advertiser = server.create("advertiser", "acme-retail");
    let alpha = server.create("destination", DESTINATIONS[0]);
    let beta = server.create("destination", DESTINATIONS[1]);
    let graph = Graph::generate(3_000, 11);
    let ids = server.path("ids.csv");
    let cookies = server.path("cookies.csv");
    graph.write_identifiers(&ids).unwrap();
    graph.write_cookies(&cookies).unwrap();
    server.import(&ids, Some(&cookies));
    let stats = server.json(&admin, &["admin", "stats", "--json"]);
    assert_eq!(stats["persons"], 3_000, "{stats}");
    let per_kind = &stats["identifiers"];
    let total: u64 = ["email", "phone", "maid"]
        .iter()
        .map(|k| per_kind[k].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total as usize, graph.identifier_count(), "{stats}");

    // Advertiser: a `;`-separated export with a BOM, French national phone numbers.
    let crm = server.path("crm.csv");
    let truth = synth::write_crm(&graph, &synth::demo_segments(2_500), &crm, 12).unwrap();
    let key = server.path("acme.key");
    server.ok(&advertiser, &["keygen", "--out", key.to_str().unwrap()]);
    let report = server.json(
        &advertiser,
        &[
            "match",
            "--input",
            crm.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--destination",
            DESTINATIONS[0],
            "--email-col",
            "email",
            "--phone-col",
            "phone",
            "--maid-col",
            "mobile_ad_id",
            "--segment-col",
            "segment",
            "--consent-col",
            "consent",
            "--json",
        ],
    );

    // Destination: every audience equals the ground truth; withheld ones are below k.
    let listed = server.audiences(&alpha);
    for segment in truth.matched.keys() {
        let persons = truth.persons_with_cookies(&graph, segment, DESTINATIONS[0]);
        let audience = listed.iter().find(|a| a["segment"] == segment.as_str());
        if persons >= K {
            let audience = audience
                .unwrap_or_else(|| panic!("{segment} ({persons} persons) not delivered: {report}"));
            let id = audience["id"].as_str().unwrap();
            let out = server.path(&format!("{segment}.txt"));
            server.ok(
                &alpha,
                &["audiences", "pull", id, "--out", out.to_str().unwrap()],
            );
            let delivered: BTreeSet<String> = std::fs::read_to_string(&out)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect();
            assert_eq!(
                delivered,
                truth.expected_cookies(&graph, segment, DESTINATIONS[0]),
                "{segment}"
            );
        } else {
            assert!(
                audience.is_none(),
                "{segment} has {persons} < k persons but was released"
            );
        }
    }
    assert!(truth
        .matched
        .keys()
        .any(|s| truth.persons_with_cookies(&graph, s, DESTINATIONS[0]) >= K));

    // The report names every segment and never an identifier.
    let text = report.to_string();
    for segment in truth.matched.keys() {
        assert!(
            text.contains(segment.as_str()),
            "{segment} missing from {text}"
        );
    }
    assert!(!text.contains("@"), "the report carries no email: {text}");

    // The other destination sees nothing of this job and cannot pull it.
    let other = server.audiences(&beta);
    assert!(other.is_empty(), "{other:?}");
    if let Some(id) = listed.first().and_then(|a| a["id"].as_str()) {
        let out = server.onboard(&beta, &["audiences", "pull", id]);
        assert!(!out.status.success());
    }
    // The advertiser cannot list audiences (wrong role).
    let out = server.onboard(&advertiser, &["audiences", "list"]);
    assert_eq!(out.status.code(), Some(1));

    // The audit log recorded the story, and its chain verifies.
    let audit = server.ok(&admin, &["admin", "audit", "--json"]);
    assert!(
        audit.contains("graph") && audit.contains("acme-retail"),
        "{audit}"
    );
}

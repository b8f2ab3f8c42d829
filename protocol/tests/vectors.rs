//! The test vectors in `protocol/test-vectors/v1.json`, checked step by step,
//! and the table in `docs/protocol.md` checked against the same file.

use onboard_protocol::{blind, curve, normalize, IdKind, PointBytes, Region, SecretKey};
use serde::Deserialize;

const VECTORS: &str = include_str!("../test-vectors/v1.json");
const PROTOCOL_DOC: &str = include_str!("../../docs/protocol.md");
const EXPECTED_VECTORS: usize = 9;

#[derive(Deserialize)]
struct File {
    test_key: TestKey,
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct TestKey {
    label: String,
    key_file: String,
    fingerprint: String,
}

#[derive(Deserialize, PartialEq, Debug)]
struct Vector {
    kind: String,
    region: String,
    input: String,
    normalised: String,
    sha256: String,
    point: String,
    blinded: String,
}

fn load() -> File {
    let file: File = serde_json::from_str(VECTORS).expect("vectors file parses");
    assert_eq!(
        file.vectors.len(),
        EXPECTED_VECTORS,
        "every vector was parsed"
    );
    file
}

fn normalised(v: &Vector) -> onboard_protocol::Normalized {
    let kind: IdKind = v.kind.parse().unwrap();
    let region: Region = v.region.parse().unwrap();
    normalize(kind, &v.input, region).unwrap()
}

#[test]
fn step1_normalise() {
    for v in load().vectors {
        assert_eq!(normalised(&v).value, v.normalised, "{}", v.input);
    }
}

#[test]
fn step2_digest() {
    for v in load().vectors {
        assert_eq!(normalised(&v).digest.to_hex(), v.sha256, "{}", v.input);
    }
}

#[test]
fn step3_hash_to_point() {
    for v in load().vectors {
        let n = normalised(&v);
        let point = curve::hash_to_point(n.kind, &n.digest);
        assert_eq!(PointBytes::encode(&point).to_hex(), v.point, "{}", v.input);
    }
}

#[test]
fn step4_blind_under_test_key() {
    let file = load();
    let key = SecretKey::derive_for_tests(&file.test_key.label);
    let from_file = SecretKey::from_file_string(&file.test_key.key_file).unwrap();
    assert_eq!(key.fingerprint().to_string(), file.test_key.fingerprint);
    assert_eq!(from_file.fingerprint(), key.fingerprint());
    let items: Vec<_> = file
        .vectors
        .iter()
        .map(|v| {
            let n = normalised(v);
            (n.kind, n.digest)
        })
        .collect();
    let blinded = blind::hash_and_blind(&key, &items);
    for (v, b) in file.vectors.iter().zip(&blinded) {
        assert_eq!(b.to_hex(), v.blinded, "{}", v.input);
    }
}

#[test]
fn docs_table_matches_the_vectors_file() {
    let file = load();
    let table: Vec<Vec<String>> = PROTOCOL_DOC
        .split("<!-- vectors:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- vectors:end -->").next())
        .expect("docs/protocol.md has the vectors markers")
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| kind"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect();
    assert_eq!(table.len(), file.vectors.len());
    for (row, v) in table.iter().zip(&file.vectors) {
        let expected = [
            &v.kind,
            &v.region,
            &v.input,
            &v.normalised,
            &v.sha256,
            &v.point,
            &v.blinded,
        ];
        let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        assert_eq!(row, &expected);
    }
}

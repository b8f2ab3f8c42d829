//! Writes the protocol test vectors as JSON on stdout:
//! `cargo run -p onboard-protocol --example gen_vectors > protocol/test-vectors/v1.json`

use onboard_protocol::{blind, curve, normalize, IdKind, PointBytes, Region, SecretKey};
use serde_json::json;

/// The label of the fixed test key; public on purpose, never a real key.
const TEST_KEY_LABEL: &str = "onboard-v1 test vector key";

const INPUTS: &[(&str, &str, &str)] = &[
    ("email", "FR", "JaneSaoirse+Work@gmail.com"),
    ("email", "FR", " Jane.Doe@Example.COM "),
    ("email", "FR", "j.a.n.e.s.a.o.i.r.s.e@googlemail.com"),
    ("phone", "FR", "06 12 34 56 78"),
    ("phone", "FR", "+33 6 12 34 56 78"),
    ("phone", "US", "(201) 555-0123"),
    ("maid", "FR", "6D92078A-8246-4BA4-AE5B-76104861E7DC"),
    (
        "email_sha256",
        "FR",
        "92EE26057ED9DEA2535D6C8B141D48373932476599196E00352254896DB5888F",
    ),
    (
        "phone_sha256",
        "FR",
        "42d573cfc315801d4cd8eddd5416b416a0bf298b9b9e12d6b07442c91db42bd8",
    ),
];

fn main() {
    let key = SecretKey::derive_for_tests(TEST_KEY_LABEL);
    let vectors: Vec<_> = INPUTS
        .iter()
        .map(|&(kind, region, input)| {
            let id_kind: IdKind = kind.parse().expect("known kind");
            let region_code = region;
            let region: Region = region.parse().expect("known region");
            let n = normalize(id_kind, input, region).expect("vector inputs are valid");
            let point = curve::hash_to_point(n.kind, &n.digest);
            json!({
                "kind": kind,
                "region": region_code,
                "input": input,
                "normalised": n.value,
                "sha256": n.digest.to_hex(),
                "point": PointBytes::encode(&point).to_hex(),
                "blinded": blind::blind_with(&key, &point).to_hex(),
            })
        })
        .collect();
    let doc = json!({
        "regenerate": "cargo run -p onboard-protocol --example gen_vectors > protocol/test-vectors/v1.json",
        "test_key": {
            "label": TEST_KEY_LABEL,
            "derivation": "scalar = SHA-512(label) reduced mod l",
            "key_file": key.to_file_string().trim(),
            "fingerprint": key.fingerprint().to_string(),
        },
        "vectors": vectors,
    });
    println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
}

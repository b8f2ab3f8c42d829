//! Property tests: normalisation is idempotent, wire frames round-trip,
//! decoders never panic on arbitrary bytes, blinding commutes.

use onboard_protocol::wire::{DigestBatch, DigestEntry, PointPage, RecordBatch};
use onboard_protocol::{
    blind, curve, normalize, Digest, IdKind, MatchKind, PointBytes, Region, SecretKey,
};
use proptest::prelude::*;

fn match_kind() -> impl Strategy<Value = MatchKind> {
    prop::sample::select(MatchKind::ALL.to_vec())
}

fn point_bytes() -> impl Strategy<Value = PointBytes> {
    any::<[u8; 32]>().prop_map(PointBytes)
}

fn label() -> impl Strategy<Value = String> {
    "[A-Za-z0-9 éàü_-]{1,40}"
}

fn record_batch() -> impl Strategy<Value = RecordBatch> {
    (any::<u32>(), prop::collection::vec(label(), 1..6)).prop_flat_map(|(batch_no, labels)| {
        let n = labels.len() as u16;
        let record = (
            prop::collection::vec(0..n, 1..4),
            prop::collection::vec((match_kind(), point_bytes()), 1..5),
        );
        prop::collection::vec(record, 0..20).prop_map(move |records| {
            let mut batch = RecordBatch::new(batch_no, labels.clone()).unwrap();
            for (segments, ids) in records {
                batch.push(&segments, ids).unwrap();
            }
            batch
        })
    })
}

proptest! {
    #[test]
    fn email_normalisation_is_idempotent(
        local in "[A-Za-z0-9._+-]{1,20}",
        domain in prop::sample::select(vec!["gmail.com", "GoogleMail.com", "example.fr", "Mail.Example.co.uk"]),
        pad in "[ \t]{0,2}",
    ) {
        let raw = format!("{pad}{local}@{domain}{pad}");
        if let Ok(once) = normalize(IdKind::Email, &raw, Region::default()) {
            let twice = normalize(IdKind::Email, &once.value, Region::default()).unwrap();
            prop_assert_eq!(&twice.value, &once.value);
            prop_assert_eq!(twice.digest, once.digest);
        }
    }

    #[test]
    fn phone_normalisation_is_idempotent(digits in "0[1-9][0-9 .]{8,12}", region in prop::sample::select(vec!["FR", "US", "GB", "DE"])) {
        let region: Region = region.parse().unwrap();
        if let Ok(once) = normalize(IdKind::Phone, &digits, region) {
            prop_assert!(once.value.starts_with('+'));
            let twice = normalize(IdKind::Phone, &once.value, region).unwrap();
            prop_assert_eq!(twice.value, once.value);
        }
    }

    #[test]
    fn maid_normalisation_is_idempotent(bytes in any::<[u8; 16]>()) {
        let h = hex::encode_upper(bytes);
        let raw = format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]);
        if let Ok(once) = normalize(IdKind::Maid, &raw, Region::default()) {
            prop_assert_eq!(normalize(IdKind::Maid, &once.value, Region::default()).unwrap().value, once.value);
        }
    }

    #[test]
    fn normalise_never_panics(kind in prop::sample::select(IdKind::ALL.to_vec()), raw in ".{0,64}") {
        let _ = normalize(kind, &raw, Region::default());
    }

    #[test]
    fn record_batches_round_trip(batch in record_batch()) {
        let bytes = batch.encode();
        prop_assert_eq!(RecordBatch::decode(&bytes).unwrap(), batch);
    }

    #[test]
    fn point_pages_round_trip(kind in match_kind(), page_no in any::<u32>(), points in prop::collection::vec(point_bytes(), 0..50)) {
        let page = PointPage { kind, page_no, points };
        prop_assert_eq!(PointPage::decode(&page.encode()).unwrap(), page);
    }

    #[test]
    fn digest_batches_round_trip(batch_no in any::<u32>(), entries in prop::collection::vec(("[a-z0-9-]{0,20}", match_kind(), any::<[u8; 32]>()), 0..30)) {
        let batch = DigestBatch {
            batch_no,
            entries: entries.into_iter().map(|(person, kind, d)| DigestEntry { person, kind, digest: Digest(d) }).collect(),
        };
        prop_assert_eq!(DigestBatch::decode(&batch.encode().unwrap()).unwrap(), batch);
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = RecordBatch::decode(&bytes);
        let _ = PointPage::decode(&bytes);
        let _ = DigestBatch::decode(&bytes);
        let _ = curve::decode_point(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_mutated_frames(batch in record_batch(), pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let mut bytes = batch.encode();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let _ = RecordBatch::decode(&bytes);
        let end = cut.index(bytes.len() + 1);
        prop_assert!(RecordBatch::decode(&batch.encode()[..end]).is_err() || end == bytes.len());
    }

    #[test]
    fn point_decoding_never_panics(bytes in any::<[u8; 32]>()) {
        if let Ok(p) = PointBytes(bytes).decode() {
            // Canonical: re-encoding gives the same bytes.
            prop_assert_eq!(PointBytes::encode(&p), PointBytes(bytes));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn blinding_commutes(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), text in ".{1,30}", kind in match_kind()) {
        let a = SecretKey::derive_for_tests(&hex::encode(a));
        let b = SecretKey::derive_for_tests(&hex::encode(b));
        let p = curve::hash_to_point(kind, &Digest::of(&text));
        let a_p = blind::blind_points(&a, &[p]);
        let b_p = blind::blind_points(&b, &[p]);
        prop_assert_eq!(blind::reblind(&b, &a_p).unwrap(), blind::reblind(&a, &b_p).unwrap());
    }
}

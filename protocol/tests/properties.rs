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

/// A valid phone number as people type it, its region and its E.164 form:
/// French and British mobiles and German mobiles in national form with
/// spaces or dots, US numbers as `(201) 555-0123`.
fn valid_phone() -> impl Strategy<Value = (String, Region, String)> {
    let grouped = |national: String, sep: &str| -> String {
        let digits: Vec<String> = format!("0{national}")
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        digits.join(sep)
    };
    let sep = prop::sample::select(vec!["", " ", "."]);
    prop_oneof![
        ("6[0-24-8][0-9]{7}", sep.clone()).prop_map(move |(n, s)| (
            grouped(n.clone(), s),
            region("FR"),
            format!("+33{n}")
        )),
        ("7[1-3][0-9]{8}", sep.clone()).prop_map(move |(n, s)| (
            grouped(n.clone(), s),
            region("GB"),
            format!("+44{n}")
        )),
        ("151[0-9]{8}", sep).prop_map(move |(n, s)| (
            grouped(n.clone(), s),
            region("DE"),
            format!("+49{n}")
        )),
        "[2-9][0-9]{6}".prop_map(|n| (
            format!("(201) {}-{}", &n[..3], &n[3..]),
            region("US"),
            format!("+1201{n}")
        )),
    ]
}

fn region(code: &str) -> Region {
    code.parse().unwrap()
}

/// A MAID (UUID) in upper case, never the all-zero one.
fn valid_maid() -> impl Strategy<Value = String> {
    any::<[u8; 16]>()
        .prop_filter("the all-zero MAID is refused", |b| b != &[0; 16])
        .prop_map(|bytes| {
            let h = hex::encode_upper(bytes);
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        })
}

proptest! {
    #[test]
    fn valid_emails_normalise_once_and_for_all(
        local in "[A-Za-z0-9][A-Za-z0-9._+-]{0,19}",
        domain in prop::sample::select(vec!["gmail.com", "GoogleMail.com", "example.fr", "Mail.Example.co.uk"]),
        pad in "[ \t]{0,2}",
    ) {
        let raw = format!("{pad}{local}@{domain}{pad}");
        let once = normalize(IdKind::Email, &raw, Region::default());
        prop_assert!(once.is_ok(), "{:?} refused: {:?}", raw, once);
        let once = once.unwrap();
        if domain.eq_ignore_ascii_case("example.fr") || domain.eq_ignore_ascii_case("mail.example.co.uk") {
            prop_assert_eq!(&once.value, &raw.trim().to_lowercase());
        } else {
            prop_assert!(once.value.ends_with("@gmail.com") && !once.value.contains('+'), "{}", once.value);
        }
        prop_assert_eq!(once.digest, Digest::of(&once.value));
        let twice = normalize(IdKind::Email, &once.value, Region::default()).unwrap();
        prop_assert_eq!(&twice.value, &once.value);
        prop_assert_eq!(twice.digest, once.digest);
    }

    #[test]
    fn malformed_emails_are_refused(
        raw in prop_oneof![
            "[a-z0-9.]{1,20}",                        // no @
            "[a-z0-9]{1,10}@[a-z0-9]{1,10}@[a-z]{1,5}\\.com", // two @
            "@[a-z]{1,10}\\.com",                     // no local part
            "[a-z0-9]{1,10}@[a-z]{1,10}",             // no dot in the domain
            "[a-z0-9]{1,10}@[a-z]{1,5}\\.\\.com",     // an empty domain label
            "[a-z0-9]{1,5} [a-z0-9]{1,5}@[a-z]{1,5}\\.com", // inner space
            "\\.{0,3}\\+[a-z0-9.]{0,10}@gmail\\.com", // nothing before Gmail's +tag
        ],
    ) {
        let r = normalize(IdKind::Email, &raw, Region::default());
        prop_assert!(r.is_err(), "{:?} accepted as {:?}", raw, r.map(|n| n.value));
    }

    #[test]
    fn valid_phones_normalise_to_e164_once_and_for_all((raw, region, e164) in valid_phone()) {
        let once = normalize(IdKind::Phone, &raw, region);
        prop_assert!(once.is_ok(), "{:?} refused: {:?}", raw, once);
        let once = once.unwrap();
        prop_assert_eq!(&once.value, &e164);
        let twice = normalize(IdKind::Phone, &once.value, region).unwrap();
        prop_assert_eq!(twice.value, once.value);
    }

    #[test]
    fn too_short_phones_are_refused(raw in "0[1-9][0-9]{0,3}", code in prop::sample::select(vec!["FR", "US", "GB"])) {
        // (German subscriber numbers can be this short: DE is left out.)
        prop_assert!(normalize(IdKind::Phone, &raw, region(code)).is_err(), "{:?}", raw);
    }

    #[test]
    fn valid_maids_normalise_to_lower_case(raw in valid_maid()) {
        let once = normalize(IdKind::Maid, &raw, Region::default());
        prop_assert!(once.is_ok(), "{:?} refused: {:?}", raw, once);
        let once = once.unwrap();
        prop_assert_eq!(&once.value, &raw.to_lowercase());
        prop_assert_eq!(normalize(IdKind::Maid, &once.value, Region::default()).unwrap().value, once.value);
    }

    #[test]
    fn maids_without_their_hyphens_are_refused(raw in valid_maid()) {
        let r = normalize(IdKind::Maid, &raw.replace('-', ""), Region::default());
        prop_assert!(r.is_err());
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
    fn point_decoding_never_panics_and_accepts_only_canonical_bytes(bytes in any::<[u8; 32]>()) {
        // Canonical: whatever decodes re-encodes to the same bytes.
        let decoded = PointBytes(bytes).decode();
        prop_assert!(decoded.map_or(true, |p| PointBytes::encode(&p) == PointBytes(bytes)));
    }

    #[test]
    fn encoded_points_decode_to_themselves(text in ".{0,30}", kind in match_kind()) {
        let p = curve::hash_to_point(kind, &Digest::of(&text));
        let bytes = PointBytes::encode(&p);
        let decoded = bytes.decode();
        prop_assert!(decoded.is_ok(), "a valid point refused: {:?}", decoded.err());
        prop_assert_eq!(PointBytes::encode(&decoded.unwrap()), bytes);
        prop_assert!(bytes.check_form().is_ok());
    }

    #[test]
    fn negative_or_oversized_encodings_are_refused(mut bytes in any::<[u8; 32]>(), flaw in 0..2u8) {
        // The low bit set is a negative field element; the top bit set is >= p.
        if flaw == 0 { bytes[0] |= 1 } else { bytes[31] |= 0x80 }
        prop_assert!(PointBytes(bytes).decode().is_err());
        prop_assert!(PointBytes(bytes).check_form().is_err());
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

//! Hot paths of the protocol, per element: normalise + hash, hash-to-point,
//! batch blinding, re-blinding (decode + multiply + compress) and frame
//! decoding. Compare them with the primitive rows (one variable-base
//! multiplication, one compression) measured in the same run.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use curve25519_dalek::{ristretto::RistrettoPoint, scalar::Scalar};
use onboard_protocol::wire::RecordBatch;
use onboard_protocol::{blind, curve, normalize, Digest, IdKind, MatchKind, Region, SecretKey};

const BATCH: usize = 4096;

fn digests(n: usize) -> Vec<(MatchKind, Digest)> {
    (0..n)
        .map(|i| {
            (
                MatchKind::Email,
                Digest::of(&format!("user{i}@example.com")),
            )
        })
        .collect()
}

fn primitives(c: &mut Criterion) {
    let mut g = c.benchmark_group("primitive");
    let d = Digest::of("x@example.com");
    let p = curve::hash_to_point(MatchKind::Email, &d);
    let s = Scalar::from(0x1234_5678_9abc_def0u64) * Scalar::from(0xfedc_ba98_7654_3210u64);
    g.bench_function("hash_to_point", |b| {
        b.iter(|| curve::hash_to_point(MatchKind::Email, black_box(&d)))
    });
    g.bench_function("variable_base_mul", |b| {
        b.iter(|| black_box(s) * black_box(p))
    });
    g.bench_function("compress", |b| b.iter(|| black_box(p).compress()));
    let c = p.compress();
    g.bench_function("decompress", |b| b.iter(|| black_box(c).decompress()));
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let key = SecretKey::derive_for_tests("bench");
    let items = digests(BATCH);
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    g.bench_function("normalise_and_hash_email", |b| {
        let raws: Vec<String> = (0..BATCH)
            .map(|i| format!(" User.{i}+tag@GMail.com "))
            .collect();
        b.iter(|| {
            for raw in &raws {
                black_box(normalize(IdKind::Email, raw, Region::default()).ok());
            }
        })
    });
    g.bench_function("normalise_and_hash_phone", |b| {
        let raws: Vec<String> = (0..BATCH)
            .map(|i| {
                format!(
                    "06 {:02} {:02} {:02} {:02}",
                    i % 90 + 10,
                    i % 97,
                    i % 89,
                    i % 83
                )
            })
            .collect();
        b.iter(|| {
            for raw in &raws {
                black_box(normalize(IdKind::Phone, raw, Region::default()).ok());
            }
        })
    });
    g.bench_function("hash_and_blind", |b| {
        b.iter(|| blind::hash_and_blind(&key, black_box(&items)))
    });
    let points: Vec<RistrettoPoint> = items
        .iter()
        .map(|(k, d)| curve::hash_to_point(*k, d))
        .collect();
    g.bench_function("blind_points", |b| {
        b.iter(|| blind::blind_points(&key, black_box(&points)))
    });
    let encoded = blind::hash_and_blind(&key, &items);
    g.bench_function("reblind", |b| {
        b.iter(|| blind::reblind(&key, black_box(&encoded)))
    });
    let mut batch = RecordBatch::new(0, vec!["Gold".into(), "Silver".into()]).unwrap();
    for pair in encoded.chunks(2) {
        batch
            .push(&[0, 1], pair.iter().map(|p| (MatchKind::Email, *p)))
            .unwrap();
    }
    let bytes = batch.encode();
    g.bench_function("record_batch_decode", |b| {
        b.iter_batched(
            || bytes.clone(),
            |bytes| RecordBatch::decode(&bytes),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, primitives, pipeline);
criterion_main!(benches);

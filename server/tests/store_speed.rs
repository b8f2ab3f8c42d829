//! Storage timing smoke test, ignored by default.
use onboard_protocol::{MatchKind, PointBytes};
use std::time::Instant;

#[test]
#[ignore]
fn storage_write_speed() {
    let dir = tempfile::tempdir().unwrap();
    let repo = onboard_server::storage::open(dir.path()).unwrap();
    let n = 200_000u64;
    let points: Vec<PointBytes> = (0..n)
        .map(|i| {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&(i.wrapping_mul(0x9E3779B97F4A7C15)).to_be_bytes());
            PointBytes(b)
        })
        .collect();
    let t = Instant::now();
    for (c, chunk) in points.chunks(8192).enumerate() {
        let rows: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, p)| (MatchKind::Email, *p, (c * 8192 + i) as u64))
            .collect();
        repo.put_points(1, &rows).unwrap();
    }
    println!(
        "put_points: {:.2} µs/point",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for (c, chunk) in points.chunks(8192).enumerate() {
        let rows: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, _)| (format!("p{}", c * 8192 + i), (c * 8192 + i) as u64))
            .collect();
        for (p, _) in &rows {
            repo.person_no(1, p).unwrap();
        }
        repo.put_persons(1, &rows).unwrap();
    }
    println!(
        "persons: {:.2} µs/person",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for p in &points {
        repo.point_owner(1, MatchKind::Email, p).unwrap();
    }
    println!(
        "point_owner: {:.2} µs/get",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let ns = [1u8; 16];
    let t = Instant::now();
    for chunk in points.chunks(8192) {
        let pairs: Vec<_> = chunk.iter().map(|p| (*p, *p)).collect();
        repo.cache_put(&ns, &pairs).unwrap();
    }
    println!(
        "cache_put: {:.2} µs/pair",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for p in &points {
        repo.cache_contains(&ns, p).unwrap();
    }
    println!(
        "cache_contains: {:.2} µs/get",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}

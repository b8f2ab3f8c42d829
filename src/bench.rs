//! `cargo run --release -- bench --records N --graph M`: the scale benchmark
//! of the design (§7). The server runs as a child process (so its peak RSS is
//! its own), the client in this process; data is generated and written as a
//! stream, so neither side's memory depends on holding N or M.
//!
//! The bound is what the curve arithmetic alone would cost on all cores:
//! (hash-to-point calls × t_hash + scalar multiplications × t_mul) ÷ cores,
//! with both unit times measured on one core in the same run.

use crate::harness::{peak_rss, ServerProcess};
use anyhow::{bail, Result};
use curve25519_dalek::scalar::Scalar;
use onboard_client::{ApiClient, MatchOptions, Role};
use onboard_protocol::{curve, Digest, MatchKind, Region, SecretKey};
use serde::Serialize;
use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

/// Options of `bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// CRM rows (one email each; half of them in the graph).
    #[arg(long, default_value_t = 100_000)]
    pub records: usize,
    /// Graph identifiers (persons with an email and a phone each: M/2 persons).
    #[arg(long, default_value_t = 1_000_000)]
    pub graph: usize,
    /// Also run a second job with the same key (served from the cache).
    #[arg(long)]
    pub repeat: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Phase {
    name: &'static str,
    wall_s: f64,
    bound_s: f64,
    ratio: f64,
    rows_per_s: f64,
}

#[derive(Serialize)]
struct Report {
    records: usize,
    graph: usize,
    cores: usize,
    t_hash_to_point_us: f64,
    t_scalar_mul_us: f64,
    import_wall_s: f64,
    wall_s: f64,
    bound_s: f64,
    ratio: f64,
    rows_per_s: f64,
    phases: Vec<Phase>,
    repeat: Option<Phase>,
    server_peak_rss_bytes: u64,
    client_peak_rss_bytes: u64,
}

/// Run the benchmark; `Ok(true)` when it completed.
pub fn run(args: &BenchArgs) -> Result<bool> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (t_hash, t_mul) = measure_primitives();
    let dir = tempfile::tempdir()?;
    let work = dir.path();
    let ids_csv = work.join("ids.csv");
    let cookies_csv = work.join("cookies.csv");
    let crm_csv = work.join("crm.csv");
    write_graph(args.graph, &ids_csv, &cookies_csv)?;
    write_crm(args.records, args.graph / 2, &crm_csv)?;

    let server = ServerProcess::start(
        &work.join("server"),
        &[("MIN_JOB_ROWS", "1"), ("PRIVACY_BUDGET", "1000")],
    )?;
    let admin = ApiClient::new(&server.url, Some(&server.ca), &server.admin_key)?;
    let advertiser_key =
        onboard_client::create_principal(&admin, "bench-advertiser", Role::Advertiser)?.api_key;
    onboard_client::create_principal(&admin, "bench-dsp", Role::Destination)?;

    let t = Instant::now();
    onboard_client::import_graph(
        &admin,
        &ids_csv,
        Some(&cookies_csv),
        Region::default(),
        false,
    )?;
    let import_wall_s = t.elapsed().as_secs_f64();

    let key_file = work.join("bench.key");
    crate::demo::write_secret(
        &key_file,
        &SecretKey::generate(&mut rand::thread_rng()).to_file_string(),
    )?;
    let advertiser = ApiClient::new(&server.url, Some(&server.ca), &advertiser_key)?;
    let options = MatchOptions {
        email_cols: vec!["email".into()],
        batch_size: 8192,
        show_progress: !args.json,
        ..MatchOptions::new(crm_csv, key_file, "bench-dsp", "segment")
    };
    // Only the graph's emails take part in an email-only job.
    let graph_points = args.graph / 2;
    let bound =
        |hashes: usize, muls: usize| (hashes as f64 * t_hash + muls as f64 * t_mul) / cores as f64;

    let t = Instant::now();
    let outcome = onboard_client::run_match(&advertiser, &options)?;
    let wall_s = t.elapsed().as_secs_f64();
    // Client: hash + a·P(x) per row, a·(b·P(y)) per graph point; server: b·(a·P(x)) per row.
    let bound_s = bound(args.records, 2 * args.records + graph_points);
    if outcome.report.is_none() {
        bail!("the benchmark job returned no report");
    }
    let phases = outcome
        .timings
        .iter()
        .map(|(name, secs)| {
            let phase_bound = match *name {
                "graph-pass" => bound(0, graph_points),
                "upload" => bound(args.records, 2 * args.records),
                _ => 0.0,
            };
            Phase {
                name,
                wall_s: *secs,
                bound_s: phase_bound,
                ratio: if phase_bound > 0.0 {
                    secs / phase_bound
                } else {
                    f64::NAN
                },
                rows_per_s: args.records as f64 / secs,
            }
        })
        .collect();

    let repeat = if args.repeat {
        let t = Instant::now();
        onboard_client::run_match(&advertiser, &options)?;
        let secs = t.elapsed().as_secs_f64();
        let b = bound(args.records, 2 * args.records);
        Some(Phase {
            name: "repeat-job",
            wall_s: secs,
            bound_s: b,
            ratio: secs / b,
            rows_per_s: args.records as f64 / secs,
        })
    } else {
        None
    };

    let report = Report {
        records: args.records,
        graph: args.graph,
        cores,
        t_hash_to_point_us: t_hash * 1e6,
        t_scalar_mul_us: t_mul * 1e6,
        import_wall_s,
        wall_s,
        bound_s,
        ratio: wall_s / bound_s,
        rows_per_s: args.records as f64 / wall_s,
        phases,
        repeat,
        server_peak_rss_bytes: server.peak_rss()?,
        client_peak_rss_bytes: peak_rss(std::process::id())?,
    };
    drop(server);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(true)
}

fn print_table(r: &Report) {
    println!(
        "scale benchmark: N = {} CRM rows, M = {} graph identifiers, {} cores",
        r.records, r.graph, r.cores
    );
    println!(
        "primitives (1 core): hash-to-point {:.2} µs, variable-base mul {:.2} µs",
        r.t_hash_to_point_us, r.t_scalar_mul_us
    );
    println!(
        "graph import (not in the match timing): {:.1} s",
        r.import_wall_s
    );
    println!(
        "{:<14} {:>10} {:>10} {:>7} {:>12}",
        "phase", "wall s", "bound s", "ratio", "rows/s"
    );
    for p in r.phases.iter().chain(&r.repeat) {
        println!(
            "{:<14} {:>10.2} {:>10.2} {:>7.2} {:>12.0}",
            p.name, p.wall_s, p.bound_s, p.ratio, p.rows_per_s
        );
    }
    println!(
        "{:<14} {:>10.2} {:>10.2} {:>7.2} {:>12.0}",
        "whole job", r.wall_s, r.bound_s, r.ratio, r.rows_per_s
    );
    println!(
        "peak RSS: server {:.0} MiB, client {:.0} MiB",
        r.server_peak_rss_bytes as f64 / 1048576.0,
        r.client_peak_rss_bytes as f64 / 1048576.0
    );
}

/// Single-core unit times of hash-to-point and variable-base multiplication:
/// the best of several rounds, so that a busy machine (other builds, the
/// server's child process starting) does not inflate the bound.
fn measure_primitives() -> (f64, f64) {
    const ROUNDS: usize = 5;
    let mut best = (f64::INFINITY, f64::INFINITY);
    for _ in 0..ROUNDS {
        let (h, m) = measure_primitives_once();
        best = (best.0.min(h), best.1.min(m));
    }
    best
}

fn measure_primitives_once() -> (f64, f64) {
    const N: u32 = 1000;
    let digests: Vec<Digest> = (0..N).map(|i| Digest::of(&i.to_string())).collect();
    let t = Instant::now();
    let points: Vec<_> = digests
        .iter()
        .map(|d| curve::hash_to_point(MatchKind::Email, d))
        .collect();
    let t_hash = t.elapsed().as_secs_f64() / f64::from(N);
    let s = Scalar::from(0x0123_4567_89ab_cdefu64) * Scalar::from(0xfedc_ba98_7654_3210u64);
    let t = Instant::now();
    for p in &points {
        black_box(s * black_box(p));
    }
    let t_mul = t.elapsed().as_secs_f64() / f64::from(N);
    (t_hash, t_mul)
}

/// `M` identifiers: `M/2` persons with an email and a phone, one cookie each.
fn write_graph(m: usize, ids: &Path, cookies: &Path) -> Result<()> {
    let mut ids = BufWriter::new(std::fs::File::create(ids)?);
    let mut cookies = BufWriter::new(std::fs::File::create(cookies)?);
    writeln!(ids, "person_id,kind,value")?;
    writeln!(cookies, "person_id,destination,cookie_id")?;
    for i in 0..m / 2 {
        writeln!(ids, "p{i},email,user{i}@bench.example.com")?;
        writeln!(
            ids,
            "p{i},phone,+3361{:07}",
            (i * 7919 + 1_000_000) % 10_000_000
        )?;
        writeln!(cookies, "p{i},bench-dsp,ck{i:x}")?;
    }
    ids.flush()?;
    cookies.flush()?;
    Ok(())
}

/// `N` rows, half of them graph persons, in four segments.
fn write_crm(n: usize, persons: usize, path: &Path) -> Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "email,segment")?;
    for r in 0..n {
        let segment = ["Gold", "Silver", "Bronze", "Blue"][r % 4];
        if r % 2 == 0 && persons > 0 {
            writeln!(out, "user{}@bench.example.com,{segment}", (r / 2) % persons)?;
        } else {
            writeln!(out, "outsider{r}@crm.example.org,{segment}")?;
        }
    }
    out.flush()?;
    Ok(())
}

//! `cargo run --release -- load`: a bounded load benchmark (not a test).
//! Four advertisers run match jobs back to back while fifty destination
//! clients pull audience pages, all over TLS on 127.0.0.1, for at most 60 s.
//! Reports requests/s, p50/p99 latency and errors per workload.

use crate::harness::ServerProcess;
use anyhow::{ensure, Context, Result};
use onboard_client::{ApiClient, MatchOptions, Role};
use onboard_protocol::{Region, SecretKey};
use serde::Serialize;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Options of `load`.
#[derive(clap::Args)]
pub struct LoadArgs {
    /// How long the load runs, in seconds (at most 60).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub seconds: u64,
    /// Concurrent match jobs (one advertiser each).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub jobs: u64,
    /// Concurrent destination pullers.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=200))]
    pub pullers: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Default)]
struct Workload {
    requests: usize,
    errors: usize,
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Serialize)]
struct LoadReport {
    seconds: f64,
    jobs: Workload,
    pulls: Workload,
}

const PERSONS: usize = 20_000;
const CRM_ROWS: usize = 2_000;

/// Run the load; `Ok(true)` when no request failed.
pub fn run(args: &LoadArgs) -> Result<bool> {
    let dir = tempfile::tempdir()?;
    let work = dir.path();
    let server = ServerProcess::start(
        &work.join("server"),
        &[
            ("MIN_JOB_ROWS", "100"),
            ("PRIVACY_BUDGET", "1000000"),
            ("MAX_OPEN_JOBS", "4"),
        ],
    )?;
    let admin = ApiClient::new(&server.url, Some(&server.ca), &server.admin_key)?;
    let destination_key =
        onboard_client::create_principal(&admin, "dsp-load", Role::Destination)?.api_key;
    let (ids, cookies) = (work.join("ids.csv"), work.join("cookies.csv"));
    write_graph(&ids, &cookies)?;
    onboard_client::import_graph(&admin, &ids, Some(&cookies), Region::default(), false)?;

    let mut advertisers = Vec::new();
    for a in 0..args.jobs {
        let key =
            onboard_client::create_principal(&admin, &format!("advertiser-{a}"), Role::Advertiser)?
                .api_key;
        let crm = work.join(format!("crm-{a}.csv"));
        write_crm(&crm, a as usize)?;
        let key_file = work.join(format!("adv-{a}.key"));
        crate::demo::write_secret(
            &key_file,
            &SecretKey::generate(&mut rand::thread_rng()).to_file_string(),
        )?;
        advertisers.push((
            ApiClient::new(&server.url, Some(&server.ca), &key)?,
            options(crm, key_file),
        ));
    }
    // One job first, so the pullers have audiences to pull.
    onboard_client::run_match(&advertisers[0].0, &advertisers[0].1)?;
    let destination = ApiClient::new(&server.url, Some(&server.ca), &destination_key)?;
    let audience_ids: Vec<String> = onboard_client::list_audiences(&destination)?
        .into_iter()
        .map(|a| a.id)
        .collect();
    ensure!(
        !audience_ids.is_empty(),
        "the warm-up job released no audience"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let job_lat = Arc::new(Mutex::new((Vec::new(), 0usize)));
    let pull_lat = Arc::new(Mutex::new((Vec::new(), 0usize)));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    std::thread::scope(|scope| {
        for (api, opts) in &advertisers {
            let (stop, lat) = (stop.clone(), job_lat.clone());
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let t = Instant::now();
                    let ok = onboard_client::run_match(api, opts).is_ok();
                    record(&lat, t, ok);
                }
            });
        }
        for p in 0..args.pullers as usize {
            let (stop, lat) = (stop.clone(), pull_lat.clone());
            let id = audience_ids[p % audience_ids.len()].clone();
            let destination = &destination;
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let t = Instant::now();
                    let ok = onboard_client::pull_audience(destination, &id, &mut std::io::sink())
                        .is_ok();
                    record(&lat, t, ok);
                }
            });
        }
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        stop.store(true, Ordering::Relaxed);
    });
    let seconds = started.elapsed().as_secs_f64();
    let report = LoadReport {
        seconds,
        jobs: summarise(&job_lat, seconds),
        pulls: summarise(&pull_lat, seconds),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "load: {} concurrent jobs, {} concurrent pullers, {:.1} s over TLS on 127.0.0.1",
            args.jobs, args.pullers, seconds
        );
        println!(
            "{:<8} {:>9} {:>7} {:>10} {:>9} {:>9}",
            "workload", "requests", "errors", "req/s", "p50 ms", "p99 ms"
        );
        for (name, w) in [("jobs", &report.jobs), ("pulls", &report.pulls)] {
            println!(
                "{name:<8} {:>9} {:>7} {:>10.1} {:>9.1} {:>9.1}",
                w.requests, w.errors, w.requests_per_s, w.p50_ms, w.p99_ms
            );
        }
    }
    Ok(report.jobs.errors == 0 && report.pulls.errors == 0)
}

fn record(lat: &Mutex<(Vec<f64>, usize)>, t: Instant, ok: bool) {
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if let Ok(mut l) = lat.lock() {
        l.0.push(ms);
        l.1 += usize::from(!ok);
    }
}

fn summarise(lat: &Mutex<(Vec<f64>, usize)>, seconds: f64) -> Workload {
    let Ok(mut l) = lat.lock() else {
        return Workload::default();
    };
    l.0.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        l.0.get(((l.0.len() as f64 * p) as usize).min(l.0.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Workload {
        requests: l.0.len(),
        errors: l.1,
        requests_per_s: l.0.len() as f64 / seconds,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

fn options(input: std::path::PathBuf, key_file: std::path::PathBuf) -> MatchOptions {
    MatchOptions {
        email_cols: vec!["email".into()],
        batch_size: 1024,
        ..MatchOptions::new(input, key_file, "dsp-load", "segment")
    }
}

fn write_graph(ids: &std::path::Path, cookies: &std::path::Path) -> Result<()> {
    let mut i_out = std::io::BufWriter::new(std::fs::File::create(ids)?);
    let mut c_out = std::io::BufWriter::new(std::fs::File::create(cookies)?);
    writeln!(i_out, "person_id,kind,value")?;
    writeln!(c_out, "person_id,destination,cookie_id")?;
    for i in 0..PERSONS {
        writeln!(i_out, "p{i},email,load{i}@example.com")?;
        writeln!(c_out, "p{i},dsp-load,ck{i}")?;
    }
    i_out.flush()?;
    c_out.flush().context("writing cookies")
}

/// Each advertiser's CRM: the same persons every time, so repeated jobs
/// are refreshes that change nothing (held back, `refresh-change-below-k`).
fn write_crm(path: &std::path::Path, advertiser: usize) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "email,segment")?;
    for r in 0..CRM_ROWS {
        let i = (advertiser * 3_000 + r) % PERSONS;
        writeln!(out, "load{i}@example.com,{}", ["Gold", "Silver"][r % 2])?;
    }
    out.flush()?;
    Ok(())
}

//! `cargo run --release -- bench --records N --graph M`: the scale benchmark
//! of the design (§7). The server runs as a child process (so its peak RSS is
//! its own), the client in this process; data is generated and written as a
//! stream, so neither side's memory depends on holding N or M.
//!
//! The bound is what the curve arithmetic alone would cost on all cores:
//! (hash-to-point calls × t_hash + scalar multiplications × t_mul) ÷ cores,
//! with both unit times measured on one core in the same run. These
//! machines change speed by a third from one minute to the next, so the unit
//! times are sampled *while the job runs*: once a second a short burst of
//! each primitive, timed in the sampling thread's own CPU time (so the job's
//! threads taking the core from it do not count). `ratio` uses the mean of
//! those samples. The fastest standalone reading (before the import, before
//! and after each job) gives `ratio_vs_fastest`, which a slow moment of the
//! machine can only make worse.
//! The graph pass and the upload run at the same time; their row
//! `exchange` is timed from their common start to the later end.

use crate::harness::{
    busy_share, cpu_ticks, peak_rss, postgres_sizes, process_cpu_seconds, steal_share,
    thread_cpu_seconds, PostgresMemory, ServerProcess,
};
use anyhow::{bail, Result};
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use onboard_client::{ApiClient, MatchOptions, Role};
use onboard_protocol::{curve, Digest, MatchKind, Region, SecretKey};
use rayon::prelude::*;
use serde::Serialize;
use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
    /// Run the server on this PostgreSQL database (an empty one: the run
    /// fills it) instead of sled, and report the database's memory and size.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Instead of the flow: time scalar multiplications alone on all cores
    /// (a million unless a number is given) against their bound: the floor
    /// of the ratio's ruler.
    #[arg(long, value_name = "MULS", num_args = 0..=1, default_missing_value = "1000000")]
    pub calibrate: Option<usize>,
    /// After the jobs, a delta import replacing P% of the graph's
    /// identifiers (persons removed, as many new ones added), timed against
    /// its own bound.
    #[arg(long, value_name = "P", value_parser = parse_percent)]
    pub delta_percent: Option<f64>,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 50.0 => Ok(p),
        _ => Err("a percentage above 0 and at most 50".into()),
    }
}

#[derive(Serialize)]
struct Phase {
    name: &'static str,
    wall_s: f64,
    bound_s: f64,
    ratio: f64,
    rows_per_s: f64,
}

impl Phase {
    fn new(name: &'static str, wall_s: f64, bound_s: f64, records: usize) -> Self {
        Self {
            name,
            wall_s,
            bound_s,
            ratio: if bound_s > 0.0 {
                wall_s / bound_s
            } else {
                f64::NAN
            },
            rows_per_s: records as f64 / wall_s,
        }
    }
}

/// Single-core unit times, in seconds.
#[derive(Clone, Copy)]
struct Primitives {
    hash_s: f64,
    mul_s: f64,
}

impl Primitives {
    /// The fastest of a few standalone rounds (wall time).
    fn measure() -> Self {
        let mut p = Self {
            hash_s: f64::INFINITY,
            mul_s: f64::INFINITY,
        };
        p.remeasure();
        p
    }

    /// Measure again and keep the faster of each unit time.
    fn remeasure(&mut self) {
        const ROUNDS: usize = 5;
        for _ in 0..ROUNDS {
            let once = Self::burst(1000, &|| Instant::now(), &|t: &Instant| {
                t.elapsed().as_secs_f64()
            });
            self.hash_s = self.hash_s.min(once.hash_s);
            self.mul_s = self.mul_s.min(once.mul_s);
        }
    }

    /// `n` hash-to-point calls then `n` multiplications, each timed by
    /// `start`/`elapsed`.
    fn burst<T>(n: u32, start: &dyn Fn() -> T, elapsed: &dyn Fn(&T) -> f64) -> Self {
        let digests: Vec<Digest> = (0..n).map(|i| Digest::of(&i.to_string())).collect();
        let t = start();
        let points: Vec<_> = digests
            .iter()
            .map(|d| curve::hash_to_point(MatchKind::Email, d))
            .collect();
        let hash_s = elapsed(&t) / f64::from(n);
        let s = timing_scalar();
        let t = start();
        for p in &points {
            black_box(s * black_box(p));
        }
        let mul_s = elapsed(&t) / f64::from(n);
        Self { hash_s, mul_s }
    }

    /// The mean of samples (`None` if there are none).
    fn mean(samples: &[Self]) -> Option<Self> {
        let n = samples.len() as f64;
        (!samples.is_empty()).then(|| Self {
            hash_s: samples.iter().map(|p| p.hash_s).sum::<f64>() / n,
            mul_s: samples.iter().map(|p| p.mul_s).sum::<f64>() / n,
        })
    }
}

/// Wall time, the machine's CPU shares and the unit times sampled while
/// some work ran.
struct Timing {
    wall_s: f64,
    cpu_busy: f64,
    cpu_steal: f64,
    /// Mean unit times during the work.
    during: Primitives,
    samples: usize,
}

/// Run `work` with the primitives sampled beside it.
fn sampled<T>(work: impl FnOnce() -> T) -> Result<(T, Timing)> {
    let stop = AtomicBool::new(false);
    let cpu_before = cpu_ticks()?;
    let t = Instant::now();
    let (out, wall_s, cpu_after, samples) = std::thread::scope(|s| {
        let sampler = s.spawn(|| sample_primitives(&stop));
        let out = work();
        // Timed before the sampler is joined: it may be asleep for up to
        // one of its ticks.
        let wall_s = t.elapsed().as_secs_f64();
        let cpu_after = cpu_ticks();
        stop.store(true, Ordering::SeqCst);
        let samples = sampler.join().expect("sampler panicked");
        (out, wall_s, cpu_after, samples)
    });
    let cpu_after = cpu_after?;
    Ok((
        out,
        Timing {
            wall_s,
            cpu_busy: busy_share(cpu_before, cpu_after),
            cpu_steal: steal_share(cpu_before, cpu_after),
            // Work too short for a sample still gets one, taken now.
            during: Primitives::mean(&samples).unwrap_or_else(Primitives::measure),
            samples: samples.len(),
        },
    ))
}

/// One job with the primitives sampled while it runs.
struct TimedJob {
    outcome: onboard_client::MatchOutcome,
    timing: Timing,
}

fn timed_job(advertiser: &ApiClient, options: &MatchOptions) -> Result<TimedJob> {
    let (outcome, timing) = sampled(|| onboard_client::run_match(advertiser, options))?;
    let outcome = outcome?;
    if outcome.report.is_none() {
        bail!("the benchmark job returned no report");
    }
    Ok(TimedJob { outcome, timing })
}

/// The scalar of every timed multiplication (they run in constant time, so
/// its value does not change the timing).
fn timing_scalar() -> Scalar {
    Scalar::from(0x0123_4567_89ab_cdefu64) * Scalar::from(0xfedc_ba98_7654_3210u64)
}

/// `--calibrate` (a million multiplications take about 15 s on two cores of
/// this kind): nothing but the bound's own work (variable-base
/// multiplications on all cores, with rayon like the job's), timed and
/// bounded exactly like a job. Its ratio is the floor of the ruler on this
/// machine at this moment: about 1.0 when the in-run unit times are a fair
/// price of the work.
fn calibrate(muls: usize, cores: usize, json: bool) -> Result<bool> {
    if muls == 0 {
        bail!("--calibrate needs at least one multiplication");
    }
    let points: Vec<RistrettoPoint> = (0..1024u32)
        .map(|i| curve::hash_to_point(MatchKind::Email, &Digest::of(&i.to_string())))
        .collect();
    let k = timing_scalar();
    let ((), timing) = sampled(|| {
        (0..muls).into_par_iter().with_min_len(64).for_each(|i| {
            black_box(k * black_box(&points[i % points.len()]));
        });
    })?;
    let bound_s = muls as f64 * timing.during.mul_s / cores as f64;
    let ratio = timing.wall_s / bound_s;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "calibration_muls": muls,
                "cores": cores,
                "t_scalar_mul_us": timing.during.mul_s * 1e6,
                "primitive_samples": timing.samples,
                "wall_s": timing.wall_s,
                "bound_s": bound_s,
                "ratio": ratio,
                "cpu_busy": timing.cpu_busy,
            })
        );
    } else {
        println!(
            "calibration: {muls} multiplications alone on {cores} cores: \
             wall {:.2} s, bound {bound_s:.2} s (mul {:.2} µs, mean of {} samples), \
             ratio {ratio:.3}; CPU busy {:.1}%",
            timing.wall_s,
            timing.during.mul_s * 1e6,
            timing.samples,
            timing.cpu_busy * 100.0
        );
    }
    Ok(true)
}

/// Until `stop`: every second, a burst of each primitive timed in this
/// thread's CPU time (about 1% of one core).
fn sample_primitives(stop: &AtomicBool) -> Vec<Primitives> {
    const BURST: u32 = 100;
    let mut samples = Vec::new();
    // Bounded by the job: the caller sets `stop` when `run_match` returns.
    while !stop.load(Ordering::SeqCst) {
        samples.push(Primitives::burst(
            BURST,
            &thread_cpu_seconds,
            &|t0: &f64| thread_cpu_seconds() - t0,
        ));
        for _ in 0..10 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    samples
}

#[derive(Serialize)]
struct Report {
    records: usize,
    graph: usize,
    cores: usize,
    /// Mean unit times sampled during the job: the bound's.
    t_hash_to_point_us: f64,
    t_scalar_mul_us: f64,
    primitive_samples: usize,
    /// Fastest standalone unit times of the run.
    fastest_t_hash_to_point_us: f64,
    fastest_t_scalar_mul_us: f64,
    import_wall_s: f64,
    /// The import's curve work (hash-to-point and `b·P(y)` per identifier)
    /// on all cores, at the unit times sampled during the import.
    import_bound_s: f64,
    import_ratio: f64,
    /// Share of the machine's CPU time busy during the import.
    import_cpu_busy: f64,
    /// CPU seconds the server and this client (normalising and hashing)
    /// spent on the import: where its wall time above the bound goes.
    import_server_cpu_s: f64,
    import_client_cpu_s: f64,
    /// Both processes' CPU time over the bound's (bound × cores): the
    /// import's overhead with the machine's other load taken out.
    import_cpu_ratio: f64,
    wall_s: f64,
    bound_s: f64,
    ratio: f64,
    ratio_vs_fastest: f64,
    rows_per_s: f64,
    /// Share of the machine's CPU time that was busy during the job.
    cpu_busy: f64,
    /// Share of it the hypervisor gave to others (wall time in which no
    /// thread of ours, nor the unit-time sampler, ran).
    cpu_steal: f64,
    phases: Vec<Phase>,
    repeat: Option<RepeatReport>,
    delta: Option<DeltaReport>,
    server_peak_rss_bytes: u64,
    client_peak_rss_bytes: u64,
    /// On PostgreSQL (`--database-url`).
    database: Option<DatabaseReport>,
}

/// The PostgreSQL database's own footprint.
#[derive(Serialize)]
struct DatabaseReport {
    /// Peak proportional set size of the machine's PostgreSQL processes
    /// during the import and the jobs.
    peak_memory_bytes: u64,
    /// `pg_database_size` after the import, and after the jobs.
    size_after_import_bytes: u64,
    size_bytes: u64,
    /// `pg_total_relation_size` of each table after the import, largest first.
    tables_after_import: Vec<(String, u64)>,
    /// The same after the jobs (graph-pass caches, uploads and audiences added).
    tables: Vec<(String, u64)>,
}

/// A delta import (`--delta-percent`).
#[derive(Serialize)]
struct DeltaReport {
    percent: f64,
    /// New identifiers (hashed and blinded: the bound's work).
    added_identifiers: usize,
    /// Persons removed (as many identifiers as added).
    removed_persons: usize,
    wall_s: f64,
    bound_s: f64,
    ratio: f64,
    /// The target: 1.25 × the bound + 10 s (the base's bulk copy).
    target_s: f64,
    cpu_busy: f64,
}

/// The second job with the same key: its graph pass is served by the cache.
#[derive(Serialize)]
struct RepeatReport {
    job: Phase,
    ratio_vs_fastest: f64,
    t_hash_to_point_us: f64,
    t_scalar_mul_us: f64,
    cpu_busy: f64,
    cpu_steal: f64,
    phases: Vec<Phase>,
}

/// Run the benchmark; `Ok(true)` when it completed.
pub fn run(args: &BenchArgs) -> Result<bool> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(muls) = args.calibrate {
        return calibrate(muls, cores, args.json);
    }
    let mut prims = Primitives::measure();
    let dir = tempfile::tempdir()?;
    let work = dir.path();
    let ids_csv = work.join("ids.csv");
    let cookies_csv = work.join("cookies.csv");
    let crm_csv = work.join("crm.csv");
    write_graph(args.graph, &ids_csv, &cookies_csv)?;
    write_crm(args.records, args.graph / 2, &crm_csv)?;

    let database_url = args.database_url.as_deref();
    let server = ServerProcess::start_on(
        &work.join("server"),
        database_url,
        &[("MIN_JOB_ROWS", "1"), ("PRIVACY_BUDGET", "1000")],
    )?;
    let database_memory = database_url.map(|_| PostgresMemory::sample());
    let admin = ApiClient::new(&server.url, Some(&server.ca), &server.admin_key)?;
    let advertiser_key =
        onboard_client::create_principal(&admin, "bench-advertiser", Role::Advertiser)?.api_key;
    onboard_client::create_principal(&admin, "bench-dsp", Role::Destination)?;

    let cpu_before = (
        server.cpu_seconds()?,
        process_cpu_seconds(std::process::id())?,
    );
    let (imported, import) = sampled(|| {
        onboard_client::import_graph(
            &admin,
            &ids_csv,
            Some(&cookies_csv),
            Region::default(),
            false,
        )
    })?;
    imported?;
    let import_server_cpu_s = server.cpu_seconds()? - cpu_before.0;
    let import_client_cpu_s = process_cpu_seconds(std::process::id())? - cpu_before.1;
    let import_bound_s = import_bound(import.during, args.graph, cores);
    let after_import = database_url.map(postgres_sizes).transpose()?;

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

    prims.remeasure();
    let job = timed_job(&advertiser, &options)?;
    prims.remeasure();
    let repeat = if args.repeat {
        let r = timed_job(&advertiser, &options)?;
        prims.remeasure();
        Some(r)
    } else {
        None
    };

    let delta = match args.delta_percent {
        Some(percent) => Some(run_delta(&admin, dir.path(), args.graph, percent, cores)?),
        None => None,
    };

    // Only the graph's emails take part in an email-only job.
    let work = Work {
        records: args.records,
        graph_points: args.graph / 2,
    };
    let bound_with = |p: Primitives, hashes: usize, muls: usize| {
        (hashes as f64 * p.hash_s + muls as f64 * p.mul_s) / cores as f64
    };
    let bounds = |p: Primitives| {
        (
            work.upload(&|h, m| bound_with(p, h, m)),
            work.graph_pass(&|h, m| bound_with(p, h, m)),
        )
    };
    let (upload_bound, graph_bound) = bounds(job.timing.during);
    let bound_s = upload_bound + graph_bound;
    let fastest_bound_s = {
        let (u, g) = bounds(prims);
        u + g
    };
    let repeat_report = repeat.map(|r| {
        let (upload_bound, _) = bounds(r.timing.during);
        RepeatReport {
            job: Phase::new("repeat-job", r.timing.wall_s, upload_bound, args.records),
            ratio_vs_fastest: r.timing.wall_s / bounds(prims).0,
            t_hash_to_point_us: r.timing.during.hash_s * 1e6,
            t_scalar_mul_us: r.timing.during.mul_s * 1e6,
            cpu_busy: r.timing.cpu_busy,
            cpu_steal: r.timing.cpu_steal,
            phases: phases(&r.outcome.timings, args.records, upload_bound, 0.0),
        }
    });

    let database = match (database_url, after_import, database_memory) {
        (Some(url), Some((size_after_import_bytes, tables_after_import)), Some(memory)) => {
            let (size_bytes, tables) = postgres_sizes(url)?;
            Some(DatabaseReport {
                peak_memory_bytes: memory.peak(),
                size_after_import_bytes,
                size_bytes,
                tables_after_import,
                tables,
            })
        }
        _ => None,
    };
    let report = Report {
        records: args.records,
        graph: args.graph,
        cores,
        t_hash_to_point_us: job.timing.during.hash_s * 1e6,
        t_scalar_mul_us: job.timing.during.mul_s * 1e6,
        primitive_samples: job.timing.samples,
        fastest_t_hash_to_point_us: prims.hash_s * 1e6,
        fastest_t_scalar_mul_us: prims.mul_s * 1e6,
        import_wall_s: import.wall_s,
        import_bound_s,
        import_ratio: import.wall_s / import_bound_s,
        import_cpu_busy: import.cpu_busy,
        import_server_cpu_s,
        import_client_cpu_s,
        import_cpu_ratio: (import_server_cpu_s + import_client_cpu_s)
            / (import_bound_s * cores as f64),
        wall_s: job.timing.wall_s,
        bound_s,
        ratio: job.timing.wall_s / bound_s,
        ratio_vs_fastest: job.timing.wall_s / fastest_bound_s,
        rows_per_s: args.records as f64 / job.timing.wall_s,
        cpu_busy: job.timing.cpu_busy,
        cpu_steal: job.timing.cpu_steal,
        phases: phases(
            &job.outcome.timings,
            args.records,
            upload_bound,
            graph_bound,
        ),
        repeat: repeat_report,
        delta,
        server_peak_rss_bytes: server.peak_rss()?,
        client_peak_rss_bytes: peak_rss(std::process::id())?,
        database,
    };
    drop(server);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(true)
}

/// An import's curve work on all cores: one hash-to-point and one
/// multiplication by `b` per identifier.
fn import_bound(p: Primitives, identifiers: usize, cores: usize) -> f64 {
    identifiers as f64 * (p.hash_s + p.mul_s) / cores as f64
}

/// A delta replacing `percent`% of the graph's identifiers: the first
/// persons removed, as many new persons (an email and a phone each, one
/// cookie) added.
fn run_delta(
    admin: &ApiClient,
    dir: &Path,
    graph: usize,
    percent: f64,
    cores: usize,
) -> Result<DeltaReport> {
    let persons = ((graph as f64 * percent / 100.0) / 2.0).round().max(1.0) as usize;
    let ids = dir.join("delta-ids.csv");
    let cookies = dir.join("delta-cookies.csv");
    let removed = dir.join("delta-remove.csv");
    write_persons(graph / 2..graph / 2 + persons, &ids, &cookies)?;
    let mut out = BufWriter::new(std::fs::File::create(&removed)?);
    writeln!(out, "person_id")?;
    for i in 0..persons {
        writeln!(out, "p{i}")?;
    }
    out.flush()?;
    drop(out);
    let files = onboard_client::GraphFiles {
        identifiers: Some(&ids),
        cookies: Some(&cookies),
        remove_persons: Some(&removed),
    };
    let (imported, timing) =
        sampled(|| onboard_client::import_delta(admin, files, Region::default(), false))?;
    let summary = imported?;
    if summary.removed == 0 || summary.added == 0 {
        bail!("the delta changed nothing: {summary:?}");
    }
    let added_identifiers = 2 * persons;
    let bound_s = import_bound(timing.during, added_identifiers, cores);
    Ok(DeltaReport {
        percent,
        added_identifiers,
        removed_persons: persons,
        wall_s: timing.wall_s,
        bound_s,
        ratio: timing.wall_s / bound_s,
        target_s: 1.25 * bound_s + 10.0,
        cpu_busy: timing.cpu_busy,
    })
}

/// The curve work of an email-only job.
struct Work {
    records: usize,
    graph_points: usize,
}

impl Work {
    /// Client: hash + a·P(x) per row; server: b·(a·P(x)) per row.
    fn upload(&self, bound: &dyn Fn(usize, usize) -> f64) -> f64 {
        bound(self.records, 2 * self.records)
    }

    /// Client: a·(b·P(y)) per graph point.
    fn graph_pass(&self, bound: &dyn Fn(usize, usize) -> f64) -> f64 {
        bound(0, self.graph_points)
    }
}

/// The client's phases, and `exchange` for the graph pass and the upload,
/// which run at the same time (each alone has no bound of its own then).
fn phases(
    timings: &[(&'static str, f64)],
    records: usize,
    upload_bound: f64,
    graph_bound: f64,
) -> Vec<Phase> {
    let mut out = Vec::new();
    let mut exchange: Option<f64> = None;
    for &(name, secs) in timings {
        match name {
            "graph-pass" | "upload" => {
                out.push(Phase::new(name, secs, 0.0, records));
                exchange = Some(exchange.map_or(secs, |e| e.max(secs)));
            }
            _ => {
                if let Some(e) = exchange.take() {
                    out.push(Phase::new(
                        "exchange",
                        e,
                        upload_bound + graph_bound,
                        records,
                    ));
                }
                out.push(Phase::new(name, secs, 0.0, records));
            }
        }
    }
    if let Some(e) = exchange {
        out.push(Phase::new(
            "exchange",
            e,
            upload_bound + graph_bound,
            records,
        ));
    }
    out
}

fn print_table(r: &Report) {
    println!(
        "scale benchmark: N = {} CRM rows, M = {} graph identifiers, {} cores",
        r.records, r.graph, r.cores
    );
    println!(
        "primitives (1 core), mean of {} samples during the job: hash-to-point {:.2} µs, \
         variable-base mul {:.2} µs (fastest standalone: {:.2} µs, {:.2} µs)",
        r.primitive_samples,
        r.t_hash_to_point_us,
        r.t_scalar_mul_us,
        r.fastest_t_hash_to_point_us,
        r.fastest_t_scalar_mul_us
    );
    println!(
        "graph import (not in the match timing): wall {:.1} s, bound {:.1} s, import_ratio {:.2}; \
         CPU busy {:.1}%; CPU time: server {:.1} s, client {:.1} s, {:.2} × the bound's",
        r.import_wall_s,
        r.import_bound_s,
        r.import_ratio,
        r.import_cpu_busy * 100.0,
        r.import_server_cpu_s,
        r.import_client_cpu_s,
        r.import_cpu_ratio
    );
    println!(
        "{:<14} {:>10} {:>10} {:>7} {:>12}",
        "phase", "wall s", "bound s", "ratio", "rows/s"
    );
    for p in &r.phases {
        print_phase(p);
    }
    print_phase(&Phase::new("whole job", r.wall_s, r.bound_s, r.records));
    println!(
        "ratio with the fastest standalone unit times: {:.2}; CPU busy during the job: {:.1}% \
         (stolen by the hypervisor: {:.1}%)",
        r.ratio_vs_fastest,
        r.cpu_busy * 100.0,
        r.cpu_steal * 100.0
    );
    if let Some(rep) = &r.repeat {
        println!(
            "repeat job (cache), unit times during it: {:.2} µs, {:.2} µs",
            rep.t_hash_to_point_us, rep.t_scalar_mul_us
        );
        for p in &rep.phases {
            print_phase(p);
        }
        print_phase(&rep.job);
        println!(
            "ratio with the fastest standalone unit times: {:.2}; CPU busy: {:.1}% \
             (stolen: {:.1}%)",
            rep.ratio_vs_fastest,
            rep.cpu_busy * 100.0,
            rep.cpu_steal * 100.0
        );
    }
    if let Some(d) = &r.delta {
        println!(
            "delta import ({}% of the graph: {} identifiers added, {} persons removed): \
             wall {:.1} s, bound {:.1} s, ratio {:.2}, target {:.1} s (1.25 × bound + 10 s); \
             CPU busy {:.1}%",
            d.percent,
            d.added_identifiers,
            d.removed_persons,
            d.wall_s,
            d.bound_s,
            d.ratio,
            d.target_s,
            d.cpu_busy * 100.0
        );
    }
    println!(
        "peak RSS: server {:.0} MiB, client {:.0} MiB",
        r.server_peak_rss_bytes as f64 / 1048576.0,
        r.client_peak_rss_bytes as f64 / 1048576.0
    );
    if let Some(db) = &r.database {
        let mib = |b: u64| b as f64 / 1048576.0;
        println!(
            "PostgreSQL: peak memory (PSS of its processes) {:.0} MiB; database size {:.0} MiB \
             after the import, {:.0} MiB after the jobs",
            mib(db.peak_memory_bytes),
            mib(db.size_after_import_bytes),
            mib(db.size_bytes)
        );
        for (name, bytes) in db.tables.iter().filter(|(_, b)| *b >= 1 << 20) {
            println!("  {name:<24} {:>8.1} MiB", mib(*bytes));
        }
    }
}

fn print_phase(p: &Phase) {
    let (bound, ratio) = if p.bound_s > 0.0 {
        (format!("{:.2}", p.bound_s), format!("{:.2}", p.ratio))
    } else {
        ("-".to_owned(), "-".to_owned())
    };
    println!(
        "{:<14} {:>10.2} {:>10} {:>7} {:>12.0}",
        p.name, p.wall_s, bound, ratio, p.rows_per_s
    );
}

/// `M` identifiers: `M/2` persons with an email and a phone, one cookie each.
fn write_graph(m: usize, ids: &Path, cookies: &Path) -> Result<()> {
    write_persons(0..m / 2, ids, cookies)
}

/// Persons `persons`, each with an email, a phone and a cookie.
fn write_persons(persons: std::ops::Range<usize>, ids: &Path, cookies: &Path) -> Result<()> {
    let mut ids = BufWriter::new(std::fs::File::create(ids)?);
    let mut cookies = BufWriter::new(std::fs::File::create(cookies)?);
    writeln!(ids, "person_id,kind,value")?;
    writeln!(cookies, "person_id,destination,cookie_id")?;
    for i in persons {
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

//! `cargo run --release -- demo`: the whole product on one machine.
//!
//! A temporary data dir, `init` with dev TLS, the real server on an ephemeral
//! 127.0.0.1 port, a synthetic graph imported by the operator's tool, an
//! advertiser's CRM export matched through the real client code, each
//! destination pulling its audiences, then the report and a check of every
//! audience against the generator's ground truth.

use crate::synth::{self, Graph, DESTINATIONS};
use anyhow::{ensure, Context, Result};
use onboard_client::{ApiClient, MatchOptions, Role};
use onboard_protocol::{Region, SecretKey};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Options of `demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Persons in the synthetic identity graph.
    #[arg(long, default_value_t = 100_000)]
    pub persons: usize,
    /// Rows in the advertiser's CRM export.
    #[arg(long, default_value_t = 10_000)]
    pub rows: usize,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Minimum audience size `k` of the demo server.
    #[arg(long, default_value_t = 100)]
    pub k: u64,
}

/// Run the demo; `Ok(false)` when a ground-truth check failed.
pub fn run(args: &DemoArgs) -> Result<bool> {
    let started = Instant::now();
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let work = dir.path();
    let data_dir = work.join("server");

    step(
        "onboarder",
        "init: server keys, first admin key, dev TLS certificate",
    );
    let init = onboard_server::init(&onboard_server::InitOptions {
        data_dir: data_dir.clone(),
        dev_tls: true,
        admin_key_out: None,
        database_url: None,
    })?;
    let ca = init
        .ca_cert
        .clone()
        .context("init --dev-tls wrote no certificate")?;
    let config = onboard_server::Config {
        data_dir: data_dir.clone(),
        k: args.k,
        // The demo needs no Prometheus endpoint (nor a fixed port).
        metrics_listen: None,
        // The push receiver below runs on 127.0.0.1 with a dev certificate.
        webhook_allow_private_targets: true,
        webhook_ca: Some(ca.clone()),
        ..Default::default()
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let server = onboard_server::start(config, listener)?;
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    step("onboarder", &format!("serving on {url} (TLS)"));

    let admin = ApiClient::new(&url, Some(&ca), &init.admin_api_key)?;
    let advertiser_key =
        onboard_client::create_principal(&admin, "acme-retail", Role::Advertiser)?.api_key;
    let mut destination_keys = Vec::new();
    for d in DESTINATIONS {
        destination_keys.push((
            d,
            onboard_client::create_principal(&admin, d, Role::Destination)?.api_key,
        ));
    }
    step(
        "onboarder",
        "principals: advertiser acme-retail, destinations dsp-alpha and dmp-beta",
    );

    let graph = Graph::generate(args.persons, args.seed);
    let ids_csv = work.join("ids.csv");
    let cookies_csv = work.join("cookies.csv");
    graph.write_identifiers(&ids_csv)?;
    graph.write_cookies(&cookies_csv)?;
    let t = Instant::now();
    let import = onboard_client::import_graph(
        &admin,
        &ids_csv,
        Some(&cookies_csv),
        Region::default(),
        false,
    )?;
    step(
        "onboarder",
        &format!(
            "graph imported: {} persons, {} identifiers sent as digests, stored blinded ({:.1} s)",
            args.persons,
            graph.identifier_count(),
            t.elapsed().as_secs_f64()
        ),
    );
    let _ = import;

    let crm_csv = work.join("crm.csv");
    let truth = synth::write_crm(
        &graph,
        &synth::demo_segments(args.rows),
        &crm_csv,
        args.seed + 1,
    )?;
    let key_file = work.join("acme.key");
    write_secret(
        &key_file,
        &SecretKey::generate(&mut rand::thread_rng()).to_file_string(),
    )?;
    step(
        "advertiser",
        &format!(
            "CRM export: {} rows ({} without consent, {} malformed), segments Gold, Silver, Bronze, Platinum",
            truth.rows, truth.no_consent_rows, truth.malformed_rows
        ),
    );

    let advertiser = ApiClient::new(&url, Some(&ca), &advertiser_key)?;
    let t = Instant::now();
    let outcome = onboard_client::run_match(
        &advertiser,
        &match_options(&crm_csv, &key_file, DESTINATIONS[0]),
    )?;
    step(
        "advertiser",
        &format!("match job finished ({:.1} s)", t.elapsed().as_secs_f64()),
    );
    println!();
    println!("{}", onboard_client::render_outcome(&outcome));

    // The destination's side, and the check against the ground truth.
    let mut all_ok = true;
    let (dest_name, dest_key) = &destination_keys[0];
    let destination = ApiClient::new(&url, Some(&ca), dest_key)?;
    let audiences = onboard_client::list_audiences(&destination)?;
    step(
        dest_name,
        &format!("{} audience(s) listed", audiences.len()),
    );
    let report = outcome
        .report
        .as_ref()
        .context("the job returned no report")?;
    println!();
    println!("Ground-truth check (computed by the data generator, not by the matcher):");
    for segment in truth.matched.keys() {
        let expected = truth.expected_cookies(&graph, segment, dest_name);
        let persons = truth.persons_with_cookies(&graph, segment, dest_name) as u64;
        let audience = audiences.iter().find(|a| &a.segment == segment);
        let line = match audience {
            Some(a) => {
                let mut buf = Vec::new();
                onboard_client::pull_audience(&destination, &a.id, &mut buf)?;
                let delivered: BTreeSet<String> =
                    String::from_utf8(buf)?.lines().map(str::to_owned).collect();
                let ok = delivered == expected && persons >= args.k;
                all_ok &= ok;
                format!(
                    "{segment:<9} expected {:>5}, delivered {:>5}, {}",
                    expected.len(),
                    delivered.len(),
                    if ok { "identical" } else { "MISMATCH" }
                )
            }
            None => {
                let withheld = report
                    .segments
                    .iter()
                    .any(|s| &s.name == segment && s.status == "withheld");
                let ok = persons < args.k && withheld;
                all_ok &= ok;
                format!(
                    "{segment:<9} {persons} persons with cookies < k = {}: withheld {}",
                    args.k,
                    if ok { "as expected" } else { "WRONGLY" }
                )
            }
        };
        println!("  {line}");
    }
    // The other destination must see nothing of this job.
    let (other_name, other_key) = &destination_keys[1];
    let other = ApiClient::new(&url, Some(&ca), other_key)?;
    let leaked = onboard_client::list_audiences(&other)?.len();
    all_ok &= leaked == 0;
    println!("  {other_name:<9} sees {leaked} audience(s) of this job (expected 0)");

    all_ok &= push_demo(
        &url,
        &ca,
        &data_dir,
        work,
        (other_name, other_key),
        &advertiser,
        &crm_csv,
        &key_file,
        &graph,
        &truth,
        args.k,
    )?;

    server.stop();
    println!();
    println!(
        "{} in {:.1} s; temporary files removed.",
        if all_ok {
            "All checks passed"
        } else {
            "SOME CHECKS FAILED"
        },
        started.elapsed().as_secs_f64()
    );
    ensure!(
        audiences.len() <= truth.matched.len(),
        "more audiences than segments"
    );
    Ok(all_ok)
}

/// The second destination takes its audiences pushed: it registers a
/// `members` endpoint served by the reference receiver, the advertiser
/// matches for it, and each pushed file is checked against the ground truth.
#[allow(clippy::too_many_arguments)]
fn push_demo(
    url: &str,
    ca: &Path,
    data_dir: &Path,
    work: &Path,
    (name, key): (&str, &str),
    advertiser: &ApiClient,
    crm_csv: &Path,
    key_file: &Path,
    graph: &Graph,
    truth: &synth::CrmTruth,
    k: u64,
) -> Result<bool> {
    use onboard_client::receiver::{self, ReceiverOptions};
    println!();
    let destination = ApiClient::new(url, Some(ca), key)?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let hook = format!(
        "https://127.0.0.1:{}/onboard",
        listener.local_addr()?.port()
    );
    let endpoint = onboard_client::webhooks::set_webhook(&destination, &hook, Some("members"))?;
    let secret = endpoint.secret.context("a new endpoint has a secret")?;
    let out_dir = work.join("pushed");
    // The dev certificate of the server's data dir stands in for the DSP's.
    let tls = receiver::tls_config(
        &data_dir.join("tls").join("cert.pem"),
        &data_dir.join("tls").join("key.pem"),
    )?;
    let receiver = receiver::start(
        ReceiverOptions {
            secrets: vec![onboard_protocol::webhook::SigningSecret::parse(&secret)?],
            out_dir: out_dir.clone(),
            tolerance_secs: onboard_protocol::webhook::DEFAULT_TOLERANCE_SECS,
        },
        listener,
        tls,
    )?;
    step(
        name,
        &format!("push endpoint {hook} (members mode, reference receiver)"),
    );
    let t = Instant::now();
    let outcome = onboard_client::run_match(advertiser, &match_options(crm_csv, key_file, name))?;
    let report = outcome
        .report
        .as_ref()
        .context("the job returned no report")?;
    let released_at = Instant::now();
    step(
        "advertiser",
        &format!(
            "match job for {name} finished ({:.1} s)",
            t.elapsed().as_secs_f64()
        ),
    );
    let mut all_ok = true;
    println!("Pushed to {name} (checked against the ground truth):");
    for segment in truth.matched.keys() {
        let expected = truth.expected_cookies(graph, segment, name);
        let persons = truth.persons_with_cookies(graph, segment, name) as u64;
        let released = report
            .segments
            .iter()
            .find(|s| &s.name == segment)
            .and_then(|s| s.audience_id.clone());
        let line = match released {
            Some(id) => {
                let file = out_dir.join(format!("{id}.csv"));
                let deadline = Instant::now() + std::time::Duration::from_secs(60);
                while !file.exists() && Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                let pushed: BTreeSet<String> = text.lines().skip(1).map(str::to_owned).collect();
                let ok = pushed == expected && persons >= k;
                all_ok &= ok;
                format!(
                    "{segment:<9} expected {:>5}, pushed {:>5}, {} (written {} ms after the report)",
                    expected.len(),
                    pushed.len(),
                    if ok { "identical" } else { "MISMATCH" },
                    released_at.elapsed().as_millis()
                )
            }
            None => {
                let ok = persons < k;
                all_ok &= ok;
                format!(
                    "{segment:<9} withheld {}",
                    if ok { "as expected" } else { "WRONGLY" }
                )
            }
        };
        println!("  {line}");
    }
    receiver.stop();
    Ok(all_ok)
}

/// The demo CRM export's columns, matched for `destination`.
fn match_options(crm_csv: &Path, key_file: &Path, destination: &str) -> MatchOptions {
    MatchOptions {
        email_cols: vec!["email".into()],
        phone_cols: vec!["phone".into()],
        maid_cols: vec!["mobile_ad_id".into()],
        consent_col: Some("consent".into()),
        batch_size: 4096,
        ..MatchOptions::new(crm_csv, key_file, destination, "segment")
    }
}

fn step(who: &str, what: &str) {
    println!("[{who:>10}] {what}");
}

/// Write a secret file readable by its owner only.
pub fn write_secret(path: &Path, text: &str) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

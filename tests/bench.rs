//! The scale benchmark's command line, on small sizes: the JSON it prints
//! has the fields the design and its users rely on, and its ratios are the
//! wall times over the bounds it reports (never a check on the times).

mod common;

use common::SUITE;
use serde_json::Value;
use std::process::Command;

fn bench_json(args: &[&str]) -> Value {
    let out = Command::new(SUITE)
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("run bench");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

fn number(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("`{field}` is a number in {v}"))
}

fn assert_ratio_of(v: &Value) {
    let (wall, bound, ratio) = (
        number(v, "wall_s"),
        number(v, "bound_s"),
        number(v, "ratio"),
    );
    assert!(wall > 0.0 && bound > 0.0, "{v}");
    assert!((ratio - wall / bound).abs() < 1e-9 * ratio, "{v}");
}

#[test]
fn the_benchmark_reports_the_whole_flow_and_the_repeat_job() {
    let r = bench_json(&["--records", "400", "--graph", "3000", "--repeat"]);
    assert_eq!(r["records"], 400);
    assert_eq!(r["graph"], 3000);
    assert_ratio_of(&r);
    assert!(number(&r, "server_peak_rss_bytes") > 1e6, "{r}");
    assert!(number(&r, "client_peak_rss_bytes") > 1e6, "{r}");
    assert!(number(&r, "t_scalar_mul_us") > 0.0 && number(&r, "t_hash_to_point_us") > 0.0);
    let phases: Vec<&str> = r["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| p["name"].as_str().expect("phase name"))
        .collect();
    for phase in [
        "quality",
        "create",
        "graph-pass",
        "upload",
        "exchange",
        "finish",
    ] {
        assert!(phases.contains(&phase), "{phase} in {phases:?}");
    }
    // The repeat job is served by the cache: its bound has no graph pass.
    let repeat = &r["repeat"];
    let job = &repeat["job"];
    assert_ratio_of(job);
    assert!(number(job, "bound_s") < number(&r, "bound_s"), "{r}");
}

#[test]
fn calibration_times_multiplications_alone_against_their_bound() {
    let c = bench_json(&["--calibrate", "2000"]);
    assert_eq!(c["calibration_muls"], 2000);
    assert_ratio_of(&c);
    assert!(number(&c, "primitive_samples") >= 1.0, "{c}");
    let bound = 2000.0 * number(&c, "t_scalar_mul_us") * 1e-6 / number(&c, "cores");
    assert!((number(&c, "bound_s") - bound).abs() < 1e-9 * bound, "{c}");
}

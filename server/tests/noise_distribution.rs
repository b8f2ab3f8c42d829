//! The noise sampler against the exact discrete Laplace distribution,
//! `P(x) = (1 − α)/(1 + α) · α^|x|` with `α = exp(−ε)`, on draws from a
//! seeded generator: a chi-square goodness-of-fit test at significance
//! 0.001, which a constant, a one-sided and a wrongly scaled sampler all
//! fail (checked below on the same statistic), and the spread at the
//! accepted bounds of ε.
//!
//! Kept out of the library's unit tests because of its 10^6 draws (a few
//! seconds in the unoptimised test profile).

use onboard_server::config::{Epsilon, EPSILON_MAX, EPSILON_MIN};
use onboard_server::services::privacy::discrete_laplace;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::BTreeMap;

/// The standard normal quantile at 1 − 0.001: the test's significance.
const Z_999: f64 = 3.090_232;

fn eps(num: u64, den: u64) -> Epsilon {
    Epsilon::new(num, den).unwrap()
}

fn as_f64(e: Epsilon) -> f64 {
    e.num() as f64 / e.den() as f64
}

fn pmf(epsilon: f64, x: i64) -> f64 {
    let alpha = (-epsilon).exp();
    (1.0 - alpha) / (1.0 + alpha) * alpha.powi(x.unsigned_abs() as i32)
}

/// `P(X > m) = P(X < −m)`.
fn tail(epsilon: f64, m: i64) -> f64 {
    let alpha = (-epsilon).exp();
    pmf(epsilon, m + 1) / (1.0 - alpha)
}

fn histogram(samples: impl Iterator<Item = i64>) -> (BTreeMap<i64, u64>, u64) {
    let mut h = BTreeMap::new();
    let mut n = 0;
    for x in samples {
        *h.entry(x).or_insert(0) += 1;
        n += 1;
    }
    (h, n)
}

fn draws(epsilon: Epsilon, n: usize, seed: u64) -> BTreeMap<i64, u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    histogram((0..n).map(|_| discrete_laplace(epsilon, &mut rng))).0
}

/// Chi-square statistic and degrees of freedom of a histogram against the
/// pmf at `epsilon`: one bin per x with |x| ≤ m, where m is the largest
/// value whose bins and pooled tails (x < −m, x > m) all expect ≥ 5.
fn chi_square(h: &BTreeMap<i64, u64>, epsilon: f64) -> (f64, usize) {
    let n = h.values().sum::<u64>() as f64;
    let mut m = 0;
    while n * pmf(epsilon, m + 1) >= 5.0 && n * tail(epsilon, m + 1) >= 5.0 {
        m += 1;
    }
    let observed =
        |range: &mut dyn Iterator<Item = (&i64, &u64)>| range.map(|(_, c)| *c).sum::<u64>() as f64;
    let mut bins: Vec<(f64, f64)> = (-m..=m)
        .map(|x| (h.get(&x).copied().unwrap_or(0) as f64, n * pmf(epsilon, x)))
        .collect();
    bins.push((observed(&mut h.range(..-m)), n * tail(epsilon, m)));
    bins.push((observed(&mut h.range(m + 1..)), n * tail(epsilon, m)));
    let stat = bins.iter().map(|(o, e)| (o - e) * (o - e) / e).sum();
    (stat, bins.len() - 1)
}

/// The chi-square critical value at significance 0.001 (Wilson–Hilferty;
/// within 1% of the exact quantile for the 20+ degrees of freedom used here).
fn critical(df: usize) -> f64 {
    let k = df as f64;
    let c = 2.0 / (9.0 * k);
    k * (1.0 - c + Z_999 * c.sqrt()).powi(3)
}

fn fits(h: &BTreeMap<i64, u64>, epsilon: f64) -> Result<(), String> {
    let (stat, df) = chi_square(h, epsilon);
    let limit = critical(df);
    eprintln!("ε {epsilon}: χ² = {stat:.1}, critical {limit:.1} at df {df}");
    if stat <= limit {
        Ok(())
    } else {
        Err(format!("χ² = {stat:.1} > {limit:.1} (df {df})"))
    }
}

#[test]
fn a_million_draws_fit_the_exact_pmf_and_broken_samplers_do_not() {
    let epsilon = eps(1, 2);
    let e = as_f64(epsilon);
    let n = 1_000_000;
    let h = draws(epsilon, n, 0x5eed);
    assert_eq!(h.values().sum::<u64>(), n as u64);
    let (_, df) = chi_square(&h, e);
    assert!(df >= 40, "too few bins: {df}");
    fits(&h, e).unwrap();

    // The same statistic refuses the samplers a mean check would pass.
    let constant = BTreeMap::from([(0, n as u64)]);
    assert!(fits(&constant, e).is_err(), "constant sampler passed");
    let (one_sided, _) = histogram(
        h.iter()
            .flat_map(|(x, c)| std::iter::repeat_n(x.abs(), *c as usize)),
    );
    assert!(fits(&one_sided, e).is_err(), "one-sided sampler passed");
    // A tenth off in scale either way (fewer draws suffice to show it).
    for wrong in [eps(11, 20), eps(9, 20)] {
        let h = draws(wrong, 200_000, 0x5eed);
        assert!(
            fits(&h, e).is_err(),
            "sampler at ε {wrong} passed for ε {epsilon}"
        );
    }
}

#[test]
fn other_fractions_fit_their_pmf() {
    // A denominator that is not a power of ten, and a numerator above 1 (⌊X/s⌋).
    for (epsilon, seed) in [(eps(1, 3), 1), (eps(3, 2), 2), (EPSILON_MAX, 3)] {
        let h = draws(epsilon, 200_000, seed);
        fits(&h, as_f64(epsilon)).unwrap_or_else(|e| panic!("ε {epsilon}: {e}"));
    }
}

/// Sample variance against the exact `2α/(1 − α)²`.
fn variance_check(epsilon: Epsilon, n: usize, tolerance: f64) {
    let mut rng = StdRng::seed_from_u64(epsilon.den());
    let xs: Vec<f64> = (0..n)
        .map(|_| discrete_laplace(epsilon, &mut rng) as f64)
        .collect();
    let mean = xs.iter().sum::<f64>() / n as f64;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
    let alpha = (-as_f64(epsilon)).exp();
    let exact = 2.0 * alpha / ((1.0 - alpha) * (1.0 - alpha));
    let rel = (var - exact).abs() / exact;
    assert!(
        rel < tolerance,
        "ε {epsilon}: variance {var:.4}, exact {exact:.4}"
    );
    // Centred: within 5 standard errors of zero.
    assert!(
        mean.abs() < 5.0 * (exact / n as f64).sqrt(),
        "ε {epsilon}: mean {mean}"
    );
}

#[test]
fn at_the_bounds_of_epsilon_the_spread_is_right() {
    // Relative standard error of a Laplace sample variance is √(5/n): 5 of
    // them at n = 200,000 is 2.5%.
    variance_check(EPSILON_MIN, 200_000, 0.025);
    variance_check(EPSILON_MAX, 200_000, 0.025);
    // Largest denominator accepted, near each bound.
    variance_check(eps(1_999_999, 1_000_000), 200_000, 0.025);
    variance_check(eps(1_001, 1_000_000), 200_000, 0.025);
}

//! Privacy rules (design §6): exact discrete Laplace noise, shown counts,
//! match-rate buckets, the ε budget charged per released noisy value, and
//! the difference check between audiences.
//!
//! The noise is sampled exactly, after Canonne, Kamath and Steinke, "The
//! Discrete Gaussian for Differential Privacy" (2020), Algorithms 1 and 2:
//! the only randomness is uniform integers and the only arithmetic is on
//! integers, so no floating-point rounding shapes the distribution (the flaw
//! Mironov's 2012 attack on textbook Laplace samplers exploits). Its expected
//! number of draws is bounded by a constant whatever ε is.

use super::{unix_now, Services};
use crate::config::{Epsilon, MicroEpsilon, EPSILON_MIN};
use crate::error::ApiError;
use crate::storage::BudgetExhausted;
use rand::rngs::OsRng;
use rand::{CryptoRng, Rng, RngCore};
use std::cmp::Ordering;

/// The random choices the sampler makes. Every `RngCore + CryptoRng`
/// (`OsRng` in production, a seeded `StdRng` in tests) provides them; tests
/// can also drive them one by one to enumerate the sampler's outcomes.
pub trait Choices {
    /// A uniform integer in `[0, n)`; `n > 0`.
    fn below(&mut self, n: u128) -> u128;

    /// Bernoulli(`num/den`), `num ≤ den`, `den > 0`: true with that probability.
    fn bernoulli(&mut self, num: u128, den: u128) -> bool {
        self.below(den) < num
    }
}

impl<R: RngCore + CryptoRng> Choices for R {
    fn below(&mut self, n: u128) -> u128 {
        // rand's integer ranges are exact (rejection sampling, no modulo bias).
        self.gen_range(0..n.max(1))
    }
}

/// Bernoulli(exp(−num/den)) for `num ≤ den` (Algorithm 1 for γ ∈ [0, 1]):
/// count K up while Bernoulli(γ/K) succeeds; K ends odd with probability
/// `1 − γ + γ²/2! − … = exp(−γ)`.
fn bernoulli_exp_neg_unit<C: Choices + ?Sized>(num: u128, den: u128, choices: &mut C) -> bool {
    let mut k: u128 = 1;
    // γ/K ≤ 1/K, so K passes 20 with probability below 1/20!; u128 cannot overflow.
    while choices.bernoulli(num, den.saturating_mul(k)) {
        k = k.saturating_add(1);
    }
    k % 2 == 1
}

/// Bernoulli(exp(−num/den)) for any rational γ = `num/den` ≥ 0
/// (Algorithm 1): one Bernoulli(exp(−1)) per whole unit of γ, all of which
/// must succeed, then one for the fractional rest. `den = 0` (γ = ∞) is false.
pub fn bernoulli_exp_neg<C: Choices + ?Sized>(num: u64, den: u64, choices: &mut C) -> bool {
    if den == 0 {
        return false;
    }
    let (num, den) = (u128::from(num), u128::from(den));
    for _ in 0..num / den {
        if !bernoulli_exp_neg_unit(1, 1, choices) {
            return false;
        }
    }
    bernoulli_exp_neg_unit(num % den, den, choices)
}

/// One draw of discrete Laplace noise, `P(x) ∝ exp(−ε·|x|)` on the integers
/// (scale 1/ε), for ε = s/t exactly (Algorithm 2): X = U + t·V is geometric
/// with ratio exp(−1/t) (U uniform below t kept with probability exp(−U/t),
/// V counting Bernoulli(exp(−1)) successes), Y = ⌊X/s⌋ is geometric with
/// ratio exp(−ε), and a fair sign is attached, rejecting "−0" so that zero
/// is not counted twice. A zero ε (which the configuration refuses) is drawn
/// at [`EPSILON_MIN`] rather than divided by.
pub fn discrete_laplace<C: Choices + ?Sized>(epsilon: Epsilon, choices: &mut C) -> i64 {
    let epsilon = if epsilon.num() == 0 {
        EPSILON_MIN
    } else {
        epsilon
    };
    let (s, t) = (u128::from(epsilon.num()), u128::from(epsilon.den()));
    loop {
        if let Some(x) = laplace_attempt(s, t, choices) {
            return x;
        }
    }
}

/// One attempt of Algorithm 2 (`s, t > 0`): the draw, or `None` to start
/// again (attempts are independent, so the draw's law is this attempt's
/// law given that it succeeded).
fn laplace_attempt<C: Choices + ?Sized>(s: u128, t: u128, choices: &mut C) -> Option<i64> {
    let u = choices.below(t);
    if !bernoulli_exp_neg_unit(u, t, choices) {
        return None;
    }
    let mut v: u128 = 0;
    while bernoulli_exp_neg_unit(1, 1, choices) {
        v = v.saturating_add(1);
    }
    let y = u.saturating_add(t.saturating_mul(v)) / s;
    let negative = choices.bernoulli(1, 2);
    if negative && y == 0 {
        return None;
    }
    let magnitude = i64::try_from(y).unwrap_or(i64::MAX);
    Some(if negative { -magnitude } else { magnitude })
}

/// `true_count` plus one draw of noise at `epsilon` (saturating).
pub fn noisy_count_with<C: Choices + ?Sized>(
    true_count: u64,
    epsilon: Epsilon,
    choices: &mut C,
) -> i64 {
    i64::try_from(true_count)
        .unwrap_or(i64::MAX)
        .saturating_add(discrete_laplace(epsilon, choices))
}

/// The count an advertiser is shown for a noisy value: "< k" when it is
/// below `k`, else rounded to the nearest 10 (halves up), never below `k`.
/// The decision reads the noisy value only: a "< k" on the true count would
/// be an exact threshold (see `release.rs`). Integer arithmetic only.
pub fn shown_count(noisy: i64, k: u64) -> String {
    if noisy < i64::try_from(k).unwrap_or(i64::MAX) {
        return format!("< {k}");
    }
    rounded_count(noisy, k)
}

/// A noisy count rounded to the nearest 10 (halves up), never below `k`.
fn rounded_count(noisy: i64, k: u64) -> String {
    let rounded = noisy.saturating_add(5).div_euclid(10).saturating_mul(10);
    rounded
        .max(i64::try_from(k).unwrap_or(i64::MAX))
        .to_string()
}

/// The match-rate bucket of an already noised matched count: whole percent
/// (rounded down), "> 85%" above 85, "0%" for an empty job. A raw matched
/// count must go through [`noisy_match_rate_with`] instead.
pub fn match_rate(matched: u64, total: u64) -> String {
    if total == 0 {
        return "0%".into();
    }
    let pct = matched.saturating_mul(100) / total;
    if pct > 85 {
        "> 85%".into()
    } else {
        format!("{pct}%")
    }
}

/// The shown match rate: the matched count noised at `epsilon`, held to
/// `[0, total]` (so the rate is never below 0% or above 100%), then
/// bucketed by [`match_rate`]. It is one released noisy value.
pub fn noisy_match_rate_with<C: Choices + ?Sized>(
    matched: u64,
    total: u64,
    epsilon: Epsilon,
    choices: &mut C,
) -> String {
    let noisy = noisy_count_with(matched, epsilon, choices).max(0);
    let held = u64::try_from(noisy).unwrap_or(0).min(total);
    match_rate(held, total)
}

/// Size of the symmetric difference of two sorted, duplicate-free
/// sequences, in one merge (audiences are stored in member order).
pub fn symmetric_difference<'a, T: Ord + 'a>(
    a: impl IntoIterator<Item = &'a T>,
    b: impl IntoIterator<Item = &'a T>,
) -> usize {
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    let mut different = 0;
    while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
        match x.cmp(y) {
            Ordering::Less => {
                different += 1;
                a.next();
            }
            Ordering::Greater => {
                different += 1;
                b.next();
            }
            Ordering::Equal => {
                a.next();
                b.next();
            }
        }
    }
    different + a.count() + b.count()
}

impl Services {
    /// `true_count` plus noise at the configured ε, from the OS CSPRNG.
    pub fn noisy_count(&self, true_count: u64) -> i64 {
        noisy_count_with(true_count, self.config.epsilon, &mut OsRng)
    }

    /// [`noisy_match_rate_with`] at the configured ε, from the OS CSPRNG.
    pub fn noisy_match_rate(&self, matched: u64, total: u64) -> String {
        noisy_match_rate_with(matched, total, self.config.epsilon, &mut OsRng)
    }

    /// Charge `released_values × ε` (sequential composition: each released
    /// noisy value spends ε) to the advertiser's budget for `job`, in one
    /// atomic step; refuse with `privacy-budget-exhausted` when the window's
    /// charges plus it would pass the budget. A job already charged is not
    /// charged again. Returns the job's charge.
    pub fn spend_budget(
        &self,
        advertiser: &str,
        job: &str,
        released_values: u64,
    ) -> Result<Epsilon, ApiError> {
        let cost = self
            .config
            .epsilon
            .micro_ceil()
            .saturating_mul(released_values);
        let budget = self.config.privacy_budget_micro;
        let now = unix_now();
        let window_start = now.saturating_sub(self.config.budget_window.as_secs());
        match self
            .repo
            .try_spend(advertiser, job, now, window_start, cost, budget)?
        {
            Ok(charge) => Ok(Epsilon::from_micro(charge.charged_micro)),
            Err(BudgetExhausted { spent_micro }) => Err(ApiError::BudgetExhausted {
                spent: MicroEpsilon(spent_micro),
                needed: MicroEpsilon(cost),
                budget: MicroEpsilon(budget),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::{BTreeMap, BTreeSet};

    fn eps(num: u64, den: u64) -> Epsilon {
        Epsilon::new(num, den).unwrap()
    }

    /// Drives the sampler through every sequence of choices, depth first,
    /// with each run's probability: the exact distribution of the outcome,
    /// except for runs cut off once their probability falls below `floor`
    /// (their total is reported, bounding the error).
    struct Walk {
        script: Vec<usize>,
        taken: Vec<(usize, usize)>,
        weight: f64,
        floor: f64,
        cut: bool,
    }

    impl Walk {
        /// Take one of `options` (weights by index); once cut, the last option.
        fn step(&mut self, options: usize, weight_of: impl Fn(usize) -> f64) -> usize {
            let pos = self.taken.len();
            if self.cut {
                self.taken.push((0, 1));
                return options - 1;
            }
            let choice = self.script.get(pos).copied().unwrap_or(0);
            self.taken.push((choice, options));
            self.weight *= weight_of(choice);
            if self.weight < self.floor {
                self.cut = true;
            }
            choice
        }
    }

    impl Choices for Walk {
        fn below(&mut self, n: u128) -> u128 {
            let n = usize::try_from(n).unwrap();
            self.step(n, |_| 1.0 / n as f64) as u128
        }

        fn bernoulli(&mut self, num: u128, den: u128) -> bool {
            if num == 0 || num >= den {
                return num >= den; // certain: no branch
            }
            let p = num as f64 / den as f64;
            // Option 0 is "true"; the cut's forced last option is "false",
            // which ends every loop of the sampler.
            self.step(2, |i| if i == 0 { p } else { 1.0 - p }) == 0
        }
    }

    /// Every outcome of `run` with its probability, and the probability cut off.
    fn enumerate<T: Ord>(
        floor: f64,
        mut run: impl FnMut(&mut Walk) -> T,
    ) -> (BTreeMap<T, f64>, f64) {
        let (mut outcomes, mut cut_mass) = (BTreeMap::new(), 0.0);
        let mut script = Vec::new();
        loop {
            let mut walk = Walk {
                script,
                taken: Vec::new(),
                weight: 1.0,
                floor,
                cut: false,
            };
            let outcome = run(&mut walk);
            if walk.cut {
                cut_mass += walk.weight;
            } else {
                *outcomes.entry(outcome).or_insert(0.0) += walk.weight;
            }
            let mut taken = walk.taken;
            loop {
                match taken.pop() {
                    None => return (outcomes, cut_mass),
                    Some((c, n)) if c + 1 < n => {
                        taken.push((c + 1, n));
                        break;
                    }
                    Some(_) => {}
                }
            }
            script = taken.into_iter().map(|(c, _)| c).collect();
        }
    }

    #[test]
    fn bernoulli_exp_neg_has_exactly_probability_exp_minus_gamma() {
        for (num, den) in [
            (0, 1),
            (1, 5),
            (1, 2),
            (2, 3),
            (1, 1),
            (3, 2),
            (2, 1),
            (7, 3),
        ] {
            let (outcomes, cut) = enumerate(1e-15, |w| bernoulli_exp_neg(num, den, w));
            let p_true = outcomes.get(&true).copied().unwrap_or(0.0);
            let p_false = outcomes.get(&false).copied().unwrap_or(0.0);
            let exact = (-(num as f64) / den as f64).exp();
            assert!(cut < 1e-12, "γ = {num}/{den}: {cut} cut off");
            assert!(
                (p_true - exact).abs() <= cut + 1e-12,
                "γ = {num}/{den}: P(true) = {p_true}, exp(−γ) = {exact}"
            );
            assert!((p_true + p_false + cut - 1.0).abs() < 1e-12);
        }
    }

    /// The exact discrete Laplace pmf, `(1 − α)/(1 + α) · α^|x|`, α = exp(−ε).
    fn pmf(epsilon: f64, x: i64) -> f64 {
        let alpha = (-epsilon).exp();
        (1.0 - alpha) / (1.0 + alpha) * alpha.powi(x.unsigned_abs() as i32)
    }

    #[test]
    fn discrete_laplace_has_exactly_the_discrete_laplace_pmf() {
        // Small denominators keep the tree of one attempt's choices small;
        // s = 1 and s > 1 both (⌊X/s⌋ matters only for s > 1).
        for (num, den) in [(1u64, 2u64), (1, 1), (3, 2), (2, 3), (2, 1)] {
            let (s, t) = (u128::from(num), u128::from(den));
            let (outcomes, cut) = enumerate(1e-10, |w| laplace_attempt(s, t, w));
            assert!(cut < 1e-4, "ε = {num}/{den}: {cut} cut off");
            let restart = outcomes.get(&None).copied().unwrap_or(0.0);
            assert!(restart < 0.75, "ε = {num}/{den}: restarts {restart}");
            let epsilon = num as f64 / den as f64;
            for x in -8..=8 {
                // The loop's law is the attempt's law given success.
                let p = outcomes.get(&Some(x)).copied().unwrap_or(0.0) / (1.0 - restart);
                let exact = pmf(epsilon, x);
                assert!(
                    (p - exact).abs() <= 4.0 * cut + 1e-12,
                    "ε = {num}/{den}, P({x}) = {p}, exact {exact}"
                );
            }
        }
    }

    #[test]
    fn zero_epsilon_is_drawn_at_the_smallest_accepted_not_noise_free() {
        let mut rng = StdRng::seed_from_u64(7);
        let spread = (0..2000)
            .map(|_| discrete_laplace(eps(0, 1), &mut rng).unsigned_abs())
            .max()
            .unwrap();
        assert!(spread > 1000, "{spread}");
    }

    proptest! {
        #[test]
        fn symmetric_difference_of_sorted_sequences_matches_sets(
            a in proptest::collection::btree_set(0u16..400, 0..200),
            b in proptest::collection::btree_set(0u16..400, 0..200),
        ) {
            let a_vec: Vec<u16> = a.iter().copied().collect();
            let b_vec: Vec<u16> = b.iter().copied().collect();
            prop_assert_eq!(
                symmetric_difference(&a_vec, &b_vec),
                a.symmetric_difference(&b).count()
            );
        }
    }

    #[test]
    fn counts_below_k_are_hidden_and_others_rounded_to_ten_not_below_k() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(shown_count(99, 100), "< 100");
        assert_eq!(shown_count(-3, 100), "< 100");
        assert_eq!(shown_count(100, 100), "100");
        assert_eq!(rounded_count(1004, 100), "1000");
        assert_eq!(rounded_count(1005, 100), "1010");
        assert_eq!(rounded_count(995, 100), "1000");
        assert_eq!(rounded_count(94, 100), "100");
        assert_eq!(rounded_count(-7, 50), "50");
        let shown: BTreeSet<String> = (0..2000)
            .map(|_| shown_count(noisy_count_with(1000, eps(1, 2), &mut rng), 100))
            .collect();
        // ±5 rounds away only when the noise passes 5: both neighbours appear.
        assert!(shown.contains("990") && shown.contains("1000") && shown.contains("1010"));
    }

    #[test]
    fn match_rate_buckets() {
        assert_eq!(match_rate(62, 100), "62%");
        assert_eq!(match_rate(85, 100), "85%");
        assert_eq!(match_rate(86, 100), "> 85%");
        assert_eq!(match_rate(0, 0), "0%");
    }

    #[test]
    fn noisy_match_rate_is_noised_and_stays_within_zero_and_the_cap() {
        let mut rng = StdRng::seed_from_u64(2);
        let wide = eps(1, 1000);
        let rates: BTreeSet<String> = (0..500)
            .map(|_| noisy_match_rate_with(50_000, 100_000, wide, &mut rng))
            .collect();
        assert!(rates.len() >= 3, "not noised: {rates:?}");
        let mut seen = BTreeSet::new();
        for _ in 0..2000 {
            for matched in [0, 1000] {
                let rate = noisy_match_rate_with(matched, 1000, wide, &mut rng);
                let ok = rate == "> 85%"
                    || rate
                        .strip_suffix('%')
                        .and_then(|n| n.parse::<u64>().ok())
                        .is_some_and(|n| n <= 85);
                assert!(ok, "{rate}");
                seen.insert(rate);
            }
        }
        // Noise below zero is held at 0%, noise above the total at the cap.
        assert!(seen.contains("0%") && seen.contains("> 85%"), "{seen:?}");
        assert_eq!(noisy_match_rate_with(5, 0, wide, &mut rng), "0%");
    }
}

//! Privacy rules (design §6): noisy counts, match-rate buckets, the ε budget
//! and the difference check between audiences.

use super::{unix_now, Services};
use crate::error::ApiError;
use rand::Rng;
use std::cmp::Ordering;

/// Two-sided geometric noise with parameter `alpha = exp(-epsilon)`, drawn
/// from the OS CSPRNG.
pub fn two_sided_geometric(epsilon: f64) -> i64 {
    let alpha = (-epsilon).exp();
    let mut rng = rand::rngs::OsRng;
    let mut geometric = || -> i64 {
        // Failures before the first success with p = 1 - alpha (inverse CDF).
        let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        (u.ln() / alpha.ln()).floor().min(1e9) as i64
    };
    geometric() - geometric()
}

/// The shown count: "< k" below k, else noised, rounded to 10, never below k.
pub fn shown_count(true_count: u64, k: u64, epsilon: f64) -> String {
    if true_count < k {
        return format!("< {k}");
    }
    let noisy = true_count as i64 + two_sided_geometric(epsilon);
    let rounded = ((noisy as f64 / 10.0).round() as i64 * 10).max(k as i64);
    rounded.to_string()
}

/// Match rate in whole percent, capped at "> 85%".
pub fn match_rate(matched: u64, rows: u64) -> String {
    if rows == 0 {
        return "0%".into();
    }
    let pct = matched.saturating_mul(100) / rows;
    if pct > 85 {
        "> 85%".into()
    } else {
        format!("{pct}%")
    }
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
    /// Refuse when one more report would pass the advertiser's budget.
    pub fn check_budget(&self, advertiser: &str) -> Result<(), ApiError> {
        let since = unix_now().saturating_sub(self.config.budget_window.as_secs());
        let spent = self.repo.spent_since(advertiser, since)?;
        if spent + self.config.epsilon > self.config.privacy_budget + 1e-9 {
            return Err(ApiError::BudgetExhausted {
                spent,
                budget: self.config.privacy_budget,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
    fn counts_below_k_are_hidden_and_others_rounded() {
        assert_eq!(shown_count(99, 100, 0.5), "< 100");
        for _ in 0..100 {
            let s: i64 = shown_count(1000, 100, 0.5).parse().unwrap();
            assert_eq!(s % 10, 0);
            assert!((900..=1100).contains(&s), "{s}");
        }
    }

    #[test]
    fn match_rate_buckets() {
        assert_eq!(match_rate(62, 100), "62%");
        assert_eq!(match_rate(86, 100), "> 85%");
        assert_eq!(match_rate(0, 0), "0%");
    }

    #[test]
    fn noise_is_centred() {
        let n = 20_000;
        let mean: f64 = (0..n).map(|_| two_sided_geometric(0.5) as f64).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.2, "{mean}");
    }
}

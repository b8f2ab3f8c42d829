//! The release rules of a finishing job's segments, decided on noisy values
//! so that no status, reason or count an advertiser sees depends on whether
//! one person is in the graph (review hole 3).
//!
//! A deterministic threshold is an exact oracle: with nested segments
//! `S₁ ⊂ S₂ ⊂ …` (one CRM row more each), the first segment to reach `k`
//! persons, or to differ from a released audience by `k`, names a row that
//! is in the graph. So each segment's size and its smallest difference from
//! the audiences released before it are compared with `k` only after noise
//! (two-sided geometric, the job's ε each), and must clear `k` by a margin
//! `T` chosen so that noise reaches `T` with probability at most δ. The hard
//! floors (never fewer than `k` persons, never a difference below `k`) stay,
//! but decide a status only in that δ event.

use crate::config::Epsilon;

/// `ln(1/δ)` for δ = 10⁻⁶: how unlikely it is that a hard floor, rather than
/// a noisy value, decides a status.
const LN_ONE_OVER_DELTA: f64 = 13.815_510_557_964_274;

/// The margin `T` by which a noisy value must clear `k`: two-sided geometric
/// noise of parameter ε is at least `T` with probability at most
/// `exp(−εT) ≤ δ`.
pub fn release_margin(epsilon: Epsilon) -> u64 {
    // A constant of the configuration, not a noise draw: floating point is
    // fine here. ε is validated positive at start; the guard keeps it finite.
    let epsilon = epsilon.num().max(1) as f64 / epsilon.den() as f64;
    (LN_ONE_OVER_DELTA / epsilon).ceil().min(1e12) as u64
}

/// Why a segment of `persons` reachable persons (noisy: `noisy`) is
/// withheld by the size rule, if it is.
pub fn size_withheld(persons: usize, noisy: i64, k: u64, margin: u64) -> Option<&'static str> {
    if !clears(noisy, k, margin) || (persons as u64) < k {
        Some("below-minimum-size")
    } else {
        None
    }
}

/// Is a candidate too close to the audiences released before it, given its
/// smallest difference in persons `difference` and that value noised?
pub fn too_close(difference: usize, noisy: i64, k: u64, margin: u64) -> bool {
    !clears(noisy, k, margin) || (difference as u64) < k
}

/// Is one side of a refresh (its added or its removed persons, `persons`,
/// noisy: `noisy`) applied? Only a side of at least `k` persons whose noisy
/// count clears `k` by the margin: an empty side and a small one are
/// treated alike (deferred), so whether a refresh is released never tells
/// zero from one (see `jobs/refresh.rs`).
pub fn change_applies(persons: usize, noisy: i64, k: u64, margin: u64) -> bool {
    clears(noisy, k, margin) && persons as u64 >= k
}

fn clears(noisy: i64, k: u64, margin: u64) -> bool {
    i128::from(noisy) >= i128::from(k) + i128::from(margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_bounds_the_chance_that_noise_clears_it() {
        for (num, den) in [(1, 20), (1, 2), (1, 1), (2, 1), (1, 1000)] {
            let t = release_margin(Epsilon::new(num, den).unwrap());
            let epsilon = num as f64 / den as f64;
            // P(X ≥ T) = αᵀ / (1 + α) with α = e^(−ε).
            let alpha = (-epsilon).exp();
            let p = alpha.powf(t as f64) / (1.0 + alpha);
            assert!(p <= 1e-6, "ε {epsilon}: T {t}, P {p}");
            // And not needlessly large: one less would exceed δ·(1+α)·e^ε.
            let p_less = alpha.powf((t - 1) as f64);
            assert!(p_less > 1e-6 * alpha, "ε {epsilon}: T {t} is not tight");
        }
        assert_eq!(release_margin(Epsilon::new(1, 2).unwrap()), 28);
    }

    #[test]
    fn statuses_need_the_noisy_value_and_the_true_one_to_clear_k() {
        let (k, t) = (100, 28);
        assert_eq!(size_withheld(500, 128, k, t), None);
        assert_eq!(size_withheld(500, 127, k, t), Some("below-minimum-size"));
        // The hard floor: a noisy value far off cannot release a small segment.
        assert_eq!(size_withheld(99, 10_000, k, t), Some("below-minimum-size"));
        assert!(!too_close(500, 128, k, t));
        assert!(too_close(500, 127, k, t));
        assert!(too_close(0, 10_000, k, t));
        assert!(too_close(99, 10_000, k, t));
        assert!(change_applies(150, 128, k, t));
        assert!(!change_applies(150, 127, k, t));
        // Zero and one are alike: neither applies, whatever the noise.
        assert!(!change_applies(0, 10_000, k, t));
        assert!(!change_applies(1, 10_000, k, t));
        assert!(!change_applies(99, 10_000, k, t));
    }
}

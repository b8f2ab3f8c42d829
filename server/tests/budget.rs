//! The privacy budget in storage: check-and-charge is one atomic step
//! (concurrent charges never pass the budget), idempotent per job, limited
//! to its window, and spends written by earlier builds (ε as `f64` per
//! record) are converted, not lost.

use onboard_server::storage::{
    open_store, BudgetCharge, BudgetExhausted, BudgetRepo, ExportRepo, Store, BUDGET_HISTORY_SECS,
};
use std::sync::{Arc, Barrier};

const DAY: u64 = 86_400;
const NOW: u64 = 1_750_000_000;
const WINDOW: u64 = 30 * DAY;

fn store() -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).unwrap();
    (dir, store)
}

/// Charge `cost` for `job` at `now` with a 30-day window.
fn spend(
    s: &Store,
    job: &str,
    now: u64,
    cost: u64,
    budget: u64,
) -> Result<BudgetCharge, BudgetExhausted> {
    s.try_spend("acme", job, now, now - WINDOW, cost, budget)
        .unwrap()
}

#[test]
fn concurrent_charges_stop_exactly_at_the_budget() {
    let (_dir, s) = store();
    let (budget, cost) = (10_000_000, 300_000);
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (s, barrier) = (s.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..25)
                    .filter(|j| spend(&s, &format!("t{t}-j{j}"), NOW, cost, budget).is_ok())
                    .count()
            })
        })
        .collect();
    let granted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(granted as u64, budget / cost, "33 charges fit, no more");
    assert_eq!(s.budget_spent("acme", NOW - WINDOW).unwrap(), 33 * cost);
}

#[test]
fn concurrent_retries_of_one_job_charge_it_once() {
    let (_dir, s) = store();
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (s, barrier) = (s.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                spend(&s, "job-1", NOW, 500_000, 20_000_000).unwrap()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().charged_micro, 500_000);
    }
    assert_eq!(s.budget_spent("acme", 0).unwrap(), 500_000);
}

#[test]
fn a_charged_job_is_not_charged_again_even_when_the_budget_is_spent() {
    let (_dir, s) = store();
    let budget = 1_000_000;
    let first = spend(&s, "job-1", NOW, 400_000, budget).unwrap();
    assert_eq!(
        first,
        BudgetCharge {
            charged_micro: 400_000,
            spent_micro: 400_000
        }
    );
    assert_eq!(
        spend(&s, "job-2", NOW, 600_000, budget)
            .unwrap()
            .spent_micro,
        budget
    );
    // Refused: 1 micro-ε over, and nothing recorded.
    assert_eq!(
        spend(&s, "job-3", NOW, 1, budget),
        Err(BudgetExhausted {
            spent_micro: budget
        })
    );
    // The retry of job-1 gets its charge back, with any cost, and pays nothing.
    assert_eq!(
        spend(&s, "job-1", NOW + 5, 900_000, budget),
        Ok(BudgetCharge {
            charged_micro: 400_000,
            spent_micro: budget
        })
    );
    assert_eq!(s.budget_spent("acme", 0).unwrap(), budget);
    // Another advertiser's budget is its own.
    let other = s
        .try_spend("acme-2", "job-1", NOW, NOW - WINDOW, 1_000_000, budget)
        .unwrap();
    assert!(other.is_ok());
}

#[test]
fn charges_count_only_inside_their_window() {
    let (_dir, s) = store();
    let budget = 1_000_000;
    spend(&s, "old", NOW - WINDOW, 1_000_000, budget).unwrap();
    // At the window's first second the old charge still counts...
    assert!(spend(&s, "new", NOW, 1, budget).is_err());
    // ...one second later it has left the window.
    assert_eq!(
        spend(&s, "new", NOW + 1, 1_000_000, budget),
        Ok(BudgetCharge {
            charged_micro: 1_000_000,
            spent_micro: 1_000_000
        })
    );
    assert_eq!(s.budget_spent("acme", NOW + 1 - WINDOW).unwrap(), 1_000_000);
    assert_eq!(s.budget_spent("acme", 0).unwrap(), 2_000_000);
}

#[test]
fn charges_are_kept_for_the_longest_window_then_dropped() {
    let (_dir, s) = store();
    spend(&s, "a", NOW, 7, 100).unwrap();
    spend(&s, "b", NOW + DAY, 11, 100).unwrap();
    // A later charge prunes what is older than the history (366 days).
    let later = NOW + BUDGET_HISTORY_SECS + 1;
    spend(&s, "c", later, 13, 100).unwrap();
    assert_eq!(s.budget_spent("acme", 0).unwrap(), 11 + 13);
}

/// A spend as earlier builds wrote it: `advertiser \0 unix job` → ε as f64.
fn legacy_spend(advertiser: &str, unix: u64, job: &str, epsilon: f64) -> (Vec<u8>, Vec<u8>) {
    let mut key = advertiser.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&unix.to_be_bytes());
    key.extend_from_slice(job.as_bytes());
    (key, epsilon.to_be_bytes().to_vec())
}

#[test]
fn spends_of_earlier_builds_are_converted_to_micro_epsilon_and_moved() {
    let (_dir, s) = store();
    s.import_entries(
        b"budget",
        &[
            legacy_spend("acme", NOW - 60, "job-old", 0.5),
            legacy_spend("acme", NOW - 30, "job-older", 0.1),
            legacy_spend("acme", NOW - WINDOW - 1, "job-expired", 1.0),
            legacy_spend("acme-2", NOW - 30, "job-x", 2.0),
        ],
    )
    .unwrap();
    // 0.1 is not exact in binary; it converts to the nearest micro-ε.
    assert_eq!(s.budget_spent("acme", NOW - WINDOW).unwrap(), 600_000);
    // A legacy job is recognised as charged.
    assert_eq!(
        spend(&s, "job-old", NOW, 900_000, 10_000_000).unwrap(),
        BudgetCharge {
            charged_micro: 500_000,
            spent_micro: 600_000
        }
    );
    assert_eq!(
        spend(&s, "job-new", NOW, 400_000, 1_000_000)
            .unwrap()
            .spent_micro,
        1_000_000
    );
    // The legacy records of acme left the tree; acme-2's stay until its turn.
    let mut keys = Vec::new();
    s.export_tree(b"budget", &mut |k, _| {
        keys.push(k.to_vec());
        Ok(())
    })
    .unwrap();
    assert!(keys.iter().all(|k| !k.starts_with(b"acme\0")), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with(b"acme-2\0")));
    assert_eq!(s.budget_spent("acme-2", 0).unwrap(), 2_000_000);
}

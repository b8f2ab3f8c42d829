//! Crash points for the crash tests, compiled in only with the `failpoints`
//! feature (which only the workspace's test builds turn on).
//!
//! `crash_point!("name", store)` is a [`fail`] fault point. It does nothing
//! unless the `FAILPOINTS` variable of `onboard-server serve` configures it:
//!
//! - `name=return` aborts the process right there (SIGABRT: no unwinding,
//!   no destructors, no flush), like a crash at that step;
//! - `name=return(durable)` first flushes the store, then aborts: the worst
//!   case for recovery, where everything written so far reached the disk.
//!
//! `fail`'s other actions work too (`2*off->return` fires on the third pass).
//! Before aborting it prints `crash point NAME` to stderr, so a test can tell
//! which point brought the server down.

/// A fault point that can abort the process (see the module documentation).
macro_rules! crash_point {
    ($name:literal, $store:expr) => {
        fail::fail_point!($name, |how| $crate::faults::crash($name, how, &*$store))
    };
}
pub(crate) use crash_point;

/// Abort the process at crash point `name`, after a flush if `how` says `durable`.
#[cfg(feature = "failpoints")]
pub(crate) fn crash(name: &str, how: Option<String>, store: &dyn crate::storage::Repo) -> ! {
    if how.as_deref() == Some("durable") {
        if let Err(e) = store.flush() {
            eprintln!("crash point {name}: the flush before the crash failed: {e}");
        }
    }
    eprintln!("crash point {name}: aborting");
    std::process::abort()
}

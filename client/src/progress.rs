//! How long operations report progress: the library calls [`ProgressSink`];
//! [`Bars`] draws it as indicatif bars on stderr (one bar per phase; phases
//! that run at once get a bar each), [`NoProgress`] drops it.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Receives progress of named phases; several may run at once (the graph
/// pass and the upload of a match do).
pub trait ProgressSink: Sync {
    /// A phase starts, with its total amount of work (0 when unknown).
    fn begin(&self, phase: &str, total: u64);
    /// `n` more units of `phase` are done.
    fn advance(&self, phase: &str, n: u64);
    /// `phase` is over.
    fn end(&self, phase: &str);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn begin(&self, _: &str, _: u64) {}
    fn advance(&self, _: &str, _: u64) {}
    fn end(&self, _: &str) {}
}

/// Terminal progress bars on stderr.
pub struct Bars {
    multi: MultiProgress,
    running: Mutex<Vec<(String, ProgressBar)>>,
}

impl Bars {
    /// The running bars. A thread that panicked while drawing leaves the
    /// list whole (each change is one push or remove), so a poisoned lock
    /// is taken as it is rather than failing the job over a progress bar.
    fn running(&self) -> MutexGuard<'_, Vec<(String, ProgressBar)>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with_bar(&self, phase: &str, f: impl FnOnce(&ProgressBar)) {
        let running = self.running();
        if let Some((_, bar)) = running.iter().find(|(name, _)| name == phase) {
            f(bar);
        }
    }

    /// Bars when `show` and stderr is a terminal; otherwise nothing.
    pub fn new_sink(show: bool) -> Box<dyn ProgressSink> {
        if show && std::io::stderr().is_terminal() {
            Box::new(Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                running: Mutex::new(Vec::new()),
            })
        } else {
            Box::new(NoProgress)
        }
    }
}

impl ProgressSink for Bars {
    fn begin(&self, phase: &str, total: u64) {
        let bar = if total > 0 {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()).with_style(
                ProgressStyle::with_template(
                    "{msg:>14} [{bar:40.cyan/blue}] {human_pos}/{human_len} ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            )
        } else {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
                ProgressStyle::with_template("{msg:>14} {spinner} {human_pos} ({per_sec})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            )
        };
        bar.set_message(phase.to_owned());
        let bar = self.multi.add(bar);
        let mut running = self.running();
        if let Some(i) = running.iter().position(|(name, _)| name == phase) {
            running.remove(i).1.finish_and_clear();
        }
        running.push((phase.to_owned(), bar));
    }

    fn advance(&self, phase: &str, n: u64) {
        self.with_bar(phase, |bar| bar.inc(n));
    }

    fn end(&self, phase: &str) {
        let mut running = self.running();
        if let Some(i) = running.iter().position(|(name, _)| name == phase) {
            running.remove(i).1.finish();
        }
    }
}

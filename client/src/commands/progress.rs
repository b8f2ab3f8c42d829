//! indicatif bars for the library's [`ProgressSink`]: one bar per phase,
//! hidden when stderr is not a terminal or with `--quiet`.

use crate::progress::{NoProgress, ProgressSink};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;

/// Terminal progress bars on stderr.
pub struct Bars {
    current: Mutex<Option<ProgressBar>>,
}

impl Bars {
    /// Bars when `show` and stderr is a terminal; otherwise nothing.
    pub fn new_sink(show: bool) -> Box<dyn ProgressSink> {
        if show && std::io::stderr().is_terminal() {
            Box::new(Bars {
                current: Mutex::new(None),
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
        if let Some(old) = self.current.lock().expect("progress lock").replace(bar) {
            old.finish_and_clear();
        }
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = self.current.lock().expect("progress lock").as_ref() {
            bar.inc(n);
        }
    }

    fn end(&self) {
        if let Some(bar) = self.current.lock().expect("progress lock").take() {
            bar.finish();
        }
    }
}

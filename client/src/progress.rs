//! How long operations report progress. The library only calls this trait;
//! the terminal bars that implement it live in `commands/progress.rs`.

/// Receives progress of one phase at a time.
pub trait ProgressSink: Sync {
    /// A phase starts, with its total amount of work (0 when unknown).
    fn begin(&self, phase: &str, total: u64);
    /// `n` more units are done.
    fn advance(&self, n: u64);
    /// The current phase is over.
    fn end(&self);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn begin(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn end(&self) {}
}

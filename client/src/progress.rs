//! How long operations report progress. The library only calls this trait;
//! the terminal bars that implement it live in `commands/progress.rs`.

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

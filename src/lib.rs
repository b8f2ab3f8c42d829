//! `onboard-suite`: the one-command demo, the scale benchmark and the
//! synthetic data (with its ground truth) that the end-to-end tests in
//! `tests/` share.

pub mod bench;
pub mod demo;
pub mod harness;
pub mod load;
pub mod synth;

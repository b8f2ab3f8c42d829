//! One file per console page (its handlers and its markup); `layout` holds
//! the frame every page shares.

pub mod audiences;
pub mod audit;
pub mod graph;
pub mod jobs;
pub mod layout;
pub mod login;
pub mod overview;
pub mod principals;
pub mod privacy;
pub mod quality;

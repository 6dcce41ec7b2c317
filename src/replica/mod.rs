//! The two kinds of replica: [`network`] (any host; the leader pushes every batch over
//! HTTP) and [`local`] (the leader's host; reads the leader's snapshot file through a
//! memory mapping).

pub mod local;
pub mod network;

//! Embedded readers: a leader's data directory mapped in this process and followed as
//! the leader publishes, with lookups at memory speed (no HTTP, no copy of the table).
//! The local replica serves HTTP from one of these; applications on the leader's host
//! can use one directly (and from C and Python through the bindings in `bindings/`).
//!
//! - [`maps`]: what a reader keeps, and the one reload every reader goes through (the
//!   same validation, and the same "never an older state, never a torn one" rules, as
//!   before: it is the local replica's);
//! - [`follow`]: the two follower threads (the leader's socket; the watch and poll);
//! - `link.rs`: the socket connection, which `want`s and reports each load;
//! - [`handle`]: [`Reader`], its [`Snapshot`] handles and errors.

mod follow;
pub mod handle;
mod link;
pub mod maps;

pub use handle::{Error, Follow, Reader, Snapshot, Status};
pub use maps::{LoadsBySource, Options, Reloaded, Source};

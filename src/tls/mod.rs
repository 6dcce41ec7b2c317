//! TLS for every connection that leaves the host, with rustls (the `ring` provider):
//! - [`server`]: a node's certificate and key (reloaded on SIGHUP), optional client
//!   certificates (`--tls-client-ca`), the handshake in the accept loop, and the guard
//!   that asks replication, raft and admin routes for a verified client certificate;
//! - [`pem`]: reading certificates, keys and CA bundles;
//! - [`client`] ([`ClientTls`]): what a node or a tool trusts when it calls a node (`--tls-ca`, or
//!   the system's roots) and the certificate it presents;
//! - [`certs`]: throwaway CAs and certificates (rcgen) for the local TLS cluster and
//!   the tests.

pub mod certs;
pub mod client;
pub mod pem;
pub mod server;

pub use client::{ClientTls, Trust, error_chain};
pub use pem::{MAX_PEM_BYTES, TlsError, provider, read_certs, read_key, read_roots};
pub use server::{ServerTls, TlsPaths};

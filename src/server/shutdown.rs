//! The process-level shutdown signal: SIGINT (ctrl-c) or SIGTERM. (SIGHUP reloads TLS;
//! see [`crate::tls::server::reload_on_sighup`].)

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

/// Registers for SIGINT and SIGTERM *now* (so a signal that arrives before the future
/// is first polled is not lost to the default action, which would kill the process
/// without its final snapshot), and returns a future that resolves on the first one.
/// Must be called within a tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let mut int = signal(SignalKind::interrupt());
    let mut term = signal(SignalKind::terminate());
    if let Err(e) = int.as_ref().and(term.as_ref()) {
        tracing::error!(error = %e, "cannot listen for SIGINT/SIGTERM");
    }
    // From now on SIGHUP no longer kills the process (tokio's handler stays installed):
    // one that arrives before the server listens for it is dropped, not fatal.
    if let Err(e) = signal(SignalKind::hangup()) {
        tracing::warn!(error = %e, "cannot catch SIGHUP");
    }
    async move {
        let int = async {
            match int.as_mut() {
                Ok(s) => s.recv().await,
                Err(_) => std::future::pending().await,
            }
        };
        let term = async {
            match term.as_mut() {
                Ok(s) => s.recv().await,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = int => tracing::info!("SIGINT received, shutting down"),
            _ = term => tracing::info!("SIGTERM received, shutting down"),
        }
    }
}

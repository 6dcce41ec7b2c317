//! Binding and serving: the listen backlog, the accept loop with its connection cap
//! and idle timeout, and the bounded drain at shutdown.

/// The listen backlog asked for by default: the kernel caps it at
/// `net.core.somaxconn` (4096 on current Linux). A client that opens a thousand
/// connections at once (the Go original's load tool does) must not overflow it: a
/// dropped SYN is retried only after a second.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;

/// Binds `host:port` with a listen backlog of `backlog` connections (capped by the
/// kernel's `somaxconn`).
pub async fn bind(host: &str, port: u16, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As std's TcpListener does on Unix: a restarted node can rebind at once.
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|_| socket.listen(backlog.max(1)))
        {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host:?} resolves to no address"),
        )
    }))
}

/// How a node treats connections.
#[derive(Debug, Clone, Copy)]
pub struct Connections {
    /// A connection is closed when its request headers take longer than this to
    /// arrive, counted from when it opened or from its previous response (so it is
    /// also the keep-alive idle timeout). Zero: never.
    pub idle_timeout: std::time::Duration,
    /// Connections open at once; beyond it new ones are closed at once (and logged).
    /// Zero: the open-file limit less a reserve for files, sockets and replication.
    pub max_connections: usize,
    /// Give each request the address it came from (`ConnectInfo`), which the token
    /// check throttles failures by; set by [`crate::config::Serving::connections`]
    /// when the node has a token (it costs every request a few percent otherwise).
    pub client_addresses: bool,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            idle_timeout: std::time::Duration::from_secs(30),
            max_connections: 0,
            client_addresses: false,
        }
    }
}

impl Connections {
    /// The connection cap in force: the configured one, or the process's open-file
    /// limit less [`FD_RESERVE`].
    pub fn cap(&self) -> usize {
        if self.max_connections > 0 {
            return self.max_connections;
        }
        let soft = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        (soft.saturating_sub(FD_RESERVE) as usize).clamp(16, 1 << 20)
    }
}

/// Descriptors kept back from client connections: data files, log segments, the
/// notification socket and its clients, replication connections.
pub const FD_RESERVE: u64 = 256;
/// At shutdown, requests in flight get this long to finish (the longest default wait
/// inside a request, for `min_seq` or `--min-acks`, is 2 s); then their connections
/// are closed: a client that sent half its headers cannot hold a shutdown.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Connections open now, and refused for the cap, for `/metrics`.
pub static CONNECTIONS_OPEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static CONNECTIONS_REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A TLS handshake must finish within this (or the idle timeout, if shorter).
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown`, then waits (at most
/// [`SHUTDOWN_DRAIN`]) for requests in flight. Responses are small and latency
/// matters, so Nagle's algorithm is off. Connections are capped and time out when idle
/// (see [`Connections`]); a failed accept (out of descriptors) is logged and retried.
/// With `tls`, every connection is HTTPS (see [`crate::tls::server`]), and SIGHUP
/// reloads its certificate and key.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    conns: Connections,
    tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
) -> std::io::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::{Duration, Instant};

    use hyper_util::rt::{TokioIo, TokioTimer};

    let cap = conns.cap();
    let addresses = conns.client_addresses;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(cap));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true);
    builder.header_read_timeout((!conns.idle_timeout.is_zero()).then_some(conns.idle_timeout));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let reloads = tokio::spawn(crate::tls::server::reload_on_sighup(tls.clone()));
    let token_reloads = tokio::spawn(crate::server::auth::reload_tokens_on_sighup());
    let handshake_within = match conns.idle_timeout {
        t if t.is_zero() => HANDSHAKE_TIMEOUT,
        t => t.min(HANDSHAKE_TIMEOUT),
    };
    let mut shutdown = std::pin::pin!(shutdown);
    // Refusals and accept errors are logged at most once a second, with a count.
    let mut last_report: Option<Instant> = None;
    let mut unreported = 0u64;
    let mut report = |what: &str, error: Option<&std::io::Error>| {
        unreported += 1;
        if last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            match error {
                Some(e) => tracing::error!(error = %e, count = unreported, "{what}"),
                None => tracing::warn!(count = unreported, max_connections = cap, "{what}"),
            }
            last_report = Some(Instant::now());
            unreported = 0;
        }
    };
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (EMFILE) and the like: the connection waits in the
                // backlog; try again shortly rather than spin.
                report("accepting connections failed; retrying", Some(&e));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    _ = &mut shutdown => break,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            CONNECTIONS_REFUSED.fetch_add(1, Relaxed);
            report("connection limit reached: closing new connections", None);
            drop(tcp);
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::trace!(error = %e, "cannot set TCP_NODELAY");
        }
        CONNECTIONS_OPEN.fetch_add(1, Relaxed);
        // With TLS, the pair in use when the connection was accepted serves it to the end.
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let (app, builder, watcher) = (app.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            // Each request knows the address it came from where a token is checked
            // (failures are throttled per address), and over TLS whether its connection
            // presented a client certificate (the replication routes may require one).
            // Without either, requests go to the router as they are: a wrapper costs
            // every request a few percent.
            let tag = move |cert: Option<crate::tls::server::ClientCertificate>| {
                move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                    if addresses {
                        req.extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                    }
                    if let Some(cert) = cert {
                        req.extensions_mut().insert(cert);
                    }
                    req
                }
            };
            match acceptor {
                None if !addresses => {
                    let svc = hyper_util::service::TowerToHyperService::new(app);
                    let _ = watcher
                        .watch(builder.serve_connection(TokioIo::new(tcp), svc))
                        .await;
                }
                None => {
                    let app = tower::ServiceExt::map_request(app, tag(None));
                    let svc = hyper_util::service::TowerToHyperService::new(app);
                    let _ = watcher
                        .watch(builder.serve_connection(TokioIo::new(tcp), svc))
                        .await;
                }
                Some(acceptor) => {
                    let handshake =
                        crate::tls::server::handshake(acceptor, tcp, peer, handshake_within);
                    if let Some((stream, cert)) = handshake.await {
                        let app = tower::ServiceExt::map_request(app, tag(Some(cert)));
                        let svc = hyper_util::service::TowerToHyperService::new(app);
                        let _ = watcher
                            .watch(builder.serve_connection(TokioIo::new(stream), svc))
                            .await;
                    }
                }
            }
            CONNECTIONS_OPEN.fetch_sub(1, Relaxed);
            drop(slot);
        });
    }
    reloads.abort();
    token_reloads.abort();
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_DRAIN) => {
            tracing::warn!("requests still in flight {SHUTDOWN_DRAIN:?} into shutdown: closing their connections");
        }
    }
    Ok(())
}

//! Bearer-token authentication: the token, its constant-time comparison, and the
//! middleware that guards routes with it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;

use super::error::ApiError;

/// A token shorter than this is accepted with a warning: it can be guessed.
pub const MIN_TOKEN_BYTES: usize = 16;

/// Compares two secrets in constant time (for equal lengths).
pub fn secrets_match(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// A bearer token. Its `Debug` never shows the secret, so it cannot leak into logs.
/// One read from a file is read again on SIGHUP ([`reload_token_files`]), so it
/// rotates without a restart; clones share it.
#[derive(Clone)]
pub struct Token(std::sync::Arc<TokenInner>);

struct TokenInner {
    secret: parking_lot::RwLock<std::sync::Arc<str>>,
    /// The file it was read from, and what it is (for messages).
    file: Option<(std::path::PathBuf, &'static str)>,
}

/// The tokens read from files, reloaded on SIGHUP.
static FILE_TOKENS: Mutex<Vec<std::sync::Weak<TokenInner>>> = Mutex::new(Vec::new());

/// The first line of a token file, trimmed.
fn first_line(path: &std::path::Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or("").trim().to_owned())
}

impl Token {
    /// `None` for an empty token (which would protect nothing).
    pub fn new(secret: &str) -> Option<Token> {
        let secret = secret.trim();
        (!secret.is_empty()).then(|| {
            Token(std::sync::Arc::new(TokenInner {
                secret: parking_lot::RwLock::new(secret.into()),
                file: None,
            }))
        })
    }

    /// The token in the first line of `path` (`what` names it in messages), read
    /// again on SIGHUP.
    pub fn from_file(path: &std::path::Path, what: &'static str) -> Result<Token, String> {
        let secret = first_line(path)?;
        if secret.is_empty() {
            return Err(format!("the {what} file {} is empty", path.display()));
        }
        let t = Token(std::sync::Arc::new(TokenInner {
            secret: parking_lot::RwLock::new(secret.into()),
            file: Some((path.to_owned(), what)),
        }));
        FILE_TOKENS.lock().push(std::sync::Arc::downgrade(&t.0));
        Ok(t)
    }

    /// Reads the token's file again: `Ok(true)` if the token changed. An empty or
    /// unreadable file leaves the old token in force.
    pub fn reload(&self) -> Result<bool, String> {
        let Some((path, what)) = &self.0.file else {
            return Ok(false);
        };
        let secret = first_line(path)?;
        if secret.is_empty() {
            return Err(format!("the {what} file {} is empty", path.display()));
        }
        let mut cur = self.0.secret.write();
        if *cur.as_ref() == *secret {
            return Ok(false);
        }
        *cur = secret.into();
        Ok(true)
    }

    /// The secret's length in bytes.
    pub fn len(&self) -> usize {
        self.0.secret.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Compares in constant time (for equal lengths).
    pub fn matches(&self, presented: &str) -> bool {
        secrets_match(&self.0.secret.read(), presented)
    }

    /// Whether two tokens hold the same secret.
    pub fn same_secret(&self, other: &Token) -> bool {
        let theirs = other.0.secret.read().clone();
        self.matches(&theirs)
    }

    /// The `Authorization` header value that carries it.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0.secret.read())
    }
}

/// Reads every token that came from a file again (on SIGHUP), logging what changed and
/// what could not be read (the old token stays in force then).
pub fn reload_token_files() {
    let tokens: Vec<Token> = {
        let mut list = FILE_TOKENS.lock();
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(|w| w.upgrade()).map(Token).collect()
    };
    for t in tokens {
        let what = t.0.file.as_ref().map_or("token", |f| f.1);
        match t.reload() {
            Ok(true) => tracing::info!("SIGHUP: the {what} changed; the new one is in force"),
            Ok(false) => {}
            Err(e) => tracing::error!("SIGHUP: {e}; the old {what} stays in force"),
        }
    }
}

/// Listens for SIGHUP and reloads the token files on each one, until dropped.
pub async fn reload_tokens_on_sighup() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        tokio::task::spawn_blocking(reload_token_files);
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The secret an `Authorization` header presents: a bearer token, or the password of
/// HTTP Basic credentials (what a browser sends for the status page; the user name is
/// not checked).
fn presented(value: &str) -> Option<String> {
    if let Some(t) = value.strip_prefix("Bearer ") {
        return Some(t.to_owned());
    }
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value.strip_prefix("Basic ")?.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    Some(text.split_once(':')?.1.to_owned())
}

/// The tokens a group of routes accepts (any one of them).
#[derive(Clone, Debug)]
pub struct Accepted(pub std::sync::Arc<[Token]>);

impl Accepted {
    fn matches(&self, presented: &str) -> bool {
        // Every token is compared, so the time taken does not say which one matched.
        self.0
            .iter()
            .fold(false, |hit, t| t.matches(presented) | hit)
    }
}

/// Failed authentications a client address may make at once, and how many more it
/// earns a second: guessing a token is slowed to a few tries a second per address.
const FAILURE_BURST: f64 = 20.0;
const FAILURES_PER_SECOND: f64 = 5.0;
/// Addresses tracked at once; past it the table is cleared (an attacker with more
/// addresses than this gains a burst each, not a lock-out of real clients).
const TRACKED_ADDRESSES: usize = 65_536;

/// Requests refused 401 (a wrong or missing token).
pub static AUTH_FAILURES: AtomicU64 = AtomicU64::new(0);
/// Requests refused 429 because their address failed too often.
pub static AUTH_THROTTLED: AtomicU64 = AtomicU64::new(0);
static LOG: crate::throttle::LogThrottle = crate::throttle::LogThrottle::new();

/// Each address's allowance of failures (a token bucket).
static ALLOWANCE: std::sync::LazyLock<Mutex<HashMap<IpAddr, (f64, Instant)>>> =
    std::sync::LazyLock::new(Default::default);

/// Whether `ip` may try a credential now (it has not failed too often lately).
fn may_try(ip: IpAddr) -> Result<(), u64> {
    let mut m = ALLOWANCE.lock();
    let Some((left, at)) = m.get_mut(&ip) else {
        return Ok(());
    };
    let now = Instant::now();
    *left =
        (*left + now.duration_since(*at).as_secs_f64() * FAILURES_PER_SECOND).min(FAILURE_BURST);
    *at = now;
    if *left >= 1.0 {
        Ok(())
    } else {
        Err(((1.0 - *left) / FAILURES_PER_SECOND).ceil().max(1.0) as u64)
    }
}

/// Charges a failed authentication to `ip`.
fn failed(ip: IpAddr) {
    let mut m = ALLOWANCE.lock();
    if m.len() >= TRACKED_ADDRESSES && !m.contains_key(&ip) {
        m.clear();
    }
    let now = Instant::now();
    let (left, at) = m.entry(ip).or_insert((FAILURE_BURST, now));
    *left = (*left + now.duration_since(*at).as_secs_f64() * FAILURES_PER_SECOND)
        .min(FAILURE_BURST)
        - 1.0;
    *at = now;
}

/// Middleware: answers 401 unless the request carries `Authorization: Bearer <token>`
/// or Basic credentials with an accepted token as password (compared in constant time).
/// An address that failed too often is answered 429 (with `retry-after`) without its
/// credential being looked at, except on a connection that presented a verified client
/// certificate (a peer under mutual TLS is never throttled into an election). The
/// address is the connection's: `X-Forwarded-For` is not trusted.
pub async fn require_token(
    axum::extract::State(token): axum::extract::State<Accepted>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let verified_peer = req
        .extensions()
        .get::<crate::tls::server::ClientCertificate>()
        .is_some_and(|c| c.0);
    if let Some(ip) = ip.filter(|_| !verified_peer)
        && let Err(wait) = may_try(ip)
    {
        AUTH_THROTTLED.fetch_add(1, Ordering::Relaxed);
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed authentications from {ip}; retry in {wait} s"),
        )
        .with("retry_after", wait)
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return resp;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(presented);
    if presented
        .as_ref()
        .is_some_and(|t| t.as_deref().is_some_and(|t| token.matches(t)))
    {
        return next.run(req).await;
    }
    AUTH_FAILURES.fetch_add(1, Ordering::Relaxed);
    // A request without credentials is a client that has not been told of the token,
    // not a guess: it is counted, not charged.
    if let Some(ip) = ip.filter(|_| presented.is_some()) {
        failed(ip);
        if let Some(unlogged) = LOG.tick() {
            tracing::warn!(
                client = %ip,
                path = req.uri().path(),
                unlogged,
                "refused a request with a wrong token"
            );
        }
    }
    let why = if presented.is_some() {
        "invalid bearer token"
    } else {
        "this route needs an Authorization: Bearer <token> header"
    };
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, why).into_response();
    // Both challenges: API clients use the bearer token; a browser asks its user for
    // Basic credentials (only on the pages it navigates to, not on its fetches).
    let h = resp.headers_mut();
    h.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"memdb\""),
    );
    h.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"memdb\", charset=\"UTF-8\""),
    );
    resp
}

/// Middleware on the replication, raft and admin routes of a node with
/// `--tls-client-ca`: `403` unless the connection presented a verified client
/// certificate.
pub async fn require_client_cert(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req
        .extensions()
        .get::<crate::tls::server::ClientCertificate>()
        .is_some_and(|c| c.0)
    {
        return next.run(req).await;
    }
    ApiError::new(
        StatusCode::FORBIDDEN,
        "this route carries replication, raft or admin traffic: it needs a client \
         certificate signed by the node's --tls-client-ca",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_and_basic_credentials_present_the_token() {
        use super::presented;
        assert_eq!(presented("Bearer s3cret").as_deref(), Some("s3cret"));
        // base64("any:s3cret") and base64(":s3cret")
        assert_eq!(
            presented("Basic YW55OnMzY3JldA==").as_deref(),
            Some("s3cret")
        );
        assert_eq!(presented("Basic OnMzY3JldA==").as_deref(), Some("s3cret"));
        assert_eq!(presented("Basic !!!"), None);
        assert_eq!(presented("Basic czNjcmV0"), None, "no colon: no password");
        assert_eq!(presented("Digest x"), None);
    }
}

//! HTTP pieces shared by every role: the JSON error type, strict parsing of forms and
//! queries, the protocol's header names, and the fallbacks.

use std::borrow::Cow;

use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
#[cfg(test)]
use serde_json::json;

use crate::words::Tokenizer;

/// Every response from a node carries the seq its table reflects.
pub const SEQ: HeaderName = HeaderName::from_static("x-memdb-seq");
/// The leader's incarnation id (16 hex digits) on `/sync` replies and `/update` requests.
pub const INCARNATION: HeaderName = HeaderName::from_static("x-memdb-incarnation");
/// The tokenizer the data was counted with, on `/sync` replies and `/update` requests.
pub const TOKENIZER: HeaderName = HeaderName::from_static("x-memdb-tokenizer");
/// `/update`: the seq the replica must be at for the deltas to apply...
pub const FROM_SEQ: HeaderName = HeaderName::from_static("x-memdb-from-seq");
/// ...and the seq it is at afterwards.
pub const TO_SEQ: HeaderName = HeaderName::from_static("x-memdb-to-seq");
/// `/update`: the leader cannot resend what the replica missed; full-sync now.
pub const RESYNC: HeaderName = HeaderName::from_static("x-memdb-resync");
/// `/update`: the leader's table digest at `x-memdb-to-seq` (16 hex digits); a replica
/// whose own differs after applying has diverged and full-syncs.
pub const DIGEST: HeaderName = HeaderName::from_static("x-memdb-digest");
/// `/update`: the secret of the leader's incarnation, which replicas learn when they
/// register; a push that claims the incarnation without it was not sent by the leader.
pub const PUSH_SECRET: HeaderName = HeaderName::from_static("x-memdb-push-secret");

/// Compares two secrets in constant time (for equal lengths).
pub fn secrets_match(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// At most this many `word=` parameters in one lookup, so one request's cost is bounded.
pub const MAX_WORDS_PER_QUERY: usize = 1024;

/// An error answer: a status and a JSON body `{"error": "...", ...}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Extra fields merged into the body (for example the node's `seq`).
    pub extra: Option<serde_json::Map<String, Value>>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            extra: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.extra.unwrap_or_default();
        body.insert("error".into(), Value::String(self.message));
        (self.status, axum::Json(Value::Object(body))).into_response()
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body is larger than the node's --max-body".to_owned()
        } else {
            format!("could not read the request body: {}", r.body_text())
        };
        ApiError::new(status, message)
    }
}

/// A bearer token. Its `Debug` never shows the secret, so it cannot leak into logs.
#[derive(Clone)]
pub struct Token(std::sync::Arc<str>);

impl Token {
    /// `None` for an empty token (which would protect nothing).
    pub fn new(secret: &str) -> Option<Token> {
        let secret = secret.trim();
        (!secret.is_empty()).then(|| Token(secret.into()))
    }

    /// Compares in constant time (for equal lengths).
    pub fn matches(&self, presented: &str) -> bool {
        secrets_match(&self.0, presented)
    }

    /// The `Authorization` header value that carries it.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Middleware: answers 401 unless the request carries `Authorization: Bearer <token>`
/// (compared in constant time).
pub async fn require_token(
    axum::extract::State(token): axum::extract::State<Token>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented.is_some_and(|t| token.matches(t)) {
        return next.run(req).await;
    }
    let why = if presented.is_some() {
        "invalid bearer token"
    } else {
        "this route needs an Authorization: Bearer <token> header"
    };
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, why).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"memdb\""),
    );
    resp
}

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
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            idle_timeout: std::time::Duration::from_secs(30),
            max_connections: 0,
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

/// Serves `app` on `listener` until `shutdown`, then waits (at most
/// [`SHUTDOWN_DRAIN`]) for requests in flight. Responses are small and latency
/// matters, so Nagle's algorithm is off. Connections are capped and time out when idle
/// (see [`Connections`]); a failed accept (out of descriptors) is logged and retried.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    conns: Connections,
) -> std::io::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::{Duration, Instant};

    use hyper_util::rt::{TokioIo, TokioTimer};

    let cap = conns.cap();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(cap));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true);
    builder.header_read_timeout((!conns.idle_timeout.is_zero()).then_some(conns.idle_timeout));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
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
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
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
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(tcp), svc));
        CONNECTIONS_OPEN.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            let _ = conn.await;
            CONNECTIONS_OPEN.fetch_sub(1, Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_DRAIN) => {
            tracing::warn!("requests still in flight {SHUTDOWN_DRAIN:?} into shutdown: closing their connections");
        }
    }
    Ok(())
}

/// `404` for every route a node does not have.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

/// `405` for a known route called with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

/// A header value for a seq.
pub fn seq_value(seq: u64) -> HeaderValue {
    HeaderValue::from(seq)
}

pub fn incarnation_string(inc: u64) -> String {
    format!("{inc:016x}")
}

pub fn parse_incarnation(s: &str) -> Option<u64> {
    if s.len() == 16 {
        u64::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

/// Reads a header as text, if present.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Reads a required numeric header.
pub fn header_u64(headers: &HeaderMap, name: &HeaderName) -> Result<Option<u64>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("header {name} must be an integer"))),
    }
}

/// One decoded `key=value` of a form or query string.
pub type FormPair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// Decodes `application/x-www-form-urlencoded` strictly: `+` is a space, `%XX` escapes
/// are decoded, and anything that is not UTF-8 is an error rather than being silently
/// replaced (which would count words the client never sent).
pub fn form_pairs(
    raw: &[u8],
) -> Result<impl Iterator<Item = Result<FormPair<'_>, ApiError>>, ApiError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| ApiError::bad_request("form data is not valid UTF-8"))?;
    Ok(query_pairs(text))
}

/// The pairs of a query string (or of form data already known to be UTF-8), decoded
/// lazily; unescaped values are borrowed.
pub fn query_pairs(raw: &str) -> impl Iterator<Item = Result<FormPair<'_>, ApiError>> {
    raw.split('&').filter(|p| !p.is_empty()).map(|part| {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        Ok((decode_component(k)?, decode_component(v)?))
    })
}

fn decode_component(raw: &str) -> Result<Cow<'_, str>, ApiError> {
    if !raw.bytes().any(|b| b == b'+' || b == b'%') {
        return Ok(Cow::Borrowed(raw));
    }
    let plus: Vec<u8> = raw
        .bytes()
        .map(|b| if b == b'+' { b' ' } else { b })
        .collect();
    let decoded: Vec<u8> = percent_encoding::percent_decode(&plus).collect();
    String::from_utf8(decoded)
        .map(Cow::Owned)
        .map_err(|_| ApiError::bad_request("form or query data is not valid UTF-8 once decoded"))
}

/// Extracts the text of a `POST /post`: the `text` field of a form (the Go clients'
/// way; several `text` fields are all counted), a raw `text/plain` body, or a JSON
/// object `{"text": "..."}`.
pub fn post_text(headers: &HeaderMap, body: &[u8]) -> Result<String, ApiError> {
    let ctype = header_str(headers, &header::CONTENT_TYPE)
        .unwrap_or("application/x-www-form-urlencoded")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty: send the text as text/plain, as JSON {\"text\": ...} \
             or in the form field text (curl --data-binary @FILE sends nothing when FILE \
             cannot be read)",
        ));
    }
    let text = match ctype.as_str() {
        "application/x-www-form-urlencoded" | "" => {
            let mut texts = Vec::new();
            for pair in form_pairs(body)? {
                let (k, v) = pair?;
                if k == "text" {
                    texts.push(v.into_owned());
                }
            }
            if texts.is_empty() {
                return Err(ApiError::bad_request("missing form field \"text\""));
            }
            texts.join("\n")
        }
        "text/plain" => String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("request body is not valid UTF-8"))?,
        "application/json" => {
            #[derive(serde::Deserialize)]
            struct Post {
                text: String,
            }
            serde_json::from_slice::<Post>(body)
                .map_err(|e| {
                    ApiError::bad_request(format!("expected a JSON object {{\"text\": ...}}: {e}"))
                })?
                .text
        }
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported content type {other:?}: send application/x-www-form-urlencoded \
                     (field text), text/plain or application/json"
                ),
            ));
        }
    };
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("text is empty"));
    }
    Ok(text)
}

/// The parsed query of a lookup: the words as the client wrote them, and `min_seq`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WordQuery<'a> {
    pub words: Vec<Cow<'a, str>>,
    pub min_seq: Option<u64>,
}

/// Parses `word=a&word=b[&min_seq=N]`. Borrows from the query unless a value had
/// escapes.
pub fn word_query(raw: Option<&str>) -> Result<WordQuery<'_>, ApiError> {
    let mut q = WordQuery::default();
    for pair in query_pairs(raw.unwrap_or("")) {
        let (k, v) = pair?;
        match k.as_ref() {
            "word" => {
                if v.is_empty() {
                    return Err(ApiError::bad_request("query parameter \"word\" is empty"));
                }
                if q.words.len() == MAX_WORDS_PER_QUERY {
                    return Err(ApiError::bad_request(format!(
                        "at most {MAX_WORDS_PER_QUERY} words per request"
                    )));
                }
                q.words.push(v);
            }
            "min_seq" => {
                q.min_seq = Some(v.parse().map_err(|_| {
                    ApiError::bad_request("query parameter \"min_seq\" must be an integer")
                })?)
            }
            _ => {}
        }
    }
    if q.words.is_empty() {
        return Err(ApiError::bad_request(
            "missing query parameter \"word\" (e.g. /wordcount?word=hello)",
        ));
    }
    Ok(q)
}

/// Answers a lookup: the JSON object `{"<word as asked>": count, ...}`, written
/// directly (no intermediate map). `count` sees the normalised word. A word asked twice
/// appears once.
pub fn lookup_body<W: AsRef<str>>(
    tokenizer: Tokenizer,
    words: &[W],
    mut count: impl FnMut(&str) -> u64,
) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(2 + words.len() * 24);
    out.push(b'{');
    let mut num = itoa::Buffer::new();
    // A word asked twice is answered once. Small requests: a scan beats hashing.
    let mut seen: foldhash::HashSet<&str> = Default::default();
    for (i, w) in words.iter().enumerate() {
        let w = w.as_ref();
        let repeated = if words.len() <= 8 {
            words[..i].iter().any(|p| p.as_ref() == w)
        } else {
            !seen.insert(w)
        };
        if repeated {
            continue;
        }
        let norm = tokenizer.normalize(w).map_err(|e| {
            ApiError::bad_request(format!("word {w:?}: {e} (tokenizer {tokenizer})"))
        })?;
        if out.len() > 1 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, w).expect("writing a string to a Vec cannot fail");
        out.push(b':');
        out.extend_from_slice(num.format(count(&norm)).as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_is_strict() {
        let p: Vec<FormPair> = form_pairs(b"text=hello+w%C3%B6rld&x&text=%2B")
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(p[0], ("text".into(), "hello wörld".into()));
        assert_eq!(p[1], ("x".into(), "".into()));
        assert_eq!(p[2], ("text".into(), "+".into()));
        assert!(form_pairs(b"text=%FF").unwrap().any(|p| p.is_err()));
        assert!(form_pairs(b"text=\xff").is_err());
    }

    fn hdrs(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        h
    }

    #[test]
    fn post_text_accepts_form_plain_and_json() {
        let form = hdrs("application/x-www-form-urlencoded; charset=utf-8");
        assert_eq!(post_text(&form, b"text=a+b").unwrap(), "a b");
        assert_eq!(post_text(&form, b"text=a&text=b").unwrap(), "a\nb");
        assert_eq!(post_text(&HeaderMap::new(), b"text=a").unwrap(), "a");
        assert_eq!(post_text(&hdrs("text/plain"), b"a b").unwrap(), "a b");
        assert_eq!(
            post_text(&hdrs("application/json"), br#"{"text":"x y"}"#).unwrap(),
            "x y"
        );
    }

    #[test]
    fn post_text_errors() {
        let form = hdrs("application/x-www-form-urlencoded");
        assert_eq!(post_text(&form, b"other=1").unwrap_err().status, 400);
        assert_eq!(post_text(&form, b"text=").unwrap_err().status, 400);
        assert_eq!(post_text(&form, b"text=+++").unwrap_err().status, 400);
        assert_eq!(
            post_text(&hdrs("text/plain"), b"\xff\xfe")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            post_text(&hdrs("application/json"), b"[1]")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(post_text(&hdrs("image/png"), b"x").unwrap_err().status, 415);
    }

    #[test]
    fn word_queries() {
        let q = word_query(Some("word=a&word=B&min_seq=7")).unwrap();
        assert_eq!(q.words, ["a", "B"]);
        assert_eq!(q.min_seq, Some(7));
        assert!(word_query(None).is_err());
        assert!(word_query(Some("word=")).is_err());
        assert!(word_query(Some("word=a&min_seq=x")).is_err());
        let many = vec!["word=a"; MAX_WORDS_PER_QUERY + 1].join("&");
        assert!(word_query(Some(&many)).is_err());
        let q = word_query(Some("word=plain&word=esc%41")).unwrap();
        assert!(matches!(q.words[0], Cow::Borrowed("plain")));
        assert_eq!(q.words[1], "escA");
    }

    #[test]
    fn lookups_normalise_but_answer_with_the_asked_spelling() {
        let body = lookup_body(
            Tokenizer::Unicode,
            &["Hello", "wörld", "Hello", "a\"b"],
            |w| match w {
                "hello" => 3,
                "wörld" => 1,
                _ => panic!("unexpected {w}"),
            },
        );
        assert!(body.is_err(), "a\"b is two words");
        let body = lookup_body(Tokenizer::Unicode, &["Hello", "wörld", "Hello"], |w| {
            if w == "hello" { 3 } else { 1 }
        })
        .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, json!({"Hello": 3, "wörld": 1}));
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"Hello":3,"wörld":1}"#
        );
        let body = lookup_body(Tokenizer::Whitespace, &["a\"b"], |_| 7).unwrap();
        assert_eq!(std::str::from_utf8(&body).unwrap(), r#"{"a\"b":7}"#);
        assert!(lookup_body(Tokenizer::Unicode, &["a b"], |_| 0).is_err());
    }

    #[test]
    fn incarnations_format_and_parse() {
        assert_eq!(incarnation_string(255), "00000000000000ff");
        assert_eq!(parse_incarnation("00000000000000ff"), Some(255));
        assert_eq!(parse_incarnation("ff"), None);
    }
}

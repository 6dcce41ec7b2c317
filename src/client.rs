//! A small typed HTTP client for memdb nodes, shared by replicas (sync, register), the
//! leader's replication senders, tests and tools.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use crate::protocol::DIGEST;
use crate::protocol::FROM_SEQ;
use crate::protocol::INCARNATION;
use crate::protocol::Incarnation;
use crate::protocol::PUSH_SECRET;
use crate::protocol::RESYNC;
use crate::protocol::SEQ;
use crate::protocol::TO_SEQ;
use crate::protocol::TOKENIZER;
use crate::storage::counts::WithCapacity;
use crate::storage::table::CountMap;
use crate::words::Tokenizer;

/// How long to wait for a connection to a node before calling it down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A whole-table `/sync` of millions of words takes a while to send and parse.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);
/// Everything else is small.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Redirects a post follows. A follower names the leader it last heard from; while
/// the group changes leader that node may redirect again, so one hop is not enough.
/// A few bound a redirect loop.
pub const REDIRECT_HOPS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("request to {url} failed: {}", crate::tls::error_chain(source))]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("{url} answered something unexpected: {what}")]
    Protocol { url: String, what: String },
}

/// A client for one node, identified by its base URL (`http://127.0.0.1:8080`).
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<crate::server::auth::Token>,
}

/// The reply to `POST /post`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct PostReply {
    pub seq: u64,
    pub words: u64,
}

/// A whole table, as `GET /sync` returns it.
#[derive(Debug, Clone)]
pub struct SyncReply {
    pub map: CountMap,
    pub seq: u64,
    pub incarnation: Incarnation,
    pub tokenizer: Tokenizer,
}

/// The leader's answer to a replica registering (also its heartbeat).
#[derive(Debug, Clone, Deserialize)]
pub struct RegisterReply {
    pub incarnation: Incarnation,
    pub seq: u64,
    /// The seq and incarnation the replica registered with are a prefix of the
    /// leader's history: it may adopt the leader's incarnation without a full sync.
    #[serde(default)]
    pub continues: bool,
    /// The secret the leader's pushes carry in this incarnation.
    #[serde(default)]
    pub push_secret: Option<String>,
}

/// What a replica did with a pushed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// Applied, or already had it. The replica is now at this seq.
    Ok(u64),
    /// It is at this seq, which is not where the batch starts: resend from there.
    Gap(u64),
    /// It is (re)syncing from the leader or saw another incarnation: try again later.
    Resyncing,
}

/// One batch pushed to a replica.
#[derive(Debug)]
pub struct Update<'a> {
    pub incarnation: Incarnation,
    pub tokenizer: Tokenizer,
    pub from_seq: u64,
    pub to_seq: u64,
    /// The JSON object of deltas, already serialised.
    pub body: &'a [u8],
    /// The leader's table digest at `to_seq`, when known.
    pub digest: Option<u64>,
    /// The incarnation's push secret.
    pub secret: &'a str,
}

/// Where a redirect from `from` to `location` (absolute, or relative to `from`) leads.
/// A redirect from `https` to `http` is refused: it would send the text, and the
/// token, in clear.
fn redirect_target(from: &str, location: &str) -> Result<String, ClientError> {
    let protocol = |what: String| ClientError::Protocol {
        url: from.to_owned(),
        what,
    };
    let base = reqwest::Url::parse(from).map_err(|e| protocol(e.to_string()))?;
    let next = base
        .join(location)
        .map_err(|e| protocol(format!("a redirect to {location:?}: {e}")))?;
    if base.scheme() == "https" && next.scheme() != "https" {
        return Err(protocol(format!(
            "refusing a redirect from https to {next}: it would carry the text and the \
             token in clear"
        )));
    }
    if !matches!(next.scheme(), "http" | "https") {
        return Err(protocol(format!("refusing a redirect to {next}")));
    }
    Ok(next.to_string())
}

/// A URL's origin (scheme, host and port), as browsers and curl compare them before
/// sending credentials along a redirect.
fn origin(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    Some(u.origin().ascii_serialization())
}

impl Client {
    /// A client that trusts the system's roots for `https://` (and presents no
    /// certificate).
    pub fn new(base: &str) -> Self {
        Self::with_tls(base, &crate::tls::ClientTls::default())
    }

    /// A client that trusts (and presents) what `tls` says for `https://`.
    pub fn with_tls(base: &str, tls: &crate::tls::ClientTls) -> Self {
        let http = tls
            .builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // Below the servers' --idle-timeout (30 s): a pooled connection is dropped
            // here before the server closes it under a request.
            .pool_idle_timeout(Duration::from_secs(20))
            // Redirects (a raft follower's 307) are followed by the calls that expect
            // them, with the token; see `post_keyed`.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("building an HTTP client with a built TLS config cannot fail");
        Self::with_http(http, base)
    }

    /// Shares one connection pool between several nodes' clients.
    pub fn with_http(http: reqwest::Client, base: &str) -> Self {
        Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: Option<crate::server::auth::Token>) -> Self {
        self.token = token;
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A POST to `path` with the usual timeout, and its URL (for errors).
    fn post(&self, path: &str) -> (String, reqwest::RequestBuilder) {
        let url = self.url(path);
        let req = self.authorize(self.http.post(&url).timeout(REQUEST_TIMEOUT));
        (url, req)
    }

    /// A GET of `path` with `timeout`, and its URL (for errors).
    fn get(&self, path: &str, timeout: Duration) -> (String, reqwest::RequestBuilder) {
        let url = self.url(path);
        let req = self.authorize(self.http.get(&url).timeout(timeout));
        (url, req)
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.header(reqwest::header::AUTHORIZATION, t.header_value()),
            None => req,
        }
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, ClientError> {
        req.send().await.map_err(|source| ClientError::Http {
            url: url.to_owned(),
            source,
        })
    }

    async fn ok_json<T: for<'de> Deserialize<'de>>(
        resp: reqwest::Response,
        url: &str,
    ) -> Result<T, ClientError> {
        Self::ok_json_with(resp, url, |bytes| serde_json::from_slice(bytes)).await
    }

    /// [`Client::ok_json`] with the body parsed by `parse`.
    async fn ok_json_with<T>(
        resp: reqwest::Response,
        url: &str,
        parse: impl FnOnce(&[u8]) -> serde_json::Result<T>,
    ) -> Result<T, ClientError> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|source| ClientError::Http {
            url: url.to_owned(),
            source,
        })?;
        if !status.is_success() {
            return Err(ClientError::Status {
                url: url.to_owned(),
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        parse(&bytes).map_err(|e| ClientError::Protocol {
            url: url.to_owned(),
            what: e.to_string(),
        })
    }

    /// `GET /health`: the status code and the JSON body.
    pub async fn health(&self) -> Result<(StatusCode, Value), ClientError> {
        let (url, req) = self.get("/health", REQUEST_TIMEOUT);
        let resp = self.send(req, &url).await?;
        let status = resp.status();
        let body = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// `POST /post` with the text as a form field, as the Go clients send it.
    pub async fn post_text(&self, text: &str) -> Result<PostReply, ClientError> {
        let (url, req) = self.post("/post");
        let resp = self
            .send(
                req.header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(format!("text={}", form_encode(text))),
                &url,
            )
            .await?;
        Self::ok_json(resp, &url).await
    }

    /// `POST /post` with an `Idempotency-Key` (a raft group counts it once however often
    /// it is sent). A `307` from a follower is followed here, with the token when the
    /// target is a member of the group the base node lists in its `/health` (any other
    /// origin gets no request; https never leads to http); see [`REDIRECT_HOPS`].
    pub async fn post_keyed(&self, text: &str, key: &str) -> Result<PostReply, ClientError> {
        let body = format!("text={}", form_encode(text));
        self.post_following(body, "application/x-www-form-urlencoded", Some(key))
            .await
    }

    /// `POST /post` of `text` as `text/plain` (no encoding), with an `Idempotency-Key`
    /// if given; a `307` is followed with the token, as in [`Client::post_keyed`].
    pub async fn post_plain(
        &self,
        text: String,
        key: Option<&str>,
    ) -> Result<PostReply, ClientError> {
        self.post_following(text, "text/plain; charset=utf-8", key)
            .await
    }

    async fn post_following(
        &self,
        body: String,
        content_type: &'static str,
        key: Option<&str>,
    ) -> Result<PostReply, ClientError> {
        let body = bytes::Bytes::from(body);
        let mut url = self.url("/post");
        let mut members: Option<Vec<String>> = None;
        for hop in 0..=REDIRECT_HOPS {
            let mut req = self
                .authorize(self.http.post(&url).timeout(REQUEST_TIMEOUT))
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body.clone());
            if let Some(key) = key {
                req = req.header("idempotency-key", key);
            }
            let resp = self.send(req, &url).await?;
            if resp.status() == StatusCode::TEMPORARY_REDIRECT
                && hop < REDIRECT_HOPS
                && let Some(next) = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
            {
                let next = redirect_target(&url, next)?;
                if self.token.is_some() && origin(&next) != origin(&self.base) {
                    if members.is_none() {
                        members = Some(self.group_members().await);
                    }
                    let known = members.as_deref().unwrap_or_default();
                    if !known.iter().any(|m| origin(m) == origin(&next)) {
                        return Err(ClientError::Protocol {
                            url,
                            what: format!(
                                "redirected to {next}, which is not a member of the group \
                                 {} belongs to (by its /health): the token is not sent there",
                                self.base
                            ),
                        });
                    }
                }
                url = next;
                continue;
            }
            return Self::ok_json(resp, &url).await;
        }
        unreachable!("the loop returns on its last pass")
    }

    /// The URLs of the raft members the node at the base URL lists in its `/health`
    /// (none if it is not a voter or does not answer).
    async fn group_members(&self) -> Vec<String> {
        let Ok((_, health)) = self.health().await else {
            return Vec::new();
        };
        health["raft"]["members"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| m["url"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `GET /wordcount?word=..&word=..` (with `min_seq` if given).
    pub async fn wordcount(
        &self,
        words: &[&str],
        min_seq: Option<u64>,
    ) -> Result<HashMap<String, u64>, ClientError> {
        Ok(self.wordcount_at(words, min_seq).await?.1)
    }

    /// `GET /top`: the first `n` words in rank order (starting with `prefix`, if not
    /// empty) and the seq they reflect.
    pub async fn top(
        &self,
        n: usize,
        prefix: &str,
        min_seq: Option<u64>,
    ) -> Result<TopReply, ClientError> {
        let mut path = format!("/top?n={n}");
        if !prefix.is_empty() {
            path.push_str(&format!("&prefix={}", form_encode(prefix)));
        }
        if let Some(s) = min_seq {
            path.push_str(&format!("&min_seq={s}"));
        }
        let (url, req) = self.get(&path, REQUEST_TIMEOUT);
        let resp = self.send(req, &url).await?;
        let seq = seq_of(&resp);
        let words = Self::ok_json(resp, &url).await?;
        Ok(TopReply { seq, words })
    }

    /// [`Client::wordcount`], with the seq the counts reflect.
    pub async fn wordcount_at(
        &self,
        words: &[&str],
        min_seq: Option<u64>,
    ) -> Result<(Option<u64>, HashMap<String, u64>), ClientError> {
        let mut q: Vec<String> = words
            .iter()
            .map(|w| format!("word={}", form_encode(w)))
            .collect();
        if let Some(s) = min_seq {
            q.push(format!("min_seq={s}"));
        }
        let (url, req) = self.get(&format!("/wordcount?{}", q.join("&")), REQUEST_TIMEOUT);
        let resp = self.send(req, &url).await?;
        let seq = seq_of(&resp);
        Ok((seq, Self::ok_json(resp, &url).await?))
    }

    /// `GET /sync`: the whole table with its seq, incarnation and tokenizer.
    pub async fn sync(&self) -> Result<SyncReply, ClientError> {
        let (url, req) = self.get("/sync", SYNC_TIMEOUT);
        let resp = self.send(req, &url).await?;
        let h = resp.headers().clone();
        let proto = |what: &str| ClientError::Protocol {
            url: url.clone(),
            what: what.to_owned(),
        };
        // The hint is the leader's word; a cap keeps a forged one from reserving more
        // than a large table needs.
        let hint = h
            .get(crate::protocol::WORDS.as_str())
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(0)
            .min(1 << 26);
        let map: CountMap = Self::ok_json_with(resp, &url, |bytes| {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let m = serde::de::DeserializeSeed::deserialize(WithCapacity(hint), &mut de)?;
            de.end()?;
            Ok(m)
        })
        .await?;
        let seq = h
            .get(SEQ.as_str())
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .ok_or_else(|| proto("no x-memdb-seq header"))?;
        let incarnation = h
            .get(INCARNATION.as_str())
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .ok_or_else(|| proto("no x-memdb-incarnation header"))?;
        let tokenizer = h
            .get(TOKENIZER.as_str())
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .ok_or_else(|| proto("no x-memdb-tokenizer header"))?;
        Ok(SyncReply {
            map,
            seq,
            incarnation,
            tokenizer,
        })
    }

    /// `POST /replicas {"url": ..., "seq": ..., "incarnation": ...}`: registers a replica
    /// with the leader (idempotent), reporting where it is. Replicas call it as their
    /// heartbeat.
    pub async fn register(
        &self,
        replica_url: &str,
        at: Option<(u64, Incarnation)>,
    ) -> Result<RegisterReply, ClientError> {
        let mut body = serde_json::json!({ "url": replica_url });
        if let Some((seq, incarnation)) = at {
            body["seq"] = seq.into();
            body["incarnation"] = incarnation.to_string().into();
        }
        let (url, req) = self.post("/replicas");
        let resp = self.send(req.json(&body), &url).await?;
        Self::ok_json(resp, &url).await
    }

    /// `POST /update`: pushes one (possibly coalesced) batch to a replica.
    pub async fn update(&self, u: &Update<'_>) -> Result<UpdateOutcome, ClientError> {
        let (url, req) = self.post("/update");
        let req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(INCARNATION.as_str(), u.incarnation.to_string())
            .header(TOKENIZER.as_str(), u.tokenizer.as_str())
            .header(FROM_SEQ.as_str(), u.from_seq)
            .header(TO_SEQ.as_str(), u.to_seq)
            .header(PUSH_SECRET.as_str(), u.secret);
        let req = match u.digest {
            Some(d) => req.header(DIGEST.as_str(), format!("{d:016x}")),
            None => req,
        };
        let resp = self.send(req.body(u.body.to_vec()), &url).await?;
        Self::update_outcome(resp, &url).await
    }

    /// Tells a replica that the leader cannot resend what it missed: full-sync now.
    pub async fn request_resync(
        &self,
        incarnation: Incarnation,
        secret: &str,
    ) -> Result<UpdateOutcome, ClientError> {
        let (url, req) = self.post("/update");
        let resp = self
            .send(
                req.header(INCARNATION.as_str(), incarnation.to_string())
                    .header(PUSH_SECRET.as_str(), secret)
                    .header(RESYNC.as_str(), "1")
                    .body("{}"),
                &url,
            )
            .await?;
        Self::update_outcome(resp, &url).await
    }

    async fn update_outcome(
        resp: reqwest::Response,
        url: &str,
    ) -> Result<UpdateOutcome, ClientError> {
        #[derive(Deserialize)]
        struct Reply {
            seq: Option<u64>,
            reason: Option<String>,
        }
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|source| ClientError::Http {
            url: url.to_owned(),
            source,
        })?;
        let reply: Option<Reply> = serde_json::from_slice(&bytes).ok();
        let seq = reply.as_ref().and_then(|r| r.seq);
        match (status, seq) {
            (StatusCode::OK, Some(seq)) => Ok(UpdateOutcome::Ok(seq)),
            (StatusCode::CONFLICT, Some(seq))
                if reply.as_ref().and_then(|r| r.reason.as_deref()) == Some("gap") =>
            {
                Ok(UpdateOutcome::Gap(seq))
            }
            (StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE | StatusCode::ACCEPTED, _) => {
                Ok(UpdateOutcome::Resyncing)
            }
            _ => Err(ClientError::Status {
                url: url.to_owned(),
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            }),
        }
    }
}

/// The `x-memdb-seq` of an answer, if it has one.
fn seq_of(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get(SEQ.as_str())
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

/// One word of a `GET /top` answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct TopWord {
    pub word: String,
    pub count: u64,
}

/// A `GET /top` answer.
#[derive(Debug, Clone)]
pub struct TopReply {
    /// `None` only from a node that sent no seq.
    pub seq: Option<u64>,
    pub words: Vec<TopWord>,
}

/// Percent-encodes for a form or query component.
pub fn form_encode(s: &str) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::HeaderMap;
    use axum::response::IntoResponse;

    use super::*;

    /// Serves the router `make` builds for its own base URL on an ephemeral loopback
    /// port; that URL.
    async fn serve(make: impl FnOnce(&str) -> axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = make(&url);
        tokio::spawn(async move { axum::serve(listener, router).await });
        url
    }

    /// Redirects every post to `to`, counting them in `hits`.
    fn redirect_to(to: &str, hits: Arc<AtomicUsize>) -> axum::Router {
        let location = format!("{to}/post");
        axum::Router::new().route(
            "/post",
            axum::routing::post(move || async move {
                hits.fetch_add(1, Ordering::Relaxed);
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(reqwest::header::LOCATION, location)],
                    r#"{"error":"another node leads"}"#,
                )
            }),
        )
    }

    #[tokio::test]
    async fn a_post_follows_a_chain_of_redirects_with_its_token_and_key() {
        // The leader: answers only a post that still carries the token and the key.
        let leader = serve(|_| {
            axum::Router::new().route(
                "/post",
                axum::routing::post(|headers: HeaderMap, body: String| async move {
                    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
                    if header("authorization") != Some("Bearer s3cret")
                        || header("idempotency-key") != Some("k1")
                    {
                        return (StatusCode::UNAUTHORIZED, "{}".to_owned()).into_response();
                    }
                    let words = body.split_whitespace().count();
                    let reply = format!(r#"{{"seq":9,"words":{words}}}"#);
                    (StatusCode::ACCEPTED, reply).into_response()
                }),
            )
        })
        .await;
        // A follower that names a stale leader, which in turn names the new one.
        let hits = Arc::new(AtomicUsize::new(0));
        let stale = serve(|_| redirect_to(&leader, hits.clone())).await;
        let members = [leader.clone(), stale.clone()];
        let follower = serve(|me| {
            listing(
                redirect_to(&stale, hits.clone()),
                &[&members[..], &[me.into()]].concat(),
            )
        })
        .await;
        let token = crate::server::auth::Token::new("s3cret");
        let client = Client::new(&follower).with_token(token);
        let reply = client.post_plain("a b c".to_owned(), Some("k1")).await;
        assert_eq!(reply.unwrap(), PostReply { seq: 9, words: 3 });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }

    /// `router`, plus a `/health` that lists `members` as its raft group.
    fn listing(router: axum::Router, members: &[String]) -> axum::Router {
        let members: Vec<serde_json::Value> = members
            .iter()
            .map(|u| serde_json::json!({ "url": u }))
            .collect();
        let health = serde_json::json!({ "raft": { "members": members } }).to_string();
        router.route("/health", axum::routing::get(move || async move { health }))
    }

    #[tokio::test]
    async fn the_token_never_follows_a_redirect_out_of_the_group() {
        // A node (with or without a group) that sends posts to a stranger's origin.
        let stolen = Arc::new(AtomicUsize::new(0));
        let thief = {
            let stolen = stolen.clone();
            serve(move |_| {
                axum::Router::new().route(
                    "/post",
                    axum::routing::post(move || async move {
                        stolen.fetch_add(1, Ordering::Relaxed);
                        (StatusCode::ACCEPTED, r#"{"seq":1,"words":1}"#)
                    }),
                )
            })
            .await
        };
        let hits = Arc::new(AtomicUsize::new(0));
        for members in [vec![], vec!["http://127.0.0.1:1".to_string()]] {
            let node = serve(|me| {
                let mut listed = members.clone();
                listed.push(me.into());
                listing(redirect_to(&thief, hits.clone()), &listed)
            })
            .await;
            let token = crate::server::auth::Token::new("s3cret");
            let client = Client::new(&node).with_token(token);
            let e = client
                .post_plain("x".to_owned(), Some("k"))
                .await
                .unwrap_err();
            assert!(e.to_string().contains("not a member of the group"), "{e}");
        }
        assert_eq!(stolen.load(Ordering::Relaxed), 0, "the stranger got a post");
        // Without a token there is nothing to leak: the redirect is followed.
        let node = serve(|_| redirect_to(&thief, hits.clone())).await;
        Client::new(&node)
            .post_plain("x".to_owned(), None)
            .await
            .unwrap();
        assert_eq!(stolen.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_redirect_from_https_to_http_is_refused_and_relative_ones_resolve() {
        let e = redirect_target("https://a:1/post", "http://a:1/post").unwrap_err();
        assert!(e.to_string().contains("in clear"), "{e}");
        assert!(redirect_target("http://a:1/post", "file:///etc/passwd").is_err());
        assert_eq!(
            redirect_target("http://a:1/post", "/x").unwrap(),
            "http://a:1/x"
        );
        assert_eq!(
            redirect_target("http://a:1/post", "https://b:2/post").unwrap(),
            "https://b:2/post"
        );
        assert_ne!(origin("http://a:1/x"), origin("http://a:2/x"));
        assert_ne!(origin("http://a:1/x"), origin("https://a:1/x"));
        assert_eq!(origin("http://a:1/x"), origin("http://a:1/y"));
    }

    #[tokio::test]
    async fn a_redirect_loop_ends_with_the_last_307() {
        let hits = Arc::new(AtomicUsize::new(0));
        let looping = serve(|me| redirect_to(me, hits.clone())).await;
        match Client::new(&looping).post_plain("x".to_owned(), None).await {
            Err(ClientError::Status { status, .. }) => {
                assert_eq!(status, StatusCode::TEMPORARY_REDIRECT)
            }
            other => panic!("expected the last 307, got {other:?}"),
        }
        assert_eq!(hits.load(Ordering::Relaxed), REDIRECT_HOPS + 1);
    }
}

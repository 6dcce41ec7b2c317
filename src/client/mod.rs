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

pub mod files;
mod redirect;

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

//! Following a follower's `307` to the raft leader: the token goes along only to a
//! member of the group the base node lists in its `/health` (any other origin gets no
//! request at all), and never from `https` to `http`.

use crate::origin::same_origin_key;
use reqwest::StatusCode;

use super::{Client, ClientError, PostReply, REDIRECT_HOPS, REQUEST_TIMEOUT};

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

impl Client {
    pub(super) async fn post_following(
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
                if self.token.is_some() && same_origin_key(&next) != same_origin_key(&self.base) {
                    if members.is_none() {
                        members = Some(self.group_members().await);
                    }
                    let known = members.as_deref().unwrap_or_default();
                    if !known
                        .iter()
                        .any(|m| same_origin_key(m) == same_origin_key(&next))
                    {
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
        assert_ne!(
            same_origin_key("http://a:1/x"),
            same_origin_key("http://a:2/x")
        );
        assert_ne!(
            same_origin_key("http://a:1/x"),
            same_origin_key("https://a:1/x")
        );
        assert_eq!(
            same_origin_key("http://a:1/x"),
            same_origin_key("http://a:1/y")
        );
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

//! The rules for the URLs nodes give each other: every peer URL (a replica, a raft
//! member, a replica's `--leader`) is a plain origin; credentials follow a redirect only
//! within one origin; a plain `http://` origin is on this host or it is not.

/// Why a URL is not taken as a peer's address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OriginError {
    #[error("url {0:?} is not a URL: {1}")]
    Malformed(String, String),
    #[error(
        "url {0:?} must be a plain origin: http:// or https://, a host and a port, with no \
         user, password, path, query or fragment"
    )]
    NotAnOrigin(String),
}

/// Checks that `url` is a plain origin (`http://host:port`) and returns it normalised
/// (no trailing slash). A node only ever adds its own paths to a peer's URL, so
/// anything more (a path, a query, credentials) has no use but to aim requests
/// elsewhere or leak.
pub fn origin(url: &str) -> Result<String, OriginError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| OriginError::Malformed(url.to_owned(), e.to_string()))?;
    let plain = matches!(parsed.scheme(), "http" | "https")
        && parsed.host().is_some()
        && parsed.username().is_empty()
        && parsed.password().is_none()
        && parsed.path() == "/"
        && parsed.query().is_none()
        && parsed.fragment().is_none();
    if !plain {
        return Err(OriginError::NotAnOrigin(url.to_owned()));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// A URL's origin (scheme, host and port), as browsers and curl compare them before
/// sending credentials along a redirect.
pub fn same_origin_key(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    Some(u.origin().ascii_serialization())
}

/// Whether `url` is plain `http://` to another host (loopback is this host): what
/// would carry a token and the data in clear across a network.
pub fn is_plain_http_elsewhere(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    if parsed.scheme() != "http" {
        return false;
    }
    let Some(host) = parsed.host_str() else {
        return false;
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !loopback
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_url_is_a_plain_origin() {
        assert_eq!(origin("http://h:1/").unwrap(), "http://h:1");
        assert_eq!(origin("https://h:1").unwrap(), "https://h:1");
        for bad in [
            "http://u@h:1",
            "http://h:1/x",
            "http://h:1?q",
            "ftp://h:1",
            "x",
        ] {
            assert!(origin(bad).is_err(), "{bad}");
        }
        assert_eq!(
            same_origin_key("http://h:1/a?b").as_deref(),
            Some("http://h:1")
        );
        assert!(is_plain_http_elsewhere("http://10.0.0.1:1"));
        for here in [
            "http://127.0.0.1:1",
            "http://[::1]:1",
            "http://localhost:1",
            "https://h:1",
        ] {
            assert!(!is_plain_http_elsewhere(here), "{here}");
        }
    }
}

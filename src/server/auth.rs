//! Bearer-token authentication: the token, its constant-time comparison, and the
//! middleware that guards routes with it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// A token shorter than this is accepted with a warning: it can be guessed.
pub const MIN_TOKEN_BYTES: usize = 16;

/// Compares two secrets in constant time (for equal lengths).
pub fn secrets_match(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.as_bytes().ct_eq(b.as_bytes()).into()
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

    /// Whether two tokens hold the same secret.
    pub fn same_secret(&self, other: &Token) -> bool {
        self.matches(&other.0)
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

/// Middleware: answers 401 unless the request carries `Authorization: Bearer <token>`
/// or Basic credentials with an accepted token as password (compared in constant time).
pub async fn require_token(
    axum::extract::State(token): axum::extract::State<Accepted>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
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

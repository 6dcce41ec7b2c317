//! Bearer-token authentication: the token, its constant-time comparison, and the
//! middleware that guards routes with it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

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

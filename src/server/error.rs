//! The JSON error every node answers with, and the fallbacks for unknown routes.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// Whether a refused write was counted (see [`ApiError::applied`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Nothing was counted: sending it again counts it once.
    No,
    /// Counted (the answer names its seq); it only lacks durability or acknowledgements.
    Yes,
    /// The node cannot tell (a raft proposal not known committed): only a retry with
    /// the same Idempotency-Key is safe.
    Unknown,
}

impl Applied {
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::No => "no",
            Applied::Yes => "yes",
            Applied::Unknown => "unknown",
        }
    }
}

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

    /// Says whether a write was counted: every refusal of `POST /post` carries
    /// `"applied"` (`"no"`, `"yes"` with its `seq`, or `"unknown"`), so that a client
    /// without an Idempotency-Key knows whether it may simply send it again.
    pub fn applied(self, applied: Applied) -> Self {
        self.with("applied", applied.as_str())
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

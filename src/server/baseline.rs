//! The benchmarks' baseline: a bare axum server with the shapes of memdb's routes and
//! no work behind them (`memdb baseline`, hidden).

/// A bare axum server with the same routes' shapes and no work behind them: the
/// baseline that memdb's own handlers are measured against (`memdb baseline`).
pub fn baseline_router() -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    axum::Router::new()
        .route(
            "/wordcount",
            get(|| async { axum::Json(serde_json::json!({"hello": 1})) }),
        )
        .route(
            "/post",
            post(|body: bytes::Bytes| async move {
                (
                    StatusCode::ACCEPTED,
                    axum::Json(serde_json::json!({"seq": 1, "words": body.len()})),
                )
            }),
        )
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
}

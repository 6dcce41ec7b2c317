//! What every node serves with: the role contract ([`source`]), the JSON error,
//! authentication, strict request parsing, its settings ([`serving`]), the router with
//! its limits (rate, body bytes, concurrency, timeout), the shared read routes,
//! metrics, the OpenAPI document, the accept loop and the shutdown signal.

pub mod auth;
pub mod baseline;
pub mod budget;
pub mod constraints;
pub mod deadline;
pub mod error;
pub mod files;
pub mod history;
pub mod listen;
pub mod metrics;
pub mod openapi;
pub mod parse;
pub mod ratelimit;
pub mod router;
pub mod serving;
pub mod shutdown;
pub mod source;
pub mod ui;

pub use error::ApiError;

//! The OpenAPI document every node serves at `GET /openapi.json`.
//!
//! Each handler carries its own `#[utoipa::path]` annotation, and a route is only ever
//! added together with that annotation ([`utoipa_axum::routes!`] for plain handlers,
//! [`documented`] for the generic read handlers), so the router and the document are
//! built from the same list and cannot drift apart. Which operations need a bearer
//! token is marked from the node's actual access rules ([`require_bearer`]).

use std::collections::BTreeMap;

use axum::handler::Handler;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use bytes::Bytes;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{OpenApi, Paths};
use utoipa_axum::PathItemExt;
use utoipa_axum::router::UtoipaMethodRouter;

/// The name of the bearer-token security scheme in the document.
pub const BEARER: &str = "bearer";

/// Every error answer: `{"error": "what was wrong"}`, sometimes with context fields
/// (for example `seq`, the seq the node had reached).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // A schema only: the body is built by `crate::server::error::ApiError`.
pub struct ErrorBody {
    /// What was wrong, for a human.
    pub error: String,
}

/// Counts by word: `{"word": count, ...}`.
pub type WordCounts = BTreeMap<String, u64>;

/// One entry of `GET /top`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Only its schema is used: the answer is written directly.
pub struct TopWord {
    /// The word, as the table holds it (normalised).
    word: String,
    /// Its count.
    count: u64,
}

/// A handler and the operation documenting it (`P`, the struct `#[utoipa::path]`
/// generates), registered together under the methods the document names. This is what
/// [`utoipa_axum::routes!`] does, for handlers it cannot name (generic ones, such as
/// `router::wordcount::<S>`).
pub fn documented<P, H, T, S>(handler: H) -> UtoipaMethodRouter<S>
where
    P: utoipa::Path,
    H: Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    let methods = P::methods();
    let router = methods.iter().fold(MethodRouter::new(), |router, m| {
        router.on(m.to_method_filter(), handler.clone())
    });
    let mut paths = Paths::new();
    paths.add_path_operation(P::path(), methods, P::operation());
    (Vec::new(), paths, router)
}

/// Marks every operation in `api` as needing the bearer token.
pub fn require_bearer(api: &mut OpenApi) {
    let requirement = SecurityRequirement::new(BEARER, Vec::<String>::new());
    for op in operations(api) {
        op.security = Some(vec![requirement.clone()]);
    }
}

/// Every operation of `api`.
fn operations(api: &mut OpenApi) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    api.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
    })
}

/// Marks every operation of `api` as needing a client certificate (`--tls-client-ca`):
/// it may answer `403`.
pub fn require_client_certificate(api: &mut OpenApi) {
    use utoipa::openapi::{RefOr, ResponseBuilder, content::ContentBuilder};
    let forbidden = ResponseBuilder::new()
        .description(
            "No verified client certificate: this route needs one signed by the node's \
             --tls-client-ca",
        )
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "ErrorBody",
                ))))
                .build(),
        )
        .build();
    for op in operations(api) {
        op.responses
            .responses
            .entry("403".to_owned())
            .or_insert_with(|| RefOr::T(forbidden.clone()));
    }
}

/// Finishes a node's document: memdb's name, version and licence with the node's role,
/// the shared error schema, and the bearer scheme if any route uses it.
pub fn finish_document(api: &mut OpenApi, role: &str, uses_token: bool) {
    use utoipa::{PartialSchema, ToSchema};
    api.info = utoipa::openapi::InfoBuilder::new()
        .title(format!("memdb {role}"))
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(format!(
            "The HTTP API of a memdb {role}. Every response carries `x-memdb-seq`, the seq \
             the node's table reflects. Errors are JSON objects with an `error` field."
        )))
        .license(Some(utoipa::openapi::License::new(env!(
            "CARGO_PKG_LICENSE"
        ))))
        .build();
    let components = api.components.get_or_insert_with(Default::default);
    components
        .schemas
        .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
    if uses_token {
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
    // What the node-wide limits can answer on any operation they apply to.
    let error = || {
        utoipa::openapi::ResponseBuilder::new().content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name(
                    ErrorBody::name(),
                )))
                .build(),
        )
    };
    for (path, item) in api.paths.paths.iter_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            let r = &mut op.responses.responses;
            if !crate::server::ratelimit::exempt(path) {
                r.entry("429".into()).or_insert_with(|| {
                    error()
                        .description("Over the node's --rate-limit; retry shortly")
                        .build()
                        .into()
                });
            }
            r.entry("503".into()).or_insert_with(|| {
                error()
                    .description(
                        "Overloaded (--max-concurrent, --max-body-in-flight) or over \
                         --request-timeout; retry shortly",
                    )
                    .build()
                    .into()
            });
        }
    }
}

/// `GET /openapi.json` → this node's OpenAPI 3 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This node's OpenAPI 3.1 document",
               content_type = "application/json"))
)]
pub async fn openapi_json(spec: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        spec,
    )
        .into_response()
}

/// Adds `GET /openapi.json` to `api` and to `router`, serving `api` (which then
/// documents its own route too) with what the handlers check written in
/// ([`crate::server::constraints`]; `max_body` is the node's `--max-body`).
pub fn serve_document<S>(
    router: axum::Router<S>,
    mut api: OpenApi,
    max_body: Option<usize>,
) -> (axum::Router<S>, OpenApi)
where
    S: Clone + Send + Sync + 'static,
{
    use utoipa::Path;
    let methods = __path_openapi_json::methods();
    api.paths.add_path_operation(
        __path_openapi_json::path(),
        methods.clone(),
        __path_openapi_json::operation(),
    );
    let mut doc = serde_json::to_value(&api).expect("an OpenAPI document serialises");
    crate::server::constraints::apply(&mut doc, max_body);
    let spec =
        Bytes::from(serde_json::to_vec_pretty(&doc).expect("an OpenAPI document serialises"));
    let route = methods.iter().fold(MethodRouter::new(), |r, m| {
        let spec = spec.clone();
        r.on(m.to_method_filter(), move || openapi_json(spec.clone()))
    });
    (router.route(&__path_openapi_json::path(), route), api)
}

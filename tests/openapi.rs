//! `GET /openapi.json`: each node documents exactly the routes it serves, with the
//! access rules it applies.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use axum::body::Body;

use crate::util::inproc::{App, InLeader, InReplica, wait_ready};

const TOKEN: &str = "openapi-t0ken";

/// The routes of the Go original's contract, by role: a document that lost one of
/// them fails here even if the router lost it too.
const LEADER: &[(&str, &str)] = &[("POST", "/post"), ("GET", "/sync"), ("GET", "/health")];
const REPLICA: &[(&str, &str)] = &[
    ("GET", "/wordcount"),
    ("POST", "/update"),
    ("GET", "/health"),
];
const LOCAL: &[(&str, &str)] = &[("GET", "/wordcount"), ("GET", "/health")];

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

/// (method, path) → whether the operation declares the bearer scheme.
type Operations = BTreeMap<(String, String), bool>;

fn operations(spec: &Value) -> Operations {
    let mut ops = Operations::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let secured = op["security"]
                .as_array()
                .is_some_and(|reqs| reqs.iter().any(|r| r.get("bearer").is_some()));
            ops.insert((method.to_uppercase(), path.clone()), secured);
        }
    }
    ops
}

/// Every `$ref` in `v` names a schema in `spec`'s components.
fn assert_refs_resolve(spec: &Value, v: &Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                let name = r
                    .strip_prefix("#/components/schemas/")
                    .unwrap_or_else(|| panic!("unexpected $ref {r}"));
                assert!(
                    spec["components"]["schemas"].get(name).is_some(),
                    "$ref {r} does not resolve"
                );
            }
            map.values().for_each(|x| assert_refs_resolve(spec, x));
        }
        Value::Array(xs) => xs.iter().for_each(|x| assert_refs_resolve(spec, x)),
        _ => {}
    }
}

/// A request that reaches the handler of `method path` (a word to look up, a body to
/// post); the status it gets.
async fn call(app: &App, method: &str, path: &str, token: Option<&str>) -> u16 {
    if (method, path) == ("DELETE", "/replicas") {
        // Something to remove: register it first (as the caller may).
        Box::pin(call(app, "POST", path, token)).await;
    }
    // A path parameter gets a value the node has: the leader's base file.
    let named = path.replace("{name}", "snapshot.memdb");
    let path = named.as_str();
    let (uri, ctype, body) = match (method, path) {
        ("GET", "/wordcount") => (format!("{path}?word=x"), None, ""),
        ("POST", "/post") => (path.to_owned(), Some("text/plain"), "openapi"),
        ("POST" | "DELETE", "/replicas") => (
            path.to_owned(),
            Some("application/json"),
            r#"{"url":"http://127.0.0.1:9"}"#,
        ),
        ("POST", "/update") => (path.to_owned(), Some("application/json"), "{}"),
        _ => (path.to_owned(), None, ""),
    };
    app.send(method, &uri, ctype, token, body).await.status
}

#[tokio::test]
async fn each_node_documents_exactly_the_routes_it_serves() {
    let token = || memdb::server::auth::Token::new(TOKEN);
    let leader = InLeader::open(|c| c.serving.auth_token = token());
    let url = leader.listen().await;
    let replica = InReplica::network(&url, |c| c.serving.auth_token = token());
    let local = InReplica::local(&leader.data_dir(), |c| {
        c.serving.auth_token = token();
        c.serving.protect_reads = true;
    });
    wait_ready(&replica.app).await;
    wait_ready(&local.app).await;

    let mut docs = Vec::new();
    for (node, role, contract) in [
        (&leader.app, "leader", LEADER),
        (&replica.app, "replica", REPLICA),
        (&local.app, "local replica", LOCAL),
    ] {
        // The document is open, like /health: it describes the API, not the data.
        let resp = node
            .send("GET", "/openapi.json", None, None, Body::empty())
            .await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.headers["content-type"], "application/json");
        let spec = resp.json();
        assert!(
            spec["openapi"].as_str().unwrap().starts_with("3."),
            "{spec}"
        );
        assert_eq!(spec["info"]["title"], format!("memdb {role}"));
        assert_eq!(spec["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            spec["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert_refs_resolve(&spec, &spec);
        let ops = operations(&spec);
        for (method, path) in contract {
            assert!(
                ops.contains_key(&(method.to_string(), path.to_string())),
                "{role} does not document {method} {path}"
            );
        }
        assert!(ops.contains_key(&("GET".into(), "/openapi.json".into())));
        // /health is typed: its schema names exactly the fields it answers with.
        let schema = &spec["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"]["$ref"];
        let name = schema
            .as_str()
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
            .unwrap_or_else(|| panic!("{role}: /health has no named schema: {schema}"));
        let documented: BTreeSet<&String> = spec["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{role}: schema {name} has no properties"))
            .keys()
            .collect();
        let health = node.get("/health").await.1;
        let answered: BTreeSet<&String> = health.as_object().unwrap().keys().collect();
        assert_eq!(documented, answered, "{role}: {name} against {health}");
        docs.push((node, role, ops));
    }

    let all_paths: BTreeSet<String> = docs
        .iter()
        .flat_map(|(_, _, ops)| ops.keys().map(|(_, p)| p.clone()))
        .chain(["/", "/nope", "/admin", "/update", "/post"].map(String::from))
        .collect();
    for (node, role, ops) in &docs {
        // Every documented operation is served, needs the token exactly when the
        // document says so, and answers with it.
        for ((method, path), &secured) in ops {
            let without = call(node, method, path, None).await;
            assert!(
                without != 404 && without != 405,
                "{role}: documented {method} {path} is not routed ({without})"
            );
            assert_eq!(
                without == 401,
                secured,
                "{role}: {method} {path} answered {without} without a token, but the \
                 document says secured = {secured}"
            );
            let with = call(node, method, path, Some(TOKEN)).await;
            assert!(
                (200..300).contains(&with),
                "{role}: {method} {path} with the token answered {with}"
            );
        }
        // Nothing else is: other methods on a documented path are 405, and paths
        // the node does not document are 404.
        for path in &all_paths {
            let documented: Vec<&str> = METHODS
                .into_iter()
                .filter(|m| ops.contains_key(&(m.to_string(), path.clone())))
                .collect();
            for method in METHODS {
                if documented.contains(&method) {
                    continue;
                }
                let code = call(node, method, path, Some(TOKEN)).await;
                let want = if documented.is_empty() { 404 } else { 405 };
                assert_eq!(
                    code, want,
                    "{role}: undocumented {method} {path} answered {code}"
                );
            }
        }
    }
}

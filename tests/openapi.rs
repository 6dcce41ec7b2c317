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

/// A value inside and one outside each pattern the documents state (a pattern without
/// samples here fails the test: a new constraint needs its own).
fn pattern_samples(pattern: &str) -> (&'static str, &'static str) {
    use memdb::server::constraints::{INCARNATION_PATTERN, ORIGIN_PATTERN, word_pattern};
    match pattern {
        p if p == word_pattern() => ("Héllo", "two words"),
        p if p == INCARNATION_PATTERN => ("00000000000000a1", "0000000000000000"),
        p if p == ORIGIN_PATTERN => ("http://127.0.0.1:9", "http://127.0.0.1:9/path"),
        p if p.starts_with("^[^\\u0009") => ("ab", "a\u{3000}b"),
        p if p.starts_with("[^\\u0009") => ("some text", " \u{85}\t "),
        other => panic!("no samples for the pattern {other:?}"),
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Sends `GET path?query` and checks the answer is what the document says of it: not a
/// 4xx when `valid`, else 400.
async fn check_query(app: &App, role: &str, path: &str, query: &str, valid: bool) -> usize {
    let uri = format!("{path}?{query}");
    let code = app
        .send("GET", &uri, None, None, Body::empty())
        .await
        .status;
    if valid {
        assert!(
            code < 400,
            "{role}: GET {uri:.120} is valid by the document, answered {code}"
        );
    } else {
        assert_eq!(
            code, 400,
            "{role}: GET {uri:.120} is invalid by the document"
        );
    }
    1
}

/// Every constraint the document states on a query parameter, from just inside to
/// just outside: the node accepts the one and refuses the other with 400.
async fn check_query_constraints(app: &App, role: &str, spec: &Value) -> usize {
    let mut checked = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        let Some(params) = item["get"]["parameters"].as_array() else {
            continue;
        };
        // The other required parameters, at a valid value.
        let base: Vec<String> = params
            .iter()
            .filter(|p| p["required"] == true)
            .map(|p| format!("{}=hello", p["name"].as_str().unwrap()))
            .collect();
        for p in params.iter().filter(|p| p["in"] == "query") {
            let name = p["name"].as_str().unwrap();
            let with = |v: &str| {
                base.iter()
                    .filter(|b| !b.starts_with(&format!("{name}=")))
                    .cloned()
                    .chain([format!("{name}={v}")])
                    .collect::<Vec<_>>()
                    .join("&")
            };
            let s = &p["schema"];
            let items = &s["items"];
            let one = if s["type"] == "array" { items } else { s };
            if let Some(min) = one["minimum"].as_u64() {
                checked += check_query(app, role, path, &with(&min.to_string()), true).await;
                let below = (min as i128 - 1).to_string();
                checked += check_query(app, role, path, &with(&below), false).await;
            }
            if let Some(max) = one["maximum"].as_u64() {
                if name != "min_seq" {
                    checked += check_query(app, role, path, &with(&max.to_string()), true).await;
                }
                let above = (max as u128 + 1).to_string();
                checked += check_query(app, role, path, &with(&above), false).await;
            }
            let (inside, outside) = match one["pattern"].as_str() {
                Some(pat) => pattern_samples(pat),
                None => ("a", ""),
            };
            if one["pattern"].is_string() {
                checked += check_query(app, role, path, &with(&enc(inside)), true).await;
                checked += check_query(app, role, path, &with(&enc(outside)), false).await;
            }
            if one["minLength"] == 1 {
                checked += check_query(app, role, path, &with(""), false).await;
            }
            if let Some(max) = one["maxLength"].as_u64() {
                // Two-byte characters: the limit counts characters, as JSON Schema does.
                let at = "é".repeat(max as usize);
                checked += check_query(app, role, path, &with(&enc(&at)), true).await;
                let over = "é".repeat(max as usize + 1);
                checked += check_query(app, role, path, &with(&enc(&over)), false).await;
            }
            if let Some(max) = s["maxItems"].as_u64() {
                let many = |n: u64| vec![format!("{name}=w"); n as usize].join("&");
                checked += check_query(app, role, path, &many(max), true).await;
                checked += check_query(app, role, path, &many(max + 1), false).await;
            }
            if s["minItems"] == 1 {
                let none = base
                    .iter()
                    .filter(|b| !b.starts_with(&format!("{name}=")))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("&");
                checked += check_query(app, role, path, &none, false).await;
            }
        }
    }
    checked
}

/// Sends a body and checks the answer is what the document says of it.
async fn check_body(app: &App, role: &str, path: &str, ctype: &str, body: String, valid: bool) {
    let code = app
        .send("POST", path, Some(ctype), None, body.clone())
        .await
        .status;
    if valid {
        assert!(
            code < 400,
            "{role}: POST {path} {ctype} {body:.80} is valid, answered {code}"
        );
    } else {
        assert_eq!(
            code, 400,
            "{role}: POST {path} {ctype} {body:.80} is invalid"
        );
    }
}

#[tokio::test]
async fn every_documented_bound_is_the_handlers_bound() {
    let leader = InLeader::open(|c| {
        c.max_wait = std::time::Duration::from_millis(20);
    });
    let url = leader.listen().await;
    let replica = InReplica::network(&url, |c| c.max_wait = std::time::Duration::from_millis(20));
    let local = InReplica::local(&leader.data_dir(), |c| {
        c.max_wait = std::time::Duration::from_millis(20)
    });
    wait_ready(&replica.app).await;
    wait_ready(&local.app).await;
    for (app, role) in [
        (&leader.app, "leader"),
        (&replica.app, "replica"),
        (&local.app, "local replica"),
    ] {
        let spec = app
            .send("GET", "/openapi.json", None, None, Body::empty())
            .await
            .json();
        let checked = check_query_constraints(app, role, &spec).await;
        // /wordcount: word (pattern, length, items), min_seq; /top: n, prefix, min_seq.
        assert!(checked >= 17, "{role}: only {checked} checks");
    }

    // Bodies: a post's text, in each content type; a replica's registration.
    let spec = leader
        .app
        .send("GET", "/openapi.json", None, None, Body::empty())
        .await
        .json();
    let post = &spec["paths"]["/post"]["post"]["requestBody"]["content"];
    let (inside, outside) =
        pattern_samples(post["text/plain"]["schema"]["pattern"].as_str().unwrap());
    assert_eq!(post["text/plain"]["schema"]["minLength"], 1);
    let app = &leader.app;
    for (text, valid) in [(inside, true), (outside, false), ("", false)] {
        check_body(app, "leader", "/post", "text/plain", text.into(), valid).await;
        let json = serde_json::json!({ "text": text }).to_string();
        check_body(app, "leader", "/post", "application/json", json, valid).await;
        let form = format!("text={}", enc(text));
        check_body(
            app,
            "leader",
            "/post",
            "application/x-www-form-urlencoded",
            form,
            valid,
        )
        .await;
    }
    check_body(
        app,
        "leader",
        "/post",
        "application/json",
        "{}".into(),
        false,
    )
    .await;
    check_body(
        app,
        "leader",
        "/post",
        "application/x-www-form-urlencoded",
        "other=x".into(),
        false,
    )
    .await;

    let register = &spec["components"]["schemas"]["Register"]["properties"];
    let (url_in, url_out) = pattern_samples(register["url"]["pattern"].as_str().unwrap());
    let (inc_in, inc_out) = pattern_samples(register["incarnation"]["pattern"].as_str().unwrap());
    let body = |url: &str, inc: &str| {
        serde_json::json!({ "url": url, "seq": 0, "incarnation": inc }).to_string()
    };
    let ctype = "application/json";
    let short = &inc_in[1..];
    for (b, valid) in [
        (body(url_in, inc_in), true),
        (body(url_out, inc_in), false),
        (body(url_in, inc_out), false),
        (body("", inc_in), false),
        (body(url_in, short), false),
    ] {
        check_body(app, "leader", "/replicas", ctype, b, valid).await;
    }
    // The documented example of DELETE /replicas names a replica that can be
    // registered, and then removed.
    let example = spec["components"]["schemas"]["Unregister"]["example"].to_string();
    let reg = example.clone();
    check_body(app, "leader", "/replicas", ctype, reg, true).await;
    let code = app
        .send("DELETE", "/replicas", Some(ctype), None, example)
        .await
        .status;
    assert_eq!(code, 200, "DELETE /replicas with the documented example");
    // /update's sequencing headers: each bound with the other two present, and the
    // rule the document states as x-memdb-together (OpenAPI cannot say it).
    let rspec = replica
        .app
        .send("GET", "/openapi.json", None, None, Body::empty())
        .await
        .json();
    let update = &rspec["paths"]["/update"]["post"];
    let header = |name: &str| {
        update["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["schema"]
            .clone()
    };
    assert_eq!(header("x-memdb-to-seq")["maximum"].as_u64(), Some(u64::MAX));
    let (inc_in, inc_out) =
        pattern_samples(header("x-memdb-incarnation")["pattern"].as_str().unwrap());
    assert_eq!(
        update["x-memdb-together"]["headers"]
            .as_array()
            .map(Vec::len),
        Some(3),
        "{update}"
    );
    let max = u64::MAX.to_string();
    let over = "18446744073709551616";
    for (from, to, inc, valid) in [
        (Some("1"), Some("1"), Some(inc_in), true),
        (Some("0"), Some(max.as_str()), Some(inc_in), true),
        (Some("1"), Some(over), Some(inc_in), false),
        (Some("1"), Some("2"), Some(inc_out), false),
        (Some("2"), Some("1"), Some(inc_in), false),
        (Some("1"), None, Some(inc_in), false),
        (None, None, Some(inc_in), false),
    ] {
        let mut req = axum::http::Request::builder()
            .method("POST")
            .uri("/update")
            .header("content-type", "application/json");
        for (h, v) in [
            ("x-memdb-from-seq", from),
            ("x-memdb-to-seq", to),
            ("x-memdb-incarnation", inc),
        ] {
            if let Some(v) = v {
                req = req.header(h, v);
            }
        }
        let req = req.body(Body::from("{}")).unwrap();
        let code = tower::ServiceExt::oneshot(replica.app.0.clone(), req)
            .await
            .unwrap()
            .status()
            .as_u16();
        let what = format!("POST /update from {from:?} to {to:?} incarnation {inc:?}");
        if valid {
            assert!(
                code < 400 || code == 409,
                "{what} is valid, answered {code}"
            );
        } else {
            assert_eq!(code, 400, "{what} is invalid");
        }
    }

    // Every body's 413 states this node's --max-body.
    let max = spec["info"]["x-memdb-max-body"].as_u64().unwrap();
    let said = spec["paths"]["/post"]["post"]["responses"]["413"]["description"]
        .as_str()
        .unwrap();
    assert!(said.contains(&max.to_string()), "{said}");
}

/// A voter's admin bodies, against its own document: an id key and a member URL
/// just inside and just outside what it states, an empty map, a voter list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voters_documented_admin_bodies_are_its_handlers_bounds() {
    use crate::util::group::{Group, TOKEN};
    use memdb::server::constraints::{NODE_ID_PATTERN, ORIGIN_PATTERN};
    use serde_json::json;
    let g = Group::start(1, &[]).await;
    let url = g.urls()[0].clone();
    let spec = crate::util::get_json(&g.http, &format!("{url}/openapi.json"))
        .await
        .unwrap();
    let schemas = &spec["components"]["schemas"];
    for (name, field) in [("Init", "members"), ("Addresses", "nodes")] {
        let map = &schemas[name]["properties"][field];
        // Keys are strings: a schema that calls them integers can never be met.
        assert_eq!(
            map["propertyNames"],
            json!({ "type": "string", "pattern": NODE_ID_PATTERN }),
            "{name}"
        );
        assert_eq!(
            map["additionalProperties"]["pattern"], ORIGIN_PATTERN,
            "{name}"
        );
        assert_eq!(map["minProperties"], 1, "{name}");
    }
    assert_eq!(schemas["Voters"]["properties"]["voters"]["minItems"], 1);
    let (url_in, url_out) = pattern_samples(ORIGIN_PATTERN);
    let post = |path: &'static str, body: Value| {
        let (http, url) = (g.http.clone(), url.clone());
        async move {
            let r = http
                .post(format!("{url}{path}"))
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            (code, r.text().await.unwrap())
        }
    };
    // Inside: valid by the document; the answer may only say the group's state
    // differs (409: not a member / not this node) or it is formed already (200).
    for (path, body) in [
        ("/raft/addresses", json!({ "nodes": { "9": url_in } })),
        ("/raft/addresses", json!({ "nodes": { "1": url } })),
        (
            "/raft/init",
            json!({ "members": { "18446744073709551615": url_in } }),
        ),
        ("/raft/init", json!({ "members": { "1": url } })),
        ("/raft/membership", json!({ "voters": [1] })),
        ("/raft/membership", json!({ "voters": [7] })),
    ] {
        let (code, text) = post(path, body.clone()).await;
        assert!(
            code < 400 || code == 409,
            "{path} {body} is valid by the document, answered {code}: {text}"
        );
    }
    // Outside: 400.
    for (path, body) in [
        ("/raft/addresses", json!({ "nodes": {} })),
        ("/raft/addresses", json!({ "nodes": { "x": url_in } })),
        ("/raft/addresses", json!({ "nodes": { "01": url_in } })),
        ("/raft/addresses", json!({ "nodes": { "1": url_out } })),
        ("/raft/init", json!({ "members": {} })),
        ("/raft/init", json!({ "members": { "1": url_out } })),
        ("/raft/membership", json!({ "voters": [] })),
        ("/raft/learners", json!({ "id": 2, "url": url_out })),
    ] {
        let (code, text) = post(path, body.clone()).await;
        assert_eq!(
            code, 400,
            "{path} {body} is invalid by the document: {text}"
        );
    }
}

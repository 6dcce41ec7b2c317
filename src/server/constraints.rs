//! What the handlers check, written into the OpenAPI document from the constants they
//! check against, so that the two cannot drift apart: bounds, lengths, patterns and
//! formats of parameters and bodies, and the `413` each body can get with the node's
//! `--max-body`. Applied to the document as JSON when it is served
//! ([`crate::server::openapi::serve_document`]); `tests/openapi.rs` sends, for every
//! constraint, a value just inside it (accepted) and one just outside (refused).
//!
//! Where a handler's rule cannot be written as JSON Schema exactly, the document states
//! a narrower one (every value it allows is accepted) and says the whole rule in
//! words: a word to look up is letters and digits here, while the node takes any text
//! its tokenizer reads as exactly one word (UAX #29 segmentation is not a regular
//! expression).

use serde_json::{Value, json};

use crate::server::parse::{MAX_PREFIX, MAX_WORDS_PER_QUERY};
use crate::storage::top::{DEFAULT_TOP, MAX_TOP};

/// The characters Rust's `char::is_whitespace` (Unicode `White_Space`) calls white
/// space, as ranges: what `/top`'s prefix may not hold and what a post's text must
/// hold more than.
pub const WHITE_SPACE: &[(char, char)] = &[
    ('\u{9}', '\u{d}'),
    (' ', ' '),
    ('\u{85}', '\u{85}'),
    ('\u{a0}', '\u{a0}'),
    ('\u{1680}', '\u{1680}'),
    ('\u{2000}', '\u{200a}'),
    ('\u{2028}', '\u{2029}'),
    ('\u{202f}', '\u{202f}'),
    ('\u{205f}', '\u{205f}'),
    ('\u{3000}', '\u{3000}'),
];

/// The class of [`WHITE_SPACE`] in ECMA-262 regular expression syntax (JSON Schema's),
/// without brackets.
pub fn white_space_class() -> String {
    class(WHITE_SPACE)
}

/// A word to look up, as the document states it: ASCII letters and digits, and the
/// letters of Latin-1, Latin Extended-A, Greek and Cyrillic, each of which every
/// tokenizer reads as exactly one word (a test checks every character). Explicit ranges
/// rather than Unicode classes (`\p{L}`), which the regular expressions of many
/// schema tools (Python's among them) do not take.
pub const WORD_CHARS: &[(char, char)] = &[
    ('0', '9'),
    ('A', 'Z'),
    ('a', 'z'),
    ('\u{c0}', '\u{d6}'),
    ('\u{d8}', '\u{f6}'),
    ('\u{f8}', '\u{17f}'),
    ('\u{391}', '\u{3a1}'),
    ('\u{3a3}', '\u{3a9}'),
    ('\u{3b1}', '\u{3c9}'),
    ('\u{410}', '\u{44f}'),
];

/// The class of `ranges` in ECMA-262 regular expression syntax (JSON Schema's),
/// without brackets.
pub fn class(ranges: &[(char, char)]) -> String {
    let one = |c: char| {
        if c.is_ascii_alphanumeric() {
            c.to_string()
        } else {
            format!("\\u{:04X}", c as u32)
        }
    };
    ranges
        .iter()
        .map(|&(a, b)| {
            if a == b {
                one(a)
            } else {
                format!("{}-{}", one(a), one(b))
            }
        })
        .collect()
}

/// [`WORD_CHARS`] as a pattern.
pub fn word_pattern() -> String {
    format!("^[{}]+$", class(WORD_CHARS))
}

/// An incarnation: 16 hex digits, not all zero (the length is `minLength`/`maxLength`).
pub const INCARNATION_PATTERN: &str = "^0*[1-9a-fA-F][0-9a-fA-F]*$";

/// A peer's URL as the document states it: `http(s)://`, a host name, an IPv4 address or
/// `[::1]`, an optional port, an optional `/`, nothing else (see [`crate::origin`]; the
/// node also takes other IPv6 addresses).
pub const ORIGIN_PATTERN: &str = concat!(
    r"^https?://(",
    r"[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*(\.[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*)*",
    r"|((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
    r"|\[::1\])",
    r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0))?/?$",
);

/// A raft node id as an object key (a `u64` of at most 19 digits, so never over its
/// maximum).
pub const NODE_ID_PATTERN: &str = "^(0|[1-9][0-9]{0,18})$";

/// A registered replica's URL in the examples: the first network replica of
/// `make start-servers`.
pub const REPLICA_EXAMPLE: &str = "http://127.0.0.1:8081";

fn op<'a>(doc: &'a mut Value, path: &str, method: &str) -> Option<&'a mut Value> {
    doc.get_mut("paths")?.get_mut(path)?.get_mut(method)
}

fn param<'a>(op: &'a mut Value, name: &str) -> Option<&'a mut Value> {
    op.get_mut("parameters")?
        .as_array_mut()?
        .iter_mut()
        .find(|p| p["name"] == name)
}

/// Sets `patch`'s fields in `target` (objects merged, anything else replaced).
fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

/// Constrains the query or header parameter `name` of `method path`, if the node
/// serves it.
fn constrain_param(doc: &mut Value, path: &str, method: &str, name: &str, patch: Value) {
    if let Some(p) = op(doc, path, method).and_then(|o| param(o, name)) {
        merge(p, patch);
    }
}

/// The schema of `method path`'s body as `content_type` (the component it names, if it
/// names one).
fn body_schema<'a>(
    doc: &'a mut Value,
    path: &str,
    method: &str,
    content_type: &str,
) -> Option<&'a mut Value> {
    let pointer = format!(
        "/requestBody/content/{}/schema",
        content_type.replace('/', "~1")
    );
    let current = op(doc, path, method)?.pointer_mut(&pointer)?;
    let named = current["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .map(str::to_owned);
    match named {
        Some(name) => doc.pointer_mut(&format!("/components/schemas/{name}")),
        None => op(doc, path, method)?.pointer_mut(&pointer),
    }
}

/// Merges `schema` into the schema of `method path`'s body as `content_type`.
fn constrain_body(doc: &mut Value, path: &str, method: &str, content_type: &str, schema: Value) {
    if let Some(s) = body_schema(doc, path, method, content_type) {
        merge(s, schema);
    }
}

/// Writes every checked constraint into `doc`, and the `413` of every operation that
/// takes a body, with `max_body` (the node's `--max-body`; `None`: no limit but the
/// node-wide ones).
pub fn apply(doc: &mut Value, max_body: Option<usize>) {
    let u64_max = json!({ "minimum": 0, "maximum": u64::MAX });
    for path in ["/wordcount", "/top"] {
        constrain_param(doc, path, "get", "min_seq", json!({ "schema": u64_max }));
    }
    constrain_param(
        doc,
        "/wordcount",
        "get",
        "word",
        json!({
            "required": true,
            "style": "form",
            "explode": true,
            "schema": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_WORDS_PER_QUERY,
                "items": { "type": "string", "minLength": 1, "pattern": word_pattern() },
            },
            "example": ["hello"],
        }),
    );
    constrain_param(
        doc,
        "/top",
        "get",
        "n",
        json!({ "schema": { "type": "integer", "minimum": 1, "maximum": MAX_TOP,
                            "default": DEFAULT_TOP } }),
    );
    constrain_param(
        doc,
        "/top",
        "get",
        "prefix",
        json!({ "schema": { "type": "string", "maxLength": MAX_PREFIX,
                            "pattern": format!("^[^{}]*$", white_space_class()) } }),
    );

    // A post's text: not empty, and more than white space.
    let text = json!({ "type": "string", "minLength": 1,
                       "pattern": format!("[^{}]", white_space_class()) });
    for path in ["/post"] {
        constrain_body(doc, path, "post", "text/plain", text.clone());
        for ctype in ["application/json", "application/x-www-form-urlencoded"] {
            constrain_body(
                doc,
                path,
                "post",
                ctype,
                json!({ "type": "object", "required": ["text"],
                        "properties": { "text": text } }),
            );
        }
    }

    let incarnation = json!({ "type": "string", "minLength": 16, "maxLength": 16,
                              "pattern": INCARNATION_PATTERN });
    let url = json!({ "type": "string", "format": "uri", "pattern": ORIGIN_PATTERN });
    constrain_body(
        doc,
        "/replicas",
        "post",
        "application/json",
        json!({ "required": ["url"],
                "properties": { "url": url, "incarnation": incarnation,
                                "seq": { "maximum": u64::MAX } } }),
    );
    constrain_body(
        doc,
        "/replicas",
        "delete",
        "application/json",
        json!({ "required": ["url"],
                "properties": { "url": { "type": "string" } },
                "example": { "url": REPLICA_EXAMPLE } }),
    );
    for h in ["x-memdb-from-seq", "x-memdb-to-seq"] {
        constrain_param(doc, "/update", "post", h, json!({ "schema": u64_max }));
    }
    for h in ["x-memdb-incarnation", "x-memdb-digest"] {
        constrain_param(doc, "/update", "post", h, json!({ "schema": incarnation }));
    }
    // What OpenAPI cannot state of parameters: the three sequencing headers go together.
    if let Some(o) = op(doc, "/update", "post") {
        merge(
            o,
            json!({ "x-memdb-together": {
                "headers": ["x-memdb-from-seq", "x-memdb-to-seq", "x-memdb-incarnation"],
                "rule": "all three or none, and from-seq <= to-seq; otherwise 400" } }),
        );
    }

    // A voter's write: its Idempotency-Key.
    constrain_param(
        doc,
        "/post",
        "post",
        "Idempotency-Key",
        json!({ "schema": { "type": "string", "minLength": 1,
                            "maxLength": crate::protocol::MAX_IDEMPOTENCY_KEY,
                            "pattern": "^[!-~]+$" } }),
    );
    // A voter's membership routes: node ids (as object keys: strings, where the
    // generated schema said integer, which no key can be) and member URLs.
    let urls = json!({ "type": "object", "minProperties": 1, "additionalProperties": url });
    for (path, field) in [("/raft/init", "members"), ("/raft/addresses", "nodes")] {
        constrain_body(
            doc,
            path,
            "post",
            "application/json",
            json!({ "required": [field], "properties": { field: urls } }),
        );
        if let Some(map) = body_schema(doc, path, "post", "application/json")
            .and_then(|s| s.pointer_mut(&format!("/properties/{field}")))
        {
            map["propertyNames"] = json!({ "type": "string", "pattern": NODE_ID_PATTERN });
        }
    }
    constrain_body(
        doc,
        "/raft/learners",
        "post",
        "application/json",
        json!({ "required": ["id", "url"], "properties": { "url": url } }),
    );
    constrain_body(
        doc,
        "/raft/membership",
        "post",
        "application/json",
        json!({ "required": ["voters"], "properties": { "voters": { "minItems": 1 } } }),
    );

    let too_large = match max_body {
        Some(n) => format!("The body is larger than this node's --max-body, {n} bytes"),
        None => "The body is larger than the node accepts".to_owned(),
    };
    if let Some(Value::Object(paths)) = doc.get_mut("paths") {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for o in item.values_mut() {
                let error = |what: &str| {
                    json!({ "description": what, "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/ErrorBody" } } } })
                };
                let takes_input = o.get("requestBody").is_some()
                    || o["parameters"].as_array().is_some_and(|p| !p.is_empty());
                if takes_input && o["responses"].get("400").is_none() {
                    merge(
                        o,
                        json!({ "responses": { "400": error(
                            "A parameter or the body is not what this document says") } }),
                    );
                }
                if o.get("security").is_some() && o["responses"].get("401").is_none() {
                    merge(
                        o,
                        json!({ "responses": { "401": error("Missing or wrong token") } }),
                    );
                }
                if o.get("requestBody").is_some() {
                    merge(
                        o,
                        json!({ "responses": { "413": {
                            "description": too_large,
                            "content": { "application/json": { "schema": {
                                "$ref": "#/components/schemas/ErrorBody" } } } } } }),
                    );
                }
            }
        }
    }
    if let (Some(n), Some(info)) = (max_body, doc.get_mut("info")) {
        merge(info, json!({ "x-memdb-max-body": n }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_white_space_ranges_are_exactly_what_the_handlers_call_white_space() {
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let listed = WHITE_SPACE.iter().any(|&(a, b)| (a..=b).contains(&c));
            assert_eq!(listed, c.is_whitespace(), "{:#x}", c as u32);
        }
        assert!(white_space_class().starts_with("\\u0009-\\u000D\\u0020"));
    }

    #[test]
    fn every_word_the_pattern_allows_is_one_word_to_either_tokenizer() {
        use crate::words::Tokenizer;
        let allowed: Vec<char> = WORD_CHARS.iter().flat_map(|&(a, b)| a..=b).collect();
        assert!(allowed.len() > 300, "{}", allowed.len());
        for (i, &c) in allowed.iter().enumerate() {
            // Alone, and between others of the class (a letter, a digit, its neighbour).
            let next = allowed[(i + 1) % allowed.len()];
            for w in [c.to_string(), format!("a{c}1{next}")] {
                for t in [Tokenizer::Unicode, Tokenizer::Whitespace] {
                    assert!(t.normalize(&w).is_ok(), "{w:?} ({:#x}) under {t}", c as u32);
                }
            }
        }
        let re = regex::Regex::new(&word_pattern()).unwrap();
        assert!(re.is_match("Héllo") && re.is_match("ΑΒΓ") && re.is_match("Привет1"));
        assert!(!re.is_match("two words") && !re.is_match("a-b") && !re.is_match(""));
    }

    #[test]
    fn the_origin_pattern_allows_only_what_origin_takes() {
        let re = regex::Regex::new(ORIGIN_PATTERN).unwrap();
        let inside = [
            "http://127.0.0.1:8081",
            "https://replica-1.example.com",
            "http://localhost:0/",
            "http://[::1]:65535",
            "http://a:1",
            "http://255.255.255.255:9",
        ];
        for u in inside {
            assert!(re.is_match(u), "{u}");
            assert!(crate::origin::origin(u).is_ok(), "{u}");
        }
        let outside = [
            "",
            "http://",
            "ftp://a:1",
            "http://a:1/x",
            "http://u@a:1",
            "http://a:65536",
            "http://256.1.1.1:1",
            "http://a--b:1",
            "http://a:1?q",
        ];
        for u in outside {
            assert!(!re.is_match(u), "{u}");
        }
    }

    #[test]
    fn the_incarnation_pattern_is_what_parses() {
        let re = regex::Regex::new(INCARNATION_PATTERN).unwrap();
        for s in ["0000000000000001", "ffffffffffffffff", "0123456789ABCDEF"] {
            assert!(re.is_match(s) && s.len() == 16, "{s}");
            assert!(s.parse::<crate::protocol::Incarnation>().is_ok(), "{s}");
        }
        for s in ["0000000000000000", "000000000000000g"] {
            assert!(!re.is_match(s), "{s}");
            assert!(s.parse::<crate::protocol::Incarnation>().is_err(), "{s}");
        }
    }
}

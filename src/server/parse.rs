//! Strict parsing of what clients send: form and query strings (no silent
//! replacement of bad UTF-8), the text of a post, word queries, and the JSON answer of a
//! lookup written directly.

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderName, StatusCode, header};
/// `POST /post` as a JSON body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // A schema only: [`post_text`] parses the body.
pub struct PostJson {
    text: String,
}

/// `POST /post` as a form (the Go clients' way); several `text` fields are all counted.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // A schema only: [`post_text`] parses the body.
pub struct PostForm {
    text: String,
}

#[cfg(test)]
use serde_json::{Value, json};

use super::error::ApiError;
use crate::words::Tokenizer;

/// At most this many `word=` parameters in one lookup, so one request's cost is bounded.
pub const MAX_WORDS_PER_QUERY: usize = 1024;

/// Reads a header as text, if present.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Reads a required numeric header.
pub fn header_u64(headers: &HeaderMap, name: &HeaderName) -> Result<Option<u64>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("header {name} must be an integer"))),
    }
}

/// One decoded `key=value` of a form or query string.
pub type FormPair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// Decodes `application/x-www-form-urlencoded` strictly: `+` is a space, `%XX` escapes
/// are decoded, and anything that is not UTF-8 is an error rather than being silently
/// replaced (which would count words the client never sent).
pub fn form_pairs(
    raw: &[u8],
) -> Result<impl Iterator<Item = Result<FormPair<'_>, ApiError>>, ApiError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| ApiError::bad_request("form data is not valid UTF-8"))?;
    Ok(query_pairs(text))
}

/// The pairs of a query string (or of form data already known to be UTF-8), decoded
/// lazily; unescaped values are borrowed.
pub fn query_pairs(raw: &str) -> impl Iterator<Item = Result<FormPair<'_>, ApiError>> {
    raw.split('&').filter(|p| !p.is_empty()).map(|part| {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        Ok((decode_component(k)?, decode_component(v)?))
    })
}

fn decode_component(raw: &str) -> Result<Cow<'_, str>, ApiError> {
    if !raw.bytes().any(|b| b == b'+' || b == b'%') {
        return Ok(Cow::Borrowed(raw));
    }
    let plus: Vec<u8> = raw
        .bytes()
        .map(|b| if b == b'+' { b' ' } else { b })
        .collect();
    let decoded: Vec<u8> = percent_encoding::percent_decode(&plus).collect();
    String::from_utf8(decoded)
        .map(Cow::Owned)
        .map_err(|_| ApiError::bad_request("form or query data is not valid UTF-8 once decoded"))
}

/// The text of a `POST /post` request as the handler receives it (the body, or why
/// it could not be read): refusals say that nothing was applied.
pub fn post_request(
    headers: &HeaderMap,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<String, ApiError> {
    let no = |e: ApiError| e.applied(crate::server::error::Applied::No);
    let body = body.map_err(|e| no(ApiError::from(e)))?;
    post_text(headers, &body).map_err(no)
}

/// Reads a JSON body as JSON Schema reads numbers: `5.0` is the integer 5 (a number
/// with no fraction is an integer there), so a body the OpenAPI document calls valid
/// is not refused for writing an integer field that way. Other numbers are left alone
/// (and a field that wants an integer refuses them).
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> serde_json::Result<T> {
    fn integral(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 && f >= 0.0 && f < u64::MAX as f64 {
                    *v = serde_json::Value::from(f as u64);
                } else if f.fract() == 0.0 && f < 0.0 && f >= i64::MIN as f64 {
                    *v = serde_json::Value::from(f as i64);
                }
            }
            serde_json::Value::Array(xs) => xs.iter_mut().for_each(integral),
            serde_json::Value::Object(m) => m.values_mut().for_each(integral),
            _ => {}
        }
    }
    // Straight into `T` first: a push to a replica is a large body on the hot path, and
    // almost every body has no such number. Only a body refused that way is read again
    // through a `Value`; if it is refused then too, the first error is the answer.
    let direct = serde_json::from_slice(body);
    if direct.is_ok() {
        return direct;
    }
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return direct;
    };
    integral(&mut v);
    serde_json::from_value(v).or(direct)
}

/// Extracts the text of a `POST /post`: the `text` field of a form (the Go clients'
/// way; several `text` fields are all counted), a raw `text/plain` body, or a JSON
/// object `{"text": "..."}`.
pub fn post_text(headers: &HeaderMap, body: &[u8]) -> Result<String, ApiError> {
    let ctype = header_str(headers, &header::CONTENT_TYPE)
        .unwrap_or("application/x-www-form-urlencoded")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty: send the text as text/plain, as JSON {\"text\": ...} \
             or in the form field text (curl --data-binary @FILE sends nothing when FILE \
             cannot be read)",
        ));
    }
    let text = match ctype.as_str() {
        "application/x-www-form-urlencoded" | "" => {
            let mut texts = Vec::new();
            for pair in form_pairs(body)? {
                let (k, v) = pair?;
                if k == "text" {
                    texts.push(v.into_owned());
                }
            }
            if texts.is_empty() {
                return Err(ApiError::bad_request("missing form field \"text\""));
            }
            texts.join("\n")
        }
        "text/plain" => String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("request body is not valid UTF-8"))?,
        "application/json" => {
            #[derive(serde::Deserialize)]
            struct Post {
                text: String,
            }
            json_body::<Post>(body)
                .map_err(|e| {
                    ApiError::bad_request(format!("expected a JSON object {{\"text\": ...}}: {e}"))
                })?
                .text
        }
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported content type {other:?}: send application/x-www-form-urlencoded \
                     (field text), text/plain or application/json"
                ),
            ));
        }
    };
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("text is empty"));
    }
    Ok(text)
}

/// The parsed query of a lookup: the words as the client wrote them, and `min_seq`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WordQuery<'a> {
    pub words: Vec<Cow<'a, str>>,
    pub min_seq: Option<u64>,
}

/// Refuses a query parameter given twice (which of the two would be meant?).
fn once(seen: &mut bool, name: &str) -> Result<(), ApiError> {
    if std::mem::replace(seen, true) {
        return Err(ApiError::bad_request(format!(
            "query parameter {name:?} is given more than once"
        )));
    }
    Ok(())
}

/// Parses `word=a&word=b[&min_seq=N]`. Borrows from the query unless a value had
/// escapes.
pub fn word_query(raw: Option<&str>) -> Result<WordQuery<'_>, ApiError> {
    let mut q = WordQuery::default();
    let mut seen_min_seq = false;
    for pair in query_pairs(raw.unwrap_or("")) {
        let (k, v) = pair?;
        if k == "min_seq" {
            once(&mut seen_min_seq, &k)?;
        }
        match k.as_ref() {
            "word" => {
                if v.is_empty() {
                    return Err(ApiError::bad_request("query parameter \"word\" is empty"));
                }
                if q.words.len() == MAX_WORDS_PER_QUERY {
                    return Err(ApiError::bad_request(format!(
                        "at most {MAX_WORDS_PER_QUERY} words per request"
                    )));
                }
                q.words.push(v);
            }
            "min_seq" => {
                q.min_seq = Some(v.parse().map_err(|_| {
                    ApiError::bad_request("query parameter \"min_seq\" must be an integer")
                })?)
            }
            _ => {}
        }
    }
    if q.words.is_empty() {
        return Err(ApiError::bad_request(
            "missing query parameter \"word\" (e.g. /wordcount?word=hello)",
        ));
    }
    Ok(q)
}

/// Answers a lookup: the JSON object `{"<word as asked>": count, ...}`, written
/// directly (no intermediate map). `count` sees the normalised word. A word asked twice
/// appears once.
pub fn lookup_body<W: AsRef<str>>(
    tokenizer: Tokenizer,
    words: &[W],
    mut count: impl FnMut(&str) -> u64,
) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(2 + words.len() * 24);
    out.push(b'{');
    let mut num = itoa::Buffer::new();
    // A word asked twice is answered once. Small requests: a scan beats hashing.
    let mut seen: foldhash::HashSet<&str> = Default::default();
    for (i, w) in words.iter().enumerate() {
        let w = w.as_ref();
        let repeated = if words.len() <= 8 {
            words[..i].iter().any(|p| p.as_ref() == w)
        } else {
            !seen.insert(w)
        };
        if repeated {
            continue;
        }
        let norm = tokenizer.normalize(w).map_err(|e| {
            ApiError::bad_request(format!("word {w:?}: {e} (tokenizer {tokenizer})"))
        })?;
        if out.len() > 1 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, w).expect("writing a string to a Vec cannot fail");
        out.push(b':');
        out.extend_from_slice(num.format(count(&norm)).as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

/// The parsed query of `GET /top`.
#[derive(Debug, PartialEq, Eq)]
pub struct TopQuery<'a> {
    pub n: usize,
    /// As the client wrote it (normalise with [`TopQuery::prefix_for`]).
    pub prefix: Cow<'a, str>,
    pub min_seq: Option<u64>,
}

/// The longest `prefix=` taken, in characters (as JSON Schema's `maxLength` counts).
pub const MAX_PREFIX: usize = 1024;

impl TopQuery<'_> {
    /// The query, owning its prefix (to cross into a blocking task).
    pub fn into_owned(self) -> TopQuery<'static> {
        TopQuery {
            n: self.n,
            prefix: Cow::Owned(self.prefix.into_owned()),
            min_seq: self.min_seq,
        }
    }

    /// The prefix as the tokenizer would have written it in the table: lowercased by
    /// the Unicode tokenizer, unchanged by the whitespace one.
    pub fn prefix_for(&self, tokenizer: Tokenizer) -> Cow<'_, str> {
        tokenizer.normalize_prefix(&self.prefix)
    }
}

/// Parses `n=K&prefix=P&min_seq=N` (all optional).
pub fn top_query(raw: Option<&str>) -> Result<TopQuery<'_>, ApiError> {
    use crate::storage::top::{DEFAULT_TOP, MAX_TOP};
    let mut q = TopQuery {
        n: DEFAULT_TOP,
        prefix: Cow::Borrowed(""),
        min_seq: None,
    };
    let mut seen = [false; 3];
    for pair in query_pairs(raw.unwrap_or("")) {
        let (k, v) = pair?;
        if let Some(i) = ["n", "prefix", "min_seq"].iter().position(|p| *p == k) {
            once(&mut seen[i], &k)?;
        }
        match k.as_ref() {
            "n" => {
                q.n = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_TOP).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "query parameter \"n\" must be an integer from 1 to {MAX_TOP}"
                        ))
                    })?
            }
            "prefix" => {
                if v.chars().count() > MAX_PREFIX {
                    return Err(ApiError::bad_request(format!(
                        "query parameter \"prefix\" is over {MAX_PREFIX} characters"
                    )));
                }
                if v.contains(char::is_whitespace) {
                    return Err(ApiError::bad_request(
                        "query parameter \"prefix\" holds white space, which no word does",
                    ));
                }
                q.prefix = v;
            }
            "min_seq" => {
                q.min_seq = Some(v.parse().map_err(|_| {
                    ApiError::bad_request("query parameter \"min_seq\" must be an integer")
                })?)
            }
            _ => {}
        }
    }
    Ok(q)
}

/// Answers `GET /top`: `[{"word": "the", "count": 12}, ...]`, written directly.
pub fn top_body(entries: &[(&str, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + entries.iter().map(|(w, _)| w.len() + 32).sum::<usize>());
    out.push(b'[');
    let mut num = itoa::Buffer::new();
    for (i, (word, count)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"word\":");
        serde_json::to_writer(&mut out, word).expect("writing a string to a Vec cannot fail");
        out.extend_from_slice(b",\"count\":");
        out.extend_from_slice(num.format(*count).as_bytes());
        out.push(b'}');
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_read_integral_numbers_as_integers_as_json_schema_does() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct B {
            seq: Option<u64>,
            ids: Vec<u64>,
            delta: i64,
        }
        let b: B = json_body(br#"{"seq": 1314.0, "ids": [1, 2.0], "delta": -3.0}"#).unwrap();
        assert_eq!(
            b,
            B {
                seq: Some(1314),
                ids: vec![1, 2],
                delta: -3
            }
        );
        assert!(json_body::<B>(br#"{"seq": 1.5, "ids": [], "delta": 0}"#).is_err());
        assert!(json_body::<B>(br#"{"seq": 1e30, "ids": [], "delta": 0}"#).is_err());
        assert!(json_body::<B>(b"not json").is_err());
    }

    #[test]
    fn top_queries_are_checked_and_answered_as_a_json_array() {
        let q = top_query(None).unwrap();
        assert_eq!((q.n, q.prefix.as_ref(), q.min_seq), (10, "", None));
        let q = top_query(Some("n=3&prefix=H%C3%89l&min_seq=7&x=1")).unwrap();
        assert_eq!((q.n, q.prefix.as_ref(), q.min_seq), (3, "HÉl", Some(7)));
        assert_eq!(q.prefix_for(Tokenizer::Unicode), "hél");
        assert_eq!(q.prefix_for(Tokenizer::Whitespace), "HÉl");
        for bad in [
            "n=0",
            "n=10001",
            "n=-1",
            "n=x",
            "min_seq=y",
            "prefix=%FF",
            "n=3&n=4",
            "prefix=a&prefix=b",
            "min_seq=1&min_seq=2",
            "prefix=a%20b",
            "prefix=a+b",
            "prefix=%E3%80%80",
        ] {
            let e = top_query(Some(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(word_query(Some("word=a&min_seq=1&min_seq=2")).is_err());
        assert_eq!(word_query(Some("word=a&word=b")).unwrap().words.len(), 2);
        let long = format!("prefix={}", "a".repeat(MAX_PREFIX + 1));
        assert!(top_query(Some(&long)).is_err());
        let body = top_body(&[("the", 5), ("\"q\"", 1)]);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!([{"word": "the", "count": 5}, {"word": "\"q\"", "count": 1}])
        );
        assert_eq!(top_body(&[]), b"[]");
    }

    #[test]
    fn form_decoding_is_strict() {
        let p: Vec<FormPair> = form_pairs(b"text=hello+w%C3%B6rld&x&text=%2B")
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(p[0], ("text".into(), "hello wörld".into()));
        assert_eq!(p[1], ("x".into(), "".into()));
        assert_eq!(p[2], ("text".into(), "+".into()));
        assert!(form_pairs(b"text=%FF").unwrap().any(|p| p.is_err()));
        assert!(form_pairs(b"text=\xff").is_err());
    }

    fn hdrs(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        h
    }

    #[test]
    fn post_text_accepts_form_plain_and_json() {
        let form = hdrs("application/x-www-form-urlencoded; charset=utf-8");
        assert_eq!(post_text(&form, b"text=a+b").unwrap(), "a b");
        assert_eq!(post_text(&form, b"text=a&text=b").unwrap(), "a\nb");
        assert_eq!(post_text(&HeaderMap::new(), b"text=a").unwrap(), "a");
        assert_eq!(post_text(&hdrs("text/plain"), b"a b").unwrap(), "a b");
        assert_eq!(
            post_text(&hdrs("application/json"), br#"{"text":"x y"}"#).unwrap(),
            "x y"
        );
    }

    #[test]
    fn post_text_errors() {
        let form = hdrs("application/x-www-form-urlencoded");
        assert_eq!(post_text(&form, b"other=1").unwrap_err().status, 400);
        assert_eq!(post_text(&form, b"text=").unwrap_err().status, 400);
        assert_eq!(post_text(&form, b"text=+++").unwrap_err().status, 400);
        assert_eq!(
            post_text(&hdrs("text/plain"), b"\xff\xfe")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            post_text(&hdrs("application/json"), b"[1]")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(post_text(&hdrs("image/png"), b"x").unwrap_err().status, 415);
    }

    #[test]
    fn word_queries() {
        let q = word_query(Some("word=a&word=B&min_seq=7")).unwrap();
        assert_eq!(q.words, ["a", "B"]);
        assert_eq!(q.min_seq, Some(7));
        assert!(word_query(None).is_err());
        assert!(word_query(Some("word=")).is_err());
        assert!(word_query(Some("word=a&min_seq=x")).is_err());
        let many = vec!["word=a"; MAX_WORDS_PER_QUERY + 1].join("&");
        assert!(word_query(Some(&many)).is_err());
        let q = word_query(Some("word=plain&word=esc%41")).unwrap();
        assert!(matches!(q.words[0], Cow::Borrowed("plain")));
        assert_eq!(q.words[1], "escA");
    }

    #[test]
    fn lookups_normalise_but_answer_with_the_asked_spelling() {
        let body = lookup_body(
            Tokenizer::Unicode,
            &["Hello", "wörld", "Hello", "a\"b"],
            |w| match w {
                "hello" => 3,
                "wörld" => 1,
                _ => panic!("unexpected {w}"),
            },
        );
        assert!(body.is_err(), "a\"b is two words");
        let body = lookup_body(Tokenizer::Unicode, &["Hello", "wörld", "Hello"], |w| {
            if w == "hello" { 3 } else { 1 }
        })
        .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, json!({"Hello": 3, "wörld": 1}));
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"Hello":3,"wörld":1}"#
        );
        let body = lookup_body(Tokenizer::Whitespace, &["a\"b"], |_| 7).unwrap();
        assert_eq!(std::str::from_utf8(&body).unwrap(), r#"{"a\"b":7}"#);
        assert!(lookup_body(Tokenizer::Unicode, &["a b"], |_| 0).is_err());
    }
}

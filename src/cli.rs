//! `memdb top`, `memdb count` and `memdb status`: small clients for people, against any
//! node. Tables for a terminal, `--json` for scripts. A client only: what they print
//! is rendered here from the node's JSON routes, so it is tested without a terminal.

use serde_json::Value;

use crate::client::{Client, ClientError, TopReply};

/// The node a command talks to when neither `--url` nor `MEMDB_URL` names one: the
/// leader of the local cluster `make start-servers…` starts.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// `memdb top`: the answer as a table.
pub fn top_table(url: &str, reply: &TopReply) -> String {
    let width = reply
        .words
        .iter()
        .map(|w| w.word.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!("{:>5}  {:<width$}  {:>12}\n", "rank", "word", "count");
    for (i, w) in reply.words.iter().enumerate() {
        out.push_str(&format!(
            "{:>5}  {:<width$}  {:>12}\n",
            i + 1,
            w.word,
            w.count
        ));
    }
    if reply.words.is_empty() {
        out.push_str("(no words)\n");
    }
    out.push_str(&at(url, reply.seq));
    out
}

/// `memdb count`: the counts as a table, in the order asked.
pub fn count_table(url: &str, words: &[String], counts: &Value, seq: Option<u64>) -> String {
    let width = words
        .iter()
        .map(|w| w.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!("{:<width$}  {:>12}\n", "word", "count");
    for w in words {
        let n = counts.get(w).and_then(Value::as_u64).unwrap_or(0);
        out.push_str(&format!("{w:<width$}  {n:>12}\n"));
    }
    out.push_str(&at(url, seq));
    out
}

fn at(url: &str, seq: Option<u64>) -> String {
    match seq {
        Some(s) => format!("at seq {s} on {url}\n"),
        None => format!("on {url}\n"),
    }
}

/// `memdb status`: a node's `/health`, for people.
pub fn status_text(url: &str, h: &Value) -> String {
    let s = |k: &str| match &h[k] {
        Value::Null => "-".to_owned(),
        Value::String(v) => v.clone(),
        v => v.to_string(),
    };
    let mut out = format!(
        "{url}: {} {} (pid {}), seq {}, {} words, up {}\n",
        s("role"),
        s("status"),
        s("pid"),
        s("seq"),
        s("words"),
        uptime(h["uptime_s"].as_u64()),
    );
    for key in ["problems"] {
        for p in h[key].as_array().into_iter().flatten() {
            out.push_str(&format!("  problem: {}\n", p.as_str().unwrap_or_default()));
        }
    }
    if let Some(p) = h["problem"].as_str() {
        out.push_str(&format!("  problem: {p}\n"));
    }
    if let Some(inc) = h["incarnation"].as_str() {
        out.push_str(&format!(
            "  incarnation {inc}, tokenizer {}\n",
            s("tokenizer")
        ));
    }
    if let Some(l) = h["leader"].as_str() {
        out.push_str(&format!("  follows {l}\n"));
    }
    let t = &h["tls"];
    if t.is_object() {
        out.push_str(&format!(
            "  tls: {} (issued by {}), expires {}{}\n",
            t["subject"].as_str().unwrap_or("?"),
            t["issuer"].as_str().unwrap_or("?"),
            t["not_after"].as_str().unwrap_or("?"),
            if t["client_certificates_required"] == true {
                ", client certificates required on replication routes"
            } else {
                ""
            }
        ));
        if let Some(e) = t["last_reload"]["error"].as_str() {
            out.push_str(&format!("  tls: last reload refused: {e}\n"));
        }
    }
    let r = &h["raft"];
    if r.is_object() {
        out.push_str(&format!(
            "  raft: node {} is {} in term {}, leader {} ({}), commit {}, applied {}\n",
            r["node_id"],
            r["state"].as_str().unwrap_or("?"),
            r["term"],
            r["leader_id"],
            r["leader_url"].as_str().unwrap_or("none"),
            r["commit_index"],
            r["applied_index"],
        ));
        for m in r["members"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "    member {} {} {} matched {} lag {}\n",
                m["id"],
                m["url"].as_str().unwrap_or("?"),
                if m["voter"].as_bool() == Some(true) {
                    "voter"
                } else {
                    "learner"
                },
                m["matched"],
                m["lag"],
            ));
        }
    }
    if let Some(replicas) = h["replicas"].as_array() {
        if replicas.is_empty() {
            out.push_str("  no network replicas\n");
        }
        for rep in replicas {
            out.push_str(&format!(
                "  replica {} {}: acked seq {}, lag {} batches / {} ms{}\n",
                rep["url"].as_str().unwrap_or("?"),
                rep["status"].as_str().unwrap_or("?"),
                rep["acked_seq"],
                rep["lag"],
                rep["lag_ms"],
                rep["last_error"]
                    .as_str()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default(),
            ));
        }
    }
    if let Some(locals) = h["local_replicas"].as_array() {
        if locals.is_empty() {
            out.push_str("  no local replicas or readers\n");
        }
        for l in locals {
            let num = |k: &str| l[k].as_u64().map_or("-".to_owned(), |v| v.to_string());
            out.push_str(&format!(
                "  {} {} (pid {}): mapped seq {}, lag {} seqs / {} ms{}\n",
                l["kind"].as_str().unwrap_or("?"),
                l["url"].as_str().unwrap_or("-"),
                num("pid"),
                num("seq"),
                num("lag"),
                num("lag_ms"),
                l["problem"]
                    .as_str()
                    .or(l["last_error"].as_str())
                    .map(|e| format!(", {e}"))
                    .unwrap_or_default(),
            ));
        }
    }
    let snap = &h["snapshot"];
    if snap.is_object() {
        out.push_str(&format!(
            "  snapshot: published seq {}, base {} words, delta {} words\n",
            snap["seq"], snap["base_words"], snap["delta_words"]
        ));
    }
    if let Some(age) = h["snapshot_age_ms"].as_u64() {
        out.push_str(&format!(
            "  mapped snapshot: base seq {}, delta {} words, {} ms old\n",
            s("base_seq"),
            s("delta_words"),
            age
        ));
    }
    out
}

fn uptime(s: Option<u64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m", s / 60),
        Some(s) => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

/// `GET /health`, whatever its status: a failing node still answers it.
pub async fn health(client: &Client) -> Result<Value, ClientError> {
    client.health().await.map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::TopWord;
    use serde_json::json;

    #[test]
    fn tables_for_people() {
        let reply = TopReply {
            seq: Some(7),
            words: vec![
                TopWord {
                    word: "the".into(),
                    count: 12,
                },
                TopWord {
                    word: "straße".into(),
                    count: 3,
                },
            ],
        };
        let t = top_table("http://x", &reply);
        assert_eq!(
            t.lines().collect::<Vec<_>>(),
            [
                " rank  word           count",
                "    1  the               12",
                "    2  straße             3",
                "at seq 7 on http://x",
            ]
        );
        let t = count_table(
            "http://x",
            &["b".into(), "a".into()],
            &json!({"a": 2, "b": 0}),
            Some(3),
        );
        assert!(
            t.contains("b                0\na                2\n"),
            "{t}"
        );
        let h = json!({"role": "leader", "status": "ok", "pid": 5, "seq": 9, "words": 2,
            "uptime_s": 4000, "problems": ["disk full"], "incarnation": "00ff",
            "tokenizer": "unicode", "raft": null,
            "replicas": [{"url": "http://r", "status": "ok", "acked_seq": 8, "lag": 1,
                          "lag_ms": 3, "last_error": "refused"}],
            "local_replicas": [
                {"kind": "local-replica", "url": "http://l", "pid": 77, "seq": 9, "lag": 0,
                 "lag_ms": 0, "problem": null},
                {"kind": "reader", "url": null, "pid": 78, "seq": 5, "lag": 4,
                 "lag_ms": 1500, "problem": null, "last_error": "checksum"}],
            "snapshot": {"seq": 9, "base_words": 2, "delta_words": 0}});
        let t = status_text("http://x", &h);
        assert!(
            t.starts_with("http://x: leader ok (pid 5), seq 9, 2 words, up 66m\n"),
            "{t}"
        );
        assert!(t.contains("problem: disk full"), "{t}");
        assert!(
            t.contains(
                "replica http://r ok: acked seq 8, lag 1 batches / 3 ms, last error: refused"
            ),
            "{t}"
        );
        assert!(
            t.contains("local-replica http://l (pid 77): mapped seq 9, lag 0 seqs / 0 ms\n"),
            "{t}"
        );
        assert!(
            t.contains("reader - (pid 78): mapped seq 5, lag 4 seqs / 1500 ms, checksum\n"),
            "{t}"
        );
        assert!(!t.contains("tls"), "{t}");
        let h = json!({"role": "replica", "tls": {"subject": "CN=db2", "issuer": "CN=ca",
            "not_after": "2027-01-01T00:00:00Z", "client_certificates_required": true,
            "last_reload": {"ok": false, "error": "bad key"}}});
        let t = status_text("https://x", &h);
        assert!(
            t.contains("tls: CN=db2 (issued by CN=ca), expires 2027-01-01T00:00:00Z, client"),
            "{t}"
        );
        assert!(t.contains("tls: last reload refused: bad key"), "{t}");
    }
}

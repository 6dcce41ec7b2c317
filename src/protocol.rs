//! What both ends of memdb's protocols share: the HTTP header names of replication,
//! the text form of an incarnation id, and the lines of the leader's notification
//! socket. Servers and clients both import from here; neither imports the other.

use axum::http::{HeaderName, HeaderValue};

/// Every response from a node carries the seq its table reflects.
pub const SEQ: HeaderName = HeaderName::from_static("x-memdb-seq");
/// The leader's incarnation id (16 hex digits) on `/sync` replies and `/update` requests.
pub const INCARNATION: HeaderName = HeaderName::from_static("x-memdb-incarnation");
/// The tokenizer the data was counted with, on `/sync` replies and `/update` requests.
pub const TOKENIZER: HeaderName = HeaderName::from_static("x-memdb-tokenizer");
/// `/update`: the seq the replica must be at for the deltas to apply...
pub const FROM_SEQ: HeaderName = HeaderName::from_static("x-memdb-from-seq");
/// ...and the seq it is at afterwards.
pub const TO_SEQ: HeaderName = HeaderName::from_static("x-memdb-to-seq");
/// `/update`: the leader cannot resend what the replica missed; full-sync now.
pub const RESYNC: HeaderName = HeaderName::from_static("x-memdb-resync");
/// `/update`: the leader's table digest at `x-memdb-to-seq` (16 hex digits); a replica
/// whose own differs after applying has diverged and full-syncs.
pub const DIGEST: HeaderName = HeaderName::from_static("x-memdb-digest");
/// `/update`: the secret of the leader's incarnation, which replicas learn when they
/// register; a push that claims the incarnation without it was not sent by the leader.
pub const PUSH_SECRET: HeaderName = HeaderName::from_static("x-memdb-push-secret");

/// A header value for a seq.
pub fn seq_value(seq: u64) -> HeaderValue {
    HeaderValue::from(seq)
}

pub fn incarnation_string(inc: u64) -> String {
    format!("{inc:016x}")
}

pub fn parse_incarnation(s: &str) -> Option<u64> {
    if s.len() == 16 {
        u64::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

/// The leader's notification socket's name inside its data directory.
pub const SOCKET_NAME: &str = "memdb.sock";

/// A line on the leader's notification socket: `<verb> <seq>` (`seq N` from the leader
/// after a publish, `want N` from a replica waiting for N).
pub fn socket_line(verb: &str, seq: u64) -> String {
    format!("{verb} {seq}\n")
}

/// Parses a socket line `<verb> <seq>` (without its newline).
pub fn parse_socket_line(line: &str, verb: &str) -> Option<u64> {
    line.trim()
        .strip_prefix(verb)?
        .strip_prefix(' ')?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_lines_round_trip() {
        assert_eq!(
            parse_socket_line(socket_line("seq", 12).trim_end(), "seq"),
            Some(12)
        );
        assert_eq!(parse_socket_line("seq 12\n", "seq"), Some(12));
        assert_eq!(parse_socket_line("want 3", "want"), Some(3));
        assert_eq!(parse_socket_line("want x", "want"), None);
        assert_eq!(parse_socket_line("wanted 3", "want"), None);
        assert_eq!(parse_socket_line("seq", "seq"), None);
    }

    #[test]
    fn incarnations_format_and_parse() {
        assert_eq!(incarnation_string(255), "00000000000000ff");
        assert_eq!(parse_incarnation("00000000000000ff"), Some(255));
        assert_eq!(parse_incarnation("ff"), None);
    }
}

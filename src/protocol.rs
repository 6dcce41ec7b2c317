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
/// On `GET /sync`: about how many words the body holds (a reader's capacity hint).
pub const WORDS: HeaderName = HeaderName::from_static("x-memdb-words");
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
/// A write's idempotency key (a raft group counts a retried write once).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// A header value for a seq.
pub fn seq_value(seq: u64) -> HeaderValue {
    HeaderValue::from(seq)
}

/// One leader process's id: every process starts a new *incarnation* (see
/// [`crate::storage::history`]), named by a random non-zero 64-bit number, written as
/// 16 lowercase hex digits wherever it crosses a wire or a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Incarnation(u64);

impl Incarnation {
    /// A new random incarnation (never zero, which older files use for "none").
    pub fn random() -> Self {
        loop {
            let i: u64 = rand::random();
            if i != 0 {
                return Incarnation(i);
            }
        }
    }

    /// From its binary form in a snapshot header; zero means none.
    pub const fn from_raw(raw: u64) -> Option<Self> {
        if raw == 0 {
            None
        } else {
            Some(Incarnation(raw))
        }
    }

    /// Its binary form for a snapshot header.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// As a header value.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_str(&self.to_string()).expect("hex digits are a valid header value")
    }
}

impl std::fmt::Display for Incarnation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// An incarnation that is not 16 hex digits naming a non-zero number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an incarnation is 16 hex digits, not zero; got {0:?}")]
pub struct BadIncarnation(String);

impl std::str::FromStr for Incarnation {
    type Err = BadIncarnation;
    fn from_str(s: &str) -> Result<Self, BadIncarnation> {
        let bad = || BadIncarnation(s.chars().take(40).collect());
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let raw = u64::from_str_radix(s, 16).map_err(|_| bad())?;
        Incarnation::from_raw(raw).ok_or_else(bad)
    }
}

impl serde::Serialize for Incarnation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Incarnation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The longest `Idempotency-Key` taken (1 to this many visible ASCII characters).
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

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
    fn incarnations_format_parse_and_serialise_as_hex() {
        let i = Incarnation::from_raw(255).unwrap();
        assert_eq!(i.to_string(), "00000000000000ff");
        assert_eq!("00000000000000ff".parse(), Ok(i));
        assert_eq!("00000000000000FF".parse(), Ok(i));
        for bad in [
            "ff",
            "0000000000000000",
            "+00000000000000f",
            "000000000000000g",
            "",
        ] {
            assert!(bad.parse::<Incarnation>().is_err(), "{bad:?}");
        }
        assert_eq!(Incarnation::from_raw(0), None);
        assert_eq!(serde_json::to_string(&i).unwrap(), "\"00000000000000ff\"");
        assert_eq!(
            serde_json::from_str::<Incarnation>("\"00000000000000ff\"").unwrap(),
            i
        );
        assert!(serde_json::from_str::<Incarnation>("255").is_err());
        assert_ne!(Incarnation::random(), Incarnation::random());
    }
}

/// `GET /files` on a leader: the files its table is made of at one seq, which a
/// joining network replica downloads as they are (`GET /files/{name}`) and maps.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Manifest {
    /// The seq the files are at (the newest file's).
    pub seq: u64,
    /// The leader's incarnation, whose history the files are a prefix of.
    #[schema(value_type = String, example = "3f2a9c0d11e5b7a4")]
    pub incarnation: Incarnation,
    #[schema(value_type = String, example = "unicode")]
    pub tokenizer: crate::words::Tokenizer,
    /// The digest of the table the files make, 16 hex digits.
    pub digest: String,
    /// Distinct words in that table.
    pub words: u64,
    /// The base first, then the delta on it, then the recent deltas oldest first.
    pub files: Vec<ManifestFile>,
}

/// One file of a [`Manifest`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ManifestFile {
    /// The name to fetch it by and to store it under.
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
    /// Its checksum, 16 hex digits: the `ETag` it is served with, quoted.
    pub checksum: String,
}

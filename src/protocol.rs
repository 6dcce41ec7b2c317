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

/// The notification socket's protocol this build speaks. A leader of protocol 2 or
/// later says `proto N` first on every connection; a peer sends the lines of protocol
/// 2 (`hello`, `loaded`, `failed`) only to a leader that said so, so old peers and old
/// leaders keep working with new ones (protocol 1 is `seq N` and `want N` alone).
pub const SOCKET_PROTOCOL: u64 = 2;

/// The longest line either side sends under protocol 2 (a leader of protocol 1 cuts a
/// peer off after 64 bytes: it is never sent a longer one).
pub const MAX_SOCKET_LINE: usize = 512;

/// What a peer of the notification socket is, as it says in its `hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PeerKind {
    /// `memdb local-replica`: serves HTTP reads; a lagging one is a problem.
    LocalReplica,
    /// An embedded reader in an application: listed, never a problem (it may refresh
    /// by hand, or pause).
    Reader,
}

impl PeerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerKind::LocalReplica => "local-replica",
            PeerKind::Reader => "reader",
        }
    }
}

/// A line a peer sends the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerLine {
    /// `want N`: publish seq N now rather than at the interval (protocol 1).
    Want(u64),
    /// `hello <kind> <version> <url or ->`: who it is (sent again if its URL changes).
    Hello {
        kind: PeerKind,
        version: String,
        url: Option<String>,
    },
    /// `loaded <seq> <micros>`: it mapped `seq`, and the load took this long.
    Loaded { seq: u64, micros: u64 },
    /// `failed <reason>`: a load failed; it serves the state before.
    Failed(String),
}

impl PeerLine {
    /// The line, newline included, at most [`MAX_SOCKET_LINE`] bytes (a long reason is
    /// cut at a character boundary; line breaks in it become spaces).
    pub fn to_line(&self) -> String {
        let mut line = match self {
            PeerLine::Want(n) => format!("want {n}"),
            PeerLine::Hello { kind, version, url } => format!(
                "hello {} {} {}",
                kind.as_str(),
                token(version),
                url.as_deref().map_or("-".to_owned(), token)
            ),
            PeerLine::Loaded { seq, micros } => format!("loaded {seq} {micros}"),
            PeerLine::Failed(why) => format!("failed {}", why.replace(['\n', '\r'], " ")),
        };
        let mut end = line.len().min(MAX_SOCKET_LINE - 1);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('\n');
        line
    }

    /// Parses a line (without its newline); what was wrong with it otherwise.
    pub fn parse(line: &str) -> Result<PeerLine, String> {
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        let number = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| format!("{verb}: {s:?} is not a number"))
        };
        match verb {
            "want" => Ok(PeerLine::Want(number(rest.trim())?)),
            "hello" => {
                let parts: Vec<&str> = rest.split(' ').collect();
                let [kind, version, url] = parts[..] else {
                    return Err("hello takes <kind> <version> <url or ->".to_owned());
                };
                let kind = match kind {
                    "local-replica" => PeerKind::LocalReplica,
                    "reader" => PeerKind::Reader,
                    other => return Err(format!("hello: unknown kind {other:?}")),
                };
                if version.is_empty() || url.is_empty() {
                    return Err("hello: an empty field".to_owned());
                }
                Ok(PeerLine::Hello {
                    kind,
                    version: version.to_owned(),
                    url: (url != "-").then(|| url.to_owned()),
                })
            }
            "loaded" => {
                let (seq, micros) = rest.split_once(' ').ok_or("loaded takes <seq> <micros>")?;
                Ok(PeerLine::Loaded {
                    seq: number(seq)?,
                    micros: number(micros)?,
                })
            }
            "failed" if !rest.trim().is_empty() => Ok(PeerLine::Failed(rest.trim().to_owned())),
            _ => Err(format!("unknown message {verb:?}")),
        }
    }
}

/// A field of a line: no spaces or control characters (each becomes `_`), at most 200
/// bytes.
fn token(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let mut end = out.len().min(200);
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_lines_round_trip_and_garbage_is_named() {
        let lines = [
            PeerLine::Want(7),
            PeerLine::Hello {
                kind: PeerKind::LocalReplica,
                version: "0.1.0".into(),
                url: Some("http://127.0.0.1:8082".into()),
            },
            PeerLine::Hello {
                kind: PeerKind::Reader,
                version: "0.1.0".into(),
                url: None,
            },
            PeerLine::Loaded {
                seq: 12,
                micros: 345,
            },
            PeerLine::Failed("checksum differs".into()),
        ];
        for l in lines {
            let text = l.to_line();
            assert!(text.ends_with('\n') && text.len() <= MAX_SOCKET_LINE);
            assert_eq!(PeerLine::parse(text.trim_end_matches('\n')), Ok(l));
        }
        // Whatever is sent stays one bounded line.
        let long = PeerLine::Failed(format!("a\nb{}", "é".repeat(1000))).to_line();
        assert!(long.len() <= MAX_SOCKET_LINE && long.matches('\n').count() == 1);
        let spaced = PeerLine::Hello {
            kind: PeerKind::Reader,
            version: "1 2".into(),
            url: Some("x y".into()),
        };
        assert_eq!(
            PeerLine::parse(spaced.to_line().trim_end()),
            Ok(PeerLine::Hello {
                kind: PeerKind::Reader,
                version: "1_2".into(),
                url: Some("x_y".into()),
            })
        );
        for bad in [
            "",
            "garbage",
            "want x",
            "hello replica 1 -",
            "hello reader 1",
            "loaded 1",
            "loaded x 2",
            "failed ",
            "seq 5",
        ] {
            assert!(PeerLine::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

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

//! Text → words. Pure functions, no I/O.
//!
//! Two tokenizers:
//! - [`Tokenizer::Unicode`] (default): Unicode word boundaries (UAX #29), lower-cased,
//!   so `Hello, HELLO! hello.` is `hello` three times and `héllo` is one word.
//! - [`Tokenizer::Whitespace`]: the Go original's rule, `strings.Fields`: split on Unicode
//!   white space, case kept, punctuation kept.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use unicode_segmentation::UnicodeSegmentation;

/// Deltas of one write: each distinct word once, with how often it occurred.
pub type Deltas = Vec<(String, u64)>;

/// How text is split into words. The leader's choice is recorded in its snapshots and
/// announced to replicas, which normalise queried words by the same rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Tokenizer {
    #[default]
    Unicode,
    Whitespace,
}

impl Tokenizer {
    /// The stable numeric code stored in snapshot headers.
    pub fn code(self) -> u32 {
        match self {
            Tokenizer::Unicode => 0,
            Tokenizer::Whitespace => 1,
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Tokenizer::Unicode),
            1 => Some(Tokenizer::Whitespace),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tokenizer::Unicode => "unicode",
            Tokenizer::Whitespace => "whitespace",
        }
    }

    /// Calls `f` with every word of `text`, normalised, in order.
    pub fn for_each_word<'a>(self, text: &'a str, mut f: impl FnMut(Cow<'a, str>)) {
        match self {
            Tokenizer::Unicode if text.is_ascii() => ascii_words(text, |w| f(lowercase(w))),
            Tokenizer::Unicode => text.unicode_words().for_each(|w| f(lowercase(w))),
            Tokenizer::Whitespace => text.split_whitespace().for_each(|w| f(Cow::Borrowed(w))),
        }
    }

    /// Counts the words of `text`: each distinct word once, and the total number of words.
    pub fn count(self, text: &str) -> (Deltas, u64) {
        // Sized for a text of mostly distinct words (capped: large texts repeat words),
        // so that the map does not rehash its way up while counting.
        let mut counts: foldhash::HashMap<Cow<'_, str>, u64> =
            foldhash::HashMap::with_capacity_and_hasher(
                (text.len() / 6).min(2048),
                Default::default(),
            );
        let mut total = 0u64;
        self.for_each_word(text, |w| {
            total += 1;
            *counts.entry(w).or_insert(0) += 1;
        });
        let deltas = counts
            .into_iter()
            .map(|(w, n)| (w.into_owned(), n))
            .collect();
        (deltas, total)
    }

    /// Normalises a prefix of words (`/top`'s `prefix`) as ingested text is: lower
    /// case under the Unicode tokenizer, as it is under the whitespace one.
    pub fn normalize_prefix(self, prefix: &str) -> Cow<'_, str> {
        match self {
            Tokenizer::Unicode if prefix.chars().any(char::is_uppercase) => {
                Cow::Owned(prefix.to_lowercase())
            }
            _ => Cow::Borrowed(prefix),
        }
    }

    /// Normalises a queried word by the same rules as ingested text, so that a lookup of
    /// `Hello` finds the count of `hello` under the Unicode tokenizer.
    pub fn normalize(self, word: &str) -> Result<Cow<'_, str>, NormalizeError> {
        if word.is_empty() {
            return Err(NormalizeError::Empty);
        }
        // Fast path: ASCII letters and digits are always one UAX #29 word (WB5, WB8-WB10),
        // and most queries look like that.
        if self == Tokenizer::Unicode && word.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Ok(lowercase(word));
        }
        let mut found: Option<Cow<'_, str>> = None;
        let mut many = false;
        self.for_each_word(word, |w| {
            if found.is_some() {
                many = true;
            } else {
                found = Some(w);
            }
        });
        match (found, many) {
            (Some(w), false) => Ok(w),
            (Some(_), true) => Err(NormalizeError::SeveralWords),
            (None, _) => Err(NormalizeError::NoWord),
        }
    }
}

/// The word-boundary classes (UAX #29) that ASCII characters fall in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Numeric,
    /// `_` (ExtendNumLet)
    Connector,
    /// `:` (MidLetter): joins letters only
    MidLetter,
    /// `.` and `'` (MidNumLet, Single_Quote): join letters, and digits
    MidBoth,
    /// `,` and `;` (MidNum): join digits only
    MidNum,
    Other,
}

fn class(b: u8) -> Class {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' => Class::Letter,
        b'0'..=b'9' => Class::Numeric,
        b'_' => Class::Connector,
        b':' => Class::MidLetter,
        b'.' | b'\'' => Class::MidBoth,
        b',' | b';' => Class::MidNum,
        _ => Class::Other,
    }
}

/// UAX #29 words of an ASCII text, as `unicode_words` would find them, without its
/// general machinery (a test checks the two agree on random ASCII). Within ASCII the
/// rules reduce to: letters, digits and `_` join (WB5, WB8-WB10, WB13a/b); `:` `.` `'`
/// join two letters (WB6/7); `.` `'` `,` `;` join two digits (WB11/12); a segment
/// counts as a word if it holds a letter or digit.
fn ascii_words<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let first = class(b[i]);
        if !matches!(first, Class::Letter | Class::Numeric | Class::Connector) {
            i += 1;
            continue;
        }
        let start = i;
        let mut alnum = first != Class::Connector;
        let mut prev = first;
        i += 1;
        while i < b.len() {
            let c = class(b[i]);
            match c {
                Class::Letter | Class::Numeric | Class::Connector => {
                    alnum |= c != Class::Connector;
                    prev = c;
                    i += 1;
                }
                Class::MidLetter | Class::MidBoth | Class::MidNum => {
                    let next = b.get(i + 1).map(|&n| class(n));
                    let joins = matches!(
                        (prev, c, next),
                        (
                            Class::Letter,
                            Class::MidLetter | Class::MidBoth,
                            Some(Class::Letter)
                        ) | (
                            Class::Numeric,
                            Class::MidNum | Class::MidBoth,
                            Some(Class::Numeric)
                        )
                    );
                    if !joins {
                        break;
                    }
                    prev = next.expect("checked above");
                    i += 2;
                }
                Class::Other => break,
            }
        }
        if alnum {
            f(&text[start..i]);
        }
    }
}

fn lowercase(w: &str) -> Cow<'_, str> {
    if w.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        Cow::Borrowed(w)
    } else if w.is_ascii() {
        Cow::Owned(w.to_ascii_lowercase())
    } else if w.chars().any(|c| c.is_uppercase()) {
        Cow::Owned(w.to_lowercase())
    } else {
        Cow::Borrowed(w)
    }
}

/// Why a queried word could not be normalised to exactly one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    #[error("the word is empty")]
    Empty,
    #[error("the word contains no word characters under this tokenizer")]
    NoWord,
    #[error("the value holds several words; pass each as its own word= parameter")]
    SeveralWords,
}

impl fmt::Display for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Tokenizer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Tokenizer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for Tokenizer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unicode" => Ok(Tokenizer::Unicode),
            "whitespace" => Ok(Tokenizer::Whitespace),
            other => Err(format!(
                "unknown tokenizer {other:?}: expected unicode or whitespace"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(t: Tokenizer, s: &str) -> Vec<String> {
        let mut v = Vec::new();
        t.for_each_word(s, |w| v.push(w.into_owned()));
        v
    }

    fn sorted(mut d: Deltas) -> Deltas {
        d.sort();
        d
    }

    #[test]
    fn unicode_lowercases_and_strips_punctuation() {
        assert_eq!(
            words(Tokenizer::Unicode, "Hello, HELLO! hello."),
            ["hello", "hello", "hello"]
        );
        let (d, total) = Tokenizer::Unicode.count("Hello, HELLO! hello.");
        assert_eq!(total, 3);
        assert_eq!(d, vec![("hello".to_string(), 3)]);
    }

    #[test]
    fn unicode_keeps_accented_words_whole() {
        assert_eq!(words(Tokenizer::Unicode, "héllo Héllo"), ["héllo", "héllo"]);
        assert_eq!(
            words(Tokenizer::Unicode, "ÉCOLE straße"),
            ["école", "straße"]
        );
        assert_eq!(words(Tokenizer::Unicode, "don't stop"), ["don't", "stop"]);
        assert_eq!(words(Tokenizer::Unicode, "   \n\t "), Vec::<String>::new());
        assert_eq!(words(Tokenizer::Unicode, "v2 42"), ["v2", "42"]);
    }

    #[test]
    fn whitespace_mode_matches_go_strings_fields() {
        assert_eq!(
            words(Tokenizer::Whitespace, "Hello, HELLO!\u{a0}hello.\n\tgo"),
            ["Hello,", "HELLO!", "hello.", "go"]
        );
        let (d, total) = Tokenizer::Whitespace.count("a b a  A");
        assert_eq!(total, 4);
        assert_eq!(
            sorted(d),
            vec![("A".into(), 1), ("a".into(), 2), ("b".into(), 1)]
        );
    }

    #[test]
    fn normalize_follows_the_tokenizer() {
        let u = Tokenizer::Unicode;
        assert_eq!(u.normalize("Hello").unwrap(), "hello");
        assert_eq!(u.normalize("hello!").unwrap(), "hello");
        assert_eq!(u.normalize("HÉLLO").unwrap(), "héllo");
        assert_eq!(u.normalize(""), Err(NormalizeError::Empty));
        assert_eq!(u.normalize("!!!"), Err(NormalizeError::NoWord));
        assert_eq!(u.normalize("a b"), Err(NormalizeError::SeveralWords));
        let w = Tokenizer::Whitespace;
        assert_eq!(w.normalize("Hello!").unwrap(), "Hello!");
        assert_eq!(w.normalize(" "), Err(NormalizeError::NoWord));
        assert_eq!(w.normalize("a b"), Err(NormalizeError::SeveralWords));
    }

    #[test]
    fn the_ascii_fast_path_agrees_with_segmentation() {
        let samples = ["a", "Z", "hello", "HeLLo", "v2", "42", "x9Y8", "ABC123def"];
        for w in samples {
            let mut words = Vec::new();
            Tokenizer::Unicode.for_each_word(w, |x| words.push(x.into_owned()));
            assert_eq!(words.len(), 1, "{w}");
            assert_eq!(Tokenizer::Unicode.normalize(w).unwrap(), words[0], "{w}");
        }
    }

    #[test]
    fn the_ascii_tokenizer_agrees_with_unicode_segmentation() {
        use rand::{Rng, SeedableRng};
        let alphabet = b"aZq09_:.',;  \n\t-!?\"()/";
        let mut rng = rand::rngs::StdRng::seed_from_u64(29);
        let fixed = [
            "don't stop",
            "e.g. this",
            "3.14 and 1,000,000",
            "a:b",
            "a::b",
            "1.a",
            "a.1",
            "__",
            "_a_",
            "x_1",
            "a..b",
            "1,,2",
            "'quoted'",
            "end.",
            "9;8",
            "a;b",
            "1:2",
        ];
        let random = (0..20_000).map(|_| {
            let n = rng.random_range(0..24);
            (0..n)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
                .collect::<String>()
        });
        for t in fixed.iter().map(|s| s.to_string()).chain(random) {
            let mut fast = Vec::new();
            ascii_words(&t, |w| fast.push(w));
            let slow: Vec<&str> = t.unicode_words().collect();
            assert_eq!(fast, slow, "on {t:?}");
        }
    }

    #[test]
    fn codes_round_trip() {
        for t in [Tokenizer::Unicode, Tokenizer::Whitespace] {
            assert_eq!(Tokenizer::from_code(t.code()), Some(t));
            assert_eq!(t.as_str().parse::<Tokenizer>().unwrap(), t);
        }
        assert_eq!(Tokenizer::from_code(7), None);
        assert!("nope".parse::<Tokenizer>().is_err());
    }
}

//! A small, strict JSON reader that parses a message onto a reusable tape.
//!
//! Decoding is the hottest loop of the pipeline. A DOM such as `serde_json::Value` allocates
//! every key, every string and every map node; this reader records each value as one token on a
//! tape that is reused from message to message, so a steady stream of messages allocates nothing
//! here. Strings stay borrowed from the input and are unescaped only when asked.
//!
//! It accepts exactly RFC 8259 JSON (tested against `serde_json` on valid and broken input):
//! one value, optional surrounding whitespace, UTF-8 text, no control characters in strings,
//! valid escapes, JSON number grammar, nesting at most [`MAX_DEPTH`] deep.

use std::borrow::Cow;

/// Deepest nesting accepted; telemetry is shallow, and the bound keeps hostile input cheap.
pub const MAX_DEPTH: usize = 64;

/// Bytes that end a run of plain string characters: quote, backslash and controls.
const STRING_SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        table[c] = true;
        c += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Powers of ten that f64 holds exactly.
const EXACT_POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Parses a JSON number. Plain decimals of at most 15 digits take Clinger's fast path (an exact
/// integer divided by an exact power of ten is correctly rounded); anything else goes to the
/// standard library, so the result is always the correctly rounded value.
fn parse_number(raw: &str) -> Option<f64> {
    let bytes = raw.as_bytes();
    let (negative, digits) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        _ => (false, bytes),
    };
    let mut mantissa: u64 = 0;
    let mut count = 0;
    let mut fraction_digits = None;
    for (i, &c) in digits.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + (c - b'0') as u64;
                count += 1;
                if count > 15 {
                    return raw.parse().ok();
                }
            }
            b'.' => fraction_digits = Some(digits.len() - i - 1),
            _ => return raw.parse().ok(),
        }
    }
    let value = mantissa as f64 / EXACT_POWERS_OF_TEN[fraction_digits.unwrap_or(0)];
    Some(if negative { -value } else { value })
}

/// Why the input is not JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonError {
    /// Byte offset where reading stopped.
    pub offset: usize,
    /// What was wrong there.
    pub what: &'static str,
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.offset)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Null,
    True,
    False,
    Number,
    /// A string without escapes: its bytes are its text.
    Plain,
    /// A string with escapes, unescaped on demand.
    Escaped,
    Object,
    Array,
}

/// One value on the tape. Strings and numbers span `start..end` of the input (strings without
/// their quotes); containers span their children, which follow them on the tape.
#[derive(Clone, Copy, Debug)]
struct Token {
    kind: Kind,
    start: u32,
    end: u32,
    /// Index of the first token after this value and everything inside it.
    next: u32,
}

/// A reusable tape.
#[derive(Debug, Default)]
pub struct Tape {
    tokens: Vec<Token>,
}

/// A parsed document: the input and its tape.
#[derive(Clone, Copy)]
pub struct Doc<'t> {
    text: &'t str,
    tokens: &'t [Token],
}

/// One value of a [`Doc`].
#[derive(Clone, Copy)]
pub struct Node<'t> {
    doc: Doc<'t>,
    index: usize,
}

impl Tape {
    /// Parses `input`, reusing this tape's memory.
    pub fn parse<'t>(&'t mut self, input: &'t [u8]) -> Result<Doc<'t>, JsonError> {
        let text = std::str::from_utf8(input).map_err(|e| JsonError {
            offset: e.valid_up_to(),
            what: "invalid UTF-8",
        })?;
        if input.len() > u32::MAX as usize {
            return Err(JsonError {
                offset: 0,
                what: "message too large",
            });
        }
        self.tokens.clear();
        let mut parser = Parser {
            bytes: input,
            pos: 0,
            tokens: &mut self.tokens,
        };
        parser.skip_ws();
        parser.value(0)?;
        parser.skip_ws();
        if parser.pos != input.len() {
            return Err(parser.error("trailing characters"));
        }
        Ok(Doc {
            text,
            tokens: &self.tokens,
        })
    }
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
    tokens: &'a mut Vec<Token>,
}

impl Parser<'_> {
    fn error(&self, what: &'static str) -> JsonError {
        JsonError {
            offset: self.pos,
            what,
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn push(&mut self, kind: Kind, start: usize, end: usize) -> usize {
        let index = self.tokens.len();
        self.tokens.push(Token {
            kind,
            start: start as u32,
            end: end as u32,
            next: index as u32 + 1,
        });
        index
    }

    fn literal(&mut self, word: &'static [u8], kind: Kind) -> Result<(), JsonError> {
        if self.bytes[self.pos..].starts_with(word) {
            self.push(kind, self.pos, self.pos + word.len());
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("invalid literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), JsonError> {
        match self.bytes.get(self.pos) {
            None => Err(self.error("unexpected end of input")),
            Some(b'{') => self.container(depth, b'}', true),
            Some(b'[') => self.container(depth, b']', false),
            Some(b'"') => self.string(),
            Some(b't') => self.literal(b"true", Kind::True),
            Some(b'f') => self.literal(b"false", Kind::False),
            Some(b'n') => self.literal(b"null", Kind::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("unexpected character")),
        }
    }

    fn container(&mut self, depth: usize, close: u8, is_object: bool) -> Result<(), JsonError> {
        if depth >= MAX_DEPTH {
            return Err(self.error("nested too deep"));
        }
        let kind = if is_object { Kind::Object } else { Kind::Array };
        let index = self.push(kind, self.pos, self.pos);
        self.pos += 1;
        self.skip_ws();
        if self.bytes.get(self.pos) == Some(&close) {
            self.pos += 1;
        } else {
            loop {
                if is_object {
                    if self.bytes.get(self.pos) != Some(&b'"') {
                        return Err(self.error("expected a key"));
                    }
                    self.string()?;
                    self.skip_ws();
                    if self.bytes.get(self.pos) != Some(&b':') {
                        return Err(self.error("expected ':'"));
                    }
                    self.pos += 1;
                    self.skip_ws();
                }
                self.value(depth + 1)?;
                self.skip_ws();
                match self.bytes.get(self.pos) {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                    }
                    Some(&c) if c == close => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.error("expected ',' or a closing bracket")),
                }
            }
        }
        let next = self.tokens.len() as u32;
        let token = &mut self.tokens[index];
        token.end = self.pos as u32;
        token.next = next;
        Ok(())
    }

    fn string(&mut self) -> Result<(), JsonError> {
        self.pos += 1; // opening quote
        let start = self.pos;
        let mut escaped = false;
        loop {
            // Skip plain characters in a tight loop; stop at a quote, a backslash or a control.
            while self
                .bytes
                .get(self.pos)
                .is_some_and(|&c| !STRING_SPECIAL[c as usize])
            {
                self.pos += 1;
            }
            match self.bytes.get(self.pos) {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    match self.bytes.get(self.pos + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.pos += 2
                        }
                        Some(b'u') => {
                            let hex = self.bytes.get(self.pos + 2..self.pos + 6);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return Err(self.error("invalid \\u escape"));
                            }
                            self.pos += 6;
                        }
                        _ => return Err(self.error("invalid escape")),
                    }
                }
                Some(_) => return Err(self.error("control character in string")),
            }
        }
        let kind = if escaped { Kind::Escaped } else { Kind::Plain };
        self.push(kind, start, self.pos);
        self.pos += 1; // closing quote
        Ok(())
    }

    fn number(&mut self) -> Result<(), JsonError> {
        let start = self.pos;
        let b = self.bytes;
        let digits = |pos: &mut usize| {
            let from = *pos;
            while b.get(*pos).is_some_and(u8::is_ascii_digit) {
                *pos += 1;
            }
            *pos - from
        };
        let mut pos = self.pos;
        if b[pos] == b'-' {
            pos += 1;
        }
        match b.get(pos) {
            Some(b'0') => pos += 1,
            Some(b'1'..=b'9') => {
                digits(&mut pos);
            }
            _ => {
                self.pos = pos;
                return Err(self.error("invalid number"));
            }
        }
        if b.get(pos) == Some(&b'.') {
            pos += 1;
            if digits(&mut pos) == 0 {
                self.pos = pos;
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = b.get(pos) {
            pos += 1;
            if let Some(b'+' | b'-') = b.get(pos) {
                pos += 1;
            }
            if digits(&mut pos) == 0 {
                self.pos = pos;
                return Err(self.error("invalid number"));
            }
        }
        self.pos = pos;
        self.push(Kind::Number, start, pos);
        Ok(())
    }
}

impl<'t> Doc<'t> {
    /// The document's top-level value.
    pub fn root(self) -> Node<'t> {
        Node {
            doc: self,
            index: 0,
        }
    }
}

impl<'t> Node<'t> {
    fn token(&self) -> Token {
        self.doc.tokens[self.index]
    }

    fn raw(&self) -> &'t str {
        let t = self.token();
        &self.doc.text[t.start as usize..t.end as usize]
    }

    /// Whether this is an object.
    pub fn is_object(&self) -> bool {
        self.token().kind == Kind::Object
    }

    /// Whether this is an array.
    pub fn is_array(&self) -> bool {
        self.token().kind == Kind::Array
    }

    /// The value's JSON type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self.token().kind {
            Kind::Null => "null",
            Kind::True | Kind::False => "a boolean",
            Kind::Number => "a number",
            Kind::Plain | Kind::Escaped => "a string",
            Kind::Object => "an object",
            Kind::Array => "an array",
        }
    }

    /// The value as written, for messages (containers are shown by type).
    pub fn display(&self) -> Cow<'t, str> {
        match self.token().kind {
            Kind::Plain | Kind::Escaped => Cow::Owned(format!("\"{}\"", self.raw())),
            Kind::Object | Kind::Array => Cow::Borrowed(self.type_name()),
            _ => Cow::Borrowed(self.raw()),
        }
    }

    /// The number, if this is one.
    pub fn as_f64(&self) -> Option<f64> {
        (self.token().kind == Kind::Number)
            .then(|| parse_number(self.raw()))
            .flatten()
    }

    /// The number, if this is a non-negative integer written without fraction or exponent.
    pub fn as_u64(&self) -> Option<u64> {
        (self.token().kind == Kind::Number)
            .then(|| self.raw().parse().ok())
            .flatten()
    }

    /// The string, unescaped, if this is one.
    pub fn as_str(&self) -> Option<Cow<'t, str>> {
        match self.token().kind {
            Kind::Plain => Some(Cow::Borrowed(self.raw())),
            Kind::Escaped => Some(Cow::Owned(unescape(self.raw()))),
            _ => None,
        }
    }

    /// Whether this is a string equal to `text`.
    fn is_str(&self, text: &str) -> bool {
        match self.token().kind {
            Kind::Plain => self.raw() == text,
            Kind::Escaped => unescape(self.raw()) == text,
            _ => false,
        }
    }

    /// The direct children of a container of `kind` (none for anything else). An object's
    /// children alternate key, value: a key is one token, so stepping by `next` walks both.
    fn children(self, kind: Kind) -> impl Iterator<Item = Node<'t>> {
        let doc = self.doc;
        let t = self.token();
        let end = if t.kind == kind {
            t.next as usize
        } else {
            self.index + 1
        };
        let mut index = self.index + 1;
        std::iter::from_fn(move || {
            (index < end).then(|| {
                let node = Node { doc, index };
                index = doc.tokens[index].next as usize;
                node
            })
        })
    }

    /// The object's entries (empty if this is not an object).
    pub fn entries(self) -> impl Iterator<Item = (Node<'t>, Node<'t>)> {
        let mut children = self.children(Kind::Object);
        std::iter::from_fn(move || Some((children.next()?, children.next()?)))
    }

    /// The array's elements (empty if this is not an array).
    pub fn elements(self) -> impl Iterator<Item = Node<'t>> {
        self.children(Kind::Array)
    }

    /// The value under `key`, if this is an object that has it (the last one, if repeated).
    pub fn get(self, key: &str) -> Option<Node<'t>> {
        self.entries()
            .filter(|(k, _)| k.is_str(key))
            .map(|(_, v)| v)
            .last()
    }

    /// The key text of an entry's key node.
    pub fn key(&self) -> Cow<'t, str> {
        self.as_str().unwrap_or(Cow::Borrowed(""))
    }
}

/// Unescapes a string body already checked by the parser.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let unit = u16::from_str_radix(&hex, 16).unwrap_or(0xFFFD);
                let code = if (0xD800..0xDC00).contains(&unit) {
                    // A high surrogate: combine with a following \uDC00-\uDFFF if present.
                    let rest = chars.as_str();
                    match rest
                        .strip_prefix("\\u")
                        .and_then(|r| r.get(..4))
                        .and_then(|h| u16::from_str_radix(h, 16).ok())
                    {
                        Some(low) if (0xDC00..0xE000).contains(&low) => {
                            chars = rest[6..].chars();
                            0x10000 + (((unit as u32) - 0xD800) << 10) + (low as u32 - 0xDC00)
                        }
                        _ => 0xFFFD,
                    }
                } else {
                    unit as u32
                };
                out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(text: &str) -> bool {
        Tape::default().parse(text.as_bytes()).is_ok()
    }

    #[test]
    fn agrees_with_serde_json_on_acceptance() {
        let cases = [
            "{}",
            "[]",
            "0",
            "-0",
            "1.5e10",
            "-1.5E-3",
            "\"x\"",
            "true",
            "null",
            " { \"a\" : [1, 2, {\"b\": null}] } ",
            "{\"a\":1,}",
            "[1,]",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "{\"a\" 1}",
            "{a:1}",
            "\"\\x\"",
            "\"\\u12\"",
            "\"tab\there\"",
            "[1 2]",
            "{\"a\":1}}",
            "nul",
            "truex",
            "\"\\ud83d\\ude00\"",
            "[[[[[]]]]]",
            "",
            "{\"a\":\"\\\"\"}",
            "1 2",
            "{\"a\":{\"b\":{\"c\":[true,false,null]}}}",
        ];
        for case in cases {
            let theirs = serde_json::from_str::<serde_json::Value>(case).is_ok();
            assert_eq!(accepts(case), theirs, "{case:?}");
        }
    }

    #[test]
    fn every_truncation_of_a_message_is_rejected_like_serde_json_does() {
        let line = r#"{"id":"dev-1","time":"2024-01-01T00:00:00.001Z","fw":"3.1.1","batch":[{"time":"2024-01-01T00:00:00.000Z","metrics":{"temperature":{"value":-99.1e0,"unit":"F"}}}]}"#;
        for cut in 0..line.len() {
            let part = &line[..cut];
            let theirs = serde_json::from_str::<serde_json::Value>(part).is_ok();
            assert_eq!(accepts(part), theirs, "{part:?}");
        }
    }

    #[test]
    fn reads_values_like_serde_json() {
        let text = r#"{"s":"a\"b\u00e9\ud83d\ude00","n":-12.5e-1,"i":1704067200065,"o":{"k":[1,"x",null]}}"#;
        let mut tape = Tape::default();
        let doc = tape.parse(text.as_bytes()).unwrap();
        let root = doc.root();
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            root.get("s").unwrap().as_str().unwrap(),
            value["s"].as_str().unwrap()
        );
        assert_eq!(root.get("n").unwrap().as_f64(), value["n"].as_f64());
        assert_eq!(root.get("i").unwrap().as_u64(), Some(1_704_067_200_065));
        assert_eq!(root.get("n").unwrap().as_u64(), None);
        let list: Vec<_> = root
            .get("o")
            .unwrap()
            .get("k")
            .unwrap()
            .elements()
            .map(|n| n.type_name())
            .collect();
        assert_eq!(list, ["a number", "a string", "null"]);
        assert_eq!(root.entries().count(), 4);
        assert!(root.get("missing").is_none());
        let escaped = r#"{"k\u0065y":"v"}"#;
        let doc = tape.parse(escaped.as_bytes()).unwrap();
        assert_eq!(doc.root().get("key").unwrap().as_str().unwrap(), "v");
    }

    #[test]
    fn numbers_parse_exactly_like_the_standard_library() {
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut cases: Vec<String> = [
            "0",
            "-0",
            "0.1",
            "1704067200065",
            "123456789012345",
            "1234567890123456",
            "0.30000000000000004",
            "-99.99",
            "1e3",
            "2.5E-3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for _ in 0..20_000 {
            let int = next() % 1_000_000;
            let frac = next() % 100_000;
            let places = (next() % 6) as usize;
            let sign = if next() % 2 == 0 { "-" } else { "" };
            cases.push(if places == 0 {
                format!("{sign}{int}")
            } else {
                format!("{sign}{int}.{:0places$}", frac % 10u64.pow(places as u32))
            });
        }
        for case in cases {
            assert_eq!(parse_number(&case), case.parse::<f64>().ok(), "{case}");
        }
    }

    #[test]
    fn rejects_hostile_nesting_and_bad_utf8() {
        assert!(!accepts(&"[".repeat(MAX_DEPTH + 1)));
        assert!(accepts(&format!(
            "{}{}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        )));
        assert!(Tape::default().parse(b"\"\xff\"").is_err());
    }
}

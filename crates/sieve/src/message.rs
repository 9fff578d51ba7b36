//! The message as Sieve tests see it: header fields, addresses and body text.
//!
//! Everything here is lenient and total: any byte sequence parses, nothing
//! panics, malformed parts degrade to "no match" rather than errors.
//!
//! - Header fields (RFC 5322 §2.2): names compare case-insensitively, folded
//!   values are unfolded (§2.2.3), RFC 2047 encoded words are decoded to
//!   UTF-8 for the `header` test (RFC 5228 §2.7.2), 8-bit junk is decoded
//!   lossily.
//! - Addresses (RFC 5322 §3.4): lists with groups, comments, quoted strings,
//!   angle brackets or bare addresses.
//! - Body (RFC 5173): MIME parts are walked (multipart, message/rfc822),
//!   transfer encodings (base64, quoted-printable) undone and charsets
//!   converted for `:content` and `:text`.
//!
//! Why not `mail-parser`: the 1.x line needs a newer rustc than ours, and the
//! tests need only unfolding, RFC 2047 and a MIME walk. We decode UTF-8,
//! US-ASCII and the Latin-1 family (ISO-8859-1, -15, Windows-1252 as
//! Latin-1); other charsets are decoded as lossy UTF-8, which matches ASCII
//! keys correctly and never panics.

use std::cell::OnceCell;

/// MIME nesting deeper than this is not searched by the `body` test.
const MAX_MIME_DEPTH: usize = 16;

/// A parsed view of a message, built once per delivery and shared by all
/// scripts of the chain.
pub(crate) struct ParsedMessage<'a> {
    headers: Vec<RawHeader<'a>>,
    body: &'a [u8],
    text_parts: OnceCell<Vec<BodyPart>>,
    /// The whole message's size (more than the parsed bytes when they are
    /// only its head, see `Message::head`).
    pub(crate) size: u64,
}

/// One header field: its name and raw (still folded) value.
#[derive(Debug, Clone, Copy)]
struct RawHeader<'a> {
    name: &'a [u8],
    value: &'a [u8],
}

/// A decoded leaf MIME part for the `body` test.
#[derive(Debug, Clone)]
pub(crate) struct BodyPart {
    /// `type/subtype`, lower-cased.
    pub(crate) content_type: String,
    /// The decoded text.
    pub(crate) text: String,
}

impl<'a> ParsedMessage<'a> {
    pub(crate) fn new(raw: &'a [u8]) -> ParsedMessage<'a> {
        let (headers, body) = split_headers(raw);
        ParsedMessage { headers, body, text_parts: OnceCell::new(), size: raw.len() as u64 }
    }

    /// RFC 5228 §5.9: the size of the message in octets.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Raw (unfolded, undecoded, lossily UTF-8) values of every field `name`.
    pub(crate) fn raw_values(&self, name: &str) -> impl Iterator<Item = String> + '_ {
        let name = name.to_owned();
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| unfold(h.value))
    }

    /// Decoded values (RFC 2047, trimmed) of every field `name`.
    pub(crate) fn decoded_values(&self, name: &str) -> Vec<String> {
        self.raw_values(name).map(|v| decode_rfc2047(v.trim())).collect()
    }

    pub(crate) fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// RFC 5173 `:raw`: the undecoded body.
    pub(crate) fn raw_body(&self) -> String {
        String::from_utf8_lossy(self.body).into_owned()
    }

    /// The decoded leaf parts, computed once.
    pub(crate) fn parts(&self) -> &[BodyPart] {
        self.text_parts.get_or_init(|| {
            let mut parts = Vec::new();
            collect_parts(&self.headers, self.body, 0, &mut parts);
            parts
        })
    }
}

/// Splits at the first empty line. Header lines without a colon are skipped.
fn split_headers(raw: &[u8]) -> (Vec<RawHeader<'_>>, &[u8]) {
    fn finish<'r>(
        raw: &'r [u8],
        current: &mut Option<(usize, usize, usize)>,
        end: usize,
        headers: &mut Vec<RawHeader<'r>>,
    ) {
        if let Some((ns, ne, vs)) = current.take() {
            headers.push(RawHeader { name: &raw[ns..ne], value: &raw[vs..end.max(vs)] });
        }
    }
    let mut headers: Vec<RawHeader<'_>> = Vec::new();
    let mut at = 0;
    // (start of name, end of name, start of value)
    let mut current: Option<(usize, usize, usize)> = None;
    while at < raw.len() {
        let line_end = raw[at..].iter().position(|&b| b == b'\n').map_or(raw.len(), |p| at + p + 1);
        let line = &raw[at..line_end];
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content.is_empty() {
            finish(raw, &mut current, at, &mut headers);
            return (headers, &raw[line_end..]);
        }
        if matches!(content[0], b' ' | b'\t') {
            // Continuation: the current field grows to this line's end.
        } else {
            finish(raw, &mut current, at, &mut headers);
            if let Some(colon) = content.iter().position(|&b| b == b':') {
                let name_end = content[..colon]
                    .iter()
                    .rposition(|b| !matches!(b, b' ' | b'\t'))
                    .map_or(0, |p| p + 1);
                current = Some((at, at + name_end, at + colon + 1));
            }
        }
        at = line_end;
    }
    finish(raw, &mut current, raw.len(), &mut headers);
    (headers, &raw[raw.len()..])
}

/// RFC 5322 §2.2.3: unfolding removes CRLF before whitespace; the value is
/// decoded as lossy UTF-8 (8-bit junk becomes U+FFFD).
fn unfold(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c != '\r' && c != '\n' {
            out.push(c);
        }
    }
    out
}

/// Decodes RFC 2047 encoded words (`=?charset?B|Q?text?=`) in `value`.
/// Whitespace between two adjacent encoded words is dropped (§6.2).
pub(crate) fn decode_rfc2047(value: &str) -> String {
    if !value.contains("=?") {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut pending_space = String::new();
    let mut last_was_encoded = false;
    while !rest.is_empty() {
        if rest.starts_with("=?")
            && let Some((decoded, used)) = encoded_word(rest) {
                if !last_was_encoded {
                    out.push_str(&pending_space);
                }
                pending_space.clear();
                out.push_str(&decoded);
                rest = &rest[used..];
                last_was_encoded = true;
                continue;
            }
        let c = rest.chars().next().expect("not empty");
        rest = &rest[c.len_utf8()..];
        if c == ' ' || c == '\t' {
            pending_space.push(c);
            continue;
        }
        out.push_str(&pending_space);
        pending_space.clear();
        out.push(c);
        last_was_encoded = false;
    }
    out.push_str(&pending_space);
    out
}

/// Parses one encoded word at the start of `s`; returns the text and the
/// number of bytes used.
fn encoded_word(s: &str) -> Option<(String, usize)> {
    let inner = &s[2..];
    let q1 = inner.find('?')?;
    let charset = &inner[..q1];
    let after_charset = &inner[q1 + 1..];
    let q2 = after_charset.find('?')?;
    let encoding = &after_charset[..q2];
    let after_encoding = &after_charset[q2 + 1..];
    let end = after_encoding.find("?=")?;
    let text = &after_encoding[..end];
    if charset.is_empty() || text.contains([' ', '\t']) {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => base64_decode(text.as_bytes()),
        "Q" | "q" => quoted_printable_decode(text.as_bytes(), true),
        _ => return None,
    };
    let used = 2 + q1 + 1 + q2 + 1 + end + 2;
    Some((charset_decode(charset, &bytes), used))
}

/// Converts `bytes` in `charset` to UTF-8 (RFC 2231 `*lang` suffix allowed).
pub(crate) fn charset_decode(charset: &str, bytes: &[u8]) -> String {
    let charset = charset.split('*').next().unwrap_or("").trim().to_ascii_lowercase();
    match charset.as_str() {
        "iso-8859-1" | "iso8859-1" | "latin1" | "latin-1" | "iso-8859-15" | "windows-1252" | "cp1252" => {
            bytes.iter().map(|&b| char::from(b)).collect()
        }
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Lenient base64 (RFC 2045 §6.8): characters outside the alphabet are
/// skipped, missing padding is tolerated.
pub(crate) fn base64_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in input {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Quoted-printable (RFC 2045 §6.7); `underscore_is_space` for RFC 2047 "Q".
pub(crate) fn quoted_printable_decode(input: &[u8], underscore_is_space: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'=' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (input.get(i + 1).copied(), input.get(i + 2).copied()) {
                (Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                    out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                    i += 3;
                }
                (Some(b'\r'), Some(b'\n')) => i += 3,
                (Some(b'\n'), _) => i += 2,
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        } else if b == b'_' && underscore_is_space {
            out.push(b' ');
            i += 1;
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

/// `Content-Type` split into `type/subtype` (lower-cased) and parameters.
struct ContentType {
    mime_type: String,
    params: Vec<(String, String)>,
}

impl ContentType {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn parse_content_type(value: Option<&str>) -> ContentType {
    let Some(value) = value else {
        return ContentType { mime_type: "text/plain".into(), params: Vec::new() };
    };
    let value = strip_comments(value);
    let mut pieces = split_unquoted(&value, ';').into_iter();
    let mime_type = pieces.next().unwrap_or_default().trim().to_ascii_lowercase();
    let mime_type = if mime_type.contains('/') { mime_type } else { "text/plain".into() };
    let params = pieces
        .filter_map(|p| {
            let (name, value) = p.split_once('=')?;
            let value = value.trim();
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            Some((name.trim().to_ascii_lowercase(), value.replace("\\\"", "\"")))
        })
        .collect();
    ContentType { mime_type, params }
}

/// Splits at `sep` outside double quotes.
fn split_unquoted(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut escaped = false;
    for c in s.chars() {
        let current = out.last_mut().expect("never empty");
        if escaped {
            current.push(c);
            escaped = false;
        } else if c == '\\' && quoted {
            current.push(c);
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
            current.push(c);
        } else if c == sep && !quoted {
            out.push(String::new());
        } else {
            current.push(c);
        }
    }
    out
}

fn header_value(headers: &[RawHeader<'_>], name: &str) -> Option<String> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name.as_bytes())).map(|h| unfold(h.value))
}

/// Walks a MIME entity and collects its decoded leaf parts (RFC 2045/2046).
fn collect_parts(headers: &[RawHeader<'_>], body: &[u8], depth: usize, out: &mut Vec<BodyPart>) {
    if depth > MAX_MIME_DEPTH {
        return;
    }
    let content_type = parse_content_type(header_value(headers, "content-type").as_deref());
    if content_type.mime_type.starts_with("multipart/")
        && let Some(boundary) = content_type.param("boundary").filter(|b| !b.is_empty()) {
            for part in split_multipart(body, boundary.as_bytes()) {
                let (part_headers, part_body) = split_headers(part);
                collect_parts(&part_headers, part_body, depth + 1, out);
            }
            return;
        }
    let encoding = header_value(headers, "content-transfer-encoding")
        .map(|e| e.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let decoded = match encoding.as_str() {
        "base64" => base64_decode(body),
        "quoted-printable" => quoted_printable_decode(body, false),
        _ => body.to_vec(),
    };
    if content_type.mime_type == "message/rfc822" {
        let (inner_headers, inner_body) = split_headers(&decoded);
        collect_parts(&inner_headers, inner_body, depth + 1, out);
        return;
    }
    let text = charset_decode(content_type.param("charset").unwrap_or("us-ascii"), &decoded);
    out.push(BodyPart { content_type: content_type.mime_type, text });
}

/// RFC 2046 §5.1.1: the parts between `--boundary` delimiter lines, up to the
/// close delimiter `--boundary--`. Preamble and epilogue are dropped.
fn split_multipart<'b>(body: &'b [u8], boundary: &[u8]) -> Vec<&'b [u8]> {
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut at = 0;
    while at < body.len() {
        let line_end = body[at..].iter().position(|&b| b == b'\n').map_or(body.len(), |p| at + p + 1);
        let line = &body[at..line_end];
        if let Some(rest) = line.strip_prefix(b"--").and_then(|l| l.strip_prefix(boundary)) {
            let rest_trimmed: &[u8] = {
                let end = rest.iter().rposition(|b| !b" \t\r\n".contains(b)).map_or(0, |p| p + 1);
                &rest[..end]
            };
            if rest_trimmed.is_empty() || rest_trimmed == b"--" {
                if let Some(s) = start {
                    // The CRLF before the delimiter belongs to the delimiter.
                    let mut end = at;
                    if end > s && body[end - 1] == b'\n' {
                        end -= 1;
                        if end > s && body[end - 1] == b'\r' {
                            end -= 1;
                        }
                    }
                    parts.push(&body[s..end]);
                }
                if rest_trimmed == b"--" {
                    return parts;
                }
                start = Some(line_end);
            }
        }
        at = line_end;
    }
    if let Some(s) = start {
        parts.push(&body[s..]);
    }
    parts
}

/// An address taken apart for the address-part tags (RFC 5228 §2.7.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Address {
    /// `local@domain` as written (comments and display names removed).
    pub(crate) all: String,
    pub(crate) local: String,
    /// `None` when the address has no `@`.
    pub(crate) domain: Option<String>,
}

impl Address {
    pub(crate) fn from_addr_spec(spec: &str) -> Address {
        let spec = spec.trim();
        match spec.rfind('@') {
            Some(at) => {
                let local = &spec[..at];
                let local = local
                    .strip_prefix('"')
                    .and_then(|l| l.strip_suffix('"'))
                    .unwrap_or(local);
                Address {
                    all: spec.to_owned(),
                    local: local.to_owned(),
                    domain: Some(spec[at + 1..].to_owned()),
                }
            }
            None => Address { all: spec.to_owned(), local: spec.to_owned(), domain: None },
        }
    }
}

/// Removes RFC 5322 comments (nested, with quoted pairs) outside quotes.
fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0usize;
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if depth > 0 || quoted => {
                let next = chars.next();
                if depth == 0 {
                    out.push(c);
                    if let Some(n) = next {
                        out.push(n);
                    }
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    out.push(' ');
                }
            }
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Parses an RFC 5322 §3.4 address list leniently: `a@b`, `Name <a@b>`,
/// `"Quoted, Name" <a@b>`, groups `team: a@b, c@d;`, comments, routes
/// `<@relay:a@b>`, missing angle brackets. Never fails; entries without any
/// content are skipped.
pub(crate) fn parse_address_list(value: &str) -> Vec<Address> {
    let clean = strip_comments(value);
    let mut entries: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut angle = false;
    for c in clean.chars() {
        if escaped {
            current.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => {
                current.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            '<' if !quoted => {
                angle = true;
                current.push(c);
            }
            '>' if !quoted => {
                angle = false;
                current.push(c);
            }
            // Group start: the display name before `:` is not an address.
            ':' if !quoted && !angle => current.clear(),
            ',' | ';' if !quoted && !angle => entries.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    entries.push(current);
    entries
        .iter()
        .filter_map(|entry| {
            let spec = match (entry.find('<'), entry.rfind('>')) {
                (Some(open), Some(close)) if open < close => &entry[open + 1..close],
                (Some(open), None) => &entry[open + 1..],
                _ => entry.as_str(),
            };
            // Obsolete route (RFC 5322 §4.4): "@a,@b:local@domain".
            let spec = match spec.trim_start().strip_prefix('@') {
                Some(_) => spec.rsplit(':').next().unwrap_or(spec),
                None => spec,
            };
            // Unquoted whitespace (left where comments were) is not part of
            // an addr-spec (RFC 5322 §3.4.1 CFWS).
            // Stray angle brackets (`a@b>`) are not part of it either.
            let spec: String = if spec.contains('"') {
                spec.trim().trim_matches(['<', '>']).to_owned()
            } else {
                spec.chars().filter(|c| !c.is_whitespace() && *c != '<' && *c != '>').collect()
            };
            (!spec.is_empty()).then(|| Address::from_addr_spec(&spec))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_headers_and_encoded_words() {
        let raw = b"Subject: =?ISO-8859-1?Q?Caf=E9?=\r\n =?UTF-8?B?IMOgIGxhIGNhcnRl?=\r\nX-Folded: one\r\n\ttwo\r\nFrom: a@b\r\n\r\nbody";
        let msg = ParsedMessage::new(raw);
        assert_eq!(msg.decoded_values("subject"), ["Café à la carte"]);
        assert_eq!(msg.decoded_values("X-FOLDED"), ["one\ttwo"]);
        assert_eq!(msg.raw_body(), "body");
        // RFC 2047 §8 examples.
        assert_eq!(decode_rfc2047("(=?ISO-8859-1?Q?a?= b)"), "(a b)");
        assert_eq!(decode_rfc2047("(=?ISO-8859-1?Q?a?=  =?ISO-8859-1?Q?b?=)"), "(ab)");
        assert_eq!(decode_rfc2047("=?ISO-8859-1?Q?a_b?="), "a b");
        assert_eq!(decode_rfc2047("=?bogus"), "=?bogus");
        assert_eq!(decode_rfc2047("=?x?Z?abc?="), "=?x?Z?abc?=");
    }

    #[test]
    fn eight_bit_junk_and_malformed_headers() {
        let raw = b"Subject: \xff\xfe junk \x80\r\nno colon here\r\n: empty name\r\nX: =?utf-8?B?////?=\r\n";
        let msg = ParsedMessage::new(raw);
        assert!(msg.decoded_values("subject")[0].contains("junk"));
        assert_eq!(msg.decoded_values("x").len(), 1);
        assert_eq!(msg.raw_body(), "");
        let lf_only = ParsedMessage::new(b"A: 1\nB: 2\n\nbody\n");
        assert_eq!(lf_only.decoded_values("b"), ["2"]);
        assert_eq!(lf_only.raw_body(), "body\n");
    }

    #[test]
    fn odd_address_lists() {
        let all = |v: &str| parse_address_list(v).into_iter().map(|a| a.all).collect::<Vec<_>>();
        assert_eq!(all("John Doe <jdoe@machine.example>"), ["jdoe@machine.example"]);
        assert_eq!(all("\"Joe Q. Public\" <john.q.public@example.com>"), ["john.q.public@example.com"]);
        assert_eq!(
            all("A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;"),
            ["c@a.test", "joe@where.test", "jdoe@one.test"]
        );
        assert_eq!(all("Undisclosed recipients:;"), Vec::<String>::new());
        assert_eq!(all("Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>"), ["pete@silly.test"]);
        assert_eq!(all("\"Giant; \\\"Big\\\" Box\" <sysservices@example.net>"), ["sysservices@example.net"]);
        assert_eq!(all("<@relay.test:user@example.org>"), ["user@example.org"]);
        assert_eq!(all("bare@example.org, other@example.org"), ["bare@example.org", "other@example.org"]);
        assert_eq!(all("no-at-sign"), ["no-at-sign"]);
        for junk in ["<<<>>>", "\"unterminated", "((((", "a@", "@", ":;:;,,", "<a@b", "\u{fffd}@\u{fffd}"] {
            let _ = parse_address_list(junk);
        }
        let a = Address::from_addr_spec("\"quoted local\"@example.com");
        assert_eq!((a.local.as_str(), a.domain.as_deref()), ("quoted local", Some("example.com")));
    }

    #[test]
    fn mime_walk() {
        let raw = b"Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nCaf=C3=A9 =\r\nsoft\r\n--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner text\r\n--XX--\r\nepilogue\r\n";
        let msg = ParsedMessage::new(raw);
        let parts = msg.parts();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].content_type, "text/plain");
        assert_eq!(parts[0].text, "Café soft");
        assert_eq!(parts[1].content_type, "application/octet-stream");
        assert_eq!(parts[2].text, "inner text");
        // No Content-Type: text/plain (RFC 2045 §5.2).
        assert_eq!(ParsedMessage::new(b"A: b\r\n\r\nhi").parts()[0].content_type, "text/plain");
    }

    #[test]
    fn base64_and_qp() {
        assert_eq!(base64_decode(b"aGVsbG8="), b"hello");
        assert_eq!(base64_decode(b"aGVs\r\nbG8"), b"hello");
        assert_eq!(quoted_printable_decode(b"a=3Db=\r\nc=ZZ", false), b"a=bc=ZZ");
    }
}

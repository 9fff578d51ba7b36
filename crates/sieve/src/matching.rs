//! Match types (RFC 5228 §2.7.1) and comparators (§2.7.3, RFC 4790).
//!
//! Values are compared character by character. `i;ascii-casemap` folds only
//! ASCII letters, as RFC 4790 §9.2 defines it; `i;octet` compares exactly.
//! `:matches` wildcards (`*`, `?`) are matched without backtracking blow-up:
//! the pattern is split at `*` into fixed-length segments and each inner
//! segment is placed at its earliest position, which is both correct for
//! glob patterns and gives RFC 5229 §3.2's leftmost-shortest match variables.

/// A comparator (RFC 5228 §2.7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Comparator {
    /// `i;octet`: exact comparison.
    Octet,
    /// `i;ascii-casemap`, the default: ASCII letters compare case-insensitively.
    #[default]
    AsciiCasemap,
}

impl Comparator {
    /// The comparator registered under `name` (RFC 4790 §3.1 names).
    pub(crate) fn from_name(name: &str) -> Option<Comparator> {
        match name.to_ascii_lowercase().as_str() {
            "i;octet" => Some(Comparator::Octet),
            "i;ascii-casemap" => Some(Comparator::AsciiCasemap),
            _ => None,
        }
    }

    fn eq_char(self, a: char, b: char) -> bool {
        match self {
            Comparator::Octet => a == b,
            Comparator::AsciiCasemap => a.eq_ignore_ascii_case(&b),
        }
    }
}

/// A match type (RFC 5228 §2.7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum MatchType {
    /// `:is`, the default.
    #[default]
    Is,
    /// `:contains`
    Contains,
    /// `:matches`, with `*` and `?` wildcards and `\` escapes.
    Matches,
}

/// Whether `value` matches `key`. For `:matches`, the wildcards' matched
/// text is returned in `captures` when asked for (RFC 5229 §3.2: `${1}` is
/// the first wildcard, `${0}` the whole value).
pub(crate) fn matches(
    match_type: MatchType,
    comparator: Comparator,
    value: &str,
    key: &str,
    captures: Option<&mut Vec<String>>,
) -> bool {
    match match_type {
        MatchType::Is => eq(comparator, value, key),
        MatchType::Contains => contains(comparator, value, key),
        MatchType::Matches => glob(comparator, value, key, captures),
    }
}

fn eq(comparator: Comparator, value: &str, key: &str) -> bool {
    match comparator {
        Comparator::Octet => value == key,
        Comparator::AsciiCasemap => value.eq_ignore_ascii_case(key),
    }
}

fn contains(comparator: Comparator, value: &str, key: &str) -> bool {
    match comparator {
        Comparator::Octet => value.contains(key),
        Comparator::AsciiCasemap => {
            let (v, k) = (value.as_bytes(), key.as_bytes());
            // ASCII folding never changes UTF-8 lengths, so bytes suffice.
            k.is_empty() || v.windows(k.len()).any(|w| w.eq_ignore_ascii_case(k))
        }
    }
}

/// One element of a `:matches` pattern between two `*`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Literal(char),
    AnyOne,
}

/// A parsed glob: `segments[0] * segments[1] * ... * segments[n]`.
struct Glob {
    segments: Vec<Vec<Piece>>,
}

impl Glob {
    fn parse(pattern: &str) -> Glob {
        let mut segments = vec![Vec::new()];
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let current = segments.last_mut().expect("never empty");
            match c {
                '*' => segments.push(Vec::new()),
                '?' => current.push(Piece::AnyOne),
                // RFC 5228 §2.7.1: "\" quotes the next character; a trailing
                // backslash stands for itself.
                '\\' => current.push(Piece::Literal(chars.next().unwrap_or('\\'))),
                c => current.push(Piece::Literal(c)),
            }
        }
        Glob { segments }
    }
}

fn segment_at(comparator: Comparator, segment: &[Piece], text: &[char], at: usize) -> bool {
    if at + segment.len() > text.len() {
        return false;
    }
    segment.iter().zip(&text[at..]).all(|(piece, &c)| match piece {
        Piece::AnyOne => true,
        Piece::Literal(p) => comparator.eq_char(*p, c),
    })
}

fn glob(comparator: Comparator, value: &str, pattern: &str, captures: Option<&mut Vec<String>>) -> bool {
    let glob = Glob::parse(pattern);
    let text: Vec<char> = value.chars().collect();
    let last = glob.segments.len() - 1;
    // Where each segment starts in `text`.
    let mut starts = Vec::with_capacity(glob.segments.len());
    if last == 0 {
        let only = &glob.segments[0];
        if only.len() != text.len() || !segment_at(comparator, only, &text, 0) {
            return false;
        }
        starts.push(0);
    } else {
        if !segment_at(comparator, &glob.segments[0], &text, 0) {
            return false;
        }
        starts.push(0);
        let mut pos = glob.segments[0].len();
        for segment in &glob.segments[1..last] {
            let found = (pos..=text.len().saturating_sub(segment.len()))
                .find(|&at| segment_at(comparator, segment, &text, at));
            let Some(at) = found else { return false };
            starts.push(at);
            pos = at + segment.len();
        }
        let tail = &glob.segments[last];
        let Some(tail_start) = text.len().checked_sub(tail.len()) else { return false };
        if tail_start < pos || !segment_at(comparator, tail, &text, tail_start) {
            return false;
        }
        starts.push(tail_start);
    }
    if let Some(captures) = captures {
        captures.clear();
        captures.push(value.to_owned());
        for (i, segment) in glob.segments.iter().enumerate() {
            if i > 0 {
                let star_start = starts[i - 1] + glob.segments[i - 1].len();
                captures.push(text[star_start..starts[i]].iter().collect());
            }
            for (offset, piece) in segment.iter().enumerate() {
                if *piece == Piece::AnyOne {
                    captures.push(text[starts[i] + offset].to_string());
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(value: &str, pattern: &str) -> bool {
        glob(Comparator::AsciiCasemap, value, pattern, None)
    }

    fn caps(value: &str, pattern: &str) -> Vec<String> {
        let mut out = Vec::new();
        assert!(glob(Comparator::AsciiCasemap, value, pattern, Some(&mut out)), "{value} !~ {pattern}");
        out
    }

    #[test]
    fn wildcards() {
        assert!(m("anything", "*"));
        assert!(m("", "*"));
        assert!(!m("", "?"));
        assert!(m("abc", "a?c"));
        assert!(m("MAKE MONEY FAST", "*money*"));
        assert!(!m("abc", "ab"));
        assert!(m("aaa", "*a*a*a*"));
        assert!(!m("aa", "*a*a*a*"));
        assert!(m("abab", "*ab"));
        assert!(m("a*b", r"a\*b"));
        assert!(!m("axb", r"a\*b"));
        assert!(m("a?", r"a\?"));
        assert!(m(r"a\", r"a\\"));
    }

    #[test]
    fn comparators() {
        assert!(!glob(Comparator::Octet, "ABC", "abc", None));
        assert!(contains(Comparator::AsciiCasemap, "Hello World", "WORLD"));
        assert!(!contains(Comparator::Octet, "Hello World", "WORLD"));
        // ASCII casemap leaves non-ASCII letters alone (RFC 4790 §9.2).
        assert!(!eq(Comparator::AsciiCasemap, "É", "é"));
        assert!(contains(Comparator::Octet, "x", ""));
    }

    #[test]
    fn rfc5229_match_variables() {
        // RFC 5229 §3.2 examples.
        assert_eq!(caps("[acme-users] [fwd] version 1.0 is out", "[*] *")[1..], ["acme-users", "[fwd] version 1.0 is out"]);
        assert_eq!(caps("coyote@ACME.Example.COM", "coyote@**.com")[1..], ["", "ACME.Example"]);
        assert_eq!(caps("abc", "a?c"), ["abc", "b"]);
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let value = "a".repeat(20_000);
        let pattern = format!("{}b", "*a".repeat(50));
        assert!(!m(&value, &pattern));
    }
}

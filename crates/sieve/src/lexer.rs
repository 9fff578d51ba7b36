//! Tokens of RFC 5228 §8.1 (lexical tokens).
//!
//! The lexer turns script text into [`Token`]s that carry their line and
//! column (both 1-based, columns counted in characters). It handles hash and
//! bracket comments (§2.3), quoted strings with `\` escapes (§2.4.2), the
//! multi-line `text:` form with dot-unstuffing (§2.4.2), numbers with the
//! `K`/`M`/`G` quantifiers (§2.4.1) and `:tag`s (§2.6.2).

use crate::CompileError;

/// A position in the script: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

/// One lexical token (RFC 5228 §8.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// `identifier = (ALPHA / "_") *(ALPHA / DIGIT / "_")`
    Identifier(String),
    /// `tag = ":" identifier`, stored without the colon, lower-cased.
    Tag(String),
    /// `number = 1*DIGIT [ QUANTIFIER ]`, already multiplied out.
    Number(u64),
    /// A quoted or multi-line string, escapes and dot-stuffing removed.
    String(String),
    LeftBracket,
    RightBracket,
    LeftParen,
    RightParen,
    LeftBrace,
    RightBrace,
    Comma,
    Semicolon,
}

/// A token and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) kind: TokenKind,
    pub(crate) pos: Pos,
}

impl TokenKind {
    /// How a token is named in error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            TokenKind::Identifier(name) => format!("identifier `{name}`"),
            TokenKind::Tag(name) => format!("tag `:{name}`"),
            TokenKind::Number(n) => format!("number {n}"),
            TokenKind::String(_) => "a string".to_owned(),
            TokenKind::LeftBracket => "`[`".to_owned(),
            TokenKind::RightBracket => "`]`".to_owned(),
            TokenKind::LeftParen => "`(`".to_owned(),
            TokenKind::RightParen => "`)`".to_owned(),
            TokenKind::LeftBrace => "`{`".to_owned(),
            TokenKind::RightBrace => "`}`".to_owned(),
            TokenKind::Comma => "`,`".to_owned(),
            TokenKind::Semicolon => "`;`".to_owned(),
        }
    }
}

/// Splits `source` into tokens.
///
/// # Errors
/// The first lexical error: an unterminated string or comment, a bad number,
/// or a character that cannot start a token.
pub(crate) fn tokenize(source: &str) -> Result<Vec<Token>, CompileError> {
    let mut lexer = Lexer { chars: source.chars().collect(), at: 0, line: 1, column: 1 };
    let mut tokens = Vec::new();
    while let Some(token) = lexer.next_token()? {
        tokens.push(token);
    }
    Ok(tokens)
}

struct Lexer {
    chars: Vec<char>,
    at: usize,
    line: usize,
    column: usize,
}

impl Lexer {
    fn pos(&self) -> Pos {
        Pos { line: self.line, column: self.column }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.at + offset).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn error(pos: Pos, message: impl Into<String>) -> CompileError {
        CompileError { line: pos.line, column: pos.column, message: message.into() }
    }

    fn next_token(&mut self) -> Result<Option<Token>, CompileError> {
        self.skip_whitespace_and_comments()?;
        let pos = self.pos();
        let Some(c) = self.peek() else { return Ok(None) };
        let kind = match c {
            '[' => self.single(TokenKind::LeftBracket),
            ']' => self.single(TokenKind::RightBracket),
            '(' => self.single(TokenKind::LeftParen),
            ')' => self.single(TokenKind::RightParen),
            '{' => self.single(TokenKind::LeftBrace),
            '}' => self.single(TokenKind::RightBrace),
            ',' => self.single(TokenKind::Comma),
            ';' => self.single(TokenKind::Semicolon),
            '"' => self.quoted_string(pos)?,
            ':' => {
                self.bump();
                match self.peek() {
                    Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                        TokenKind::Tag(self.identifier().to_ascii_lowercase())
                    }
                    _ => return Err(Self::error(pos, "expected a tag name after `:`")),
                }
            }
            c if c.is_ascii_digit() => self.number(pos)?,
            c if c.is_ascii_alphabetic() || c == '_' => {
                let ident = self.identifier();
                if ident.eq_ignore_ascii_case("text") && self.peek() == Some(':') {
                    self.bump();
                    self.multiline_string(pos)?
                } else {
                    TokenKind::Identifier(ident)
                }
            }
            other => {
                return Err(Self::error(pos, format!("unexpected character {other:?}")));
            }
        };
        Ok(Some(Token { kind, pos }))
    }

    fn single(&mut self, kind: TokenKind) -> TokenKind {
        self.bump();
        kind
    }

    fn skip_whitespace_and_comments(&mut self) -> Result<(), CompileError> {
        loop {
            match self.peek() {
                Some(' ' | '\t' | '\r' | '\n') => {
                    self.bump();
                }
                Some('#') => {
                    while let Some(c) = self.bump() {
                        if c == '\n' {
                            break;
                        }
                    }
                }
                Some('/') if self.peek_at(1) == Some('*') => {
                    let start = self.pos();
                    self.bump();
                    self.bump();
                    loop {
                        match self.bump() {
                            Some('*') if self.peek() == Some('/') => {
                                self.bump();
                                break;
                            }
                            Some(_) => {}
                            None => return Err(Self::error(start, "unterminated `/*` comment")),
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn identifier(&mut self) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                out.push(c);
                self.bump();
            } else {
                break;
            }
        }
        out
    }

    /// RFC 5228 §2.4.1: `K` = 2^10, `M` = 2^20, `G` = 2^30.
    fn number(&mut self, pos: Pos) -> Result<TokenKind, CompileError> {
        let mut value: u64 = 0;
        while let Some(c) = self.peek() {
            let Some(digit) = c.to_digit(10) else { break };
            self.bump();
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(digit)))
                .ok_or_else(|| Self::error(pos, "number too large"))?;
        }
        let shift = match self.peek() {
            Some('K' | 'k') => 10,
            Some('M' | 'm') => 20,
            Some('G' | 'g') => 30,
            _ => 0,
        };
        if shift > 0 {
            self.bump();
            value = value
                .checked_mul(1 << shift)
                .ok_or_else(|| Self::error(pos, "number too large"))?;
        }
        if matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == '_') {
            return Err(Self::error(self.pos(), "unexpected character after number"));
        }
        Ok(TokenKind::Number(value))
    }

    /// RFC 5228 §2.4.2: `\\` and `\"` stand for themselves; any other escaped
    /// character is the character itself (the backslash is dropped).
    fn quoted_string(&mut self, pos: Pos) -> Result<TokenKind, CompileError> {
        self.bump();
        let mut out = String::new();
        loop {
            match self.bump() {
                Some('"') => return Ok(TokenKind::String(out)),
                Some('\\') => match self.bump() {
                    Some(c) => out.push(c),
                    None => break,
                },
                Some(c) => out.push(c),
                None => break,
            }
        }
        Err(Self::error(pos, "unterminated quoted string"))
    }

    /// RFC 5228 §8.1: `"text:" *(SP / HTAB) (hash-comment / CRLF)`, then lines
    /// up to a line holding a single `.`; a leading `..` stands for `.`.
    fn multiline_string(&mut self, pos: Pos) -> Result<TokenKind, CompileError> {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.bump();
        }
        match self.peek() {
            Some('#') => {
                while let Some(c) = self.bump() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            Some('\r') if self.peek_at(1) == Some('\n') => {
                self.bump();
                self.bump();
            }
            Some('\n') => {
                self.bump();
            }
            _ => {
                return Err(Self::error(
                    self.pos(),
                    "`text:` must be followed by the end of the line",
                ));
            }
        }
        let mut out = String::new();
        loop {
            let mut line = String::new();
            let mut terminated = false;
            while let Some(c) = self.bump() {
                if c == '\n' {
                    terminated = true;
                    break;
                }
                line.push(c);
            }
            if line.ends_with('\r') {
                line.pop();
            }
            if line == "." {
                return Ok(TokenKind::String(out));
            }
            if !terminated {
                return Err(Self::error(pos, "unterminated `text:` string (no line with a single `.`)"));
            }
            let line = line.strip_prefix('.').filter(|l| l.starts_with('.')).unwrap_or(&line);
            out.push_str(line);
            // Line ends inside the string are CRLF, as on the wire (RFC 5228 §2.4.2).
            out.push_str("\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(source: &str) -> Vec<TokenKind> {
        tokenize(source).unwrap().into_iter().map(|t| t.kind).collect()
    }

    #[test]
    fn numbers_with_quantifiers() {
        assert_eq!(
            kinds("1 10K 2M 1G"),
            vec![
                TokenKind::Number(1),
                TokenKind::Number(10 * 1024),
                TokenKind::Number(2 << 20),
                TokenKind::Number(1 << 30)
            ]
        );
        assert!(tokenize("99999999999999999999").is_err());
        assert!(tokenize("18446744073709551615G").is_err());
    }

    #[test]
    fn quoted_string_escapes() {
        // RFC 5228 §2.4.2: "\\" is a backslash, "\"" a quote, "\a" is "a".
        assert_eq!(kinds(r#""a\\b\"c\d""#), vec![TokenKind::String("a\\b\"cd".into())]);
    }

    #[test]
    fn multiline_with_dot_unstuffing() {
        let src = "text: # comment\r\nline one\r\n..dot\r\n.\r\n;";
        assert_eq!(
            kinds(src),
            vec![TokenKind::String("line one\r\n.dot\r\n".into()), TokenKind::Semicolon]
        );
        assert_eq!(kinds("text:\n.\n"), vec![TokenKind::String(String::new())]);
        assert!(tokenize("text:\nno end").is_err());
        assert!(tokenize("text: x\n.\n").is_err());
    }

    #[test]
    fn comments_and_positions() {
        let tokens = tokenize("# hash\n/* bracket\n comment */ keep;").unwrap();
        assert_eq!(tokens[0].kind, TokenKind::Identifier("keep".into()));
        assert_eq!(tokens[0].pos, Pos { line: 3, column: 13 });
        let err = tokenize("keep; /* open").unwrap_err();
        assert_eq!((err.line, err.column), (1, 7));
    }

    #[test]
    fn tags_are_lowercased() {
        assert_eq!(kinds(":Contains"), vec![TokenKind::Tag("contains".into())]);
        assert!(tokenize(": x").is_err());
    }
}

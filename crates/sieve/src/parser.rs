//! The generic syntax tree of RFC 5228 §8.2 (grammar).
//!
//! The parser knows nothing about particular commands: it builds
//! `command = identifier arguments (";" / block)` nodes with their arguments,
//! tests and blocks. [`crate::check`] then gives them meaning. Nesting of
//! blocks and tests is bounded by [`crate::MAX_NESTING`], so neither the
//! parser nor the interpreter can overflow the stack.

use crate::lexer::{Pos, Token, TokenKind};
use crate::{CompileError, MAX_NESTING};

/// `command = identifier arguments (";" / block)`
#[derive(Debug, Clone)]
pub(crate) struct Command {
    pub(crate) name: String,
    pub(crate) pos: Pos,
    pub(crate) args: Vec<Argument>,
    pub(crate) tests: Vec<Test>,
    /// Whether the tests were written as a parenthesised test-list.
    pub(crate) test_list: bool,
    pub(crate) block: Option<Vec<Command>>,
}

/// `test = identifier arguments`
#[derive(Debug, Clone)]
pub(crate) struct Test {
    pub(crate) name: String,
    pub(crate) pos: Pos,
    pub(crate) args: Vec<Argument>,
    pub(crate) tests: Vec<Test>,
    pub(crate) test_list: bool,
}

/// `argument = string-list / number / tag`
#[derive(Debug, Clone)]
pub(crate) enum Argument {
    Tag(String, Pos),
    Number(u64, Pos),
    /// A single string (`list == false`) or a bracketed string list.
    Strings { values: Vec<String>, list: bool, pos: Pos },
}

impl Argument {
    pub(crate) fn pos(&self) -> Pos {
        match self {
            Argument::Tag(_, pos) | Argument::Number(_, pos) | Argument::Strings { pos, .. } => *pos,
        }
    }
}

/// Parses a whole script (`start = commands`).
///
/// # Errors
/// The first syntax error, with its position.
pub(crate) fn parse(tokens: &[Token]) -> Result<Vec<Command>, CompileError> {
    let mut parser = Parser { tokens, at: 0 };
    let commands = parser.commands(0)?;
    if let Some(token) = parser.peek() {
        return Err(error(token.pos, format!("unexpected {}", token.kind.describe())));
    }
    Ok(commands)
}

fn error(pos: Pos, message: impl Into<String>) -> CompileError {
    CompileError { line: pos.line, column: pos.column, message: message.into() }
}

struct Parser<'t> {
    tokens: &'t [Token],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<&Token> {
        let token = self.tokens.get(self.at);
        self.at += 1;
        token
    }

    fn end_pos(&self) -> Pos {
        self.tokens.last().map_or(Pos { line: 1, column: 1 }, |t| t.pos)
    }

    fn commands(&mut self, depth: usize) -> Result<Vec<Command>, CompileError> {
        let mut commands = Vec::new();
        while let Some(token) = self.peek() {
            if token.kind == TokenKind::RightBrace {
                break;
            }
            commands.push(self.command(depth)?);
        }
        Ok(commands)
    }

    fn command(&mut self, depth: usize) -> Result<Command, CompileError> {
        let token = self.next().cloned().ok_or_else(|| error(self.end_pos(), "expected a command"))?;
        let TokenKind::Identifier(name) = token.kind else {
            return Err(error(token.pos, format!("expected a command, found {}", token.kind.describe())));
        };
        let (args, tests, test_list) = self.arguments(depth)?;
        let block = match self.next().cloned() {
            Some(Token { kind: TokenKind::Semicolon, .. }) => None,
            Some(Token { kind: TokenKind::LeftBrace, pos }) => {
                if depth + 1 > MAX_NESTING {
                    return Err(error(pos, format!("blocks nested deeper than {MAX_NESTING} levels")));
                }
                let block = self.commands(depth + 1)?;
                match self.next() {
                    Some(Token { kind: TokenKind::RightBrace, .. }) => Some(block),
                    _ => return Err(error(pos, "missing `}` to close this block")),
                }
            }
            Some(other) => {
                return Err(error(
                    other.pos,
                    format!("missing `;` after `{name}` (found {})", other.kind.describe()),
                ));
            }
            None => return Err(error(self.end_pos(), format!("missing `;` after `{name}`"))),
        };
        Ok(Command { name, pos: token.pos, args, tests, test_list, block })
    }

    /// `arguments = *argument [ test / test-list ]`
    fn arguments(&mut self, depth: usize) -> Result<(Vec<Argument>, Vec<Test>, bool), CompileError> {
        let mut args = Vec::new();
        while let Some(token) = self.peek().cloned() {
            match token.kind {
                TokenKind::Tag(tag) => {
                    self.at += 1;
                    args.push(Argument::Tag(tag, token.pos));
                }
                TokenKind::Number(n) => {
                    self.at += 1;
                    args.push(Argument::Number(n, token.pos));
                }
                TokenKind::String(s) => {
                    self.at += 1;
                    args.push(Argument::Strings { values: vec![s], list: false, pos: token.pos });
                }
                TokenKind::LeftBracket => {
                    self.at += 1;
                    args.push(self.string_list(token.pos)?);
                }
                _ => break,
            }
        }
        let next = self.peek().cloned();
        match next.map(|t| (t.kind, t.pos)) {
            Some((TokenKind::Identifier(_), pos)) => {
                if depth + 1 > MAX_NESTING {
                    return Err(error(pos, format!("tests nested deeper than {MAX_NESTING} levels")));
                }
                Ok((args, vec![self.test(depth + 1)?], false))
            }
            Some((TokenKind::LeftParen, pos)) => {
                if depth + 1 > MAX_NESTING {
                    return Err(error(pos, format!("tests nested deeper than {MAX_NESTING} levels")));
                }
                self.at += 1;
                let mut tests = vec![self.test(depth + 1)?];
                loop {
                    match self.next().cloned() {
                        Some(Token { kind: TokenKind::Comma, .. }) => tests.push(self.test(depth + 1)?),
                        Some(Token { kind: TokenKind::RightParen, .. }) => break,
                        Some(other) => {
                            return Err(error(
                                other.pos,
                                format!("expected `,` or `)` in test list, found {}", other.kind.describe()),
                            ));
                        }
                        None => return Err(error(pos, "unterminated test list (missing `)`)")),
                    }
                }
                Ok((args, tests, true))
            }
            _ => Ok((args, Vec::new(), false)),
        }
    }

    fn test(&mut self, depth: usize) -> Result<Test, CompileError> {
        let token = self.next().cloned().ok_or_else(|| error(self.end_pos(), "expected a test"))?;
        let TokenKind::Identifier(name) = token.kind else {
            return Err(error(token.pos, format!("expected a test, found {}", token.kind.describe())));
        };
        let (args, tests, test_list) = self.arguments(depth)?;
        Ok(Test { name, pos: token.pos, args, tests, test_list })
    }

    /// `string-list = "[" string *("," string) "]" / string`
    fn string_list(&mut self, pos: Pos) -> Result<Argument, CompileError> {
        let mut values = Vec::new();
        loop {
            match self.next().cloned() {
                Some(Token { kind: TokenKind::String(s), .. }) => values.push(s),
                Some(other) => {
                    return Err(error(
                        other.pos,
                        format!("expected a string in string list, found {}", other.kind.describe()),
                    ));
                }
                None => return Err(error(pos, "unterminated string list (missing `]`)")),
            }
            match self.next().cloned() {
                Some(Token { kind: TokenKind::Comma, .. }) => {}
                Some(Token { kind: TokenKind::RightBracket, .. }) => break,
                Some(other) => {
                    return Err(error(
                        other.pos,
                        format!("expected `,` or `]` in string list, found {}", other.kind.describe()),
                    ));
                }
                None => return Err(error(pos, "unterminated string list (missing `]`)")),
            }
        }
        Ok(Argument::Strings { values, list: true, pos })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexer::tokenize;

    fn parse_str(src: &str) -> Result<Vec<Command>, CompileError> {
        parse(&tokenize(src)?)
    }

    #[test]
    fn nested_structure() {
        let cmds = parse_str(
            r#"if anyof (not exists ["From","Date"], header :contains "x" "y") { keep; } else { discard; }"#,
        )
        .unwrap();
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[0].tests[0].name, "anyof");
        assert_eq!(cmds[0].tests[0].tests.len(), 2);
        assert_eq!(cmds[1].name, "else");
    }

    #[test]
    fn missing_semicolon_position() {
        let err = parse_str("keep;\n  discard }").unwrap_err();
        assert_eq!((err.line, err.column), (2, 11));
        assert!(err.message.contains("missing `;` after `discard` (found `}`)"), "{}", err.message);
        let err = parse_str("keep;\n}").unwrap_err();
        assert_eq!((err.line, err.column, err.message.as_str()), (2, 1, "unexpected `}`"));
        let err = parse_str("keep;\nstop").unwrap_err();
        assert_eq!((err.line, err.column), (2, 1));
        assert!(err.message.contains("missing `;`"), "{}", err.message);
    }

    #[test]
    fn depth_is_bounded() {
        let src = format!("{}keep;{}", "if true {".repeat(MAX_NESTING + 5), "}".repeat(MAX_NESTING + 5));
        assert!(parse_str(&src).unwrap_err().message.contains("nested"));
        let src = format!("if {}true{} {{}}", "not ".repeat(MAX_NESTING + 5), "");
        assert!(parse_str(&src).unwrap_err().message.contains("nested"));
    }
}

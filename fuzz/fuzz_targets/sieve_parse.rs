//! The Sieve compiler on arbitrary input, and the interpreter on whatever
//! compiles: no panic, compile errors carry a position inside the script,
//! and execution always ends in at least one action, falling back to keep on
//! a runtime error (filtering never loses mail).
//!
//! Input is used two ways, chosen by the first byte: as raw (lossy UTF-8)
//! script text, and mapped byte by byte onto Sieve tokens, so that the
//! fuzzer reaches the checker and interpreter instead of the lexer's first
//! error (the alphabet mapping of smtp-proto's fuzz target).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pobox_sieve::{Capabilities, Envelope, Limits, Message, compile, execute};

const MESSAGE: &[u8] = b"From: \"Coyote\" <coyote@desert.example.org>\r\n\
To: roadrunner+birdseed@acme.example.com, friends: a@x.example;\r\n\
Subject: =?utf-8?B?w6kgcHJlc2VudA==?= for\r\n you\r\n\
Content-Type: multipart/mixed; boundary=b\r\n\
\r\n\
--b\r\n\
Content-Type: text/plain; charset=iso-8859-1\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
anvil caf=E9\r\n\
--b--\r\n";

const TOKENS: &[&str] = &[
    "require", "if", "elsif", "else", "stop", "keep", "discard", "fileinto", "redirect", "reject",
    "ereject", "vacation", "set", "setflag", "addflag", "removeflag", "address", "header",
    "envelope", "exists", "size", "allof", "anyof", "not", "true", "false", "body", "string",
    "hasflag", ":is", ":contains", ":matches", ":comparator", ":all", ":localpart", ":domain",
    ":user", ":detail", ":over", ":under", ":copy", ":flags", ":raw", ":text", ":content",
    ":lower", ":upper", ":lowerfirst", ":upperfirst", ":length", ":quotewildcard", ":days",
    ":subject", ":from", ":addresses", ":mime", ":handle",
    "[\"fileinto\",\"reject\",\"ereject\",\"envelope\",\"body\",\"variables\",\"subaddress\",\"copy\",\"imap4flags\",\"vacation\"]",
    "\"from\"", "\"to\"", "\"subject\"", "\"*\"", "\"*@*\"", "\"?\"", "\"\\\\*\"", "\"${1}\"", "\"${0}\"",
    "\"${a}\"", "\"${a}${a}${a}\"", "\"a\"", "\"\"", "\"i;octet\"", "\"i;ascii-casemap\"",
    "\"a@example.com\"", "\"text\"", "[", "]", "(", ")", "{", "}", ",", ";", "0", "1", "1K", "1M",
    "text:\n..x\n.\n", "#c\n", "/* c */", "\n",
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let source = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        rest.iter().map(|&b| TOKENS[usize::from(b) % TOKENS.len()]).collect::<Vec<_>>().join(" ")
    };
    let caps = Capabilities { redirect: mode & 2 == 0, vacation: mode & 4 == 0 };
    match compile(&source, &caps) {
        Ok(script) => {
            let env = Envelope {
                from: if mode & 8 == 0 { "coyote@desert.example.org" } else { "" },
                to: "roadrunner+birdseed@acme.example.com",
                auth: None,
            };
            let limits = Limits { max_steps: 2_000, max_variable_len: 256, max_expansion_len: 1024, ..Limits::default() };
            let outcome = execute(&[&script, &script], &env, &Message::new(MESSAGE), &limits);
            assert!(!outcome.actions.is_empty());
            if !outcome.errors.is_empty() {
                assert!(outcome.keeps());
            }
        }
        Err(errors) => {
            let lines = source.split('\n').count();
            for error in errors.errors() {
                assert!(error.line >= 1 && error.line <= lines, "{error}");
                assert!(error.column >= 1);
            }
        }
    }
});

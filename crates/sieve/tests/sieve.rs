//! Black-box tests of pobox-sieve through its public API, built from the
//! RFCs' own examples (RFC 5228, 5229, 5173, 5233, 5429, 3894, 5230, 5232),
//! plus the checker's messages, the limits, and garbage input.

use pobox_sieve::{
    Action, Capabilities, CompileErrors, Envelope, Limits, Message, Outcome, RuntimeError, Script, compile,
    execute,
};

const ALL: Capabilities = Capabilities { redirect: true, vacation: true };

const MSG: &str = "\
Return-Path: <coyote@desert.example.org>\r
Date: Tue, 1 Apr 1997 09:06:31 -0800 (PST)\r
From: coyote@desert.example.org\r
To: roadrunner@acme.example.com\r
Cc: \"Me\" <me@example.com>\r
Subject: I have a present for you\r
X-Caffeine: C8H10N4O2\r
\r
Look, I'm sorry about the whole anvil thing, and I really\r
didn't mean to try and drop it on you from the top of the\r
cliff.  I want to try to make it up to you.  I've got some\r
great birdseed over here at my place--top of the line\r
stuff--and if you come by, I'll have it all wrapped up\r
for you.  I'm really sorry for all the problems I've caused\r
for you over the years, but I know we can work this out.\r
--\r
Wile E. Coyote   \"Super Genius\"   coyote@desert.example.org\r
";

const ENV: Envelope<'static> =
    Envelope { from: "coyote@desert.example.org", to: "roadrunner+birdseed@acme.example.com", auth: None };

fn script(source: &str) -> Script {
    compile(source, &ALL).unwrap_or_else(|e| panic!("script does not compile:\n{e}\n---\n{source}"))
}

fn run_with(source: &str, msg: &str, env: &Envelope<'_>) -> Outcome {
    execute(&[&script(source)], env, &Message::new(msg.as_bytes()), &Limits::default())
}

fn run(source: &str) -> Outcome {
    run_with(source, MSG, &ENV)
}

fn actions(source: &str) -> Vec<Action> {
    let outcome = run(source);
    assert!(outcome.errors.is_empty(), "unexpected runtime errors: {:?}", outcome.errors);
    outcome.actions
}

fn keep() -> Action {
    Action::Keep { flags: Vec::new() }
}

fn fileinto(mailbox: &str) -> Action {
    Action::FileInto { mailbox: mailbox.into(), copy: false, flags: Vec::new() }
}

fn compile_error(source: &str) -> CompileErrors {
    match compile(source, &ALL) {
        Ok(_) => panic!("compiled but should not:\n{source}"),
        Err(e) => e,
    }
}

/// Asserts the first error is at `line:col` and mentions `needle`.
fn assert_error(source: &str, line: usize, column: usize, needle: &str) {
    let errors = compile_error(source);
    let first = errors.first();
    assert_eq!((first.line, first.column), (line, column), "{errors}");
    assert!(first.message.contains(needle), "{first} does not mention {needle:?}");
    assert!(first.to_string().starts_with(&format!("{line}:{column}: ")));
}

// ---------------------------------------------------------------- actions

#[test]
fn implicit_keep_when_nothing_happens() {
    // RFC 5228 §2.10.2: an empty script keeps.
    assert_eq!(actions(""), [keep()]);
    assert_eq!(actions("# only a comment\n/* and another */"), [keep()]);
    assert_eq!(execute(&[], &ENV, &Message::new(MSG.as_bytes()), &Limits::default()).actions, [keep()]);
}

#[test]
fn keep_rfc5228_4_3() {
    // RFC 5228 §4.3: the two scripts are equivalent.
    let a = "if size :under 1M { keep; } else { discard; }";
    let b = "if not size :under 1M { discard; }";
    assert_eq!(actions(a), [keep()]);
    assert_eq!(actions(b), [keep()]);
    let big = format!("Subject: big\r\n\r\n{}", "x".repeat(1024 * 1024 + 1));
    assert_eq!(run_with(a, &big, &ENV).actions, [Action::Discard]);
    assert_eq!(run_with(b, &big, &ENV).actions, [Action::Discard]);
}

#[test]
fn fileinto_rfc5228_4_1() {
    let s = r#"require "fileinto";
        if header :contains ["from"] "coyote" {
            fileinto "INBOX.harassment";
        }"#;
    assert_eq!(actions(s), [fileinto("INBOX.harassment")]);
}

#[test]
fn redirect_rfc5228_4_2() {
    let s = r#"if exists "x-caffeine" { redirect "bart@example.com"; }"#;
    assert_eq!(actions(s), [Action::Redirect { address: "bart@example.com".into(), copy: false }]);
}

#[test]
fn discard_rfc5228_4_4() {
    let s = r#"if header :contains ["from"] ["coyote@desert"] { discard; }"#;
    assert_eq!(actions(s), [Action::Discard]);
}

#[test]
fn stop_rfc5228_3_3() {
    let s = r#"require "fileinto"; stop; fileinto "never";"#;
    assert_eq!(actions(s), [keep()]);
    let s = r#"require "fileinto"; fileinto "a"; stop; fileinto "b";"#;
    assert_eq!(actions(s), [fileinto("a")]);
}

#[test]
fn if_elsif_else_rfc5228_3_1() {
    let s = r#"require "fileinto";
        if header :contains "from" "roadrunner" {
            discard;
        } elsif header :contains ["subject"] ["$$$"] {
            discard;
        } else {
            fileinto "INBOX";
        }"#;
    assert_eq!(actions(s), [fileinto("INBOX")]);
}

#[test]
fn reject_rfc5429() {
    let s = "require [\"reject\"];\r\nif size :over 100 {\r\n   reject text:\r\nYour message is too big.  If you want to send me a big attachment,\r\nput it on a public web site and send me a URL.\r\n.\r\n;\r\n}\r\n";
    assert_eq!(
        actions(s),
        [Action::Reject {
            reason: "Your message is too big.  If you want to send me a big attachment,\r\nput it on a public web site and send me a URL.\r\n".into()
        }]
    );
}

#[test]
fn ereject_rfc5429() {
    let s = r#"require "ereject";
        if address :domain :is "from" "desert.example.org" {
            ereject "I no longer accept mail from this domain";
        }"#;
    assert_eq!(actions(s), [Action::Ereject { reason: "I no longer accept mail from this domain".into() }]);
}

#[test]
fn copy_rfc3894() {
    let s = r#"require ["copy", "fileinto"];
        fileinto :copy "incoming";
        redirect :copy "archive@example.net";"#;
    assert_eq!(
        actions(s),
        [
            Action::FileInto { mailbox: "incoming".into(), copy: true, flags: vec![] },
            Action::Redirect { address: "archive@example.net".into(), copy: true },
            keep(),
        ]
    );
}

#[test]
fn vacation_rfc5230() {
    let s = r#"require "vacation";
        if header :contains "subject" "cyrus" {
            vacation "I'm out -- send mail to cyrus-bugs";
        } else {
            vacation :days 23 :addresses ["tjs@example.edu", "ts4z@landru.example.edu"]
                "I'm away until October 19.";
        }"#;
    let env = Envelope { to: "me@example.com", ..ENV };
    let outcome = run_with(s, MSG, &env);
    let [Action::Vacation(v), Action::Keep { .. }] = outcome.actions.as_slice() else {
        panic!("{:?}", outcome.actions)
    };
    assert_eq!(v.to, "coyote@desert.example.org");
    assert_eq!(v.days, 23);
    assert_eq!(v.reason, "I'm away until October 19.");
    assert_eq!(v.addresses, ["tjs@example.edu", "ts4z@landru.example.edu"]);
    assert_eq!(v.handle.len(), 16);
    // What the reply needs from the original: the subject (for "Auto: ..."),
    // and Message-ID/References, absent here.
    assert_eq!(v.original_subject.as_deref(), Some("I have a present for you"));
    assert_eq!(v.message_id, None);
    let with_id = MSG.replacen("X-Caffeine", "Message-ID: <1@desert.example.org>\r\nSubject: ignored second\r\nX-Caffeine", 1);
    let outcome = run_with(s, &with_id, &env);
    let Action::Vacation(v) = &outcome.actions[0] else { panic!("{:?}", outcome.actions) };
    assert_eq!(v.message_id.as_deref(), Some("<1@desert.example.org>"));
    assert_eq!(v.original_subject.as_deref(), Some("I have a present for you"), "the first Subject counts");
    // RFC 5230 §4.5: not addressed to me (To/Cc) => no reply.
    let env = Envelope { to: "someone-else@example.com", ..ENV };
    assert_eq!(run_with(s, MSG, &env).actions, [keep()]);
    // §4.6: lists and auto-submitted mail get no reply; nor does <>.
    let env = Envelope { to: "me@example.com", ..ENV };
    let listy = MSG.replacen("X-Caffeine", "List-Id: <x.example.org>\r\nX-Caffeine", 1);
    assert_eq!(run_with(s, &listy, &env).actions, [keep()]);
    let auto = MSG.replacen("X-Caffeine", "Auto-Submitted: auto-replied\r\nX-Caffeine", 1);
    assert_eq!(run_with(s, &auto, &env).actions, [keep()]);
    let bounce = Envelope { from: "", to: "me@example.com", auth: None };
    assert_eq!(run_with(s, MSG, &bounce).actions, [keep()]);
}

#[test]
fn imap4flags_are_carried_rfc5232() {
    let s = r#"require ["imap4flags", "fileinto"];
        fileinto :flags "\\Deleted" "INBOX.From Boss";
        addflag "\\Seen";
        keep :flags ["\\Answered", "$Label1"];"#;
    assert_eq!(
        actions(s),
        [
            Action::FileInto { mailbox: "INBOX.From Boss".into(), copy: false, flags: vec!["\\Deleted".into()] },
            Action::Keep { flags: vec!["\\Answered".into(), "$Label1".into()] },
        ]
    );
    let s = r#"require "imap4flags"; setflag "\\Seen $x"; removeflag "$x";
        if hasflag :is "\\seen" { keep; }"#;
    assert_eq!(actions(s), [Action::Keep { flags: vec!["\\Seen".into()] }]);
}

// ---------------------------------------------------- action interactions

#[test]
fn duplicate_actions_are_one_rfc5228_2_10_3() {
    let s = r#"require "fileinto"; fileinto "A"; fileinto "A"; fileinto "B"; keep; keep;"#;
    assert_eq!(actions(s), [fileinto("A"), fileinto("B"), keep()]);
    let s = r#"redirect "x@example.com"; redirect "X@example.com";"#;
    assert_eq!(actions(s), [Action::Redirect { address: "x@example.com".into(), copy: false }]);
}

#[test]
fn discard_then_keep_keeps() {
    assert_eq!(actions("discard; keep;"), [keep()]);
    assert_eq!(actions("keep; discard;"), [keep()]);
    assert_eq!(actions(r#"require "fileinto"; discard; fileinto "x";"#), [fileinto("x")]);
}

#[test]
fn reject_with_keep_is_a_runtime_error_rfc5429_2_3() {
    for s in [
        r#"require "reject"; reject "no"; keep;"#,
        r#"require ["reject", "fileinto"]; fileinto "x"; reject "no";"#,
        r#"require ["reject", "ereject"]; reject "no"; ereject "no";"#,
        r#"require ["reject"]; redirect "a@example.com"; reject "no";"#,
    ] {
        let outcome = run(s);
        assert_eq!(outcome.actions, [keep()], "{s}");
        assert!(matches!(outcome.errors[0].error, RuntimeError::ActionConflict(_)), "{s}");
    }
    // Reject with discard is fine: nothing is delivered either way.
    assert_eq!(actions(r#"require "reject"; discard; reject "no";"#), [Action::Reject { reason: "no".into() }]);
}

// ------------------------------------------------------------------ tests

#[test]
fn address_test_rfc5228_5_1() {
    assert_eq!(actions(r#"if address :is :all "from" "coyote@desert.example.org" { discard; }"#), [Action::Discard]);
    assert_eq!(actions(r#"if address :localpart "from" "COYOTE" { discard; }"#), [Action::Discard]);
    assert_eq!(actions(r#"if address :domain :is "cc" "example.com" { discard; }"#), [Action::Discard]);
    assert_eq!(actions(r#"if address :domain :is "cc" "example.org" { discard; }"#), [keep()]);
}

#[test]
fn allof_anyof_not_true_false_rfc5228_5_2_to_5_10() {
    let cases = [
        ("allof (false, false)", false),
        ("allof (false, true)", false),
        ("allof (true, true)", true),
        ("anyof (false, false)", false),
        ("anyof (false, true)", true),
        ("not false", true),
        ("not true", false),
        ("true", true),
        ("false", false),
        ("NOT anyof (false, allof (true, not false))", false),
    ];
    for (test, expected) in cases {
        let got = actions(&format!("if {test} {{ discard; }}")) == [Action::Discard];
        assert_eq!(got, expected, "{test}");
    }
}

#[test]
fn envelope_test_rfc5228_5_4() {
    let s = r#"require "envelope";
        if envelope :all :is "from" "coyote@desert.example.org" { discard; }"#;
    assert_eq!(actions(s), [Action::Discard]);
    // The null reverse-path matches the empty string, whatever the part.
    let s = r#"require "envelope"; if envelope :domain :is "from" "" { discard; }"#;
    let env = Envelope { from: "", ..ENV };
    assert_eq!(run_with(s, MSG, &env).actions, [Action::Discard]);
    let s = r#"require "envelope"; if envelope :is "auth" "coyote" { discard; }"#;
    let env = Envelope { auth: Some("coyote"), ..ENV };
    assert_eq!(run_with(s, MSG, &env).actions, [Action::Discard]);
    assert_eq!(run_with(s, MSG, &ENV).actions, [keep()]);
}

#[test]
fn exists_test_rfc5228_5_5() {
    assert_eq!(actions(r#"if exists ["From","Date"] { discard; }"#), [Action::Discard]);
    assert_eq!(actions(r#"if exists ["From","X-Nope"] { discard; }"#), [keep()]);
}

#[test]
fn header_test_rfc5228_5_7() {
    // §5.7: `:contains ""` is true exactly when the header exists.
    assert_eq!(actions(r#"if header :contains ["X-Caffeine"] [""] { discard; }"#), [Action::Discard]);
    assert_eq!(actions(r#"if header :contains ["X-Decaf"] [""] { discard; }"#), [keep()]);
    assert_eq!(actions(r#"if header :is "x-caffeine" "c8h10n4o2" { discard; }"#), [Action::Discard]);
    // §2.7.3 comparator i;octet is case-sensitive.
    assert_eq!(
        actions(r#"if header :comparator "i;octet" :contains "Subject" "PRESENT" { discard; }"#),
        [keep()]
    );
    assert_eq!(actions(r#"if header :matches "subject" "I ha?e * for you" { discard; }"#), [Action::Discard]);
}

#[test]
fn size_test_rfc5228_5_9() {
    let size = MSG.len();
    assert_eq!(actions(&format!("if size :over {} {{ discard; }}", size - 1)), [Action::Discard]);
    assert_eq!(actions(&format!("if size :over {size} {{ discard; }}")), [keep()]);
    assert_eq!(actions(&format!("if size :under {} {{ discard; }}", size + 1)), [Action::Discard]);
    assert_eq!(actions(&format!("if size :under {size} {{ discard; }}")), [keep()]);
    assert_eq!(actions("if size :over 10K { discard; }"), [keep()]);
    assert_eq!(actions("if size :under 1M { discard; }"), [Action::Discard]);
    assert_eq!(actions("if size :over 1G { discard; }"), [keep()]);
}

#[test]
fn rfc5228_section_9_example() {
    let s = r#"#
   # Example Sieve Filter
   # Declare any optional features or extension used by the script
   #
   require ["fileinto"];

   if header :is "Sender" "owner-ietf-mta-filters@imc.org"
           {
           fileinto "filter";  # move to "filter" mailbox
           }
   elsif address :DOMAIN :is ["From", "To"] "example.com"
           {
           keep;               # keep in "In" mailbox
           }
   elsif anyof (NOT address :all :contains
                  ["To", "Cc", "Bcc"] "me@example.com",
                header :matches "subject"
                  ["*make*money*fast*", "*university*dipl*mas*"])
           {
           fileinto "bulk";    # move to "bulk" mailbox
           }
   else
           {
           # Move all other (non-company) mail to "personal"
           # mailbox.
           fileinto "personal";
           }"#;
    assert_eq!(actions(s), [fileinto("personal")]);
    let spam = MSG.replace("I have a present for you", "Make MONEY fast!!");
    assert_eq!(run_with(s, &spam, &ENV).actions, [fileinto("bulk")]);
    let list = MSG.replace("X-Caffeine: C8H10N4O2", "Sender: owner-ietf-mta-filters@imc.org");
    assert_eq!(run_with(s, &list, &ENV).actions, [fileinto("filter")]);
}

#[test]
fn body_test_rfc5173() {
    let mime = "From: a@example.com\r\nTo: me@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nThe missile coordinates are secret. Caf=E9.\r\n--b1\r\nContent-Type: audio/mp3\r\nContent-Transfer-Encoding: base64\r\n\r\nSUQzBAAAAAAAI1RTU0UAAAAPAAADTGF2ZjU4Ljc2LjEwMAAAAAAAAAAAAAAA\r\n--b1--\r\n";
    let secrets = r#"require ["body", "fileinto"];
        if body :content "text" :contains ["missile", "coordinates"] {
            fileinto "secrets";
        }"#;
    assert_eq!(run_with(secrets, mime, &ENV).actions, [fileinto("secrets")]);
    let jukebox = r#"require ["body", "fileinto"];
        if body :content "audio/mp3" :contains "" { fileinto "jukebox"; }"#;
    assert_eq!(run_with(jukebox, mime, &ENV).actions, [fileinto("jukebox")]);
    assert_eq!(run(jukebox).actions, [keep()]);
    // :text searches decoded text (the QP =E9 is é in Latin-1).
    let text = r#"require "body"; if body :text :contains "Café" { discard; }"#;
    assert_eq!(run_with(text, mime, &ENV).actions, [Action::Discard]);
    // :raw searches undecoded bytes: the QP escape is there, the é is not.
    let raw = r#"require "body"; if body :raw :contains "Caf=E9" { discard; }"#;
    assert_eq!(run_with(raw, mime, &ENV).actions, [Action::Discard]);
    let raw_decoded = r#"require "body"; if body :raw :contains "Café" { discard; }"#;
    assert_eq!(run_with(raw_decoded, mime, &ENV).actions, [keep()]);
    // Plain (non-MIME) messages are text/plain.
    let plain = r#"require "body"; if body :contains "birdseed" { discard; }"#;
    assert_eq!(run(plain).actions, [Action::Discard]);
}

#[test]
fn subaddress_rfc5233() {
    let s = r#"require ["envelope", "subaddress", "fileinto"];
        if envelope :user "to" "postmaster" {
            fileinto "inbox.postmaster";
            stop;
        }
        if envelope :detail "to" "mta-filters" {
            fileinto "inbox.ietf-mta-filters";
        }
        if envelope :detail "to" "foo" {
            redirect "ken@example.net";
        }"#;
    let env = |to: &'static str| Envelope { from: "a@example.org", to, auth: None };
    assert_eq!(run_with(s, MSG, &env("postmaster+x@example.com")).actions, [fileinto("inbox.postmaster")]);
    assert_eq!(run_with(s, MSG, &env("ken+mta-filters@example.com")).actions, [fileinto("inbox.ietf-mta-filters")]);
    assert_eq!(
        run_with(s, MSG, &env("ken+foo@example.com")).actions,
        [Action::Redirect { address: "ken@example.net".into(), copy: false }]
    );
    assert_eq!(run_with(s, MSG, &env("ken@example.com")).actions, [keep()]);
    // §4: no separator means no detail: even `:matches "*"` fails; an empty
    // detail matches "".
    let star = r#"require ["envelope", "subaddress"]; if envelope :detail :matches "to" "*" { discard; }"#;
    assert_eq!(run_with(star, MSG, &env("ken@example.com")).actions, [keep()]);
    let empty = r#"require ["envelope", "subaddress"]; if envelope :detail :is "to" "" { discard; }"#;
    assert_eq!(run_with(empty, MSG, &env("ken+@example.com")).actions, [Action::Discard]);
    let user = r#"require "subaddress"; if address :user "to" "roadrunner" { discard; }"#;
    assert_eq!(run(user).actions, [Action::Discard]);
}

#[test]
fn variables_rfc5229() {
    // §3: names are case-insensitive; text: strings interpolate too.
    let s = r#"require ["variables", "fileinto"];
        set "honorific" "Mr";
        set "first_name" "Wile";
        set "last_name" "Coyote";
        set "vacation" text:
Dear ${HONORIFIC} ${last_name},
I'm out, please leave a message after the meep.
.
;
        if string :matches "${vacation}" "Dear Mr Coyote,?*I'm out, please leave a message after the meep.*" {
            fileinto "ok";
        }"#;
    assert_eq!(actions(s), [fileinto("ok")]);
    // §4.1 modifier examples.
    let s = r#"require ["variables", "fileinto"];
        set "a" "juMBlEd lETteRS";
        set :length "b" "${a}";                 if string "${b}" "15" { fileinto "length"; }
        set :lower "b" "${a}";                  if string :is "${b}" "jumbled letters" { fileinto "lower"; }
        set :upperfirst "b" "${a}";             if string :comparator "i;octet" "${b}" "JuMBlEd lETteRS" { fileinto "upperfirst"; }
        set :upperfirst :lower "b" "${a}";      if string :comparator "i;octet" "${b}" "Jumbled letters" { fileinto "both"; }
        set :quotewildcard "b" "Rock*";         if string :comparator "i;octet" "${b}" "Rock\\*" { fileinto "quoted"; }"#;
    assert_eq!(
        actions(s),
        [fileinto("length"), fileinto("lower"), fileinto("upperfirst"), fileinto("both"), fileinto("quoted")]
    );
    // §5: the string test example always succeeds.
    let s = r#"require "variables";
        set "state" "${state} pending";
        if string :matches " ${state} " "* pending *" { discard; }"#;
    assert_eq!(actions(s), [Action::Discard]);
    // Unknown variables expand to "", malformed references stay literal.
    let s = r#"require ["variables", "fileinto"]; fileinto "x${nope}y${bad-name}";"#;
    assert_eq!(actions(s), [fileinto("xy${bad-name}")]);
}

#[test]
fn match_variables_rfc5229_3_2() {
    let msg = "List-ID: Sieve discussion <sieve@ietf.example.org>\r\nSubject: [acme-users] [fwd] version 1.0 is out\r\nTo: coyote@ACME.Example.COM\r\n\r\n";
    let s = r#"require ["variables", "fileinto"];
        if header :matches "List-ID" "*<*@*" {
            fileinto "INBOX.lists.${2}"; stop;
        }"#;
    assert_eq!(run_with(s, msg, &ENV).actions, [fileinto("INBOX.lists.sieve")]);
    let s = r#"require ["variables", "fileinto"];
        if header :matches "Subject" "[*] *" {
            fileinto "INBOX.lists.${1}";
            fileinto "${2}";
        }"#;
    assert_eq!(run_with(s, msg, &ENV).actions, [fileinto("INBOX.lists.acme-users"), fileinto("[fwd] version 1.0 is out")]);
    let s = r#"require ["variables", "fileinto"];
        if address :matches ["To", "Cc"] ["coyote@**.com", "wile@**.com"] {
            fileinto "INBOX.business.${2}";
            fileinto "${0}|${1}|";
        }"#;
    assert_eq!(
        run_with(s, msg, &ENV).actions,
        [fileinto("INBOX.business.ACME.Example"), fileinto("coyote@ACME.Example.COM||")]
    );
    // A failed :matches leaves the match variables alone; :is never sets them.
    let s = r#"require ["variables", "fileinto"];
        if header :matches "Subject" "[*]*" { }
        if header :matches "Subject" "nothing*like*this" { }
        if header :is "Subject" "[acme-users] [fwd] version 1.0 is out" { }
        fileinto "${1}";"#;
    assert_eq!(run_with(s, msg, &ENV).actions, [fileinto("acme-users")]);
}

#[test]
fn escapes_in_matches() {
    let msg = "Subject: 50% off * today?\r\n\r\n";
    let s = r#"if header :matches "subject" "*\\* today\\?" { discard; }"#;
    assert_eq!(run_with(s, msg, &ENV).actions, [Action::Discard]);
    let s = r#"if header :matches "subject" "*\\* today\\!" { discard; }"#;
    assert_eq!(run_with(s, msg, &ENV).actions, [keep()]);
}

// -------------------------------------------------- header decoding, odd input

#[test]
fn folded_and_encoded_headers() {
    let msg = "Subject: =?ISO-8859-1?Q?Caf=E9?=\r\n =?UTF-8?B?IMOgIGxhIGNhcnRl?=\r\nX-Long: first\r\n\tsecond\r\n\r\nbody\r\n";
    assert_eq!(run_with(r#"if header :is "subject" "Café à la carte" { discard; }"#, msg, &ENV).actions, [Action::Discard]);
    assert_eq!(run_with(r#"if header :is "x-long" "first	second" { discard; }"#, msg, &ENV).actions, [Action::Discard]);
}

#[test]
fn eight_bit_junk_does_not_panic() {
    let mut msg = b"Subject: \xff\xfe junk \x80\x81 =?utf-8?B?\xff?=\r\nFrom: \xc3\x28 <\xff@\xfe>\r\n\r\n\xff\xff".to_vec();
    msg.extend(std::iter::repeat_n(0x80u8, 1000));
    let s = script(r#"require "body"; if anyof (header :contains "subject" "junk", address :all "from" "x", body :raw :contains "x") { discard; }"#);
    let outcome = execute(&[&s], &ENV, &Message::new(&msg), &Limits::default());
    assert_eq!(outcome.actions, [Action::Discard]);
}

#[test]
fn odd_address_headers() {
    let msg = "To: undisclosed-recipients:;\r\nCc: friends: a@x.example, \"B, C\" <b@y.example>;, (comment) d@z.example (more)\r\nFrom: <<<>>>\r\nBcc: \"unterminated\r\nReply-To: no-angle@bracket.example>\r\n\r\n";
    let check = |test: &str, expected: bool| {
        let outcome = run_with(&format!("if {test} {{ discard; }}"), msg, &ENV);
        assert_eq!(outcome.actions == [Action::Discard], expected, "{test}");
    };
    check(r#"address :all :matches "to" "*""#, false);
    check(r#"address :domain :is "cc" "y.example""#, true);
    check(r#"address :all :is "cc" "d@z.example""#, true);
    check(r#"address :localpart :is "cc" "friends""#, false);
    check(r#"address :domain :is "reply-to" "bracket.example""#, true);
    check(r#"address :all :contains "from" "@""#, false);
    check(r#"address :all :contains "bcc" "x""#, false);
}

// ------------------------------------------------------- checker messages

#[test]
fn checker_error_positions() {
    assert_error("if true {\n  frobnicate;\n}", 2, 3, "unknown command `frobnicate`");
    assert_error("keep\ndiscard;", 2, 1, "missing `;` after `keep`");
    assert_error("keep", 1, 1, "missing `;` after `keep`");
    assert_error("if frob { }", 1, 4, "unknown test `frob`");
    assert_error("fileinto \"x\";", 1, 1, "`fileinto` requires `require \"fileinto\";`");
    assert_error("if body :contains \"x\" {}", 1, 4, "requires `require \"body\";`");
    assert_error("require \"fileinto\";\nfileinto :copy \"x\";", 2, 10, "requires `require \"copy\";`");
    assert_error("if size :over \"1M\" { }", 1, 15, "must be a number");
    assert_error("if size 100 { }", 1, 4, "`size` needs `:over` or `:under`");
    assert_error("require \"fileinto\";\nfileinto [\"a\", \"b\"];", 2, 10, "single string");
    assert_error("if header :contains \"subject\" { }", 1, 4, "expects 2 positional argument");
    assert_error("if header :frob \"a\" \"b\" { }", 1, 11, "does not accept the tag `:frob`");
    assert_error("if header :is :contains \"a\" \"b\" { }", 1, 15, "more than one match type");
    assert_error("if header :comparator \"i;ascii-numeric\" \"a\" \"b\" {}", 1, 11, "not supported");
    assert_error("require \"nonsense\";", 1, 9, "unsupported extension \"nonsense\"");
    assert_error("keep;\nrequire \"fileinto\";", 2, 1, "`require` must come before");
    assert_error("elsif true { }", 1, 1, "without a preceding `if`");
    assert_error("if true keep;", 1, 9, "`true` takes no nested test (found `keep`; missing `,` or `{`?)");
    assert_error("if address \"subject\" \"x\" { }", 1, 12, "not a header that holds addresses");
    assert_error("require \"envelope\";\nif envelope \"date\" \"x\" { }", 2, 13, "unknown envelope part");
    assert_error("if header \"bad name\" \"x\" { }", 1, 11, "not a valid header field name");
    assert_error("require \"variables\";\nset \"1abc\" \"x\";", 2, 5, "not a valid variable name");
    assert_error("require \"variables\";\nset :lower :upper \"a\" \"x\";", 2, 12, "same precedence");
    assert_error("keep :copy;", 1, 6, "does not accept the tag `:copy`");
    assert_error("if true { keep;", 1, 9, "missing `}`");
    assert_error("if header \"a\" \"unterminated { }", 1, 15, "unterminated quoted string");
    assert_error("if anyof(true false) {}", 1, 15, "found `false`; missing `,`");
    assert_error("if anyof(true, false {}", 1, 22, "expected `,` or `)`");
    assert_error("redirect \"not an address\";", 1, 10, "not a valid address");
}

#[test]
fn redirect_and_vacation_need_a_relay() {
    let none = Capabilities::default();
    let err = compile("redirect \"a@example.com\";", &none).unwrap_err();
    assert_eq!(err.to_string(), "1:1: redirect needs an outbound relay ([relay] in the configuration)");
    let err = compile("require \"vacation\";\nvacation \"away\";", &none).unwrap_err();
    assert_eq!(err.first().to_string(), "1:9: vacation needs an outbound relay ([relay] in the configuration)");
    assert!(compile("redirect \"a@example.com\";", &ALL).is_ok());
}

#[test]
fn several_errors_are_reported() {
    let errors = compile_error("frob;\nif nope { }\nrequire \"fileinto\";\nkeep;");
    let lines: Vec<String> = errors.errors().iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 3, "{errors}");
    assert!(lines[0].starts_with("1:1: unknown command `frob`"));
    assert!(lines[1].starts_with("2:4: unknown test `nope`"));
    assert!(lines[2].starts_with("3:1: `require` must come before"));
    assert_eq!(errors.to_string().lines().count(), 3);
}

// ------------------------------------------------------------------ limits

#[test]
fn deep_nesting_does_not_compile() {
    let depth = pobox_sieve::MAX_NESTING + 1;
    let s = format!("{}keep;{}", "if true { ".repeat(depth), " }".repeat(depth));
    assert!(compile_error(&s).to_string().contains("nested deeper"));
    let s = format!("if {}true{} {{ }}", "anyof(".repeat(depth * 10), ")".repeat(depth * 10));
    assert!(compile_error(&s).to_string().contains("nested deeper"));
    let s = format!("if {}true {{ }}", "not ".repeat(100_000));
    assert!(compile_error(&s).to_string().contains("nested deeper"));
}

#[test]
fn a_script_that_runs_too_long_still_keeps() {
    // Base Sieve has no loops; the long-running script is a long one.
    let s = r#"require "fileinto"; fileinto :copy "never";"#.replace("fileinto :copy", "fileinto")
        + &"if header :contains \"subject\" \"never\" { discard; }\n".repeat(5000);
    let compiled = script(&s);
    let limits = Limits { max_steps: 1000, ..Limits::default() };
    let outcome = execute(&[&compiled], &ENV, &Message::new(MSG.as_bytes()), &limits);
    assert_eq!(outcome.actions, [keep()]);
    assert_eq!(outcome.errors[0].error, RuntimeError::StepLimit { limit: 1000 });
    assert!(outcome.errors[0].to_string().contains("step limit"));
}

#[test]
fn giant_string_expansion_is_bounded() {
    let mut s = String::from("require [\"variables\", \"fileinto\"];\nset \"a\" \"0123456789abcdef\";\n");
    for _ in 0..40 {
        s.push_str("set \"a\" \"${a}${a}${a}${a}\";\n");
    }
    s.push_str("set :length \"n\" \"${a}\";\nif string :is \"${n}\" \"4096\" { fileinto \"capped\"; }\n");
    assert_eq!(actions(&s), [fileinto("capped")]);
    // One string referring to a long variable 10,000 times: capped too.
    let mut wide = String::from("require [\"variables\", \"reject\"];\nset \"a\" \"");
    wide.push_str(&"x".repeat(4096));
    wide.push_str("\";\nreject \"");
    wide.push_str(&"${a}".repeat(10_000));
    wide.push_str("\";\n");
    let outcome = run(&wide);
    let [Action::Reject { reason }] = outcome.actions.as_slice() else { panic!("{:?}", outcome.errors) };
    assert_eq!(reason.len(), Limits::default().max_expansion_len);
}

#[test]
fn runtime_errors_still_keep() {
    // An invalid redirect target only known at run time.
    let s = r#"require "variables"; set "to" "not an address"; redirect "${to}";"#;
    let outcome = run(s);
    assert_eq!(outcome.actions, [keep()]);
    assert!(matches!(outcome.errors[0].error, RuntimeError::InvalidRedirect(_)));
    // Too many actions.
    let s = format!("require \"fileinto\";\n{}", (0..100).map(|i| format!("fileinto \"f{i}\";\n")).collect::<String>());
    let outcome = run(&s);
    assert_eq!(outcome.actions, [keep()]);
    assert!(matches!(outcome.errors[0].error, RuntimeError::TooManyActions { .. }));
    // Too many redirects.
    let s = (0..5).map(|i| format!("redirect \"r{i}@example.com\";\n")).collect::<String>();
    let outcome = run(&s);
    assert_eq!(outcome.actions, [keep()]);
    assert!(matches!(outcome.errors[0].error, RuntimeError::TooManyRedirects { limit: 4 }));
    // Too many variables.
    let s = format!("require \"variables\";\n{}", (0..200).map(|i| format!("set \"v{i}\" \"x\";\n")).collect::<String>());
    let outcome = run(&s);
    assert_eq!(outcome.actions, [keep()]);
    assert!(matches!(outcome.errors[0].error, RuntimeError::TooManyVariables { .. }));
}

// ------------------------------------------------------------------ chains

#[test]
fn chain_runs_next_script_only_while_keeping() {
    let before = script(r#"require ["fileinto", "copy"]; fileinto :copy "Archive"; stop; discard;"#);
    let user = script(r#"require "fileinto"; if header :contains "subject" "present" { fileinto "Junk"; }"#);
    let after = script(r#"require "fileinto"; fileinto "After";"#);
    let msg = Message::new(MSG.as_bytes());
    let limits = Limits::default();
    // `stop` ends the before script only; the user's script files into Junk,
    // which cancels the keep, so the after script does not run.
    let outcome = execute(&[&before, &user, &after], &ENV, &msg, &limits);
    assert_eq!(
        outcome.actions,
        [Action::FileInto { mailbox: "Archive".into(), copy: true, flags: vec![] }, fileinto("Junk")]
    );
    // A before script that discards ends the chain.
    let discard = script("discard;");
    assert_eq!(execute(&[&discard, &user], &ENV, &msg, &limits).actions, [Action::Discard]);
    // A user script that keeps hands over to the after script.
    let keeper = script("keep;");
    assert_eq!(execute(&[&keeper, &after], &ENV, &msg, &limits).actions, [fileinto("After")]);
    // A runtime error in the user's script: its actions are dropped, the
    // chain stops, the before script's side actions stay, and we keep.
    let broken = script(r#"require ["variables", "fileinto"]; fileinto "lost"; set "x" "bad"; redirect "${x}";"#);
    let outcome = execute(&[&before, &broken, &after], &ENV, &msg, &limits);
    assert_eq!(outcome.actions, [Action::FileInto { mailbox: "Archive".into(), copy: true, flags: vec![] }, keep()]);
    assert_eq!(outcome.errors.len(), 1);
    assert_eq!(outcome.errors[0].script, 1);
}

#[test]
fn script_is_send_sync_and_clone() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Script>();
}

// ------------------------------------------------------------ garbage input

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const VOCABULARY: &[&str] = &[
    "require", "if", "elsif", "else", "stop", "keep", "discard", "fileinto", "redirect", "reject", "ereject",
    "vacation", "set", "setflag", "addflag", "removeflag", "address", "header", "envelope", "exists", "size",
    "allof", "anyof", "not", "true", "false", "body", "string", "hasflag", ":is", ":contains", ":matches",
    ":comparator", ":all", ":localpart", ":domain", ":user", ":detail", ":over", ":under", ":copy", ":flags",
    ":raw", ":text", ":content", ":lower", ":upper", ":length", ":quotewildcard", ":days", ":subject", ":mime",
    "\"fileinto\"", "\"variables\"", "\"envelope\"", "\"body\"", "\"subaddress\"", "\"copy\"", "\"reject\"",
    "\"imap4flags\"", "\"vacation\"", "\"from\"", "\"to\"", "\"subject\"", "\"*\"", "\"${1}\"", "\"${a}\"",
    "\"i;octet\"", "\"a@example.com\"", "[", "]", "(", ")", "{", "}", ",", ";", "1", "10K", "1G", "text:\n.\n",
    "#c\n", "/* c */", "\n", " ",
];

const TESTS: &[&str] = &[
    "true", "false", "exists \"subject\"", "size :over 1K", "size :under 10",
    "header :contains \"subject\" \"present\"", "header :matches \"from\" \"*@*\"",
    "address :domain :is \"to\" \"acme.example.com\"", "address :detail \"to\" \"x\"",
    "envelope :user \"to\" \"roadrunner\"", "body :text :contains \"anvil\"", "body :raw :matches \"*\"",
    "string :is \"${1}\" \"\"", "hasflag \"\\\\Seen\"", "header :comparator \"i;octet\" :is \"x\" \"y\"",
];

const COMMANDS: &[&str] = &[
    "keep;", "discard;", "stop;", "fileinto \"a${1}\";", "fileinto :copy \"b\";", "redirect \"x@example.com\";",
    "redirect :copy \"${0}@example.com\";", "reject \"no\";", "ereject \"no ${a}\";", "set \"a\" \"${a}${a}x\";",
    "set :upper :length \"b\" \"${a}\";", "addflag \"\\\\Seen\";", "keep :flags \"$x\";",
    "vacation :days 3 :subject \"away\" \"gone\";",
];

fn gen_test(rng: &mut Rng, depth: u32) -> String {
    match rng.next() % 6 {
        0 if depth < 4 => format!("not {}", gen_test(rng, depth + 1)),
        1 if depth < 4 => {
            let n = 1 + rng.next() % 3;
            let tests: Vec<String> = (0..n).map(|_| gen_test(rng, depth + 1)).collect();
            format!("{} ({})", rng.pick(&["allof", "anyof"]), tests.join(", "))
        }
        _ => rng.pick(TESTS).to_owned(),
    }
}

fn gen_block(rng: &mut Rng, depth: u32) -> String {
    let mut out = String::new();
    for _ in 0..(rng.next() % 5) {
        if depth < 4 && rng.next().is_multiple_of(3) {
            out.push_str(&format!("if {} {{ {} }}", gen_test(rng, 0), gen_block(rng, depth + 1)));
            if rng.next().is_multiple_of(2) {
                out.push_str(&format!(" elsif {} {{ {} }}", gen_test(rng, 0), gen_block(rng, depth + 1)));
            }
            if rng.next().is_multiple_of(2) {
                out.push_str(&format!(" else {{ {} }}", gen_block(rng, depth + 1)));
            }
        } else {
            out.push_str(rng.pick(COMMANDS));
        }
        out.push('\n');
    }
    out
}

/// Damages a script: drops, duplicates or swaps a few characters.
fn mutate(rng: &mut Rng, source: &str) -> String {
    let mut chars: Vec<char> = source.chars().collect();
    for _ in 0..(1 + rng.next() % 3) {
        if chars.is_empty() {
            break;
        }
        let i = (rng.next() % chars.len() as u64) as usize;
        match rng.next() % 3 {
            0 => {
                chars.remove(i);
            }
            1 => chars.insert(i, chars[i]),
            _ => chars[i] = char::from_u32((rng.next() % 0x250) as u32).unwrap_or('?'),
        }
    }
    chars.into_iter().collect()
}

const PRELUDE: &str = "require [\"fileinto\", \"reject\", \"ereject\", \"envelope\", \"body\", \"variables\", \"subaddress\", \"copy\", \"imap4flags\", \"vacation\"];\n";

#[test]
fn random_garbage_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let limits = Limits { max_steps: 5000, ..Limits::default() };
    let msg = Message::new(MSG.as_bytes());
    let env = Envelope { to: "roadrunner@acme.example.com", ..ENV };
    let mut compiled = 0;
    for round in 0..3000 {
        let source = match round % 3 {
            // Structured: valid scripts, exercising the interpreter.
            0 => format!("{PRELUDE}{}", gen_block(&mut rng, 0)),
            // Structured then damaged: the checker's and parser's error paths.
            1 => {
                let valid = format!("{PRELUDE}{}", gen_block(&mut rng, 0));
                mutate(&mut rng, &valid)
            }
            // Token soup.
            _ => (0..(1 + rng.next() % 60)).map(|_| format!("{} ", rng.pick(VOCABULARY))).collect(),
        };
        if let Ok(script) = compile(&source, &ALL) {
            compiled += 1;
            let outcome = execute(&[&script, &script], &env, &msg, &limits);
            assert!(!outcome.actions.is_empty());
            // Filtering never loses mail by accident: no actions => error => keep.
            if !outcome.errors.is_empty() {
                assert!(outcome.keeps(), "{source}");
            }
        }
        // Byte soup, too.
        let bytes: Vec<u8> = (0..(rng.next() % 200)).map(|_| rng.next() as u8).collect();
        let _ = compile(&String::from_utf8_lossy(&bytes), &ALL);
    }
    // Keep the generator honest: much of its output must be valid Sieve.
    assert!(compiled > 1000, "only {compiled} random scripts compiled");
}

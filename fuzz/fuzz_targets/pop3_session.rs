//! Arbitrary input into the server session, with a maildrop and a login
//! that succeeds for one password: no panic, every reply is one or more
//! complete CRLF lines, and nothing is deleted unless QUIT was accepted in
//! TRANSACTION.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pobox_proto::line::{LineSplitter, Split};
use pobox_proto::pop3::maildrop::MessageMeta;
use pobox_proto::pop3::server::{
    Action, Credentials, Expire, LoginFailure, LoginGrant, ServerSession, SessionConfig,
    UpdateResult,
};

fuzz_target!(|data: &[u8]| {
    let mut session = ServerSession::new(SessionConfig {
        greeting: "ready".into(),
        secure: data.first().is_some_and(|b| b & 1 == 1),
        stls_available: true,
        plaintext_auth_allowed: data.first().is_some_and(|b| b & 2 == 2),
        apop_timestamp: Some("<1.2@x>".into()),
        expire: Expire::Never,
        expire_per_user: false,
        login_delay: (0, false),
        implementation: None,
    });
    let mut splitter = LineSplitter::new(pobox_proto::MAX_COMMAND_LINE);
    let mut rest = data.get(1..).unwrap_or_default();
    let mut closed = false;
    loop {
        while let Some(action) = session.poll_action() {
            match action {
                Action::Send(bytes) => assert!(bytes.ends_with(b"\r\n")),
                Action::Authenticate(c) => {
                    let ok = matches!(&c, Credentials::Password { password, .. } if password.as_bytes() == b"pw");
                    session.handle_login(if ok {
                        Ok(LoginGrant {
                            user: c.user().to_string(),
                            messages: vec![
                                MessageMeta { size: 10, uidl: "a".into() },
                                MessageMeta { size: 20, uidl: "b".into() },
                            ],
                            expire: Expire::Days(0),
                            login_delay: 0,
                        })
                    } else {
                        Err(LoginFailure::BadCredentials)
                    });
                }
                Action::SendMessage { index, .. } => assert!(index < 2),
                Action::StartTls => session.handle_tls_established(),
                Action::Update(deleted) => {
                    assert!(deleted.iter().all(|&i| i < 2));
                    session.handle_update_result(UpdateResult::Removed(deleted.len()));
                }
                Action::Close => closed = true,
            }
        }
        if closed || rest.is_empty() || !session.wants_input() {
            break;
        }
        match splitter.split(rest) {
            Split::Line { line, consumed } => {
                session.handle_line(line);
                rest = &rest[consumed..];
            }
            Split::TooLong { consumed, continued } => {
                if continued {
                    session.handle_garbage();
                } else {
                    session.handle_line_too_long();
                }
                rest = &rest[consumed..];
            }
            Split::NeedMoreData { consumed } => {
                if consumed == 0 {
                    break;
                }
                rest = &rest[consumed..];
            }
        }
    }
});

//! The proof that a user authenticated: [`Authenticated`].
//!
//! `pobox-auth` mints it when a credential checks out; `pobox-store` asks for
//! it in `pobox_store::Mailstore::open`, the call that opens a maildrop for a POP3
//! session. So "only an authenticated user opens a maildrop" is a fact the
//! compiler checks, not a convention the server keeps.
//!
//! Why a crate of its own: `pobox-auth` and `pobox-store` are leaves that do
//! not depend on each other (ARCHITECTURE.md). The type both need lives
//! here, below both, with no dependencies at all, so neither leaf learns the
//! other.
//!
//! # How the proof stays a proof
//!
//! The fields are private, so no struct literal builds one (checked below).
//! The only constructor, [`Authenticated::vouched_by_auth`], is public
//! because it must be (the minting crate is another crate), so it carries a
//! loud name and a fence: `clippy.toml` lists it in `disallowed-methods`,
//! and each legitimate minting site (pobox-auth's successful verification
//! paths) says `#[allow(clippy::disallowed_methods)]` with a comment. A new
//! call anywhere else fails `cargo clippy -- -D warnings`.
//!
//! Tests get `Authenticated::for_tests` behind the `test-util` feature,
//! which only `[dev-dependencies]` enable: a build without dev-dependencies
//! (every binary pobox ships) does not contain it, so a stray use outside
//! test code fails to compile there.
//!
//! ```compile_fail
//! // Fields are private: no proof without a constructor.
//! let proof = pobox_identity::Authenticated { user: "alice".into(), credential: pobox_identity::Credential::Password };
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

/// Proof that a user authenticated: the user name the check produced and
/// the credential that proved it.
///
/// Clone is allowed (the credential cache hands out a copy of a proof a
/// real verification minted); building one is not, outside the fenced
/// constructor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    user: String,
    credential: Credential,
}

/// Which of the user's credentials proved the login: what the login
/// history records, so "which device took my mail" has an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// The main password of the passwd-file line, or a secret derived from
    /// it (SCRAM, APOP).
    Password,
    /// The app password with this label (pobox-auth's `apppass`).
    AppPassword(String),
    /// An OAuth 2.0 bearer token (OAUTHBEARER, XOAUTH2) that the validator
    /// accepted and mapped to this user.
    BearerToken,
}

impl Credential {
    /// `password`, `oauth`, or the app password's label (pobox-auth refuses
    /// the labels `password` and `oauth`, so the three cannot be confused).
    #[must_use]
    pub fn label(&self) -> &str {
        match self {
            Credential::Password => "password",
            Credential::AppPassword(label) => label,
            Credential::BearerToken => "oauth",
        }
    }
}

impl Authenticated {
    /// Mints a proof. **Only pobox-auth's verifiers call this**, after the
    /// credential checked out; `clippy.toml` fences every other call.
    ///
    /// `user` is the name exactly as the user database holds it.
    #[must_use]
    pub fn vouched_by_auth(user: &str, credential: Credential) -> Self {
        Self {
            user: user.to_owned(),
            credential,
        }
    }

    /// A proof without a login, for tests (feature `test-util`, enabled
    /// only from `[dev-dependencies]`). Credential: [`Credential::Password`].
    #[cfg(feature = "test-util")]
    #[must_use]
    pub fn for_tests(user: &str) -> Self {
        Self {
            user: user.to_owned(),
            credential: Credential::Password,
        }
    }

    /// The authenticated user's name, exactly as the user database holds it.
    #[must_use]
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The credential that proved this login.
    #[must_use]
    pub fn credential(&self) -> &Credential {
        &self.credential
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // The constructor's own test is a minting site by definition.
    #[allow(clippy::disallowed_methods)]
    fn a_proof_names_its_user_and_credential() {
        let proof =
            Authenticated::vouched_by_auth("alice", Credential::AppPassword("phone".into()));
        assert_eq!(proof.user(), "alice");
        assert_eq!(proof.credential(), &Credential::AppPassword("phone".into()));
        assert_eq!(proof.credential().label(), "phone");
    }

    #[test]
    fn labels_are_what_the_login_history_records() {
        assert_eq!(Credential::Password.label(), "password");
        assert_eq!(Credential::BearerToken.label(), "oauth");
    }
}

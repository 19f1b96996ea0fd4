//! Authentication: proving who a client is, and logging in to Postgres servers.
//!
//! pgmux stands between two logins. Towards clients it plays the server: it checks a
//! SCRAM-SHA-256 ([`scram::ScramServer`]) or md5 ([`md5::verify`]) answer against a
//! [`ClientSecret`] derived once from the configured password. Towards Postgres it
//! plays the client ([`scram::ScramClient`], [`md5::md5_response`]) with the
//! configured server password, or with the ClientKey recovered from the client's own
//! SCRAM login.
//!
//! Everything here is pure logic on byte strings: framing the `Authentication*`,
//! `SASLInitialResponse` and `SASLResponse` messages belongs to the protocol and
//! session code. See the Postgres docs, "SASL Authentication" (section 54.3).

pub mod md5;
pub mod scram;

use crate::config::{Password, UserConfig};

/// Why an authentication exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The peer sent a message that does not follow RFC 5802 / the Postgres protocol.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The peer asked for something RFC 5802 allows and Postgres does not support:
    /// an authorization identity or a mandatory extension.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The proof or response did not match the secret.
    #[error("password authentication failed")]
    WrongPassword,
    /// The client picked a SASL mechanism pgmux does not offer.
    #[error("unsupported SASL mechanism: pgmux offers only SCRAM-SHA-256")]
    UnsupportedMechanism,
    /// The client could bind the exchange to TLS but believes pgmux cannot (gs2 flag
    /// `y`), while pgmux offered SCRAM-SHA-256-PLUS: someone between them may have
    /// removed it from the offer.
    #[error("SCRAM channel binding negotiation error: the client supports channel binding but thinks pgmux does not, and pgmux offered SCRAM-SHA-256-PLUS")]
    ChannelBindingNegotiation,
    /// The client's `tls-server-end-point` data is not the hash of pgmux's certificate:
    /// its TLS connection ends elsewhere.
    #[error("SCRAM channel binding check failed")]
    ChannelBindingCheck,
    /// The server could not prove it knows the password: it is not the server we meant.
    #[error("the server's SCRAM signature is wrong: it does not hold this password's verifier")]
    ServerSignatureMismatch,
    /// The server ended the exchange with `e=<reason>`.
    #[error("the server rejected SCRAM authentication: {0}")]
    ServerError(String),
    /// A configured `SCRAM-SHA-256$…` verifier could not be parsed.
    #[error("invalid SCRAM verifier ({0}); expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")]
    InvalidVerifier(&'static str),
    /// A step of the exchange was called twice, or before the one it follows.
    #[error("SCRAM exchange step out of order: {0}")]
    OutOfOrder(&'static str),
}

/// What pgmux holds per configured user to check client logins; derived once at
/// config load so that a login costs a few HMACs, never PBKDF2.
#[derive(Clone)]
pub struct ClientSecret {
    /// `None` when only an md5 hash was configured (or its verifier did not parse).
    pub scram: Option<scram::ScramSecret>,
    /// `"md5" + hex(md5(password + username))`; `None` when only a SCRAM verifier was
    /// configured.
    pub md5_hash: Option<String>,
}

impl ClientSecret {
    /// A plain password yields both secrets (SCRAM with a fresh random salt and 4096
    /// iterations, as Postgres does); a verifier or a hash yields only its own kind.
    /// A verifier that does not parse yields no SCRAM secret: config validation is
    /// the place to report it (with [`scram::ScramSecret::parse_verifier`]).
    pub fn from_config(user: &UserConfig) -> ClientSecret {
        match &user.password {
            Password::Plain(password) => ClientSecret {
                scram: Some(scram::ScramSecret::from_password(password)),
                md5_hash: Some(md5::md5_hash(password, &user.name)),
            },
            Password::ScramVerifier(verifier) => ClientSecret {
                scram: scram::ScramSecret::parse_verifier(verifier).ok(),
                md5_hash: None,
            },
            Password::Md5Hash(hash) => ClientSecret {
                scram: None,
                // Responses are compared as lowercase hex, as Postgres writes them.
                md5_hash: Some(hash.to_ascii_lowercase()),
            },
        }
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecret")
            .field("scram", &self.scram)
            .field("md5_hash", &self.md5_hash.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

/// Equality whose running time does not depend on where the inputs differ, for
/// proofs and responses (their lengths are public).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(password: Password) -> UserConfig {
        UserConfig {
            name: "app".into(),
            password,
            server_user: "app".into(),
            server_password: None,
            auth_method: crate::config::AuthMethod::ScramSha256,
        }
    }

    #[test]
    fn plain_password_gives_scram_and_md5_secrets() {
        let secret = ClientSecret::from_config(&user(Password::Plain("pw".into())));
        let scram = secret.scram.expect("scram secret");
        assert_eq!(scram.iterations, 4096);
        assert_eq!(scram.salt.len(), 16);
        assert_eq!(
            scram,
            scram::ScramSecret::with_salt("pw", &scram.salt, 4096)
        );
        assert_eq!(
            secret.md5_hash.as_deref(),
            Some(&*md5::md5_hash("pw", "app"))
        );
    }

    #[test]
    fn verifier_gives_only_scram_and_hash_gives_only_md5() {
        let verifier = postgres_protocol::password::scram_sha_256(b"pw");
        let secret = ClientSecret::from_config(&user(Password::ScramVerifier(verifier.clone())));
        assert_eq!(secret.scram.map(|s| s.to_verifier()), Some(verifier));
        assert!(secret.md5_hash.is_none());

        let hash = md5::md5_hash("pw", "app");
        let secret = ClientSecret::from_config(&user(Password::Md5Hash(hash.to_ascii_uppercase())));
        assert!(secret.scram.is_none());
        assert_eq!(secret.md5_hash, Some(hash));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let secret = ClientSecret::from_config(&user(Password::Plain("pw".into())));
        let shown = format!("{secret:?}");
        assert!(!shown.contains(&md5::md5_hash("pw", "app")));
        assert!(shown.contains("<secret>"));
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}

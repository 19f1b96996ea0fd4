//! Postgres' `md5` password method, towards clients and towards servers.
//!
//! The server stores `"md5" + hex(md5(password + username))` (the form found in
//! `pg_authid.rolpassword`). At login it sends a random 4-byte salt in
//! `AuthenticationMD5Password`; the client answers with a `PasswordMessage` holding
//! `"md5" + hex(md5(hex_part_of_stored_hash + salt))`. Knowing the stored hash is
//! therefore enough to log in, which is why pgmux can check clients and log in to
//! servers from a configured `md5…` hash alone. See the Postgres docs, "Password
//! Authentication" (section 20.5) and "Message Flow" (section 54.2.2).

use ::md5::{Digest, Md5};

/// The stored form of a password: `"md5" + hex(md5(password + user))`.
pub fn md5_hash(password: &str, user: &str) -> String {
    let mut md5 = Md5::new();
    md5.update(password.as_bytes());
    md5.update(user.as_bytes());
    prefixed_hex(&md5.finalize())
}

/// What a client sends for `salt` when the stored hash is `md5_hash`:
/// `"md5" + hex(md5(hex_part_of_hash + salt))`.
pub fn md5_response(md5_hash: &str, salt: [u8; 4]) -> String {
    let hex_part = md5_hash.strip_prefix("md5").unwrap_or(md5_hash);
    let mut md5 = Md5::new();
    md5.update(hex_part.as_bytes());
    md5.update(salt);
    prefixed_hex(&md5.finalize())
}

/// Whether `client_response` (the `PasswordMessage` payload, with or without its
/// terminating NUL) is the right answer for `salt`. Compares in constant time.
pub fn verify(md5_hash: &str, salt: [u8; 4], client_response: &[u8]) -> bool {
    let response = client_response
        .strip_suffix(&[0])
        .unwrap_or(client_response);
    let expected = md5_response(md5_hash, salt);
    super::constant_time_eq(expected.as_bytes(), response)
}

fn prefixed_hex(digest: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(3 + 2 * digest.len());
    out.push_str("md5");
    for byte in digest {
        out.push(HEX[usize::from(byte >> 4)] as char);
        out.push(HEX[usize::from(byte & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_md5_of_password_then_user() {
        // md5("secretpostgres")
        assert_eq!(
            md5_hash("secret", "postgres"),
            "md553f48b7c4b76a86ce72276c5755f217d"
        );
    }

    #[test]
    fn hash_matches_postgres_protocol() {
        for (password, user) in [("secret", "postgres"), ("", "u"), ("pä$$", "ünïcode")] {
            assert_eq!(
                md5_hash(password, user),
                postgres_protocol::password::md5(password.as_bytes(), user)
            );
        }
    }

    #[test]
    fn response_matches_what_tokio_postgres_sends() {
        let salt = [0x2a, 0x3d, 0x8f, 0xe0];
        let hash = md5_hash("password", "md5_user");
        let expected = postgres_protocol::authentication::md5_hash(b"md5_user", b"password", salt);
        assert_eq!(md5_response(&hash, salt), expected);
        assert_eq!(expected, "md562af4dd09bbb41884907a838a3233294");
    }

    #[test]
    fn verify_accepts_the_right_response_with_or_without_nul() {
        let salt = [1, 2, 3, 4];
        let hash = md5_hash("secret", "postgres");
        let response = md5_response(&hash, salt);
        assert!(verify(&hash, salt, response.as_bytes()));
        let mut with_nul = response.into_bytes();
        with_nul.push(0);
        assert!(verify(&hash, salt, &with_nul));
    }

    #[test]
    fn verify_rejects_wrong_password_wrong_salt_and_garbage() {
        let salt = [1, 2, 3, 4];
        let hash = md5_hash("secret", "postgres");
        let wrong = md5_response(&md5_hash("Secret", "postgres"), salt);
        assert!(!verify(&hash, salt, wrong.as_bytes()));
        let other_salt = md5_response(&hash, [4, 3, 2, 1]);
        assert!(!verify(&hash, salt, other_salt.as_bytes()));
        for garbage in [&b""[..], b"\0", b"md5", b"secret", &[0xff; 40]] {
            assert!(!verify(&hash, salt, garbage));
        }
        let truncated = md5_response(&hash, salt);
        assert!(!verify(&hash, salt, &truncated.as_bytes()[..34]));
    }
}

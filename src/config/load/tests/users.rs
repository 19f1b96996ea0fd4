//! `[[users]]`: passwords as pg_authid holds them, names, and login methods.

use super::*;

#[test]
fn passwords_are_told_apart_like_pg_authid() {
    let verifier = postgres_protocol::password::scram_sha_256(b"pw");
    let md5 = format!("md5{}", "0123456789abcdef".repeat(2));
    let config = load(&format!(
        r#"
[proxy]
auth_method = "md5"

[[users]]
name = "plain"
password = "pw"
server_user = "plain_upstream"

[[users]]
name = "scram"
password = "{verifier}"

[[users]]
name = "hashed"
password = "{md5}"
server_password = "upstream-pw"

[[users]]
name = "md5-lookalike"
password = "md5-not-a-hash"

[databases.app]
[[databases.app.shards]]
primary = "127.0.0.1:5432/app"
"#
    ));
    let plain = config.user("plain").unwrap();
    assert_eq!(plain.password, Password::Plain("pw".into()));
    assert_eq!(plain.server_user, "plain_upstream");
    assert_eq!(plain.server_password.as_deref(), Some("pw"));

    let scram = config.user("scram").unwrap();
    assert_eq!(scram.password, Password::ScramVerifier(verifier));
    assert_eq!(scram.server_user, "scram");
    assert_eq!(scram.server_password, None);

    let hashed = config.user("hashed").unwrap();
    assert_eq!(hashed.password, Password::Md5Hash(md5));
    assert_eq!(hashed.server_password.as_deref(), Some("upstream-pw"));

    let lookalike = config.user("md5-lookalike").unwrap();
    assert_eq!(lookalike.password, Password::Plain("md5-not-a-hash".into()));
}

#[test]
fn bad_secrets_are_refused() {
    let md5 = format!("md5{}", "0123456789abcdef".repeat(2));
    let errors = refused(&format!(
        r#"
[[users]]
name = "mangled"
password = "SCRAM-SHA-256$4096:c2FsdA==$notbase64!:alsonot"

[[users]]
name = "hashed"
password = "{md5}"

[[users]]
name = "empty"
password = ""

[[users]]
name = "nopassword"
"#
    ));
    assert_error(
        &errors,
        "users[0].password",
        "invalid SCRAM verifier (StoredKey is not 32 bytes of base64)",
    );
    assert_error(&errors, "users[1].password", "is an md5 hash");
    assert_error(&errors, "users[2].password", "is empty");
    assert_error(
        &errors,
        "users[3].password",
        "missing; this key is required",
    );
}

#[test]
fn user_names_are_unique() {
    let errors = refused(&format!(
        "{MINIMAL}\n[[users]]\nname = \"other\"\npassword = \"x\"\n\
         [[users]]\nname = \"app\"\npassword = \"y\"\n"
    ));
    assert_eq!(
        errors,
        vec!["users[2].name: user \"app\" is already defined at users[0]"]
    );
}

#[test]
fn a_user_may_log_in_by_a_method_of_its_own() {
    let md5 = format!("md5{}", "0123456789abcdef".repeat(2));
    let config = load(&format!(
        r#"
[[users]]
name = "default"
password = "pw"

[[users]]
name = "local"
password = "pw"
auth_method = "trust"

[[users]]
name = "legacy"
password = "{md5}"
server_password = "upstream-pw"
auth_method = "md5"

[databases.app]
[[databases.app.shards]]
primary = "127.0.0.1:5432/app"
"#
    ));
    assert_eq!(config.proxy.auth_method, AuthMethod::ScramSha256);
    let method = |name: &str| config.user(name).unwrap().auth_method;
    assert_eq!(method("default"), AuthMethod::ScramSha256);
    assert_eq!(method("local"), AuthMethod::Trust);
    assert_eq!(method("legacy"), AuthMethod::Md5);

    // An md5 hash cannot check a SCRAM login, whichever setting asks for one.
    let errors = refused(&format!(
        r#"
[proxy]
auth_method = "md5"

[[users]]
name = "hashed"
password = "{md5}"
auth_method = "scram-sha-256"

[[users]]
name = "typo"
password = "pw"
auth_method = "scram"
"#
    ));
    assert_error(&errors, "users[0].password", "this user's auth_method");
    assert_error(&errors, "users[1].auth_method", "scram");
}

use super::*;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

/// One full exchange; returns the ClientKey the server recovered.
fn exchange(secret: &ScramSecret, credential: UpstreamCredential) -> Result<[u8; 32], AuthError> {
    let mut server = ScramServer::new(secret.clone());
    let mut client = ScramClient::new(credential);
    let server_first = server.client_first(&client.client_first())?;
    let client_final = client.server_first(&server_first)?;
    let (server_final, client_key) = server.client_final(&client_final)?;
    client.server_final(&server_final)?;
    Ok(client_key)
}

fn password(p: &str) -> UpstreamCredential {
    UpstreamCredential::Password(p.to_owned())
}

/// A server that has answered a known client-first, and that message's nonce.
fn server_after_first(secret: &ScramSecret) -> (ScramServer, String) {
    let mut server = ScramServer::new(secret.clone());
    let server_first = server.client_first(b"n,,n=,r=clientnonce").unwrap();
    let server_first = String::from_utf8(server_first).unwrap();
    let nonce = server_first
        .strip_prefix("r=")
        .and_then(|s| s.split(',').next())
        .unwrap()
        .to_owned();
    (server, nonce)
}

#[test]
fn right_password_authenticates_both_ways() {
    let secret = ScramSecret::from_password("correct horse");
    let client_key = exchange(&secret, password("correct horse")).unwrap();
    assert_eq!(sha256(&client_key), secret.stored_key);
}

/// As Postgres and libpq do: a password is SASLprep'ed, so its NFKC form is the
/// same password (U+FF6F HALFWIDTH KATAKANA SMALL TU is U+30C3), and the other
/// side's verifier matches whichever form was typed.
#[test]
fn passwords_are_saslprepped() {
    let typed = "cha\u{ff6f}s";
    let normal = "cha\u{30c3}s";
    assert_eq!(&*prepare_password(typed), normal.as_bytes());
    let secret = ScramSecret::with_salt(typed, b"0123456789abcdef", 4096);
    assert_eq!(
        secret,
        ScramSecret::with_salt(normal, b"0123456789abcdef", 4096)
    );
    exchange(&secret, password(typed)).unwrap();
    exchange(&secret, password(normal)).unwrap();
    // A non-ASCII space maps to a space; a soft hyphen maps to nothing.
    assert_eq!(&*prepare_password("a\u{a0}b\u{ad}c"), b"a bc");
    // Not SASLprep-able (a prohibited character): the raw bytes, as in Postgres.
    assert_eq!(
        &*prepare_password("a\u{7}\u{e9}"),
        "a\u{7}\u{e9}".as_bytes()
    );
}

#[test]
fn wrong_password_is_refused() {
    let secret = ScramSecret::from_password("correct horse");
    let err = exchange(&secret, password("battery staple")).unwrap_err();
    assert!(matches!(err, AuthError::WrongPassword), "{err:?}");
}

#[test]
fn recovered_client_key_logs_in_to_a_server_with_the_same_verifier() {
    let secret = ScramSecret::from_password("pw");
    let client_key = exchange(&secret, password("pw")).unwrap();
    let reused = UpstreamCredential::ClientKey {
        client_key,
        server_key: secret.server_key,
    };
    assert_eq!(exchange(&secret, reused).unwrap(), client_key);
}

#[test]
fn recovered_client_key_fails_against_another_verifier() {
    let secret = ScramSecret::from_password("pw");
    let client_key = exchange(&secret, password("pw")).unwrap();
    let other = ScramSecret::from_password("pw"); // same password, other salt
    let reused = UpstreamCredential::ClientKey {
        client_key,
        server_key: secret.server_key,
    };
    assert!(matches!(
        exchange(&other, reused),
        Err(AuthError::WrongPassword)
    ));
}

#[test]
fn client_key_with_the_wrong_server_key_rejects_the_server() {
    let secret = ScramSecret::from_password("pw");
    let client_key = exchange(&secret, password("pw")).unwrap();
    let mismatched = UpstreamCredential::ClientKey {
        client_key,
        server_key: [0; 32],
    };
    assert!(matches!(
        exchange(&secret, mismatched),
        Err(AuthError::ServerSignatureMismatch)
    ));
}

#[test]
fn tokio_postgres_client_authenticates_against_scram_server() {
    for binding in [ChannelBinding::unsupported(), ChannelBinding::unrequested()] {
        let secret = ScramSecret::from_password("pä55 word");
        let mut server = ScramServer::new(secret);
        let mut client = ScramSha256::new(b"p\xc3\xa455 word", binding);
        let server_first = server.client_first(client.message()).unwrap();
        client.update(&server_first).unwrap();
        let (server_final, _) = server.client_final(client.message()).unwrap();
        client.finish(&server_final).unwrap();
    }
}

#[test]
fn tokio_postgres_client_with_wrong_password_is_refused() {
    let mut server = ScramServer::new(ScramSecret::from_password("pw"));
    let mut client = ScramSha256::new(b"wrong", ChannelBinding::unsupported());
    let server_first = server.client_first(client.message()).unwrap();
    client.update(&server_first).unwrap();
    assert!(matches!(
        server.client_final(client.message()),
        Err(AuthError::WrongPassword)
    ));
}

#[test]
fn channel_binding_data_without_plus_is_refused() {
    let mut server = ScramServer::new(ScramSecret::from_password("pw"));
    assert_eq!(server.mechanisms(), [MECHANISM]);
    assert!(matches!(
        server.select(MECHANISM_PLUS.as_bytes()),
        Err(AuthError::UnsupportedMechanism)
    ));
    server.select(MECHANISM.as_bytes()).unwrap();
    let client = ScramSha256::new(b"pw", ChannelBinding::tls_server_end_point(vec![1; 32]));
    assert!(matches!(
        server.client_first(client.message()),
        Err(AuthError::Malformed(_))
    ));
}

/// A server over TLS whose certificate hashes to `end_point`, with `mechanism` chosen.
fn bound_server(secret: &ScramSecret, end_point: &[u8], mechanism: &str) -> ScramServer {
    let mut server = ScramServer::with_end_point(secret.clone(), Some(Arc::from(end_point)));
    assert_eq!(server.mechanisms(), [MECHANISM_PLUS, MECHANISM]);
    server.select(mechanism.as_bytes()).unwrap();
    server
}

/// One exchange of tokio-postgres' client with `binding`; the ClientKey recovered.
fn bound_exchange(
    server: &mut ScramServer,
    binding: ChannelBinding,
) -> Result<[u8; 32], AuthError> {
    let mut client = ScramSha256::new(b"pw", binding);
    let server_first = server.client_first(client.message())?;
    client.update(&server_first).unwrap();
    let (server_final, key) = server.client_final(client.message())?;
    client
        .finish(&server_final)
        .expect("the client accepts the server's signature");
    Ok(key)
}

#[test]
fn plus_bound_to_the_certificates_hash_authenticates() {
    let secret = ScramSecret::from_password("pw");
    let mut server = bound_server(&secret, &[7; 48], MECHANISM_PLUS);
    let key = bound_exchange(
        &mut server,
        ChannelBinding::tls_server_end_point(vec![7; 48]),
    )
    .unwrap();
    assert_eq!(sha256(&key), secret.stored_key);
}

#[test]
fn plus_bound_to_another_certificate_fails_the_check() {
    let secret = ScramSecret::from_password("pw");
    let mut server = bound_server(&secret, &[7; 32], MECHANISM_PLUS);
    assert!(matches!(
        bound_exchange(
            &mut server,
            ChannelBinding::tls_server_end_point(vec![8; 32])
        ),
        Err(AuthError::ChannelBindingCheck)
    ));
}

#[test]
fn plus_without_binding_data_is_malformed() {
    let secret = ScramSecret::from_password("pw");
    for binding in [ChannelBinding::unsupported(), ChannelBinding::unrequested()] {
        let mut server = bound_server(&secret, &[7; 32], MECHANISM_PLUS);
        assert!(matches!(
            bound_exchange(&mut server, binding),
            Err(AuthError::Malformed(_))
        ));
    }
}

#[test]
fn without_plus_over_tls_n_logs_in_and_y_is_a_downgrade() {
    let secret = ScramSecret::from_password("pw");
    let mut server = bound_server(&secret, &[7; 32], MECHANISM);
    bound_exchange(&mut server, ChannelBinding::unsupported()).unwrap();
    let mut server = bound_server(&secret, &[7; 32], MECHANISM);
    assert!(matches!(
        bound_exchange(&mut server, ChannelBinding::unrequested()),
        Err(AuthError::ChannelBindingNegotiation)
    ));
    // Without TLS, `y` is the client's honest view.
    let mut server = ScramServer::new(secret.clone());
    server.select(MECHANISM.as_bytes()).unwrap();
    bound_exchange(&mut server, ChannelBinding::unrequested()).unwrap();
}

#[test]
fn plus_of_another_binding_type_is_malformed() {
    let secret = ScramSecret::from_password("pw");
    let mut server = bound_server(&secret, &[7; 32], MECHANISM_PLUS);
    assert!(matches!(
        server.client_first(b"p=tls-unique,,n=,r=abc"),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn scram_client_logs_in_with_a_postgres_protocol_verifier() {
    let verifier = postgres_protocol::password::scram_sha_256(b"s3cret");
    let secret = ScramSecret::parse_verifier(&verifier).unwrap();
    assert_eq!(secret.to_verifier(), verifier);
    exchange(&secret, password("s3cret")).unwrap();
    assert!(matches!(
        exchange(&secret, password("S3cret")),
        Err(AuthError::WrongPassword)
    ));
}

#[test]
fn with_salt_matches_a_known_postgres_verifier() {
    let salt = [7u8; 16];
    let secret = ScramSecret::with_salt("pw", &salt, 4096);
    let parsed = ScramSecret::parse_verifier(&secret.to_verifier()).unwrap();
    assert_eq!(parsed, secret);
    // Hi() agrees with the cached path used by clients.
    assert_eq!(
        hi(b"pw", &salt, 4096),
        cached_salted_password(b"pw", &salt, 4096)
    );
}

#[test]
fn salted_password_cache_returns_the_same_value_on_a_hit() {
    let salt = b"cache-test-salt";
    let first = cached_salted_password(b"pw", salt, 2);
    assert_eq!(cached_salted_password(b"pw", salt, 2), first);
    assert_ne!(cached_salted_password(b"pw", salt, 3), first);
    assert_ne!(cached_salted_password(b"pw2", salt, 2), first);
}

#[test]
fn parse_verifier_rejects_malformed_input() {
    let good = ScramSecret::with_salt("pw", b"0123456789abcdef", 4096).to_verifier();
    let (_, keys) = good.rsplit_once('$').unwrap();
    let bad = [
        String::new(),
        "SCRAM-SHA-256".into(),
        "SCRAM-SHA-256$".into(),
        good.replace("SCRAM-SHA-256", "SCRAM-SHA-1"),
        good.replace("4096:", "0:"),
        good.replace("4096:", "-1:"),
        good.replace("4096:", "+4096:"),
        good.replace("4096:", "99999999999:"),
        good.replace("4096:", ":"),
        good.replace("4096:", "4096"),
        format!("SCRAM-SHA-256$4096:$${keys}"),
        format!("SCRAM-SHA-256$4096:!!!${keys}"),
        format!("SCRAM-SHA-256$4096:c2FsdA==${}", keys.replace(':', "")),
        format!(
            "SCRAM-SHA-256$4096:c2FsdA==$c2hvcnQ=:{}",
            keys.split(':').nth(1).unwrap()
        ),
        format!(
            "SCRAM-SHA-256$4096:c2FsdA==${}:c2hvcnQ=",
            keys.split(':').next().unwrap()
        ),
        format!("{good}$"),
        format!("{good}x"),
        good[..good.len() - 5].to_owned(),
    ];
    for verifier in bad {
        assert!(
            matches!(
                ScramSecret::parse_verifier(&verifier),
                Err(AuthError::InvalidVerifier(_))
            ),
            "accepted {verifier:?}"
        );
    }
}

#[test]
fn malformed_client_first_messages_are_errors() {
    // Every truncation that cuts into the header or before the nonce's first byte.
    let valid = b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL";
    for len in 0..=b"n,,n=user,r=".len() {
        let mut server = ScramServer::new(ScramSecret::with_salt("pw", b"salt", 1));
        assert!(
            server.client_first(&valid[..len]).is_err(),
            "accepted {len} bytes"
        );
    }
    let bad: &[&[u8]] = &[
        b"",
        b"\xff\xfe",
        b"x,,n=,r=abc",
        b"n,a=admin,n=,r=abc",
        b"n,,m=ext,n=,r=abc",
        b"n,,r=abc",
        b"n,,n=,r=",
        b"n,,n=,r=ab c",
        b"n,,n=,r=abc,",
        b"n,,n=,r=abc,m=mandatory",
        b"n,,n=,r=abc,1=x",
        b",,,",
        b"n,,n=,r=\xc3\xa9",
    ];
    for message in bad {
        let mut server = ScramServer::new(ScramSecret::with_salt("pw", b"salt", 1));
        assert!(
            server.client_first(message).is_err(),
            "accepted {message:?}"
        );
    }
    // Extensions after the nonce are allowed.
    let mut server = ScramServer::new(ScramSecret::with_salt("pw", b"salt", 1));
    server.client_first(b"y,,n=,r=abc,x=ext").unwrap();
}

#[test]
fn malformed_client_final_messages_are_errors() {
    let secret = ScramSecret::with_salt("pw", b"salt", 1);
    // Each attempt runs against a fresh server, whose nonce replaces "{nonce}".
    let attempt = |template: &str, cut: Option<usize>| {
        let (mut server, nonce) = server_after_first(&secret);
        let mut message = template.replace("{nonce}", &nonce);
        if let Some(cut) = cut {
            message.truncate(cut);
        }
        let result = server.client_final(message.as_bytes());
        (result, message)
    };
    let proof = BASE64.encode([0u8; 32]);
    let valid = format!("c=biws,r={{nonce}},p={proof}");

    // Well-formed with a wrong proof: a wrong password, not a protocol error.
    let (result, _) = attempt(&valid, None);
    assert!(
        matches!(result, Err(AuthError::WrongPassword)),
        "{result:?}"
    );

    let full_len = attempt(&valid, None).1.len();
    for cut in 0..full_len {
        let (result, message) = attempt(&valid, Some(cut));
        assert!(result.is_err(), "accepted {message:?}");
    }
    let bad = [
        format!("c=eSws,r={{nonce}},p={proof}"), // "y,," but the client sent "n,,"
        format!("c=biws,r={{nonce}}x,p={proof}"),
        format!("c=biws,r=clientnonce,p={proof}"),
        format!("r={{nonce}},c=biws,p={proof}"),
        format!("c=biws,r={{nonce}},p={proof},x=1"),
        "c=biws,r={nonce},p=AAAA".to_owned(),
        "c=biws,r={nonce},p=!!".to_owned(),
        format!("c=!!,r={{nonce}},p={proof}"),
        format!("c=biws,r={{nonce}},m=1,p={proof}"),
        "\u{0}".repeat(100),
        "\u{ff}".into(),
    ];
    for template in bad {
        let (result, message) = attempt(&template, None);
        assert!(
            matches!(
                result,
                Err(AuthError::Malformed(_) | AuthError::Unsupported(_))
            ),
            "{message:?} gave {result:?}"
        );
    }
    // Postgres takes a ',' at the very end as the proof's end: well-formed.
    let (result, message) = attempt(&format!("{valid},"), None);
    assert!(
        matches!(result, Err(AuthError::WrongPassword)),
        "{message:?} gave {result:?}"
    );
    let (mut server, _) = server_after_first(&secret);
    assert!(server.client_final(b"\xff").is_err());
}

#[test]
fn server_steps_out_of_order_are_errors() {
    let secret = ScramSecret::with_salt("pw", b"salt", 1);
    let mut server = ScramServer::new(secret.clone());
    assert!(matches!(
        server.client_final(b"c=biws"),
        Err(AuthError::OutOfOrder(_))
    ));
    let (mut server, _) = server_after_first(&secret);
    assert!(matches!(
        server.client_first(b"n,,n=,r=abc"),
        Err(AuthError::OutOfOrder(_))
    ));
    // A failed exchange cannot be continued.
    let mut server = ScramServer::new(secret);
    assert!(server.client_first(b"garbage").is_err());
    assert!(matches!(
        server.client_first(b"n,,n=,r=abc"),
        Err(AuthError::OutOfOrder(_))
    ));
}

#[test]
fn malformed_server_first_messages_are_errors() {
    let client = ScramClient::new(password("pw"));
    let nonce = client.client_nonce.clone();
    let valid = format!("r={nonce}srv,s=c2FsdA==,i=1");
    let mut bad: Vec<String> = (0..valid.len() - 1)
        .map(|len| valid[..len].to_owned())
        .collect();
    bad.extend([
        format!("r={nonce},s=c2FsdA==,i=1"),     // no server part
        format!("r=X{nonce}srv,s=c2FsdA==,i=1"), // does not extend our nonce
        format!("r={nonce}s v,s=c2FsdA==,i=1"),
        format!("r={nonce}srv,s=,i=1"),
        format!("r={nonce}srv,s=!!,i=1"),
        format!("r={nonce}srv,s=c2FsdA==,i=0"),
        format!("r={nonce}srv,s=c2FsdA==,i=x"),
        format!("r={nonce}srv,s=c2FsdA==,i=100001"),
        format!("r={nonce}srv,i=1,s=c2FsdA=="),
        format!("m=x,r={nonce}srv,s=c2FsdA==,i=1"),
        format!("r={nonce}srv,s=c2FsdA==,i=1,"),
        "e=other-error".into(),
    ]);
    for message in bad {
        let mut client = ScramClient::new(password("pw"));
        client.client_nonce = nonce.clone();
        assert!(
            client.server_first(message.as_bytes()).is_err(),
            "accepted {message:?}"
        );
    }
    let mut client = ScramClient::new(password("pw"));
    assert!(client.server_first(b"\xff\xff").is_err());
    assert!(matches!(
        client.server_first(valid.as_bytes()),
        Err(AuthError::OutOfOrder(_))
    ));
}

#[test]
fn server_final_is_checked() {
    let secret = ScramSecret::with_salt("pw", b"salt", 1);
    let start = || {
        let mut server = ScramServer::new(secret.clone());
        let mut client = ScramClient::new(password("pw"));
        let server_first = server.client_first(&client.client_first()).unwrap();
        client.server_first(&server_first).unwrap();
        client
    };
    let forged = format!("v={}", BASE64.encode([9u8; 32]));
    assert!(matches!(
        start().server_final(forged.as_bytes()),
        Err(AuthError::ServerSignatureMismatch)
    ));
    match start().server_final(b"e=invalid-proof") {
        Err(AuthError::ServerError(reason)) => assert_eq!(reason, "invalid-proof"),
        other => panic!("{other:?}"),
    }
    for garbage in [&b""[..], b"v=", b"v=AAAA", b"x=1", b"\xff", b"v"] {
        assert!(
            start().server_final(garbage).is_err(),
            "accepted {garbage:?}"
        );
    }
    let mut client = ScramClient::new(password("pw"));
    assert!(matches!(
        client.server_final(b"v=AAAA"),
        Err(AuthError::OutOfOrder(_))
    ));
}

#[test]
fn client_first_has_no_channel_binding_and_a_fresh_nonce() {
    let a = ScramClient::new(password("pw"));
    let b = ScramClient::new(password("pw"));
    let first = String::from_utf8(a.client_first()).unwrap();
    let nonce = first.strip_prefix("n,,n=,r=").unwrap();
    assert_eq!(BASE64.decode(nonce).unwrap().len(), RAW_NONCE_LEN);
    assert_ne!(a.client_first(), b.client_first());
}

#[test]
fn debug_output_hides_keys() {
    let secret = ScramSecret::with_salt("pw", b"salt", 1);
    let shown = format!("{secret:?} {:?}", password("hunter2"));
    assert!(!shown.contains("hunter2"));
    assert!(!shown.contains(&BASE64.encode(secret.stored_key)));
}

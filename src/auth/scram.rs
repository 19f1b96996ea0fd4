//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as Postgres speaks it, on both sides.
//!
//! The exchange, with `H` = SHA-256 and `HMAC` = HMAC-SHA-256:
//!
//! ```text
//! client-first  n,,n=<user>,r=<client nonce>          (gs2 header "n,," + the "bare" part)
//! server-first  r=<client nonce><server nonce>,s=<salt b64>,i=<iterations>
//! client-final  c=biws,r=<both nonces>,p=<ClientProof b64>      ("biws" = b64("n,,"))
//! server-final  v=<ServerSignature b64>                 (or e=<error>)
//!
//! SaltedPassword  = PBKDF2-HMAC-SHA-256(SASLprep(password), salt, iterations)
//! ClientKey       = HMAC(SaltedPassword, "Client Key")
//! StoredKey       = H(ClientKey)
//! ServerKey       = HMAC(SaltedPassword, "Server Key")
//! AuthMessage     = client-first-bare "," server-first "," client-final-without-proof
//! ClientProof     = ClientKey XOR HMAC(StoredKey, AuthMessage)
//! ServerSignature = HMAC(ServerKey, AuthMessage)
//! ```
//!
//! The server keeps only `(iterations, salt, StoredKey, ServerKey)`, the verifier of
//! `pg_authid`. It checks a proof by recovering `ClientKey = ClientProof XOR
//! HMAC(StoredKey, AuthMessage)` and testing `H(ClientKey) == StoredKey`. A pooler can
//! reuse that recovered ClientKey (with the verifier's ServerKey) to log in to a server
//! holding the same verifier: that is [`UpstreamCredential::ClientKey`].
//!
//! Postgres' rules, followed here (see `src/backend/libpq/auth-scram.c` and the docs,
//! "SCRAM-SHA-256 Authentication", section 54.3.1): the username in `n=` is ignored
//! (the startup packet names the user); authorization identities (`a=`) are refused;
//! over TLS pgmux offers `SCRAM-SHA-256-PLUS` first, bound to its certificate
//! (`tls-server-end-point`, RFC 5929); the gs2 flag must match the mechanism chosen
//! (`p=tls-server-end-point` for PLUS, `n` or `y` without), and `y` is refused where
//! PLUS was offered (a downgrade); passwords are SASLprep'ed, falling back to the raw
//! bytes when that fails.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use rand::Rng;
use sha2::{Digest, Sha256};

use super::{constant_time_eq, AuthError};

/// The SASL mechanism name, as advertised in `AuthenticationSASL`.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// The same bound to the TLS connection: offered only over TLS.
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// The only channel binding type Postgres (and so pgmux) supports.
const END_POINT_HEADER: &str = "p=tls-server-end-point,,";

/// Iterations for secrets pgmux derives itself (Postgres' default `scram_iterations`).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Salt length for secrets pgmux derives itself (Postgres' `SCRAM_DEFAULT_SALT_LEN`).
const SALT_LEN: usize = 16;

/// Random bytes in each nonce (Postgres' `SCRAM_RAW_NONCE_LEN`); sent base64-encoded.
const RAW_NONCE_LEN: usize = 18;

/// The most PBKDF2 iterations pgmux will run for a server: each costs two SHA-256
/// blocks, and the count comes from the server, so a hostile one could otherwise make
/// every login spin. Same cap as tokio-postgres and pgjdbc.
const MAX_UPSTREAM_ITERATIONS: u32 = 100_000;

type HmacSha256 = Hmac<Sha256>;

// ---------------------------------------------------------------------------------
// The stored secret
// ---------------------------------------------------------------------------------

/// A SCRAM-SHA-256 verifier: everything needed to check a client, nothing that lets
/// one log in directly.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramSecret {
    /// Derives a secret with a fresh random salt and [`DEFAULT_ITERATIONS`]. Runs
    /// PBKDF2: call it at config load, not per login.
    pub fn from_password(password: &str) -> ScramSecret {
        let mut salt = [0u8; SALT_LEN];
        rand::rng().fill(&mut salt);
        ScramSecret::with_salt(password, &salt, DEFAULT_ITERATIONS)
    }

    /// Derives the secret for a given salt and iteration count (runs PBKDF2).
    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let keys = Keys::from_salted_password(&hi(&prepare_password(password), salt, iterations));
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&keys.client_key),
            server_key: keys.server_key,
        }
    }

    /// Parses the `pg_authid` form
    /// `SCRAM-SHA-256$<iterations>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>`.
    pub fn parse_verifier(verifier: &str) -> Result<ScramSecret, AuthError> {
        let rest = verifier
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(AuthError::InvalidVerifier(
                "it does not start with SCRAM-SHA-256$",
            ))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(AuthError::InvalidVerifier("missing '$' before the keys"))?;
        let (iterations, salt) = params.split_once(':').ok_or(AuthError::InvalidVerifier(
            "missing ':' between iterations and salt",
        ))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or(AuthError::InvalidVerifier("missing ':' between the keys"))?;

        let iterations = parse_iterations(iterations).ok_or(AuthError::InvalidVerifier(
            "iterations must be a positive integer",
        ))?;
        let salt = BASE64
            .decode(salt)
            .ok()
            .filter(|salt| !salt.is_empty())
            .ok_or(AuthError::InvalidVerifier("salt is not base64"))?;
        let stored_key = decode_key(stored_key).ok_or(AuthError::InvalidVerifier(
            "StoredKey is not 32 bytes of base64",
        ))?;
        let server_key = decode_key(server_key).ok_or(AuthError::InvalidVerifier(
            "ServerKey is not 32 bytes of base64",
        ))?;
        Ok(ScramSecret {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// The `pg_authid` form, as [`parse_verifier`](Self::parse_verifier) reads it.
    pub fn to_verifier(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key),
        )
    }
}

impl std::fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .field("keys", &"<secret>")
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------
// Server side: pgmux verifying a client
// ---------------------------------------------------------------------------------

/// The server side of one SCRAM-SHA-256 exchange, with or without channel binding.
///
/// Offer [`ScramServer::mechanisms`], pass the client's choice to
/// [`ScramServer::select`], then feed it the `SASLInitialResponse` payload and the
/// `SASLResponse` payload; any error ends the exchange (later calls return
/// [`AuthError::OutOfOrder`]).
pub struct ScramServer {
    secret: ScramSecret,
    /// The `tls-server-end-point` data of the client's TLS connection, when it has
    /// one pgmux can bind to.
    end_point: Option<Arc<[u8]>>,
    /// The client chose SCRAM-SHA-256-PLUS.
    plus: bool,
    state: ServerState,
}

enum ServerState {
    AwaitingClientFirst,
    AwaitingClientFinal {
        /// What the client-final's `c=` must hold, base64-encoded: the gs2 header,
        /// followed by the end-point data under PLUS.
        binding: String,
        client_first_bare: String,
        server_first: String,
        /// Client nonce followed by ours.
        nonce: String,
    },
    Finished,
}

impl ScramServer {
    /// An exchange over a connection without channel binding.
    pub fn new(secret: ScramSecret) -> ScramServer {
        ScramServer::with_end_point(secret, None)
    }

    /// An exchange over a TLS connection whose certificate hashes to `end_point`
    /// (`None`: plain text, or a certificate whose hash cannot be told).
    pub fn with_end_point(secret: ScramSecret, end_point: Option<Arc<[u8]>>) -> ScramServer {
        ScramServer {
            secret,
            end_point,
            plus: false,
            state: ServerState::AwaitingClientFirst,
        }
    }

    /// The mechanisms to offer, the preferred first (as Postgres lists them).
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.end_point.is_some() {
            &[MECHANISM_PLUS, MECHANISM]
        } else {
            &[MECHANISM]
        }
    }

    /// The mechanism the client chose from [`ScramServer::mechanisms`].
    pub fn select(&mut self, mechanism: &[u8]) -> Result<(), AuthError> {
        self.plus = match mechanism {
            m if m == MECHANISM.as_bytes() => false,
            m if m == MECHANISM_PLUS.as_bytes() && self.end_point.is_some() => true,
            _ => return Err(AuthError::UnsupportedMechanism),
        };
        Ok(())
    }

    /// Postgres' rules for the gs2 flag against the mechanism chosen.
    fn check_gs2_flag(&self, gs2_header: &str) -> Result<(), AuthError> {
        match gs2_header.as_bytes()[0] {
            b'n' | b'y' if self.plus => Err(AuthError::Malformed(
                "the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data",
            )),
            b'y' if self.end_point.is_some() => Err(AuthError::ChannelBindingNegotiation),
            b'p' if !self.plus => Err(AuthError::Malformed(
                "the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data",
            )),
            b'p' if gs2_header != END_POINT_HEADER => Err(AuthError::Malformed(
                "unsupported SCRAM channel-binding type (pgmux supports tls-server-end-point)",
            )),
            _ => Ok(()),
        }
    }

    /// Takes the client-first-message, returns the server-first-message.
    pub fn client_first(&mut self, client_first: &[u8]) -> Result<Vec<u8>, AuthError> {
        let ServerState::AwaitingClientFirst =
            std::mem::replace(&mut self.state, ServerState::Finished)
        else {
            return Err(AuthError::OutOfOrder(
                "client-first-message already received",
            ));
        };
        let message = utf8(client_first)?;
        let (gs2_header, client_first_bare) = split_gs2_header(message)?;
        self.check_gs2_flag(gs2_header)?;

        let mut attributes = Attributes::new(client_first_bare);
        match attributes.next()? {
            // Postgres ignores this name: the startup packet already named the user.
            Some((b'n', _user)) => {}
            Some((b'm', _)) => return Err(AuthError::Unsupported(UNSUPPORTED_EXTENSION)),
            _ => return Err(AuthError::Malformed("expected the username attribute n=")),
        }
        let client_nonce = attributes.expect(b'r', "expected the nonce attribute r=")?;
        check_nonce(client_nonce)?;
        attributes.skip_extensions(UNSUPPORTED_EXTENSION)?;

        let nonce = format!("{client_nonce}{}", random_nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&self.secret.salt),
            self.secret.iterations
        );
        let reply = server_first.clone().into_bytes();
        let mut binding = gs2_header.as_bytes().to_vec();
        if self.plus {
            binding.extend_from_slice(self.end_point.as_deref().unwrap_or_default());
        }
        self.state = ServerState::AwaitingClientFinal {
            binding: BASE64.encode(binding),
            client_first_bare: client_first_bare.to_owned(),
            server_first,
            nonce,
        };
        Ok(reply)
    }

    /// Takes the client-final-message. When the proof is right, returns the
    /// server-final-message (`v=…`) and the client's ClientKey.
    pub fn client_final(&mut self, client_final: &[u8]) -> Result<(Vec<u8>, [u8; 32]), AuthError> {
        let ServerState::AwaitingClientFinal {
            binding,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, ServerState::Finished)
        else {
            return Err(AuthError::OutOfOrder(
                "client-final-message not expected now",
            ));
        };
        // Postgres reads an attribute up to a ',' and takes one at the very end as
        // the attribute's end.
        let message = utf8(client_final)?;
        let message = message.strip_suffix(',').unwrap_or(message);

        // The proof is the last attribute, and base64 never contains ','.
        let proof_at = message
            .rfind(",p=")
            .ok_or(AuthError::Malformed("missing the proof attribute p="))?;
        let without_proof = &message[..proof_at];
        let proof = &message[proof_at + 3..];
        if proof.contains(',') {
            return Err(AuthError::Malformed("the proof must be the last attribute"));
        }
        let proof =
            decode_key(proof).ok_or(AuthError::Malformed("proof is not 32 bytes of base64"))?;

        let mut attributes = Attributes::new(without_proof);
        let channel_binding =
            attributes.expect(b'c', "expected the channel binding attribute c=")?;
        if channel_binding != binding {
            return Err(if self.plus {
                AuthError::ChannelBindingCheck
            } else {
                AuthError::Malformed("channel binding does not repeat the client-first gs2 header")
            });
        }
        let echoed_nonce = attributes.expect(b'r', "expected the nonce attribute r=")?;
        if echoed_nonce != nonce {
            return Err(AuthError::Malformed("nonce does not match"));
        }
        attributes.skip_extensions(UNSUPPORTED_EXTENSION)?;

        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        if !constant_time_eq(&sha256(&client_key), &self.secret.stored_key) {
            return Err(AuthError::WrongPassword);
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        let server_final = format!("v={}", BASE64.encode(server_signature)).into_bytes();
        Ok((server_final, client_key))
    }
}

// ---------------------------------------------------------------------------------
// Client side: pgmux logging in to Postgres
// ---------------------------------------------------------------------------------

/// What pgmux proves its identity to a server with.
#[derive(Clone)]
pub enum UpstreamCredential {
    /// The user's password (PBKDF2 runs once per distinct salt, then is cached).
    Password(String),
    /// A ClientKey recovered from a client's login plus the verifier's ServerKey:
    /// works when the server's `pg_authid` holds the same verifier.
    ClientKey {
        client_key: [u8; 32],
        server_key: [u8; 32],
    },
}

impl std::fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamCredential::Password(_) => f.write_str("Password(<secret>)"),
            UpstreamCredential::ClientKey { .. } => f.write_str("ClientKey(<secret>)"),
        }
    }
}

/// The client side of one SCRAM-SHA-256 exchange, without channel binding (gs2
/// header `n,,`).
pub struct ScramClient {
    credential: UpstreamCredential,
    client_nonce: String,
    state: ClientState,
}

enum ClientState {
    AwaitingServerFirst,
    AwaitingServerFinal { server_signature: [u8; 32] },
    Finished,
}

impl ScramClient {
    pub fn new(credential: UpstreamCredential) -> ScramClient {
        ScramClient {
            credential,
            client_nonce: random_nonce(),
            state: ClientState::AwaitingServerFirst,
        }
    }

    /// The client-first-message, `n,,n=,r=<nonce>` (the user is in the startup packet).
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare()).into_bytes()
    }

    fn client_first_bare(&self) -> String {
        format!("n=,r={}", self.client_nonce)
    }

    /// Takes the server-first-message, returns the client-final-message.
    pub fn server_first(&mut self, server_first: &[u8]) -> Result<Vec<u8>, AuthError> {
        let ClientState::AwaitingServerFirst =
            std::mem::replace(&mut self.state, ClientState::Finished)
        else {
            return Err(AuthError::OutOfOrder(
                "server-first-message already received",
            ));
        };
        let message = utf8(server_first)?;

        let mut attributes = Attributes::new(message);
        let nonce = match attributes.next()? {
            Some((b'r', nonce)) => nonce,
            Some((b'm', _)) => return Err(AuthError::Unsupported(SERVER_EXTENSION)),
            _ => return Err(AuthError::Malformed("expected the nonce attribute r=")),
        };
        if nonce.len() <= self.client_nonce.len() || !nonce.starts_with(&self.client_nonce) {
            return Err(AuthError::Malformed(
                "server nonce does not extend the client nonce",
            ));
        }
        check_nonce(nonce)?;
        let salt = attributes.expect(b's', "expected the salt attribute s=")?;
        let salt = BASE64
            .decode(salt)
            .ok()
            .filter(|salt| !salt.is_empty())
            .ok_or(AuthError::Malformed("salt is not base64"))?;
        let iterations = attributes.expect(b'i', "expected the iteration count attribute i=")?;
        let iterations = parse_iterations(iterations).ok_or(AuthError::Malformed(
            "iteration count is not a positive integer",
        ))?;
        if iterations > MAX_UPSTREAM_ITERATIONS {
            return Err(AuthError::Malformed("iteration count above 100000"));
        }
        attributes.skip_extensions(SERVER_EXTENSION)?;

        let keys = match &self.credential {
            UpstreamCredential::Password(password) => Keys::from_salted_password(
                &cached_salted_password(&prepare_password(password), &salt, iterations),
            ),
            UpstreamCredential::ClientKey {
                client_key,
                server_key,
            } => Keys {
                client_key: *client_key,
                server_key: *server_key,
            },
        };

        // "biws" is base64("n,,"): no channel binding.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{message},{without_proof}", self.client_first_bare());
        let stored_key = sha256(&keys.client_key);
        let proof = xor(
            &keys.client_key,
            &hmac(&stored_key, auth_message.as_bytes()),
        );
        self.state = ClientState::AwaitingServerFinal {
            server_signature: hmac(&keys.server_key, auth_message.as_bytes()),
        };
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Takes the server-final-message and checks the server's signature: a server
    /// that cannot sign does not hold the password, whatever it says next.
    pub fn server_final(&mut self, server_final: &[u8]) -> Result<(), AuthError> {
        let ClientState::AwaitingServerFinal { server_signature } =
            std::mem::replace(&mut self.state, ClientState::Finished)
        else {
            return Err(AuthError::OutOfOrder(
                "server-final-message not expected now",
            ));
        };
        let message = utf8(server_final)?;
        let mut attributes = Attributes::new(message);
        match attributes.next()? {
            Some((b'e', reason)) => Err(AuthError::ServerError(reason.to_owned())),
            Some((b'v', signature)) => {
                let signature = decode_key(signature).ok_or(AuthError::Malformed(
                    "server signature is not 32 bytes of base64",
                ))?;
                attributes.skip_extensions(SERVER_EXTENSION)?;
                if constant_time_eq(&signature, &server_signature) {
                    Ok(())
                } else {
                    Err(AuthError::ServerSignatureMismatch)
                }
            }
            _ => Err(AuthError::Malformed("expected the verifier attribute v=")),
        }
    }
}

// ---------------------------------------------------------------------------------
// Message parsing
// ---------------------------------------------------------------------------------

/// The comma-separated `x=value` attributes of a SCRAM message (RFC 5802 §5.1).
struct Attributes<'a> {
    rest: Option<&'a str>,
}

impl<'a> Attributes<'a> {
    fn new(message: &'a str) -> Attributes<'a> {
        Attributes {
            rest: Some(message),
        }
    }

    /// The next attribute name and value, or `None` at the end of the message.
    fn next(&mut self) -> Result<Option<(u8, &'a str)>, AuthError> {
        let Some(rest) = self.rest else {
            return Ok(None);
        };
        let (field, tail) = match rest.split_once(',') {
            Some((field, tail)) => (field, Some(tail)),
            None => (rest, None),
        };
        self.rest = tail;
        match field.as_bytes() {
            // Both bytes are ASCII, so index 2 is a char boundary.
            [name, b'=', ..] if name.is_ascii_alphabetic() => Ok(Some((*name, &field[2..]))),
            _ => Err(AuthError::Malformed(
                "expected an attribute of the form x=value",
            )),
        }
    }

    fn expect(&mut self, name: u8, missing: &'static str) -> Result<&'a str, AuthError> {
        match self.next()? {
            Some((found, value)) if found == name => Ok(value),
            _ => Err(AuthError::Malformed(missing)),
        }
    }

    /// Optional extensions may follow; they must still be well-formed attributes.
    fn skip_extensions(mut self, unsupported: &'static str) -> Result<(), AuthError> {
        while let Some((name, _)) = self.next()? {
            if name == b'm' {
                return Err(AuthError::Unsupported(unsupported));
            }
        }
        Ok(())
    }
}

/// Postgres' words for a mandatory extension (`m=`), which neither side supports.
const UNSUPPORTED_EXTENSION: &str = "client requires an unsupported SCRAM extension";
const SERVER_EXTENSION: &str = "the server requires an unsupported SCRAM extension";

/// Splits `gs2-header` (`n,,` or `y,,`) from `client-first-message-bare`.
fn split_gs2_header(message: &str) -> Result<(&str, &str), AuthError> {
    let mut parts = message.splitn(3, ',');
    let (Some(flag), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Malformed("truncated gs2 header"));
    };
    if !matches!(flag, "n" | "y") && !flag.starts_with("p=") {
        return Err(AuthError::Malformed("invalid channel binding flag"));
    }
    if !authzid.is_empty() {
        return Err(AuthError::Unsupported(
            "client uses authorization identity, but it is not supported",
        ));
    }
    let header_len = flag.len() + authzid.len() + 2;
    Ok((&message[..header_len], bare))
}

/// RFC 5802: a nonce is printable ASCII other than ','.
fn check_nonce(nonce: &str) -> Result<(), AuthError> {
    let printable = |b: &u8| (0x21..=0x7e).contains(b) && *b != b',';
    if nonce.is_empty() || !nonce.as_bytes().iter().all(printable) {
        return Err(AuthError::Malformed(
            "nonce must be non-empty printable ASCII",
        ));
    }
    Ok(())
}

fn parse_iterations(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&n| n > 0)
}

fn decode_key(text: &str) -> Option<[u8; 32]> {
    BASE64.decode(text).ok()?.try_into().ok()
}

fn utf8(message: &[u8]) -> Result<&str, AuthError> {
    std::str::from_utf8(message).map_err(|_| AuthError::Malformed("message is not UTF-8"))
}

fn random_nonce() -> String {
    let mut raw = [0u8; RAW_NONCE_LEN];
    rand::rng().fill(&mut raw);
    BASE64.encode(raw)
}

// ---------------------------------------------------------------------------------
// Key derivation
// ---------------------------------------------------------------------------------

struct Keys {
    client_key: [u8; 32],
    server_key: [u8; 32],
}

impl Keys {
    fn from_salted_password(salted_password: &[u8; 32]) -> Keys {
        Keys {
            client_key: hmac(salted_password, b"Client Key"),
            server_key: hmac(salted_password, b"Server Key"),
        }
    }
}

/// The bytes Postgres feeds to PBKDF2: the password SASLprep'ed (RFC 4013), or its
/// raw bytes when that fails (prohibited or unassigned characters), as Postgres'
/// `pg_saslprep` does. A pure-ASCII password is its own result (Postgres
/// short-cuts it too); so is any password already in NFKC without non-ASCII spaces
/// or soft hyphens.
fn prepare_password(password: &str) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    if password.is_ascii() {
        return Cow::Borrowed(password.as_bytes());
    }
    match stringprep::saslprep(password) {
        Ok(Cow::Borrowed(s)) => Cow::Borrowed(s.as_bytes()),
        Ok(Cow::Owned(s)) => Cow::Owned(s.into_bytes()),
        Err(_) => Cow::Borrowed(password.as_bytes()),
    }
}

/// `Hi()` of RFC 5802: PBKDF2-HMAC-SHA-256 with one output block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let keyed = new_hmac(password);
    let mut block = keyed.clone();
    block.update(salt);
    block.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = block.finalize().into_bytes().into();
    let mut result = u;
    for _ in 1..iterations {
        let mut block = keyed.clone();
        block.update(&u);
        u = block.finalize().into_bytes().into();
        result = xor(&result, &u);
    }
    result
}

/// Entries kept by [`cached_salted_password`]: enough for every (user, server
/// verifier) pair of a large configuration.
const SALTED_PASSWORD_CACHE_CAPACITY: usize = 1024;

type SaltedPasswordCache = HashMap<[u8; 32], Arc<OnceLock<[u8; 32]>>>;

static SALTED_PASSWORDS: LazyLock<Mutex<SaltedPasswordCache>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// [`hi`], computed once per (password, salt, iterations): each server connection
/// with a plain password would otherwise pay 4096+ HMACs. Concurrent logins for the
/// same key wait for one computation instead of each running it. The map is keyed
/// by a hash so it holds no password.
fn cached_salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let key = {
        let mut h = Sha256::new();
        h.update((password.len() as u64).to_be_bytes());
        h.update(password);
        h.update(iterations.to_be_bytes());
        h.update(salt);
        h.finalize().into()
    };
    let slot = {
        let mut cache = SALTED_PASSWORDS.lock();
        if !cache.contains_key(&key) && cache.len() >= SALTED_PASSWORD_CACHE_CAPACITY {
            // Any victim will do: a miss costs one PBKDF2, and the set of keys is
            // bounded by the configuration in practice.
            if let Some(victim) = cache.keys().next().copied() {
                cache.remove(&victim);
            }
        }
        Arc::clone(cache.entry(key).or_default())
    };
    *slot.get_or_init(|| hi(password, salt, iterations))
}

fn new_hmac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = new_hmac(key);
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

#[cfg(test)]
mod tests;

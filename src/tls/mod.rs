//! TLS on both sides of the proxy, built from the `[tls]` and `[upstream_tls]` config.
//!
//! Postgres does not start TLS on connect. A client that wants encryption first sends an
//! 8-byte SSLRequest; the server answers one byte, `S` (go ahead) or `N` (no), and on `S`
//! the TLS handshake starts on the same socket (Postgres docs, "Frontend/Backend Protocol"
//! → "Message Flow" → "SSL Session Encryption"). pgmux plays the server in that exchange
//! towards clients ([`client_acceptor`]) and the client towards Postgres
//! ([`upstream_connector`]). The byte exchange itself belongs to the client session and
//! the server connection; this module only builds the rustls configurations and the
//! [`MaybeTls`] stream both sides use afterwards.
//!
//! One rustls crypto provider, ring, serves the whole process
//! ([`install_crypto_provider`]); a second provider in the tree makes rustls panic at the
//! first handshake.
//!
//! Upstream modes follow libpq's `sslmode`: `prefer` and `require` encrypt without checking
//! the server's certificate (see [`unverified`]); `verify-full` checks the chain against
//! `upstream_tls.ca` and the certificate's name against the host pgmux dialled.

mod end_point;
mod stream;
mod unverified;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{TlsConfig, UpstreamTlsConfig, UpstreamTlsMode};

pub use stream::MaybeTls;

/// The ALPN protocol name Postgres 17 registers for its connections. libpq 17 offers it
/// and a Postgres 17 server refuses a client that offers only other protocols; older
/// servers ignore ALPN.
pub(crate) const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem { path: PathBuf, source: pem::Error },
    #[error("no certificate found in {} (expected a PEM \"CERTIFICATE\" block)", .0.display())]
    NoCertificate(PathBuf),
    #[error(
        "no private key found in {} (expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" \
         or \"EC PRIVATE KEY\" block)",
        .0.display()
    )]
    NoKey(PathBuf),
    #[error(
        "upstream_tls.mode = \"verify-full\" needs upstream_tls.ca: the PEM file of the CA \
         that signed the servers' certificates"
    )]
    MissingCa,
    #[error("{0:?} is not a valid DNS name or IP address for TLS")]
    InvalidServerName(String),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Installs ring as the process-wide rustls CryptoProvider; idempotent (safe to call many
/// times, from tests too).
pub fn install_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        // Losing a race to another caller is fine: ring is the only provider built in.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The provider every configuration here is built with: the process default.
fn provider() -> Arc<CryptoProvider> {
    install_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// TLS towards clients: the acceptor, and the channel binding data its certificate
/// gives SCRAM-SHA-256-PLUS.
pub struct ClientTls {
    pub acceptor: TlsAcceptor,
    /// RFC 5929 `tls-server-end-point` of the certificate; `None` when its signature
    /// does not tell the hash, and no channel binding is offered.
    pub end_point: Option<Arc<[u8]>>,
}

/// Server-side TLS for clients. Loads the certificate chain (leaf first) and the
/// private key (PKCS8, PKCS1 or SEC1 PEM); refuses a key that does not match the
/// certificate.
pub fn client_acceptor(cfg: &TlsConfig) -> Result<ClientTls, TlsError> {
    let chain = load_certs(&cfg.cert)?;
    let end_point = end_point::end_point_data(&chain[0]).map(Arc::from);
    let key = load_key(&cfg.key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(ClientTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        end_point,
    })
}

/// Client-side TLS towards Postgres servers: `None` when `mode = "disable"`.
///
/// `prefer` and `require` encrypt without verifying the certificate (libpq's
/// `sslmode=require`); whether `prefer` falls back to plain text on an `N` answer is the
/// caller's decision. `verify-full` verifies the chain against `ca` and the host name
/// passed to [`TlsConnector::connect`] (build it with [`server_name`]).
pub fn upstream_connector(cfg: &UpstreamTlsConfig) -> Result<Option<TlsConnector>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = match cfg.mode {
        UpstreamTlsMode::Disable => return Ok(None),
        UpstreamTlsMode::Prefer | UpstreamTlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(unverified::AnyServerCert::new(&provider)))
            .with_no_client_auth(),
        UpstreamTlsMode::VerifyFull => {
            let ca = cfg.ca.as_deref().ok_or(TlsError::MissingCa)?;
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca)? {
                roots.add(cert)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Some(TlsConnector::from(Arc::new(config))))
}

/// The ServerName to use for a host string (DNS name or IP address; an IPv6 address may
/// be written in brackets).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(bare.to_owned()).map_err(|_| TlsError::InvalidServerName(host.into()))
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file, in file order.
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// The first private key in a PEM file, whichever of the three encodings it uses.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoKey(path.to_owned()),
        source => TlsError::Pem {
            path: path.to_owned(),
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A self-signed certificate for `localhost` and 127.0.0.1, written to a tempdir.
    struct TestCert {
        _dir: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
        der: CertificateDer<'static>,
    }

    fn test_cert() -> TestCert {
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("server.crt");
        let key = dir.path().join("server.key");
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        TestCert {
            _dir: dir,
            cert,
            key,
            der: certified.cert.der().clone(),
        }
    }

    fn acceptor_for(cert: &TestCert) -> TlsAcceptor {
        client_acceptor(&TlsConfig {
            mode: crate::config::TlsMode::Require,
            cert: cert.cert.clone(),
            key: cert.key.clone(),
        })
        .unwrap()
        .acceptor
    }

    /// Accepts one connection, completes the TLS handshake and echoes what it reads
    /// until the peer closes. A failed handshake just ends the task.
    async fn spawn_tls_echo(acceptor: TlsAcceptor) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let mut conn = MaybeTls::from(tls);
            assert!(conn.is_tls());
            let mut buf = [0u8; 64];
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => conn.write_all(&buf[..n]).await.unwrap(),
                }
            }
        });
        addr
    }

    async fn connect(
        connector: &TlsConnector,
        addr: SocketAddr,
        host: &str,
    ) -> io::Result<MaybeTls> {
        let tcp = TcpStream::connect(addr).await?;
        let tls = connector.connect(server_name(host).unwrap(), tcp).await?;
        Ok(MaybeTls::from(tls))
    }

    async fn assert_echoes(conn: &mut MaybeTls) {
        conn.write_all(b"SELECT 1").await.unwrap();
        conn.flush().await.unwrap();
        let mut buf = [0u8; 8];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"SELECT 1");
    }

    fn upstream(mode: UpstreamTlsMode, ca: Option<PathBuf>) -> TlsConnector {
        upstream_connector(&UpstreamTlsConfig { mode, ca })
            .unwrap()
            .expect("a connector for every mode but disable")
    }

    #[tokio::test]
    async fn client_acceptor_completes_a_handshake_and_carries_bytes() {
        let cert = test_cert();
        let addr = spawn_tls_echo(acceptor_for(&cert)).await;

        let mut roots = RootCertStore::empty();
        roots.add(cert.der.clone()).unwrap();
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = TlsConnector::from(Arc::new(config));

        let mut conn = connect(&connector, addr, "localhost").await.unwrap();
        assert!(conn.is_tls());
        assert_eq!(conn.tcp().unwrap().peer_addr().unwrap(), addr);
        assert_echoes(&mut conn).await;
    }

    #[tokio::test]
    async fn plain_connections_carry_bytes_unencrypted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = MaybeTls::from(tcp);
            let mut buf = [0u8; 8];
            conn.read_exact(&mut buf).await.unwrap();
            conn.write_all(&buf).await.unwrap();
        });

        let mut conn = MaybeTls::from(TcpStream::connect(addr).await.unwrap());
        assert!(!conn.is_tls());
        assert_eq!(conn.tcp().unwrap().peer_addr().unwrap(), addr);
        assert_echoes(&mut conn).await;
    }

    #[tokio::test]
    async fn require_mode_encrypts_without_trusting_the_certificate() {
        let cert = test_cert();
        let connector = upstream(UpstreamTlsMode::Require, None);
        // Neither the issuer nor the name matches: require does not check either.
        let addr = spawn_tls_echo(acceptor_for(&cert)).await;
        let mut conn = connect(&connector, addr, "db.example.com").await.unwrap();
        assert!(conn.is_tls());
        assert_echoes(&mut conn).await;
    }

    #[tokio::test]
    async fn prefer_mode_also_encrypts_without_verifying() {
        let cert = test_cert();
        let connector = upstream(UpstreamTlsMode::Prefer, None);
        let addr = spawn_tls_echo(acceptor_for(&cert)).await;
        let mut conn = connect(&connector, addr, "localhost").await.unwrap();
        assert_echoes(&mut conn).await;
    }

    #[tokio::test]
    async fn verify_full_accepts_a_server_signed_by_the_configured_ca() {
        let cert = test_cert();
        let connector = upstream(UpstreamTlsMode::VerifyFull, Some(cert.cert.clone()));
        let addr = spawn_tls_echo(acceptor_for(&cert)).await;
        let mut conn = connect(&connector, addr, "localhost").await.unwrap();
        assert_echoes(&mut conn).await;

        let addr = spawn_tls_echo(acceptor_for(&cert)).await;
        let mut conn = connect(&connector, addr, "127.0.0.1").await.unwrap();
        assert_echoes(&mut conn).await;
    }

    #[tokio::test]
    async fn verify_full_rejects_a_server_signed_by_another_ca() {
        let cert = test_cert();
        let other = test_cert();
        let connector = upstream(UpstreamTlsMode::VerifyFull, Some(other.cert.clone()));
        let addr = spawn_tls_echo(acceptor_for(&cert)).await;
        let err = connect(&connector, addr, "localhost")
            .await
            .expect_err("the certificate is not signed by the configured CA");
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    #[tokio::test]
    async fn verify_full_rejects_a_certificate_for_another_host() {
        let cert = test_cert();
        let connector = upstream(UpstreamTlsMode::VerifyFull, Some(cert.cert.clone()));
        let addr = spawn_tls_echo(acceptor_for(&cert)).await;
        assert!(connect(&connector, addr, "db.example.com").await.is_err());
    }

    #[test]
    fn verify_full_without_a_ca_is_a_config_error() {
        let err = upstream_connector(&UpstreamTlsConfig {
            mode: UpstreamTlsMode::VerifyFull,
            ca: None,
        })
        .err()
        .expect("verify-full needs a CA");
        assert!(matches!(err, TlsError::MissingCa), "{err}");
    }

    #[test]
    fn disable_mode_builds_no_connector() {
        let connector = upstream_connector(&UpstreamTlsConfig {
            mode: UpstreamTlsMode::Disable,
            ca: None,
        })
        .unwrap();
        assert!(connector.is_none());
    }

    #[test]
    fn a_missing_certificate_file_is_an_error_naming_the_path() {
        let cert = test_cert();
        let missing = cert.cert.with_file_name("nope.crt");
        let err = client_acceptor(&TlsConfig {
            mode: crate::config::TlsMode::Require,
            cert: missing.clone(),
            key: cert.key.clone(),
        })
        .err()
        .expect("the certificate file does not exist");
        assert!(matches!(&err, TlsError::Io { path, .. } if *path == missing));
        assert!(err.to_string().contains("nope.crt"), "{err}");
    }

    #[test]
    fn a_key_file_without_a_key_is_an_error_naming_the_path() {
        let cert = test_cert();
        // The certificate file is valid PEM but holds no key.
        let err = client_acceptor(&TlsConfig {
            mode: crate::config::TlsMode::Require,
            cert: cert.cert.clone(),
            key: cert.cert.clone(),
        })
        .err()
        .expect("no key in a certificate file");
        assert!(matches!(&err, TlsError::NoKey(path) if *path == cert.cert));
        assert!(err.to_string().contains("server.crt"), "{err}");
    }

    #[test]
    fn a_certificate_file_without_certificates_is_an_error() {
        let cert = test_cert();
        let err = client_acceptor(&TlsConfig {
            mode: crate::config::TlsMode::Require,
            cert: cert.key.clone(),
            key: cert.key.clone(),
        })
        .err()
        .expect("no certificate in a key file");
        assert!(matches!(&err, TlsError::NoCertificate(path) if *path == cert.key));
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let cert = test_cert();
        let other = test_cert();
        let result = client_acceptor(&TlsConfig {
            mode: crate::config::TlsMode::Require,
            cert: cert.cert.clone(),
            key: other.key.clone(),
        });
        assert!(matches!(result, Err(TlsError::Rustls(_))));
    }

    #[test]
    fn installing_the_crypto_provider_twice_is_fine() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(CryptoProvider::get_default().is_some());
    }

    #[test]
    fn server_names_are_dns_names_or_ip_addresses() {
        assert!(matches!(
            server_name("db.internal"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("10.0.0.5"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("not a host"),
            Err(TlsError::InvalidServerName(h)) if h == "not a host"
        ));
    }
}

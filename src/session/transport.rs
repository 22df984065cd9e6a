//! TCP and TLS to a cTrader Open API endpoint.
//!
//! Every socket gets `TCP_NODELAY` (frames are small and latency matters more than packet count)
//! and TCP keepalive, so a peer that vanished without a FIN is noticed by the kernel even when the
//! application-level liveness check is slow. TLS always verifies the server certificate against
//! the Mozilla roots from `webpki-roots` plus an optional extra CA file. There is no switch that
//! turns verification off.

use std::io::{self, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Host of the cTrader Open API demo environment (protobuf on [`OPEN_API_PORT`]).
pub const DEMO_HOST: &str = "demo.ctraderapi.com";

/// Host of the cTrader Open API live environment (protobuf on [`OPEN_API_PORT`]).
pub const LIVE_HOST: &str = "live.ctraderapi.com";

/// The protobuf port of both environments; 5036 is JSON and is not spoken here.
pub const OPEN_API_PORT: u16 = 5035;

/// Idle time before the kernel sends the first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// Time between unanswered keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Unanswered probes after which the kernel declares the connection dead.
pub const KEEPALIVE_PROBES: u32 = 3;

/// A TLS stream to the Open API.
pub type Stream = TlsStream<TcpStream>;

/// The reason a connection could not be established.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The cause is part of the message, not a `source`, so that error chains print it once.
    #[error("cannot read CA file {path}: {error}; pass a readable PEM file to --ca-file")]
    CaFileUnreadable { path: PathBuf, error: io::Error },

    #[error("CA file {path} contains no PEM certificate; pass a PEM file with a `BEGIN CERTIFICATE` block")]
    CaFileEmpty { path: PathBuf },

    #[error("CA file {path} has a certificate that is not valid: {reason}")]
    CaFileInvalid { path: PathBuf, reason: String },

    #[error("TLS setup failed: {0}")]
    TlsSetup(rustls::Error),

    #[error("invalid TLS server name {name:?}: expected a DNS name or an IP address")]
    InvalidServerName { name: String },

    #[error("cannot resolve {host}:{port}: {source}")]
    Resolve { host: String, port: u16, source: io::Error },

    #[error("{host}:{port} resolved to no address")]
    NoAddress { host: String, port: u16 },

    #[error("TCP connect to {host}:{port} ({addr}) failed: {source}")]
    Connect { host: String, port: u16, addr: SocketAddr, source: io::Error },

    #[error("TLS handshake with {host} failed: certificate not trusted ({reason}); if the server uses a private CA, pass it with --ca-file")]
    Untrusted { host: String, reason: String },

    #[error("TLS handshake with {host} failed: {source}")]
    Handshake { host: String, source: io::Error },
}

/// Builds the TLS client configuration: Mozilla roots plus the certificates in `ca_file`.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    tls_config_with_pem(ca_file, None)
}

/// Builds the TLS client configuration: Mozilla roots, the certificates in `ca_file`, and those
/// in `ca_pem` (PEM text held in memory, such as an embedded simulator's CA).
pub fn tls_config_with_pem(ca_file: Option<&Path>, ca_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        add_ca_file(&mut roots, path)?;
    }
    if let Some(pem) = ca_pem {
        add_ca_pem(&mut roots, pem)?;
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TransportError::TlsSetup)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn add_ca_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), TransportError> {
    let unreadable = |source| TransportError::CaFileUnreadable { path: path.to_path_buf(), error: source };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    if certs.is_empty() {
        return Err(TransportError::CaFileEmpty { path: path.to_path_buf() });
    }
    for cert in certs {
        roots.add(cert).map_err(|e| TransportError::CaFileInvalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

fn add_ca_pem(roots: &mut rustls::RootCertStore, pem: &str) -> Result<(), TransportError> {
    let source = PathBuf::from("<in-memory CA>");
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::CaFileUnreadable { path: source.clone(), error: e })?;
    if certs.is_empty() {
        return Err(TransportError::CaFileEmpty { path: source });
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| TransportError::CaFileInvalid { path: source.clone(), reason: e.to_string() })?;
    }
    Ok(())
}

/// Opens a TCP connection with `TCP_NODELAY` and keepalive set, trying each resolved address.
pub async fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, TransportError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| TransportError::Resolve { host: host.to_string(), port, source })?
        .collect();

    let mut last_error = None;
    for addr in addrs {
        match connect_addr(addr).await {
            Ok(stream) => return Ok(stream),
            Err(source) => {
                tracing::debug!(%host, port, %addr, error = %source, "tcp connect attempt failed");
                last_error = Some(TransportError::Connect { host: host.to_string(), port, addr, source });
            }
        }
    }
    Err(last_error.unwrap_or(TransportError::NoAddress { host: host.to_string(), port }))
}

async fn connect_addr(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    SockRef::from(&socket).set_tcp_keepalive(&keepalive)?;
    socket.connect(addr).await
}

/// Connects TCP to `host:port`, then runs the TLS handshake presenting `server_name` for SNI and
/// certificate verification.
pub async fn connect(
    host: &str,
    port: u16,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Stream, TransportError> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| TransportError::InvalidServerName { name: server_name.to_string() })?;
    let tcp = connect_tcp(host, port).await?;

    TlsConnector::from(tls).connect(name, tcp).await.map_err(|source| handshake_error(server_name, source))
}

fn handshake_error(host: &str, source: io::Error) -> TransportError {
    let certificate_problem = source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|error| match error {
            rustls::Error::InvalidCertificate(reason) => Some(format!("{reason:?}")),
            _ => None,
        });
    match certificate_problem {
        Some(reason) => TransportError::Untrusted { host: host.to_string(), reason },
        None => TransportError::Handshake { host: host.to_string(), source },
    }
}

/// A private CA and server certificate for tests that need a real TLS server.
#[cfg(test)]
pub(crate) mod test_pki {
    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    pub struct TestPki {
        pub ca_pem: String,
        pub server_config: Arc<rustls::ServerConfig>,
    }

    /// Builds a private CA and a `localhost` / `127.0.0.1` server certificate signed by it.
    pub fn test_pki() -> TestPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let chain: Vec<CertificateDer<'static>> = vec![server_cert.der().clone()];
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        TestPki { ca_pem: ca_cert.pem(), server_config: Arc::new(server_config) }
    }

}

#[cfg(test)]
mod tests {
    use super::test_pki::test_pki;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Accepts one TLS connection and echoes one line back, so a successful handshake is visible.
    async fn spawn_tls_echo(server_config: Arc<rustls::ServerConfig>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let mut buf = [0u8; 5];
                if tls.read_exact(&mut buf).await.is_ok() {
                    let _ = tls.write_all(&buf).await;
                    let _ = tls.shutdown().await;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn tcp_socket_has_nodelay_and_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();

        let stream = connect_tcp("127.0.0.1", port).await.unwrap();
        let socket = SockRef::from(&stream);

        assert!(socket.tcp_nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
    }

    #[tokio::test]
    async fn tls_trusts_ca_file() {
        let pki = test_pki();
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &pki.ca_pem).unwrap();
        let addr = spawn_tls_echo(pki.server_config).await;

        let tls = tls_config(Some(&ca_path)).unwrap();
        let mut stream = connect("127.0.0.1", addr.port(), "localhost", tls).await.unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut reply = [0u8; 5];
        stream.read_exact(&mut reply).await.unwrap();

        assert_eq!(&reply, b"hello");
    }

    #[tokio::test]
    async fn tls_rejects_untrusted_certificate() {
        let pki = test_pki();
        let addr = spawn_tls_echo(pki.server_config).await;

        let tls = tls_config(None).unwrap();
        let error = connect("127.0.0.1", addr.port(), "localhost", tls).await.unwrap_err();

        assert!(matches!(error, TransportError::Untrusted { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("localhost"), "{message}");
        assert!(message.contains("--ca-file"), "{message}");
    }

    #[tokio::test]
    async fn tls_rejects_wrong_server_name() {
        let pki = test_pki();
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &pki.ca_pem).unwrap();
        let addr = spawn_tls_echo(pki.server_config).await;

        let tls = tls_config(Some(&ca_path)).unwrap();
        let error = connect("127.0.0.1", addr.port(), "example.invalid", tls).await.unwrap_err();

        assert!(matches!(error, TransportError::Untrusted { .. }), "{error:?}");
        assert!(error.to_string().contains("example.invalid"));
    }

    #[test]
    fn ca_file_without_certificate_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();

        let error = tls_config(Some(&path)).unwrap_err();

        assert!(matches!(error, TransportError::CaFileEmpty { .. }), "{error:?}");
        assert!(error.to_string().contains("empty.pem"));
    }

    #[test]
    fn missing_ca_file_names_path() {
        let error = tls_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();

        assert!(matches!(error, TransportError::CaFileUnreadable { .. }), "{error:?}");
        assert!(error.to_string().contains("/nonexistent/ca.pem"));
    }
}

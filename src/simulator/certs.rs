//! A throwaway certificate authority and server certificate, generated at every start, so
//! clients can verify the simulator's TLS exactly as they verify cTrader's.

use std::sync::Arc;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The DNS name on the server certificate; the certificate also covers 127.0.0.1 and ::1.
pub const SERVER_NAME: &str = "localhost";

/// A server TLS configuration and the PEM of the CA that signed its certificate.
pub(crate) struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub ca_pem: String,
}

/// Generates a CA and a server certificate for `localhost`, 127.0.0.1 and ::1.
pub(crate) fn generate() -> anyhow::Result<ServerTls> {
    let ca_key = KeyPair::generate().context("failed to generate the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "tickgate simulator CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).context("failed to sign the CA certificate")?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().context("failed to generate the server key")?;
    let mut server_params = CertificateParams::new(vec![SERVER_NAME.to_string(), "127.0.0.1".to_string(), "::1".to_string()])?;
    server_params.distinguished_name.push(DnType::CommonName, SERVER_NAME);
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &issuer).context("failed to sign the server certificate")?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![server_cert.der().clone(), ca_cert.der().clone()], key)
        .context("failed to build the server TLS configuration")?;

    Ok(ServerTls { config: Arc::new(config), ca_pem: ca_cert.pem() })
}

/// Builds a client TLS configuration that trusts only the CA in `ca_pem`.
pub fn client_config(ca_pem: &str) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut ca_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("invalid CA PEM: expected one or more CERTIFICATE blocks")?;
    if certs.is_empty() {
        anyhow::bail!("invalid CA PEM: no CERTIFICATE block found");
    }
    for cert in certs {
        roots.add(cert).context("CA certificate rejected by rustls")?;
    }

    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

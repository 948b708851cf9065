//! TLS to the control plane: rustls client configurations and the tonic connector that uses
//! them.
//!
//! Before joining, the agent has no CA to trust, only the pin in its join token; the
//! [`PinnedCaVerifier`] finds the CA certificate in the chain the server presents, checks its
//! pin, and then verifies the chain against it as usual. After joining, the stored CA is the only
//! root and the agent presents its own certificate.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file holds no usable certificate or key.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The control-plane address is not usable.
    #[error("control-plane address {0:?}: {1}")]
    Address(String, String),
    /// Connecting failed.
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates in a PEM text.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| TlsError::Pem(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no certificate in PEM".into()));
    }
    Ok(certs)
}

pub(crate) fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem(format!("private key PEM: {e}")))
}

/// Configuration for joining: trust whatever CA in the server's chain matches `pin`.
pub fn pinned_config(pin: &str) -> Result<ClientConfig, TlsError> {
    let verifier = Arc::new(PinnedCaVerifier { pin: pin.to_string(), provider: provider() });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Configuration for a joined agent: the fleet CA as the only root, and the agent's own
/// certificate and key.
pub fn mutual_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert)?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs_from_pem(cert_pem)?, key_from_pem(key_pem)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Opens a gRPC channel to `address` (`host:port`) over TLS with `config`.
pub async fn connect(address: &str, config: ClientConfig) -> Result<Channel, TlsError> {
    let (host, _port) =
        address.rsplit_once(':').ok_or_else(|| TlsError::Address(address.into(), "expected host:port".into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let server_name =
        ServerName::try_from(host.clone()).map_err(|e| TlsError::Address(address.into(), e.to_string()))?;
    let uri: Uri = format!("http://{address}")
        .parse()
        .map_err(|e: tonic::codegen::http::uri::InvalidUri| TlsError::Address(address.into(), e.to_string()))?;
    let connector = TlsConnector::from(Arc::new(config));
    let target = address.to_string();
    let service = tower::service_fn(move |_: Uri| {
        let (connector, server_name, target) = (connector.clone(), server_name.clone(), target.clone());
        async move {
            let tcp = TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Endpoint::from(uri)
        .connect_timeout(std::time::Duration::from_secs(5))
        .http2_keep_alive_interval(std::time::Duration::from_secs(20))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        .connect_with_connector(service)
        .await
        .map_err(|e| TlsError::Connect(address.into(), error_chain(&e)))
}

/// A whole error chain on one line: transport errors keep the useful part in their sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Trusts the CA certificate in the presented chain whose pin matches, and nothing else.
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca =
            intermediates.iter().find(|c| warden_core::identity::ca_pin(c.as_ref()) == self.pin).ok_or_else(|| {
                rustls::Error::General(
                    "the control plane's certificate chain holds no CA matching the join token's pin".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

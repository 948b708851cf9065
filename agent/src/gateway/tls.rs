//! TLS on gateway listeners: servers whose `resource` is `https` are served over TLS with the
//! agent's gateway certificate, and servers with `binding: mtls` also ask every caller for a
//! certificate.
//!
//! Caller certificates are not chained to any CA: RFC 8705 §2.2 binds a token to a certificate
//! by its thumbprint (`cnf.x5t#S256`), so a self-signed certificate is as good as any. What the
//! handshake does prove is possession of the certificate's private key (the client's
//! CertificateVerify signature is checked, by `warden_tls::ProofOfPossession`); the thumbprint
//! check against the token happens per request in the token verifier.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::danger::ClientCertVerifier;

use crate::tls::{TlsError, certs_from_pem, key_from_pem, provider};

/// The two server configurations a gateway needs: without and with client certificates.
#[derive(Clone)]
pub struct GatewayTls {
    /// For `https` servers.
    pub server_only: Arc<ServerConfig>,
    /// For `binding: mtls` servers: a client certificate is required.
    pub mutual: Arc<ServerConfig>,
}

impl GatewayTls {
    /// From the gateway's certificate chain and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<GatewayTls, TlsError> {
        let config = |verifier: Option<Arc<dyn ClientCertVerifier>>| -> Result<Arc<ServerConfig>, TlsError> {
            let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
            let builder = match verifier {
                Some(v) => builder.with_client_cert_verifier(v),
                None => builder.with_no_client_auth(),
            };
            let mut config = builder.with_single_cert(certs_from_pem(cert_pem)?, key_from_pem(key_pem)?)?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        };
        Ok(GatewayTls { server_only: config(None)?, mutual: config(Some(warden_tls::ProofOfPossession::required()))? })
    }
}

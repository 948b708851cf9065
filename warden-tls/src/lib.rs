//! TLS pieces shared by the control plane and the agent.
//!
//! [`ProofOfPossession`] accepts any client certificate whose key signed the handshake, without
//! chaining it to a CA: RFC 8705 §2.2 binds a token to a certificate by its thumbprint
//! (`cnf.x5t#S256`), so a self-signed certificate is as good as any. The agent's gateway uses
//! it to check callers of certificate-bound tokens; the control plane's token service uses it
//! to learn which certificate to bind a task token to.
#![forbid(unsafe_code)]

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, SignatureScheme};

/// Accepts any client certificate whose key signed the handshake.
#[derive(Debug)]
pub struct ProofOfPossession {
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ProofOfPossession {
    /// Every client must present a certificate.
    pub fn required() -> Arc<ProofOfPossession> {
        Arc::new(ProofOfPossession { mandatory: true, provider: Arc::new(rustls::crypto::ring::default_provider()) })
    }

    /// Clients may present a certificate (and prove its key) or none.
    pub fn optional() -> Arc<ProofOfPossession> {
        Arc::new(ProofOfPossession { mandatory: false, provider: Arc::new(rustls::crypto::ring::default_provider()) })
    }
}

impl ClientCertVerifier for ProofOfPossession {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Which certificate may be used is the token's to say (cnf.x5t#S256), per request.
        Ok(ClientCertVerified::assertion())
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

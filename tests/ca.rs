//! A throwaway certificate authority (rcgen) for the TLS peers of the tests.

/// A throwaway certificate authority for TLS peers in the tests (etcd, the OTLP receiver).
pub struct TestCa {
    /// Its certificate, PEM.
    pub pem: String,
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
}

impl TestCa {
    /// A new CA.
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).expect("CA").pem();
        TestCa { pem, params, key }
    }

    /// A certificate for `ips` named `name` (PEM certificate, PEM key); `usage` when given.
    pub fn issue(
        &self,
        ips: &[std::net::IpAddr],
        usage: Option<rcgen::ExtendedKeyUsagePurpose>,
        name: &str,
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)).collect();
        params.extended_key_usages = usage.into_iter().collect();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &rcgen::Issuer::from_params(&self.params, &self.key)).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }
}

impl Default for TestCa {
    fn default() -> TestCa {
        TestCa::new()
    }
}

/// Accepts any server certificate: for reading what a server presents, never for trusting it.
#[derive(Debug)]
struct AnyServer(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The leaf certificate (DER) the TLS server at `addr` presents in a fresh handshake offering
/// `alpn`, read without trusting it.
pub fn served_certificate(addr: &str, alpn: &[u8]) -> Vec<u8> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
    let mut socket = std::net::TcpStream::connect(addr).expect("connect");
    // A server that never answers fails the test rather than hanging it.
    socket.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    socket.set_write_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    while connection.is_handshaking() {
        connection.complete_io(&mut socket).expect("handshake");
    }
    connection.peer_certificates().expect("a certificate")[0].to_vec()
}

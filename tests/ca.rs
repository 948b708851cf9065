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

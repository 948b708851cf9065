//! The fleet's PKI: a CA (generated on first start or supplied by the operator) that issues the
//! control plane's serving certificate, short-lived agent client certificates from the agents'
//! own CSRs, and operator client certificates.
//!
//! Identities are SPIFFE-style URI SANs: `spiffe://<trust-domain>/agent/<id>` and
//! `spiffe://<trust-domain>/operator/<name>`.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing the CA files failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The operator-provided CA files are unusable.
    #[error("CA files: {0}")]
    BadCa(String),
    /// A certificate signing request is malformed or its signature does not verify.
    #[error("certificate signing request refused: {0}")]
    BadCsr(String),
    /// rcgen failed to produce a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Where the CA comes from.
pub enum CaSource<'a> {
    /// Use (or create on first start) `ca.crt` and `ca.key` in this directory.
    DataDir(&'a Path),
    /// Operator-provided PEM files; shared by every replica.
    Files {
        /// CA certificate (PEM).
        cert: &'a Path,
        /// CA private key (PEM, PKCS#8).
        key: &'a Path,
    },
}

/// The fleet CA and the identities it names.
pub struct FleetCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
    trust_domain: String,
}

impl FleetCa {
    /// Loads the CA, generating and storing one (key 0600) on first start in `DataDir` mode.
    pub fn load_or_create(source: CaSource<'_>, trust_domain: &str) -> Result<FleetCa, PkiError> {
        let (cert_path, key_path) = match source {
            CaSource::DataDir(dir) => {
                let cert = dir.join("ca.crt");
                let key = dir.join("ca.key");
                if !cert.exists() {
                    let (cert_pem, key_pem) = generate_ca(trust_domain)?;
                    write_private(&key, key_pem.as_bytes())?;
                    fs::write(&cert, cert_pem).map_err(|e| io(&cert, e))?;
                }
                (cert, key)
            }
            CaSource::Files { cert, key } => (cert.to_path_buf(), key.to_path_buf()),
        };
        let cert_pem = fs::read_to_string(&cert_path).map_err(|e| io(&cert_path, e))?;
        let key_pem = fs::read_to_string(&key_path).map_err(|e| io(&key_path, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::BadCa(format!("key: {e}")))?;
        let cert_der = pem_to_der(&cert_pem).ok_or_else(|| PkiError::BadCa("certificate is not PEM".into()))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der.clone().into(), key)
            .map_err(|e| PkiError::BadCa(format!("certificate: {e}")))?;
        Ok(FleetCa { issuer, cert_pem, cert_der, trust_domain: trust_domain.to_string() })
    }

    /// A key for `purpose`, derived from the CA's private key (HMAC-SHA256 of the purpose under
    /// the key's DER): the same on every replica sharing the CA, never written anywhere, and
    /// gone with the CA.
    pub fn derived_key(&self, purpose: &str) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.issuer.key().serialize_der());
        let tag = ring::hmac::sign(&key, purpose.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The CA certificate (PEM), what every member of the fleet trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The pin agents check the CA against on their first connection: base64url (no padding)
    /// of the SHA-256 of the CA certificate's DER.
    pub fn pin(&self) -> String {
        warden_core::identity::ca_pin(&self.cert_der)
    }

    /// When the CA certificate becomes valid and when it expires (Unix seconds); `None` if its
    /// dates do not parse.
    pub fn validity_unix(&self) -> Option<(i64, i64)> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(&self.cert_der).ok()?;
        Some((cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp()))
    }

    /// The trust domain of SPIFFE IDs this CA issues.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The SPIFFE ID of agent `id`.
    pub fn agent_spiffe_id(&self, id: &str) -> String {
        format!("spiffe://{}/agent/{id}", self.trust_domain)
    }

    /// The SPIFFE ID of operator `name`.
    pub fn operator_spiffe_id(&self, name: &str) -> String {
        format!("spiffe://{}/operator/{name}", self.trust_domain)
    }

    /// Issues the control plane's serving certificate (a fresh key, held in memory only) for
    /// the given DNS names and IP addresses. Returns the chain (leaf then CA) and key, PEM.
    pub fn issue_server(&self, names: &[String], ttl: Duration) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = leaf_params("warden control plane", ttl)?;
        for name in names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into()?),
            });
        }
        params
            .subject_alt_names
            .push(SanType::URI(format!("spiffe://{}/control-plane", self.trust_domain).try_into()?));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((format!("{}{}", cert.pem(), self.cert_pem), key.serialize_pem()))
    }

    /// Signs a client certificate for `spiffe_id` over the public key of `csr_pem`. Everything
    /// else the CSR asks for (names, usages, lifetime) is ignored: the control plane decides.
    pub fn sign_client_csr(&self, csr_pem: &str, spiffe_id: &str, ttl: Duration) -> Result<IssuedCert, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::BadCsr(e.to_string()))?;
        self.sign_client(&csr.public_key, spiffe_id, ttl)
    }

    fn sign_client(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        spiffe_id: &str,
        ttl: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let mut params = leaf_params(spiffe_id, ttl)?;
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let not_after = params.not_after;
        let serial = params.serial_number.as_ref().map(|s| hex_serial(s.as_ref())).unwrap_or_default();
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(IssuedCert { pem: cert.pem(), not_after_unix: not_after.unix_timestamp(), serial })
    }
}

/// A certificate just issued.
pub struct IssuedCert {
    /// The certificate, PEM.
    pub pem: String,
    /// Its expiry, seconds since the epoch.
    pub not_after_unix: i64,
    /// Its serial number, lower-case hex: what the registry keeps to tell this certificate
    /// apart from every other one issued for the same identity.
    pub serial: String,
}

/// A certificate serial number as the registry writes it: lower-case hex, no leading zeros
/// (DER may add a zero byte to keep the number positive; the number is the same).
pub fn hex_serial(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() { "0".into() } else { trimmed.into() }
}

fn generate_ca(trust_domain: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, format!("Warden fleet CA ({trust_domain})"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = OffsetDateTime::now_utc() + time::Duration::days(3650);
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn leaf_params(common_name: &str, ttl: Duration) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Back-date a little so a peer whose clock is slightly behind accepts the certificate.
    let now = OffsetDateTime::from(SystemTime::now());
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::try_from(ttl).map_err(|e| PkiError::BadCa(e.to_string()))?;
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // keep it positive
    SerialNumber::from_slice(&bytes)
}

/// Decodes the first PEM block.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io(path, e))?;
    f.write_all(bytes).map_err(|e| io(path, e))
}

fn io(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io { path: path.display().to_string(), source }
}

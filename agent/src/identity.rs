//! The agent's fleet identity: a key pair it generates itself, the short-lived certificate the
//! control plane issued for it, and the CA it trusts, all kept in the data directory (key and
//! certificate readable by the owner only).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::v1 as pb;
use rcgen::{CertificateParams, DnType, KeyPair};
use warden_core::identity::JoinToken;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::tls::{self, TlsError};

/// Why the agent has no usable identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file in the data directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The agent never joined and was given no join token or attestation.
    #[error(
        "this agent has not joined the fleet yet: pass --join-token (create one with `wardenctl join-token create`), or --join-attestation-file and --fleet-ca"
    )]
    NotJoined,
    /// The join token is malformed.
    #[error("join token: {0}")]
    BadToken(&'static str),
    /// The control plane refused the request; the message says why (e.g. an expired or used
    /// join token).
    #[error("control plane refused: {0}")]
    Refused(String),
    /// The control plane is busy with other joins: try again later.
    #[error("control plane busy: {0}")]
    Busy(String),
    /// The control plane could not be reached or authenticated.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A key or CSR could not be generated, or a certificate parsed.
    #[error("certificate: {0}")]
    Certificate(String),
}

/// A usable identity: certificate, key and CA, PEM.
#[derive(Clone)]
pub struct Identity {
    /// The agent's certificate.
    pub cert_pem: String,
    /// The agent's private key.
    pub key_pem: String,
    /// The fleet CA.
    pub ca_pem: String,
    /// Certificate validity start and end, seconds since the epoch.
    pub not_before: i64,
    /// See `not_before`.
    pub not_after: i64,
    /// When this agent got it (joined, renewed), seconds since the epoch; for one loaded from
    /// the data directory, its `notBefore`.
    pub held_since: i64,
}

impl Identity {
    /// The rustls configuration presenting this identity.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        tls::mutual_config(&self.ca_pem, &self.cert_pem, &self.key_pem)
    }

    /// When to renew: two thirds into the certificate's life as this agent holds it, from when
    /// it got it. Not from `notBefore` for one it just got: the control plane back-dates that by
    /// five minutes (for peers whose clocks are behind), so a certificate of under 150 s would
    /// be renewed again at once, and again, for as long as it lived.
    pub fn renew_at(&self) -> i64 {
        let from = self.not_before.max(self.held_since);
        from + (self.not_after - from).max(0) * 2 / 3
    }
}

/// File locations in the data directory.
pub struct Files {
    key: PathBuf,
    cert: PathBuf,
    ca: PathBuf,
}

impl Files {
    /// Identity files under `data_dir`.
    pub fn new(data_dir: &Path) -> Files {
        Files { key: data_dir.join("agent.key"), cert: data_dir.join("agent.crt"), ca: data_dir.join("ca.crt") }
    }

    /// The stored identity, if the agent joined before.
    pub fn load(&self) -> Result<Option<Identity>, IdentityError> {
        if !self.cert.exists() {
            return Ok(None);
        }
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|source| io(p, source));
        // Held since its `notBefore` (the most that is known): one loaded past two thirds of
        // its life is renewed at once.
        let mut loaded = identity(read(&self.cert)?, read(&self.key)?, read(&self.ca)?)?;
        loaded.held_since = loaded.not_before;
        Ok(Some(loaded))
    }

    fn store(&self, id: &Identity) -> Result<(), IdentityError> {
        write_private(&self.key, &id.key_pem)?;
        write_private(&self.cert, &id.cert_pem)?;
        write_private(&self.ca, &id.ca_pem)
    }
}

fn io(path: &Path, source: std::io::Error) -> IdentityError {
    IdentityError::Io { path: path.display().to_string(), source }
}

/// Writes `text` atomically (temporary file, then rename) with mode 0600.
fn write_private(path: &Path, text: &str) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

fn identity(cert_pem: String, key_pem: String, ca_pem: String) -> Result<Identity, IdentityError> {
    let der = tls::certs_from_pem(&cert_pem)?.remove(0);
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| IdentityError::Certificate(e.to_string()))?;
    let validity = cert.validity();
    let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    Ok(Identity { cert_pem, key_pem, ca_pem, not_before, not_after, held_since: now_unix() })
}

fn new_key_and_csr(agent_id: &str) -> Result<(KeyPair, String), IdentityError> {
    let key = KeyPair::generate().map_err(|e| IdentityError::Certificate(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, agent_id);
    let csr =
        params.serialize_request(&key).and_then(|c| c.pem()).map_err(|e| IdentityError::Certificate(e.to_string()))?;
    Ok((key, csr))
}

/// How an agent joins the fleet the first time.
#[derive(Clone)]
pub enum Join {
    /// With a one-time join token an operator made for it (`<id>.<secret>.<ca-pin>`).
    Token(String),
    /// With a token its platform issued to where it runs (a Kubernetes projected
    /// service-account token), read from `token_file` at each attempt (the platform rotates
    /// it), trusting the control plane whose chain holds the CA in `fleet_ca`.
    Attestation {
        /// The token's file.
        token_file: PathBuf,
        /// The fleet CA certificate (PEM).
        fleet_ca: PathBuf,
    },
}

/// Joins the fleet through the control plane at `address` as `join` says, and stores the
/// resulting identity.
pub async fn join(
    files: &Files,
    address: &str,
    join: &Join,
    agent_id: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Identity, IdentityError> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|source| io(p, source));
    let (token, attestation, ca_pin) = match join {
        Join::Token(text) => {
            let token = JoinToken::parse(text).map_err(IdentityError::BadToken)?;
            (token.credential(), String::new(), token.ca_pin)
        }
        Join::Attestation { token_file, fleet_ca } => {
            let ca = tls::certs_from_pem(&read(fleet_ca)?)?.remove(0);
            let attestation = read(token_file)?.trim().to_string();
            if attestation.is_empty() {
                return Err(IdentityError::BadToken("the attestation token file is empty"));
            }
            (String::new(), attestation, warden_core::identity::ca_pin(ca.as_ref()))
        }
    };
    let (key, csr_pem) = new_key_and_csr(agent_id)?;
    let channel = tls::connect(address, tls::pinned_config(&ca_pin)?).await?;
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    let response = client
        .join(pb::JoinRequest {
            token,
            agent_id: agent_id.to_string(),
            labels: labels.clone().into_iter().collect(),
            csr_pem,
            attestation,
        })
        .await
        .map_err(refused)?
        .into_inner();
    let id = identity(response.certificate_pem, key.serialize_pem(), response.ca_pem)?;
    files.store(&id)?;
    tracing::info!(spiffe_id = %response.spiffe_id, not_after = id.not_after, "joined the fleet");
    Ok(id)
}

/// Renews the certificate with a fresh key, authenticating with the current one. An agent that
/// joined with an attestation presents its platform's current token too (read from
/// `attestation`, its file, at each renewal: the platform rotates it).
pub async fn renew(
    files: &Files,
    address: &str,
    agent_id: &str,
    current: &Identity,
    attestation: Option<&Path>,
) -> Result<Identity, IdentityError> {
    let attestation = match attestation {
        Some(path) => std::fs::read_to_string(path).map_err(|source| io(path, source))?.trim().to_string(),
        None => String::new(),
    };
    let (key, csr_pem) = new_key_and_csr(agent_id)?;
    let channel = tls::connect(address, current.client_config()?).await?;
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    let response = client.renew(pb::RenewRequest { csr_pem, attestation }).await.map_err(refused)?.into_inner();
    let id = identity(response.certificate_pem, key.serialize_pem(), response.ca_pem)?;
    files.store(&id)?;
    tracing::info!(not_after = id.not_after, "certificate renewed");
    Ok(id)
}

fn refused(status: tonic::Status) -> IdentityError {
    match status.code() {
        tonic::Code::ResourceExhausted => IdentityError::Busy(status.message().to_string()),
        tonic::Code::Unavailable | tonic::Code::Unknown => {
            IdentityError::Refused(format!("{} ({})", status.message(), tls::error_chain(&status)))
        }
        _ => IdentityError::Refused(status.message().to_string()),
    }
}

/// Seconds since the epoch.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(not_before: i64, not_after: i64, held_since: i64) -> Identity {
        Identity {
            cert_pem: String::new(),
            key_pem: String::new(),
            ca_pem: String::new(),
            not_before,
            not_after,
            held_since,
        }
    }

    #[test]
    fn a_certificate_is_renewed_two_thirds_into_its_life_as_held_not_at_once() {
        // 24 h, back-dated five minutes: two thirds in, as before.
        assert_eq!(held(1_000 - 300, 1_000 + 86_400, 1_000).renew_at(), 1_000 + 57_600);
        // 12 s, back-dated five minutes: 8 s after it came, where counting from `notBefore`
        // said 92 s ago (a renewal at once, and again after it).
        assert_eq!(held(1_000 - 300, 1_012, 1_000).renew_at(), 1_008);
        // Got late in its life: two thirds of what is left; expired: now.
        assert_eq!(held(0, 900, 600).renew_at(), 800);
        assert_eq!(held(0, 900, 1_000).renew_at(), 1_000);
        // Loaded from the data directory (held since `notBefore`) past two thirds: at once.
        assert_eq!(held(0, 900, 0).renew_at(), 600);
    }
}

//! Who is calling: the fleet identity in the caller's client certificate, or the local user on
//! the admin socket.

use tonic::Request;
use warden_core::identity::{FleetIdentity, parse_spiffe_id};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The fleet identity named by the caller's verified client certificate (the TLS layer has
/// already checked the chain against the fleet CA; this reads the URI SAN) and the certificate's
/// serial number (hex, as [`crate::fleet::pki::hex_serial`] writes it), which tells apart the certificates
/// issued for one identity.
pub fn certificate<T>(request: &Request<T>, trust_domain: &str) -> Option<(FleetIdentity, String)> {
    let certs = request.peer_certs()?;
    identity(certs.first()?.as_ref(), trust_domain)
}

/// The fleet identity a verified certificate (DER) names, and its serial (hex).
pub fn identity(der: &[u8], trust_domain: &str) -> Option<(FleetIdentity, String)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let identity = san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => parse_spiffe_id(uri, trust_domain),
        _ => None,
    })?;
    Some((identity, crate::fleet::pki::hex_serial(cert.raw_serial())))
}

/// When the caller's verified client certificate expires, seconds since the epoch. The TLS layer
/// checks the dates at a full handshake, but not when it resumes a session, and never again
/// during a stream that outlives the certificate.
pub fn not_after<T>(request: &Request<T>) -> Option<i64> {
    let certs = request.peer_certs()?;
    let (_, cert) = X509Certificate::from_der(certs.first()?.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Who is making an admin call.
pub enum AdminCaller {
    /// A local user on the admin socket (whose file permissions are the access control).
    Local(String),
    /// An operator certificate: the operator's name and the certificate's serial (hex), still
    /// to be checked against the certificates issued to that name.
    Operator(String, String),
}

impl AdminCaller {
    /// As the audit trail names it: `uid:<n>` or `operator:<name>`.
    pub fn actor(&self) -> String {
        match self {
            AdminCaller::Local(uid) => format!("uid:{uid}"),
            AdminCaller::Operator(name, _) => format!("operator:{name}"),
        }
    }
}

/// Who is making an admin call: the local admin socket or an operator certificate. Anyone else
/// is refused.
pub fn admin_caller<T>(request: &Request<T>, trust_domain: &str) -> Result<AdminCaller, tonic::Status> {
    if let Some(info) = request.extensions().get::<tonic::transport::server::UdsConnectInfo>() {
        let uid = info.peer_cred.map(|c| c.uid().to_string()).unwrap_or_else(|| "unknown".into());
        return Ok(AdminCaller::Local(uid));
    }
    match certificate(request, trust_domain) {
        Some((FleetIdentity::Operator(name), serial)) => Ok(AdminCaller::Operator(name, serial)),
        _ => Err(tonic::Status::permission_denied(
            "the admin API accepts only the local admin socket or an operator client certificate",
        )),
    }
}

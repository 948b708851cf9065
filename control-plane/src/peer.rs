//! Who is calling: the fleet identity in the caller's client certificate, or the local user on
//! the admin socket.

use tonic::Request;
use warden_core::identity::{FleetIdentity, parse_spiffe_id};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The fleet identity named by the caller's verified client certificate, if any. The TLS layer
/// has already checked the chain against the fleet CA; this reads the URI SAN.
pub fn certificate_identity<T>(request: &Request<T>, trust_domain: &str) -> Option<FleetIdentity> {
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => parse_spiffe_id(uri, trust_domain),
        _ => None,
    })
}

/// Who is making an admin call, for the audit trail: `uid:<n>` on the local admin socket (whose
/// file permissions are the access control), `operator:<name>` with an operator certificate.
/// Anyone else is refused.
pub fn admin_actor<T>(request: &Request<T>, trust_domain: &str) -> Result<String, tonic::Status> {
    if let Some(info) = request.extensions().get::<tonic::transport::server::UdsConnectInfo>() {
        let uid = info.peer_cred.map(|c| c.uid().to_string()).unwrap_or_else(|| "unknown".into());
        return Ok(format!("uid:{uid}"));
    }
    match certificate_identity(request, trust_domain) {
        Some(FleetIdentity::Operator(name)) => Ok(format!("operator:{name}")),
        _ => Err(tonic::Status::permission_denied(
            "the admin API accepts only the local admin socket or an operator client certificate",
        )),
    }
}

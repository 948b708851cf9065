//! `wardenctl revoke`: revokes tokens across the fleet, now, by applying a `Revocation` that
//! lasts until every token it covers has expired.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use proto::v1 as pb;
use warden_core::{Admission, Document, Kind};
use wardenctl::client;

/// Revoke tokens across the fleet, now: one token by its `jti`, every token of a subject,
/// or every token of an issuer issued up to now (task tokens exchanged for them included);
/// or a credential bridge's key (`--bridge`). The revocation is deleted by the control plane
/// once every token it covers has expired (a bridge's: at the bridge's expiry).
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["jti", "subject", "all", "bridge"])))]
pub struct Revoke {
    /// The TrustedIssuer (name) whose token(s) to revoke.
    #[arg(long, required_unless_present = "bridge", conflicts_with = "bridge")]
    issuer: Option<String>,
    /// One token, by its `jti`.
    // A `jti` is often random base64url, which starts with `-` one time in 64.
    #[arg(long, allow_hyphen_values = true)]
    jti: Option<String>,
    /// Every token of this subject issued up to now.
    #[arg(long, allow_hyphen_values = true)]
    subject: Option<String>,
    /// Every token of the issuer issued up to now.
    #[arg(long)]
    all: bool,
    /// A CredentialBridge (name): its key is refused everywhere from now on (`revoked`); a
    /// new key can be set on the bridge later.
    #[arg(long)]
    bridge: Option<String>,
}

impl Revoke {
    pub async fn run(self, target: &client::Target) -> anyhow::Result<ExitCode> {
        // `--all` is what neither `--jti` nor `--subject` means; clap requires one of the four.
        let Revoke { issuer, jti, subject, all: _, bridge } = self;
        let mut admin = client::connect(target).await?;
        let (kind, name) = match (&bridge, &issuer) {
            (Some(bridge), _) => (Kind::CredentialBridge, bridge.clone()),
            (None, Some(issuer)) => (Kind::TrustedIssuer, issuer.clone()),
            (None, None) => bail!("--issuer or --bridge is required"),
        };
        let stored = admin
            .get(pb::GetRequest { kind: kind.as_str().into(), name: name.clone() })
            .await
            .map_err(client::status)?
            .into_inner();
        let resource = stored.resources.first().with_context(|| format!("no {kind} {name:?}"))?;
        // Stored documents were admitted already: read back whatever URL rules applied then.
        let admission = Admission { allow_http_issuers: true };
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
        let document = match Document::from_json_bytes(&resource.document_json, &admission)?.spec {
            warden_core::resource::Spec::CredentialBridge(spec) => bridge_revocation(&name, &spec.key_digest)?,
            warden_core::resource::Spec::TrustedIssuer(spec) => {
                // Every token issued up to now has expired by then.
                let expires = now + spec.max_token_lifetime.0.as_secs() as i64 + spec.clock_skew.0.as_secs() as i64;
                revocation(&name, jti.as_deref(), subject.as_deref(), now, expires)?
            }
            _ => bail!("{name} is not a {kind}"),
        };
        let key = document.key();
        let response = admin
            .apply(pb::ApplyRequest { documents_json: vec![document.to_canonical_json()], dry_run: false })
            .await
            .map_err(client::status)?
            .into_inner();
        println!("{}/{} applied (configuration version {})", key.kind, key.name, response.version);
        Ok(ExitCode::SUCCESS)
    }
}

/// The `Revocation` document `wardenctl revoke` applies. A token's revocation is named after
/// the hash of (issuer, jti), as the token service names it, so revoking twice changes nothing.
fn revocation(
    issuer: &str,
    jti: Option<&str>,
    subject: Option<&str>,
    now: i64,
    expires: i64,
) -> anyhow::Result<Document> {
    use warden_core::revocation::format_time;
    let digest = |text: &str| warden_core::token::jti_hash(issuer, text)[..16].to_string();
    let (name, spec) = match (jti, subject) {
        (Some(jti), _) => {
            (warden_core::revocation::token_revocation_name(issuer, jti), serde_json::json!({"jti": jti}))
        }
        (None, Some(subject)) => (
            format!("subject-{}-{now}", digest(subject)),
            serde_json::json!({"subject": subject, "issuedBefore": format_time(now)}),
        ),
        (None, None) => (format!("issuer-{}-{now}", digest("")), serde_json::json!({"issuedBefore": format_time(now)})),
    };
    let mut spec = spec;
    spec["issuer"] = issuer.into();
    spec["expires"] = format_time(expires).into();
    let document = serde_json::json!({
        "apiVersion": warden_core::resource::API_VERSION,
        "kind": "Revocation",
        "metadata": {"name": name},
        "spec": spec,
    });
    Ok(Document::from_json(document, &Admission::default())?)
}

/// The `Revocation` of a credential bridge's key: by its digest, as the gateway checks it, so
/// it holds whichever bridge presents the key; named after the digest, so revoking twice
/// changes nothing. It never expires: a revoked key stays dead.
fn bridge_revocation(bridge: &str, digest: &str) -> anyhow::Result<Document> {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let document = serde_json::json!({
        "apiVersion": warden_core::resource::API_VERSION,
        "kind": "Revocation",
        "metadata": {"name": format!("bridge-key-{}", hex.get(..16).unwrap_or(hex))},
        "spec": {"issuer": bridge, "keyDigest": digest},
    });
    Ok(Document::from_json(document, &Admission::default())?)
}

//! `wardenctl operator-cert`: operator client certificates for `--control-plane` access from
//! another machine; `create` generates the key here and has the control plane certify it,
//! `revoke` has every control plane refuse an operator's certificates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use proto::v1 as pb;
use wardenctl::client;

/// Operator client certificates, for `--control-plane` access from another machine.
#[derive(clap::Args, Debug)]
pub struct OperatorCert {
    #[command(subcommand)]
    command: OperatorCertCommand,
}

#[derive(clap::Subcommand, Debug)]
enum OperatorCertCommand {
    /// Generate a key here and have the control plane certify it (admin socket only). Writes
    /// operator.key (0600), operator.crt and ca.crt into --out.
    Create {
        /// The operator's name: spiffe://<trust-domain>/operator/<name>.
        #[arg(long)]
        name: String,
        /// Directory to write the files into.
        #[arg(long)]
        out: PathBuf,
        /// Certificate lifetime.
        #[arg(long, default_value = "24h", value_parser = warden_core::duration::parse)]
        ttl: Duration,
    },
    /// Revoke every certificate issued to an operator name: refused from the next call on, by
    /// every control plane.
    Revoke {
        /// The operator's name.
        #[arg(long)]
        name: String,
    },
}

impl OperatorCert {
    pub async fn run(self, target: &client::Target) -> anyhow::Result<ExitCode> {
        match self.command {
            OperatorCertCommand::Create { name, out, ttl } => create(target, &name, &out, ttl).await?,
            OperatorCertCommand::Revoke { name } => revoke(target, &name).await?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Generates a key, has the control plane sign a certificate for it as operator `name`, and
/// writes key, certificate and fleet CA into `out`.
async fn create(target: &client::Target, name: &str, out: &Path, ttl: Duration) -> anyhow::Result<()> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let csr_pem = params.serialize_request(&key)?.pem()?;
    let mut admin = client::connect(target).await?;
    let response = admin
        .sign_operator_certificate(pb::SignOperatorCertificateRequest {
            name: name.to_string(),
            csr_pem,
            ttl_seconds: ttl.as_secs().max(1),
        })
        .await
        .map_err(client::status)?
        .into_inner();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_private(&out.join("operator.key"), &key.serialize_pem())?;
    write_private(&out.join("operator.crt"), &response.certificate_pem)?;
    write_private(&out.join("ca.crt"), &response.ca_pem)?;
    println!("operator certificate for {name} written to {}", out.display());
    Ok(())
}

/// Has every control plane refuse the certificates issued to operator `name`.
async fn revoke(target: &client::Target, name: &str) -> anyhow::Result<()> {
    let mut admin = client::connect(target).await?;
    admin
        .revoke_operator_certificates(pb::RevokeOperatorCertificatesRequest { name: name.to_string() })
        .await
        .map_err(client::status)?;
    println!("operator certificates of {name} revoked");
    Ok(())
}

/// Writes `text` to `path`; a file it creates is readable by its owner only (0600).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

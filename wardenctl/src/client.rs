//! Connecting to the control plane's admin API: the local socket, or TLS with an operator
//! certificate.

use std::path::PathBuf;

use anyhow::Context;
use hyper_util::rt::TokioIo;
use proto::v1::admin_service_client::AdminServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

/// Where the admin API is.
pub enum Target {
    /// The local admin socket.
    Socket(PathBuf),
    /// The TLS port, with an operator certificate.
    Tls {
        /// `host:port`.
        address: String,
        /// Operator certificate.
        cert: PathBuf,
        /// Operator key.
        key: PathBuf,
        /// Fleet CA.
        ca: PathBuf,
    },
}

/// An admin client for `target`.
pub async fn connect(target: &Target) -> anyhow::Result<AdminServiceClient<Channel>> {
    let channel = match target {
        Target::Socket(path) => {
            let path = path.clone();
            let shown = path.display().to_string();
            Endpoint::from_static("http://admin.sock")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                }))
                .await
                .with_context(|| {
                    format!(
                        "connecting to the admin socket {shown} (is warden-cp running, and may you read its data dir?)"
                    )
                })?
        }
        Target::Tls { address, cert, key, ca } => {
            let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
            let host = address.rsplit_once(':').map_or(address.as_str(), |(h, _)| h);
            let tls = ClientTlsConfig::new()
                .domain_name(host.trim_start_matches('[').trim_end_matches(']'))
                .ca_certificate(Certificate::from_pem(read(ca)?))
                .identity(Identity::from_pem(read(cert)?, read(key)?));
            Endpoint::from_shared(format!("https://{address}"))?
                .tls_config(tls)?
                .connect()
                .await
                .with_context(|| format!("connecting to {address}"))?
        }
    };
    Ok(AdminServiceClient::new(channel))
}

/// A refused call as an error that reads well.
pub fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

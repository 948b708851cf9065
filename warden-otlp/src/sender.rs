//! Sending export requests to one endpoint, and telling retryable failures from final ones.

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse, logs_service_client,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse, metrics_service_client,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse, trace_service_client,
};
use std::sync::Arc;

use prost::Message;

use crate::exports::{Exports, Outcome, Signal};
use crate::{Endpoint, Protocol};

/// Why an export failed, and whether to try the same batch again.
#[derive(Debug)]
pub struct ExportError {
    /// The OTLP specification says the same request may be tried again.
    pub retry: bool,
    pub message: String,
}

/// Sends export requests of one signal to one endpoint, counting how each ended in the
/// process's [`Exports`]. Clones share the gRPC connection (or the HTTP client's connection
/// pool).
#[derive(Clone)]
pub struct Sender {
    transport: Transport,
    exports: Arc<Exports>,
}

#[derive(Clone)]
enum Transport {
    Grpc(tonic::transport::Channel, Endpoint),
    Http(ureq::Agent, Endpoint),
}

/// An endpoint a sender cannot be made for: its URL or TLS files do not serve.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// gRPC refused the URL or the TLS settings.
    #[error("{url}: {source}")]
    Grpc {
        /// The endpoint.
        url: String,
        /// The cause.
        source: tonic::transport::Error,
    },
    /// A TLS file for OTLP/HTTP does not hold what it should.
    #[error("{url}: {source}")]
    Tls {
        /// The endpoint.
        url: String,
        /// The cause.
        source: TlsError,
    },
}

/// What is wrong with the TLS material given for OTLP/HTTP.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file does not parse.
    #[error("CA certificates: {0}")]
    Ca(ureq::Error),
    /// The CA file holds no certificate.
    #[error("no certificate in the CA file")]
    NoCa,
    /// The client certificate does not parse.
    #[error("client certificate: {0}")]
    ClientCert(ureq::Error),
    /// The client key does not parse.
    #[error("client key: {0}")]
    ClientKey(ureq::Error),
}

/// What the receiver refused of an accepted request (OTLP partial success).
trait Refused {
    fn refused(&self) -> i64;
}

impl Refused for ExportLogsServiceResponse {
    fn refused(&self) -> i64 {
        self.partial_success.as_ref().map_or(0, |p| p.rejected_log_records)
    }
}

impl Refused for ExportMetricsServiceResponse {
    fn refused(&self) -> i64 {
        self.partial_success.as_ref().map_or(0, |p| p.rejected_data_points)
    }
}

impl Refused for ExportTraceServiceResponse {
    fn refused(&self) -> i64 {
        self.partial_success.as_ref().map_or(0, |p| p.rejected_spans)
    }
}

fn with_headers<T>(request: T, endpoint: &Endpoint) -> tonic::Request<T> {
    let mut call = tonic::Request::new(request);
    for (k, v) in &endpoint.headers {
        let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
            tonic::metadata::MetadataValue::try_from(v.as_str()),
        ) else {
            continue;
        };
        call.metadata_mut().insert(k, v);
    }
    call
}

fn grpc_error(status: tonic::Status) -> ExportError {
    use tonic::Code;
    // The OTLP specification's retryable codes (and Unknown, which a restarting receiver sends).
    let retry = matches!(
        status.code(),
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
            | Code::ResourceExhausted
            | Code::Unknown
    );
    ExportError { retry, message: format!("{}: {}", status.code(), status.message()) }
}

impl Sender {
    /// A sender to `endpoint` (gRPC connections are made lazily, on the first request) that
    /// counts its requests in `exports`.
    pub fn new(endpoint: &Endpoint, exports: Arc<Exports>) -> Result<Sender, EndpointError> {
        let grpc = |source| EndpointError::Grpc { url: endpoint.url.clone(), source };
        let transport = match endpoint.protocol {
            Protocol::Grpc => {
                let mut channel = tonic::transport::Endpoint::from_shared(endpoint.url.clone())
                    .map_err(grpc)?
                    .timeout(endpoint.timeout)
                    .connect_timeout(endpoint.timeout);
                if let Some(tls) = &endpoint.tls {
                    let mut config = tonic::transport::ClientTlsConfig::new();
                    config = match &tls.ca_pem {
                        Some(ca) => config.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
                        None => config.with_webpki_roots(),
                    };
                    if let Some((cert, key)) = &tls.client_pem {
                        config = config.identity(tonic::transport::Identity::from_pem(cert, key));
                    }
                    channel = channel.tls_config(config).map_err(grpc)?;
                }
                Transport::Grpc(channel.connect_lazy(), endpoint.clone())
            }
            Protocol::HttpProtobuf => {
                let mut config =
                    ureq::Agent::config_builder().timeout_global(Some(endpoint.timeout)).http_status_as_error(false);
                if let Some(tls) = &endpoint.tls {
                    let tls =
                        ureq_tls(tls).map_err(|source| EndpointError::Tls { url: endpoint.url.clone(), source })?;
                    config = config.tls_config(tls);
                }
                Transport::Http(config.build().into(), endpoint.clone())
            }
        };
        Ok(Sender { transport, exports })
    }

    /// Counts how a request of `signal` ended, and passes the result on.
    fn counted(&self, signal: Signal, result: Result<i64, ExportError>) -> Result<i64, ExportError> {
        let outcome = match &result {
            Ok(0) => Outcome::Success,
            Ok(_) | Err(ExportError { retry: false, .. }) => Outcome::Rejected,
            Err(ExportError { retry: true, .. }) => Outcome::Failure,
        };
        self.exports.count(signal, outcome);
        result
    }

    /// Sends logs; `Ok` with the number of records the receiver refused.
    pub async fn logs(&self, request: ExportLogsServiceRequest) -> Result<i64, ExportError> {
        let result = match &self.transport {
            Transport::Grpc(channel, endpoint) => {
                let mut client = logs_service_client::LogsServiceClient::new(channel.clone());
                client
                    .export(with_headers(request, endpoint))
                    .await
                    .map(|a| a.into_inner().refused())
                    .map_err(grpc_error)
            }
            Transport::Http(agent, endpoint) => {
                http_post::<ExportLogsServiceResponse>(agent, endpoint, request.encode_to_vec()).await
            }
        };
        self.counted(Signal::Logs, result)
    }

    /// Sends spans; `Ok` with the number of spans the receiver refused.
    pub async fn traces(&self, request: ExportTraceServiceRequest) -> Result<i64, ExportError> {
        let result = match &self.transport {
            Transport::Grpc(channel, endpoint) => {
                let mut client = trace_service_client::TraceServiceClient::new(channel.clone());
                client
                    .export(with_headers(request, endpoint))
                    .await
                    .map(|a| a.into_inner().refused())
                    .map_err(grpc_error)
            }
            Transport::Http(agent, endpoint) => {
                http_post::<ExportTraceServiceResponse>(agent, endpoint, request.encode_to_vec()).await
            }
        };
        self.counted(Signal::Traces, result)
    }

    /// Sends metrics; `Ok` with the number of data points the receiver refused.
    pub async fn metrics(&self, request: ExportMetricsServiceRequest) -> Result<i64, ExportError> {
        let result = match &self.transport {
            Transport::Grpc(channel, endpoint) => {
                let mut client = metrics_service_client::MetricsServiceClient::new(channel.clone());
                client
                    .export(with_headers(request, endpoint))
                    .await
                    .map(|a| a.into_inner().refused())
                    .map_err(grpc_error)
            }
            Transport::Http(agent, endpoint) => {
                http_post::<ExportMetricsServiceResponse>(agent, endpoint, request.encode_to_vec()).await
            }
        };
        self.counted(Signal::Metrics, result)
    }
}

/// OTLP/HTTP: POST of the protobuf body (ureq blocks: off the async threads).
async fn http_post<R: Message + Default + Refused>(
    agent: &ureq::Agent,
    endpoint: &Endpoint,
    body: Vec<u8>,
) -> Result<i64, ExportError> {
    let (agent, endpoint) = (agent.clone(), endpoint.clone());
    tokio::task::spawn_blocking(move || {
        let mut request = agent.post(&endpoint.url).header("content-type", "application/x-protobuf");
        for (k, v) in &endpoint.headers {
            request = request.header(k, v);
        }
        let mut response = request
            .send(&body[..])
            .map_err(|e| ExportError { retry: true, message: format!("{}: {e}", endpoint.url) })?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            let bytes = response.body_mut().read_to_vec().unwrap_or_default();
            return Ok(R::decode(bytes.as_slice()).map_or(0, |r| r.refused()));
        }
        // OTLP/HTTP: these are worth retrying; any other failure is final for this request.
        let retry = matches!(status, 429 | 502 | 503 | 504);
        Err(ExportError { retry, message: format!("{}: HTTP {status}", endpoint.url) })
    })
    .await
    .map_err(|e| ExportError { retry: true, message: e.to_string() })?
}

/// ureq's TLS settings for `tls`: its CA certificates, or the compiled-in Mozilla roots.
fn ureq_tls(tls: &crate::Tls) -> Result<ureq::tls::TlsConfig, TlsError> {
    use ureq::tls::{ClientCert, PemItem, RootCerts, TlsConfig, TlsProvider};
    let mut config = TlsConfig::builder().provider(TlsProvider::Rustls);
    if let Some(ca) = &tls.ca_pem {
        let mut roots = Vec::new();
        for item in ureq::tls::parse_pem(ca) {
            if let PemItem::Certificate(cert) = item.map_err(TlsError::Ca)? {
                roots.push(cert.to_owned());
            }
        }
        if roots.is_empty() {
            return Err(TlsError::NoCa);
        }
        config = config.root_certs(RootCerts::Specific(std::sync::Arc::new(roots)));
    }
    if let Some((cert, key)) = &tls.client_pem {
        let mut chain = Vec::new();
        for item in ureq::tls::parse_pem(cert) {
            if let PemItem::Certificate(c) = item.map_err(TlsError::ClientCert)? {
                chain.push(c.to_owned());
            }
        }
        let key = ureq::tls::PrivateKey::from_pem(key).map_err(TlsError::ClientKey)?.to_owned();
        config = config.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(config.build())
}

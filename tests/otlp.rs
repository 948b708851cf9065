//! An OTLP receiver for the tests, built from the official OpenTelemetry protobufs
//! (`opentelemetry-proto`): the logs and metrics services over gRPC, and `POST /v1/logs` and
//! `/v1/metrics` over HTTP with protobuf bodies. It keeps what it receives; it can be stopped and started again on the same
//! port to play a backend outage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message;

/// How the receiver listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// A log record as received, with its resource's attributes.
#[derive(Clone, Debug)]
pub struct ReceivedLog {
    pub resource: HashMap<String, String>,
    pub record: LogRecord,
}

impl ReceivedLog {
    /// A string (or integer, as text) attribute of the record.
    pub fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.record.attributes, key)
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|a| a.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::ArrayValue(a) => {
            let texts: Vec<String> = a
                .values
                .iter()
                .filter_map(|v: &AnyValue| match v.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            texts.join(",")
        }
        other => format!("{other:?}"),
    })
}

/// One data point as received: a sum's or gauge's value, or a histogram's count.
#[derive(Clone, Debug)]
pub struct ReceivedPoint {
    pub metric: String,
    pub attributes: HashMap<String, String>,
    pub value: f64,
}

fn points(request: ExportMetricsServiceRequest) -> Vec<ReceivedPoint> {
    let mut out = Vec::new();
    for scope in request.resource_metrics.into_iter().flat_map(|r| r.scope_metrics) {
        for m in scope.metrics {
            let attrs =
                |a: &[KeyValue]| a.iter().filter_map(|kv| Some((kv.key.clone(), attribute(a, &kv.key)?))).collect();
            let number = |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| match p.value {
                Some(number_data_point::Value::AsInt(i)) => i as f64,
                Some(number_data_point::Value::AsDouble(d)) => d,
                None => f64::NAN,
            };
            let mut push = |attributes, value| out.push(ReceivedPoint { metric: m.name.clone(), attributes, value });
            match &m.data {
                Some(metric::Data::Sum(sum)) => {
                    sum.data_points.iter().for_each(|p| push(attrs(&p.attributes), number(p)))
                }
                Some(metric::Data::Gauge(g)) => {
                    g.data_points.iter().for_each(|p| push(attrs(&p.attributes), number(p)))
                }
                Some(metric::Data::Histogram(h)) => {
                    h.data_points.iter().for_each(|p| push(attrs(&p.attributes), p.count as f64))
                }
                _ => {}
            }
        }
    }
    out
}

/// A span as received (ids in hex).
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub attributes: HashMap<String, String>,
}

fn spans_of(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    request
        .resource_spans
        .into_iter()
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .map(|s| ReceivedSpan {
            attributes: s
                .attributes
                .iter()
                .filter_map(|kv| Some((kv.key.clone(), attribute(&s.attributes, &kv.key)?)))
                .collect(),
            name: s.name,
            trace_id: hex(&s.trace_id),
            span_id: hex(&s.span_id),
            parent_span_id: hex(&s.parent_span_id),
        })
        .collect()
}

type ReceivedSpans = Arc<Mutex<Vec<ReceivedSpan>>>;

struct Traces(ReceivedSpans);

#[tonic::async_trait]
impl TraceService for Traces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().extend(spans_of(request.into_inner()));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

type Received = Arc<Mutex<Vec<ReceivedLog>>>;
type ReceivedMetrics = Arc<Mutex<Vec<Vec<ReceivedPoint>>>>;

struct Metrics(ReceivedMetrics);

#[tonic::async_trait]
impl MetricsService for Metrics {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(points(request.into_inner()));
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn keep(received: &Received, request: ExportLogsServiceRequest) {
    let mut all = received.lock().unwrap();
    for resource_logs in request.resource_logs {
        let resource: HashMap<String, String> = resource_logs
            .resource
            .map(|r| {
                r.attributes.iter().filter_map(|a| Some((a.key.clone(), attribute(&r.attributes, &a.key)?))).collect()
            })
            .unwrap_or_default();
        for scope in resource_logs.scope_logs {
            for record in scope.log_records {
                all.push(ReceivedLog { resource: resource.clone(), record });
            }
        }
    }
}

struct Logs(Received);

#[tonic::async_trait]
impl LogsService for Logs {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// The receiver.
pub struct OtlpReceiver {
    /// `127.0.0.1:<port>`.
    pub address: String,
    /// With TLS: the PEM file of the CA that signed its certificate (for
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`), and its certificate chain and key.
    pub tls: Option<(std::path::PathBuf, String, String)>,
    protocol: Protocol,
    received: Received,
    metrics: ReceivedMetrics,
    spans: ReceivedSpans,
    stop: Option<(tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl OtlpReceiver {
    /// Starts one on a free loopback port.
    pub fn start(protocol: Protocol) -> OtlpReceiver {
        OtlpReceiver::start_at(crate::loopback_addr(), None, protocol)
    }

    fn start_at(
        address: String,
        tls: Option<(std::path::PathBuf, String, String)>,
        protocol: Protocol,
    ) -> OtlpReceiver {
        let mut receiver = OtlpReceiver {
            address,
            tls,
            protocol,
            received: Arc::default(),
            metrics: Arc::default(),
            spans: Arc::default(),
            stop: None,
        };
        receiver.restart();
        receiver
    }

    /// One that serves TLS with a certificate from a CA of its own, written to `dir/otlp-ca.pem`.
    pub fn start_tls(protocol: Protocol, dir: &std::path::Path) -> OtlpReceiver {
        let address = crate::loopback_addr();
        let ip: std::net::IpAddr = address.rsplit_once(':').unwrap().0.parse().unwrap();
        let ca = crate::TestCa::new();
        let (cert, key) = ca.issue(&[ip], None, "otlp-receiver");
        let ca_file = dir.join("otlp-ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        OtlpReceiver::start_at(address, Some((ca_file, cert, key)), protocol)
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.address)
    }

    /// Starts it again on the same port (after [`OtlpReceiver::stop`]).
    pub fn restart(&mut self) {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (address, protocol, received) = (self.address.clone(), self.protocol, self.received.clone());
        let tls = self.tls.as_ref().map(|(_, cert, key)| (cert.clone(), key.clone()));
        let (metrics, spans) = (self.metrics.clone(), self.spans.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&address).await.expect("bind the OTLP receiver");
                ready_tx.send(()).unwrap();
                let stopped = async {
                    let _ = stop_rx.await;
                };
                match protocol {
                    Protocol::Grpc => {
                        let incoming = tonic::transport::server::TcpIncoming::from(listener);
                        let mut server = tonic::transport::Server::builder();
                        if let Some((cert, key)) = tls {
                            let identity = tonic::transport::Identity::from_pem(cert, key);
                            server =
                                server.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)).unwrap();
                        }
                        let _ = server
                            .add_service(LogsServiceServer::new(Logs(received)))
                            .add_service(MetricsServiceServer::new(Metrics(metrics)))
                            .add_service(TraceServiceServer::new(Traces(spans)))
                            .serve_with_incoming_shutdown(incoming, stopped)
                            .await;
                    }
                    Protocol::HttpProtobuf => {
                        let metrics_route = axum::routing::post(move |body: axum::body::Bytes| {
                            let metrics = metrics.clone();
                            async move {
                                match ExportMetricsServiceRequest::decode(body) {
                                    Ok(request) => {
                                        metrics.lock().unwrap().push(points(request));
                                        let answer = ExportMetricsServiceResponse::default().encode_to_vec();
                                        (axum::http::StatusCode::OK, answer)
                                    }
                                    Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
                                }
                            }
                        });
                        let app = axum::Router::new().route("/v1/metrics", metrics_route).route(
                            "/v1/logs",
                            axum::routing::post(move |body: axum::body::Bytes| {
                                let received = received.clone();
                                async move {
                                    match ExportLogsServiceRequest::decode(body) {
                                        Ok(request) => {
                                            keep(&received, request);
                                            let answer = ExportLogsServiceResponse::default().encode_to_vec();
                                            (axum::http::StatusCode::OK, answer)
                                        }
                                        Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
                                    }
                                }
                            }),
                        );
                        match tls {
                            None => {
                                let _ = axum::serve(listener, app).with_graceful_shutdown(stopped).await;
                            }
                            Some((cert, key)) => {
                                let listener = TlsListener::new(listener, &cert, &key);
                                let _ = axum::serve(listener, app).with_graceful_shutdown(stopped).await;
                            }
                        }
                    }
                }
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("the OTLP receiver listens");
        self.stop = Some((stop_tx, thread));
    }

    /// Stops listening (what it received is kept).
    pub fn stop(&mut self) {
        if let Some((stop, thread)) = self.stop.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// The data points of the newest metrics export received.
    pub fn latest_metrics(&self) -> Vec<ReceivedPoint> {
        self.metrics.lock().unwrap().last().cloned().unwrap_or_default()
    }

    /// Every log record received so far.
    pub fn logs(&self) -> Vec<ReceivedLog> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TLS listener for axum: handshakes accepted connections, dropping failed ones.
struct TlsListener {
    inner: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl TlsListener {
    fn new(inner: tokio::net::TcpListener, cert_pem: &str, key_pem: &str) -> TlsListener {
        use rustls::pki_types::pem::PemObject;
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain.unwrap(), key)
            .unwrap();
        TlsListener { inner, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, peer)) = self.inner.accept().await else { continue };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

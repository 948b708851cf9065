//! An OTLP receiver for the tests, built from the official OpenTelemetry protobufs
//! (`opentelemetry-proto`): the logs service over gRPC, and `POST /v1/logs` over HTTP with
//! protobuf bodies. It keeps what it receives; it can be stopped and started again on the same
//! port to play a backend outage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
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

type Received = Arc<Mutex<Vec<ReceivedLog>>>;

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
    protocol: Protocol,
    received: Received,
    stop: Option<(tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl OtlpReceiver {
    /// Starts one on a free loopback port.
    pub fn start(protocol: Protocol) -> OtlpReceiver {
        let mut receiver =
            OtlpReceiver { address: crate::loopback_addr(), protocol, received: Arc::default(), stop: None };
        receiver.restart();
        receiver
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Starts it again on the same port (after [`OtlpReceiver::stop`]).
    pub fn restart(&mut self) {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (address, protocol, received) = (self.address.clone(), self.protocol, self.received.clone());
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
                        let _ = tonic::transport::Server::builder()
                            .add_service(LogsServiceServer::new(Logs(received)))
                            .serve_with_incoming_shutdown(incoming, stopped)
                            .await;
                    }
                    Protocol::HttpProtobuf => {
                        let app = axum::Router::new().route(
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
                        let _ = axum::serve(listener, app).with_graceful_shutdown(stopped).await;
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

//! A stand-in for an OpenTelemetry Collector whose pipeline ends in the Prometheus exporter: it
//! takes OTLP/HTTP metrics and serves the latest of each series as Prometheus text, translated
//! as the OpenTelemetry specification ("Prometheus and OpenMetrics Compatibility", OTLP to
//! Prometheus) says that exporter does. It is written here from the specification, apart from
//! Warden's own translation, so that a test comparing the two paths compares two readings of
//! the specification, not one function with itself:
//!
//! - names: every run of characters other than letters and digits becomes one `_`; the unit's
//!   suffix follows unless a name token already is it (`s` → `seconds`, annotations in braces
//!   dropped, `1` → `ratio` on gauges only); counters (monotonic cumulative sums) end in `_total`;
//! - attributes become labels with every other character `_`, runs of `_` as one;
//! - the resource's `service.name` is `job`, its `service.instance.id` is `instance`, and every
//!   point gets `otel_scope_name` and `otel_scope_version` labels;
//! - histograms become `_bucket{le}` (cumulative), `_sum` and `_count`.
//!
//! The real Collector needs a container runtime or a Go toolchain, which CI machines lack.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, metric, number_data_point};
use prost::Message;

/// One family's metadata and its series, by their rendered label sets.
#[derive(Default)]
struct FamilyText {
    kind: &'static str,
    help: String,
    /// Label set (rendered, without braces) → sample lines of that series.
    series: BTreeMap<String, Vec<String>>,
}

type Families = Arc<Mutex<BTreeMap<String, FamilyText>>>;

/// The stand-in, listening on a loopback port until dropped.
pub struct PrometheusExporter {
    /// Where OTLP/HTTP goes (`http://…`, for `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` with
    /// `/v1/metrics` added) and Prometheus scrapes (`/metrics`).
    pub address: String,
    stop: Option<(tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl PrometheusExporter {
    /// Starts one on a free loopback port.
    pub fn start() -> PrometheusExporter {
        let address = crate::loopback_addr();
        let families = Families::default();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let listen = address.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind the exporter stand-in");
                ready_tx.send(()).unwrap();
                let received = families.clone();
                let app = axum::Router::new()
                    .route(
                        "/v1/metrics",
                        axum::routing::post(move |body: axum::body::Bytes| {
                            let families = received.clone();
                            async move {
                                match ExportMetricsServiceRequest::decode(body) {
                                    Ok(request) => {
                                        keep(&families, request);
                                        (
                                            axum::http::StatusCode::OK,
                                            ExportMetricsServiceResponse::default().encode_to_vec(),
                                        )
                                    }
                                    Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
                                }
                            }
                        }),
                    )
                    .route(
                        "/metrics",
                        axum::routing::get(move || {
                            let families = families.clone();
                            async move { render(&families) }
                        }),
                    );
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("the exporter stand-in listens");
        PrometheusExporter { address, stop: Some((stop_tx, thread)) }
    }

    /// The value for `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`.
    pub fn metrics_endpoint(&self) -> String {
        format!("http://{}/v1/metrics", self.address)
    }
}

impl Drop for PrometheusExporter {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.stop.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

/// A metric name as the specification translates it.
fn name(otel: &str, unit: &str, counter: bool, gauge: bool) -> String {
    let mut tokens: Vec<String> =
        otel.split(|c: char| !c.is_ascii_alphanumeric()).filter(|t| !t.is_empty()).map(str::to_string).collect();
    let word = match unit {
        "s" => Some("seconds"),
        "ms" => Some("milliseconds"),
        "By" => Some("bytes"),
        "1" if gauge => Some("ratio"),
        _ => None, // annotations ({record}) and "1" elsewhere: no suffix
    };
    if let Some(word) = word
        && !tokens.iter().any(|t| t == word)
    {
        tokens.push(word.to_string());
    }
    if counter {
        tokens.retain(|t| t != "total");
        tokens.push("total".into());
    }
    tokens.join("_")
}

/// A label name as the specification translates an attribute's.
fn label(attribute: &str) -> String {
    let mut out = String::new();
    for c in attribute.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '_' };
        if c != '_' || !out.ends_with('_') {
            out.push(c);
        }
    }
    out
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `{k="v",...}` of `pairs` in order, leaving out empty values (Prometheus has no empty label).
fn labels(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn number(value: f64) -> String {
    if value.is_infinite() { if value > 0.0 { "+Inf".into() } else { "-Inf".into() } } else { value.to_string() }
}

/// Keeps the newest value of every series in `request`.
fn keep(families: &Families, request: ExportMetricsServiceRequest) {
    let mut families = families.lock().unwrap();
    for resource_metrics in request.resource_metrics {
        let resource = resource_metrics.resource.unwrap_or_default();
        let attribute = |key: &str| resource.attributes.iter().find(|kv| kv.key == key).map(text).unwrap_or_default();
        let (job, instance) = (attribute("service.name"), attribute("service.instance.id"));
        for scope_metrics in resource_metrics.scope_metrics {
            let scope = scope_metrics.scope.unwrap_or_default();
            for m in scope_metrics.metrics {
                let base = |attributes: &[KeyValue]| {
                    let mut pairs = vec![
                        ("job".to_string(), job.clone()),
                        ("instance".to_string(), instance.clone()),
                        ("otel_scope_name".to_string(), scope.name.clone()),
                        ("otel_scope_version".to_string(), scope.version.clone()),
                    ];
                    pairs.extend(attributes.iter().map(|kv| (label(&kv.key), text(kv))));
                    pairs
                };
                let value = |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| match p.value {
                    Some(number_data_point::Value::AsInt(i)) => i as f64,
                    Some(number_data_point::Value::AsDouble(d)) => d,
                    None => 0.0,
                };
                let cumulative = AggregationTemporality::Cumulative as i32;
                let (family, kind, points): (String, &'static str, Vec<(String, Vec<String>)>) = match m.data {
                    Some(metric::Data::Sum(sum)) if sum.is_monotonic && sum.aggregation_temporality == cumulative => {
                        let n = name(&m.name, &m.unit, true, false);
                        let points = sum
                            .data_points
                            .iter()
                            .map(|p| {
                                let l = labels(&base(&p.attributes));
                                (l.clone(), vec![format!("{n}{{{l}}} {}", number(value(p)))])
                            })
                            .collect();
                        (n, "counter", points)
                    }
                    Some(metric::Data::Gauge(gauge)) => {
                        let n = name(&m.name, &m.unit, false, true);
                        let points = gauge
                            .data_points
                            .iter()
                            .map(|p| {
                                let l = labels(&base(&p.attributes));
                                (l.clone(), vec![format!("{n}{{{l}}} {}", number(value(p)))])
                            })
                            .collect();
                        (n, "gauge", points)
                    }
                    Some(metric::Data::Histogram(h)) if h.aggregation_temporality == cumulative => {
                        let n = name(&m.name, &m.unit, false, false);
                        let points = h
                            .data_points
                            .iter()
                            .map(|p| {
                                let pairs = base(&p.attributes);
                                let l = labels(&pairs);
                                let mut lines = Vec::new();
                                let mut cumulative = 0;
                                let bounds = p.explicit_bounds.iter().copied().chain([f64::INFINITY]);
                                for (bound, count) in bounds.zip(&p.bucket_counts) {
                                    cumulative += count;
                                    let mut with_le = pairs.clone();
                                    with_le.push(("le".into(), number(bound)));
                                    lines.push(format!("{n}_bucket{{{}}} {cumulative}", labels(&with_le)));
                                }
                                lines.push(format!("{n}_sum{{{l}}} {}", number(p.sum.unwrap_or(0.0))));
                                lines.push(format!("{n}_count{{{l}}} {}", p.count));
                                (l, lines)
                            })
                            .collect();
                        (n, "histogram", points)
                    }
                    _ => continue, // what this stand-in has no need of
                };
                let entry = families.entry(family).or_default();
                entry.kind = kind;
                entry.help = m.description.clone();
                entry.series.extend(points);
            }
        }
    }
}

/// The Prometheus text of every series kept.
fn render(families: &Families) -> String {
    let families = families.lock().unwrap();
    let mut out = String::new();
    for (name, family) in families.iter() {
        out.push_str(&format!("# HELP {name} {}\n# TYPE {name} {}\n", family.help.replace('\n', " "), family.kind));
        for lines in family.series.values() {
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_follow_the_specification() {
        assert_eq!(name("http.server.request.duration", "s", false, false), "http_server_request_duration_seconds");
        assert_eq!(name("warden.decisions", "{decision}", true, false), "warden_decisions_total");
        assert_eq!(name("cpu.utilization", "1", false, true), "cpu_utilization_ratio");
        assert_eq!(name("a.total", "{x}", true, false), "a_total");
        assert_eq!(label("gen_ai.tool.name"), "gen_ai_tool_name");
    }
}

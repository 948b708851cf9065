//! The metric families a binary describes once (`warden_core::metrics`) as OTLP metrics:
//! counters as cumulative monotonic sums, gauges as gauges, histograms as cumulative explicit-
//! bucket histograms, named and labelled in the OpenTelemetry vocabulary; and the periodic
//! export both binaries run.

use std::future::Future;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1 as om;
use warden_core::metrics::{Family, Kind, Value};

use crate::{ExportError, Sender, attribute};

/// Sends what `families` reads, as cumulative metrics since `started`, every `interval` until
/// `stop` resolves. Nothing is kept of a failed export (the sender counts it): the next one
/// carries the totals.
pub async fn export_periodically<F, Fut>(
    sender: Sender,
    resource: Vec<(String, String)>,
    scope: &'static str,
    interval: Duration,
    started: SystemTime,
    families: F,
    stop: impl Future<Output = ()>,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Vec<Family>>,
{
    // The first tick is at once: a receiver has every series from the start.
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![om::ResourceMetrics {
                resource: Some(crate::resource(&resource)),
                scope_metrics: vec![om::ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: scope.into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    metrics: metrics(&families().await, nanos(started), nanos(SystemTime::now())),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        match sender.metrics(request).await {
            Ok(0) => {}
            Ok(refused) => tracing::warn!(refused, "the OTLP receiver refused some data points"),
            Err(ExportError { message, .. }) => tracing::warn!("OTLP metrics export failed: {message}"),
        }
    }
}

/// Nanoseconds since the epoch.
fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// `families` as OTLP metrics, cumulative from `start` (nanoseconds since the epoch) to `now`.
pub fn metrics(families: &[Family], start: u64, now: u64) -> Vec<om::Metric> {
    use om::metric::Data;
    let cumulative = om::AggregationTemporality::Cumulative as i32;
    families
        .iter()
        .map(|family| {
            let d = family.descriptor;
            let attributes = |labels: &[String]| {
                d.labels.iter().zip(labels).map(|(label, value)| attribute(label, value.as_str())).collect()
            };
            let numbers = || {
                family
                    .points
                    .iter()
                    .filter_map(|p| match &p.value {
                        Value::Number(n) => Some(om::NumberDataPoint {
                            attributes: attributes(&p.labels),
                            start_time_unix_nano: start,
                            time_unix_nano: now,
                            value: Some(om::number_data_point::Value::AsInt(*n as i64)),
                            ..Default::default()
                        }),
                        Value::Histogram(_) => None,
                    })
                    .collect()
            };
            let data = match d.kind {
                Kind::Counter => Data::Sum(om::Sum {
                    data_points: numbers(),
                    aggregation_temporality: cumulative,
                    is_monotonic: true,
                }),
                Kind::Gauge => Data::Gauge(om::Gauge { data_points: numbers() }),
                Kind::Histogram => Data::Histogram(om::Histogram {
                    data_points: family
                        .points
                        .iter()
                        .filter_map(|p| match &p.value {
                            Value::Histogram(h) => Some(om::HistogramDataPoint {
                                attributes: attributes(&p.labels),
                                start_time_unix_nano: start,
                                time_unix_nano: now,
                                count: h.count(),
                                sum: Some(h.sum()),
                                bucket_counts: h.bucket_counts().to_vec(),
                                explicit_bounds: h.bounds().to_vec(),
                                ..Default::default()
                            }),
                            Value::Number(_) => None,
                        })
                        .collect(),
                    aggregation_temporality: cumulative,
                }),
            };
            om::Metric {
                name: d.name.into(),
                unit: d.unit.into(),
                description: d.help.into(),
                data: Some(data),
                ..Default::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use warden_core::metrics::Descriptor;
    use warden_core::prometheus::Histogram;

    use super::*;

    const SERVER: &str = "warden.server";
    const CALLS: Descriptor =
        Descriptor { name: "warden.calls", unit: "{call}", help: "Calls.", kind: Kind::Counter, labels: &[SERVER] };
    const UP: Descriptor = Descriptor { name: "warden.up", unit: "1", help: "Up.", kind: Kind::Gauge, labels: &[] };
    const LATENCY: Descriptor =
        Descriptor { name: "warden.latency", unit: "s", help: "Latency.", kind: Kind::Histogram, labels: &[SERVER] };

    #[test]
    fn each_kind_becomes_its_otlp_data_with_otel_names_and_attributes() {
        let mut calls = Family::new(&CALLS);
        calls.add(&["github"], 3.0);
        let mut h = Histogram::new(&[0.001]);
        h.observe(0.0005);
        h.observe(0.5);
        let mut latency = Family::new(&LATENCY);
        latency.add_histogram(&["github"], &h);
        let out = metrics(&[calls, Family::single(&UP, 1.0), latency], 10, 20);
        assert_eq!(
            out.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["warden.calls", "warden.up", "warden.latency"]
        );
        let Some(om::metric::Data::Sum(sum)) = &out[0].data else { panic!("{:?}", out[0]) };
        assert!(sum.is_monotonic);
        assert_eq!(sum.aggregation_temporality, om::AggregationTemporality::Cumulative as i32);
        let point = &sum.data_points[0];
        assert_eq!((point.start_time_unix_nano, point.time_unix_nano), (10, 20));
        assert_eq!(point.value, Some(om::number_data_point::Value::AsInt(3)));
        assert_eq!(point.attributes[0].key, "warden.server");
        assert_eq!(out[0].unit, "{call}");
        assert!(matches!(&out[1].data, Some(om::metric::Data::Gauge(g)) if g.data_points.len() == 1));
        let Some(om::metric::Data::Histogram(hist)) = &out[2].data else { panic!("{:?}", out[2]) };
        let point = &hist.data_points[0];
        assert_eq!(
            (point.count, point.bucket_counts.clone(), point.explicit_bounds.clone()),
            (2, vec![1, 1], vec![0.001])
        );
        assert_eq!(out[2].unit, "s");
    }
}

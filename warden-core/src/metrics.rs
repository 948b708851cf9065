//! One description of every metric, read by every exporter.
//!
//! A binary describes each family once (a [`Descriptor`]: its names, unit, help, kind and
//! labels) and fills it with points from what it counts; the Prometheus text
//! ([`prometheus_text`]) and OTLP (`warden_otlp::metrics`) are two renderings of the same
//! [`Family`] list, so a metric cannot exist on one path and not the other, or mean something
//! else there. A family also carries the Prometheus spelling of its name and labels beside the
//! OpenTelemetry one: the two vocabularies are made one in their own change (Prometheus names
//! are what dashboards and alerts already use).

use crate::prometheus::{Exposition, Histogram};

/// What a family's points are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (cumulative since the process started).
    Counter,
    /// A value now.
    Gauge,
    /// A distribution over fixed buckets (cumulative).
    Histogram,
}

impl Kind {
    fn prometheus(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A label, as each path spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    /// Its Prometheus name.
    pub prometheus: &'static str,
    /// Its OpenTelemetry attribute name.
    pub otel: &'static str,
}

/// Everything about a family but its points.
#[derive(Clone, Copy, Debug)]
pub struct Descriptor {
    /// Its Prometheus name (with a counter's `_total`, a unit suffix).
    pub prometheus: &'static str,
    /// Its OpenTelemetry name.
    pub otel: &'static str,
    /// Its unit, UCUM as OpenTelemetry writes it (`s`, `{decision}`, `1`).
    pub unit: &'static str,
    /// What it counts.
    pub help: &'static str,
    /// What its points are.
    pub kind: Kind,
    /// The labels every point has, in order.
    pub labels: &'static [Label],
}

/// One point's value.
#[derive(Clone, Debug)]
pub enum Value {
    /// A counter's or gauge's value.
    Number(f64),
    /// A histogram's buckets.
    Histogram(Histogram),
}

/// One labelled point of a family.
#[derive(Clone, Debug)]
pub struct Point {
    /// The label values, in the order of the family's labels.
    pub labels: Vec<String>,
    /// The value.
    pub value: Value,
}

/// A family and its points now.
#[derive(Clone, Debug)]
pub struct Family {
    /// What it is.
    pub descriptor: &'static Descriptor,
    /// Its points.
    pub points: Vec<Point>,
}

impl Family {
    /// A family with no points yet.
    pub fn new(descriptor: &'static Descriptor) -> Family {
        Family { descriptor, points: Vec::new() }
    }

    /// A family of one unlabelled point.
    pub fn single(descriptor: &'static Descriptor, value: f64) -> Family {
        let mut family = Family::new(descriptor);
        family.add(&[], value);
        family
    }

    /// Adds a counter's or gauge's point; `labels` are values in the descriptor's order.
    pub fn add(&mut self, labels: &[&str], value: f64) {
        self.push(labels, Value::Number(value));
    }

    /// Adds a histogram's point.
    pub fn add_histogram(&mut self, labels: &[&str], histogram: &Histogram) {
        self.push(labels, Value::Histogram(histogram.clone()));
    }

    fn push(&mut self, labels: &[&str], value: Value) {
        debug_assert_eq!(labels.len(), self.descriptor.labels.len(), "{}", self.descriptor.prometheus);
        self.points.push(Point { labels: labels.iter().map(|l| l.to_string()).collect(), value });
    }
}

/// The Prometheus text exposition (0.0.4) of `families`.
pub fn prometheus_text(families: &[Family]) -> String {
    let mut e = Exposition::default();
    for family in families {
        let d = family.descriptor;
        e.family(d.prometheus, d.kind.prometheus(), d.help);
        for point in &family.points {
            let pairs: Vec<(&str, &str)> =
                d.labels.iter().zip(&point.labels).map(|(label, value)| (label.prometheus, value.as_str())).collect();
            match &point.value {
                Value::Number(n) => e.sample(d.prometheus, &pairs, *n),
                Value::Histogram(h) => e.histogram(d.prometheus, &pairs, h),
            }
        }
    }
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Label = Label { prometheus: "server", otel: "warden.server" };
    const CALLS: Descriptor = Descriptor {
        prometheus: "warden_calls_total",
        otel: "warden.calls",
        unit: "{call}",
        help: "Calls.",
        kind: Kind::Counter,
        labels: &[SERVER],
    };
    const LATENCY: Descriptor = Descriptor {
        prometheus: "warden_latency_seconds",
        otel: "warden.latency",
        unit: "s",
        help: "Latency.",
        kind: Kind::Histogram,
        labels: &[SERVER],
    };

    #[test]
    fn families_render_as_the_text_format_with_their_prometheus_names() {
        let mut calls = Family::new(&CALLS);
        calls.add(&["github"], 3.0);
        calls.add(&["notes"], 1.0);
        let mut h = Histogram::new(&[0.001]);
        h.observe(0.0005);
        let mut latency = Family::new(&LATENCY);
        latency.add_histogram(&["github"], &h);
        let empty = Family::new(&CALLS);
        let text = prometheus_text(&[calls, latency, empty]);
        let expected = "# HELP warden_calls_total Calls.\n# TYPE warden_calls_total counter\n\
            warden_calls_total{server=\"github\"} 3\nwarden_calls_total{server=\"notes\"} 1\n\
            # HELP warden_latency_seconds Latency.\n# TYPE warden_latency_seconds histogram\n\
            warden_latency_seconds_bucket{server=\"github\",le=\"0.001\"} 1\n\
            warden_latency_seconds_bucket{server=\"github\",le=\"+Inf\"} 1\n\
            warden_latency_seconds_sum{server=\"github\"} 0.0005\n\
            warden_latency_seconds_count{server=\"github\"} 1\n\
            # HELP warden_calls_total Calls.\n# TYPE warden_calls_total counter\n";
        assert_eq!(text, expected);
    }
}

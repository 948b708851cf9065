//! One description of every metric, read by every exporter.
//!
//! A binary describes each family once (a [`Descriptor`]: its OpenTelemetry name, unit, help,
//! kind and attribute names) and fills it with points from what it counts; the Prometheus text
//! ([`prometheus_text`]) and OTLP (`warden_otlp::metrics`) are two renderings of the same
//! [`Family`] list. The Prometheus names are not written down anywhere: they are derived from
//! the OpenTelemetry ones by the translation OpenTelemetry specifies for Prometheus
//! ("Prometheus and OpenMetrics Compatibility", which the Collector's Prometheus exporter
//! implements), so a series scraped from a Warden binary and the same series sent over OTLP
//! through a Collector have one name and one set of labels, and one dashboard reads both.

use crate::prometheus::{Exposition, Histogram};

/// What a family's points are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (cumulative since the process started): an OTLP monotonic sum.
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

/// Everything about a family but its points.
#[derive(Clone, Copy, Debug)]
pub struct Descriptor {
    /// Its OpenTelemetry name (`warden.decisions`).
    pub name: &'static str,
    /// Its unit, UCUM as OpenTelemetry writes it (`s`, `{decision}`); a count of things is an
    /// annotation in braces, which Prometheus names leave out.
    pub unit: &'static str,
    /// What it counts.
    pub help: &'static str,
    /// What its points are.
    pub kind: Kind,
    /// The attributes every point has, in order, by their OpenTelemetry names.
    pub labels: &'static [&'static str],
}

impl Descriptor {
    /// The Prometheus name: the OpenTelemetry name with `.` (and any other character a
    /// Prometheus name cannot hold) as `_`, then the unit's suffix unless the name already
    /// holds it (`s` → `_seconds`, `By` → `_bytes`, `1` on a gauge → `_ratio`, an annotation
    /// such as `{decision}` → nothing), then `_total` for a counter.
    pub fn prometheus_name(&self) -> String {
        let mut tokens: Vec<&str> = tokens(self.name).collect();
        let (main, per) = unit_suffixes(self.unit);
        if !main.is_empty() && !tokens.contains(&main) {
            tokens.push(main);
        }
        if !per.is_empty() && !tokens.ends_with(&["per", per]) {
            tokens.extend(["per", per]);
        }
        match self.kind {
            Kind::Counter => {
                tokens.retain(|t| *t != "total");
                tokens.push("total");
            }
            Kind::Gauge if self.unit == "1" => {
                tokens.retain(|t| *t != "ratio");
                tokens.push("ratio");
            }
            _ => {}
        }
        let name = tokens.join("_");
        if name.starts_with(|c: char| c.is_ascii_digit()) { format!("_{name}") } else { name }
    }
}

/// The alphanumeric runs of `name`, which Prometheus names join with `_`.
fn tokens(name: &str) -> impl Iterator<Item = &str> {
    name.split(|c: char| !c.is_ascii_alphanumeric()).filter(|t| !t.is_empty())
}

/// The suffixes of a UCUM unit: its main unit's and its "per" unit's, by the specification's
/// table; annotations (`{request}`) and `1` give none, and a unit the table lacks is used as it
/// is, as the Collector does (a descriptor should use one the table has).
fn unit_suffixes(unit: &str) -> (&str, &str) {
    let (main, per) = match unit.split_once('/') {
        Some((main, per)) => (main.trim(), per.trim()),
        None => (unit.trim(), ""),
    };
    let word = |unit: &'static [(&'static str, &'static str)], u: &str| -> Option<&'static str> {
        unit.iter().find(|(ucum, _)| *ucum == u).map(|(_, word)| *word)
    };
    // Only a plain word can be a name's token.
    let plain = |u: &str| u.chars().all(|c| c.is_ascii_alphanumeric());
    let main = match main {
        "1" => "",
        m => word(MAIN_UNITS, m).unwrap_or(if plain(m) { m } else { "" }),
    };
    let per = word(PER_UNITS, per).unwrap_or(if plain(per) { per } else { "" });
    (main, per)
}

/// UCUM units and their Prometheus words.
const MAIN_UNITS: &[(&str, &str)] = &[
    ("d", "days"),
    ("h", "hours"),
    ("min", "minutes"),
    ("s", "seconds"),
    ("ms", "milliseconds"),
    ("us", "microseconds"),
    ("ns", "nanoseconds"),
    ("By", "bytes"),
    ("KiBy", "kibibytes"),
    ("MiBy", "mebibytes"),
    ("GiBy", "gibibytes"),
    ("%", "percent"),
];

/// The units of "per" suffixes (`By/s` → `_bytes_per_second`).
const PER_UNITS: &[(&str, &str)] =
    &[("s", "second"), ("m", "minute"), ("h", "hour"), ("d", "day"), ("w", "week"), ("mo", "month"), ("y", "year")];

/// The Prometheus label of an OpenTelemetry attribute: every character a label cannot hold as
/// `_`, runs of `_` as one, and `key_` before a leading digit (`warden.server` →
/// `warden_server`).
pub fn prometheus_label(attribute: &str) -> String {
    let mut label = String::with_capacity(attribute.len());
    for c in attribute.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '_' };
        if !(c == '_' && label.ends_with('_')) {
            label.push(c);
        }
    }
    if label.starts_with(|c: char| c.is_ascii_digit()) { format!("key_{label}") } else { label }
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
        debug_assert_eq!(labels.len(), self.descriptor.labels.len(), "{}", self.descriptor.name);
        self.points.push(Point { labels: labels.iter().map(|l| l.to_string()).collect(), value });
    }
}

/// The Prometheus text exposition (0.0.4) of `families`.
pub fn prometheus_text(families: &[Family]) -> String {
    let mut e = Exposition::default();
    for family in families {
        let d = family.descriptor;
        let name = d.prometheus_name();
        let labels: Vec<String> = d.labels.iter().map(|l| prometheus_label(l)).collect();
        e.family(&name, d.kind.prometheus(), d.help);
        for point in &family.points {
            let pairs: Vec<(&str, &str)> =
                labels.iter().zip(&point.labels).map(|(label, value)| (label.as_str(), value.as_str())).collect();
            match &point.value {
                Value::Number(n) => e.sample(&name, &pairs, *n),
                Value::Histogram(h) => e.histogram(&name, &pairs, h),
            }
        }
    }
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLS: Descriptor = Descriptor {
        name: "warden.calls",
        unit: "{call}",
        help: "Calls.",
        kind: Kind::Counter,
        labels: &["warden.server"],
    };
    const LATENCY: Descriptor = Descriptor {
        name: "warden.latency",
        unit: "s",
        help: "Latency.",
        kind: Kind::Histogram,
        labels: &["warden.server"],
    };

    fn named(name: &'static str, unit: &'static str, kind: Kind) -> String {
        Descriptor { name, unit, help: "", kind, labels: &[] }.prometheus_name()
    }

    #[test]
    fn prometheus_names_follow_the_opentelemetry_translation() {
        // The specification's examples, and this project's shapes.
        assert_eq!(named("http.server.request.duration", "s", Kind::Histogram), "http_server_request_duration_seconds");
        assert_eq!(named("system.network.io", "By", Kind::Counter), "system_network_io_bytes_total");
        assert_eq!(named("warden.decisions", "{decision}", Kind::Counter), "warden_decisions_total");
        assert_eq!(named("warden.fleet.agent.config_lag", "{version}", Kind::Gauge), "warden_fleet_agent_config_lag");
        assert_eq!(named("system.cpu.utilization", "1", Kind::Gauge), "system_cpu_utilization_ratio");
        assert_eq!(named("hits", "1", Kind::Counter), "hits_total", "1 gives ratio to gauges only");
        assert_eq!(named("net.throughput", "By/s", Kind::Gauge), "net_throughput_bytes_per_second");
        assert_eq!(named("fuel", "gal", Kind::Gauge), "fuel_gal", "a unit the table lacks, as it is");
        // A unit the name already holds, a total already there, odd characters and digits.
        assert_eq!(named("job.duration_seconds", "s", Kind::Gauge), "job_duration_seconds");
        assert_eq!(named("requests.total", "{request}", Kind::Counter), "requests_total");
        assert_eq!(named("a..b-c", "", Kind::Gauge), "a_b_c");
        assert_eq!(named("2xx.responses", "", Kind::Gauge), "_2xx_responses");
        assert_eq!(prometheus_label("gen_ai.tool.name"), "gen_ai_tool_name");
        assert_eq!(prometheus_label("warden..odd-key"), "warden_odd_key");
        assert_eq!(prometheus_label("1st"), "key_1st");
    }

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
            warden_calls_total{warden_server=\"github\"} 3\nwarden_calls_total{warden_server=\"notes\"} 1\n\
            # HELP warden_latency_seconds Latency.\n# TYPE warden_latency_seconds histogram\n\
            warden_latency_seconds_bucket{warden_server=\"github\",le=\"0.001\"} 1\n\
            warden_latency_seconds_bucket{warden_server=\"github\",le=\"+Inf\"} 1\n\
            warden_latency_seconds_sum{warden_server=\"github\"} 0.0005\n\
            warden_latency_seconds_count{warden_server=\"github\"} 1\n\
            # HELP warden_calls_total Calls.\n# TYPE warden_calls_total counter\n";
        assert_eq!(text, expected);
    }
}

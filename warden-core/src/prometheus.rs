//! The Prometheus text exposition format (0.0.4) for the control plane's and the agents'
//! `/metrics`, and the one histogram both keep. Formatting only: callers own their counts.

use std::fmt::Write;

/// Decision latency buckets, in seconds: 50 µs to 1 s.
pub const LATENCY_BUCKETS: &[f64] = &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1, 1.0];

/// Token lifetime buckets, in seconds: 1 minute to 1 day.
pub const LIFETIME_BUCKETS: &[f64] = &[60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 24.0 * 3600.0];

/// A histogram with fixed upper bounds.
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); one more than `bounds` for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    /// Counts one value.
    pub fn observe(&mut self, value: f64) {
        let i = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The upper bounds.
    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Counts per bucket (not cumulative), the last for values above every bound.
    pub fn bucket_counts(&self) -> &[u64] {
        &self.counts
    }

    /// The sum of the values counted.
    pub fn sum(&self) -> f64 {
        self.sum
    }
}

/// Text being written, family by family.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)], extra: Option<(&str, &str)>) -> String {
    let all: Vec<String> = pairs.iter().chain(extra.as_ref()).map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    if all.is_empty() { String::new() } else { format!("{{{}}}", all.join(",")) }
}

impl Exposition {
    /// Starts a family: `kind` is `counter`, `gauge` or `histogram`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, pairs: &[(&str, &str)], value: f64) {
        let _ = writeln!(self.out, "{name}{} {value}", labels(pairs, None));
    }

    /// The samples of one histogram series (`_bucket`, `_sum`, `_count`).
    pub fn histogram(&mut self, name: &str, pairs: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0;
        for (i, count) in h.counts.iter().enumerate() {
            cumulative += count;
            let le = h.bounds.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(self.out, "{name}_bucket{} {cumulative}", labels(pairs, Some(("le", &le))));
        }
        let _ = writeln!(self.out, "{name}_sum{} {}", labels(pairs, None), h.sum);
        let _ = writeln!(self.out, "{name}_count{} {}", labels(pairs, None), h.count);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_histograms_in_the_text_format() {
        let mut h = Histogram::new(&[0.001, 0.01]);
        for v in [0.0005, 0.002, 0.5] {
            h.observe(v);
        }
        let mut e = Exposition::default();
        e.family("warden_decisions_total", "counter", "Decisions.");
        e.sample("warden_decisions_total", &[("tool", "say \"hi\"\\\n")], 3.0);
        e.family("warden_latency_seconds", "histogram", "Latency.");
        e.histogram("warden_latency_seconds", &[("server", "s")], &h);
        let text = e.finish();
        let expected = "# HELP warden_decisions_total Decisions.\n# TYPE warden_decisions_total counter\n\
            warden_decisions_total{tool=\"say \\\"hi\\\"\\\\\\n\"} 3\n\
            # HELP warden_latency_seconds Latency.\n# TYPE warden_latency_seconds histogram\n\
            warden_latency_seconds_bucket{server=\"s\",le=\"0.001\"} 1\n\
            warden_latency_seconds_bucket{server=\"s\",le=\"0.01\"} 2\n\
            warden_latency_seconds_bucket{server=\"s\",le=\"+Inf\"} 3\n\
            warden_latency_seconds_sum{server=\"s\"} 0.5025\n\
            warden_latency_seconds_count{server=\"s\"} 3\n";
        assert_eq!(text, expected);
    }
}

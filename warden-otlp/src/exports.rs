//! How a process's OTLP exports went, by signal and outcome: the `warden.otlp.exports` counter
//! both binaries serve, so an operator can alert on an export that keeps failing (the data it
//! carries cannot say so itself).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use warden_core::metrics::{Descriptor, Family, Kind};

/// What OTLP carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Log records (decision records, the audit trail, finding events).
    Logs,
    /// Metrics.
    Metrics,
    /// Spans.
    Traces,
}

impl Signal {
    fn as_str(self) -> &'static str {
        match self {
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
            Signal::Traces => "traces",
        }
    }
}

/// How one export request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver took all of it.
    Success,
    /// The receiver answered and refused some or all of it for good (OTLP partial success, or
    /// a final error status).
    Rejected,
    /// No answer, or one worth retrying (unavailable, overloaded, timed out).
    Failure,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Success, Outcome::Rejected, Outcome::Failure];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Rejected => "rejected",
            Outcome::Failure => "failure",
        }
    }
}

/// The export requests of one process, counted by signal and outcome.
#[derive(Debug, Default)]
pub struct Exports {
    counts: [[AtomicU64; 3]; 3],
}

/// Export requests by signal and outcome.
pub const EXPORTS: Descriptor = Descriptor {
    name: "warden.otlp.exports",
    unit: "{request}",
    help: "OTLP export requests this process sent, by signal and outcome: success, rejected (refused for good, in part or whole), failure (no answer, or one worth retrying).",
    kind: Kind::Counter,
    labels: &["warden.otlp.signal", "warden.outcome"],
};

impl Exports {
    /// Counts one request of `signal` that ended in `outcome`.
    pub fn count(&self, signal: Signal, outcome: Outcome) {
        self.counts[signal as usize][outcome as usize].fetch_add(1, Relaxed);
    }

    /// The requests so far of each of `signals` (those the process exports), every outcome
    /// present from zero so that the first failure is an increase.
    pub fn family(&self, signals: impl IntoIterator<Item = Signal>) -> Family {
        let mut family = Family::new(&EXPORTS);
        for signal in signals {
            for outcome in Outcome::ALL {
                let n = self.counts[signal as usize][outcome as usize].load(Relaxed);
                family.add(&[signal.as_str(), outcome.as_str()], n as f64);
            }
        }
        family
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_of_each_exported_signal_is_present_from_zero() {
        let exports = Exports::default();
        let family = exports.family([Signal::Logs]);
        let points: Vec<_> = family.points.iter().map(|p| p.labels.join("/")).collect();
        assert_eq!(points, ["logs/success", "logs/rejected", "logs/failure"]);
        exports.count(Signal::Logs, Outcome::Failure);
        exports.count(Signal::Logs, Outcome::Failure);
        exports.count(Signal::Traces, Outcome::Success);
        let family = exports.family([Signal::Logs]);
        let failures = family.points.iter().find(|p| p.labels == ["logs", "failure"]).unwrap();
        assert!(matches!(failures.value, warden_core::metrics::Value::Number(n) if n == 2.0));
        assert_eq!(family.points.len(), 3, "traces are not exported here");
    }
}

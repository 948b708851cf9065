//! The telemetry subsystem: what the control plane keeps and exports about the fleet's
//! decisions — the decision store ([`decisions`]), token exchanges as decision records
//! ([`exchange_log`]), metrics ([`metrics`]) and OTLP export of records, the audit trail and
//! metrics ([`otlp`]).

pub mod decisions;
pub mod exchange_log;
pub mod finding_events;
pub mod metrics;
pub mod otlp;

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use warden_tasks::{Shutdown, Tasks};

use self::decisions::{DecisionError, Decisions};
use self::exchange_log::ExchangeLog;
use self::metrics::ExportStats;
use crate::configuration::Configuration;
use crate::fleet::Fleet;
use crate::fleet::replicas::Leadership;

/// The decision records and the figures kept about them.
pub struct Telemetry {
    decisions: Arc<Decisions>,
    /// Counts of the stored decision records, for the metrics.
    counts: metrics::Counts,
    /// The OTLP log export's counts (zero when it is off).
    export_stats: Arc<ExportStats>,
    /// Token exchanges, on their way to the decision store.
    exchange_log: ExchangeLog,
    /// When this process started: the start of every cumulative metric.
    started: SystemTime,
}

/// The receiving end of the exchange log, for [`Telemetry::spawn`].
pub struct Duties {
    exchange_writer: exchange_log::Writer,
}

impl Telemetry {
    /// Opens the decision store in `data_dir`, keeping at most `retention` records; a metric
    /// series first seen in a record reads 0 for `new_series_delay` (see [`metrics`]).
    pub fn open(
        data_dir: &Path,
        retention: u64,
        new_series_delay: std::time::Duration,
    ) -> Result<(Arc<Telemetry>, Duties), DecisionError> {
        let counts = Arc::new(std::sync::Mutex::new(metrics::DecisionCounts::new(new_series_delay)));
        let decisions = Arc::new(Decisions::open(data_dir, retention, counts.clone())?);
        let (exchange_log, exchange_writer) = ExchangeLog::new();
        let telemetry =
            Telemetry { decisions, counts, export_stats: Arc::default(), exchange_log, started: SystemTime::now() };
        Ok((Arc::new(telemetry), Duties { exchange_writer }))
    }

    /// The decision store.
    pub fn decisions(&self) -> &Arc<Decisions> {
        &self.decisions
    }

    /// Where token exchanges are logged.
    pub fn exchange_log(&self) -> &ExchangeLog {
        &self.exchange_log
    }

    /// Starts storing exchanges and, when `otlp` names endpoints, exporting decision records,
    /// the audit trail (on the leading replica) and metrics. Returns what the metrics are read
    /// from, for the `/metrics` endpoint.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        &self,
        duties: Duties,
        configuration: &Arc<Configuration>,
        fleet: &Arc<Fleet>,
        inventory: &Arc<crate::inventory::Inventory>,
        key_statuses: &Arc<crate::tokens::issuer_keys::KeyStatuses>,
        leadership: &Leadership,
        otlp: &otlp::Config,
        certificates: Vec<(&'static str, Arc<crate::serving::ServingCert>)>,
        tasks: &mut Tasks,
        shutdown: &Shutdown,
    ) -> Arc<metrics::Sources> {
        tasks
            .spawn("exchange log", exchange_log::run(duties.exchange_writer, self.decisions.clone(), shutdown.clone()));
        // Every OTLP export request of this process, counted by signal and outcome.
        let exports = Arc::new(warden_otlp::Exports::default());
        let sources = Arc::new(metrics::Sources {
            counts: self.counts.clone(),
            export_stats: self.export_stats.clone(),
            configuration: configuration.clone(),
            fleet: fleet.clone(),
            leadership: leadership.clone(),
            inventory: inventory.clone(),
            key_statuses: key_statuses.clone(),
            otlp: (otlp.clone(), exports.clone()),
            certificates,
        });
        if let Some(endpoint) = otlp.logs.clone() {
            let audit = otlp::AuditTrail { store: configuration.store().clone(), leadership: leadership.clone() };
            tasks.spawn(
                "decision export",
                otlp::export_logs(
                    self.decisions.clone(),
                    endpoint.clone(),
                    otlp.resource.clone(),
                    self.export_stats.clone(),
                    exports.clone(),
                    shutdown.clone(),
                ),
            );
            tasks.spawn(
                "audit export",
                otlp::export_logs(
                    Arc::new(audit),
                    endpoint.clone(),
                    otlp.resource.clone(),
                    Arc::default(),
                    exports.clone(),
                    shutdown.clone(),
                ),
            );
            let findings = finding_events::FindingEvents::new(
                configuration.store().clone(),
                leadership.clone(),
                inventory.changed(),
            );
            tasks.spawn(
                "findings export",
                otlp::export_logs(
                    Arc::new(findings),
                    endpoint,
                    otlp.resource.clone(),
                    Arc::default(),
                    exports.clone(),
                    shutdown.clone(),
                ),
            );
        }
        if let Some(endpoint) = otlp.metrics.clone() {
            match warden_otlp::Sender::new(&endpoint, exports) {
                Ok(sender) => {
                    tracing::info!(endpoint = %endpoint.url, interval = ?otlp.metric_interval, "exporting metrics over OTLP");
                    let (cp, mut stop) = (sources.clone(), shutdown.clone());
                    let export = warden_otlp::metrics::export_periodically(
                        sender,
                        otlp.resource.clone(),
                        "warden.control_plane",
                        otlp.metric_interval,
                        self.started,
                        move || {
                            let cp = cp.clone();
                            async move { metrics::families(&cp).await }
                        },
                        async move { stop.requested().await },
                    );
                    tasks.spawn("metrics export", export);
                }
                Err(e) => tracing::error!("OTLP metrics exporter: {e}"),
            }
        }
        sources
    }
}

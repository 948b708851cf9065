//! Decision records exported straight from the agent as OTLP logs, when the operator asks for
//! it (`OTEL_LOGS_EXPORTER=otlp`): for a backend near the host that should not depend on the
//! control plane. Best effort (`crate::export`); every record still goes to the control plane,
//! the reliable path, and both give it the same `warden.record.id` for de-duplication.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use proto::v1 as pb;
use warden_otlp::{Sender, decision};
use warden_tasks::{Shutdown, Tasks};

use crate::export::Queue;

/// Records as the outbox queued them (encoded `DecisionRecord`s).
pub type Direct = Queue<Bytes>;

/// Starts exporting the records of `agent`'s run `boot` with `sender` (a task of `tasks`) until
/// `stop`.
pub fn start(
    sender: Sender,
    resource: Vec<(String, String)>,
    agent: String,
    boot: u64,
    stop: Shutdown,
    tasks: &mut Tasks,
) -> Arc<Direct> {
    let send = move |encoded: Vec<Bytes>| {
        // Decoded here, off the request path: the outbox keeps only the encoded form.
        let records = encoded
            .iter()
            .filter_map(|bytes| pb::DecisionRecord::decode(&bytes[..]).ok())
            .map(|record| decision::log_record(&record, &agent, boot))
            .collect();
        let request = warden_otlp::logs_request(&resource, "warden.agent", records);
        let sender = sender.clone();
        async move { sender.logs(request).await }
    };
    let (queue, exporter) = Queue::start("decision records", crate::export::LINGER, send, stop);
    tasks.spawn("decision log export", exporter);
    queue
}

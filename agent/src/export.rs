//! Best-effort OTLP export of what the agent sends straight to a backend: gateway spans and,
//! when the operator asks, decision logs. Items wait in a bounded queue and go out in batches;
//! a full queue, a failed export or a receiver's refusal drops them, counted, and a request
//! never waits for any of it. (The reliable path of decision records is the control plane's:
//! `crate::decisions`.)

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::mpsc;
use warden_otlp::ExportError;
use warden_tasks::Shutdown;

/// Items waiting at most; past this they are dropped and counted.
const QUEUE: usize = 8_192;
/// Items per export request.
const BATCH: usize = 512;
/// How long a batch's first item waits for company, so that requests become batches rather
/// than one export each.
pub const LINGER: Duration = Duration::from_millis(200);

/// The queue in front of one exporter.
pub struct Queue<T> {
    items: mpsc::Sender<T>,
    dropped: Arc<AtomicU64>,
}

impl<T: Send + 'static> Queue<T> {
    /// The queue, and the exporter to run (in the agent's task set): it sends batches with
    /// `send`, a batch's first item waiting `linger` for more; at `stop`, what is queued then
    /// goes out before the exporter ends. `what` names the items in the log.
    pub fn start<F, Fut>(
        what: &'static str,
        linger: Duration,
        send: F,
        mut stop: Shutdown,
    ) -> (Arc<Queue<T>>, impl Future<Output = ()> + Send + 'static)
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<i64, ExportError>> + Send,
    {
        let (items, mut rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        let exporter = async move {
            let mut stopping = false;
            loop {
                let mut batch = Vec::with_capacity(BATCH);
                if stopping {
                    if rx.try_recv().map(|item| batch.push(item)).is_err() {
                        return;
                    }
                } else {
                    tokio::select! {
                        n = rx.recv_many(&mut batch, BATCH) => if n == 0 { return },
                        _ = stop.requested() => {
                            stopping = true;
                            continue;
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(linger) => {}
                        _ = stop.requested() => stopping = true,
                    }
                }
                while batch.len() < BATCH
                    && let Ok(more) = rx.try_recv()
                {
                    batch.push(more);
                }
                let n = batch.len() as u64;
                match send(batch).await {
                    Ok(0) => {}
                    Ok(refused) => {
                        lost.fetch_add(refused.max(0) as u64, Relaxed);
                        tracing::warn!(refused, "the OTLP receiver refused some {what}");
                    }
                    Err(e) => {
                        lost.fetch_add(n, Relaxed);
                        tracing::warn!("OTLP export of {what} failed ({}); {n} dropped", e.message);
                    }
                }
            }
        };
        (Arc::new(Queue { items, dropped }), exporter)
    }

    /// Queues `item`, or drops and counts it when the queue is full.
    pub fn offer(&self, item: T) {
        if self.items.try_send(item).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Items not exported: the queue was full, the export failed or the receiver refused them.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Instant;

    /// Waits (5 s at most) until `done` holds of what was sent.
    async fn until(sent: &Mutex<Vec<Vec<u32>>>, done: impl Fn(&[Vec<u32>]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(&sent.lock().unwrap()) {
            assert!(Instant::now() < deadline, "sent so far: {:?}", sent.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn items_go_out_in_batches_failures_are_counted_and_stop_flushes() {
        let sent = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let (stop_tx, stop) = warden_tasks::channel();
        let record = sent.clone();
        let send = move |batch: Vec<u32>| {
            let failing = batch.contains(&13);
            record.lock().unwrap().push(batch);
            async move {
                match failing {
                    true => Err(ExportError { retry: true, message: "unlucky".into() }),
                    false => Ok(0),
                }
            }
        };
        let (queue, exporter) = Queue::start("numbers", Duration::from_millis(50), send, stop);
        let exporter = tokio::spawn(exporter);
        for i in 0..3 {
            queue.offer(i);
        }
        until(&sent, |s| !s.is_empty()).await;
        assert_eq!(*sent.lock().unwrap(), [vec![0, 1, 2]], "one batch, not one export each");
        // On this single-threaded runtime the exporter does not run until the test yields:
        // the queue fills and overflows.
        for i in 0..QUEUE as u32 + 2 {
            queue.offer(100 + i);
        }
        assert_eq!(queue.dropped(), 2);
        until(&sent, |s| s.len() == 1 + QUEUE / BATCH).await;
        assert!(sent.lock().unwrap()[1..].iter().all(|b| b.len() == BATCH));
        queue.offer(13);
        queue.offer(14);
        until(&sent, |s| s.len() == 2 + QUEUE / BATCH).await;
        assert_eq!(queue.dropped(), 4, "the failed batch is counted whole");
        // Queued when the agent stops: still sent, without waiting out the linger.
        queue.offer(20);
        stop_tx.fire();
        exporter.await.unwrap();
        assert_eq!(sent.lock().unwrap().last(), Some(&vec![20]), "flushed before the exporter ended");
    }
}

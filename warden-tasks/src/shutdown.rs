//! One shutdown signal per process, and the set of tasks that must finish before it exits.
//!
//! As mini-redis does: the signal is a watch channel wrapped in a type that says what it is for,
//! cloned into every task; a task selects on [`Shutdown::requested`] at each point where it may
//! wait, and finishes what it holds (flushes a batch, ends a lease) before returning.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinSet;

/// Fires the shutdown signal; dropping it fires it too, so a `run` that returns early cannot
/// leave its tasks waiting for ever.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A task's view of the shutdown signal.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new signal, not yet fired.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Tells every [`Shutdown`] to stop.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }

    /// A receiver of this signal.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        self.fire();
    }
}

impl Shutdown {
    /// Whether shutdown was requested.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown is requested (at once if it already was). Cancel-safe: meant for
    /// `select!` arms.
    pub async fn requested(&mut self) {
        // An error means the trigger is gone, which fires it.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// The background tasks of one process, awaited on exit.
///
/// Every task is spawned here under a name, so `join` can say which one panicked; none is
/// detached. Tasks that end early (an exporter that is not configured) are simply done.
#[derive(Debug, Default)]
pub struct Tasks {
    set: JoinSet<()>,
    /// Each task's name, by id: a panic's `JoinError` carries only the id.
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Tasks {
    /// An empty set.
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Runs `task` on the runtime as part of this set.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let id = self.set.spawn(task).id();
        self.names.insert(id, name);
    }

    /// Waits for every task to finish (they should have been told to stop). A task that
    /// panicked is logged by name; the others are still awaited.
    pub async fn join(mut self) {
        while let Some(done) = self.set.join_next_with_id().await {
            let id = match &done {
                Ok((id, ())) => *id,
                Err(e) => e.id(),
            };
            let task = self.names.get(&id).copied().unwrap_or("unnamed");
            match done {
                Ok(_) => tracing::debug!(task, "task finished"),
                Err(e) if e.is_panic() => tracing::error!(task, "a background task panicked: {e}"),
                Err(e) => tracing::warn!(task, "a background task was cancelled: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn every_task_sees_the_signal_and_join_waits_for_their_last_work() {
        let (trigger, shutdown) = channel();
        let flushed = Arc::new(AtomicUsize::new(0));
        let mut tasks = Tasks::new();
        for _ in 0..3 {
            let (mut shutdown, flushed) = (shutdown.clone(), flushed.clone());
            tasks.spawn("worker", async move {
                shutdown.requested().await;
                tokio::task::yield_now().await;
                flushed.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert!(!shutdown.is_requested());
        trigger.fire();
        assert!(shutdown.is_requested());
        tasks.join().await;
        assert_eq!(flushed.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn dropping_the_trigger_fires_it() {
        let (trigger, mut shutdown) = channel();
        drop(trigger);
        shutdown.requested().await;
        assert!(shutdown.is_requested());
    }

    #[tokio::test]
    async fn a_panicking_task_does_not_stop_join_from_awaiting_the_others() {
        let (trigger, shutdown) = channel();
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Tasks::new();
        tasks.spawn("panics", async { panic!("on purpose") });
        let (mut stop, finished) = (shutdown.clone(), done.clone());
        tasks.spawn("waits", async move {
            stop.requested().await;
            finished.fetch_add(1, Ordering::SeqCst);
        });
        trigger.fire();
        tasks.join().await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }
}

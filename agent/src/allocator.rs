//! Giving memory the agent freed back to the system.
//!
//! glibc keeps what a thread frees in that thread's arena and returns only the top of each
//! arena, so after a burst (compiling a large configuration, a spike of requests whose decision
//! records waited for the control plane) the agent would stay resident at its high-water mark
//! (measured in BENCHMARKS.md). `malloc_trim` hands the free pages of every arena back. It locks
//! each arena in turn, so it runs on a blocking thread: after a configuration is applied, and
//! every [`INTERVAL`].

use std::time::Duration;

use warden_tasks::Shutdown;

/// How often the free pages are given back while the agent runs.
pub const INTERVAL: Duration = Duration::from_secs(30);

/// Gives free pages back to the system; whether any were (glibc only; elsewhere nothing to do:
/// musl and other allocators do not hold pages back this way).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and asks nothing of its caller; it walks glibc's own
    // free lists under glibc's own locks.
    unsafe { libc::malloc_trim(0) != 0 }
}

/// Gives free pages back to the system; nothing to do off glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

/// Whether a trim is scheduled and has not started.
static SCHEDULED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Trims asked for within this long of each other are one trim.
const COALESCE: Duration = Duration::from_millis(100);

/// [`trim`] on a blocking thread shortly after, not holding up the caller. A burst of calls (a
/// burst of configuration versions) is one trim: each walks and locks every arena of the
/// process, so trimming per call would cost more than it gives back.
pub fn trim_soon() {
    use std::sync::atomic::Ordering;
    if SCHEDULED.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async {
        tokio::time::sleep(COALESCE).await;
        SCHEDULED.store(false, Ordering::Release);
        let _ = tokio::task::spawn_blocking(trim).await;
    });
}

/// Trims every [`INTERVAL`] until `stop`.
pub async fn trim_periodically(mut stop: Shutdown) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => trim_soon(),
            _ = stop.requested() => return,
        }
    }
}

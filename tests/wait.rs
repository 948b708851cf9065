//! Bounded waits: every wait in a test polls until a condition holds or fails the test after
//! [`PATIENCE`], saying what it waited for.

use std::time::{Duration, Instant};

/// How long any wait in a test may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some`, or fails the test after [`PATIENCE`] with `what`.
pub fn wait_for<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    wait_for_or(what, String::new, check)
}

/// [`wait_for`], adding `context()` to the failure message.
pub fn wait_for_or<T>(what: &str, context: impl Fn() -> String, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", context());
        std::thread::sleep(Duration::from_millis(50));
    }
}

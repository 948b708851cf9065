//! The lifecycle of both binaries' background tasks, one mechanism each: a [`Shutdown`] signal
//! every task watches, the [`Tasks`] set a binary's `run` awaits before it returns (so nothing is
//! left writing after the process says it stopped), and the [`Backoff`] every retry loop uses.
#![forbid(unsafe_code)]

mod backoff;
mod shutdown;

pub use backoff::Backoff;
pub use shutdown::{Shutdown, Tasks, Trigger, channel};

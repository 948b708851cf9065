//! wardenctl as a library: how to reach the control plane's admin API, for the CLI and for
//! harnesses that drive a control plane directly.
#![forbid(unsafe_code)]

pub mod client;

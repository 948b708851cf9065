//! The harness for end-to-end suites: starts the real `warden-cp` and `warden-agent` binaries on
//! loopback ports in temporary directories, drives them with the real `wardenctl`, and reads the
//! agents' status endpoints. Every wait is bounded.
//!
//! One module per concern; everything they offer is re-exported here, so suites and harnesses
//! name it `tests::…` wherever it lives:
//!
//! - `wait`: bounded polling ([`wait_for`], [`PATIENCE`]).
//! - `loopback`: addresses for the servers a test starts ([`loopback_addr`]).
//! - `process`: workspace binaries ([`bin`]) and child processes killed when dropped ([`Process`]).
//! - `usage`: a process's memory and CPU time, for the load harnesses.
//! - `fleet`: Warden itself: [`ControlPlane`], [`Agent`], a [`Fleet`] of both with a gateway's
//!   peers if asked ([`Fleet::builder`]), and a sample fleet definition ([`fleet_yaml`]).
//! - `peers`: peers written by others: identity providers, the MCP Python SDK's server and
//!   client, Envoy's ext_authz stubs.
//! - `gateway`: raw HTTP exchanges with an agent's gateway ([`post`]).
//! - `etcd`: a real etcd cluster, with or without TLS ([`Etcd`]).
//! - `ca`: a throwaway certificate authority ([`TestCa`]).
//! - `proxy`: a TCP proxy a test can cut: a network partition ([`Proxy`]).
//! - [`otlp`]: an OTLP receiver.
//! - [`collector`]: an OpenTelemetry Collector's Prometheus exporter, as the specification says it
//!   translates (a stand-in: the real one needs a container runtime).
//! - `simulated`: agents simulated in a load harness's process ([`simulated_agent`]).
//! - `secrets`: where a secret's text turns up in what Warden wrote ([`files_containing`]).
#![forbid(unsafe_code)]

mod ca;
pub mod collector;
mod etcd;
mod fleet;
mod gateway;
mod loopback;
pub mod otlp;
mod peers;
mod process;
mod proxy;
mod secrets;
mod simulated;
mod usage;
mod wait;

pub use ca::{TestCa, served_certificate};
pub use etcd::{Etcd, EtcdTls};
pub use fleet::{Agent, ControlPlane, Fleet, FleetBuilder, fleet_yaml, fleet_yaml_documents};
pub use gateway::{Answer, post};
pub use loopback::loopback_addr;
pub use peers::{McpUpstream, MintingIdp, StaticIdp, ext_authz_client, mcp_client, mcp_client_with, peer, python};
pub use process::{Process, bin};
pub use proxy::Proxy;
pub use secrets::{contains_bytes, every_file, files_containing};
pub use simulated::{LightAgent, simulated_agent, simulated_agents_dir};
pub use usage::{cpu_time, cpu_time_with_children, rss_kib};
pub use wait::{PATIENCE, wait_for, wait_for_or};

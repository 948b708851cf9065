//! Finds long-lived credentials in the MCP configuration files on a host — Claude Desktop and
//! Code, Cursor, VS Code, Windsurf, Continue, Gemini CLI, Codex, generic `mcp.json`, and the env
//! files they reference — and reports where each is, what kind it is, and a keyed fingerprint.
//!
//! **Architecture invariant**: a secret's value never leaves the function that found it. A
//! `Finding` holds a location built from the document's keys, a `Kind`, and an HMAC fingerprint
//! (`fingerprint`); errors hold positions (`document`); nothing logs. The corpus test renders
//! every report format over thousands of planted fakes and asserts none appears.
//!
//! The pipeline (`scanner`): `walk` picks files within `Limits` → `document` parses JSONC, TOML,
//! YAML or dotenv into one tree → `fields` visits every string with its path, server entry and
//! name → `detect` finds credentials by shape (`known` formats) and by name (`named`, with the
//! entropy and placeholder rules documented there) → `fingerprint` → `Finding`, its `location`
//! written by `location`.
//!
//! Fake credentials, look-alikes and whole configuration trees with ground truth, for tests and
//! benchmarks, are the `warden-scan-corpus` crate's: nothing of them is built into this one.
#![forbid(unsafe_code)]
// A string-slicing panic prints the string, and the strings here are secrets: slice with `get`.
// (Tests slice freely: they hold fakes.)
#![cfg_attr(not(test), deny(clippy::string_slice))]

mod client;
mod detect;
mod document;
mod fields;
mod finding;
mod fingerprint;
mod kind;
mod limits;
pub mod location;
pub mod report;
mod roots;
mod scanner;
mod walk;

pub use client::Client;
pub use document::FormatError;
pub use finding::{Finding, Report, Unreadable};
pub use fingerprint::FingerprintKey;
pub use kind::Kind;
pub use limits::Limits;
pub use roots::default_roots;
pub use scanner::Scanner;

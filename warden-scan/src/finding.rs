//! What a scan returns: `Finding`s (where a credential is, what kind, its keyed fingerprint —
//! never its value), `Unreadable` files (reported, never fatal) and the `Report` holding both.
//!
//! **Invariant**: no type here has a field that could hold a secret's value. `location` is built
//! from the keys of the document (never from values), `reason` from I/O error kinds and parser
//! positions.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Client, Kind};

/// One credential found in one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The file, as given or as walked (absolute when the root was absolute).
    pub file: PathBuf,
    /// Where inside the file: keys joined with `.`, array indexes in brackets
    /// (`mcpServers.x.args[3]`), keys that are not plain names quoted in brackets
    /// (`projects["/home/u/app"].mcpServers.db.env.PGPASSWORD`); for env files the variable name.
    pub location: String,
    /// The MCP server entry it belongs to, when inside one.
    pub server: Option<String>,
    /// Which client's configuration the file is.
    pub client: Client,
    /// What sort of credential.
    pub kind: Kind,
    /// Hex of the first 16 bytes of HMAC-SHA256(key, secret).
    pub fingerprint: String,
    /// 1-based line of the value in the file, when it could be found.
    pub line: Option<u32>,
}

/// A file (or folder) that could not be scanned, and why. Never fatal to the scan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreadable {
    /// The file or folder.
    pub file: PathBuf,
    /// Why: an I/O error, a limit, or a parser's position — never any of the file's content.
    pub reason: String,
}

/// The outcome of `Scanner::scan_paths`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Credentials found, in walk order.
    pub findings: Vec<Finding>,
    /// Files and folders that could not be scanned.
    pub unreadable: Vec<Unreadable>,
    /// Files read and parsed (successfully or not).
    pub files_scanned: usize,
    /// A limit (`max_files`, `max_findings`, `max_entries`) cut the scan short.
    pub truncated: bool,
}

//! `Scanner`: the pipeline from a file's text to its findings, in one function read top to bottom
//! (`Scanner::scan_document`): parse → visit its strings → detect credentials in each →
//! fingerprint → record where. `scan_paths` feeds it files from `walk`.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::detect::{self, pem_fingerprint_input};
use crate::document::{self, Format, FormatError, LineLocator};
use crate::fields::{self, EnvRef};
use crate::{Client, Finding, FingerprintKey, Kind, Limits, Report, location};

/// Finds credentials in MCP configuration. Holds the fingerprint key and the limits; cheap to
/// share across threads (`&Scanner` is all a scan needs).
#[derive(Debug, Clone)]
pub struct Scanner {
    key: FingerprintKey,
    limits: Limits,
}

/// What one file yields: its findings and the env files it points at.
pub(crate) struct Scanned {
    pub(crate) findings: Vec<Finding>,
    pub(crate) env_refs: Vec<EnvRef>,
    /// A bound cut the file's scan short: the findings budget, or a field's hit limit.
    pub(crate) truncated: bool,
}

impl Scanner {
    /// A scanner fingerprinting with `key`, bounded by `limits`.
    pub fn new(key: FingerprintKey, limits: Limits) -> Scanner {
        Scanner { key, limits }
    }

    /// The limits this scanner applies.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Scans files and directories. A file is scanned whatever its name (format from its
    /// extension, JSON tried when the name says nothing); a directory is walked for the MCP
    /// configuration file names of every known client, and the env files those reference are
    /// scanned too. Nothing here fails: files that cannot be read or parsed are reported in
    /// `Report::unreadable`, and limits that cut the scan short set `Report::truncated`.
    pub fn scan_paths(&self, paths: &[PathBuf]) -> Report {
        crate::walk::run(self, paths)
    }

    /// The findings in one file's text, at most `Limits::max_findings`. `name` is the file's
    /// path: it chooses the format and the client and becomes `Finding::file`. Pure: reads
    /// nothing from disk (env files the text references are followed only by `scan_paths`).
    /// A text longer than `Limits::max_file_bytes` is refused (`FormatError::TooLarge`), as
    /// `scan_paths` refuses such a file.
    pub fn scan_text(&self, name: &Path, text: &str) -> Result<Vec<Finding>, FormatError> {
        if text.len() as u64 > self.limits.max_file_bytes {
            return Err(FormatError::TooLarge);
        }
        self.scan_document(name, text, None, None, self.limits.max_findings).map(|scanned| scanned.findings)
    }

    /// The pipeline. `format` forces a format (an env file referenced under any name);
    /// `server` is the server entry that referenced this file, if any; `budget` is how many
    /// findings the scan may still keep (the rest of `max_findings`): detection stops there.
    pub(crate) fn scan_document(
        &self,
        name: &Path,
        text: &str,
        format: Option<Format>,
        server: Option<&str>,
        budget: usize,
    ) -> Result<Scanned, FormatError> {
        // Parse: the format from the name unless forced.
        let (format, document) = match format {
            Some(format) => (format, document::parse_as(format, text)?),
            None => document::parse(name, text)?,
        };
        let client = if format == Format::Env { Client::EnvFile } else { Client::from_path(name) };
        let mut lines = LineLocator::new(text);
        let mut findings = Vec::new();
        let mut truncated = false;
        // Visit every string with its context; detect; fingerprint; record; stop at the budget.
        let env_refs = fields::visit(&document, &mut |field| {
            let detected = detect::detect(field);
            truncated |= detected.truncated;
            for hit in detected.hits {
                if findings.len() >= budget {
                    truncated = true;
                    return ControlFlow::Break(());
                }
                // `detect` returns ranges of the value; one that is not is skipped, not sliced.
                let Some(secret) = field.value.get(hit.start..hit.end) else { continue };
                findings.push(Finding {
                    file: name.to_path_buf(),
                    location: location::render(field.path),
                    server: field.server.or(server).map(str::to_string),
                    client,
                    kind: hit.kind,
                    fingerprint: self.fingerprint(hit.kind, secret),
                    // The parser's line where it has one (JSON, TOML, env); else a search (YAML).
                    line: field.line.or_else(|| lines.find(secret)),
                });
            }
            ControlFlow::Continue(())
        });
        // Env files point at nothing further: no chains to follow.
        let env_refs = if format == Format::Env { Vec::new() } else { env_refs };
        Ok(Scanned { findings, env_refs, truncated })
    }

    /// A private key is fingerprinted over its base64 body, so line breaks and escaping do not
    /// change it; everything else over the exact text.
    fn fingerprint(&self, kind: Kind, secret: &str) -> String {
        match kind {
            Kind::PrivateKey | Kind::GcpServiceAccountKey => {
                self.key.fingerprint(pem_fingerprint_input(secret).as_bytes())
            }
            _ => self.key.fingerprint(secret.as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanner(limits: Limits) -> Scanner {
        Scanner::new(FingerprintKey::new([7; 32]), limits)
    }

    #[test]
    fn the_budget_stops_a_document() {
        let keys: Vec<String> = (0..40).map(detect::tests::aws_key).collect();
        let text = serde_json::json!({"env": keys}).to_string();
        let scanned = scanner(Limits::default()).scan_document(Path::new("mcp.json"), &text, None, None, 25).unwrap();
        assert_eq!(scanned.findings.len(), 25);
        assert!(scanned.truncated);
        let scanned = scanner(Limits::default()).scan_document(Path::new("mcp.json"), &text, None, None, 40).unwrap();
        assert_eq!((scanned.findings.len(), scanned.truncated), (40, false));
    }

    #[test]
    fn scan_text_applies_the_size_limit() {
        let limits = Limits { max_file_bytes: 16, ..Limits::default() };
        assert_eq!(
            scanner(limits).scan_text(Path::new("mcp.json"), "{\"a\": \"0123456789\"}"),
            Err(FormatError::TooLarge)
        );
        assert_eq!(scanner(limits).scan_text(Path::new("mcp.json"), "{\"a\": \"0123\"}"), Ok(Vec::new()));
    }
}

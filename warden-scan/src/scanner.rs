//! `Scanner`: the pipeline from a file's text to its findings, in one function read top to bottom
//! (`Scanner::scan_document`): parse → walk its strings → detect credentials in each →
//! fingerprint → record where. `scan_paths` feeds it files from `walk`.

use std::path::{Path, PathBuf};

use crate::detect::{self, pem_fingerprint_input};
use crate::document::{self, Format, FormatError};
use crate::fields::{self, EnvRef};
use crate::{Client, Finding, FingerprintKey, Kind, Limits, Report};

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

    /// The findings in one file's text. `name` is the file's path: it chooses the format and
    /// the client and becomes `Finding::file`. Pure: reads nothing from disk (env files the text
    /// references are followed only by `scan_paths`).
    pub fn scan_text(&self, name: &Path, text: &str) -> Result<Vec<Finding>, FormatError> {
        self.scan_document(name, text, None, None).map(|scanned| scanned.findings)
    }

    /// The pipeline. `format` forces a format (an env file referenced under any name);
    /// `server` is the server entry that referenced this file, if any.
    pub(crate) fn scan_document(
        &self,
        name: &Path,
        text: &str,
        format: Option<Format>,
        server: Option<&str>,
    ) -> Result<Scanned, FormatError> {
        // Parse: the format from the name unless forced.
        let (format, document) = match format {
            Some(format) => (format, document::parse_as(format, text)?),
            None => document::parse(name, text)?,
        };
        let client = if format == Format::Env { Client::EnvFile } else { Client::from_path(name) };
        let mut lines = LineLocator::new(text);
        let mut findings = Vec::new();
        // Walk every string with its context; detect; fingerprint; record.
        let env_refs = fields::walk(&document, &mut |field| {
            for hit in detect::detect(field) {
                let secret = &field.value[hit.start..hit.end];
                findings.push(Finding {
                    file: name.to_path_buf(),
                    location: fields::render(field.path),
                    server: field.server.or(server).map(str::to_string),
                    client,
                    kind: hit.kind,
                    fingerprint: self.fingerprint(hit.kind, secret),
                    // The parser's line where it has one (JSON, TOML, env); else a search (YAML).
                    line: field.line.or_else(|| lines.find(secret)),
                });
            }
        });
        // Env files point at nothing further: no chains to follow.
        let env_refs = if format == Format::Env { Vec::new() } else { env_refs };
        Ok(Scanned { findings, env_refs })
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

/// Finds the line of a secret in a file whose parser gives no lines (YAML). Findings arrive in
/// file order, so each search starts after the previous match: the same value under two keys
/// gets two different lines.
struct LineLocator<'t> {
    text: &'t str,
    cursor: usize,
    line_starts: Option<Vec<usize>>,
    /// Bytes left to search: a file of thousands of findings whose values are written escaped
    /// (so never found) must not cost thousands of passes over it.
    budget: usize,
}

/// Passes over a file the line search may make in all.
const LINE_SEARCH_PASSES: usize = 64;

impl<'t> LineLocator<'t> {
    fn new(text: &'t str) -> Self {
        LineLocator { text, cursor: 0, line_starts: None, budget: text.len().saturating_mul(LINE_SEARCH_PASSES) }
    }

    /// Searches `text[from..]` for `needle`, within the budget.
    fn search(&mut self, from: usize, needle: &str) -> Option<usize> {
        let rest = self.text.get(from..)?;
        if self.budget < rest.len() {
            return None;
        }
        let found = rest.find(needle);
        self.budget -= found.map_or(rest.len(), |p| p + needle.len());
        found.map(|p| from + p)
    }

    fn find(&mut self, secret: &str) -> Option<u32> {
        // The secret up to the first character a writer might escape (a line break, a quote, a
        // backslash): a PEM block's BEGIN line, a token whole.
        let end = secret.find(['\n', '\r', '\\', '"', '\t']).unwrap_or(secret.len());
        let needle = truncate(secret[..end].trim(), 120);
        if needle.is_empty() {
            return None;
        }
        let at = match self.search(self.cursor, needle) {
            Some(at) => at,
            None => self.search(0, needle)?,
        };
        self.cursor = at + needle.len();
        let starts = self.line_starts.get_or_insert_with(|| {
            std::iter::once(0).chain(self.text.match_indices('\n').map(|(i, _)| i + 1)).collect()
        });
        let line = starts.partition_point(|&s| s <= at);
        Some(document::saturate(line))
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locator_walks_forward() {
        let text = "a: x\nb: TOKEN\nc: TOKEN\n";
        let mut l = LineLocator::new(text);
        assert_eq!(l.find("TOKEN"), Some(2));
        assert_eq!(l.find("TOKEN"), Some(3));
        assert_eq!(l.find("TOKEN"), Some(2));
        assert_eq!(l.find("absent"), None);
        assert_eq!(truncate("éé", 3), "é");
    }
}

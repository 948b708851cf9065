//! Line numbers from byte offsets: `Lines`, a table of where each line of a file starts, built
//! once per document so every position after it is a binary search (TOML gives byte spans); and
//! `LineLocator`, which finds the line of a secret in a file whose parser gives no positions
//! (YAML), by searching the text within a budget.

use super::saturate;

/// Where each line of a text starts.
#[derive(Debug)]
pub(crate) struct Lines {
    /// Byte offset of each line's first byte; `starts[0]` is 0.
    starts: Vec<usize>,
    len: usize,
}

impl Lines {
    /// One pass over `text`.
    pub(crate) fn new(text: &str) -> Lines {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Lines { starts, len: text.len() }
    }

    /// 1-based line and column (in bytes) of byte `offset` (clamped to the text's end).
    pub(crate) fn line_column(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.len);
        // At least 1: `starts[0]` is 0, which is at or before any offset.
        let line = self.starts.partition_point(|&s| s <= offset);
        let line_start = self.starts.get(line.saturating_sub(1)).copied().unwrap_or(0);
        (saturate(line), saturate(offset - line_start + 1))
    }

    /// 1-based line of byte `offset`.
    pub(crate) fn line(&self, offset: usize) -> u32 {
        self.line_column(offset).0
    }
}

/// Finds the line of a secret in a file whose parser gives no lines (YAML). Findings arrive in
/// file order, so each search starts after the previous match: the same value under two keys
/// gets two different lines.
pub(crate) struct LineLocator<'t> {
    text: &'t str,
    cursor: usize,
    lines: Option<Lines>,
    /// Bytes left to search: a file of thousands of findings whose values are written escaped
    /// (so never found) must not cost thousands of passes over it.
    budget: usize,
}

/// Passes over a file the line search may make in all.
const LINE_SEARCH_PASSES: usize = 64;

/// Longest prefix of a secret searched for: enough to be unique, short enough to be cheap.
const MAX_NEEDLE: usize = 120;

impl<'t> LineLocator<'t> {
    pub(crate) fn new(text: &'t str) -> Self {
        LineLocator { text, cursor: 0, lines: None, budget: text.len().saturating_mul(LINE_SEARCH_PASSES) }
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

    /// The line `secret` is on: the first occurrence after the previous one found, else the first.
    pub(crate) fn find(&mut self, secret: &str) -> Option<u32> {
        // The secret up to the first character a writer might escape (a line break, a quote, a
        // backslash): a PEM block's BEGIN line, a token whole.
        let end = secret.find(['\n', '\r', '\\', '"', '\t']).unwrap_or(secret.len());
        let needle = truncate(secret.get(..end)?.trim(), MAX_NEEDLE);
        if needle.is_empty() {
            return None;
        }
        let at = match self.search(self.cursor, needle) {
            Some(at) => at,
            None => self.search(0, needle)?,
        };
        self.cursor = at + needle.len();
        Some(self.lines.get_or_insert_with(|| Lines::new(self.text)).line(at))
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::line_column;

    #[test]
    fn lines_agree_with_a_scan_from_the_start() {
        let text = "ab\ncd\n\nxyz é\n";
        let lines = Lines::new(text);
        for offset in 0..text.len() + 3 {
            assert_eq!(lines.line_column(offset), line_column(text, offset), "{offset}");
        }
        assert_eq!(Lines::new("").line_column(5), (1, 1));
    }

    #[test]
    fn locator_walks_forward() {
        let text = "a: x\nb: TOKEN\nc: TOKEN\n";
        let mut l = LineLocator::new(text);
        assert_eq!(l.find("TOKEN"), Some(2));
        assert_eq!(l.find("TOKEN"), Some(3));
        assert_eq!(l.find("TOKEN"), Some(2));
        assert_eq!(l.find("absent"), None);
        assert_eq!(truncate("éé", 3), "é");
        assert_eq!(truncate("ab", 120), "ab");
    }
}

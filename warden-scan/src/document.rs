//! `Document`: one configuration file lowered into a single tree shape, whatever its format, so
//! that one walk (`fields`) reads JSON, JSONC, TOML, YAML and dotenv files alike. Only what
//! detection needs survives the lowering: keys in order, strings, arrays, and the line a string
//! starts on where the parser knows it. Numbers, booleans and nulls are kept only as `Other` (no
//! credential is a number).
//!
//! **Invariant**: a `FormatError` carries positions and fixed descriptions only. Parsers' own
//! messages can quote the input (a key, a value near the error), so they are never passed on.

mod env;
mod json;
mod lines;
mod toml;
mod yaml;

use std::path::Path;

use crate::client::is_env_file_name;

pub(crate) use lines::LineLocator;

/// Deepest nesting of arrays and objects accepted. Real MCP files nest five or six levels;
/// the bound keeps recursion over hostile input (`[[[[…`) off the end of the stack.
pub(crate) const MAX_DEPTH: usize = 128;

/// A file that does not parse. The message gives a position and never any of the file's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Not JSON (comments and trailing commas are allowed): what was expected, and where.
    #[error("not valid JSON: expected {expected} at line {line}, column {column}")]
    Json {
        /// What the parser expected at that point.
        expected: &'static str,
        /// 1-based line.
        line: u32,
        /// 1-based column, in bytes.
        column: u32,
    },
    /// Not TOML.
    #[error("not valid TOML at line {line}, column {column}")]
    Toml {
        /// 1-based line.
        line: u32,
        /// 1-based column, in bytes.
        column: u32,
    },
    /// Not YAML; the position is 0 where the parser did not give one.
    #[error("not valid YAML at line {line}, column {column}")]
    Yaml {
        /// 1-based line, or 0 when unknown.
        line: u32,
        /// 1-based column, or 0 when unknown.
        column: u32,
    },
    /// A text longer than `Limits::max_file_bytes` (`Scanner::scan_text`), or a YAML file whose
    /// aliases expand to more values or bytes than the scanner builds.
    #[error("too large: longer than the size limit, or expands to too many values")]
    TooLarge,
    /// Arrays and objects nested deeper than the scanner follows.
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// A file's format, chosen from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// JSON with comments and trailing commas (JSONC), as VS Code and Cursor write it.
    Json,
    Toml,
    Yaml,
    /// `KEY=VALUE` lines.
    Env,
}

impl Format {
    /// The format `path`'s name says, or `None` when it says nothing (then JSON is tried first).
    pub(crate) fn for_path(path: &Path) -> Option<Format> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
        match extension.as_str() {
            "json" | "jsonc" | "json5" => Some(Format::Json),
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            _ if is_env_file_name(name) => Some(Format::Env),
            _ => None,
        }
    }
}

/// A parsed file: usually one root; a YAML stream may hold several documents.
#[derive(Debug, Default)]
pub(crate) struct Document {
    pub(crate) roots: Vec<Node>,
}

/// A value and the line it starts on, where the parser knows it (TOML gives lines to strings
/// only: nothing reads a line of anything else).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) value: Value,
    pub(crate) line: Option<u32>,
}

/// The shapes detection looks at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    String(String),
    Array(Vec<Node>),
    /// Keys in the file's order.
    Object(Vec<(String, Node)>),
    /// A number, boolean, null or date.
    Other,
}

impl Node {
    pub(crate) fn new(value: Value, line: Option<u32>) -> Node {
        Node { value, line }
    }

    /// The string value under `key` of an object node.
    pub(crate) fn get_str(&self, key: &str) -> Option<&str> {
        match &self.value {
            Value::Object(entries) => entries.iter().find(|(k, _)| k == key).and_then(|(_, n)| match &n.value {
                Value::String(s) => Some(s.as_str()),
                _ => None,
            }),
            _ => None,
        }
    }
}

/// Parses `text` in `format`.
pub(crate) fn parse_as(format: Format, text: &str) -> Result<Document, FormatError> {
    match format {
        Format::Json => json::parse(text).map(|root| Document { roots: vec![root] }),
        Format::Toml => toml::parse(text).map(|root| Document { roots: vec![root] }),
        Format::Yaml => yaml::parse(text).map(|roots| Document { roots }),
        Format::Env => Ok(Document { roots: vec![env::parse(text)] }),
    }
}

/// Parses a file named `path`: in the format its name says; otherwise as JSON, then — when JSON
/// fails and every line looks like `KEY=VALUE` — as a dotenv file. Returns the format used.
pub(crate) fn parse(path: &Path, text: &str) -> Result<(Format, Document), FormatError> {
    if let Some(format) = Format::for_path(path) {
        return parse_as(format, text).map(|doc| (format, doc));
    }
    match json::parse(text) {
        Ok(root) => Ok((Format::Json, Document { roots: vec![root] })),
        Err(_) if env::looks_like_env(text) => Ok((Format::Env, Document { roots: vec![env::parse(text)] })),
        Err(e) => Err(e),
    }
}

/// 1-based line and column (in bytes) of byte `offset` in `text`: one pass, for one position (a
/// parse error's). Many positions in one text take `lines::Lines`, built once.
pub(crate) fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let offset = offset.min(text.len());
    let before = text.as_bytes().get(..offset).unwrap_or_default();
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = offset - before.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) + 1;
    (saturate(line), saturate(column))
}

/// A count as `u32`, pinned at `u32::MAX` (a file is at most `max_file_bytes`; this only guards
/// callers that raise that limit absurdly).
pub(crate) fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_name() {
        let f = |p: &str| Format::for_path(Path::new(p));
        assert_eq!(f("a/mcp.json"), Some(Format::Json));
        assert_eq!(f("a/settings.JSONC"), Some(Format::Json));
        assert_eq!(f("a/config.toml"), Some(Format::Toml));
        assert_eq!(f("a/config.yml"), Some(Format::Yaml));
        assert_eq!(f("a/.env"), Some(Format::Env));
        assert_eq!(f("a/.env.local"), Some(Format::Env));
        assert_eq!(f("a/prod.env"), Some(Format::Env));
        assert_eq!(f("a/config"), None);
    }

    #[test]
    fn unknown_names_try_json_then_env() {
        let (format, _) = parse(Path::new("x/config"), "{\"a\": 1}").unwrap();
        assert_eq!(format, Format::Json);
        let (format, doc) = parse(Path::new("x/config"), "# c\nA=1\nexport B=\"2\"\n").unwrap();
        assert_eq!(format, Format::Env);
        assert_eq!(doc.roots.len(), 1);
        assert!(matches!(parse(Path::new("x/config"), "hello there"), Err(FormatError::Json { .. })));
    }

    #[test]
    fn positions() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("ab\ncd", 99), (2, 3));
    }
}

//! What every resource kind's validation shares: the error naming the offending field, the
//! name rule, the nesting bound, and the admission rules that depend on who applies. A leaf:
//! `resource` and each kind's spec module build on it, it on nothing of theirs.

/// Longest resource name accepted (a DNS label's length, so names fit in hostnames and keys).
pub const MAX_NAME_LEN: usize = 63;

/// Rules that depend on who is applying, not on the document's shape.
#[derive(Clone, Copy, Debug, Default)]
pub struct Admission {
    /// Accept `http://` issuer and key URLs. For local testing only; the control plane sets it
    /// from an explicit flag.
    pub allow_http_issuers: bool,
}

impl Admission {
    /// What an agent uses for documents that came from its control plane: the control plane has
    /// already applied its admission rules, so only the shape is checked again.
    pub fn from_control_plane() -> Admission {
        Admission { allow_http_issuers: true }
    }
}

/// A document that was refused, with the path of the offending field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// The text is not YAML or JSON at all.
    #[error("document {index}: not valid YAML: {message}")]
    Syntax {
        /// 1-based position of the document in its file.
        index: usize,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A field is missing, unknown, or has a value that is not allowed.
    #[error("{path}: {message}")]
    Field {
        /// Dotted path of the field, e.g. `spec.keys.jwksUri`.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

impl DocumentError {
    /// An error about the field at `path`.
    pub fn field(path: impl Into<String>, message: impl std::fmt::Display) -> DocumentError {
        DocumentError::Field { path: path.into(), message: message.to_string() }
    }
}

/// Why a name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty or longer than [`MAX_NAME_LEN`].
    #[error("must be 1 to {MAX_NAME_LEN} characters")]
    Length,
    /// A character outside the allowed set, or a bad first or last one.
    #[error(
        "{0:?} is not a valid name: use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
    )]
    Characters(String),
}

/// Checks a name: 1 to 63 characters of lower-case letters, digits, `-` and `.`, starting and
/// ending with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(NameError::Length);
    }
    if !name.chars().all(ok_char) || !ends_ok(name.chars().next()) || !ends_ok(name.chars().last()) {
        return Err(NameError::Characters(name.to_string()));
    }
    Ok(())
}

/// How deeply arrays and objects nest in `value` (a scalar is 0), walked without recursion.
pub(crate) fn depth(value: &serde_json::Value) -> usize {
    let (mut deepest, mut stack) = (0, vec![(value, 0)]);
    while let Some((value, level)) = stack.pop() {
        let children: Vec<&serde_json::Value> = match value {
            serde_json::Value::Array(items) => items.iter().collect(),
            serde_json::Value::Object(members) => members.values().collect(),
            _ => continue,
        };
        deepest = deepest.max(level + 1);
        stack.extend(children.into_iter().map(|child| (child, level + 1)));
    }
    deepest
}

/// Each of `scopes` must be an RFC 6749 §3.3 scope token (`1*( %x21 / %x23-5B / %x5D-7E )`);
/// errors name `<path>[i]`.
pub(crate) fn validate_scopes(path: &str, scopes: &[String]) -> Result<(), DocumentError> {
    for (i, scope) in scopes.iter().enumerate() {
        if scope.is_empty()
            || !scope.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        {
            return Err(DocumentError::field(format!("{path}[{i}]"), format!("{scope:?} is not a scope token")));
        }
    }
    Ok(())
}

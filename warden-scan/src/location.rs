//! How `Finding::location` is written: keys joined with `.`, array indexes in brackets
//! (`mcpServers.x.args[3]`), keys that are not plain names quoted in brackets
//! (`projects["/home/u/app"].mcpServers`).
//!
//! Public because the form is a contract: reports, the control plane's records and anything that
//! computes where a credential should be found (a generated corpus's ground truth) render a path
//! the one way the scanner does.

/// One step of a path into a configuration document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment<'d> {
    /// A key of an object (a table in TOML, a mapping in YAML, a variable in an env file).
    Key(&'d str),
    /// An index of an array, from 0.
    Index(usize),
}

/// Renders a path as a finding's `location`: `mcpServers.github.env.GITHUB_TOKEN`,
/// `mcpServers.x.args[3]`, and keys other than plain names quoted in brackets
/// (`projects["/home/u/app"].mcpServers`).
pub fn render(path: &[Segment<'_>]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) if is_plain(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Key(key) => {
                out.push('[');
                out.push_str(&serde_json::Value::String((*key).to_string()).to_string());
                out.push(']');
            }
            Segment::Index(index) => {
                out.push('[');
                out.push_str(&index.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// A key written bare in a location.
fn is_plain(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering() {
        use Segment::*;
        assert_eq!(render(&[Key("a"), Index(2), Key("b-c_d")]), "a[2].b-c_d");
        assert_eq!(render(&[Key("a.b"), Key("x y"), Key("q\"")]), r#"["a.b"]["x y"]["q\""]"#);
        assert_eq!(render(&[Index(0), Key("k")]), "[0].k");
        assert_eq!(render(&[Key("")]), r#"[""]"#);
    }
}

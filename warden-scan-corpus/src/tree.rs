//! `Tree`: a configuration document as the corpus builds it, and its writers — JSON (optionally
//! with comments and trailing commas, as VS Code files have), block YAML, TOML in Codex's table
//! layout, and dotenv lines. Written by hand rather than through serde so the corpus controls
//! exactly the shapes real files have (comments, inline vs. separate tables, quoting styles).

use std::fmt::Write as _;

/// A document value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tree {
    Str(String),
    Num(i64),
    Bool(bool),
    Arr(Vec<Tree>),
    Obj(Vec<(String, Tree)>),
}

impl Tree {
    pub(crate) fn s(value: impl Into<String>) -> Tree {
        Tree::Str(value.into())
    }

    fn is_scalar(&self) -> bool {
        matches!(self, Tree::Str(_) | Tree::Num(_) | Tree::Bool(_))
    }
}

/// A JSON string literal (also a valid YAML double-quoted scalar and TOML basic string: JSON
/// escapes are a subset of both, and serde_json never writes `\/`).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn scalar(tree: &Tree) -> String {
    match tree {
        Tree::Str(s) => quoted(s),
        Tree::Num(n) => n.to_string(),
        Tree::Bool(b) => b.to_string(),
        Tree::Arr(_) | Tree::Obj(_) => String::new(),
    }
}

/// How JSON is written.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct JsonStyle {
    /// `//` and `/* */` comments here and there.
    pub(crate) comments: bool,
    /// A comma after the last member of objects and arrays.
    pub(crate) trailing_commas: bool,
}

pub(crate) fn json(tree: &Tree, style: JsonStyle) -> String {
    let mut out = String::new();
    if style.comments {
        out.push_str("// Written by the team's setup script; edit with care.\n");
    }
    json_value(tree, 0, style, &mut out);
    out.push('\n');
    out
}

fn json_value(tree: &Tree, indent: usize, style: JsonStyle, out: &mut String) {
    let pad = "  ".repeat(indent + 1);
    let close = "  ".repeat(indent);
    match tree {
        Tree::Arr(items) if items.is_empty() => out.push_str("[]"),
        Tree::Obj(entries) if entries.is_empty() => out.push_str("{}"),
        Tree::Arr(items) => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                out.push_str(&pad);
                json_value(item, indent + 1, style, out);
                if i + 1 < items.len() || style.trailing_commas {
                    out.push(',');
                }
                out.push('\n');
            }
            out.push_str(&close);
            out.push(']');
        }
        Tree::Obj(entries) => {
            out.push_str("{\n");
            for (i, (key, value)) in entries.iter().enumerate() {
                if style.comments && i == 0 && indent == 1 {
                    let _ = writeln!(out, "{pad}/* {} entries */", entries.len());
                }
                let _ = write!(out, "{pad}{}: ", quoted(key));
                json_value(value, indent + 1, style, out);
                if i + 1 < entries.len() || style.trailing_commas {
                    out.push(',');
                }
                if style.comments && !value.is_scalar() && indent == 0 {
                    out.push_str(" // section");
                }
                out.push('\n');
            }
            out.push_str(&close);
            out.push('}');
        }
        scalar_tree => out.push_str(&scalar(scalar_tree)),
    }
}

fn yaml_key(key: &str) -> String {
    let plain = !key.is_empty()
        && key.as_bytes()[0].is_ascii_alphabetic()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain { key.to_string() } else { quoted(key) }
}

/// Block-style YAML.
pub(crate) fn yaml(tree: &Tree) -> String {
    let mut out = String::from("# MCP configuration\n");
    match tree {
        Tree::Obj(entries) => yaml_entries(entries, 0, &mut out),
        other => yaml_item_list(std::slice::from_ref(other), 0, &mut out),
    }
    out
}

fn yaml_entries(entries: &[(String, Tree)], indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for (key, value) in entries {
        yaml_entry(&pad, key, value, indent, out);
    }
}

fn yaml_entry(prefix: &str, key: &str, value: &Tree, indent: usize, out: &mut String) {
    match value {
        Tree::Obj(entries) if !entries.is_empty() => {
            let _ = writeln!(out, "{prefix}{}:", yaml_key(key));
            yaml_entries(entries, indent + 2, out);
        }
        Tree::Arr(items) if !items.is_empty() => {
            let _ = writeln!(out, "{prefix}{}:", yaml_key(key));
            yaml_item_list(items, indent + 2, out);
        }
        Tree::Obj(_) => {
            let _ = writeln!(out, "{prefix}{}: {{}}", yaml_key(key));
        }
        Tree::Arr(_) => {
            let _ = writeln!(out, "{prefix}{}: []", yaml_key(key));
        }
        scalar_tree => {
            let _ = writeln!(out, "{prefix}{}: {}", yaml_key(key), scalar(scalar_tree));
        }
    }
}

fn yaml_item_list(items: &[Tree], indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for item in items {
        match item {
            Tree::Obj(entries) if !entries.is_empty() => {
                // The first key shares the dash's line; the rest align under it.
                let rest_pad = " ".repeat(indent + 2);
                for (i, (key, value)) in entries.iter().enumerate() {
                    let prefix = if i == 0 { format!("{pad}- ") } else { rest_pad.clone() };
                    yaml_entry(&prefix, key, value, indent + 2, out);
                }
            }
            Tree::Obj(_) => {
                let _ = writeln!(out, "{pad}- {{}}");
            }
            Tree::Arr(_) => {
                let _ = writeln!(out, "{pad}- []");
            }
            scalar_tree => {
                let _ = writeln!(out, "{pad}- {}", scalar(scalar_tree));
            }
        }
    }
}

fn toml_key(key: &str) -> String {
    let bare = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare { key.to_string() } else { quoted(key) }
}

fn toml_inline(tree: &Tree) -> String {
    match tree {
        Tree::Arr(items) => format!("[{}]", items.iter().map(toml_inline).collect::<Vec<_>>().join(", ")),
        Tree::Obj(entries) => format!(
            "{{ {} }}",
            entries.iter().map(|(k, v)| format!("{} = {}", toml_key(k), toml_inline(v))).collect::<Vec<_>>().join(", ")
        ),
        scalar_tree => scalar(scalar_tree),
    }
}

/// TOML: scalars and arrays as `key = value`; objects as `[table]` sections, except objects
/// named in `inline` (Codex users write `env = { … }` as often as `[mcp_servers.x.env]`).
pub(crate) fn toml(tree: &Tree, inline: &dyn Fn(&str) -> bool) -> String {
    let mut out = String::new();
    if let Tree::Obj(entries) = tree {
        toml_table(&mut Vec::new(), entries, inline, &mut out);
    }
    out
}

fn toml_table(path: &mut Vec<String>, entries: &[(String, Tree)], inline: &dyn Fn(&str) -> bool, out: &mut String) {
    let mut tables = Vec::new();
    for (key, value) in entries {
        match value {
            Tree::Obj(_) if !inline(key) => tables.push((key, value)),
            _ => {
                let _ = writeln!(out, "{} = {}", toml_key(key), toml_inline(value));
            }
        }
    }
    for (key, value) in tables {
        let Tree::Obj(children) = value else { continue };
        path.push(toml_key(key));
        // A table whose members are all tables needs no header of its own.
        if children.iter().any(|(k, v)| !matches!(v, Tree::Obj(_)) || inline(k)) || children.is_empty() {
            let _ = writeln!(out, "\n[{}]", path.join("."));
        }
        toml_table(path, children, inline, out);
        path.pop();
    }
}

/// Dotenv lines, `KEY=value` in the quoting a value needs (varied by `style`).
pub(crate) fn env(entries: &[(String, String)], style: usize) -> String {
    let mut out = String::from("# Local environment for MCP servers\n\n");
    for (i, (key, value)) in entries.iter().enumerate() {
        let export = if (i + style).is_multiple_of(4) { "export " } else { "" };
        let simple =
            !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:+=@%,~".contains(&b));
        if simple && !(i + style).is_multiple_of(3) {
            let _ = writeln!(out, "{export}{key}={value}");
        } else if !value.contains('\'') && !value.contains('\n') && (i + style).is_multiple_of(2) {
            let _ = writeln!(out, "{export}{key}='{value}'");
        } else {
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let _ = writeln!(out, "{export}{key}=\"{escaped}\"");
        }
        if i % 5 == 4 {
            out.push_str("\n# ---\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! The writers checked through the scanner's public API: a credential written into every
    //! kind of place (quoted keys, arrays, inline and separate tables), with quotes, backslashes
    //! and line breaks that each format must escape, is found where it was put and fingerprinted
    //! over exactly its text — so the writer wrote it, and the scanner read it back, unchanged.

    use std::collections::BTreeSet;
    use std::path::Path;

    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use warden_scan::{FingerprintKey, Kind, Limits, Scanner};

    use super::*;
    use crate::fakes;

    struct Secrets {
        token: String,
        url: String,
        password: String,
        pem: String,
    }

    fn secrets() -> Secrets {
        let mut rng = StdRng::seed_from_u64(11);
        let token = fakes::fake(Kind::GithubToken, &mut rng).value;
        // A password with a quote and a backslash, which every writer must escape.
        let password = "Zq8r\"T2\\vL9xW4".to_string();
        let url = format!("postgresql://app:{password}@db.internal:5432/app");
        let pem = fakes::pem(&mut rng, "OPENSSH PRIVATE KEY");
        Secrets { token, url, password, pem }
    }

    fn sample(s: &Secrets) -> Tree {
        Tree::Obj(vec![
            ("model".into(), Tree::s("o3")),
            (
                "mcp_servers".into(),
                Tree::Obj(vec![(
                    "git hub".into(),
                    Tree::Obj(vec![
                        ("command".into(), Tree::s("npx")),
                        ("args".into(), Tree::Arr(vec![Tree::s("-y"), Tree::s("a\"b\\c\nd"), Tree::s(&s.token)])),
                        (
                            "env".into(),
                            Tree::Obj(vec![
                                ("K-1".into(), Tree::s(&s.token)),
                                ("DB_URL".into(), Tree::s(&s.url)),
                                ("SSH_KEY".into(), Tree::s(&s.pem)),
                            ]),
                        ),
                        ("timeout".into(), Tree::Num(30)),
                        (
                            "list".into(),
                            Tree::Arr(vec![Tree::Obj(vec![("name".into(), Tree::s(&s.token))]), Tree::Bool(true)]),
                        ),
                        ("empty".into(), Tree::Obj(vec![])),
                    ]),
                )]),
            ),
        ])
    }

    fn key() -> FingerprintKey {
        FingerprintKey::new([9; 32])
    }

    /// (location, kind, fingerprint) of everything the scanner finds in `text`.
    fn found(name: &str, text: &str) -> BTreeSet<(String, Kind, String)> {
        let findings = Scanner::new(key(), Limits::default())
            .scan_text(Path::new(name), text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        findings.into_iter().map(|f| (f.location, f.kind, f.fingerprint)).collect()
    }

    fn expected(s: &Secrets, places: &[(&str, Kind)]) -> BTreeSet<(String, Kind, String)> {
        let pem_body: String = s.pem.lines().filter(|l| !l.starts_with("-----")).collect();
        places
            .iter()
            .map(|&(location, kind)| {
                let secret = match kind {
                    Kind::GithubToken => s.token.as_str(),
                    Kind::UrlCredentials => s.password.as_str(),
                    _ => pem_body.as_str(),
                };
                (location.to_string(), kind, key().fingerprint(secret.as_bytes()))
            })
            .collect()
    }

    #[test]
    fn every_writer_round_trips_through_the_scanner() {
        let s = secrets();
        let tree = sample(&s);
        let want = expected(
            &s,
            &[
                (r#"mcp_servers["git hub"].args[2]"#, Kind::GithubToken),
                (r#"mcp_servers["git hub"].env.K-1"#, Kind::GithubToken),
                (r#"mcp_servers["git hub"].env.DB_URL"#, Kind::UrlCredentials),
                (r#"mcp_servers["git hub"].env.SSH_KEY"#, Kind::PrivateKey),
                (r#"mcp_servers["git hub"].list[0].name"#, Kind::GithubToken),
            ],
        );
        assert_eq!(found("mcp.json", &json(&tree, JsonStyle::default())), want);
        assert_eq!(found("mcp.json", &json(&tree, JsonStyle { comments: true, trailing_commas: true })), want);
        assert_eq!(found("config.yaml", &yaml(&tree)), want);
        assert_eq!(found("config.toml", &toml(&tree, &|k| k == "env")), want);
        assert_eq!(found("config.toml", &toml(&tree, &|_| false)), want);
    }

    #[test]
    fn env_round_trips_through_the_scanner() {
        let s = secrets();
        let entries: Vec<(String, String)> = [
            ("A", "plain"),
            ("B", "has space"),
            ("TOKEN", s.token.as_str()),
            ("C", "multi\nline"),
            ("DB_URL", s.url.as_str()),
            ("D", "q\"uote"),
            ("SSH_KEY", s.pem.as_str()),
            ("E", "x'y"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let want = expected(
            &s,
            &[("TOKEN", Kind::GithubToken), ("DB_URL", Kind::UrlCredentials), ("SSH_KEY", Kind::PrivateKey)],
        );
        for style in 0..4 {
            assert_eq!(found(".env", &env(&entries, style)), want, "style {style}");
        }
    }
}

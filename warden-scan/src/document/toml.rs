//! TOML (Codex's `~/.codex/config.toml`), read through the `toml` crate's spanned parse tree
//! (`DeTable`): every value keeps its byte span, which gives its line without a search. The
//! parser's recursion limit (on unless the crate's `unbounded` feature is set) bounds nesting.

use ::toml::Spanned;
use ::toml::de::{DeTable, DeValue};

use super::{FormatError, MAX_DEPTH, Node, Value, line_column};

/// Parses one TOML document.
pub(super) fn parse(text: &str) -> Result<Node, FormatError> {
    let table = DeTable::parse(text).map_err(|e| {
        // Only the position: the crate's message can quote the offending line.
        let (line, column) = line_column(text, e.span().map_or(0, |s| s.start));
        FormatError::Toml { line, column }
    })?;
    let line = Some(line_column(text, table.span().start).0);
    Ok(Node::new(lower_table(text, table.get_ref(), 0)?, line))
}

fn lower_table(text: &str, table: &DeTable<'_>, depth: usize) -> Result<Value, FormatError> {
    let mut entries = Vec::with_capacity(table.len());
    for (key, value) in table.iter() {
        entries.push((key.get_ref().to_string(), lower(text, value, depth + 1)?));
    }
    // Spans give the file's order back (the tree itself sorts keys).
    entries.sort_by_key(|(_, node)| node.line);
    Ok(Value::Object(entries))
}

fn lower(text: &str, value: &Spanned<DeValue<'_>>, depth: usize) -> Result<Node, FormatError> {
    if depth >= MAX_DEPTH {
        return Err(FormatError::TooDeep);
    }
    let line = Some(line_column(text, value.span().start).0);
    let lowered = match value.get_ref() {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Array(items) => {
            Value::Array(items.iter().map(|item| lower(text, item, depth + 1)).collect::<Result<_, _>>()?)
        }
        DeValue::Table(table) => lower_table(text, table, depth)?,
        DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_) | DeValue::Datetime(_) => Value::Other,
    };
    Ok(Node::new(lowered, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_codex_shape_with_lines() {
        let text = "model = \"o3\"\n\n[mcp_servers.github]\ncommand = \"npx\"\nargs = [\"-y\", \"x\"]\nenv = { \"TOKEN\" = \"abc\" }\n\n[mcp_servers.db.env]\nPASS = \"p\"\n";
        let root = parse(text).unwrap();
        let Value::Object(top) = &root.value else { panic!("object") };
        assert_eq!(top[0].0, "model");
        let Value::Object(servers) = &top[1].1.value else { panic!("servers") };
        let names: Vec<_> = servers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["github", "db"]);
        let github = &servers[0].1;
        let Value::Object(fields) = &github.value else { panic!("github") };
        let env = &fields.iter().find(|(k, _)| k == "env").unwrap().1;
        assert_eq!(env.get_str("TOKEN"), Some("abc"));
        let Value::Object(env_entries) = &env.value else { panic!("env") };
        assert_eq!(env_entries[0].1.line, Some(6));
        let db = &servers[1].1;
        let Value::Object(db_fields) = &db.value else { panic!("db") };
        assert_eq!(db_fields[0].1.get_str("PASS"), Some("p"));
        let Value::Object(pass) = &db_fields[0].1.value else { panic!("pass") };
        assert_eq!(pass[0].1.line, Some(9));
    }

    #[test]
    fn errors_give_position_only() {
        let err = parse("a = 1\nb = ghp_SECRETVALUE\n").unwrap_err();
        assert!(matches!(err, FormatError::Toml { line: 2, .. }), "{err:?}");
        assert!(!err.to_string().contains("ghp_"));
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("a = {}1{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse(&deep).is_err());
    }
}

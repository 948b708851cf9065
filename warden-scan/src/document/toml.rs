//! TOML (Codex's `~/.codex/config.toml`), read through the `toml` crate's spanned parse tree
//! (`DeTable`): every value keeps its byte span, which gives its line without a search. The
//! parser's recursion limit (on unless the crate's `unbounded` feature is set) bounds nesting.
//!
//! Lines come from one table of line starts (`Lines`), and only strings get one: a 1 MiB line
//! of numbers costs one pass, where a scan from the file's start for every value cost O(n²).

use ::toml::Spanned;
use ::toml::de::{DeTable, DeValue};

use super::lines::Lines;
use super::{FormatError, MAX_DEPTH, Node, Value, line_column};

/// Parses one TOML document.
pub(super) fn parse(text: &str) -> Result<Node, FormatError> {
    let table = DeTable::parse(text).map_err(|e| {
        // Only the position: the crate's message can quote the offending line.
        let (line, column) = line_column(text, e.span().map_or(0, |s| s.start));
        FormatError::Toml { line, column }
    })?;
    let lines = Lines::new(text);
    let line = Some(lines.line(table.span().start));
    Ok(Node::new(lower_table(&lines, table.get_ref(), 0)?, line))
}

fn lower_table(lines: &Lines, table: &DeTable<'_>, depth: usize) -> Result<Value, FormatError> {
    let mut entries = Vec::with_capacity(table.len());
    for (key, value) in table.iter() {
        entries.push((value.span().start, key.get_ref().to_string(), lower(lines, value, depth + 1)?));
    }
    // Spans give the file's order back (the tree itself sorts keys).
    entries.sort_by_key(|(start, _, _)| *start);
    Ok(Value::Object(entries.into_iter().map(|(_, key, node)| (key, node)).collect()))
}

fn lower(lines: &Lines, value: &Spanned<DeValue<'_>>, depth: usize) -> Result<Node, FormatError> {
    if depth >= MAX_DEPTH {
        return Err(FormatError::TooDeep);
    }
    let node = match value.get_ref() {
        DeValue::String(s) => Node::new(Value::String(s.to_string()), Some(lines.line(value.span().start))),
        DeValue::Array(items) => Node::new(
            Value::Array(items.iter().map(|item| lower(lines, item, depth + 1)).collect::<Result<_, _>>()?),
            None,
        ),
        DeValue::Table(table) => Node::new(lower_table(lines, table, depth)?, None),
        DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_) | DeValue::Datetime(_) => {
            Node::new(Value::Other, None)
        }
    };
    Ok(node)
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
    fn keys_keep_file_order_within_a_line() {
        let root = parse("env = { \"Z\" = \"1\", \"A\" = \"2\" }\n").unwrap();
        let Value::Object(top) = &root.value else { panic!("object") };
        let Value::Object(env) = &top[0].1.value else { panic!("env") };
        let keys: Vec<_> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["Z", "A"]);
    }

    #[test]
    fn a_long_line_of_numbers_is_one_pass() {
        // 1 MiB on one line: a line search per value from the file's start was O(n²) here.
        let mut text = String::from("a = [");
        let mut n = 0u64;
        while text.len() < (1 << 20) - 32 {
            text.push_str(&n.to_string());
            text.push(',');
            n += 1;
        }
        text.push_str("\"last\"]\n");
        let root = parse(&text).unwrap();
        let Value::Object(top) = &root.value else { panic!("object") };
        let Value::Array(items) = &top[0].1.value else { panic!("array") };
        assert_eq!(items.len() as u64, n + 1);
        assert_eq!(items.last().map(|n| (&n.value, n.line)), Some((&Value::String("last".into()), Some(1))));
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("a = {}1{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse(&deep).is_err());
    }
}

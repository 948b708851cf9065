//! Dotenv files: `KEY=VALUE` lines as the common loaders (python-dotenv, dotenv for Node,
//! docker's `--env-file`) read them — `export ` prefixes, `#` comments, single quotes taken
//! literally, double quotes with `\n`-style escapes and spanning lines (how PEM keys are kept in
//! `.env`), inline ` #` comments after unquoted values. Lines that are none of these are skipped,
//! as the loaders skip them, so this parser never fails.

use super::{Node, Value, saturate};

/// Parses a dotenv file into one object: variable name → value, each with its line.
pub(super) fn parse(text: &str) -> Node {
    let mut entries = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let Some((key, rest)) = assignment(line) else { continue };
        let line_number = Some(saturate(index + 1));
        let value = if let Some(inner) = rest.strip_prefix('\'') {
            inner.split_once('\'').map_or(inner, |(value, _)| value).to_string()
        } else if let Some(inner) = rest.strip_prefix('"') {
            double_quoted(inner, &mut lines)
        } else {
            unquoted(rest)
        };
        entries.push((key.to_string(), Node::new(Value::String(value), line_number)));
    }
    Node::new(Value::Object(entries), Some(1))
}

/// Whether every meaningful line of `text` is an assignment (used to recognise a dotenv file
/// whose name does not say so).
pub(super) fn looks_like_env(text: &str) -> bool {
    let mut any = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if assignment(line).is_none() {
            return false;
        }
        any = true;
    }
    any
}

/// `KEY` and the text after `=` of an assignment line.
fn assignment(line: &str) -> Option<(&str, &str)> {
    let line = line.trim_start();
    if line.starts_with('#') {
        return None;
    }
    let line = line.strip_prefix("export ").map_or(line, str::trim_start);
    let (key, rest) = line.split_once('=')?;
    let key = key.trim_end();
    let mut chars = key.chars();
    let first = chars.next()?;
    let valid = (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    valid.then_some((key, rest.trim_start()))
}

/// An unquoted value: up to an inline ` #` comment, trimmed.
fn unquoted(rest: &str) -> String {
    let end = rest.find(" #").or_else(|| rest.find("\t#")).unwrap_or(rest.len());
    rest.get(..end).unwrap_or(rest).trim().to_string()
}

/// A double-quoted value after its opening quote, continuing over lines until the closing quote.
fn double_quoted<'a>(first: &'a str, lines: &mut impl Iterator<Item = (usize, &'a str)>) -> String {
    let mut out = String::new();
    let mut current = first;
    loop {
        let mut chars = current.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return out,
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => out.push('\\'),
                },
                c => out.push(c),
            }
        }
        match lines.next() {
            Some((_, next)) => {
                out.push('\n');
                current = next;
            }
            None => return out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String, Option<u32>)> {
        let Value::Object(entries) = parse(text).value else { panic!("object") };
        entries
            .into_iter()
            .map(|(k, n)| match n.value {
                Value::String(s) => (k, s, n.line),
                _ => panic!("string"),
            })
            .collect()
    }

    #[test]
    fn reads_the_usual_forms() {
        let text = "# comment\nA=1\nexport B = \"two words\"\nC='lit\\n' \nD=plain # note\n\nnot a line\nE=\"multi\nline\"\nF=\"esc\\\"q\\nx\"\n";
        let got = pairs(text);
        let want = [
            ("A", "1", 2),
            ("B", "two words", 3),
            ("C", "lit\\n", 4),
            ("D", "plain", 5),
            ("E", "multi\nline", 8),
            ("F", "esc\"q\nx", 10),
        ];
        assert_eq!(got.len(), want.len());
        for ((k, v, l), (wk, wv, wl)) in got.iter().zip(want) {
            assert_eq!((k.as_str(), v.as_str(), *l), (wk, wv, Some(wl)));
        }
    }

    #[test]
    fn recognises_env_text() {
        assert!(looks_like_env("A=1\n# x\nexport B=2\n"));
        assert!(!looks_like_env("A=1\nhello\n"));
        assert!(!looks_like_env("# only comments\n"));
        assert!(!looks_like_env("{\"a\": 1}"));
    }
}

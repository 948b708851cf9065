//! JSON with the two liberties VS Code, Cursor and Claude Code's own files take (JSONC): `//` and
//! `/* */` comments and trailing commas. Hand-written rather than a comment-stripping pass in
//! front of serde_json because it also gives what serde_json's tree does not: keys in file order
//! and the line every string starts on (for SARIF), and error messages that hold positions only.
//!
//! Lenient where leniency cannot hide a value: raw control characters inside strings and lone
//! surrogate escapes are accepted (as U+FFFD), a leading byte-order mark is skipped.

use super::{FormatError, MAX_DEPTH, Node, Value, line_column, saturate};

/// Parses one JSONC document.
pub(super) fn parse(text: &str) -> Result<Node, FormatError> {
    let mut parser = Parser { text, bytes: text.as_bytes(), pos: 0, line: 1 };
    if text.starts_with('\u{feff}') {
        parser.pos = '\u{feff}'.len_utf8();
    }
    parser.skip_trivia()?;
    let root = parser.value(0)?;
    parser.skip_trivia()?;
    if parser.pos < parser.bytes.len() {
        return Err(parser.error("end of input"));
    }
    Ok(root)
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// Line of `pos`, kept as the parser moves so a node's line costs nothing to know.
    line: usize,
}

impl Parser<'_> {
    fn error(&self, expected: &'static str) -> FormatError {
        let (line, column) = line_column(self.text, self.pos);
        FormatError::Json { expected, line, column }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Moves past one byte, counting lines.
    fn bump(&mut self) {
        if self.bytes.get(self.pos) == Some(&b'\n') {
            self.line += 1;
        }
        self.pos += 1;
    }

    /// Skips whitespace and comments.
    fn skip_trivia(&mut self) -> Result<(), FormatError> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r' | b'\n') => self.bump(),
                Some(b'/') if self.bytes.get(self.pos + 1) == Some(&b'/') => {
                    while self.peek().is_some_and(|b| b != b'\n') {
                        self.bump();
                    }
                }
                Some(b'/') if self.bytes.get(self.pos + 1) == Some(&b'*') => {
                    self.pos += 2;
                    loop {
                        match self.peek() {
                            None => return Err(self.error("end of comment")),
                            Some(b'*') if self.bytes.get(self.pos + 1) == Some(&b'/') => {
                                self.pos += 2;
                                break;
                            }
                            Some(_) => self.bump(),
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, FormatError> {
        if depth >= MAX_DEPTH {
            return Err(FormatError::TooDeep);
        }
        let line = Some(saturate(self.line));
        match self.peek() {
            Some(b'{') => self.object(depth).map(|v| Node::new(v, line)),
            Some(b'[') => self.array(depth).map(|v| Node::new(v, line)),
            Some(b'"') => self.string().map(|s| Node::new(Value::String(s), line)),
            Some(b't') => self.literal("true").map(|()| Node::new(Value::Other, line)),
            Some(b'f') => self.literal("false").map(|()| Node::new(Value::Other, line)),
            Some(b'n') => self.literal("null").map(|()| Node::new(Value::Other, line)),
            Some(b'-' | b'0'..=b'9') => {
                while self.peek().is_some_and(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')) {
                    self.pos += 1;
                }
                Ok(Node::new(Value::Other, line))
            }
            _ => Err(self.error("a value")),
        }
    }

    fn literal(&mut self, word: &'static str) -> Result<(), FormatError> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("a value"))
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, FormatError> {
        self.pos += 1; // '{'
        let mut entries = Vec::new();
        loop {
            self.skip_trivia()?;
            match self.peek() {
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(entries));
                }
                Some(b'"') => {}
                _ => return Err(self.error("a string key or '}'")),
            }
            let key = self.string()?;
            self.skip_trivia()?;
            if self.peek() != Some(b':') {
                return Err(self.error("':'"));
            }
            self.pos += 1;
            self.skip_trivia()?;
            let value = self.value(depth + 1)?;
            entries.push((key, value));
            self.skip_trivia()?;
            match self.peek() {
                // A trailing comma is accepted: the next turn sees '}'.
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err(self.error("',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, FormatError> {
        self.pos += 1; // '['
        let mut items = Vec::new();
        loop {
            self.skip_trivia()?;
            if self.peek() == Some(b']') {
                self.pos += 1;
                return Ok(Value::Array(items));
            }
            items.push(self.value(depth + 1)?);
            self.skip_trivia()?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {}
                _ => return Err(self.error("',' or ']'")),
            }
        }
    }

    /// A string starting at the current `"`, escapes decoded.
    fn string(&mut self) -> Result<String, FormatError> {
        self.pos += 1; // '"'
        let mut out = String::new();
        let mut run_start = self.pos;
        loop {
            match self.peek() {
                None => return Err(self.error("closing '\"'")),
                Some(b'"') => {
                    out.push_str(self.run(run_start)?);
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    out.push_str(self.run(run_start)?);
                    self.pos += 1;
                    self.escape(&mut out)?;
                    run_start = self.pos;
                }
                Some(_) => self.bump(),
            }
        }
    }

    /// The text from `start` to the current position: a run of a string between escapes. Both
    /// ends sit at ASCII bytes (a quote, a backslash, the end of an escape), so always character
    /// boundaries; `get` rather than a slice all the same, since a slice's panic would print the
    /// string, and strings here are secrets.
    fn run(&self, start: usize) -> Result<&str, FormatError> {
        self.text.get(start..self.pos).ok_or_else(|| self.error("a string"))
    }

    /// One escape after its backslash.
    fn escape(&mut self, out: &mut String) -> Result<(), FormatError> {
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                let high = self.hex4()?;
                let c = if (0xd800..0xdc00).contains(&high) && self.bytes[self.pos..].starts_with(b"\\u") {
                    let save = self.pos;
                    self.pos += 2;
                    let low = self.hex4()?;
                    if (0xdc00..0xe000).contains(&low) {
                        char::from_u32(0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00))
                    } else {
                        self.pos = save;
                        None
                    }
                } else {
                    char::from_u32(high)
                };
                out.push(c.unwrap_or(char::REPLACEMENT_CHARACTER));
                return Ok(());
            }
            _ => return Err(self.error("a valid escape")),
        };
        out.push(c);
        self.pos += 1;
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, FormatError> {
        let digits = self.bytes.get(self.pos..self.pos + 4).ok_or_else(|| self.error("four hex digits"))?;
        let mut n = 0u32;
        for &d in digits {
            let v = char::from(d).to_digit(16).ok_or_else(|| self.error("four hex digits"))?;
            n = n * 16 + v;
        }
        self.pos += 4;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(node: &Node, out: &mut Vec<(String, Option<u32>)>) {
        match &node.value {
            Value::String(s) => out.push((s.clone(), node.line)),
            Value::Array(items) => items.iter().for_each(|n| strings(n, out)),
            Value::Object(entries) => entries.iter().for_each(|(_, n)| strings(n, out)),
            Value::Other => {}
        }
    }

    #[test]
    fn agrees_with_serde_json_on_plain_json() {
        let text = r#"{"a": [1, -2.5e3, true, false, null, "x\"y\\z\/\u00e9\ud83d\ude00"], "b": {"c": "d"}, "": ""}"#;
        let ours = parse(text).unwrap();
        let theirs: serde_json::Value = serde_json::from_str(text).unwrap();
        let mut got = Vec::new();
        strings(&ours, &mut got);
        let got: Vec<_> = got.into_iter().map(|(s, _)| s).collect();
        assert_eq!(got, ["x\"y\\z/é😀", "d", ""]);
        assert_eq!(theirs["a"][5], "x\"y\\z/é😀");
    }

    #[test]
    fn accepts_comments_and_trailing_commas() {
        let text = "\u{feff}// top\n{\n  /* block\n */ \"servers\": {\n    \"a\": {\"args\": [\"x\", \"y\",],}, // end\n  },\n}\n";
        let root = parse(text).unwrap();
        let mut got = Vec::new();
        strings(&root, &mut got);
        assert_eq!(got, [("x".to_string(), Some(5)), ("y".to_string(), Some(5))]);
    }

    #[test]
    fn keys_keep_file_order_and_lines() {
        let root = parse("{\n\"z\": \"1\",\n\"a\": \"2\"\n}").unwrap();
        let Value::Object(entries) = root.value else { panic!("object") };
        assert_eq!(entries[0].0, "z");
        assert_eq!(entries[0].1.line, Some(2));
        assert_eq!(entries[1].0, "a");
        assert_eq!(entries[1].1.line, Some(3));
    }

    #[test]
    fn errors_give_position_not_content() {
        let err = parse("{\n  \"token\": ghp_SECRETVALUE\n}").unwrap_err();
        assert_eq!(err, FormatError::Json { expected: "a value", line: 2, column: 12 });
        assert!(!err.to_string().contains("ghp_"));
        for bad in ["", "{", "[1,", "{\"a\" 1}", "\"open", "/* open", "{\"a\":1} x", "\"\\q\"", "\"\\u12\"", "{1:2}"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "[".repeat(100_000);
        assert_eq!(parse(&deep), Err(FormatError::TooDeep));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert!(parse(&ok).is_ok());
    }
}

//! YAML (Continue's `config.yaml` and `.continue/mcpServers/*.yaml`), read with serde_norway
//! straight into `Node`s through a counting visitor rather than through `serde_norway::Value`.
//!
//! Why the visitor: YAML aliases let a 1 MiB file expand into billions of values (the "billion
//! laughs" pattern), or one long string into thousands of copies, and serde_norway's own
//! repetition limit bounds jumps, not expanded size. The visitor counts every value and every
//! string byte it builds and stops at `MAX_VALUES` / `MAX_BYTES`, so memory stays bounded by the
//! budget, not by what an attacker-written project file expands to.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

use super::{FormatError, MAX_DEPTH, Node, Value};

/// Values one YAML file may expand to. Real MCP files hold hundreds.
const MAX_VALUES: usize = 250_000;
/// String bytes (keys and values) one YAML file may expand to: 32 times the default 1 MiB file
/// limit, far above any real file, far below a memory problem.
const MAX_BYTES: usize = 32 << 20;

/// Parses every document of a YAML stream.
pub(super) fn parse(text: &str) -> Result<Vec<Node>, FormatError> {
    let budget = Budget {
        left: Cell::new(MAX_VALUES),
        bytes_left: Cell::new(MAX_BYTES),
        exceeded: Cell::new(false),
        too_deep: Cell::new(false),
    };
    let mut roots = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let root = NodeSeed { budget: &budget, depth: 0 }.deserialize(document).map_err(|e| {
            if budget.too_deep.get() {
                return FormatError::TooDeep;
            }
            if budget.exceeded.get() {
                return FormatError::TooLarge;
            }
            // Only the position: serde_norway's messages can quote keys and scalars.
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            FormatError::Yaml { line: super::saturate(line), column: super::saturate(column) }
        })?;
        roots.push(root);
    }
    Ok(roots)
}

struct Budget {
    left: Cell<usize>,
    bytes_left: Cell<usize>,
    exceeded: Cell<bool>,
    too_deep: Cell<bool>,
}

impl Budget {
    /// Takes `len` string bytes from the budget.
    fn take_bytes<E: de::Error>(&self, len: usize) -> Result<(), E> {
        match self.bytes_left.get().checked_sub(len) {
            Some(left) => {
                self.bytes_left.set(left);
                Ok(())
            }
            None => {
                self.exceeded.set(true);
                Err(E::custom("too many bytes"))
            }
        }
    }

    fn take<E: de::Error>(&self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.exceeded.set(true);
                Err(E::custom("too many values"))
            }
        }
    }
}

#[derive(Clone, Copy)]
struct NodeSeed<'b> {
    budget: &'b Budget,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = Node;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        self.budget.take()?;
        if self.depth >= MAX_DEPTH {
            self.budget.too_deep.set(true);
            return Err(de::Error::custom("too deep"));
        }
        deserializer.deserialize_any(self)
    }
}

impl NodeSeed<'_> {
    fn child(self) -> Self {
        NodeSeed { budget: self.budget, depth: self.depth + 1 }
    }
}

fn leaf(value: Value) -> Node {
    Node::new(value, None)
}

impl<'de> Visitor<'de> for NodeSeed<'_> {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(leaf(Value::Other))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(leaf(Value::Other))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(leaf(Value::Other))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(leaf(Value::Other))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(leaf(Value::Other))
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(leaf(Value::Other))
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        self.deserialize(d)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Node, E> {
        self.budget.take_bytes(s.len())?;
        Ok(leaf(Value::String(s.to_string())))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Node, E> {
        self.budget.take_bytes(s.len())?;
        Ok(leaf(Value::String(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.child())? {
            items.push(item);
        }
        Ok(leaf(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed { budget: self.budget })? {
            let value = map.next_value_seed(self.child())?;
            entries.push((key, value));
        }
        Ok(leaf(Value::Object(entries)))
    }

    /// A tagged value (`!secret abc`): the tag is dropped, the value kept.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Node, A::Error> {
        let (_tag, variant): (de::IgnoredAny, _) = data.variant()?;
        variant.newtype_variant_seed(self.child())
    }
}

/// A mapping key as text: scalars as written, anything else (a sequence or mapping used as a
/// key, which no MCP file does) as `?`.
struct KeySeed<'b> {
    budget: &'b Budget,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        self.budget.take()?;
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }
    fn visit_bool<E>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_unit<E>(self) -> Result<String, E> {
        Ok("null".to_string())
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
        self.budget.take_bytes(s.len())?;
        Ok(s.to_string())
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<String, E> {
        self.budget.take_bytes(s.len())?;
        Ok(s)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
        while seq.next_element_seed(KeySeed { budget: self.budget })?.is_some() {}
        Ok("?".to_string())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<String, A::Error> {
        while map.next_key_seed(KeySeed { budget: self.budget })?.is_some() {
            map.next_value_seed(KeySeed { budget: self.budget })?;
        }
        Ok("?".to_string())
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<String, A::Error> {
        let (_tag, variant): (de::IgnoredAny, _) = data.variant()?;
        variant.newtype_variant_seed(KeySeed { budget: self.budget })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_continue_shape_in_order() {
        let text = "name: x\nmcpServers:\n  - name: github\n    env:\n      Z: \"1\"\n      A: two\n    port: 3\n";
        let roots = parse(text).unwrap();
        assert_eq!(roots.len(), 1);
        let Value::Object(top) = &roots[0].value else { panic!("object") };
        assert_eq!(top[0].0, "name");
        let Value::Array(servers) = &top[1].1.value else { panic!("array") };
        assert_eq!(servers[0].get_str("name"), Some("github"));
        let Value::Object(server) = &servers[0].value else { panic!("object") };
        let Value::Object(env) = &server[1].1.value else { panic!("env") };
        assert_eq!(env[0], ("Z".to_string(), leaf(Value::String("1".into()))));
        assert_eq!(env[1].0, "A");
        assert_eq!(server[2].1.value, Value::Other);
    }

    #[test]
    fn several_documents_tags_and_odd_keys() {
        let roots = parse("a: !secret b\n1: c\n? [x]\n: d\n---\n- e\n").unwrap();
        assert_eq!(roots.len(), 2);
        assert_eq!(roots[0].get_str("a"), Some("b"));
        assert_eq!(roots[0].get_str("1"), Some("c"));
        assert_eq!(roots[0].get_str("?"), Some("d"));
    }

    #[test]
    fn errors_give_position_only() {
        let err = parse("a: b\n  c: ghp_SECRET: x\n").unwrap_err();
        assert!(matches!(err, FormatError::Yaml { line: 2, .. }), "{err:?}");
        assert!(!err.to_string().contains("ghp_"));
    }

    #[test]
    fn alias_bombs_stop_at_the_budget() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for name in 'b'..='j' {
            let refs = vec![format!("*{prev}"); 10].join(", ");
            text.push_str(&format!("{name}: &{name} [{refs}]\n"));
            prev = name;
        }
        // serde_norway's own repetition limit or the value budget: either way, an error.
        assert!(matches!(parse(&text), Err(FormatError::TooLarge | FormatError::Yaml { .. })));
        // Few jumps, each expanding a large anchor: only the budget catches this one.
        let wide = format!("a: &a [{}]\nb: [{}]\n", vec!["x"; 1000].join(", "), vec!["*a"; 500].join(", "));
        assert_eq!(parse(&wide).unwrap_err(), FormatError::TooLarge);
        // One long string, many references to it: only the byte budget catches this one.
        let long = format!("a: &a \"{}\"\nb: [{}]\n", "x".repeat(500_000), vec!["*a"; 100].join(", "));
        assert_eq!(parse(&long).unwrap_err(), FormatError::TooLarge);
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}x{}", "[".repeat(1000), "]".repeat(1000));
        assert!(matches!(parse(&deep), Err(FormatError::TooDeep | FormatError::Yaml { .. })));
    }
}

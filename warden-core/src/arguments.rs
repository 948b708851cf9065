//! A call's arguments as policy reads them (`params.arguments` of `tools/call` and
//! `prompts/get`): one tag per top-level name, its value as text — a string as the string it
//! holds, anything else as canonical JSON.
//!
//! Policy must read the value the MCP server will act on, whatever parser the server uses. So a
//! name given twice in any object, at any depth, is refused (parsers disagree on which one
//! counts), and what policy compares is canonical: objects' members sorted by name, strings
//! escaped the one way serde_json writes them, numbers by their value in Rust's shortest form (`1e3`,
//! `1000.0` and `1000` are all `1000`). Values are walked once, as a stream: no
//! `serde_json::Value` is built, so no key has a meaning of its own.

use std::borrow::Cow;
use std::fmt::Write;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Why a call's arguments are refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgumentsError {
    /// `params.arguments` is not a JSON object.
    #[error("must be an object")]
    NotAnObject,
    /// More top-level names than allowed.
    #[error("has {count} names; at most {max} are accepted")]
    TooMany {
        /// Names given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A name given twice in the same object.
    #[error("names an argument twice")]
    Repeated,
    /// A value inside an argument that is refused (a repeated member name, or not JSON).
    #[error("argument {name:?}: {why}")]
    Value {
        /// The argument.
        name: String,
        /// What is wrong with it.
        why: String,
    },
}

/// The tags policy reads for `arguments`, in the order given: (name, value as text). At most
/// `max` names.
pub fn tags(arguments: &RawValue, max: usize) -> Result<Vec<(String, String)>, ArgumentsError> {
    let Ok(Members(members)) = serde_json::from_str::<Members<'_>>(arguments.get()) else {
        return Err(ArgumentsError::NotAnObject);
    };
    if members.len() > max {
        return Err(ArgumentsError::TooMany { count: members.len(), max });
    }
    let mut names: Vec<&str> = members.iter().map(|(name, _)| name.as_ref()).collect();
    names.sort_unstable();
    if names.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(ArgumentsError::Repeated);
    }
    members
        .iter()
        .map(|(name, value)| {
            let refused = |why: String| ArgumentsError::Value { name: name.to_string(), why };
            let raw = value.get();
            let text = if raw.starts_with('"') {
                serde_json::from_str::<String>(raw).map_err(|e| refused(e.to_string()))?
            } else {
                let mut text = String::new();
                Canonical(&mut text)
                    .deserialize(&mut serde_json::Deserializer::from_str(raw))
                    .map_err(|e| refused(e.to_string()))?;
                text
            };
            Ok((name.to_string(), text))
        })
        .collect()
}

/// An object's members in the order given, repeats kept (a map would drop them silently).
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Object<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Object(std::marker::PhantomData))
    }
}

/// Writes the canonical JSON of the value it deserializes.
struct Canonical<'a>(&'a mut String);

impl<'de> DeserializeSeed<'de> for Canonical<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

fn quoted(text: &str, out: &mut String) {
    // Serializing a string cannot fail.
    out.push_str(&serde_json::to_string(text).unwrap_or_default());
}

impl<'de> Visitor<'de> for Canonical<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        let _ = write!(self.0, "{v}");
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        let _ = write!(self.0, "{v}");
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        // Rust writes the shortest text that reads back as `v`, without an exponent, and an
        // integral value without a fraction: the same number, however it was spelled, is the
        // same text (and the same as the integer it equals).
        let _ = write!(self.0, "{v}");
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        quoted(v, self.0);
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.push_str("null");
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.push('[');
        let mut first = true;
        loop {
            let before = self.0.len();
            if !first {
                self.0.push(',');
            }
            if seq.next_element_seed(Canonical(&mut *self.0))?.is_none() {
                self.0.truncate(before);
                break;
            }
            first = false;
        }
        self.0.push(']');
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut members: Vec<(String, String)> = Vec::new();
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            let mut value = String::new();
            map.next_value_seed(Canonical(&mut value))?;
            members.push((name.into_owned(), value));
        }
        members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if members.windows(2).any(|pair| pair[0].0 == pair[1].0) {
            return Err(serde::de::Error::custom("a member name repeats"));
        }
        self.0.push('{');
        for (i, (name, value)) in members.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            quoted(name, self.0);
            self.0.push(':');
            self.0.push_str(value);
        }
        self.0.push('}');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags_of(json: &str) -> Result<Vec<(String, String)>, ArgumentsError> {
        tags(&RawValue::from_string(json.to_string()).unwrap(), 8)
    }

    fn text(json: &str) -> String {
        tags_of(&format!(r#"{{"a":{json}}}"#)).unwrap().remove(0).1
    }

    #[test]
    fn strings_are_themselves_and_other_values_canonical_json() {
        assert_eq!(text(r#""/srv/\u0061 b""#), "/srv/a b");
        assert_eq!(text("true"), "true");
        assert_eq!(text("null"), "null");
        assert_eq!(text(r#" [ 1 , "x\u0021" , {"b":null} ] "#), r#"[1,"x!",{"b":null}]"#);
        assert_eq!(text("[]"), "[]");
        assert_eq!(text("{}"), "{}");
        assert_eq!(text("[[],[1],[[2,3]]]"), "[[],[1],[[2,3]]]");
        // One value, one text: spellings of a number, members in any order.
        for spelling in ["1000", "1e3", "1000.0", "1.000e+3", "10000e-1"] {
            assert_eq!(text(spelling), "1000", "{spelling}");
        }
        assert_eq!(text("-0.50"), "-0.5");
        // Found by the property tests (props::resource): without serde_json's correctly
        // rounded parsing, these spellings of one number read as two neighbouring `f64`s, so a
        // policy comparing the text could be passed by spelling the number otherwise.
        for spelling in ["2.157012179808385e288", "21570121798083850e272", "0.2157012179808385e289"] {
            assert_eq!(text(spelling), format!("{}", 2.157012179808385e288_f64), "{spelling}");
        }
        assert_eq!(text(r#"{"z":1,"a":{"y":2,"b":3}}"#), r#"{"a":{"b":3,"y":2},"z":1}"#);
        assert_eq!(
            tags_of(r#"{"b":"2","a":1}"#).unwrap(),
            [("b".to_string(), "2".to_string()), ("a".to_string(), "1".to_string())]
        );
    }

    #[test]
    fn what_two_parsers_could_read_differently_is_refused() {
        assert_eq!(tags_of(r#"{"a":1,"a":2}"#), Err(ArgumentsError::Repeated));
        assert_eq!(tags_of(r#"{"a":1,"\u0061":2}"#), Err(ArgumentsError::Repeated));
        for nested in [r#"{"a":{"b":1,"b":2}}"#, r#"{"a":[{"c":{"b":1,"\u0062":2}}]}"#] {
            let e = tags_of(nested).unwrap_err();
            assert!(matches!(&e, ArgumentsError::Value { name, why } if name == "a" && why.contains("repeats")), "{e}");
        }
        // serde_json gives this key a meaning when it builds a `Value`; here it is a name.
        let magic = r#"{"path":{"$serde_json::private::RawValue":"\"/srv/public/a\""}}"#;
        assert_eq!(tags_of(magic).unwrap()[0].1, r#"{"$serde_json::private::RawValue":"\"/srv/public/a\""}"#);
        assert_eq!(tags_of("[1]"), Err(ArgumentsError::NotAnObject));
        assert_eq!(tags_of(r#""x""#), Err(ArgumentsError::NotAnObject));
        let many: Vec<String> = (0..9).map(|i| format!(r#""n{i}":{i}"#)).collect();
        assert_eq!(tags_of(&format!("{{{}}}", many.join(","))), Err(ArgumentsError::TooMany { count: 9, max: 8 }));
    }
}

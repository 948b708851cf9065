//! Byte-level edits of valid input, as a mutation fuzzer makes them, and the case count of a
//! property: shared by the property tests of `proto` (agent messages) and `warden-core` (tokens,
//! JSON-RPC, resources), which drive their entry points with valid input edited this way.

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config as ProptestConfig;

/// Cases per property: `PROPTEST_CASES` when set (a longer run), otherwise `default`, sized so
/// the whole set stays well under a minute in a debug build (CI runs it on every change).
// The variable is proptest's own (it reads it too); a test knob, not configuration.
#[allow(clippy::disallowed_methods)]
pub fn cases(default: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default;
    }
    config
}

/// One byte-level edit.
#[derive(Clone, Debug)]
pub enum Edit {
    /// Flips one bit.
    Flip(Index, u8),
    /// Sets one byte.
    Set(Index, u8),
    /// Inserts bytes.
    Insert(Index, Vec<u8>),
    /// Removes up to this many bytes.
    Remove(Index, usize),
    /// Cuts the input short.
    Truncate(Index),
    /// Repeats up to this many bytes right after themselves.
    Duplicate(Index, usize),
}

/// One to four edits, inserting what `insert` makes (bytes that matter to the format being
/// edited, or random ones), removing up to `max_remove` and repeating up to `max_repeat` bytes.
pub fn edits(
    insert: impl Strategy<Value = Vec<u8>> + 'static,
    max_remove: usize,
    max_repeat: usize,
) -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Edit::Flip(at, bit)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
        (any::<Index>(), insert).prop_map(|(at, b)| Edit::Insert(at, b)),
        (any::<Index>(), 1..max_remove.max(2)).prop_map(|(at, n)| Edit::Remove(at, n)),
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), 1..max_repeat.max(2)).prop_map(|(at, n)| Edit::Duplicate(at, n)),
    ];
    prop::collection::vec(edit, 1..5)
}

/// `input` with `edits` applied in turn.
pub fn apply(input: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = input.to_vec();
    for edit in edits {
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
        match edit {
            Edit::Flip(i, bit) if !out.is_empty() => {
                let at = at(i, out.len());
                out[at] ^= 1 << bit;
            }
            Edit::Set(i, b) if !out.is_empty() => {
                let at = at(i, out.len());
                out[at] = *b;
            }
            Edit::Insert(i, bytes) => {
                let at = at(i, out.len() + 1);
                out.splice(at..at, bytes.iter().copied());
            }
            Edit::Remove(i, n) if !out.is_empty() => {
                let at = at(i, out.len());
                let end = (at + n).min(out.len());
                out.drain(at..end);
            }
            Edit::Truncate(i) => {
                let at = at(i, out.len() + 1);
                out.truncate(at);
            }
            Edit::Duplicate(i, n) if !out.is_empty() => {
                let at = at(i, out.len());
                let end = (at + n).min(out.len());
                let copy = out[at..end].to_vec();
                out.splice(end..end, copy);
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest! {
        #![proptest_config(cases(2048))]

        /// Each edit changes the length as it says, on any input, empty included.
        #[test]
        fn each_edit_changes_the_input_as_it_says(
            input in prop::collection::vec(any::<u8>(), 0..16),
            edit in edits(prop::collection::vec(any::<u8>(), 1..4), 8, 8).prop_map(|mut e| e.remove(0)),
        ) {
            let out = apply(&input, std::slice::from_ref(&edit));
            let len = input.len();
            match &edit {
                Edit::Flip(..) | Edit::Set(..) => prop_assert_eq!(out.len(), len),
                Edit::Insert(_, bytes) => prop_assert_eq!(out.len(), len + bytes.len()),
                Edit::Remove(_, n) => prop_assert!(out.len() <= len && len - out.len() <= *n),
                Edit::Truncate(_) => prop_assert!(out.len() <= len && input.starts_with(&out)),
                Edit::Duplicate(_, n) => prop_assert!(out.len() >= len && out.len() - len <= *n),
            }
            if let Edit::Flip(..) = edit && len > 0 {
                let differing = input.iter().zip(&out).filter(|(a, b)| a != b).count();
                prop_assert_eq!(differing, 1);
            }
        }
    }
}

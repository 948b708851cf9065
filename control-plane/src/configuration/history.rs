//! What one change did to one resource, from the audit trail: the document before and after
//! it, and their difference line by line. The console shows it as a page, `wardenctl history
//! --version` as text; both read it here.

use std::time::Duration;

use super::store::AuditEntry;

/// Audit entries read to find a resource's state before a change.
pub const CHANGE_READ: usize = 10_000;

/// How long one difference may take to work out (then it is coarser, never wrong).
const DIFF_TIMEOUT: Duration = Duration::from_millis(200);

/// Whether `entry` is a write of a resource's document: not a revocation's (many, and the entry
/// says all) nor a refresh of an issuer's fetched keys (the issuer's document unchanged).
pub fn writes_document(entry: &AuditEntry) -> bool {
    entry.kind != warden_core::Kind::Revocation.as_str() && entry.operation != "refresh-keys"
}

/// What a resource was, on one side of a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Side {
    /// It did not exist (before its creation, after its deletion).
    Absent,
    /// Its document, as YAML.
    Known(String),
    /// Not recorded: changed before documents were kept, or older than the entries read.
    Unknown,
}

impl Side {
    fn of(document: Option<&str>) -> Side {
        let yaml = document
            .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
            .and_then(|value| serde_norway::to_string(&value).ok());
        yaml.map_or(Side::Unknown, Side::Known)
    }
}

/// One change to one resource.
pub struct Change<'a> {
    /// Its audit entry.
    pub entry: &'a AuditEntry,
    /// The resource before it.
    pub before: Side,
    /// The resource after it.
    pub after: Side,
}

/// The change at `entries[at]` (oldest first), with the resource's state before it found in
/// the entries that precede it.
fn change_at(entries: &[AuditEntry], at: usize) -> Change<'_> {
    let this = &entries[at];
    let same = |e: &&AuditEntry| e.kind == this.kind && e.name == this.name && writes_document(e);
    let deleted = |e: &AuditEntry| e.operation == "delete";
    let after = if deleted(this) { Side::Absent } else { Side::of(this.document.as_deref()) };
    let before = match entries[..at].iter().rev().find(same) {
        Some(e) if deleted(e) => Side::Absent,
        Some(e) => Side::of(e.document.as_deref()),
        None if this.previous_resource_version == 0 && !deleted(this) => Side::Absent,
        None => Side::Unknown,
    };
    Change { entry: this, before, after }
}

/// The change to `kind/name` at `version` among `entries` (oldest first), if there is one.
pub fn change<'a>(entries: &'a [AuditEntry], version: u64, kind: &str, name: &str) -> Option<Change<'a>> {
    let at =
        entries.iter().position(|e| e.version == version && e.kind == kind && e.name == name && writes_document(e))?;
    Some(change_at(entries, at))
}

/// Every document written at `version` among `entries` (oldest first), in the order written.
pub fn changes_at(entries: &[AuditEntry], version: u64) -> Vec<Change<'_>> {
    (0..entries.len())
        .filter(|&at| entries[at].version == version && writes_document(&entries[at]))
        .map(|at| change_at(entries, at))
        .collect()
}

/// One line of a difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line {
    /// In both.
    Same,
    /// Only before.
    Removed,
    /// Only after.
    Added,
}

/// What a change's difference shows: a note when a side is not known, and the lines.
pub struct Difference {
    /// Why the lines are not a difference (a side was not recorded), if so.
    pub note: Option<&'static str>,
    /// The document line by line, without line ends.
    pub lines: Vec<(Line, String)>,
}

impl Change<'_> {
    /// The document before and after, line by line ([`difference`]).
    pub fn difference(&self) -> Difference {
        difference(&self.before, &self.after)
    }
}

/// The document `before` and `after` a change, line by line. Bounded in time (a long
/// document's difference is work): call it off an async runtime's workers.
pub fn difference(before: &Side, after: &Side) -> Difference {
    let every = |tag: Line, text: &str| text.lines().map(|l| (tag, l.to_string())).collect::<Vec<_>>();
    let (note, lines) = match (before, after) {
        (Side::Known(old), Side::Known(new)) if old == new => {
            (Some("No difference in the document."), every(Line::Same, new))
        }
        (Side::Known(old), Side::Known(new)) => {
            let lines = similar::TextDiff::configure()
                .timeout(DIFF_TIMEOUT)
                .diff_lines(old, new)
                .iter_all_changes()
                .map(|change| {
                    let tag = match change.tag() {
                        similar::ChangeTag::Delete => Line::Removed,
                        similar::ChangeTag::Insert => Line::Added,
                        similar::ChangeTag::Equal => Line::Same,
                    };
                    (tag, change.value().trim_end_matches('\n').to_string())
                })
                .collect();
            (None, lines)
        }
        (Side::Absent, Side::Known(new)) => (None, every(Line::Added, new)),
        (Side::Known(old), Side::Absent) => (None, every(Line::Removed, old)),
        (_, Side::Known(new)) => (
            Some(
                "The document before this change was not recorded (changed before documents were kept, or older \
                 than the newest 10,000 changes). After it:",
            ),
            every(Line::Same, new),
        ),
        _ => (Some("The document was not recorded for this change."), Vec::new()),
    };
    Difference { note, lines }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64, operation: &str, name: &str, previous: u64, document: Option<&str>) -> AuditEntry {
        AuditEntry {
            version,
            time_unix_ms: 0,
            actor: "uid:0".into(),
            operation: operation.into(),
            kind: "Policy".into(),
            name: name.into(),
            previous_resource_version: previous,
            document: document.map(str::to_string),
        }
    }

    #[test]
    fn a_change_is_read_against_the_resources_previous_document() {
        let entries = vec![
            entry(1, "apply", "a", 0, Some(r#"{"spec":{"cedar":"permit"}}"#)),
            entry(2, "apply", "b", 0, Some(r#"{"spec":{"x":1}}"#)),
            entry(3, "apply", "a", 1, Some(r#"{"spec":{"cedar":"forbid"}}"#)),
            entry(4, "delete", "a", 3, None),
            entry(5, "apply", "old", 2, Some(r#"{"spec":{}}"#)),
        ];
        let changed = change(&entries, 3, "Policy", "a").unwrap().difference();
        assert_eq!(changed.note, None);
        assert_eq!(
            changed.lines,
            [
                (Line::Same, "spec:".into()),
                (Line::Removed, "  cedar: permit".into()),
                (Line::Added, "  cedar: forbid".into())
            ]
        );
        // Created: all added; deleted: all removed.
        let created = change(&entries, 1, "Policy", "a").unwrap().difference();
        assert!(created.lines.iter().all(|(tag, _)| *tag == Line::Added));
        let deleted = change(&entries, 4, "Policy", "a").unwrap().difference();
        assert_eq!(deleted.lines, [(Line::Removed, "spec:".into()), (Line::Removed, "  cedar: forbid".into())]);
        // Changed before the entries read: said, not guessed.
        let older = change(&entries, 5, "Policy", "old").unwrap().difference();
        assert!(older.note.unwrap().contains("not recorded"));
        assert!(change(&entries, 3, "Policy", "b").is_none());
        // Every document of one version, in order.
        assert_eq!(changes_at(&entries, 2).iter().map(|c| c.entry.name.as_str()).collect::<Vec<_>>(), ["b"]);
    }
}

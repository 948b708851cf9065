//! Decision records without a `DecisionRecord` in between.
//!
//! The agent makes a record per request. Building a `DecisionRecord` would copy a dozen strings
//! only to encode them; [`DecisionRecordRef`] borrows them and writes the same bytes prost
//! would, which the agent queues and sends as they are (`DecisionBatch.records` are bytes on
//! purpose, see agent.proto). The control plane stores each record as received and reads what
//! it needs of it through a [`DecisionRecordView`], which accepts exactly what prost's decoding
//! accepts. Tests hold both against prost.

use prost::DecodeError;
use prost::bytes::BufMut;
use prost::encoding::{
    DecodeContext, WireType, decode_key, decode_varint, encode_key, encode_varint, encoded_len_varint, key_len,
    skip_field,
};

use crate::v1::Decision;

/// A `DecisionRecord` borrowing its strings from the request it is about.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecisionRecordRef<'a> {
    pub time_unix_nanos: i64,
    pub server: &'a str,
    pub method: &'a str,
    pub target_kind: &'a str,
    pub target: &'a str,
    pub subject: &'a str,
    pub issuer: &'a str,
    pub decision: Decision,
    pub reason: &'a str,
    pub policies: &'a [String],
    pub latency_micros: u64,
    pub trace_id: &'a str,
    pub jti_hash: &'a str,
    pub via: &'a str,
    pub token_lifetime_seconds: u64,
    pub actor: &'a str,
    pub binding: &'a str,
    /// How many refusals the record stands for (0: one).
    pub count: u64,
    pub source: &'a str,
    /// `shadow_allow` / `shadow_deny`, or empty.
    pub shadow: &'a str,
    pub shadow_policies: &'a [String],
    /// `would_allow` / `would_deny` in audit mode, or empty.
    pub audit: &'a str,
    /// The caller's digest (16 bytes), or empty.
    pub caller: &'a [u8],
    /// The caller's facts, an encoded `Caller`, when this record carries them.
    pub caller_facts: Option<&'a [u8]>,
    /// The call had arguments.
    pub arguments: bool,
    pub config_version: u64,
    pub policy_time_lag_seconds: u64,
}

/// Field numbers of `DecisionRecord`.
const RECORD_SEQUENCE: u32 = 1;

impl DecisionRecordRef<'_> {
    /// Appends the record's wire form to `out`, without `sequence`: that goes last (a decoder
    /// takes fields in any order), so a queue can number a record encoded before it took the
    /// queue's lock (see [`DecisionRecordRef::append_sequence`]).
    /// ([`DecisionRecordRef::encoded_len`] bytes: reserve them first.)
    pub fn encode_into(&self, out: &mut impl BufMut) {
        // Fields in number order, defaults left out, as prost writes them.
        varint(2, self.time_unix_nanos as u64, out);
        string(3, self.server, out);
        string(4, self.method, out);
        string(5, self.target_kind, out);
        string(6, self.target, out);
        string(7, self.subject, out);
        string(8, self.issuer, out);
        varint(9, self.decision as i32 as u64, out);
        string(10, self.reason, out);
        for policy in self.policies {
            encode_key(11, WireType::LengthDelimited, out);
            encode_varint(policy.len() as u64, out);
            out.put_slice(policy.as_bytes());
        }
        varint(12, self.latency_micros, out);
        string(13, self.trace_id, out);
        string(14, self.jti_hash, out);
        string(15, self.via, out);
        varint(16, self.token_lifetime_seconds, out);
        string(17, self.actor, out);
        string(18, self.binding, out);
        varint(19, self.count, out);
        string(20, self.source, out);
        string(21, self.shadow, out);
        for policy in self.shadow_policies {
            encode_key(22, WireType::LengthDelimited, out);
            encode_varint(policy.len() as u64, out);
            out.put_slice(policy.as_bytes());
        }
        string(23, self.audit, out);
        bytes(24, self.caller, out);
        if let Some(facts) = self.caller_facts {
            encode_key(25, WireType::LengthDelimited, out);
            encode_varint(facts.len() as u64, out);
            out.put_slice(facts);
        }
        varint(26, u64::from(self.arguments), out);
        varint(27, self.config_version, out);
        varint(28, self.policy_time_lag_seconds, out);
    }

    /// Bytes [`DecisionRecordRef::append_sequence`] writes at most (a key and a 10-byte varint).
    pub const MAX_SEQUENCE_LEN: usize = 11;

    /// Appends the `sequence` field to a record encoded by [`DecisionRecordRef::encode_into`].
    pub fn append_sequence(encoded: &mut impl BufMut, sequence: u64) {
        if sequence != 0 {
            varint(RECORD_SEQUENCE, sequence, encoded);
        }
    }

    /// The length of [`DecisionRecordRef::encode`]'s output, without the sequence.
    pub fn encoded_len(&self) -> usize {
        let varint_len = |tag: u32, v: u64| if v == 0 { 0 } else { key_len(tag) + encoded_len_varint(v) };
        let string_len = |tag: u32, s: &str| {
            if s.is_empty() { 0 } else { key_len(tag) + encoded_len_varint(s.len() as u64) + s.len() }
        };
        let strings = [
            (3, self.server),
            (4, self.method),
            (5, self.target_kind),
            (6, self.target),
            (7, self.subject),
            (8, self.issuer),
            (10, self.reason),
            (13, self.trace_id),
            (14, self.jti_hash),
            (15, self.via),
            (17, self.actor),
            (18, self.binding),
            (20, self.source),
            (21, self.shadow),
            (23, self.audit),
        ];
        varint_len(2, self.time_unix_nanos as u64)
            + strings.iter().map(|&(tag, s)| string_len(tag, s)).sum::<usize>()
            + varint_len(9, self.decision as i32 as u64)
            + self.policies.iter().map(|p| key_len(11) + encoded_len_varint(p.len() as u64) + p.len()).sum::<usize>()
            + self
                .shadow_policies
                .iter()
                .map(|p| key_len(22) + encoded_len_varint(p.len() as u64) + p.len())
                .sum::<usize>()
            + varint_len(12, self.latency_micros)
            + varint_len(16, self.token_lifetime_seconds)
            + varint_len(19, self.count)
            + if self.caller.is_empty() {
                0
            } else {
                key_len(24) + encoded_len_varint(self.caller.len() as u64) + self.caller.len()
            }
            + self.caller_facts.map_or(0, |f| key_len(25) + encoded_len_varint(f.len() as u64) + f.len())
            + varint_len(26, u64::from(self.arguments))
            + varint_len(27, self.config_version)
            + varint_len(28, self.policy_time_lag_seconds)
    }
}

/// What the control plane reads of a received record, its strings borrowed from the bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecisionRecordView<'a> {
    pub sequence: u64,
    pub server: &'a str,
    pub target: &'a str,
    pub issuer: &'a str,
    /// `Decision` as sent (an open enum: unknown values are kept).
    pub decision: i32,
    pub reason: &'a str,
    pub latency_micros: u64,
    pub token_lifetime_seconds: u64,
    /// How many refusals the record stands for (0: one; see [`DecisionRecordView::decisions`]).
    pub count: u64,
    /// Which front door, or `bridge` for a credential bridge's key.
    pub via: &'a str,
    /// In audit mode: `would_allow` or `would_deny`.
    pub audit: &'a str,
    /// The caller's digest, or empty.
    pub caller: &'a [u8],
    /// The caller's facts (an encoded `Caller` that decodes), when the record carries them.
    pub caller_facts: Option<&'a [u8]>,
}

impl<'a> DecisionRecordView<'a> {
    /// The decisions the record stands for: 1, or the count of an aggregated refusal.
    pub fn decisions(&self) -> u64 {
        self.count.max(1)
    }

    /// Reads an encoded `DecisionRecord`, failing exactly where `DecisionRecord::decode` would
    /// (key, wire type of a known field, varint, length, UTF-8 of every string field, unknown
    /// fields skipped as prost skips them), so what passes here decodes later.
    pub fn parse(mut bytes: &'a [u8]) -> Result<DecisionRecordView<'a>, RecordError> {
        let mut view = DecisionRecordView::default();
        while !bytes.is_empty() {
            let (tag, wire_type) = decode_key(&mut bytes)?;
            match tag {
                1 | 2 | 9 | 12 | 16 | 19 | 26..=28 => {
                    expect(wire_type, WireType::Varint)?;
                    let value = decode_varint(&mut bytes)?;
                    match tag {
                        1 => view.sequence = value,
                        9 => view.decision = value as i32,
                        12 => view.latency_micros = value,
                        16 => view.token_lifetime_seconds = value,
                        19 => view.count = value,
                        _ => {} // the time, arguments, version: not read here
                    }
                }
                3..=8 | 10 | 11 | 13..=15 | 17 | 18 | 20..=23 => {
                    expect(wire_type, WireType::LengthDelimited)?;
                    let len = decode_varint(&mut bytes)?;
                    let len = usize::try_from(len).ok().filter(|&l| l <= bytes.len());
                    let (value, rest) = bytes.split_at(len.ok_or(RecordError::Truncated { field: tag })?);
                    bytes = rest;
                    let value = std::str::from_utf8(value).map_err(|_| RecordError::NotUtf8 { field: tag })?;
                    match tag {
                        3 => view.server = value,
                        6 => view.target = value,
                        8 => view.issuer = value,
                        10 => view.reason = value,
                        15 => view.via = value,
                        23 => view.audit = value,
                        _ => {}
                    }
                }
                24 | 25 => {
                    expect(wire_type, WireType::LengthDelimited)?;
                    let len = decode_varint(&mut bytes)?;
                    let len = usize::try_from(len).ok().filter(|&l| l <= bytes.len());
                    let (value, rest) = bytes.split_at(len.ok_or(RecordError::Truncated { field: tag })?);
                    bytes = rest;
                    if tag == 24 {
                        view.caller = value;
                    } else {
                        // An embedded message: prost decodes it, so it must decode. (prost
                        // merges repeated occurrences; the last one read is kept here, which
                        // is what a writer that sends it once means.)
                        <crate::v1::Caller as prost::Message>::decode(value)?;
                        view.caller_facts = Some(value);
                    }
                }
                _ => skip_field(wire_type, tag, &mut bytes, DecodeContext::default())?,
            }
        }
        Ok(view)
    }
}

fn expect(actual: WireType, expected: WireType) -> Result<(), DecodeError> {
    prost::encoding::check_wire_type(expected, actual)
}

/// Why a received record does not decode.
#[derive(Debug)]
pub enum RecordError {
    /// A malformed key, varint or unknown field, or a field of the wrong wire type.
    Decode(DecodeError),
    /// A string field longer than what is left of the record.
    Truncated { field: u32 },
    /// A string field that is not UTF-8.
    NotUtf8 { field: u32 },
}

impl From<DecodeError> for RecordError {
    fn from(e: DecodeError) -> RecordError {
        RecordError::Decode(e)
    }
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Decode(e) => write!(f, "{e}"),
            RecordError::Truncated { field } => write!(f, "field {field} runs past the end of the record"),
            RecordError::NotUtf8 { field } => write!(f, "field {field} is not UTF-8"),
        }
    }
}

impl std::error::Error for RecordError {}

/// A record's id across the fleet, `agent/boot/sequence` (the run in 16 hex digits): what the
/// control plane de-duplicates by, and what every export of the record carries.
pub fn record_id(agent: &str, boot: u64, sequence: u64) -> String {
    format!("{agent}/{boot:016x}/{sequence}")
}

impl<'a> From<&'a crate::v1::DecisionRecord> for DecisionRecordRef<'a> {
    /// The record without its sequence, and without its caller facts (an embedded message,
    /// not borrowed bytes: a queue encodes them once per caller itself).
    fn from(r: &'a crate::v1::DecisionRecord) -> DecisionRecordRef<'a> {
        DecisionRecordRef {
            time_unix_nanos: r.time_unix_nanos,
            server: &r.server,
            method: &r.method,
            target_kind: &r.target_kind,
            target: &r.target,
            subject: &r.subject,
            issuer: &r.issuer,
            decision: r.decision(),
            reason: &r.reason,
            policies: &r.policies,
            latency_micros: r.latency_micros,
            trace_id: &r.trace_id,
            jti_hash: &r.jti_hash,
            via: &r.via,
            token_lifetime_seconds: r.token_lifetime_seconds,
            actor: &r.actor,
            binding: &r.binding,
            count: r.count,
            source: &r.source,
            shadow: &r.shadow,
            shadow_policies: &r.shadow_policies,
            audit: &r.audit,
            caller: &r.caller,
            caller_facts: None,
            arguments: r.arguments,
            config_version: r.config_version,
            policy_time_lag_seconds: r.policy_time_lag_seconds,
        }
    }
}

fn varint(tag: u32, value: u64, out: &mut impl BufMut) {
    if value != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(value, out);
    }
}

fn bytes(tag: u32, value: &[u8], out: &mut impl BufMut) {
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(value.len() as u64, out);
        out.put_slice(value);
    }
}

fn string(tag: u32, value: &str, out: &mut impl BufMut) {
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(value.len() as u64, out);
        out.put_slice(value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::DecisionRecord;
    use prost::Message;

    /// Every field set (no `..Default::default()`: a field added to the proto fails to compile
    /// here until the encoder writes it too).
    fn full_record(sequence: u64, subject: &str) -> DecisionRecord {
        DecisionRecord {
            sequence,
            time_unix_nanos: 1_764_000_000_123_456_789,
            server: "github".into(),
            method: "tools/call".into(),
            target_kind: "tool".into(),
            target: "search_issues".into(),
            subject: subject.into(),
            issuer: "corp-idp".into(),
            decision: Decision::Deny as i32,
            reason: "policy_denied".into(),
            policies: vec!["readers.0".into(), "x".repeat(200)],
            latency_micros: 41,
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            jti_hash: "00f067aa0ba902b700f067aa0ba902b7".into(),
            via: "gateway".into(),
            token_lifetime_seconds: 300,
            actor: "corp-idp/agent-7".into(),
            binding: "dpop".into(),
            count: 17,
            source: "192.0.2.7".into(),
            shadow: "shadow_allow".into(),
            shadow_policies: vec!["next.0".into()],
            audit: "would_deny".into(),
            caller: vec![7; 16],
            caller_facts: Some(crate::v1::Caller {
                issuer: "corp-idp".into(),
                subject: subject.into(),
                scopes: vec!["repo:read".into()],
                tenant: Some(String::new()),
                has_groups: true,
                ..Default::default()
            }),
            arguments: true,
            config_version: 41,
            policy_time_lag_seconds: 2,
        }
    }

    /// The bytes of the last `caller_facts` field of an encoded record (what the view keeps),
    /// found by prost's own field walk.
    fn view_facts(mut bytes: &[u8]) -> Option<&[u8]> {
        let mut last = None;
        while !bytes.is_empty() {
            let (tag, wire_type) = decode_key(&mut bytes).ok()?;
            if tag == 25 && wire_type == WireType::LengthDelimited {
                let len = decode_varint(&mut bytes).ok()? as usize;
                last = Some(&bytes[..len]);
                bytes = &bytes[len..];
            } else {
                skip_field(wire_type, tag, &mut bytes, DecodeContext::default()).ok()?;
            }
        }
        last
    }

    /// Held against prost on generated input (`crate::props`): the seeds above edited byte by
    /// byte, any record prost encodes (with a newer agent's unknown fields, edited or not),
    /// field soup and any bytes. 20,000 cases unless `PROPTEST_CASES` says otherwise.
    #[test]
    fn a_record_view_accepts_exactly_what_prost_decodes_and_reads_the_same() {
        use crate::props::{Wire, apply, cases, edits, received_record};
        use proptest::prelude::*;
        use proptest::test_runner::TestRunner;
        use std::cell::Cell;

        let mut unknown = full_record(7, "workload-1").encode_to_vec();
        // Unknown fields of every wire type, as a newer agent might send.
        unknown
            .extend_from_slice(&[0xf8, 0x01, 0x05, 0x81, 0x02, 1, 2, 3, 4, 5, 6, 7, 8, 0x8a, 0x02, 0x02, 0x68, 0x69]);
        unknown.extend_from_slice(&[0x95, 0x02, 1, 2, 3, 4, 0x9b, 0x02, 0x08, 0x01, 0x9c, 0x02]);
        let seeds = vec![
            full_record(7, "workload-1").encode_to_vec(),
            full_record(u64::MAX, &"é".repeat(40)).encode_to_vec(),
            DecisionRecord::default().encode_to_vec(),
            unknown,
        ];
        for seed in &seeds {
            assert!(DecisionRecordView::parse(seed).is_ok() && DecisionRecord::decode(seed.as_slice()).is_ok());
        }
        let input = prop_oneof![
            3 => (prop::sample::select(seeds), edits()).prop_map(|(seed, e)| apply(&seed, &e)),
            4 => received_record(),
        ]
        .prop_map(Wire);
        let config = ProptestConfig { source_file: Some(file!()), ..cases(20_000) };
        let (accepted, refused) = (Cell::new(0u32), Cell::new(0u32));
        let mut runner = TestRunner::new(config.clone());
        let result = runner.run(&input, |Wire(input)| {
            let decoded = DecisionRecord::decode(input.as_slice());
            let view = DecisionRecordView::parse(&input);
            match (&decoded, &view) {
                (Ok(d), Ok(v)) => {
                    accepted.set(accepted.get() + 1);
                    let expected = DecisionRecordView {
                        sequence: d.sequence,
                        server: &d.server,
                        target: &d.target,
                        issuer: &d.issuer,
                        decision: d.decision,
                        reason: &d.reason,
                        latency_micros: d.latency_micros,
                        token_lifetime_seconds: d.token_lifetime_seconds,
                        count: d.count,
                        via: &d.via,
                        audit: &d.audit,
                        caller: &d.caller,
                        caller_facts: view_facts(&input),
                    };
                    prop_assert_eq!(*v, expected);
                }
                (Err(_), Err(_)) => refused.set(refused.get() + 1),
                _ => prop_assert!(false, "prost {decoded:?}, view {view:?}"),
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        // The generators reach both sides (checked when there are enough cases to tell).
        let (accepted, refused) = (accepted.get(), refused.get());
        if config.cases >= 1_000 {
            assert!(
                accepted * 10 > config.cases && refused * 10 > config.cases,
                "both sides exercised: {accepted} accepted, {refused} refused"
            );
        }
    }

    /// The record without its sequence, its caller facts encoded into `facts`.
    fn borrowed<'a>(r: &'a DecisionRecord, facts: &'a mut Vec<u8>) -> DecisionRecordRef<'a> {
        if let Some(f) = &r.caller_facts {
            *facts = f.encode_to_vec();
        }
        DecisionRecordRef { caller_facts: r.caller_facts.as_ref().map(|_| facts.as_slice()), ..r.into() }
    }

    #[test]
    fn a_record_encoded_from_borrowed_fields_is_what_prost_encodes() {
        let negative_time = DecisionRecord { time_unix_nanos: -5, ..full_record(0, "a") };
        let records =
            [full_record(0, "workload-1"), full_record(0, &"é".repeat(100)), DecisionRecord::default(), negative_time];
        for record in &records {
            let mut facts = Vec::new();
            let borrowed = borrowed(record, &mut facts);
            let mut encoded = b"before".to_vec();
            borrowed.encode_into(&mut encoded);
            let encoded = encoded.split_off(6);
            assert_eq!(encoded, record.encode_to_vec());
            assert_eq!(borrowed.encoded_len(), encoded.len());
            for sequence in [1, 300, u64::MAX] {
                let mut numbered = encoded.clone();
                DecisionRecordRef::append_sequence(&mut numbered, sequence);
                let decoded = DecisionRecord::decode(numbered.as_slice()).unwrap();
                assert_eq!(decoded, DecisionRecord { sequence, ..record.clone() });
            }
        }
    }
}

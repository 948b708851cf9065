//! Property tests over what an agent (or anything holding an agent's certificate) sends the
//! control plane: `AgentMessage`s on the stream, `JoinRequest` and `RenewRequest`, and the
//! decision records inside batches, as arbitrary bytes, as field soup (any tag, any wire type,
//! lengths that lie), and as valid messages edited byte by byte. The generators are shared with
//! `decision_record`'s test of the record view against prost.

use proptest::prelude::*;
use prost::Message;
use prost::bytes::Bytes;

use crate::decision_record::DecisionRecordView;
use crate::v1::{
    Ack, AgentMessage, DecisionBatch, DecisionRecord, Heartbeat, Hello, JoinRequest, KeyRefreshRequest, Nack,
    RenewRequest, TaskEnded, agent_message,
};

pub(crate) use warden_mutations::{apply, cases};

/// Bytes, shown in hex when a case fails.
#[derive(Clone)]
pub(crate) struct Wire(pub Vec<u8>);

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x?}", self.0)
    }
}

/// One to four edits; inserted bytes are random or ones that matter to the protobuf wire
/// format (continuation bits, group markers, a 10-byte varint, a huge length).
pub(crate) fn edits() -> impl Strategy<Value = Vec<warden_mutations::Edit>> {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 1..4),
        prop::sample::select(vec![
            vec![0x80],
            vec![0xff],
            vec![0x00],
            vec![0x0b],
            vec![0x0c],
            vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
            vec![0x1a, 0xff, 0xff, 0xff, 0xff, 0x0f],
            vec![0xc0, 0x80],
            vec![0xed, 0xa0, 0x80],
        ]),
    ];
    warden_mutations::edits(bytes, 8, 32)
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// What follows a key of one wire type: well formed, or lying about its length.
fn payload(wire_type: u8) -> BoxedStrategy<Vec<u8>> {
    match wire_type {
        0 => prop_oneof![
            any::<u64>().prop_map(|v| {
                let mut out = Vec::new();
                varint(v, &mut out);
                out
            }),
            Just(vec![0x80; 11]),
        ]
        .boxed(),
        1 => prop::collection::vec(any::<u8>(), 8).boxed(),
        2 => (
            prop_oneof![
                any::<String>().prop_map(String::into_bytes),
                prop::collection::vec(any::<u8>(), 0..40),
                Just(vec![0xed, 0xa0, 0x80]),
            ],
            -3i64..3,
        )
            .prop_map(|(bytes, lie)| {
                let mut out = Vec::new();
                let len = if lie == 0 { bytes.len() as u64 } else { (bytes.len() as i64 + lie).max(0) as u64 };
                varint(len, &mut out);
                out.extend(bytes);
                out
            })
            .boxed(),
        5 => prop::collection::vec(any::<u8>(), 4).boxed(),
        // Groups (3, 4) carry nothing of their own; 6 and 7 are no wire type.
        _ => Just(Vec::new()).boxed(),
    }
}

/// Fields of any tag (mostly `low..=high`) and any wire type, one after another.
pub(crate) fn field_soup(low: u32, high: u32) -> impl Strategy<Value = Vec<u8>> {
    let tag = prop_oneof![4 => low..=high, 1 => Just(0u32), 1 => any::<u32>()];
    let field = (tag, 0..8u8).prop_flat_map(|(tag, wire_type)| (Just(tag), Just(wire_type), payload(wire_type)));
    prop::collection::vec(field, 0..12).prop_map(|fields| {
        let mut out = Vec::new();
        for (tag, wire_type, payload) in fields {
            varint((u64::from(tag) << 3) | u64::from(wire_type), &mut out);
            out.extend(payload);
        }
        out
    })
}

/// Strings as an agent may send them: any Unicode, now and then long.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![20 => any::<String>(), 1 => (".{1,4}", 100..5_000usize).prop_map(|(s, n)| s.repeat(n))]
}

/// Any `DecisionRecord`, every field of any value.
pub(crate) fn record() -> impl Strategy<Value = DecisionRecord> {
    let numbers = (any::<u64>(), any::<i64>(), any::<i32>(), any::<u64>(), any::<u64>(), any::<u64>());
    let strings = prop::collection::vec(text(), 15);
    let lists = (prop::collection::vec(text(), 0..4), prop::collection::vec(text(), 0..3));
    let caller = (
        prop::collection::vec(any::<u8>(), 0..20),
        prop::option::of((
            text(),
            text(),
            prop::collection::vec(text(), 0..3),
            prop::option::of(text()),
            any::<bool>(),
        )),
        any::<bool>(),
        (any::<u64>(), any::<u64>()),
    )
        .prop_map(|(digest, facts, arguments, (version, lag))| {
            let facts = facts.map(|(issuer, subject, scopes, tenant, task)| crate::v1::Caller {
                issuer,
                subject,
                granted_tools: if task { scopes.clone() } else { Vec::new() },
                scopes,
                tenant,
                task,
                ..Default::default()
            });
            (digest, facts, arguments, version, lag)
        });
    (numbers, strings, lists, caller).prop_map(
        |(
            (sequence, time_unix_nanos, decision, latency_micros, token_lifetime_seconds, count),
            s,
            lists,
            (caller, caller_facts, arguments, config_version, policy_time_lag_seconds),
        )| {
            let (policies, shadow_policies) = lists;
            let [
                server,
                method,
                target_kind,
                target,
                subject,
                issuer,
                reason,
                trace_id,
                jti_hash,
                via,
                actor,
                binding,
                source,
                shadow,
                audit,
            ] = <[String; 15]>::try_from(s).expect("fifteen strings");
            DecisionRecord {
                sequence,
                time_unix_nanos,
                server,
                method,
                target_kind,
                target,
                subject,
                issuer,
                decision,
                reason,
                policies,
                latency_micros,
                trace_id,
                jti_hash,
                via,
                token_lifetime_seconds,
                actor,
                binding,
                count,
                source,
                shadow,
                shadow_policies,
                audit,
                caller,
                caller_facts,
                arguments,
                config_version,
                policy_time_lag_seconds,
            }
        },
    )
}

/// A record as the control plane may receive it: prost's encoding of any record (with unknown
/// fields after it, as a newer agent's), edited or not, field soup, or any bytes.
pub(crate) fn received_record() -> impl Strategy<Value = Vec<u8>> {
    let encoded = (record(), field_soup(29, 40), any::<bool>())
        .prop_map(|(r, unknown, extend)| {
            let mut out = r.encode_to_vec();
            if extend {
                out.extend(unknown);
            }
            out
        })
        .boxed();
    prop_oneof![
        2 => encoded.clone(),
        3 => (encoded, edits()).prop_map(|(r, e)| apply(&r, &e)),
        2 => field_soup(1, 20),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

fn agent_message() -> impl Strategy<Value = AgentMessage> {
    use agent_message::Message as M;
    let hello = (text(), text(), prop::collection::hash_map(text(), text(), 0..4), text(), any::<u64>()).prop_map(
        |(agent_id, agent_version, labels, applied_store_id, applied_version)| {
            M::Hello(Hello { agent_id, agent_version, labels, applied_store_id, applied_version })
        },
    );
    let batch = (any::<u64>(), prop::collection::vec(received_record(), 0..8), any::<u64>()).prop_map(
        |(boot, records, dropped)| {
            M::Decisions(DecisionBatch { boot, records: records.into_iter().map(Bytes::from).collect(), dropped })
        },
    );
    let message = prop_oneof![
        hello,
        any::<u64>().prop_map(|version| M::Ack(Ack { version })),
        (any::<u64>(), text()).prop_map(|(version, error)| M::Nack(Nack { version, error })),
        any::<u64>().prop_map(|applied_version| M::Heartbeat(Heartbeat { applied_version })),
        (text(), text()).prop_map(|(issuer, kid)| M::KeyRefresh(KeyRefreshRequest { issuer, kid })),
        batch,
        (text(), text(), any::<i64>()).prop_map(|(issuer, jti, expires_unix)| M::TaskEnded(TaskEnded {
            issuer,
            jti,
            expires_unix
        })),
    ];
    prop::option::weighted(0.95, message).prop_map(|message| AgentMessage { message })
}

/// What the control plane does with a batch's records: each is read by the view, which must
/// agree with prost's decoding.
fn check_records(batch: &DecisionBatch) -> Result<(), TestCaseError> {
    for record in &batch.records {
        let view = DecisionRecordView::parse(record);
        let decoded = DecisionRecord::decode(record.clone());
        prop_assert_eq!(view.is_ok(), decoded.is_ok(), "view {:?}, prost {:?}", view, decoded);
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(2048))]

    /// Every message an agent can send reads back as itself.
    #[test]
    fn an_agent_message_decodes_as_what_was_encoded(message in agent_message()) {
        prop_assert_eq!(AgentMessage::decode(message.encode_to_vec().as_slice()), Ok(message));
    }

    /// Anything on the stream or in a join or renewal: decoded or refused without a panic;
    /// what decodes encodes to bytes that decode the same; each record of a batch is read by
    /// the view exactly when prost reads it.
    #[test]
    fn whatever_an_agent_sends_decodes_or_is_refused(
        wire in prop_oneof![
            1 => prop::collection::vec(any::<u8>(), 0..512),
            2 => field_soup(1, 8),
            3 => (agent_message(), edits()).prop_map(|(m, e)| apply(&m.encode_to_vec(), &e)),
            2 => agent_message().prop_map(|m| m.encode_to_vec()),
        ].prop_map(Wire)
    ) {
        let bytes = Bytes::from(wire.0);
        if let Ok(message) = AgentMessage::decode(bytes.clone()) {
            let again = AgentMessage::decode(message.encode_to_vec().as_slice());
            prop_assert_eq!(again.as_ref(), Ok(&message));
            if let Some(agent_message::Message::Decisions(batch)) = &message.message {
                check_records(batch)?;
            }
        }
        if let Ok(join) = JoinRequest::decode(bytes.clone()) {
            prop_assert_eq!(JoinRequest::decode(join.encode_to_vec().as_slice()), Ok(join));
        }
        if let Ok(renew) = RenewRequest::decode(bytes) {
            prop_assert_eq!(RenewRequest::decode(renew.encode_to_vec().as_slice()), Ok(renew));
        }
    }
}

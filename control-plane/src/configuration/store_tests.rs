use super::*;
use warden_core::{Admission, Kind};

fn issuer(name: &str, url: &str) -> Document {
    let value = serde_json::json!({
        "apiVersion": "warden.dev/v1", "kind": "TrustedIssuer", "metadata": {"name": name},
        "spec": {"issuer": url, "keys": {"jwksUri": format!("{url}/jwks")}, "allowedAlgorithms": ["ES256"]}
    });
    Document::from_json(value, &Admission::default()).unwrap()
}

fn agent(id: &str) -> AgentRecord {
    AgentRecord {
        id: id.into(),
        labels: BTreeMap::new(),
        joined_unix: 1,
        certificate_not_after_unix: 2,
        certificates: Vec::new(),
        attested: None,
    }
}

fn attested(id: &str, rule: &str, issued_at: i64, serial: &str) -> AgentRecord {
    let mut record = agent(id);
    record.attested = Some(Attested { rule: rule.into(), issued_at });
    record.issued(serial.into(), 100, 0);
    record
}

#[tokio::test]
async fn writes_survive_reopening_and_versions_only_move_forward() {
    let dir = tempfile::tempdir().unwrap();
    let a = issuer("a", "https://a.example.com");
    let key = a.key();
    let json = a.to_canonical_json();
    let store_id = {
        let store = Store::open(dir.path()).unwrap();
        let loaded = store.load().await.unwrap();
        assert_eq!(loaded.version, 0);
        assert_eq!(
            store.commit(0, vec![Change::Put { key: key.clone(), json: json.clone() }], vec![]).await.unwrap(),
            1
        );
        // A write based on a version that is no longer current is refused and changes nothing.
        let err = store.commit(0, vec![Change::Delete(key.clone())], vec![]).await.unwrap_err();
        assert!(matches!(err, StoreError::VersionMoved { expected: 0, found: 1 }), "{err}");
        loaded.store_id
    };
    let store = Store::open(dir.path()).unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.store_id, store_id, "the store keeps its identity");
    assert_eq!(loaded.version, 1);
    let stored = &loaded.resources[&key];
    assert_eq!(stored.resource_version, 1);
    assert_eq!(stored.document, a);
    store.commit(1, vec![Change::Delete(key.clone())], vec![]).await.unwrap();
    assert!(store.load().await.unwrap().resources.is_empty());
}

#[tokio::test]
async fn audit_entries_are_kept_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let key = ResourceKey { kind: Kind::TrustedIssuer, name: "a".into() };
    let json = issuer("a", "https://a.example.com").to_canonical_json();
    for base in 0..3u64 {
        let entry = AuditEntry {
            document: None,
            version: base + 1,
            time_unix_ms: 0,
            actor: "uid:0".into(),
            operation: "apply".into(),
            kind: "TrustedIssuer".into(),
            name: "a".into(),
            previous_resource_version: base,
        };
        store.commit(base, vec![Change::Put { key: key.clone(), json: json.clone() }], vec![entry]).await.unwrap();
    }
    let entries = store.audit(2).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3]);
}

#[tokio::test]
async fn a_join_token_admits_one_agent_once_before_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let hash = warden_core::identity::secret_hash("s3cret");
    store.create_join_token("t1", &hash, 1_000, "a1").await.unwrap();
    let wrong = warden_core::identity::secret_hash("guess");
    assert!(matches!(store.consume_join_token("t1", &wrong, 10, &agent("a1")).await, Err(JoinTokenError::Invalid)));
    assert!(matches!(store.consume_join_token("nope", &hash, 10, &agent("a1")).await, Err(JoinTokenError::Invalid)));
    assert!(matches!(
        store.consume_join_token("t1", &hash, 1_000, &agent("a1")).await,
        Err(JoinTokenError::Expired(1_000))
    ));
    // The token names its agent: another id is refused, and the token is not spent by it.
    assert!(matches!(
        store.consume_join_token("t1", &hash, 10, &agent("a2")).await,
        Err(JoinTokenError::WrongAgent(_))
    ));
    assert!(store.agents().await.unwrap().is_empty(), "refused joins register nothing");
    store.consume_join_token("t1", &hash, 999, &agent("a1")).await.unwrap();
    match store.consume_join_token("t1", &hash, 999, &agent("a2")).await {
        Err(JoinTokenError::Used(by)) => assert_eq!(by, "a1"),
        other => panic!("expected Used, got {other:?}"),
    }
    assert_eq!(store.agents().await.unwrap().keys().collect::<Vec<_>>(), ["a1"]);
    // A second token for a registered id cannot take it over.
    store.create_join_token("t2", &hash, 1_000, "a1").await.unwrap();
    assert!(matches!(
        store.consume_join_token("t2", &hash, 10, &agent("a1")).await,
        Err(JoinTokenError::AgentExists(_))
    ));
    // Deleted, the agent is gone, and a renewal racing the deletion cannot bring it back.
    assert!(store.delete_agent("a1", 10).await.unwrap());
    assert!(!store.delete_agent("a1", 10).await.unwrap());
    let issued = IssuedSerial { serial: "0b".into(), not_after_unix: 100 };
    assert!(!store.renew_agent("a1", "0a", Renewal { issued, attested: None }, 10).await.unwrap());
    assert!(store.agent("a1").await.unwrap().is_none());
    store.consume_join_token("t2", &hash, 10, &agent("a1")).await.unwrap();
    assert!(store.agent("a1").await.unwrap().is_some());
}

#[tokio::test]
async fn an_attested_join_replaces_only_its_own_rules_agent_and_only_with_a_newer_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.register_attested_agent(&attested("prod.node-1", "prod", 10, "01"), 0).await.unwrap();
    // The same token again (a replay), or an older one: refused, and the record stays.
    for issued_at in [10, 9] {
        let replay = store.register_attested_agent(&attested("prod.node-1", "prod", issued_at, "02"), 0).await;
        assert!(matches!(replay, Err(JoinTokenError::Replayed(_))), "{replay:?}");
    }
    assert!(store.agent("prod.node-1").await.unwrap().unwrap().accepts("01", 50));
    // A newer token of the same rule (the pod came back, or a new pod on the node): its
    // certificate replaces the old one, which is refused from then on.
    store.register_attested_agent(&attested("prod.node-1", "prod", 11, "03"), 0).await.unwrap();
    let record = store.agent("prod.node-1").await.unwrap().unwrap();
    assert!(record.accepts("03", 50) && !record.accepts("01", 50));
    // Another rule, or an agent that joined with a join token: never taken over.
    let other_rule = store.register_attested_agent(&attested("prod.node-1", "staging", 12, "04"), 0).await;
    assert!(matches!(other_rule, Err(JoinTokenError::NotAttested(_))), "{other_rule:?}");
    let hash = warden_core::identity::secret_hash("s3cret");
    store.create_join_token("t1", &hash, 1_000, "host-1").await.unwrap();
    store.consume_join_token("t1", &hash, 10, &agent("host-1")).await.unwrap();
    let takeover = store.register_attested_agent(&attested("host-1", "prod", 13, "05"), 0).await;
    assert!(matches!(takeover, Err(JoinTokenError::NotAttested(_))), "{takeover:?}");
    assert!(store.agent("host-1").await.unwrap().unwrap().attested.is_none());

    // A renewal with the certificate a join replaced writes nothing back.
    let issued = IssuedSerial { serial: "06".into(), not_after_unix: 100 };
    let vouched = |rule: &str, issued_at| {
        let labels = BTreeMap::from([("cluster".to_string(), "prod".to_string())]);
        Some((Attested { rule: rule.into(), issued_at }, labels))
    };
    let renewal = |attested| Renewal { issued: issued.clone(), attested };
    assert!(!store.renew_agent("prod.node-1", "01", renewal(vouched("prod", 11)), 50).await.unwrap());
    let record = store.agent("prod.node-1").await.unwrap().unwrap();
    assert!(record.accepts("03", 50) && !record.accepts("06", 50));
    assert_eq!(record.attested.as_ref().unwrap().issued_at, 11);
    // With the current certificate but without an attestation, one of another rule or a token
    // older than the join's: nothing either.
    for attested in [None, vouched("staging", 12), vouched("prod", 10)] {
        assert!(!store.renew_agent("prod.node-1", "03", renewal(attested), 50).await.unwrap());
    }
    assert!(!store.agent("prod.node-1").await.unwrap().unwrap().accepts("06", 50));
    // With the current certificate and the platform's token, the same or newer: the new
    // certificate and the rule's labels as they are now.
    assert!(store.renew_agent("prod.node-1", "03", renewal(vouched("prod", 12)), 50).await.unwrap());
    let record = store.agent("prod.node-1").await.unwrap().unwrap();
    assert!(record.accepts("03", 50) && record.accepts("06", 50));
    // The join's time stays: a join again with a token newer than it still takes over.
    assert_eq!(record.attested.as_ref().unwrap().issued_at, 11);
    assert_eq!(record.labels["cluster"], "prod");

    // Deleted, it comes back only with a token issued after the deletion; the floor is
    // forgotten once every token issued before it has expired.
    assert!(store.delete_agent("prod.node-1", 20).await.unwrap());
    let early = store.register_attested_agent(&attested("prod.node-1", "prod", 20, "07"), 0).await;
    assert!(matches!(early, Err(JoinTokenError::Replayed(_))), "{early:?}");
    // Within the issuer's clock skew of the deletion: its clock may run ahead of ours.
    let skewed = store.register_attested_agent(&attested("prod.node-1", "prod", 24, "07"), 5).await;
    assert!(matches!(skewed, Err(JoinTokenError::Replayed(_))), "{skewed:?}");
    store.register_attested_agent(&attested("prod.node-1", "prod", 21, "08"), 0).await.unwrap();
    // A floor refuses tokens issued up to a skew (5 min at most) after it, which live 24 h and
    // are accepted a skew past that: it is kept that long. A token is expired a skew past 24 h.
    assert!(!floor_expired(20, 20 + 24 * 3600 + 600) && floor_expired(20, 20 + 24 * 3600 + 601));
    assert!(!token_expired(20, 20 + 24 * 3600 + 300) && token_expired(20, 20 + 24 * 3600 + 301));
    // An id deleted while nothing is registered under it (forgotten, or never joined) keeps a
    // floor too: a stolen token issued before the deletion joins nowhere.
    assert!(!store.delete_agent("prod.node-5", 30).await.unwrap());
    let stolen = store.register_attested_agent(&attested("prod.node-5", "prod", 29, "09"), 0).await;
    assert!(matches!(stolen, Err(JoinTokenError::Replayed(_))), "{stolen:?}");
    // A record no attestation admitted never takes an id this way.
    let plain = store.register_attested_agent(&agent("prod.node-9"), 0).await;
    assert!(matches!(plain, Err(JoinTokenError::NotAttested(_))), "{plain:?}");
}

#[test]
fn an_agent_accepts_only_the_certificates_issued_to_it_that_have_not_expired() {
    let mut record = agent("a1");
    assert!(record.accepts("anything", 0), "records from before serials were kept accept any certificate");
    record.issued("0a".into(), 100, 0);
    assert!(record.accepts("0a", 50) && !record.accepts("0b", 50));
    record.issued("0b".into(), 200, 50);
    assert!(record.accepts("0a", 60) && record.accepts("0b", 60), "the previous certificate lives until it expires");
    assert!(!record.accepts("0a", 100) && record.accepts("0b", 100), "listed, but past its notAfter");
    record.issued("0c".into(), 300, 150);
    assert!(!record.accepts("0a", 0) && record.accepts("0b", 150) && record.accepts("0c", 150));
    assert!(!record.accepts("0c", 300));
    assert_eq!(record.certificate_not_after_unix, 300);
}

#[test]
fn an_operator_certificate_is_accepted_until_it_expires_or_is_revoked() {
    let record = OperatorRecord {
        name: "alice".into(),
        certificates: vec![
            IssuedSerial { serial: "0a".into(), not_after_unix: 100 },
            IssuedSerial { serial: "0b".into(), not_after_unix: 200 },
        ],
    };
    assert!(record.accepts("0a", 99) && record.accepts("0b", 99));
    // Past its `notAfter` (a resumed TLS session does not check it again): refused.
    assert!(!record.accepts("0a", 100) && record.accepts("0b", 100));
    assert!(!record.accepts("0c", 0), "never issued (or revoked: the registry forgets it)");
    assert!(!OperatorRecord { name: "alice".into(), certificates: Vec::new() }.accepts("0a", 0));
}

#[tokio::test]
async fn attested_agents_whose_certificates_expired_long_ago_are_forgotten_others_never() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Joined with a token issued at 10, certificates until 100 (`attested`).
    store.register_attested_agent(&attested("prod.node-1", "prod", 10, "01"), 0).await.unwrap();
    let hash = warden_core::identity::secret_hash("s3cret");
    store.create_join_token("t1", &hash, 1_000, "host-1").await.unwrap();
    let mut by_token = agent("host-1");
    by_token.issued("02".into(), 100, 0);
    store.consume_join_token("t1", &hash, 10, &by_token).await.unwrap();
    let agents = store.agents().await.unwrap();
    let none = std::collections::HashSet::new();
    let gone = |now, connected: &std::collections::HashSet<String>| {
        crate::fleet::departed::departed(agents.values(), connected, now)
    };
    // Every token lives at most a day and five minutes: until then the record is what refuses
    // the one it joined with again, so it stays, however long its certificate has expired.
    let token_expired = 10 + 24 * 3600 + 300 + 1;
    assert!(gone(token_expired - 1, &none).is_empty());
    assert_eq!(gone(token_expired, &none), ["prod.node-1"], "the one that joined with a token stays");
    // Connected somewhere (a clock gone wrong): never.
    assert!(gone(token_expired, &["prod.node-1".to_string()].into()).is_empty());
    // The store checks again: not yet expired long enough, or renewed since, it stays.
    assert!(!store.forget_expired_agent("prod.node-1", 100, token_expired).await.unwrap());
    assert!(!store.forget_expired_agent("prod.node-1", 101, token_expired - 1).await.unwrap());
    assert!(!store.forget_expired_agent("host-1", 1_000, token_expired).await.unwrap());
    assert!(store.forget_expired_agent("prod.node-1", 101, token_expired).await.unwrap());
    assert!(store.agent("prod.node-1").await.unwrap().is_none());
    assert!(store.agent("host-1").await.unwrap().is_some());
    assert!(!store.forget_expired_agent("prod.node-1", 101, token_expired).await.unwrap(), "gone already");
}

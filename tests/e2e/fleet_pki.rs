//! Admission to the fleet: one-time join tokens, agent certificates from the fleet CA only.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use tests::{Agent, ControlPlane, wait_for};

#[test]
fn a_reused_join_token_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]);
    let token = cp.join_token("5m", "first");
    let first = Agent::start(dir.path(), "first", &[&cp.address], Some(&token));
    cp.wait_converged(&["first"], 0);
    drop(first);

    let mut second = Agent::start(dir.path(), "second", &[&cp.address], Some(&token));
    let code = second.process.as_mut().unwrap().wait_exit();
    assert_eq!(code, Some(1));
    let log = second.log_text();
    assert!(log.contains("join token was already used (by agent first)"), "{log}");
    assert!(!second.data_dir.join("agent.crt").exists(), "no certificate for a refused join");
    let agents = cp.ctl_json(&["get", "agents"]);
    assert_eq!(agents["agents"].as_array().unwrap().len(), 1);
}

#[test]
fn an_expired_or_forged_join_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]);
    let token = cp.join_token("1s", "late");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let mut late = Agent::start(dir.path(), "late", &[&cp.address], Some(&token));
    assert_eq!(late.process.as_mut().unwrap().wait_exit(), Some(1));
    assert!(late.log_text().contains("join token expired"), "{}", late.log_text());

    // Right id and CA pin, wrong secret.
    let good = cp.join_token("5m", "ok");
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], "A".repeat(parts[1].len()), parts[2]);
    let mut forger = Agent::start(dir.path(), "forger", &[&cp.address], Some(&forged));
    assert_eq!(forger.process.as_mut().unwrap().wait_exit(), Some(1));
    assert!(forger.log_text().contains("join token is not valid"), "{}", forger.log_text());

    // A token pinned to another CA: the agent refuses to talk to this control plane at all.
    let wrong_pin = format!("{}.{}.{}", parts[0], parts[1], "B".repeat(43));
    let pinned = Agent::start(dir.path(), "pinned", &[&cp.address], Some(&wrong_pin));
    wait_for("the pin mismatch to be reported", || {
        pinned.log_text().contains("no CA matching the join token's pin").then_some(())
    });
    // The genuine token was not spent by the refused attempt.
    let ok = Agent::start(dir.path(), "ok", &[&cp.address], Some(&good));
    cp.wait_converged(&["ok"], 0);
    drop(ok);
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]);

    // A look-alike identity: the right SPIFFE ID shape, signed by a CA the fleet does not trust.
    let rogue_key = KeyPair::generate().unwrap();
    let mut rogue_params = CertificateParams::default();
    rogue_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let rogue_ca = rogue_params.self_signed(&rogue_key).unwrap();
    let issuer = Issuer::new(rogue_params, rogue_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI("spiffe://warden.local/agent/intruder".try_into().unwrap())];
    let cert = params.signed_by(&key, &issuer).unwrap();
    drop(rogue_ca);

    let data = dir.path().join("intruder");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("agent.crt"), cert.pem()).unwrap();
    std::fs::write(data.join("agent.key"), key.serialize_pem()).unwrap();
    // It trusts the real fleet CA, so only the control plane's check can stop it.
    std::fs::copy(cp.data_dir.join("ca.crt"), data.join("ca.crt")).unwrap();

    let intruder = Agent::start(dir.path(), "intruder", &[&cp.address], None);
    // With TLS 1.3 the server's verdict on a client certificate can arrive after the client
    // considers the handshake done, so some attempts only see the connection close; the alert
    // itself must reach the agent's log.
    wait_for("the control plane's UnknownCA alert in the agent's log", || {
        intruder.log_text().contains("UnknownCA").then_some(())
    });
    let status = intruder.status();
    assert_eq!(status["link"]["connected"], false, "{status}");
    assert_eq!(status["enforcing"], false);
    let agents = cp.ctl_json(&["get", "agents"]);
    assert!(agents["agents"].as_array().unwrap().is_empty(), "{agents}");
}

#[test]
fn operators_with_a_certificate_use_the_tls_port_and_agents_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]);
    let creds = dir.path().join("alice");
    cp.ctl_ok(&["operator-cert", "create", "--name", "alice", "--out", creds.to_str().unwrap(), "--ttl", "1h"]);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(creds.join("operator.key")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let remote = |cert: &std::path::Path, key: &std::path::Path, args: &[&str]| {
        let mut all: Vec<String> = ["--control-plane", &cp.address, "--ca"].iter().map(|s| s.to_string()).collect();
        all.push(creds.join("ca.crt").display().to_string());
        all.extend(["--cert".to_string(), cert.display().to_string(), "--key".to_string(), key.display().to_string()]);
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        cp.ctl(&refs)
    };
    let file = dir.path().join("fleet.yaml");
    std::fs::write(&file, tests::fleet_yaml("search")).unwrap();
    let out =
        remote(&creds.join("operator.crt"), &creds.join("operator.key"), &["apply", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let history = cp.ctl_json(&["history"]);
    assert_eq!(history[0]["actor"], "operator:alice", "{history}");

    // An operator certificate cannot mint more operators.
    let more = remote(
        &creds.join("operator.crt"),
        &creds.join("operator.key"),
        &["operator-cert", "create", "--name", "mallory", "--out", dir.path().join("m").to_str().unwrap()],
    );
    assert!(!more.status.success());
    assert!(String::from_utf8_lossy(&more.stderr).contains("only over the local admin socket"));

    // `--server` is the McpServer filter of `decisions`, not the connection (README's example).
    let out = cp.ctl(&["decisions", "--server", "notes", "--limit", "5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A closed pipe ends wardenctl quietly (no panic, no backtrace).
    // (`true` exits at once, so the token is written to a pipe nobody reads.)
    let wardenctl = tests::bin("wardenctl");
    let piped = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("'{}' join-token create --agent piped | true; echo \"${{PIPESTATUS[0]}}\"", wardenctl.display()))
        .env("WARDEN_ADMIN_SOCKET", cp.data_dir.join("admin.sock"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&piped.stdout).trim(), "141", "{}", String::from_utf8_lossy(&piped.stderr));
    assert!(!String::from_utf8_lossy(&piped.stderr).contains("panicked"), "{}", String::from_utf8_lossy(&piped.stderr));

    // An agent's certificate is a fleet certificate too, but not an operator's.
    let token = cp.join_token("5m", "agent-0");
    let agent = Agent::start(dir.path(), "agent-0", &[&cp.address], Some(&token));
    cp.wait_converged(&["agent-0"], 1);
    let out = remote(&agent.data_dir.join("agent.crt"), &agent.data_dir.join("agent.key"), &["get", "all"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("operator client certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Alice's laptop is lost: her certificates are revoked, and refused from the next call on.
    let (cert, key) = (creds.join("operator.crt"), creds.join("operator.key"));
    assert!(remote(&cert, &key, &["get", "all"]).status.success());
    cp.ctl_ok(&["operator-cert", "revoke", "--name", "alice"]);
    let out = remote(&cert, &key, &["get", "all"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("revoked"), "{stderr}");
    // A new certificate for her works; the revoked one stays refused.
    let fresh = dir.path().join("alice-2");
    cp.ctl_ok(&["operator-cert", "create", "--name", "alice", "--out", fresh.to_str().unwrap(), "--ttl", "1h"]);
    assert!(remote(&fresh.join("operator.crt"), &fresh.join("operator.key"), &["get", "all"]).status.success());
    assert!(!remote(&cert, &key, &["get", "all"]).status.success());
}

#[test]
fn agents_renew_their_certificate_before_it_expires_and_stay_connected() {
    let dir = tempfile::tempdir().unwrap();
    // Renewal is due two thirds into the certificate's life: about 8s here.
    let cp = ControlPlane::start(dir.path(), &["--agent-cert-ttl", "12s"]);
    let token = cp.join_token("5m", "agent-0");
    let agent = Agent::start(dir.path(), "agent-0", &[&cp.address], Some(&token));
    cp.wait_converged(&["agent-0"], 0);
    let first = agent.status()["certificateNotAfter"].as_i64().unwrap();
    let key_before = std::fs::read(agent.data_dir.join("agent.key")).unwrap();
    let renewed = wait_for("the certificate to be renewed", || {
        let now = agent.status()["certificateNotAfter"].as_i64()?;
        (now > first).then_some(now)
    });
    assert!(renewed > first);
    assert_ne!(std::fs::read(agent.data_dir.join("agent.key")).unwrap(), key_before, "renewal uses a fresh key");
    // The renewed identity is the one the control plane now sees, and it still takes updates.
    assert!(cp.apply(&tests::fleet_yaml("search")).status.success());
    cp.wait_converged(&["agent-0"], 1);
    let agents = cp.ctl_json(&["get", "agents"]);
    assert_eq!(agents["agents"][0]["certificateNotAfterUnix"].as_i64(), Some(renewed));
    // The stream opened with the first certificate ends when that certificate expires (a
    // stream, like a resumed TLS session, is not checked against the dates again), and the
    // agent comes back with its renewed one.
    let log = || cp.process.as_ref().map(|p| p.log_text()).unwrap_or_default();
    let ended = wait_for("the stream of the expired certificate to end", || {
        log().lines().find(|l| l.contains("the certificate this stream was opened with expired")).map(String::from)
    });
    // The log line's own time: when the stream ended.
    let at = ended
        .split_whitespace()
        .next()
        .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok());
    let at = at.unwrap_or_else(|| panic!("a timestamp first: {ended}")).unix_timestamp();
    assert!(at >= first, "ended no earlier than the certificate's notAfter ({first}): {ended}");
    assert!(cp.apply(&tests::fleet_yaml("fetch")).status.success());
    cp.wait_converged(&["agent-0"], 2);
}

#[test]
fn an_operator_provided_ca_signs_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.path().join("fleet-ca.crt"), dir.path().join("fleet-ca.key"));
    std::fs::write(&cert_file, ca.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    let cp = ControlPlane::start(
        dir.path(),
        &["--ca-cert", cert_file.to_str().unwrap(), "--ca-key", key_file.to_str().unwrap()],
    );
    assert!(!cp.data_dir.join("ca.key").exists(), "no CA of its own is generated");
    let token = cp.join_token("5m", "agent-0");
    let agent = Agent::start(dir.path(), "agent-0", &[&cp.address], Some(&token));
    cp.wait_converged(&["agent-0"], 0);
    assert_eq!(std::fs::read_to_string(agent.data_dir.join("ca.crt")).unwrap(), ca.pem());
}

#[test]
fn a_join_token_admits_only_its_agent_and_a_deleted_agent_is_cut_off_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]);
    let refused = |token: &str, id: &str, expected: &str| {
        let mut agent = Agent::start(dir.path(), id, &[&cp.address], Some(token));
        assert_eq!(agent.process.as_mut().unwrap().wait_exit(), Some(1));
        assert!(agent.log_text().contains(expected), "{}", agent.log_text());
        assert!(!agent.data_dir.join("agent.crt").exists(), "no certificate for a refused join");
    };

    // A token made for agent-0 cannot name another agent (here, the name exchange records use).
    let token = cp.join_token("5m", "agent-0");
    refused(&token, "control-plane", "reserved");
    refused(&token, "agent-1", "does not admit agent agent-1");
    // ...nor is a token made for a reserved or registered id.
    let out = cp.ctl(&["join-token", "create", "--agent", "control-plane"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("reserved"));
    let agent = Agent::start(dir.path(), "agent-0", &[&cp.address], Some(&token));
    cp.wait_converged(&["agent-0"], 0);
    let out = cp.ctl(&["join-token", "create", "--agent", "agent-0"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("registered already"));

    // A host is compromised: its certificate and key are copied elsewhere.
    let stolen = dir.path().join("stolen");
    std::fs::create_dir_all(&stolen).unwrap();
    for file in ["agent.crt", "agent.key", "ca.crt"] {
        std::fs::copy(agent.data_dir.join(file), stolen.join(file)).unwrap();
    }

    // The operator deletes the agent: its open stream ends, and it cannot come back.
    cp.ctl_ok(&["delete", "agent", "agent-0"]);
    wait_for("the deleted agent's stream to be refused", || {
        agent.log_text().contains("not registered with this certificate").then_some(())
    });
    assert_eq!(agent.status()["link"]["connected"], false);
    assert!(cp.ctl_json(&["get", "agents"])["agents"].as_array().unwrap().is_empty());
    let out = cp.ctl(&["delete", "agent", "agent-0"]);
    assert!(!out.status.success(), "deleting twice is an error");
    drop(agent);

    // The host is rebuilt and joins again under the same id with a new token...
    let rejoin = cp.join_token("5m", "agent-0");
    std::fs::rename(dir.path().join("agent-0"), dir.path().join("agent-0.old")).unwrap();
    let rebuilt = Agent::start(dir.path(), "agent-0", &[&cp.address], Some(&rejoin));
    cp.wait_converged(&["agent-0"], 0);
    // ...and the stolen certificate, for the same id, is still refused.
    let thieves = dir.path().join("thief");
    std::fs::create_dir_all(&thieves).unwrap();
    std::fs::rename(&stolen, thieves.join("agent-0")).unwrap();
    let thief = Agent::start(&thieves, "agent-0", &[&cp.address], None);
    wait_for("the stolen certificate to be refused", || {
        thief.log_text().contains("not registered with this certificate").then_some(())
    });
    assert_eq!(thief.status()["link"]["connected"], false);
    drop(rebuilt);
}

#[test]
fn an_agent_holds_one_stream_and_what_it_says_is_bounded() {
    use proto::v1 as pb;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]);
    let token = cp.join_token("5m", "agent-0");
    let mut real = Agent::start(dir.path(), "agent-0", &[&cp.address], Some(&token));
    cp.wait_converged(&["agent-0"], 0);
    real.stop();

    // The host's certificate, used by a hostile program instead of the agent. (A runtime with a
    // worker of its own: the streams' connections keep sending while the test waits below.)
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(async {
        let identity = agent::identity::Files::new(&real.data_dir).load().unwrap().unwrap();
        let open = |nack: Option<String>| {
            let (address, config) = (cp.address.clone(), identity.client_config().unwrap());
            async move {
                let channel = agent::tls::connect(&address, config).await.unwrap();
                let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                let message = |m| pb::AgentMessage { message: Some(m) };
                let hello = pb::Hello { agent_id: "agent-0".into(), ..Default::default() };
                tx.send(message(pb::agent_message::Message::Hello(hello))).await.unwrap();
                if let Some(error) = nack {
                    tx.send(message(pb::agent_message::Message::Nack(pb::Nack { version: 1, error }))).await.unwrap();
                }
                let mut inbound =
                    client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
                inbound.message().await.unwrap().expect("the snapshot answering Hello");
                (tx, inbound)
            }
        };
        // A second stream of the same agent replaces the first, which ends.
        let (_first_tx, mut first) = open(None).await;
        let (_second_tx, _second) = open(Some("x".repeat(1024 * 1024))).await;
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match first.message().await {
                    Ok(Some(_)) => continue, // a heartbeat sent before the replacement
                    other => return other.map(|_| ()),
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the replaced stream ended");
        // A megabyte of NACK text is kept as its first KiB.
        let log = || cp.process.as_ref().map(|p| p.log_text()).unwrap_or_default();
        let error = tests::wait_for_or("the NACK to be reported", log, || {
            let agents = cp.ctl_json(&["get", "agents"]);
            let error = agents["agents"][0]["lastError"].as_str().unwrap_or_default().to_string();
            (!error.is_empty()).then_some(error)
        });
        assert!(error.len() == 1024 && error.chars().all(|c| c == 'x'), "{} bytes", error.len());
    });
}

#[test]
fn serving_certificates_are_renewed_while_the_control_plane_runs() {
    let dir = tempfile::tempdir().unwrap();
    // The token service on the operator's files, replaced in place later.
    let ca = tests::TestCa::new();
    let token_addr = tests::loopback_addr();
    let ip: std::net::IpAddr = token_addr.rsplit_once(':').unwrap().0.parse().unwrap();
    let issue = |name: &str| ca.issue(&[ip], Some(rcgen::ExtendedKeyUsagePurpose::ServerAuth), name);
    let (cert, key) = (dir.path().join("token.crt"), dir.path().join("token.key"));
    let (first_pem, first_key) = issue("token service 1");
    std::fs::write(&cert, &first_pem).unwrap();
    std::fs::write(&key, &first_key).unwrap();
    let (cert_arg, key_arg) = (cert.to_str().unwrap(), key.to_str().unwrap());
    // Issued for 12 s: issued again from 8 s on, looked at every 2 s (files too).
    let flags = [
        "--serving-cert-ttl",
        "12s",
        "--token-listen",
        &token_addr,
        "--token-tls-cert",
        cert_arg,
        "--token-tls-key",
        key_arg,
    ];
    let before_start = std::time::Instant::now();
    let cp = ControlPlane::start(dir.path(), &flags);
    let token = cp.join_token("5m", "steady");
    let steady = Agent::start(dir.path(), "steady", &[&cp.address], Some(&token));
    cp.apply_ok(&tests::fleet_yaml("search"));
    cp.wait_converged(&["steady"], 1);

    let first = tests::served_certificate(&cp.address, b"h2");
    wait_for("a new serving certificate on the agents' port", || {
        (tests::served_certificate(&cp.address, b"h2") != first).then_some(())
    });
    // Issued at the start (after `before_start`): renewed two thirds into its 12 s, not before,
    // and before it expired.
    let renewed_after = before_start.elapsed();
    assert!(renewed_after >= std::time::Duration::from_secs(8), "renewed after {renewed_after:?}");
    assert!(renewed_after < std::time::Duration::from_secs(12), "renewed after {renewed_after:?}");
    // The agent's stream carried on through it (connections stay; new handshakes get the new
    // one), and a new agent joins and connects with the new one.
    cp.apply_ok(&tests::fleet_yaml("list"));
    cp.wait_converged(&["steady"], 2);
    assert_eq!(steady.log_text().matches("configuration stream open").count(), 1, "{}", steady.log_text());
    let token = cp.join_token("5m", "newcomer");
    let _newcomer = Agent::start(dir.path(), "newcomer", &[&cp.address], Some(&token));
    cp.wait_converged(&["steady", "newcomer"], 2);

    // The operator's certificate replaced in place (key first, as a renewal tool may): served
    // from the next look on, without a restart.
    let served = tests::served_certificate(&token_addr, b"http/1.1");
    let (second_pem, second_key) = issue("token service 2");
    std::fs::write(&key, &second_key).unwrap();
    std::fs::write(&cert, &second_pem).unwrap();
    let second = rustls::pki_types::pem::PemObject::from_pem_slice(second_pem.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
        .unwrap();
    assert_ne!(served, second);
    wait_for("the token service to serve the replaced file", || {
        (tests::served_certificate(&token_addr, b"http/1.1") == second).then_some(())
    });
}

/// TLS to `cp`'s agents' port trusting its fleet CA, without a client certificate.
fn without_certificate(cp: &ControlPlane) -> rustls::ClientConfig {
    let ca = std::fs::read_to_string(cp.data_dir.join("ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in agent::tls::certs_from_pem(&ca).unwrap() {
        roots.add(cert).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

#[test]
fn without_a_client_certificate_only_a_small_join_is_read() {
    use proto::v1 as pb;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]);
    let config = without_certificate(&cp);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = agent::tls::connect(&cp.address, config).await.unwrap();
        // Any call but Join is refused before its request is read.
        let mut admin = pb::admin_service_client::AdminServiceClient::new(channel.clone());
        let refused = admin.list_agents(pb::ListAgentsRequest::default()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        assert!(refused.message().contains("needs the client certificate"), "{refused:?}");
        let mut agents = pb::agent_service_client::AgentServiceClient::new(channel);
        let hello = pb::AgentMessage { message: Some(pb::agent_message::Message::Hello(Default::default())) };
        let refused = agents.stream(tokio_stream::iter([hello])).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        // A join is answered by the join code, which checks the token before it signs
        // anything...
        let join = |csr_pem: String| pb::JoinRequest {
            token: "abcdef.0123456789abcdef".into(),
            agent_id: "agent-0".into(),
            csr_pem,
            ..Default::default()
        };
        let refused = agents.join(join("not a CSR".into())).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        assert!(refused.message().contains("join token"), "{refused:?}");
        // ...but one past 64 KiB is not read to its end.
        let refused = agents.join(join("x".repeat(100 * 1024))).await.unwrap_err();
        assert!(refused.message().contains("length limit exceeded"), "{refused:?}");
    });
    // None of it registered anything; an agent with a join token still joins.
    assert!(cp.ctl_json(&["get", "agents"])["agents"].as_array().unwrap().is_empty());
    let token = cp.join_token("5m", "agent-0");
    let _agent = Agent::start(dir.path(), "agent-0", &[&cp.address], Some(&token));
    cp.wait_converged(&["agent-0"], 0);
}

#[test]
fn a_call_whose_request_never_ends_does_not_hold_up_shutdown() {
    use bytes::Bytes;
    use hyper::body::Frame;
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(dir.path(), &[]);
    let config = without_certificate(&cp);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let address = cp.address.clone();
    let (_more, answer) = runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
        let host = address.rsplit_once(':').unwrap().0.to_string();
        let name = rustls::pki_types::ServerName::try_from(host).unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(tls);
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(connection);
        // A Join whose message is announced at 1,000 bytes, of which 10 are sent, and no more.
        let (more, body) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
        let mut first = vec![0u8, 0, 0, 0x03, 0xe8];
        first.extend([0u8; 10]);
        more.send(Ok(Frame::data(Bytes::from(first)))).await.unwrap();
        let request = http::Request::post(format!("https://{address}/warden.v1.AgentService/Join"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(body)))
            .unwrap();
        (more, tokio::spawn(sender.send_request(request)))
    });
    // The call is under way (no answer while its message is unfinished).
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!answer.is_finished());
    // The control plane still stops, and cleanly: within the wait of `stop` (20 s), where the
    // connection would otherwise stay open for the 30 s a connection without a certificate
    // lives, and one with a certificate for good.
    let started = std::time::Instant::now();
    cp.stop();
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "{:?}", started.elapsed());
}

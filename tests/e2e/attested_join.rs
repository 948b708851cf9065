//! Agents that join with a platform's token in place of a join token: the rules of
//! `deploy/kubernetes/join-attestation.yaml` as written, given to the real `warden-cp`, and
//! tokens shaped like a kubelet's projected service-account tokens, signed by PyJWT. On the
//! embedded store and on etcd (each checks replays in its own transaction).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use agent::identity::{self, Files, IdentityError, Join};
use serde_json::{Value, json};
use tests::{Agent, ControlPlane, Etcd, MintingIdp, bin, wait_for_or};

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The rules file inside the ConfigMap of `deploy/kubernetes/join-attestation.yaml`.
fn rules_file(dir: &Path) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/join-attestation.yaml");
    let text = std::fs::read_to_string(manifest).unwrap();
    let (_, data) = text.split_once("  join-attestation.yaml: |\n").expect("the ConfigMap's file");
    let rules: String = data.lines().map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l))).collect();
    let path = dir.join("join-attestation.yaml");
    std::fs::write(&path, rules).unwrap();
    path
}

/// The cluster's issuer: the first document of `deploy/identity/kubernetes.yaml`, its URL the
/// test IdP's.
fn cluster_issuer(idp: &MintingIdp) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/identity/kubernetes.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let first = text.split("\n---\n").next().unwrap();
    assert!(first.contains("kind: TrustedIssuer") && first.contains("name: k8s-prod"));
    // A small clock skew, so a token issued after a deletion need not wait a minute.
    let skew = "  allowedAlgorithms: [RS256, ES256]\n  clockSkew: 2s\n";
    assert!(first.contains("  allowedAlgorithms: [RS256, ES256]\n"));
    first
        .replace("https://oidc.prod-cluster.example.com", &idp.issuer)
        .replace("  allowedAlgorithms: [RS256, ES256]\n", skew)
}

/// A projected token as the kubelet mints it for `pod` of `namespace:account` on `node`.
fn kubelet_token(idp: &MintingIdp, audience: &str, account: (&str, &str), pod: &str, node: &str, iat: i64) -> String {
    let (ns, name) = account;
    let claims = json!({
        "iss": idp.issuer, "aud": [audience], "iat": iat, "nbf": iat, "exp": iat + 3600,
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "jti": format!("{pod}-{iat}"),
        "kubernetes.io": {
            "namespace": ns,
            "node": {"name": node, "uid": "58456cb0-dd00-45ed-b797-5578fdceaced"},
            "pod": {"name": pod, "uid": "778a530c-b3f4-47c0-9cd5-ab018fb64f33"},
            "serviceaccount": {"name": name, "uid": "a087d5a0-e1dd-43ec-93ac-f13d89cd13af"},
            "warnafter": iat + 2880
        }
    });
    idp.mint(&json!({"claims": claims, "key": "rs256"}))
}

/// One attested join through the agent's own join code; the refusal's message if refused.
fn join(cp: &ControlPlane, dir: &Path, fleet_ca: &Path, id: &str, token: &str) -> Result<(), String> {
    let data = dir.join(format!("join-{id}-{}", rand_suffix()));
    std::fs::create_dir_all(&data).unwrap();
    let token_file = data.join("join-token");
    std::fs::write(&token_file, token).unwrap();
    let files = Files::new(&data);
    let join = Join::Attestation { token_file, fleet_ca: fleet_ca.to_path_buf() };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    match runtime.block_on(identity::join(&files, &cp.address, &join, id, &Default::default())) {
        Ok(_) => Ok(()),
        Err(IdentityError::Refused(message)) => Err(message),
        Err(other) => panic!("join of {id}: {other}"),
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn registered(cp: &ControlPlane, id: &str) -> Option<Value> {
    let agents = cp.ctl_json(&["get", "agents"]);
    agents["agents"].as_array().unwrap().iter().find(|a| a["id"] == id).cloned()
}

/// Runs the story on `cp` (started with the rules), whose fleet CA certificate is `fleet_ca`,
/// the joins of the test's own making through `joiner` (`cp`, or another replica of its store).
fn attested_joins(dir: &Path, cp: &ControlPlane, joiner: &ControlPlane, idp: &MintingIdp, fleet_ca: &Path) {
    cp.apply_ok(&cluster_issuer(idp));
    let agent_sa = ("warden", "warden-agent");
    // Issued a while ago (still valid): room for tokens issued between a join and a deletion.
    let t0 = now() - 100;

    // A DaemonSet pod on node-1 joins as prod.node-1 with the real agent, and is served.
    let token_file = dir.join("node-1-token");
    std::fs::write(&token_file, kubelet_token(idp, "warden-join", agent_sa, "warden-agent-x7k2p", "node-1", t0))
        .unwrap();
    let (token_arg, ca_arg) = (token_file.to_str().unwrap(), fleet_ca.to_str().unwrap());
    let flags = ["--join-attestation-file", token_arg, "--fleet-ca", ca_arg];
    let mut node1 = Agent::start_with(dir, "prod.node-1", &[&cp.address], None, &flags);
    wait_for_or("prod.node-1 to join", || node1.log_text(), || registered(cp, "prod.node-1"));
    cp.wait_converged(&["prod.node-1"], cp.version());
    let first_identity = node1.data_dir.clone();

    // The same token again (a replay, even by the same node): refused.
    let replay = kubelet_token(idp, "warden-join", agent_sa, "warden-agent-x7k2p", "node-1", t0);
    let refused = join(joiner, dir, fleet_ca, "prod.node-1", &replay).unwrap_err();
    assert!(refused.contains("joined with a newer token already"), "{refused}");
    // node-1's token does not join as node-2.
    let refused = join(joiner, dir, fleet_ca, "prod.node-2", &replay).unwrap_err();
    assert!(refused.contains("this token admits agent \"prod.node-1\", not \"prod.node-2\""), "{refused}");
    // Another service account of the cluster, on the same node.
    let web = kubelet_token(idp, "warden-join", ("default", "web"), "web-5f7d9", "node-1", t0 + 1);
    let refused = join(joiner, dir, fleet_ca, "prod.node-1", &web).unwrap_err();
    assert!(refused.contains("service account default:web may not join"), "{refused}");
    // A token for an MCP server (another audience) does not join.
    let for_mcp =
        kubelet_token(idp, "https://mcp.example.com/tickets", agent_sa, "warden-agent-x7k2p", "node-1", t0 + 1);
    let refused = join(joiner, dir, fleet_ca, "prod.node-1", &for_mcp).unwrap_err();
    assert!(refused.contains("the token is refused: wrong_audience"), "{refused}");
    // Signed by a key the cluster never published.
    let mut rogue_claims = json!({"iss": idp.issuer, "aud": ["warden-join"], "iat": t0, "exp": t0 + 600,
        "sub": "system:serviceaccount:warden:warden-agent",
        "kubernetes.io": {"namespace": "warden", "serviceaccount": {"name": "warden-agent"}, "node": {"name": "node-1"}}});
    let rogue = idp.mint(&json!({"claims": rogue_claims.clone(), "key": "rogue"}));
    let refused = join(joiner, dir, fleet_ca, "prod.node-1", &rogue).unwrap_err();
    assert!(refused.contains("the token is refused: bad_signature"), "{refused}");
    // Living longer than the issuer's maxTokenLifetime (1h).
    rogue_claims["exp"] = json!(t0 + 7200);
    let long = idp.mint(&json!({"claims": rogue_claims, "key": "rs256"}));
    let refused = join(joiner, dir, fleet_ca, "prod.node-1", &long).unwrap_err();
    assert!(refused.contains("lifetime_too_long"), "{refused}");
    // None of these registered anything.
    assert!(registered(cp, "prod.node-2").is_none());

    // A new pod on node-1 with a newer token takes the agent over; the old identity's
    // certificate is refused from then on.
    let newer = kubelet_token(idp, "warden-join", agent_sa, "warden-agent-q9m4t", "node-1", t0 + 2);
    join(joiner, dir, fleet_ca, "prod.node-1", &newer).expect("a newer token of the same node joins");
    // The replaced agent's stream ends, and it is refused when it comes back.
    wait_for_or(
        "the replaced agent to be refused",
        || node1.log_text(),
        || {
            node1.try_status()?["link"]["lastError"]
                .as_str()?
                .contains("not registered with this certificate")
                .then_some(())
        },
    );
    node1.stop();
    let old = Files::new(&first_identity).load().unwrap().expect("the first pod's identity");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let renewal =
        runtime.block_on(identity::renew(&Files::new(&dir.join("scratch")), &cp.address, "prod.node-1", &old, None));
    match renewal {
        Err(IdentityError::Refused(message)) => {
            assert!(message.contains("not registered with this certificate"), "{message}")
        }
        other => panic!("the replaced certificate renewed: {:?}", other.map(|_| ())),
    }

    // A sidecar: one agent per pod, named by namespace and pod.
    let pod = "tickets-mcp-7d9f8c6b5-x2x4k";
    let sidecar = kubelet_token(idp, "warden-join", ("tickets", "tickets-mcp"), pod, "node-3", t0);
    join(joiner, dir, fleet_ca, &format!("prod-mcp.tickets.{pod}"), &sidecar).expect("the sidecar joins");
    let record = registered(cp, &format!("prod-mcp.tickets.{pod}")).expect("registered");
    // The rule's labels, not the ones the agent asked for (none here).
    assert_eq!(record["labels"]["cluster"], "prod", "{record}");
    assert_eq!(record["labels"]["warden.dev/placement"], "sidecar", "{record}");

    // Deleted, an attested agent comes back only with a token issued after the deletion: not
    // with one newer than its last join but older than the deletion.
    let deleted_at = now();
    cp.ctl_ok(&["delete", "agent", "prod.node-1"]);
    let before_deletion = kubelet_token(idp, "warden-join", agent_sa, "warden-agent-q9m4t", "node-1", t0 + 50);
    let refused = join(joiner, dir, fleet_ca, "prod.node-1", &before_deletion).unwrap_err();
    assert!(refused.contains("deleted after this token was issued"), "{refused}");
    assert!(registered(cp, "prod.node-1").is_none());
    // Issued later than the deletion by more than the issuer's clock skew (2 s here).
    while now() < deleted_at + 3 {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let after_deletion = kubelet_token(idp, "warden-join", agent_sa, "warden-agent-q9m4t", "node-1", now() + 1);
    join(joiner, dir, fleet_ca, "prod.node-1", &after_deletion).expect("a token issued after the deletion joins");

    // An agent that joined with a join token is never taken over by an attestation.
    let join_token = cp.join_token("5m", "prod.node-7");
    let mut by_token = Agent::start(dir, "prod.node-7", &[&cp.address], Some(&join_token));
    wait_for_or("prod.node-7 to join", || by_token.log_text(), || registered(cp, "prod.node-7"));
    by_token.stop();
    let node7 = kubelet_token(idp, "warden-join", agent_sa, "warden-agent-z2z2z", "node-7", t0 + 3);
    let refused = join(joiner, dir, fleet_ca, "prod.node-7", &node7).unwrap_err();
    assert!(refused.contains("not by this attestation rule"), "{refused}");
}

#[test]
fn pods_join_with_their_service_account_tokens_under_the_clusters_rules() {
    let dir = tempfile::tempdir().unwrap();
    let idp = MintingIdp::start(dir.path());
    let rules = rules_file(dir.path());
    let cp = ControlPlane::start(dir.path(), &["--allow-http-issuers", "--join-attestation", rules.to_str().unwrap()]);
    attested_joins(dir.path(), &cp, &cp, &idp, &cp.data_dir.join("ca.crt"));
}

#[test]
fn attested_joins_through_another_replica_on_etcd_refuse_replays_and_end_replaced_streams() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path(), 1);
    let idp = MintingIdp::start(dir.path());
    let rules = rules_file(dir.path());
    let ca = dir.path().join("fleet-ca");
    let created = Command::new(bin("warden-cp")).args(["create-ca", "--out"]).arg(&ca).output().unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let (cert, key) = (ca.join("ca.crt"), ca.join("ca.key"));
    let flags = [
        "--allow-http-issuers",
        "--join-attestation",
        rules.to_str().unwrap(),
        "--store",
        &etcd.url(),
        "--ca-cert",
        cert.to_str().unwrap(),
        "--ca-key",
        key.to_str().unwrap(),
    ];
    // The agent on one replica, the joins that replace or refuse it through the other.
    let a = ControlPlane::start(&dir.path().join("replica-a"), &flags);
    let b = ControlPlane::start(&dir.path().join("replica-b"), &flags);
    attested_joins(dir.path(), &a, &b, &idp, &cert);
}

#[test]
fn a_control_plane_without_rules_refuses_attested_joins_and_a_broken_rules_file_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let idp = MintingIdp::start(dir.path());
    let cp = ControlPlane::start(dir.path(), &["--allow-http-issuers"]);
    cp.apply_ok(&cluster_issuer(&idp));
    let token = kubelet_token(&idp, "warden-join", ("warden", "warden-agent"), "p", "node-1", now());
    let refused = join(&cp, dir.path(), &cp.data_dir.join("ca.crt"), "prod.node-1", &token).unwrap_err();
    assert!(refused.contains("admits no attested joins"), "{refused}");

    // A rule whose audience is also the cluster issuer's URL (the API server's default
    // audience: every automounted token has it) admits nobody, and says why.
    let misconfigured = dir.path().join("misconfigured.yaml");
    let rules = format!(
        "kubernetes:\n  - name: prod\n    issuer: k8s-prod\n    audience: {}\n    agentPer: node\n    serviceAccounts: [warden:warden-agent]\n",
        idp.issuer
    );
    std::fs::write(&misconfigured, rules).unwrap();
    let other = ControlPlane::start(
        &dir.path().join("other-cp"),
        &["--allow-http-issuers", "--join-attestation", misconfigured.to_str().unwrap()],
    );
    other.apply_ok(&cluster_issuer(&idp));
    let api_token = kubelet_token(&idp, &idp.issuer, ("warden", "warden-agent"), "p", "node-1", now());
    let refused = join(&other, dir.path(), &other.data_dir.join("ca.crt"), "prod.node-1", &api_token).unwrap_err();
    assert!(refused.contains("a join rule is misconfigured"), "{refused}");
    for named in ["k8s-prod", "prod"] {
        assert!(!refused.contains(named), "names nothing of the configuration to a caller: {refused}");
    }
    let log = other.process.as_ref().unwrap().log_text();
    assert!(log.contains("its audience is also TrustedIssuer k8s-prod's issuer URL"), "{log}");

    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "kubernetes:\n  - name: prod\n    issuer: k8s-prod\n    audience: warden-join\n    agentPer: node\n    serviceAccounts: [warden/agent]\n").unwrap();
    let out = Command::new(bin("warden-cp"))
        .args(["--data-dir"])
        .arg(dir.path().join("other"))
        .args(["--listen", "127.0.0.1:0", "--join-attestation"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kubernetes[0].serviceAccounts[0]"), "{stderr}");
}

#[test]
fn a_sidecar_that_joined_with_its_pods_token_guards_its_mcp_server() {
    let builder = tests::Fleet::builder().peers().agent_ids(&[]);
    let (dir, rules) = (builder.dir().to_path_buf(), rules_file(builder.dir()));
    let fleet = builder.cp_flags(&["--join-attestation", rules.to_str().unwrap()]).start();
    let (cp, idp, dir) = (&fleet.cp, fleet.idp(), dir.as_path());
    cp.apply_ok(&cluster_issuer(idp));
    // The sidecar of deploy/kubernetes/agent-sidecar.yaml: its id and labels as the manifest
    // gives them, joined with the pod's projected token.
    let pod = "tickets-mcp-7d9f8c6b5-x2x4k";
    let id = format!("prod-mcp.tickets.{pod}");
    let token_file = dir.join("sidecar-token");
    std::fs::write(&token_file, kubelet_token(idp, "warden-join", ("tickets", "tickets-mcp"), pod, "node-3", now()))
        .unwrap();
    let fleet_ca = cp.data_dir.join("ca.crt");
    let flags = [
        "--join-attestation-file",
        token_file.to_str().unwrap(),
        "--fleet-ca",
        fleet_ca.to_str().unwrap(),
        "--label",
        "cluster=prod,warden.dev/placement=sidecar",
    ];
    let sidecar = Agent::start_with(dir, &id, &[&cp.address], None, &flags);
    // The server the manifest's comment shows, on this machine's addresses, with a policy.
    let gateway = tests::loopback_addr();
    let resource = format!("http://{gateway}/mcp");
    cp.apply_ok(&format!(
        "apiVersion: warden.dev/v1\nkind: McpServer\nmetadata: {{name: tickets-sidecar}}\nspec:\n  resource: {resource}\n  \
         issuers: [k8s-prod]\n  upstream: {}\n  listen: {gateway}\n  agents: {{matchLabels: {{cluster: prod, warden.dev/placement: sidecar}}}}\n\
         ---\napiVersion: warden.dev/v1\nkind: Policy\nmetadata: {{name: research}}\nspec:\n  servers: [tickets-sidecar]\n  cedar: |\n    \
         permit(principal == Workload::\"k8s-prod/system:serviceaccount:agents:research-bot\", action == Action::\"tools/call\", resource);\n",
        fleet.upstream().url
    ));
    let metadata = format!("http://{gateway}/.well-known/oauth-protected-resource/mcp");
    wait_for_or("the sidecar to serve", || sidecar.log_text(), || ureq::get(&metadata).call().ok().map(|_| ()));
    // A workload's own service-account token for the server: the call reaches the upstream
    // (whose answer outside a session is its own 400), another account's is refused by policy.
    let body =
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {}}});
    let call = |account: (&str, &str)| {
        let token = kubelet_token(idp, &resource, account, "research-bot-5c6d7-abcde", "node-3", now());
        tests::post(&resource, Some(&token), &[], &body.to_string())
    };
    let allowed = call(("agents", "research-bot"));
    assert!(
        allowed.status == 400 && allowed.body.contains("Missing session ID"),
        "{} {}",
        allowed.status,
        allowed.body
    );
    let refused = call(("agents", "helper"));
    assert!(refused.body.contains("policy_denied"), "{} {}", refused.status, refused.body);
    // The join token of the pod is no token for the server.
    let join_token = std::fs::read_to_string(&token_file).unwrap();
    let wrong = tests::post(&resource, Some(&join_token), &[], &body.to_string());
    assert_eq!(wrong.status, 401, "{}", wrong.body);
}

#[test]
fn a_deleted_agent_stays_out_when_its_store_moves_to_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path(), 1);
    let idp = MintingIdp::start(dir.path());
    let rules = rules_file(dir.path());
    let attestation = ["--allow-http-issuers", "--join-attestation", rules.to_str().unwrap()];
    let mut cp = ControlPlane::start(dir.path(), &attestation);
    cp.apply_ok(&cluster_issuer(&idp));
    let fleet_ca = cp.data_dir.join("ca.crt");
    let agent_sa = ("warden", "warden-agent");
    let t0 = now() - 100;
    let first = kubelet_token(&idp, "warden-join", agent_sa, "warden-agent-x7k2p", "node-1", t0);
    // Once the control plane has fetched the cluster's keys.
    let refused = std::cell::RefCell::new(String::new());
    let joined = || join(&cp, dir.path(), &fleet_ca, "prod.node-1", &first).map_err(|e| *refused.borrow_mut() = e).ok();
    wait_for_or("node-1 to join", || refused.borrow().clone(), joined);
    cp.ctl_ok(&["delete", "agent", "prod.node-1"]);

    cp.stop();
    let out = Command::new(bin("warden-cp"))
        .arg("--data-dir")
        .arg(&cp.data_dir)
        .args(["--store", &etcd.url(), "migrate"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 recent agent deletions"), "{out:?}");
    let (cert, key) = (cp.data_dir.join("ca.crt"), cp.data_dir.join("ca.key"));
    let url = etcd.url();
    let on_etcd = ["--store", &url, "--ca-cert", cert.to_str().unwrap(), "--ca-key", key.to_str().unwrap()];
    cp.set_flags(&[&attestation[..], &on_etcd[..]].concat());
    cp.restart();

    // A token issued after the first join but before the deletion still joins nowhere.
    let before_deletion = kubelet_token(&idp, "warden-join", agent_sa, "warden-agent-q9m4t", "node-1", t0 + 50);
    let last = std::cell::RefCell::new(String::new());
    wait_for_or(
        "the deletion to refuse the join",
        || last.borrow().clone(),
        || {
            let refused = join(&cp, dir.path(), &fleet_ca, "prod.node-1", &before_deletion).expect_err("joined");
            *last.borrow_mut() = refused.clone();
            refused.contains("deleted after this token was issued").then_some(())
        },
    );
    assert!(registered(&cp, "prod.node-1").is_none());
    // The deletion is kept on etcd on a lease for what is left of its life (24 h 10 min from
    // the deletion), as a deletion there would be: etcd forgets it when no token it refuses can
    // be alive.
    let keys = etcd.ctl(&["get", "--prefix", "--keys-only", ""]);
    let floor =
        keys.lines().find(|k| k.ends_with("attestation-floors/prod.node-1")).unwrap_or_else(|| panic!("{keys}"));
    let record: Value = serde_json::from_str(&etcd.ctl(&["get", floor, "-w", "json"])).unwrap();
    let lease = record["kvs"][0]["lease"].as_i64().unwrap_or_else(|| panic!("on no lease: {record}"));
    let life = etcd.ctl(&["lease", "timetolive", &format!("{lease:x}")]);
    let remaining: i64 = life
        .split("remaining(")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{life}"));
    let full = 24 * 3600 + 600;
    assert!(remaining <= full + 1 && remaining > full - 300, "{life}");
}

#[test]
fn an_attested_agent_renews_only_with_its_platforms_current_token() {
    let dir = tempfile::tempdir().unwrap();
    let idp = MintingIdp::start(dir.path());
    let rules = rules_file(dir.path());
    // Certificates of 12 s: renewed about 8 s in.
    let flags = ["--allow-http-issuers", "--join-attestation", rules.to_str().unwrap(), "--agent-cert-ttl", "12s"];
    let cp = ControlPlane::start(dir.path(), &flags);
    cp.apply_ok(&cluster_issuer(&idp));
    let fleet_ca = cp.data_dir.join("ca.crt");
    let agent_sa = ("warden", "warden-agent");
    let token_file = dir.path().join("node-1-token");
    let t0 = now() - 100;
    std::fs::write(&token_file, kubelet_token(&idp, "warden-join", agent_sa, "warden-agent-x7k2p", "node-1", t0))
        .unwrap();
    // The kubelet rotates the token in place: the agent reads it at each renewal.
    let (token_arg, ca_arg) = (token_file.to_str().unwrap(), fleet_ca.to_str().unwrap());
    let node1 = Agent::start_with(
        dir.path(),
        "prod.node-1",
        &[&cp.address],
        None,
        &["--join-attestation-file", token_arg, "--fleet-ca", ca_arg],
    );
    wait_for_or("prod.node-1 to join", || node1.log_text(), || registered(&cp, "prod.node-1"));
    std::fs::write(&token_file, kubelet_token(&idp, "warden-join", agent_sa, "warden-agent-x7k2p", "node-1", t0 + 60))
        .unwrap();
    wait_for_or("the renewal", || node1.log_text(), || node1.log_text().contains("certificate renewed").then_some(()));
    assert!(!node1.log_text().contains("renewal failed"), "{}", node1.log_text());

    // The agent's key alone renews nothing; nor does it with another node's token, or with
    // a token older than the one it joined with.
    let held = Files::new(&node1.data_dir).load().unwrap().expect("the agent's identity");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    std::fs::create_dir_all(dir.path().join("scratch")).unwrap();
    let renew = |token: Option<String>| {
        let file = dir.path().join("offered-token");
        if let Some(token) = &token {
            std::fs::write(&file, token).unwrap();
        }
        let offered = token.as_ref().map(|_| file.as_path());
        match runtime.block_on(identity::renew(
            &Files::new(&dir.path().join("scratch")),
            &cp.address,
            "prod.node-1",
            &held,
            offered,
        )) {
            Ok(_) => Ok(()),
            Err(IdentityError::Refused(message)) => Err(message),
            Err(other) => panic!("renewal: {other}"),
        }
    };
    let refused = renew(None).unwrap_err();
    assert!(refused.contains("renews only with the current one"), "{refused}");
    let other_node = kubelet_token(&idp, "warden-join", agent_sa, "warden-agent-b8b8b", "node-2", t0 + 70);
    let refused = renew(Some(other_node)).unwrap_err();
    assert!(refused.contains("this token admits agent \"prod.node-2\""), "{refused}");
    let older = kubelet_token(&idp, "warden-join", agent_sa, "warden-agent-x7k2p", "node-1", t0 - 10);
    let refused = renew(Some(older)).unwrap_err();
    assert!(refused.contains("older than the one it joined with"), "{refused}");
    // The current one renews.
    let current = kubelet_token(&idp, "warden-join", agent_sa, "warden-agent-x7k2p", "node-1", t0 + 80);
    renew(Some(current)).expect("a renewal with the current token");
}

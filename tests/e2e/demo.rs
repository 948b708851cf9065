//! The local demo (`deploy/local/run.sh`, README's one command for the main job) runs to the
//! end on this machine and tells its story: a fleet converging; a workload with no secret
//! exchanging its identity token for a task token, calling what it grants, refused the rest and
//! refused everywhere once the token is revoked; a planted static key found; a legacy client
//! through a credential bridge within its policy; a shadow policy's flip; the scorecard.

use std::process::Command;

/// A free TCP port on 127.0.0.1 (the demo binds there), below the ephemeral range: a port the
/// system hands out for the source of outgoing connections (other tests make thousands) could
/// be taken between this check and the demo's bind.
fn free_port() -> String {
    use std::hash::{BuildHasher, Hasher};
    for attempt in 0u64..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port.to_string();
        }
    }
    panic!("no free port on 127.0.0.1 between 20000 and 32000");
}

/// The `CARGO_PKG_*` variables cargo sets for a test binary.
const PACKAGE_VARIABLES: [&str; 14] = [
    "CARGO_PKG_AUTHORS",
    "CARGO_PKG_DESCRIPTION",
    "CARGO_PKG_HOMEPAGE",
    "CARGO_PKG_LICENSE",
    "CARGO_PKG_LICENSE_FILE",
    "CARGO_PKG_NAME",
    "CARGO_PKG_README",
    "CARGO_PKG_REPOSITORY",
    "CARGO_PKG_RUST_VERSION",
    "CARGO_PKG_VERSION",
    "CARGO_PKG_VERSION_MAJOR",
    "CARGO_PKG_VERSION_MINOR",
    "CARGO_PKG_VERSION_PATCH",
    "CARGO_PKG_VERSION_PRE",
];

#[test]
fn the_local_demo_runs_the_main_job_and_the_road_from_static_secrets_end_to_end() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut demo = Command::new("bash");
    for name in PACKAGE_VARIABLES {
        demo.env_remove(name);
    }
    let out = demo
        .arg("deploy/local/run.sh")
        .current_dir(&root)
        .env("CP_PORT", free_port())
        .env("STATUS_PORT", free_port())
        .env("NOTES_PORT", free_port())
        .env("MCP_PORT", free_port())
        .env("TOKEN_PORT", free_port())
        .env("ISSUER_PORT", free_port())
        .env_remove("KEEP")
        // What cargo sets for this test binary: left in, the demo's own `cargo build` would see
        // build scripts' inputs changed and compile again.
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("CARGO_MANIFEST_DIR")
        .env_remove("RUST_RECURSION_COUNT")
        .output()
        .expect("bash runs the demo");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    let told = format!("{stdout}{stderr}");
    for shown in [
        // The fleet converges on each version; a bad document changes nothing.
        "Policy/github-readers configured",
        "unknown field `maxTokenLifeTime`",
        // The main job: a workload's identity token exchanged for a task token that opens its
        // tools and no other, refused everywhere once revoked.
        "A DEVELOPMENT ISSUER",
        "issuer=dev-idp subject=report-builder credential-reached-the-server=false",
        r#""reason":"tool_not_granted""#,
        "ms: HTTP 401",
        "token/exchange",
        // Its decisions found by the trace its requests carried.
        "tools/call delete_repository: deny",
        // The planted key is found, where it is and what kind, never its value.
        "generic_secret",
        "mcpServers.notes.headers.X-Api-Key",
        // The legacy client through its bridge: listed tools filtered, the key kept at the
        // gateway, the dangerous tool refused.
        r#"{"name":"echo""#,
        "issuer=notes-bridge subject=legacy-notes-client credential-reached-the-server=false",
        r#""message":"denied by policy""#,
        // The shadow policy's flip, and the scorecard.
        "1 decision would flip under the shadow policies: 1 allow → deny",
        "Revocations          rfc7009 1",
        "notes-bridge -> notes: open, 30 days left, 4 requests (owner team-notes)",
    ] {
        assert!(told.contains(shown), "{shown:?} not in the demo's output:\n{told}");
    }
    let listed = stdout.lines().find(|l| l.contains(r#""tools":["#)).unwrap_or_default();
    assert!(!listed.contains("delete_repository") && listed.contains("whoami"), "{listed}");
}

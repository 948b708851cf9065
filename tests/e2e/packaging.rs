//! Installing Warden for real: the systemd units in `deploy/systemd` are valid as systemd reads
//! them, hardened (systemd's own exposure score), and name only flags the binaries have.

use std::path::{Path, PathBuf};
use std::process::Command;

use tests::bin;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

/// The units with `ExecStart` pointing at the binaries built here (systemd checks that the
/// executable exists), in a directory of their own.
fn units() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    for name in ["warden-cp", "warden-agent"] {
        let text = std::fs::read_to_string(deploy().join(format!("{name}.service"))).unwrap();
        let local = text.replace(&format!("/usr/bin/{name}"), bin(name).to_str().unwrap());
        assert_ne!(local, text, "{name}.service starts /usr/bin/{name}");
        let path = dir.path().join(format!("{name}.service"));
        std::fs::write(&path, local).unwrap();
        out.push(path);
    }
    (dir, out)
}

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn the_systemd_units_verify_are_hardened_and_name_only_real_flags() {
    let (_dir, units) = units();
    let paths: Vec<&str> = units.iter().map(|p| p.to_str().unwrap()).collect();
    let mut args = vec!["verify"];
    args.extend(&paths);
    let (ok, text) = run("systemd-analyze", &args);
    assert!(ok && text.trim().is_empty(), "systemd-analyze verify: {text}");
    for unit in &paths {
        let (_, text) = run("systemd-analyze", &["security", "--offline=yes", unit]);
        let score: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in {text}"));
        // systemd calls up to 1.9 "OK"; a unit that lost its sandbox scores 9 or more.
        assert!(score < 2.0, "{unit}: exposure {score}\n{text}");
    }
    let (ok, text) = run("systemd-sysusers", &["--dry-run", deploy().join("warden.sysusers.conf").to_str().unwrap()]);
    assert!(ok && text.contains("warden-cp") && text.contains("warden-agent"), "{text}");
    // Every WARDEN_* variable a unit sets or documents is one the binary reads.
    for name in ["warden-cp", "warden-agent"] {
        let unit = std::fs::read_to_string(deploy().join(format!("{name}.service"))).unwrap();
        let (_, help) = run(bin(name).to_str().unwrap(), &["--help"]);
        let mut named = 0;
        for word in unit.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("WARDEN_") {
                named += 1;
                assert!(help.contains(&format!("env: {word}")), "{name}.service names {word}, which --help lacks");
            }
        }
        assert!(named >= 1, "{name}.service sets its data directory");
    }
}

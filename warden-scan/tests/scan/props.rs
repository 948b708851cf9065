//! Property tests: hostile bytes through every parser, and references under every secret name.

use std::path::Path;

use proptest::prelude::*;
use warden_scan::Limits;

use super::scanner;

const NAMES: &[&str] = &["mcp.json", "config.toml", "config.yaml", ".env", "config"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Any bytes, read as any format: a result, never a panic; an error says no more than a
    /// position.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), format in 0..NAMES.len()) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = scanner(Limits::default()).scan_text(Path::new(NAMES[format]), &text) {
            let message = e.to_string();
            prop_assert!(message.len() < 120, "{}", message);
        }
    }

    /// Config-shaped noise (brackets, quotes, separators, comments) finds the deeper parser paths
    /// that random bytes rarely reach.
    #[test]
    fn structured_noise_never_panics(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("{"), Just("}"), Just("["), Just("]"), Just("\""), Just("'"), Just(":"), Just(","),
                Just("="), Just("\n"), Just("  "), Just("- "), Just("#"), Just("//"), Just("/*"), Just("*/"),
                Just("\\u12"), Just("\\"), Just("&a"), Just("*a"), Just("!tag"), Just("---"), Just("key"),
                Just("ghp_"), Just("${X}"), Just("[[t]]"), Just("\"\"\""),
                // Connection-string shapes: `Key= ;` once sliced backwards and panicked.
                Just(";"), Just("= "), Just("Password="), Just("Hunter2Secret!"), Just("\t"),
            ],
            0..200,
        ),
        format in 0..NAMES.len(),
    ) {
        let text: String = parts.concat();
        let _ = scanner(Limits::default()).scan_text(Path::new(NAMES[format]), &text);
    }

    /// A reference is never a credential, whatever it is called and however it is written.
    #[test]
    fn references_are_never_reported(
        name in prop_oneof![
            Just("GITHUB_TOKEN"), Just("API_KEY"), Just("password"), Just("clientSecret"), Just("Authorization"),
            Just("X-API-Key"), Just("--api-key"), Just("SLACK_BOT_TOKEN"), Just("AWS_SECRET_ACCESS_KEY"),
        ],
        var in "[A-Za-z_][A-Za-z0-9_]{0,40}",
        form in 0..7usize,
    ) {
        let value = match form {
            0 => format!("${{{var}}}"),
            1 => format!("${{env:{var}}}"),
            2 => format!("${{input:{var}}}"),
            3 => format!("${var}"),
            4 => format!("{{{{ secrets.{var} }}}}"),
            5 => format!("Bearer ${{{var}}}"),
            _ => format!("%{var}%"),
        };
        let text = serde_json::json!({"mcpServers": {"s": {"env": {name: value}, "args": [name, value]}}}).to_string();
        let findings = scanner(Limits::default()).scan_text(Path::new("mcp.json"), &text).unwrap();
        prop_assert!(findings.is_empty(), "{:?}", findings);
    }

    /// Connection strings of any segments, blank values among them: never a panic, and the
    /// password is found wherever it sits.
    #[test]
    fn connection_strings_never_panic(
        segments in proptest::collection::vec(
            prop_oneof![
                Just("Server=db"), Just("Encrypt= "), Just("Encrypt=\t"), Just(" = "), Just("="), Just(""),
                Just("User Id= sa "), Just("Key=\u{3000}"), Just("Timeout=30"),
            ],
            0..8,
        ),
        at in 0..8usize,
        trailing in prop_oneof![Just(""), Just(";"), Just(" "), Just("; ")],
    ) {
        let mut segments: Vec<&str> = segments;
        segments.insert(at.min(segments.len()), "Password=Hunter2Secret!");
        let value = format!("{}{trailing}", segments.join(";"));
        let text = serde_json::json!({"mcpServers": {"db": {"env": {"DB": value}}}}).to_string();
        let findings = scanner(Limits::default()).scan_text(Path::new("mcp.json"), &text).unwrap();
        prop_assert_eq!(findings.len(), 1, "{:?}", value);
        prop_assert_eq!(findings[0].fingerprint.clone(), super::key().fingerprint(b"Hunter2Secret!"));
    }
}

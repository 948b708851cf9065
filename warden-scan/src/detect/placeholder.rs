//! Values that stand in for a secret without being one: references the client resolves at run
//! time (`${VAR}`, `${env:VAR}`, `${input:id}`, `$VAR`, `%VAR%`, `{{ secrets.X }}`) and
//! placeholders people leave in templates (`<your-token>`, `your-api-key-here`, `REPLACE_ME`,
//! `sk-...`, `xxxxxxxx`, AWS's documented `…EXAMPLE` keys) — and keys that look secret but are
//! public by design (Supabase's anon JWT and `sb_publishable_` keys). Recognising these is what
//! keeps the false-positive rate at zero on real configuration, where most secret-named values
//! are exactly this.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Whether `value` is, or contains, a reference to a value kept elsewhere.
pub(crate) fn is_reference(value: &str) -> bool {
    if value.contains("${") || value.contains("{{") || value.contains("$(") {
        return true;
    }
    // `$VAR` / `$env:VAR` (PowerShell) anywhere a word starts.
    let bytes = value.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let starts_word = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        if b == b'$' && starts_word && bytes.get(i + 1).is_some_and(|&c| c.is_ascii_alphabetic() || c == b'_') {
            return true;
        }
    }
    // `%VAR%` (Windows).
    if let Some(inner) = value.strip_prefix('%').and_then(|v| v.strip_suffix('%')) {
        return !inner.is_empty() && inner.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
    }
    false
}

/// Words that mark a template value. Kept to words of five letters or more (plus `your` with a
/// separator) so that a random 160-character token does not contain one by chance.
const PLACEHOLDER_WORDS: &[&str] = &[
    "example",
    "placeholder",
    "redacted",
    "replace",
    "changeme",
    "change_me",
    "change-me",
    "insert",
    "dummy",
    "sample",
    "your_",
    "your-",
    "your ",
    "yourkey",
    "yourtoken",
    "yoursecret",
    "yourapi",
    "xxxxx",
    "*****",
    "12345678",
    "abcdefgh",
];

/// Values that look like credentials but are published for everyone to use: the key every
/// Azure Storage emulator (Azurite, the old storage emulator) ships with, documented by
/// Microsoft and in countless local-development connection strings; the test-mode key in
/// Stripe's API documentation.
const PUBLIC_VALUES: &[&str] = &[
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
    "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
];

/// JWTs everyone has: the Supabase CLI's local-development keys (`"iss": "supabase-demo"`, the
/// same on every machine, printed by `supabase status`) and jwt.io's sample (`John Doe`).
fn is_example_jwt(claims: &str) -> bool {
    claims.contains("\"supabase-demo\"") || (claims.contains("\"John Doe\"") && claims.contains("\"1234567890\""))
}

/// Keys that are public by design: Supabase's anon key (a JWT whose `role` claim is `anon`,
/// shipped in every web and mobile client of the project, gated by row-level security) and its
/// successor, the `sb_publishable_` key. Their secret siblings (`service_role` JWTs,
/// `sb_secret_` keys) stay reported.
fn is_public_by_design(value: &str, claims: Option<&str>) -> bool {
    value.starts_with("sb_publishable_")
        || claims
            .and_then(|claims| serde_json::from_str::<serde_json::Value>(claims).ok())
            .is_some_and(|claims| claims.get("role").and_then(serde_json::Value::as_str) == Some("anon"))
}

/// The decoded payload of `value` if it is shaped like a JWT (`eyJ….….…`).
fn jwt_claims(value: &str) -> Option<String> {
    let payload = value.strip_prefix("eyJ")?.split('.').nth(1)?;
    let claims = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    Some(String::from_utf8_lossy(&claims).into_owned())
}

/// Whether `value` is a template placeholder (or a published, public value) rather than a value.
pub(crate) fn is_placeholder(value: &str) -> bool {
    is_template(value) || longest_run(value) >= 6
}

/// `is_placeholder` without the repeated-character rule, for values whose structure has runs of
/// its own (the base64 of a DER or OpenSSH key, where zero bytes encode as `AAAA…`).
pub(crate) fn is_template(value: &str) -> bool {
    if PUBLIC_VALUES.contains(&value) {
        return true;
    }
    let claims = jwt_claims(value);
    if claims.as_deref().is_some_and(is_example_jwt) || is_public_by_design(value, claims.as_deref()) {
        return true;
    }
    if value.contains("...") || value.contains('…') || has_angle_slot(value) {
        return true;
    }
    let lower = value.to_ascii_lowercase();
    PLACEHOLDER_WORDS.iter().any(|w| lower.contains(w))
}

/// Passwords so common in templates and local-development defaults that reporting them would
/// be noise (`postgres://postgres:postgres@localhost`).
const WEAK: &[&str] = &[
    "password", "passw0rd", "pass", "secret", "changeme", "admin", "root", "postgres", "mysql", "test", "testing",
    "guest", "default", "letmein", "qwerty", "example", "token", "none", "null", "true", "false", "string", "value",
    "todo", "tbd", "fixme",
];

/// Whether `value` is a well-known default or filler word.
pub(crate) fn is_weak_word(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    WEAK.contains(&lower.as_str())
}

/// `<token>`, `<your api key>`: a name in angle brackets (a password may hold a lone `<`).
fn has_angle_slot(value: &str) -> bool {
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        rest = rest.get(open + 1..).unwrap_or_default();
        let inner_len = rest.bytes().take_while(|b| b.is_ascii_alphanumeric() || b" _.-:".contains(b)).count();
        if inner_len > 0 && rest.as_bytes().get(inner_len) == Some(&b'>') {
            return true;
        }
    }
    false
}

/// Length of the longest run of one repeated character.
fn longest_run(value: &str) -> usize {
    let mut best = 0;
    let mut run = 0;
    let mut last = None;
    for c in value.chars() {
        run = if Some(c) == last { run + 1 } else { 1 };
        last = Some(c);
        best = best.max(run);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        for r in [
            "${GITHUB_TOKEN}",
            "${env:GITHUB_TOKEN}",
            "${input:token}",
            "Bearer ${input:token}",
            "$GITHUB_TOKEN",
            "Bearer $TOKEN",
            "$env:TOKEN",
            "{{ secrets.GITHUB_TOKEN }}",
            "%API_KEY%",
            "$(cat ~/.token)",
        ] {
            assert!(is_reference(r), "{r}");
        }
        for v in ["ghp_abc", "a$b", "100$", "p%d", "%%"] {
            assert!(!is_reference(v), "{v}");
        }
    }

    #[test]
    fn placeholders() {
        for p in [
            "<your-token>",
            "your-api-key-here",
            "YOUR_API_KEY",
            "sk-...",
            "ghp_…",
            "xxxxxxxxxxxxxxxx",
            "AKIAIOSFODNN7EXAMPLE",
            "REPLACE_ME",
            "changeme",
            "insert-token-here",
            "********",
            "aaaaaaaaaaaa",
        ] {
            assert!(is_placeholder(p), "{p}");
        }
        for v in ["ghp_R4nd0mLooking1234", "9f8e7d6c5b4a3210fedc", "hunter2hunter2", "p<4#x>"] {
            assert!(!is_placeholder(v), "{v}");
        }
    }

    #[test]
    fn public_examples() {
        let demo = format!(
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{}.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(r#"{"iss":"supabase-demo","role":"service_role","exp":1983812996}"#)
        );
        assert!(is_placeholder(&demo));
        let real = demo.replace(
            &URL_SAFE_NO_PAD.encode(r#"{"iss":"supabase-demo","role":"service_role","exp":1983812996}"#),
            &URL_SAFE_NO_PAD.encode(r#"{"iss":"supabase","role":"service_role","exp":1983812996}"#),
        );
        assert!(!is_placeholder(&real));
        assert!(is_placeholder("sk_test_4eC39HqLyjWDarjtT1zdp7dc"));
    }

    #[test]
    fn weak_words() {
        assert!(is_weak_word("Password"));
        assert!(is_weak_word("postgres"));
        assert!(!is_weak_word("Tr0ub4dor&3"));
    }

    #[test]
    fn public_by_design() {
        let jwt = |claims: &str| {
            format!(
                "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{}.Zm9yZ2VkLXNpZ25hdHVyZS1ieXRlcy0xMjM0NTY3OA",
                URL_SAFE_NO_PAD.encode(claims)
            )
        };
        let anon =
            jwt(r#"{"iss":"supabase","ref":"qwertyuiopasdfghjklz","role":"anon","iat":1700000000,"exp":2015576000}"#);
        assert!(is_placeholder(&anon));
        assert!(is_placeholder(&jwt(r#"{"role": "anon", "iss": "https://x.supabase.co/auth/v1"}"#)));
        assert!(is_placeholder("sb_publishable_Qx7Lm2Rt9VbN4cW8yEz1Ka_3Hj6pDs0F"));
        let service = jwt(r#"{"iss":"supabase","ref":"qwertyuiopasdfghjklz","role":"service_role","iat":1700000000}"#);
        assert!(!is_placeholder(&service));
        assert!(!is_placeholder(&jwt(r#"{"sub":"anon","role":"authenticated"}"#)));
        assert!(!is_placeholder("sb_secret_Qx7Lm2Rt9VbN4cW8yEz1Ka_3Hj6pDs0F"));
    }
}

//! Values that are secrets because of the name they sit under: `API_KEY`, `*_TOKEN`,
//! `clientSecret`, `password`, `--api-key`, an `X-API-Key` header, an `Authorization` header.
//! Shape alone cannot find these (a random 32-character string is a secret under `API_KEY` and a
//! request id under `trace`), so the name decides whether to look and the value must then pass
//! every test below.
//!
//! # The rule
//!
//! A name is split into lower-case words (`GITHUB_PERSONAL_ACCESS_TOKEN` → github, personal,
//! access, token; `apiKey` → api, key). It is secret-named when a word says token, key, secret,
//! password (or a compound: `apikey`, `pgpassword`, `authtoken`, …) or auth — unless any word
//! says hash/digest/checksum/commit/sha… (`token_hash`), any says public/publishable, or the
//! *last* word says the value is about the secret rather than the secret (`TOKEN_URL`,
//! `API_KEY_FILE`, `SECRET_NAME`, `KEY_ID`, `AUTH_PORT`, …).
//!
//! Its value is then a secret only if it is
//! - at least `MIN_LEN` characters (`MIN_PASSWORD_LEN` under a password name), at most 1024,
//!   without whitespace;
//! - not a reference or placeholder (`placeholder`), not a well-known default word;
//! - not a UUID; not a hex digest (32/40/64/128 hex digits) unless the name's last word is
//!   itself key/token/secret/password — a Datadog or Twilio key is 32 hex digits, while a hex
//!   value under `commit` or `sha256` is never looked at;
//! - not a version, path, package name, URL, e-mail address, number, boolean, environment
//!   variable name, lower-case or code identifier (`Win32_System`), or base64 of prose (`shape`);
//! - of at least two character classes and at least `MIN_ENTROPY` bits per character.

use super::placeholder::{is_placeholder, is_reference, is_weak_word};
use super::shape::{
    char_classes, entropy, is_base64_text, is_code_identifier, is_email, is_env_var_name, is_hex, is_hex_digest,
    is_identifier_like, is_number_or_bool, is_path, is_url, is_uuid, is_version,
};
use super::{Candidates, Hit, Rank};
use crate::Kind;

/// Shortest value reported under a token/key/secret/auth name. API keys are 20 characters and
/// up; 16 leaves room for short vendor keys while excluding words and short ids.
pub(crate) const MIN_LEN: usize = 16;
/// Shortest value reported under a password name: people choose 8-character passwords.
pub(crate) const MIN_PASSWORD_LEN: usize = 8;
/// Longest value considered: past this it is a document (a JSON blob, a certificate bundle),
/// which the known formats look inside instead.
const MAX_LEN: usize = 1024;
/// Bits of Shannon entropy per character a value must reach. Random base62 of 16+ characters
/// sits near 4 and hex near 3.7; `password` is 2.75, `test1234` 2.75, `aaaabbbb` 1.0. An
/// 8-character value reaches 3.0 only with eight distinct characters.
pub(crate) const MIN_ENTROPY: f64 = 3.0;

/// How strongly a name says "secret".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strength {
    /// password, passwd, pwd, passphrase.
    Password,
    /// token, key, secret, credential and their compounds.
    Strong,
    /// auth, authorization, oauth.
    Weak,
}

/// Words that make a name about something other than a secret, wherever they appear.
const HASH_WORDS: &[&str] = &[
    "hash",
    "hashed",
    "digest",
    "checksum",
    "commit",
    "etag",
    "integrity",
    "fingerprint",
    "rev",
    "revision",
    "md5",
    "sha",
    "public",
    "pub",
    "publishable",
];

/// Last words that make a name about a secret rather than the secret itself.
const NOT_SECRET_LAST: &[&str] = &[
    "url",
    "uri",
    "urls",
    "endpoint",
    "host",
    "hostname",
    "domain",
    "server",
    "file",
    "filename",
    "path",
    "dir",
    "directory",
    "folder",
    "id",
    "ids",
    "name",
    "names",
    "type",
    "kind",
    "expiry",
    "expires",
    "expiration",
    "ttl",
    "lifetime",
    "length",
    "len",
    "size",
    "count",
    "limit",
    "header",
    "env",
    "var",
    "variable",
    "prefix",
    "suffix",
    "format",
    "alg",
    "algorithm",
    "scope",
    "scopes",
    "region",
    "version",
    "enabled",
    "enable",
    "disabled",
    "mode",
    "timeout",
    "user",
    "username",
    "login",
    "email",
    "issuer",
    "audience",
    "provider",
    "helper",
    "command",
    "cmd",
    "field",
    "label",
    "description",
    "hint",
    "policy",
    "method",
    "store",
    "storage",
    "port",
    "required",
    "source",
    "template",
    "schema",
    "location",
    "style",
    "strategy",
    "rotation",
    "refresh",
    "at",
    "ref",
    "key_ref",
];

const PASSWORD_WORDS: &[&str] = &["password", "passwd", "pwd", "pass", "passphrase", "pw", "pword"];

const STRONG_WORDS: &[&str] = &[
    "token",
    "key",
    "secret",
    "secrets",
    "apikey",
    "accesskey",
    "secretkey",
    "privatekey",
    "pat",
    "credential",
    "credentials",
    "creds",
    "cred",
    "bearer",
    "jwt",
    "authkey",
    "signingkey",
    "masterkey",
    "licensekey",
    "encryptionkey",
    "subscriptionkey",
    "sas",
];

const WEAK_WORDS: &[&str] = &["auth", "authorization", "authentication", "oauth"];

/// Schemes of an `Authorization` header value.
const AUTH_SCHEMES: &[&str] = &[
    "bearer",
    "basic",
    "token",
    "bot",
    "apikey",
    "api-key",
    "key",
    "sso-key",
    "ssws",
    "jwt",
    "oauth",
    "klaviyo-api-key",
];

/// `name` in lower-case words: split at non-alphanumerics and at lower→upper case changes.
pub(crate) fn words(name: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            previous_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && previous_lower && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        current.push(c.to_ascii_lowercase());
        previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// How strongly `name` says its value is a secret, if it does.
pub(crate) fn classify(name: &str) -> Option<Strength> {
    let words = words(name);
    let last = words.last()?;
    let hashy = |w: &String| {
        HASH_WORDS.contains(&w.as_str()) || w.strip_prefix("sha").is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
    };
    if words.iter().any(hashy) || NOT_SECRET_LAST.contains(&last.as_str()) {
        return None;
    }
    let password = |w: &String| {
        PASSWORD_WORDS.contains(&w.as_str())
            || w.ends_with("password")
            || w.ends_with("passwd")
            || w.starts_with("password")
    };
    let strong = |w: &String| {
        STRONG_WORDS.contains(&w.as_str())
            || ["token", "secret", "apikey", "accesskey", "secretkey", "privatekey"].iter().any(|s| w.ends_with(s))
    };
    if words.iter().any(password) {
        Some(Strength::Password)
    } else if words.iter().any(strong) {
        Some(Strength::Strong)
    } else if words.iter().any(|w| WEAK_WORDS.contains(&w.as_str())) {
        Some(Strength::Weak)
    } else {
        None
    }
}

/// The name's last word is itself a key/token/secret/password word: only then may a value that
/// looks like a hex digest be a secret (`DD_API_KEY` yes, `sha256`/`token_hash` never reach here).
fn clearly_a_key(name: &str) -> bool {
    words(name).last().is_some_and(|w| {
        STRONG_WORDS.contains(&w.as_str())
            || PASSWORD_WORDS.contains(&w.as_str())
            || w.ends_with("token")
            || w.ends_with("key")
            || w.ends_with("secret")
            || w.ends_with("password")
    })
}

/// Whether `name` is an HTTP header that carries a credential with a scheme.
pub(crate) fn is_authorization(name: &str) -> bool {
    name.eq_ignore_ascii_case("authorization") || name.eq_ignore_ascii_case("proxy-authorization")
}

/// Whether `name` says its value is a header (`AUTH_HEADER`, `authHeader`, `--header`,
/// `CUSTOM_HEADERS`): the value may then be an `Authorization` header's.
pub(crate) fn is_header_name(name: &str) -> bool {
    words(name).last().is_some_and(|w| w == "header" || w == "headers")
}

/// Whether `value` reads `<scheme> <credential>` with a scheme of `AUTH_SCHEMES`
/// (`Bearer abc…`, `Token abc…`, `Bot abc…`).
pub(crate) fn has_auth_scheme(value: &str) -> bool {
    value.trim_start().split_once(char::is_whitespace).is_some_and(|(scheme, rest)| {
        AUTH_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) && !rest.trim().is_empty()
    })
}

/// Adds a hit if `value` (at `offset` in the field) is a secret under `name`.
pub(crate) fn check(name: &str, value: &str, offset: usize, hits: &mut Candidates) {
    let Some(strength) = classify(name) else { return };
    let (start, value) = unquote(value);
    let (start, end) = (offset + start, offset + start + value.len());
    let words = words(name);
    let has = |w: &str| words.iter().any(|x| x == w);
    // Vendor keys whose name and shape together say what they are.
    let aws_secret = (has("aws") && has("secret")) || has("secretaccesskey");
    if aws_secret
        && value.len() == 40
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'+')
        && !is_placeholder(value)
        && entropy(value) >= MIN_ENTROPY
    {
        hits.push(Hit { kind: Kind::AwsSecretAccessKey, start, end, rank: Rank::Named });
        return;
    }
    if (has("dd") || has("datadog")) && matches!(value.len(), 32 | 40) && is_hex(value) && entropy(value) >= MIN_ENTROPY
    {
        hits.push(Hit { kind: Kind::DatadogKey, start, end, rank: Rank::Named });
        return;
    }
    let min_len = if strength == Strength::Password { MIN_PASSWORD_LEN } else { MIN_LEN };
    if value.len() < min_len || value.len() > MAX_LEN || value.contains(char::is_whitespace) {
        return;
    }
    if !is_secret_value(value) || (is_hex_digest(value) && !clearly_a_key(name)) {
        return;
    }
    hits.push(Hit { kind: Kind::GenericSecret, start, end, rank: Rank::Generic });
}

/// Adds a hit for the credential of an `Authorization` header value (`Bearer X`, `Basic X`, or
/// a bare `X`) at `offset` in the field.
pub(crate) fn authorization(value: &str, offset: usize, hits: &mut Candidates) {
    let trimmed_start = value.len() - value.trim_start().len();
    let value_t = value.trim();
    let (credential_start, credential) = match value_t.split_once(char::is_whitespace) {
        Some((scheme, rest)) if AUTH_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) => {
            let rest_t = rest.trim_start();
            (trimmed_start + value_t.len() - rest_t.len(), rest_t)
        }
        Some(_) => return,
        None => (trimmed_start, value_t),
    };
    let (quote, credential) = unquote(credential);
    if credential.len() < 12 || credential.contains(char::is_whitespace) || !is_secret_value(credential) {
        return;
    }
    let start = offset + credential_start + quote;
    hits.push(Hit { kind: Kind::AuthorizationHeader, start, end: start + credential.len(), rank: Rank::Header });
}

/// The tests every named value must pass (see the module doc), apart from length.
fn is_secret_value(value: &str) -> bool {
    !(is_reference(value)
        || is_placeholder(value)
        || is_weak_word(value)
        || is_uuid(value)
        || is_version(value)
        || is_path(value)
        || is_url(value)
        || is_email(value)
        || is_number_or_bool(value)
        || is_env_var_name(value)
        || is_identifier_like(value)
        || is_code_identifier(value)
        || is_base64_text(value))
        && char_classes(value) >= 2
        && entropy(value) >= MIN_ENTROPY
}

/// `value` without one pair of surrounding quotes, and the offset of what remains.
fn unquote(value: &str) -> (usize, &str) {
    for q in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return (1, inner);
        }
    }
    (0, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(name: &str, value: &str) -> Option<Kind> {
        let mut hits = Candidates::default();
        check(name, value, 0, &mut hits);
        hits.as_slice().first().map(|h| h.kind)
    }

    #[test]
    fn names_split_into_words() {
        assert_eq!(words("GITHUB_PERSONAL_ACCESS_TOKEN"), ["github", "personal", "access", "token"]);
        assert_eq!(words("apiKey"), ["api", "key"]);
        assert_eq!(words("X-API-Key"), ["x", "api", "key"]);
        assert_eq!(words("--api-key"), ["api", "key"]);
        assert_eq!(words("OAuthToken"), ["oauth", "token"]);
        assert_eq!(words("sha256"), ["sha256"]);
    }

    #[test]
    fn names_classify() {
        use Strength::*;
        for (name, want) in [
            ("API_KEY", Some(Strong)),
            ("GITHUB_PERSONAL_ACCESS_TOKEN", Some(Strong)),
            ("clientSecret", Some(Strong)),
            ("PGPASSWORD", Some(Password)),
            ("db_pass", Some(Password)),
            ("--api-key", Some(Strong)),
            ("X-API-Key", Some(Strong)),
            ("apikey", Some(Strong)),
            ("SLACK_BOT_TOKEN", Some(Strong)),
            ("auth", Some(Weak)),
            ("token_hash", None),
            ("sha256", None),
            ("commit", None),
            ("checksum", None),
            ("API_KEY_FILE", None),
            ("TOKEN_URL", None),
            ("AWS_ACCESS_KEY_ID", None),
            ("STRIPE_PUBLISHABLE_KEY", None),
            ("public_key", None),
            ("AUTH_PORT", None),
            ("max_tokens", None),
            ("keyboard", None),
            ("", None),
        ] {
            assert_eq!(classify(name), want, "{name}");
        }
    }

    #[test]
    fn values_must_look_like_secrets() {
        assert_eq!(found("API_KEY", "q8Zr2LmX0pVb7NcT4yWe"), Some(Kind::GenericSecret));
        assert_eq!(found("password", "Tr0ub4dor&3x"), Some(Kind::GenericSecret));
        for (name, value) in [
            ("password", "password"),
            ("token", "test"),
            ("API_KEY", "${API_KEY}"),
            ("API_KEY", "your-api-key-here"),
            ("API_KEY", "<your-token>"),
            ("API_KEY", "REPLACE_ME"),
            ("API_KEY", "123e4567-e89b-12d3-a456-426614174000"),
            ("token_hash", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
            ("API_KEY", "1.2.3"),
            ("API_KEY", "/home/u/.secrets/key"),
            ("API_KEY", "https://example.com/key"),
            ("API_KEY", "OPENAI_API_KEY"),
            ("SECRET", "aGVsbG8gd29ybGQgaG93IGFyZSB5b3U="),
            ("API_KEY", "two words here but long"),
            ("API_KEY", "1234567890123456"),
            ("API_KEY", "xxxxxxxxxxxxxxxxxxxx"),
        ] {
            assert_eq!(found(name, value), None, "{name}={value}");
        }
    }

    #[test]
    fn hex_needs_a_clear_key_name() {
        let hex32 = "4f3c2b1a09f8e7d6c5b4a39281706f5e";
        assert_eq!(found("DD_API_KEY", hex32), Some(Kind::DatadogKey));
        assert_eq!(found("TWILIO_AUTH_TOKEN", hex32), Some(Kind::GenericSecret));
        assert_eq!(found("auth", hex32), None);
    }

    #[test]
    fn aws_secret_by_name() {
        let v = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzQ8rLmNoP0";
        assert_eq!(found("AWS_SECRET_ACCESS_KEY", v), Some(Kind::AwsSecretAccessKey));
        assert_eq!(found("aws_secret_access_key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"), None);
    }

    #[test]
    fn authorization_values() {
        fn auth(v: &str) -> Option<&str> {
            let mut hits = Candidates::default();
            authorization(v, 0, &mut hits);
            hits.as_slice().first().map(|h| &v[h.start..h.end])
        }
        assert_eq!(auth("Bearer q8Zr2LmX0pVb7NcT4yWe"), Some("q8Zr2LmX0pVb7NcT4yWe"));
        assert_eq!(auth("  token  q8Zr2LmX0pVb7NcT4yWe"), Some("q8Zr2LmX0pVb7NcT4yWe"));
        assert_eq!(auth("q8Zr2LmX0pVb7NcT4yWe"), Some("q8Zr2LmX0pVb7NcT4yWe"));
        assert_eq!(auth("Bearer ${input:token}"), None);
        assert_eq!(auth("Bearer <token>"), None);
        assert_eq!(auth("Bearer"), None);
        assert_eq!(auth("Digest username=\"x\", realm=\"y\""), None);
    }

    #[test]
    fn header_names_and_schemes() {
        for name in ["AUTH_HEADER", "authHeader", "--header", "CUSTOM_HEADERS", "X-Header"] {
            assert!(is_header_name(name), "{name}");
        }
        for name in ["HEADER_NAME", "Authorization", "headerless", "API_KEY"] {
            assert!(!is_header_name(name), "{name}");
        }
        for value in ["Bearer q8Zr2LmX0pVb7NcT4yWe", "  token q8Zr", "Bot x", "ApiKey x", "basic dXNlcjpwYXNz"] {
            assert!(has_auth_scheme(value), "{value}");
        }
        for value in ["Bearer", "Bearer  ", "q8Zr2LmX0pVb7NcT4yWe", "Accept: application/json", "Digest x"] {
            assert!(!has_auth_scheme(value), "{value}");
        }
    }
}

//! Credentials recognised by their shape wherever they appear in a string: vendor prefixes with
//! their exact lengths and alphabets (and checksums where the format has one — GitHub's and
//! npm's tokens end in a CRC32), PEM private keys (`pem`), JWTs, passwords in URLs, Azure
//! connection string keys, Slack webhook URLs. A name is not needed: `"--api-key=sk-ant-…"`, `"Bearer
//! ghp_…"` and a token pasted into a URL are found the same way.
//!
//! Every match must also look random past its prefix (`looks_random`), so the documented
//! examples and `sk_live_xxxxxxxx…` templates that share a real prefix are not reported.

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use regex::Regex;

use super::pem;
use super::placeholder::{is_placeholder, is_reference, is_weak_word};
use super::shape::{char_classes, entropy, is_hex};
use super::{Candidates, Hit, Rank};
use crate::Kind;

/// Entropy (bits per character) a known format's random part must reach. Low on purpose: the
/// prefix is already strong evidence, and a genuine 16-character AWS key body can fall near 3.0;
/// this only screens out `xxxx`/`aaaa`/`0000` filler, which sits below 2.
pub(crate) const KNOWN_MIN_ENTROPY: f64 = 2.5;

/// One known format.
struct Rule {
    kind: Kind,
    /// Literal text every match contains: a cheap test before the regex runs.
    needles: &'static [&'static str],
    /// Matches the credential greedily over its alphabet; capture group 1, when present, is the
    /// secret part of a longer match (`AccountKey=(…)`).
    pattern: &'static str,
    /// Checks the secret part: exact lengths, checksums, randomness.
    valid: fn(&str) -> bool,
}

const RULES: &[Rule] = &[
    Rule { kind: Kind::GithubToken, needles: &["ghp_"], pattern: r"ghp_[A-Za-z0-9]+", valid: checksummed_40 },
    Rule { kind: Kind::GithubOauthToken, needles: &["gho_"], pattern: r"gho_[A-Za-z0-9]+", valid: checksummed_40 },
    Rule {
        kind: Kind::GithubAppToken,
        needles: &["ghu_", "ghs_", "ghr_"],
        pattern: r"gh[usr]_[A-Za-z0-9]+",
        valid: checksummed_40,
    },
    Rule {
        kind: Kind::GithubFineGrainedToken,
        needles: &["github_pat_"],
        pattern: r"github_pat_[A-Za-z0-9_]+",
        valid: github_fine_grained,
    },
    Rule {
        kind: Kind::GitlabToken,
        needles: &["gl"],
        pattern: r"gl(?:pat|dt|rt|ptt|ft|soat|cbt|oas|imt|agent|ffct|ddt)-[A-Za-z0-9_.-]+",
        valid: gitlab,
    },
    Rule {
        kind: Kind::SlackToken,
        needles: &["xox", "xapp-"],
        pattern: r"xox[abposer]-[A-Za-z0-9-]+|xapp-[0-9]-[A-Za-z0-9-]+",
        valid: slack,
    },
    Rule {
        kind: Kind::SlackWebhook,
        needles: &["hooks.slack.com"],
        pattern: r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]+",
        valid: slack_webhook,
    },
    Rule {
        kind: Kind::AwsAccessKeyId,
        needles: &["AKIA", "ASIA", "ABIA", "ACCA"],
        pattern: r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]+",
        valid: aws_key_id,
    },
    Rule { kind: Kind::GoogleApiKey, needles: &["AIza"], pattern: r"AIza[A-Za-z0-9_-]+", valid: google_api_key },
    Rule {
        kind: Kind::AzureConnectionString,
        needles: &["AccountKey="],
        pattern: r"AccountKey=([A-Za-z0-9+/]+={0,2})",
        valid: azure_account_key,
    },
    Rule {
        kind: Kind::AzureConnectionString,
        needles: &["SharedAccessKey="],
        pattern: r"SharedAccessKey=([A-Za-z0-9+/]+={0,2})",
        valid: azure_shared_access_key,
    },
    Rule {
        kind: Kind::AnthropicKey,
        needles: &["sk-ant-"],
        pattern: r"sk-ant-(?:api|admin|oat|ort)[0-9]{2}-[A-Za-z0-9_-]+",
        valid: anthropic,
    },
    Rule {
        kind: Kind::OpenaiKey,
        needles: &["sk-"],
        pattern: r"sk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]+|[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]+)",
        valid: openai,
    },
    Rule {
        kind: Kind::StripeKey,
        needles: &["k_live_", "k_test_", "whsec_"],
        pattern: r"(?:[sr]k_(?:live|test)|whsec)_[A-Za-z0-9]+",
        valid: stripe,
    },
    Rule { kind: Kind::TwilioKey, needles: &["SK"], pattern: r"SK[0-9a-fA-F]+", valid: twilio },
    Rule {
        kind: Kind::SendgridKey,
        needles: &["SG."],
        pattern: r"SG\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+",
        valid: sendgrid,
    },
    Rule { kind: Kind::NpmToken, needles: &["npm_"], pattern: r"npm_[A-Za-z0-9]+", valid: checksummed_40 },
    Rule { kind: Kind::PypiToken, needles: &["pypi-AgE"], pattern: r"pypi-AgE[A-Za-z0-9_-]+", valid: pypi },
    Rule { kind: Kind::HuggingfaceToken, needles: &["hf_"], pattern: r"hf_[A-Za-z0-9]+", valid: huggingface },
    Rule {
        kind: Kind::NotionToken,
        needles: &["secret_", "ntn_"],
        pattern: r"(?:secret|ntn)_[A-Za-z0-9]+",
        valid: notion,
    },
    Rule { kind: Kind::LinearKey, needles: &["lin_"], pattern: r"lin_(?:api|oauth)_[A-Za-z0-9]+", valid: linear },
    Rule {
        kind: Kind::AtlassianToken,
        needles: &["T3xFfG"],
        pattern: r"AT[A-Z]{2}T3xFfG[A-Za-z0-9_=-]+",
        valid: atlassian,
    },
    Rule { kind: Kind::SupabaseToken, needles: &["sbp_"], pattern: r"sbp_[a-f0-9]+", valid: supabase },
    Rule { kind: Kind::SentryToken, needles: &["sntry"], pattern: r"sntry[su]_[A-Za-z0-9+/=_]+", valid: sentry },
    Rule {
        kind: Kind::Jwt,
        needles: &["eyJ"],
        pattern: r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+",
        valid: jwt,
    },
];

static COMPILED: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    RULES.iter().map(|rule| Regex::new(rule.pattern).expect("RULES patterns are valid (tested)")).collect()
});

/// `scheme://user:password@` — capture 1 is the user, 2 the password.
static URL_USERINFO: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#@ \t\r\n:]*):([^/?#@ \t\r\n]+)@")
        .expect("URL_USERINFO is valid (tested)")
});

/// Adds every known-format credential in `value` to `hits`. `service_account` says the string
/// sits in a Google Cloud key object, so a private key in it is that key.
pub(crate) fn scan(value: &str, service_account: bool, hits: &mut Candidates) {
    for (rule, regex) in RULES.iter().zip(COMPILED.iter()) {
        if !rule.needles.iter().any(|n| value.contains(n)) {
            continue;
        }
        for caps in regex.captures_iter(value) {
            if hits.is_full() {
                return;
            }
            let Some(whole) = caps.get(0) else { continue };
            let secret = caps.get(1).unwrap_or(whole);
            if starts_word(value, whole.start()) && (rule.valid)(secret.as_str()) && !is_placeholder(secret.as_str()) {
                hits.push(Hit { kind: rule.kind, start: secret.start(), end: secret.end(), rank: Rank::Format });
            }
        }
    }
    if value.contains("://") {
        url_passwords(value, hits);
    }
    if value.contains("PRIVATE KEY-----") {
        let service_account = service_account || (value.contains("\"type\"") && value.contains("service_account"));
        pem::private_keys(value, service_account, hits);
    }
}

/// The match at `start` is not the tail of a longer word (`xghp_…`).
fn starts_word(value: &str, start: usize) -> bool {
    value.get(..start).is_some_and(|before| before.chars().next_back().is_none_or(|c| !c.is_ascii_alphanumeric()))
}

/// Random enough to be a real credential body, and not a template: no placeholder, enough
/// entropy, and at least two character classes (`hf_someverylongmodelnameidentifier` is a name).
fn looks_random(body: &str) -> bool {
    !is_placeholder(body) && entropy(body) >= KNOWN_MIN_ENTROPY && char_classes(body) >= 2
}

fn alnum(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A 4-character prefix + 30 random base62 + the CRC32 of those 30 in 6 base62: GitHub's classic
/// tokens (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`) and npm's (`npm_`) share the layout.
fn checksummed_40(token: &str) -> bool {
    let Some(body) = token.get(4..).filter(|body| token.len() == 40 && alnum(body)) else { return false };
    let (random, check) = body.split_at(30);
    base62_6(crc32(random.as_bytes())) == check && looks_random(random)
}

/// CRC-32 (IEEE 802.3, as zlib's `crc32`).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// `n` in base62 (digits, upper, lower), left-padded with `0` to 6 characters.
fn base62_6(mut n: u32) -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 62) as usize];
        n /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// `github_pat_` + 22 base62 + `_` + 59 base62.
fn github_fine_grained(token: &str) -> bool {
    let Some(body) = token.strip_prefix("github_pat_").filter(|body| body.len() == 82) else { return false };
    match body.split_once('_') {
        Some((id, random)) => id.len() == 22 && alnum(id) && alnum(random) && looks_random(body),
        None => false,
    }
}

fn gitlab(token: &str) -> bool {
    token.split_once('-').is_some_and(|(_, body)| body.len() >= 20 && looks_random(body))
}

/// `xoxb-<team digits>-<digits>-<random>`, `xoxp-…-…-…-<hex>`, `xapp-1-…`: at least three
/// dash-separated parts after the prefix, a numeric first part, a random last part.
fn slack(token: &str) -> bool {
    let Some((_, body)) = token.split_once('-') else { return false };
    let parts: Vec<&str> = body.split('-').collect();
    let last = parts.last().copied().unwrap_or("");
    body.len() >= 20
        && parts.len() >= 2
        && parts[0].bytes().all(|b| b.is_ascii_digit())
        && last.len() >= 8
        && looks_random(last)
}

/// `https://hooks.slack.com/services/T…/B…/<24 random>`.
fn slack_webhook(url: &str) -> bool {
    let path: Vec<&str> = url.split('/').skip(4).filter(|s| !s.is_empty()).collect();
    path.len() >= 3 && path.last().is_some_and(|last| last.len() >= 16 && looks_random(last))
}

/// `AKIA` + 16 base32 characters (upper case and 2–7). Not `looks_random`: one key body in
/// thirty is all letters, a single character class.
fn aws_key_id(token: &str) -> bool {
    let Some(body) = token.get(4..).filter(|_| token.len() == 20) else { return false };
    body.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        && !is_placeholder(token)
        && entropy(body) >= KNOWN_MIN_ENTROPY
}

fn google_api_key(token: &str) -> bool {
    token.len() == 39 && token.get(4..).is_some_and(looks_random)
}

fn azure_account_key(key: &str) -> bool {
    key.len() >= 80 && looks_random(key)
}

fn azure_shared_access_key(key: &str) -> bool {
    key.len() >= 40 && looks_random(key)
}

fn anthropic(token: &str) -> bool {
    // sk-ant-api03-<body>
    token.splitn(4, '-').nth(3).is_some_and(|body| body.len() >= 80 && looks_random(body))
}

/// `sk-proj-`/`sk-svcacct-`/`sk-admin-` + a long body, or the legacy
/// `sk-` + 20 + `T3BlbkFJ` + 20.
fn openai(token: &str) -> bool {
    for prefix in ["sk-proj-", "sk-svcacct-", "sk-admin-"] {
        if let Some(body) = token.strip_prefix(prefix) {
            return body.len() >= 40 && looks_random(body);
        }
    }
    token.len() == 51 && token.get(23..31) == Some("T3BlbkFJ") && looks_random(token)
}

fn stripe(token: &str) -> bool {
    token.rsplit_once('_').is_some_and(|(_, body)| body.len() >= 24 && looks_random(body))
}

/// `SK` + 32 hex (an API key SID).
fn twilio(token: &str) -> bool {
    token.len() == 34 && token.get(2..).is_some_and(|body| is_hex(body) && looks_random(body))
}

/// `SG.` + 22 + `.` + 43.
fn sendgrid(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3 && parts[1].len() == 22 && parts[2].len() == 43 && looks_random(parts[2])
}

/// A PyPI macaroon for pypi.org or test.pypi.org.
fn pypi(token: &str) -> bool {
    (token.starts_with("pypi-AgEIcHlwaS5vcmc") || token.starts_with("pypi-AgENdGVzdC5weXBpLm9yZw"))
        && token.len() >= 60
        && token.get(20..).is_some_and(looks_random)
}

fn huggingface(token: &str) -> bool {
    token.strip_prefix("hf_").is_some_and(|body| (30..=40).contains(&body.len()) && looks_random(body))
}

/// `secret_` + 43 (legacy integration token) or `ntn_` + 46.
fn notion(token: &str) -> bool {
    match token.split_once('_') {
        Some(("secret", body)) => body.len() == 43 && looks_random(body),
        Some(("ntn", body)) => (40..=50).contains(&body.len()) && looks_random(body),
        _ => false,
    }
}

fn linear(token: &str) -> bool {
    token.rsplit_once('_').is_some_and(|(_, body)| body.len() == 40 && looks_random(body))
}

fn atlassian(token: &str) -> bool {
    token.len() >= 150 && looks_random(token)
}

fn supabase(token: &str) -> bool {
    token.len() == 44 && token.get(4..).is_some_and(looks_random)
}

/// `sntryu_` + 64 hex (user token) or `sntrys_` + a long base64 payload (org token).
fn sentry(token: &str) -> bool {
    match token.split_once('_') {
        Some(("sntryu", body)) => body.len() == 64 && is_hex(body) && looks_random(body),
        Some(("sntrys", body)) => body.len() >= 60 && looks_random(body),
        _ => false,
    }
}

/// Three base64url parts whose header decodes to JSON naming an `alg`, and a signature.
fn jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(signature)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(decoded) = URL_SAFE_NO_PAD.decode(header) else { return false };
    let header_json = String::from_utf8_lossy(&decoded);
    header_json.contains("\"alg\"") && signature.len() >= 16 && looks_random(signature)
}

/// Passwords in `scheme://user:password@host`: kept unless a reference, a placeholder, a
/// well-known default, the user name repeated, or shorter than 6 characters.
fn url_passwords(value: &str, hits: &mut Candidates) {
    for caps in URL_USERINFO.captures_iter(value) {
        if hits.is_full() {
            return;
        }
        let (Some(user), Some(password)) = (caps.get(1), caps.get(2)) else { continue };
        let p = password.as_str();
        if p.len() >= 6
            && p != user.as_str()
            && !is_reference(p)
            && !is_placeholder(p)
            && !is_weak_word(p)
            && entropy(p) >= KNOWN_MIN_ENTROPY
        {
            hits.push(Hit {
                kind: Kind::UrlCredentials,
                start: password.start(),
                end: password.end(),
                rank: Rank::Url,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(value: &str) -> Vec<(Kind, &str)> {
        let mut hits = Candidates::default();
        scan(value, false, &mut hits);
        hits.as_slice().iter().map(|h| (h.kind, &value[h.start..h.end])).collect()
    }

    /// A classic GitHub-format token with a correct checksum.
    fn github(prefix: &str, random30: &str) -> String {
        format!("{prefix}{random30}{}", base62_6(crc32(random30.as_bytes())))
    }

    #[test]
    fn patterns_compile() {
        assert_eq!(COMPILED.len(), RULES.len());
        LazyLock::force(&URL_USERINFO);
    }

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(base62_6(0), "000000");
        assert_eq!(base62_6(61), "00000z");
        assert_eq!(base62_6(u32::MAX), "4gfFC3");
    }

    #[test]
    fn github_tokens_need_their_checksum() {
        let token = github("ghp_", "R4nd0mL00k1ngT0kenB0dy12345Abc");
        assert_eq!(kinds(&token), [(Kind::GithubToken, token.as_str())]);
        assert_eq!(kinds(&format!("Bearer {token}")), [(Kind::GithubToken, token.as_str())]);
        let mut broken = token.clone();
        broken.replace_range(10..11, "Q");
        assert_eq!(kinds(&broken), []);
        assert_eq!(kinds(&format!("x{token}")), []);
        assert_eq!(kinds(&format!("ghp_{}", "x".repeat(36))), []);
        let app = github("ghs_", "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0");
        assert_eq!(kinds(&app), [(Kind::GithubAppToken, app.as_str())]);
    }

    #[test]
    fn documented_examples_are_not_reported() {
        for v in [
            "AKIAIOSFODNN7EXAMPLE",
            "sk-...",
            "sk-proj-...",
            "ghp_...",
            "sk_live_xxxxxxxxxxxxxxxxxxxxxxxx",
            "xoxb-your-token-here",
            "https://user:password@example.com",
            "postgres://postgres:postgres@localhost:5432/db",
            "https://${USER}:${PASS}@host",
            "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----",
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;",
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.",
            "SKIP_THIS_FLAG",
        ] {
            assert_eq!(kinds(v), [], "{v}");
        }
    }

    #[test]
    fn single_class_bodies_are_names() {
        assert_eq!(kinds("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"), []);
    }

    #[test]
    fn url_passwords_and_pem_keys() {
        let v = "postgresql://app:Zq8rT2vL9xW4@db.internal:5432/app";
        assert_eq!(kinds(v), [(Kind::UrlCredentials, "Zq8rT2vL9xW4")]);
        let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7Vb8Jq2yXk3mP5Lw9Rt";
        let pem = format!("-----BEGIN PRIVATE KEY-----\\n{body}\\n{body}\\n-----END PRIVATE KEY-----\\n");
        assert_eq!(kinds(&pem), [(Kind::PrivateKey, pem.trim_end_matches("\\n"))]);
        let sa = format!("{{\"type\": \"service_account\", \"private_key\": \"{pem}\"}}");
        assert_eq!(kinds(&sa)[0].0, Kind::GcpServiceAccountKey);
    }
}

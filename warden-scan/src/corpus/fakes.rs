//! Fake credentials of every `Kind`, random but in each format's real shape: prefixes, lengths,
//! alphabets, and the CRC32 that GitHub and npm tokens end with. Every value comes from the
//! seeded RNG, so none is a real credential and a seed reproduces a corpus exactly.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::Rng;
use rand::seq::IndexedRandom;

use crate::Kind;
use crate::detect::{base62_6, crc32};

/// A fake credential: the text written into a file, and the part of it a scanner should report
/// (its fingerprint is taken over that part; the leak test searches every report for it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fake {
    /// What is written (an Azure connection string, a URL with a password, a PEM block, …).
    pub value: String,
    /// The credential inside `value` (the `AccountKey`, the password, …); equal to `value` for
    /// plain tokens.
    pub secret: String,
}

impl Fake {
    fn plain(value: String) -> Fake {
        Fake { secret: value.clone(), value }
    }
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const HEX: &[u8] = b"0123456789abcdef";
const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const DIGITS: &[u8] = b"0123456789";
const AWS_SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+";
/// What people put in passwords, minus what would break a URL, a shell word or a quote.
const PASSWORD: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!%^*-_+=~.";

/// `n` characters drawn from `alphabet`.
pub(crate) fn draw(rng: &mut impl Rng, alphabet: &[u8], n: usize) -> String {
    (0..n).map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())])).collect()
}

fn github_style(rng: &mut impl Rng, prefix: &str) -> String {
    let random = draw(rng, BASE62, 30);
    let check = base62_6(crc32(random.as_bytes()));
    format!("{prefix}{random}{check}")
}

/// A PEM private key of random bytes (shaped, not a parseable key).
pub(crate) fn pem(rng: &mut impl Rng, label: &str) -> String {
    let mut bytes = vec![0u8; rng.random_range(600..1200)];
    rng.fill(&mut bytes[..]);
    let body = STANDARD.encode(&bytes);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or("")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

fn jwt(rng: &mut impl Rng) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let iat: u64 = rng.random_range(1_600_000_000..1_800_000_000);
    let claims = format!(
        r#"{{"iss":"supabase","ref":"{}","role":"service_role","iat":{iat},"exp":{}}}"#,
        draw(rng, b"abcdefghijklmnopqrstuvwxyz", 20),
        iat + 315_360_000
    );
    let payload = URL_SAFE_NO_PAD.encode(claims);
    let signature = draw(rng, BASE64URL, 43);
    format!("{header}.{payload}.{signature}")
}

fn base64_bytes(rng: &mut impl Rng, n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rng.fill(&mut bytes[..]);
    STANDARD.encode(bytes)
}

/// A random password of 14–24 characters, starting with a letter or digit (one starting with
/// `-` after `--password` would read as another flag, to a CLI as to the scanner).
pub(crate) fn password(rng: &mut impl Rng) -> String {
    let n = rng.random_range(13..=23);
    format!("{}{}", draw(rng, BASE62, 1), draw(rng, PASSWORD, n))
}

/// A random opaque API token with no vendor prefix (the generic and Authorization cases).
pub(crate) fn opaque(rng: &mut impl Rng) -> String {
    let n = rng.random_range(24..=48);
    draw(rng, BASE62, n)
}

/// A fake credential of `kind`.
pub fn fake(kind: Kind, rng: &mut impl Rng) -> Fake {
    match kind {
        Kind::GithubToken => Fake::plain(github_style(rng, "ghp_")),
        Kind::GithubOauthToken => Fake::plain(github_style(rng, "gho_")),
        Kind::GithubAppToken => {
            let prefix = ["ghu_", "ghs_", "ghr_"].choose(rng).copied().unwrap_or("ghs_");
            Fake::plain(github_style(rng, prefix))
        }
        Kind::GithubFineGrainedToken => {
            Fake::plain(format!("github_pat_{}_{}", draw(rng, BASE62, 22), draw(rng, BASE62, 59)))
        }
        Kind::GitlabToken => Fake::plain(format!("glpat-{}", draw(rng, BASE62, 20))),
        Kind::SlackToken => Fake::plain(if rng.random_bool(0.5) {
            format!("xoxb-{}-{}-{}", draw(rng, DIGITS, 12), draw(rng, DIGITS, 13), draw(rng, BASE62, 24))
        } else {
            format!(
                "xoxp-{}-{}-{}-{}",
                draw(rng, DIGITS, 12),
                draw(rng, DIGITS, 12),
                draw(rng, DIGITS, 13),
                draw(rng, HEX, 32)
            )
        }),
        Kind::SlackWebhook => Fake::plain(format!(
            "https://hooks.slack.com/services/T{}/B{}/{}",
            draw(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 10),
            draw(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 10),
            draw(rng, BASE62, 24)
        )),
        Kind::AwsAccessKeyId => {
            let prefix = if rng.random_bool(0.8) { "AKIA" } else { "ASIA" };
            Fake::plain(format!("{prefix}{}", draw(rng, BASE32, 16)))
        }
        Kind::AwsSecretAccessKey => Fake::plain(draw(rng, AWS_SECRET, 40)),
        Kind::GcpServiceAccountKey => {
            let project = format!("proj-{}", draw(rng, b"abcdefghijklmnopqrstuvwxyz0123456789", 8));
            let key = pem(rng, "PRIVATE KEY");
            let document = serde_json::json!({
                "type": "service_account",
                "project_id": project,
                "private_key_id": draw(rng, HEX, 40),
                "private_key": key,
                "client_email": format!("mcp@{project}.iam.gserviceaccount.com"),
                "client_id": draw(rng, DIGITS, 21),
                "token_uri": "https://oauth2.googleapis.com/token",
            });
            Fake { value: document.to_string(), secret: key }
        }
        Kind::GoogleApiKey => Fake::plain(format!("AIza{}", draw(rng, BASE64URL, 35))),
        Kind::AzureConnectionString => {
            let key = base64_bytes(rng, 64);
            let account = draw(rng, b"abcdefghijklmnopqrstuvwxyz0123456789", 12);
            Fake {
                value: format!(
                    "DefaultEndpointsProtocol=https;AccountName={account};AccountKey={key};EndpointSuffix=core.windows.net"
                ),
                secret: key,
            }
        }
        Kind::OpenaiKey => Fake::plain(if rng.random_bool(0.7) {
            format!("sk-proj-{}T3BlbkFJ{}", draw(rng, BASE64URL, 74), draw(rng, BASE64URL, 74))
        } else {
            format!("sk-{}T3BlbkFJ{}", draw(rng, BASE62, 20), draw(rng, BASE62, 20))
        }),
        Kind::AnthropicKey => Fake::plain(format!("sk-ant-api03-{}AA", draw(rng, BASE64URL, 93))),
        Kind::StripeKey => {
            let prefix = ["sk_live_", "rk_live_", "sk_test_"].choose(rng).copied().unwrap_or("sk_live_");
            let n = if rng.random_bool(0.5) { 24 } else { 99 };
            Fake::plain(format!("{prefix}{}", draw(rng, BASE62, n)))
        }
        Kind::TwilioKey => Fake::plain(format!("SK{}", draw(rng, HEX, 32))),
        Kind::SendgridKey => Fake::plain(format!("SG.{}.{}", draw(rng, BASE64URL, 22), draw(rng, BASE64URL, 43))),
        Kind::DatadogKey => {
            let n = if rng.random_bool(0.5) { 32 } else { 40 };
            Fake::plain(draw(rng, HEX, n))
        }
        Kind::NpmToken => Fake::plain(github_style(rng, "npm_")),
        Kind::PypiToken => Fake::plain(format!("pypi-AgEIcHlwaS5vcmc{}", draw(rng, BASE64URL, 150))),
        Kind::HuggingfaceToken => Fake::plain(format!("hf_{}", draw(rng, LETTERS, 34))),
        Kind::NotionToken => Fake::plain(if rng.random_bool(0.5) {
            format!("ntn_{}{}", draw(rng, DIGITS, 11), draw(rng, BASE62, 35))
        } else {
            format!("secret_{}", draw(rng, BASE62, 43))
        }),
        Kind::LinearKey => Fake::plain(format!("lin_api_{}", draw(rng, BASE62, 40))),
        Kind::AtlassianToken => {
            Fake::plain(format!("ATATT3xFfGF0{}={}", draw(rng, BASE64URL, 170), draw(rng, b"0123456789ABCDEF", 8)))
        }
        Kind::SupabaseToken => Fake::plain(format!("sbp_{}", draw(rng, HEX, 40))),
        Kind::SentryToken => Fake::plain(format!("sntryu_{}", draw(rng, HEX, 64))),
        Kind::PrivateKey => {
            let label = ["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"]
                .choose(rng)
                .copied()
                .unwrap_or("PRIVATE KEY");
            Fake::plain(pem(rng, label))
        }
        Kind::UrlCredentials => {
            let n = rng.random_range(12..=24);
            let secret = draw(rng, BASE62, n);
            let host = draw(rng, b"abcdefghijklmnopqrstuvwxyz", 6);
            let value = match rng.random_range(0..4) {
                0 => format!("postgresql://app_user:{secret}@{host}.internal:5432/app"),
                1 => format!("mongodb+srv://admin:{secret}@cluster0.{host}.mongodb.net/?retryWrites=true"),
                2 => format!("redis://:{secret}@{host}:6379/0"),
                _ => format!("https://deploy:{secret}@registry.{host}.example.com/simple"),
            };
            Fake { value, secret }
        }
        Kind::AuthorizationHeader => Fake::plain(opaque(rng)),
        Kind::Jwt => Fake::plain(jwt(rng)),
        // Passwords (`password`) are planted only under password names, where shorter values
        // count; this is the shape an API key or token has.
        Kind::GenericSecret => Fake::plain(if rng.random_bool(0.6) {
            opaque(rng)
        } else {
            let n = rng.random_range(24..=48);
            base64_bytes(rng, n)
        }),
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::detect::pem_fingerprint_input;
    use crate::detect::tests_support::detect_value;

    #[test]
    fn every_kind_is_found_by_shape_or_name() {
        let mut rng = StdRng::seed_from_u64(7);
        for &kind in Kind::ALL {
            for _ in 0..50 {
                let fake = fake(kind, &mut rng);
                // Private keys are compared by their base64 body: inside a JSON string the
                // line breaks are `\n` escapes.
                let pem = matches!(kind, Kind::PrivateKey | Kind::GcpServiceAccountKey);
                let normal = |s: &str| if pem { pem_fingerprint_input(s) } else { s.to_string() };
                assert!(fake.value.contains(fake.secret.lines().next().unwrap_or("")));
                // A name that says nothing for shape-only kinds; a fitting name for the rest.
                let name = match kind {
                    Kind::AwsSecretAccessKey => "AWS_SECRET_ACCESS_KEY",
                    Kind::DatadogKey => "DD_API_KEY",
                    Kind::AuthorizationHeader => "Authorization",
                    Kind::GenericSecret => "API_KEY",
                    _ => "value",
                };
                let value = if kind == Kind::AuthorizationHeader {
                    format!("Bearer {}", fake.value)
                } else {
                    fake.value.clone()
                };
                let found = detect_value(name, &value);
                assert_eq!(found.len(), 1, "{kind:?}: {value} -> {found:?}");
                assert_eq!(found[0].0, kind, "{value}");
                assert_eq!(normal(&found[0].1), normal(&fake.secret), "{kind:?}");
            }
        }
    }
}

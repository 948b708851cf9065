//! Fake credentials of every `Kind`, random but in each format's real shape: prefixes, lengths,
//! alphabets, the CRC32 that GitHub and npm tokens end with, and private keys with the structure
//! real ones have (DER for PKCS#1, PKCS#8 and SEC1; OpenSSH's `openssh-key-v1` framing), whose
//! zero bytes put long `AAAA` runs in the base64 a detector must not mistake for filler. Every
//! value comes from the seeded RNG, so none is a real credential and a seed reproduces a corpus
//! exactly.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::Rng;
use rand::seq::IndexedRandom;

use warden_scan::Kind;

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

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`), table-driven: written here from the
/// standard rather than taken from the detector, so a fault in either shows as missed tokens.
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut n = 0;
        while n < 256 {
            let mut c = n as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[n] = c;
            n += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |crc, &b| TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8))
}

/// `n` as 6 base62 digits (`0-9A-Za-z`), most significant first, as GitHub writes the checksum.
fn base62_6(n: u32) -> String {
    let mut digits = [b'0'; 6];
    let mut rest = n;
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[(rest % 62) as usize];
        rest /= 62;
    }
    digits.iter().map(|&b| char::from(b)).collect()
}

/// `n` random bytes.
fn bytes(rng: &mut impl Rng, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    rng.fill(&mut out[..]);
    out
}

/// A DER length.
fn der_length(len: usize, out: &mut Vec<u8>) {
    match len {
        0..=0x7f => out.push(len as u8),
        0x80..=0xff => out.extend([0x81, len as u8]),
        _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
    }
}

/// A DER element: tag, length, contents.
fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_length(contents.len(), &mut out);
    out.extend(contents);
    out
}

/// A DER INTEGER of `n` random bytes, positive (a leading zero byte when the top bit is set, as
/// RSA moduli and primes have).
fn der_random_integer(rng: &mut impl Rng, n: usize) -> Vec<u8> {
    let mut value = bytes(rng, n);
    value[0] |= 0x80;
    der(0x02, &[&[0u8][..], &value].concat())
}

/// A PKCS#1 `RSAPrivateKey` of a 2048-bit key's sizes, random numbers in it.
fn pkcs1_rsa(rng: &mut impl Rng) -> Vec<u8> {
    let mut fields = der(0x02, &[0]); // version
    fields.extend(der_random_integer(rng, 256)); // modulus
    fields.extend(der(0x02, &[0x01, 0x00, 0x01])); // publicExponent 65537
    for size in [256, 128, 128, 128, 128, 128] {
        // privateExponent, prime1, prime2, exponent1, exponent2, coefficient
        fields.extend(der_random_integer(rng, size));
    }
    der(0x30, &fields)
}

/// A PKCS#8 `PrivateKeyInfo`: RSA (what Google issues for service accounts) or Ed25519.
fn pkcs8(rng: &mut impl Rng, rsa: bool) -> Vec<u8> {
    let (algorithm, key) = if rsa {
        // rsaEncryption, NULL parameters.
        let oid = der(0x06, &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01]);
        (der(0x30, &[oid, vec![0x05, 0x00]].concat()), pkcs1_rsa(rng))
    } else {
        // id-Ed25519; the key is an OCTET STRING of the 32-byte seed.
        (der(0x30, &der(0x06, &[0x2b, 0x65, 0x70])), der(0x04, &bytes(rng, 32)))
    };
    der(0x30, &[der(0x02, &[0]), algorithm, der(0x04, &key)].concat())
}

/// A SEC1 `ECPrivateKey` on P-256.
fn sec1_p256(rng: &mut impl Rng) -> Vec<u8> {
    let private = der(0x04, &bytes(rng, 32));
    let curve = der(0xa0, &der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]));
    let public = der(0xa1, &der(0x03, &[&[0x00, 0x04][..], &bytes(rng, 64)].concat()));
    der(0x30, &[der(0x02, &[1]), private, curve, public].concat())
}

/// An SSH wire-format string: a big-endian u32 length, then the bytes.
fn ssh_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend(u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend(bytes);
}

/// An unencrypted OpenSSH Ed25519 key as `ssh-keygen` writes it (OpenSSH's `PROTOCOL.key`):
/// magic, cipher and KDF `none`, empty KDF options, one key, the public blob, then the private
/// section with its repeated check integer, key pair, comment and padding.
fn openssh_ed25519(rng: &mut impl Rng) -> Vec<u8> {
    let public = bytes(rng, 32);
    let mut blob = Vec::new();
    ssh_string(&mut blob, b"ssh-ed25519");
    ssh_string(&mut blob, &public);
    let mut key = b"openssh-key-v1\0".to_vec();
    ssh_string(&mut key, b"none");
    ssh_string(&mut key, b"none");
    ssh_string(&mut key, b"");
    key.extend(1u32.to_be_bytes());
    ssh_string(&mut key, &blob);
    let check = bytes(rng, 4);
    let mut private = [check.as_slice(), check.as_slice()].concat();
    ssh_string(&mut private, b"ssh-ed25519");
    ssh_string(&mut private, &public);
    ssh_string(&mut private, &[bytes(rng, 32), public].concat());
    ssh_string(&mut private, format!("{}@laptop", draw(rng, b"abcdefghijklmnopqrstuvwxyz", 6)).as_bytes());
    let mut pad = 1;
    while !private.len().is_multiple_of(8) {
        private.push(pad);
        pad += 1;
    }
    ssh_string(&mut key, &private);
    key
}

/// An RSA key in PKCS#8 PEM, as Google issues a service account's.
fn pem_rsa_pkcs8(rng: &mut impl Rng) -> String {
    let body = STANDARD.encode(pkcs8(rng, true));
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or("")).collect();
    format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
}

/// A PEM private key with `label`'s real structure and random key material (not a usable key:
/// the numbers are not primes, the points not on the curve). OpenSSH wraps its base64 at 70
/// characters, the rest at 64.
pub(crate) fn pem(rng: &mut impl Rng, label: &str) -> String {
    let (der, width) = match label {
        "RSA PRIVATE KEY" => (pkcs1_rsa(rng), 64),
        "EC PRIVATE KEY" => (sec1_p256(rng), 64),
        "OPENSSH PRIVATE KEY" => (openssh_ed25519(rng), 70),
        _ => {
            let rsa = rng.random_bool(0.7);
            (pkcs8(rng, rsa), 64)
        }
    };
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body.as_bytes().chunks(width).map(|c| std::str::from_utf8(c).unwrap_or("")).collect();
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
            let key = pem_rsa_pkcs8(rng);
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
    use std::path::Path;

    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use warden_scan::{FingerprintKey, Limits, Scanner};

    use super::*;

    #[test]
    fn checksums_match_zlib_and_github() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(base62_6(0), "000000");
        assert_eq!(base62_6(61), "00000z");
        assert_eq!(base62_6(u32::MAX), "4gfFC3");
    }

    #[test]
    fn keys_have_their_real_structure() {
        let mut rng = StdRng::seed_from_u64(3);
        let body = |pem: &str| pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
        let openssh = body(&pem(&mut rng, "OPENSSH PRIVATE KEY"));
        assert!(
            openssh.starts_with("b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZWQyNTUxOQAAAC")
        );
        assert!(body(&pem(&mut rng, "RSA PRIVATE KEY")).starts_with("MIIE"));
        assert!(body(&pem(&mut rng, "EC PRIVATE KEY")).starts_with("MHcCAQEEI"));
        assert!(body(&pem_rsa_pkcs8(&mut rng)).starts_with("MIIE"));
        let decoded = STANDARD.decode(body(&pem_rsa_pkcs8(&mut rng))).unwrap();
        // SEQUENCE { INTEGER 0, SEQUENCE { rsaEncryption, NULL }, OCTET STRING { … } }.
        let prefix = [
            0x02, 0x01, 0x00, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
            0x04, 0x82,
        ];
        assert_eq!((&decoded[..2], &decoded[4..24]), (&[0x30, 0x82][..], &prefix[..]));
    }

    /// What the scanner fingerprints a secret over: a PEM key's base64 body, else the text.
    fn fingerprint_input(kind: Kind, secret: &str) -> String {
        if matches!(kind, Kind::PrivateKey | Kind::GcpServiceAccountKey) {
            secret.lines().filter(|l| !l.starts_with("-----")).collect()
        } else {
            secret.to_string()
        }
    }

    #[test]
    fn every_kind_is_found_by_shape_or_name() {
        let key = FingerprintKey::new([3; 32]);
        let scanner = Scanner::new(key.clone(), Limits::default());
        let mut rng = StdRng::seed_from_u64(7);
        for &kind in Kind::ALL {
            for _ in 0..50 {
                let fake = fake(kind, &mut rng);
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
                let text = serde_json::json!({ "mcpServers": { "s": { "env": { name: value } } } }).to_string();
                let found = scanner.scan_text(Path::new("mcp.json"), &text).expect("parses");
                assert_eq!(found.len(), 1, "{kind:?}: {value} -> {found:?}");
                assert_eq!(found[0].kind, kind, "{value}");
                let expected = key.fingerprint(fingerprint_input(kind, &fake.secret).as_bytes());
                assert_eq!(found[0].fingerprint, expected, "{kind:?}: fingerprint not over {}", fake.secret);
            }
        }
    }
}

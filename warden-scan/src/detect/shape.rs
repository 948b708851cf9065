//! What a value looks like, independent of where it sits: its Shannon entropy and character
//! classes (how random it is), and the shapes that are never a credential however they are named
//! — UUIDs, digests, versions, paths, URLs, e-mail addresses, numbers, environment-variable
//! names, lower-case identifiers, and base64 of ordinary text.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// Shannon entropy of `value`'s bytes, in bits per byte.
pub(crate) fn entropy(value: &str) -> f64 {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[usize::from(b)] += 1;
    }
    let len = bytes.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| f64::from(c) / len).map(|p| -p * p.log2()).sum()
}

/// How many of lower-case letters, upper-case letters, digits and other characters appear.
pub(crate) fn char_classes(value: &str) -> usize {
    let mut seen = [false; 4];
    for c in value.chars() {
        let class = if c.is_ascii_lowercase() {
            0
        } else if c.is_ascii_uppercase() {
            1
        } else if c.is_ascii_digit() {
            2
        } else {
            3
        };
        seen[class] = true;
    }
    seen.iter().filter(|&&s| s).count()
}

pub(crate) fn is_hex(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// 8-4-4-4-12 hex digits.
pub(crate) fn is_uuid(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    parts.len() == 5 && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && is_hex(p))
}

/// The length of an MD5, SHA-1, SHA-256 or SHA-512 digest in hex.
pub(crate) fn is_hex_digest(value: &str) -> bool {
    matches!(value.len(), 32 | 40 | 64 | 128) && is_hex(value)
}

/// `1.2.3`, `v2.0.0-beta.1`, `^1.4`, `>=3.10`.
pub(crate) fn is_version(value: &str) -> bool {
    let core = value.trim_start_matches(['v', 'V', '^', '~', '=', '>', '<']);
    let core = core.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() >= 2 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit() || b == b'x'))
}

/// A file path or a package specifier (`/usr/bin/node`, `~/.env`, `./x`, `C:\x`,
/// `@modelcontextprotocol/server-github`). Base64 secrets can start with `/` too, so a path must
/// also read like one: no `+` or `=`, and no segment that looks random (16 or more characters
/// mixing upper case, lower case and digits).
pub(crate) fn is_path(value: &str) -> bool {
    let b = value.as_bytes();
    let rooted = value.starts_with('/')
        || value.starts_with("~/")
        || value.starts_with("./")
        || value.starts_with("../")
        || value.starts_with('\\')
        || (b.len() > 2 && b[0].is_ascii_alphabetic() && b[1] == b':' && (b[2] == b'\\' || b[2] == b'/'))
        || (value.starts_with('@') && value.contains('/'));
    let random_segment = value.split(['/', '\\']).any(|segment| {
        segment.len() >= 16
            && segment.bytes().any(|c| c.is_ascii_uppercase())
            && segment.bytes().any(|c| c.is_ascii_lowercase())
            && segment.bytes().any(|c| c.is_ascii_digit())
    });
    rooted && !value.contains(['+', '=']) && !random_segment
}

/// Anything with a scheme.
pub(crate) fn is_url(value: &str) -> bool {
    value.contains("://")
}

pub(crate) fn is_email(value: &str) -> bool {
    match value.split_once('@') {
        Some((user, domain)) => {
            !user.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
        None => false,
    }
}

/// An integer or decimal, or a boolean word.
pub(crate) fn is_number_or_bool(value: &str) -> bool {
    let digits = value.trim_start_matches(['-', '+']);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        || matches!(value.to_ascii_lowercase().as_str(), "true" | "false" | "yes" | "no" | "on" | "off")
}

/// `GITHUB_TOKEN`: the name of a variable (Codex's `env_key = "OPENAI_API_KEY"`), not its value.
pub(crate) fn is_env_var_name(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_uppercase()
        && value.contains('_')
        && b.iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

/// `github-token`, `my_service.key`: lower-case words and separators, no digits — an
/// identifier (an input id, a keychain entry name), never a random secret, which has digits or
/// capitals.
pub(crate) fn is_identifier_like(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_lowercase() || matches!(b, b'-' | b'_' | b'.'))
}

/// `Win32_System`, `com.example.Service`, `MyApp-Prod`: words joined by separators, each word
/// lower-case, Capitalised or a short ACRONYM, digits only at a word's end. Random secrets break
/// this within a few characters (a capital after a capital, a letter after a digit), and have no
/// separators at all when base62. The cost: a password made of words (`Summer_Time2024`) reads
/// as an identifier and is not reported.
pub(crate) fn is_code_identifier(value: &str) -> bool {
    let separators = ['_', '-', '.', ':', '/'];
    if !value.contains(separators) {
        return false;
    }
    value.split(separators).all(|piece| {
        !piece.is_empty()
            && piece.bytes().all(|b| b.is_ascii_alphanumeric())
            && camel_words(piece).iter().all(|w| is_word(w))
    })
}

/// `piece` split before each capital that follows a lower-case letter or digit.
fn camel_words(piece: &str) -> Vec<&str> {
    let bytes = piece.as_bytes();
    let mut words = Vec::new();
    let mut start = 0;
    for i in 1..bytes.len() {
        if bytes[i].is_ascii_uppercase()
            && !bytes[i - 1].is_ascii_uppercase()
            && let Some(word) = piece.get(start..i)
        {
            words.push(word);
            start = i;
        }
    }
    words.extend(piece.get(start..));
    words
}

/// `word`, `Word`, `word2`, `ACME`, `HTTP2`, `2024`.
fn is_word(w: &str) -> bool {
    let letters = w.trim_end_matches(|c: char| c.is_ascii_digit());
    let digits = w.len() - letters.len();
    if letters.is_empty() {
        return digits <= 4;
    }
    let rest = letters.strip_prefix(|c: char| c.is_ascii_uppercase()).unwrap_or(letters);
    let capitalised_or_lower = rest.bytes().all(|b| b.is_ascii_lowercase());
    let acronym = letters.len() <= 5 && letters.bytes().all(|b| b.is_ascii_uppercase());
    capitalised_or_lower || acronym
}

/// Base64 of printable prose (`aGVsbG8gd29ybGQ=` is "hello world"): it decodes to ASCII text
/// with a space in it and mostly letters. Secrets decode to random bytes or to structured
/// tokens without spaces.
pub(crate) fn is_base64_text(value: &str) -> bool {
    let decoded = [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD].iter().find_map(|e| e.decode(value).ok());
    let Some(bytes) = decoded else { return false };
    if bytes.len() < 4 || !bytes.iter().all(|&b| (0x20..0x7f).contains(&b) || b == b'\n' || b == b'\t') {
        return false;
    }
    let letters = bytes.iter().filter(|b| b.is_ascii_alphabetic()).count();
    bytes.contains(&b' ') && letters * 2 >= bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_thresholds_behave() {
        assert_eq!(entropy(""), 0.0);
        assert_eq!(entropy("aaaa"), 0.0);
        assert!((entropy("abcd") - 2.0).abs() < 1e-9);
        assert!(entropy("password") < 3.0);
        assert!(entropy("test") < 3.0);
        assert!(entropy("q8Zr2LmX0pVb7NcT4yWe") > 4.0);
    }

    #[test]
    fn classes() {
        assert_eq!(char_classes("abc"), 1);
        assert_eq!(char_classes("abc123"), 2);
        assert_eq!(char_classes("aB1-"), 4);
    }

    #[test]
    fn non_secret_shapes() {
        assert!(is_uuid("123e4567-e89b-12d3-a456-426614174000"));
        assert!(!is_uuid("123e4567-e89b-12d3-a456-42661417400"));
        assert!(is_hex_digest("da39a3ee5e6b4b0d3255bfef95601890afd80709"));
        assert!(is_hex_digest(&"a".repeat(64)));
        assert!(!is_hex_digest(&"a".repeat(63)));
        for v in ["1.2.3", "v2.0.0-beta.1", "^1.4", ">=3.10", "1.x"] {
            assert!(is_version(v), "{v}");
        }
        assert!(!is_version("1"));
        assert!(!is_version("a.b"));
        for p in ["/usr/bin/node", "~/.env", "./x", "C:\\x", "@modelcontextprotocol/server-github"] {
            assert!(is_path(p), "{p}");
        }
        assert!(!is_path("abc/def"));
        assert!(!is_path("/kjj3K3fwNwbrmRnA++LLR9MJMKYxqj/bEsYrgZI"));
        assert!(!is_path("/kjj3K3fwNwbrmRnALLR9MJMKYxqj0bEsYrgZI"));
        assert!(is_path("/home/user/.config/gcloud/application_default_credentials.json"));
        assert!(is_path("/Users/Alice/Keys/key-2024.pem"));
        assert!(is_email("a@b.co"));
        assert!(!is_email("user:pass@host"));
        assert!(is_number_or_bool("8080") && is_number_or_bool("true") && is_number_or_bool("-1.5"));
        assert!(is_env_var_name("OPENAI_API_KEY") && !is_env_var_name("AKIAABCDEFGHIJKLMNOP"));
        assert!(is_identifier_like("github-token") && !is_identifier_like("gh-t0ken"));
        for v in ["Win32_System", "com.example.Service", "MyApp-Prod", "HTTP2_Server:v2", "acme/tools-2024"] {
            assert!(is_code_identifier(v), "{v}");
        }
        for v in ["q8Zr2LmX0pVb7NcT4yWe", "Q8zr_2LmX0pVb7NcT4yWe", "abc", "kjj3K3fw/NwbrmRnA", "a+b_c"] {
            assert!(!is_code_identifier(v), "{v}");
        }
        assert!(is_base64_text("aGVsbG8gd29ybGQ="));
        assert!(is_base64_text("dGhpcyBpcyBhIHRlc3Q"));
        assert!(!is_base64_text("dXNlcjpwYXNz")); // user:pass
        assert!(!is_base64_text("q8Zr2LmX0pVb7NcT4yWe"));
    }
}

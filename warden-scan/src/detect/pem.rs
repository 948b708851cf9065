//! PEM private keys (`-----BEGIN … PRIVATE KEY-----` to its `-----END`) found anywhere in a
//! string, with real or `\n`-escaped line breaks (a key inside a JSON string inside a string),
//! and what their fingerprint is taken over: the base64 body alone, so the same key written with
//! different line breaks or escaping has one fingerprint.

use super::placeholder::is_template;
use super::shape::entropy;
use super::{Candidates, Hit, Rank};
use crate::Kind;

/// PEM private keys (`-----BEGIN … PRIVATE KEY-----` to its `-----END`), with real or `\n`-escaped
/// line breaks (a key inside a JSON string inside a string).
///
/// Each BEGIN is paired with the first END after it, found by binary search over END positions
/// collected in one pass: hostile text of many BEGINs without ENDs costs O(n log n), not a scan
/// to the end of the string per BEGIN.
pub(super) fn private_keys(value: &str, service_account: bool, hits: &mut Candidates) {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    /// A label is at most this long (`ENCRYPTED PRIVATE KEY`, `OPENSSH PRIVATE KEY`).
    const MAX_LABEL: usize = 40;
    let ends: Vec<usize> = value.match_indices(END).map(|(at, _)| at).collect();
    let mut taken_until = 0;
    for (begin, _) in value.match_indices(BEGIN) {
        if hits.is_full() {
            return;
        }
        if begin < taken_until {
            continue;
        }
        let after_begin = begin + BEGIN.len();
        let Some(window) = value.as_bytes().get(after_begin..value.len().min(after_begin + MAX_LABEL + 5)) else {
            continue;
        };
        let Some(label_len) = window.windows(5).position(|w| w == b"-----") else { continue };
        let Some(label) = value.get(after_begin..after_begin + label_len) else { continue };
        if !label.ends_with("PRIVATE KEY") {
            continue;
        }
        let body_start = after_begin + label_len + 5;
        let Some(&end_at) = ends.get(ends.partition_point(|&e| e < body_start)) else { continue };
        let after_end = end_at + END.len();
        let closing = value.get(after_end..).and_then(|rest| rest.strip_prefix(label));
        if !closing.is_some_and(|rest| rest.starts_with("-----")) {
            continue;
        }
        let end = after_end + label.len() + 5;
        taken_until = end;
        let Some(body) = value.get(body_start..end_at) else { continue };
        if is_key_body(body) {
            let kind = if service_account { Kind::GcpServiceAccountKey } else { Kind::PrivateKey };
            hits.push(Hit { kind, start: begin, end, rank: Rank::Format });
        }
    }
}

/// A PEM body that holds a key rather than a template's filler: enough base64, no `...`, no
/// placeholder, not filler (`AAAA…`, `xxxx…`, which sit far below 3 bits per character).
///
/// Not the repeated-character rule other values get (`is_placeholder`): a key's base64 is DER or
/// OpenSSH framing with runs in it — every unencrypted OpenSSH key starts
/// `b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAAB`, nine `A`s for the zero bytes of its
/// empty KDF options and key count.
fn is_key_body(body: &str) -> bool {
    let base64_body = pem_body(body);
    base64_body.len() >= 64 && !is_template(body) && !is_template(&base64_body) && entropy(&base64_body) >= 3.0
}

/// What a PEM private key's fingerprint is taken over: the base64 of its body, without the
/// BEGIN/END lines.
pub(crate) fn pem_fingerprint_input(block: &str) -> String {
    let body_start = block.find("-----BEGIN ").and_then(|b| {
        let label_start = b + "-----BEGIN ".len();
        block.get(label_start..)?.find("-----").map(|e| label_start + e + 5)
    });
    let body = match (body_start, block.rfind("-----END ")) {
        (Some(start), Some(end)) => block.get(start..end),
        _ => None,
    };
    pem_body(body.unwrap_or(block))
}

/// The base64 characters of a PEM body: line breaks (real or `\n`-escaped), spaces and header
/// lines (`Proc-Type: 4,ENCRYPTED`) dropped. This is also what a private key's fingerprint is
/// taken over, so the same key written with different line breaks has one fingerprint.
fn pem_body(body: &str) -> String {
    let unescaped = body.replace("\\n", "\n").replace("\\r", "\n");
    unescaped
        .lines()
        .filter(|line| !line.contains(':'))
        .flat_map(|line| line.chars())
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::placeholder::is_placeholder;
    use super::*;

    fn keys(value: &str) -> Vec<(Kind, &str)> {
        let mut hits = Candidates::default();
        private_keys(value, false, &mut hits);
        hits.as_slice().iter().map(|h| (h.kind, &value[h.start..h.end])).collect()
    }

    #[test]
    fn blocks_with_escaped_and_real_breaks() {
        let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7Vb8Jq2yXk3mP5Lw9Rt";
        let pem = format!("-----BEGIN PRIVATE KEY-----\\n{body}\\n{body}\\n-----END PRIVATE KEY-----\\n");
        let found = keys(&pem);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, Kind::PrivateKey);
        assert_eq!(pem_body(&format!("\n{body}\n{body}\n")), format!("{body}{body}"));
        let block = found[0].1;
        assert_eq!(pem_fingerprint_input(block), format!("{body}{body}"));
        let real_breaks = block.replace("\\n", "\n");
        assert_eq!(pem_fingerprint_input(&real_breaks), format!("{body}{body}"));
        assert_eq!(keys("-----BEGIN PRIVATE KEY-----END PRIVATE KEY-----"), []);
        // Two blocks, different labels, one string.
        let two = format!("{pem} and -----BEGIN EC PRIVATE KEY-----\n{body}\n-----END EC PRIVATE KEY-----");
        assert_eq!(keys(&two).len(), 2);
        // A mismatched END does not close a block.
        assert_eq!(keys(&format!("-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----")), []);
        // A template's key is not a key.
        assert_eq!(keys("-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----"), []);
    }

    #[test]
    fn hostile_pem_text_is_fast() {
        let text = "-----BEGIN RSA PRIVATE KEY-----".repeat(40_000);
        let started = std::time::Instant::now();
        assert_eq!(keys(&text), []);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    /// Bytes that look random, the same for a seed.
    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[3]
            })
            .collect()
    }

    fn ssh_string(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend(u32::try_from(bytes.len()).unwrap().to_be_bytes());
        out.extend(bytes);
    }

    fn pem_block(label: &str, der: &[u8]) -> String {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD;
        let body = STANDARD.encode(der);
        let lines: Vec<&str> = body.as_bytes().chunks(70).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
    }

    /// An unencrypted OpenSSH ed25519 key in the real layout (`PROTOCOL.key`), random key bytes.
    fn openssh_ed25519(seed: u64) -> String {
        let public = noise(seed, 32);
        let mut blob = Vec::new();
        ssh_string(&mut blob, b"ssh-ed25519");
        ssh_string(&mut blob, &public);
        let mut key = b"openssh-key-v1\0".to_vec();
        ssh_string(&mut key, b"none");
        ssh_string(&mut key, b"none");
        ssh_string(&mut key, b"");
        key.extend(1u32.to_be_bytes());
        ssh_string(&mut key, &blob);
        let check = noise(seed + 1, 4);
        let mut private = [check.as_slice(), check.as_slice()].concat();
        ssh_string(&mut private, b"ssh-ed25519");
        ssh_string(&mut private, &public);
        ssh_string(&mut private, &[noise(seed + 2, 32), public.clone()].concat());
        ssh_string(&mut private, b"dev@laptop");
        let mut pad = 1;
        while !private.len().is_multiple_of(8) {
            private.push(pad);
            pad += 1;
        }
        ssh_string(&mut key, &private);
        pem_block("OPENSSH PRIVATE KEY", &key)
    }

    #[test]
    fn openssh_keys_are_found_despite_their_zero_runs() {
        for seed in 1..=20 {
            let pem = openssh_ed25519(seed);
            let body = pem_fingerprint_input(&pem);
            assert!(body.starts_with("b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAAB"), "{pem}");
            // What once rejected every unencrypted OpenSSH key: a run of nine `A`s.
            assert!(is_placeholder(&body));
            assert_eq!(keys(&pem), [(Kind::PrivateKey, pem.trim_end())], "{pem}");
            let escaped = pem.replace('\n', "\\n");
            assert_eq!(keys(&escaped).len(), 1);
        }
    }

    #[test]
    fn der_keys_with_zero_runs_are_found() {
        // PKCS#8 RSA: the DER prefix, then an integer with a run of zero bytes.
        let prefix = [
            0x30, 0x82, 0x04, 0xbd, 0x02, 0x01, 0x00, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
            0x01, 0x01, 0x05, 0x00, 0x04, 0x82, 0x04, 0xa7, 0x30, 0x82, 0x04, 0xa3, 0x02, 0x01, 0x00, 0x02, 0x82, 0x01,
            0x01, 0x00,
        ];
        let der = [&prefix[..], &noise(9, 40), &[0u8; 12], &noise(10, 600)].concat();
        let pem = pem_block("PRIVATE KEY", &der);
        assert!(pem_fingerprint_input(&pem).contains("AAAAAAAA"));
        assert_eq!(keys(&pem), [(Kind::PrivateKey, pem.trim_end())]);
        // Filler is still not a key.
        let filler =
            format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----", "A".repeat(400));
        assert_eq!(keys(&filler), []);
    }
}

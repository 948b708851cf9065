//! Detection: the credentials in one string of a configuration file, as byte ranges of that
//! string with their `Kind`. Never a copy of the value — the caller fingerprints the range and
//! drops it.
//!
//! Three sources, most specific first:
//! 1. `known` — formats recognised by shape anywhere in the string (a vendor prefix, a PEM block,
//!    a password in a URL);
//! 2. `named` applied to the name the string sits under (its key, or the `--flag` before it);
//! 3. `named` applied to names *inside* the string (`pairs`): `--api-key=VALUE`, `KEY=VALUE`,
//!    `--token VALUE`, `Authorization: Bearer VALUE`, `?api_key=VALUE`, `Password=VALUE;`.
//!
//! A value under an `Authorization` name, or `<scheme> <credential>` under any name that says
//! header (`AUTH_HEADER=Bearer …`, as mcp-remote is configured), is judged as an Authorization
//! header's; anything else under a name by the secret-name rule.
//!
//! Where two hits overlap, the more specific one is kept (`Rank`): `Bearer ghp_…` is a GitHub
//! token, not an Authorization header; `API_KEY=sk-ant-…` an Anthropic key, not a generic secret.
//!
//! Bounded per field whatever the string holds (`Candidates`, `MAX_HITS_PER_FIELD`), with
//! overlaps resolved in O(n log n); offsets are computed from the text, so every range is taken
//! with `get`, never a slice that could panic (and print the string).

mod known;
mod named;
mod pem;
mod placeholder;
mod shape;

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::Kind;
use crate::fields::Field;

pub(crate) use pem::pem_fingerprint_input;

/// A credential inside a field's value: `value[start..end]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    pub(crate) kind: Kind,
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) rank: Rank,
}

/// How specific a hit is; where hits overlap the lowest rank wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rank {
    /// A known format recognised by its shape.
    Format,
    /// A vendor key recognised by name and shape together (AWS secret key, Datadog key).
    Named,
    /// A password in a URL.
    Url,
    /// The credential of an `Authorization` header.
    Header,
    /// A secret-named high-entropy value.
    Generic,
}

/// Shortest string that can hold anything reported: a URL with a 6-character password is longer.
const MIN_FIELD_LEN: usize = 8;

/// Credentials reported per field at most. A real field holds one, an argument list joined into
/// one `command` string a few; a string of thousands of key-shaped words (hostile, or expanded
/// by YAML aliases) stops here, and the scan says it was cut short.
pub(crate) const MAX_HITS_PER_FIELD: usize = 100;

/// Candidates collected per field before overlaps are resolved: one credential can be found by
/// several sources (its format, its name, an `Authorization` header), so more than are kept.
const MAX_CANDIDATES_PER_FIELD: usize = 4 * MAX_HITS_PER_FIELD;

/// The credentials of one field.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Detected {
    /// In string order, none overlapping, at most `MAX_HITS_PER_FIELD`.
    pub(crate) hits: Vec<Hit>,
    /// The field held more than the bounds let through: some were not looked at or dropped.
    pub(crate) truncated: bool,
}

/// Hits found in one field so far, before overlaps are resolved; bounded, so a hostile string
/// costs at most `MAX_CANDIDATES_PER_FIELD` hits of memory whatever it holds.
#[derive(Debug, Default)]
pub(crate) struct Candidates {
    hits: Vec<Hit>,
    full: bool,
}

impl Candidates {
    /// Adds `hit`, unless the bound is reached (then `is_full`).
    pub(crate) fn push(&mut self, hit: Hit) {
        if self.hits.len() < MAX_CANDIDATES_PER_FIELD {
            self.hits.push(hit);
        } else {
            self.full = true;
        }
    }

    /// The bound was reached: sources stop looking.
    pub(crate) fn is_full(&self) -> bool {
        self.full
    }

    #[cfg(test)]
    pub(crate) fn as_slice(&self) -> &[Hit] {
        &self.hits
    }
}

/// The credentials in `field`'s value, in order, none overlapping.
pub(crate) fn detect(field: &Field<'_, '_>) -> Detected {
    let value = field.value;
    if value.len() < MIN_FIELD_LEN {
        return Detected::default();
    }
    let mut candidates = Candidates::default();
    known::scan(value, field.service_account, &mut candidates);
    if let Some(name) = field.name {
        named_value(name, value, 0, &mut candidates);
    }
    pairs(value, &mut |name, start, end| {
        // Offsets are computed from the text; a wrong one must skip the value, never panic: a
        // string-slicing panic message quotes the string, which here is a secret.
        if let Some(inner) = value.get(start..end)
            && !candidates.is_full()
        {
            named_value(name, inner, start, &mut candidates);
        }
    });
    let mut hits = resolve(candidates.hits);
    let truncated = candidates.full || hits.len() > MAX_HITS_PER_FIELD;
    hits.truncate(MAX_HITS_PER_FIELD);
    Detected { hits, truncated }
}

/// Judges `value` (at `offset` in the field) as the value of `name`.
fn named_value(name: &str, value: &str, offset: usize, hits: &mut Candidates) {
    // `AUTH_HEADER=Bearer …` (how mcp-remote is configured), `--header "Token …"`: a header's
    // value with a scheme is judged as an `Authorization` header whatever the header's name.
    if named::is_authorization(name) || (named::is_header_name(name) && named::has_auth_scheme(value)) {
        named::authorization(value, offset, hits);
    } else {
        named::check(name, value, offset, hits);
    }
}

/// Keeps, of overlapping hits, the most specific; returns them in string order.
///
/// Hits are taken most specific first (then leftmost, then longest) and kept unless they overlap
/// one already kept. Kept hits never overlap, so ordered by start they are ordered by end too: a
/// new hit can only overlap the kept hit that starts last before its end, one ordered-map lookup.
/// O(n log n), where comparing each hit with every kept one was O(n²) on hostile strings.
fn resolve(mut hits: Vec<Hit>) -> Vec<Hit> {
    // Stable: among hits of equal rank and span, the first source's kind wins.
    hits.sort_by_key(|h| (h.rank, h.start, Reverse(h.end)));
    let mut kept: BTreeMap<usize, Hit> = BTreeMap::new();
    for hit in hits {
        if hit.start >= hit.end {
            continue;
        }
        let overlaps = kept.range(..hit.end).next_back().is_some_and(|(_, k)| k.end > hit.start);
        if !overlaps {
            kept.insert(hit.start, hit);
        }
    }
    kept.into_values().collect()
}

/// Calls `emit(name, start, end)` for every named value inside `value`.
fn pairs(value: &str, emit: &mut dyn FnMut(&str, usize, usize)) {
    // `Authorization: Bearer X` (an `--header` argument): the whole rest is the header's value.
    if let Some((name, rest)) = header_line(value) {
        emit(name, rest, value.len());
        return;
    }
    // `Server=x;User Id=y;Password=z;`: a connection string.
    if value.contains(';') && value.contains('=') {
        let mut at = 0;
        for segment in value.split(';') {
            if let Some((k, v)) = segment.split_once('=') {
                let key = k.trim();
                let trimmed = v.trim();
                // `Encrypt= ;`: nothing to judge (and no range to compute from it).
                if !key.is_empty() && !trimmed.is_empty() {
                    let start = at + k.len() + 1 + (v.len() - v.trim_start().len());
                    emit(key, start, start + trimmed.len());
                }
            }
            at += segment.len() + 1;
        }
        return;
    }
    // Words: `--api-key=X`, `KEY=X`, `--token X`, URLs with `?token=X`.
    let mut previous_flag: Option<&str> = None;
    for (start, word) in words(value) {
        let end = start + word.len();
        if word.contains("://") {
            query_params(word, start, emit);
            previous_flag = None;
            continue;
        }
        if let Some((k, _)) = word.split_once('=')
            && is_assignment_key(k)
        {
            emit(k, start + k.len() + 1, end);
            previous_flag = None;
            continue;
        }
        if let Some(flag) = previous_flag
            && !word.starts_with('-')
        {
            emit(flag, start, end);
        }
        previous_flag = (word.starts_with('-') && word.len() > 1).then_some(word);
    }
}

/// `Name: value` where `Name` is an HTTP header name: the name and where the value starts.
fn header_line(value: &str) -> Option<(&str, usize)> {
    let (name, rest) = value.split_once(':')?;
    let valid_name = !name.is_empty()
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    // `https://…`, `C:\…`, `host:port`, `user:pass`: not headers.
    let looks_like_header = rest.starts_with(' ') || rest.starts_with('\t') || named::is_authorization(name);
    (valid_name && looks_like_header && !rest.starts_with("//") && !rest.trim().is_empty())
        .then(|| (name, value.len() - rest.trim_start().len()))
}

/// `--api-key`, `GITHUB_TOKEN`, `token`: what may stand before `=` in a named value.
fn is_assignment_key(k: &str) -> bool {
    let bare = k.trim_start_matches('-');
    !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// `?api_key=X&token=Y` in a URL (at `offset` in the field).
fn query_params(url: &str, offset: usize, emit: &mut dyn FnMut(&str, usize, usize)) {
    let Some(q) = url.find('?') else { return };
    let query_end = url.find('#').filter(|&h| h > q).unwrap_or(url.len());
    let Some(query) = url.get(q + 1..query_end) else { return };
    let mut at = q + 1;
    for pair in query.split('&') {
        if let Some((k, _)) = pair.split_once('=') {
            emit(k, offset + at + k.len() + 1, offset + at + pair.len());
        }
        at += pair.len() + 1;
    }
}

/// Whitespace-separated words of `value` with their byte offsets.
fn words(value: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in value.char_indices() {
        if c.is_whitespace() {
            if let Some(word) = start.take().and_then(|s| Some((s, value.get(s..i)?))) {
                out.push(word);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(word) = start.and_then(|s| Some((s, value.get(s..)?))) {
        out.push(word);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn field<'a>(name: Option<&'a str>, value: &'a str) -> Field<'a, 'a> {
        Field { path: &[], server: None, name, value, line: None, service_account: false }
    }

    fn found(name: Option<&str>, value: &str) -> Vec<(Kind, String)> {
        detect(&field(name, value)).hits.iter().map(|h| (h.kind, value[h.start..h.end].to_string())).collect()
    }

    const R: &str = "q8Zr2LmX0pVb7NcT4yWe";

    #[test]
    fn names_inside_strings() {
        let g = |s: &str| vec![(Kind::GenericSecret, s.to_string())];
        assert_eq!(found(Some("args"), &format!("--api-key={R}")), g(R));
        assert_eq!(found(Some("--token"), R), g(R));
        assert_eq!(found(Some("args"), &format!("GITHUB_TOKEN={R}")), g(R));
        assert_eq!(found(Some("command"), &format!("npx server --token {R} --port 80")), g(R));
        assert_eq!(found(Some("command"), &format!("npx server --token=\"{R}\"")), g(R));
        assert_eq!(found(Some("url"), &format!("https://h/mcp?x=1&api_key={R}#f")), g(R));
        assert_eq!(
            found(Some("args"), &format!("Authorization: Bearer {R}")),
            vec![(Kind::AuthorizationHeader, R.to_string())]
        );
        assert_eq!(found(Some("DB"), &format!("Server=h;User Id=sa;Password={R};")), g(R));
    }

    #[test]
    fn words_track_offsets() {
        let v = "a  bb\tccc\u{3000}d ";
        let got = words(v);
        assert_eq!(got, [(0, "a"), (3, "bb"), (6, "ccc"), (12, "d")]);
        for (at, w) in got {
            assert_eq!(&v[at..at + w.len()], w);
        }
    }

    #[test]
    fn the_specific_kind_wins() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJlX2J5dGVzXzEyMzQ1Njc4OQ";
        assert_eq!(found(Some("Authorization"), &format!("Bearer {jwt}")), vec![(Kind::Jwt, jwt.to_string())]);
        assert_eq!(found(Some("API_TOKEN"), jwt), vec![(Kind::Jwt, jwt.to_string())]);
        let url = format!("https://admin:{R}@db.example.com/x");
        assert_eq!(found(Some("DATABASE_PASSWORD"), &url), vec![(Kind::UrlCredentials, R.to_string())]);
    }

    #[test]
    fn not_headers() {
        assert_eq!(header_line("https://x"), None);
        assert_eq!(header_line("localhost:8080"), None);
        assert_eq!(header_line("X-Api-Key: abc"), Some(("X-Api-Key", 11)));
        assert_eq!(header_line("Authorization:Bearer x"), Some(("Authorization", 14)));
    }

    #[test]
    fn traps_under_secret_names_are_quiet() {
        for (name, value) in [
            ("GITHUB_TOKEN", "${GITHUB_TOKEN}"),
            ("Authorization", "Bearer ${input:github-token}"),
            ("args", "--token=${TOKEN}"),
            ("command", "npx -y @modelcontextprotocol/server-github"),
            ("url", "https://api.example.com/mcp?version=2"),
            ("token_hash", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
            ("password", "password"),
        ] {
            assert_eq!(found(Some(name), value), [], "{name}={value}");
        }
    }

    #[test]
    fn blank_connection_string_values_do_not_panic() {
        // A segment whose value is only whitespace once gave `start > end`, and the slice panic
        // printed the whole string, password included, to stderr.
        let password = "Hunter2Secret!";
        let g = vec![(Kind::GenericSecret, password.to_string())];
        for value in [
            "Server=db;Password=Hunter2Secret!;Encrypt= ;",
            "Server=db;Password=Hunter2Secret!;Encrypt= ",
            "Server=db;Password=Hunter2Secret!;Encrypt=\t\u{3000};",
            "Server=db; = ;Password=Hunter2Secret!;=;;Encrypt=",
        ] {
            assert_eq!(found(None, value), g, "{value:?}");
        }
        let mut seen = Vec::new();
        pairs("A= ;B=\u{3000};C=x ;", &mut |name, start, end| seen.push((name.to_string(), start, end)));
        assert_eq!(seen, [("C".to_string(), 12, 13)]);
    }

    #[test]
    fn overlaps_resolve_to_the_most_specific() {
        let hit = |rank, start, end| Hit { kind: Kind::GenericSecret, start, end, rank };
        let got = resolve(vec![
            hit(Rank::Generic, 0, 10),
            hit(Rank::Format, 2, 5),
            hit(Rank::Header, 4, 12),
            hit(Rank::Url, 12, 14),
            hit(Rank::Named, 20, 30),
            hit(Rank::Generic, 29, 31),
            hit(Rank::Generic, 31, 40),
            hit(Rank::Format, 7, 7),
        ]);
        assert_eq!(
            got,
            [hit(Rank::Format, 2, 5), hit(Rank::Url, 12, 14), hit(Rank::Named, 20, 30), hit(Rank::Generic, 31, 40)]
        );
    }

    #[test]
    fn hits_per_field_are_bounded() {
        // Thousands of key-shaped words in one string: at most `MAX_HITS_PER_FIELD`, and said so.
        let keys: Vec<String> = (0..5_000u32).map(aws_key).collect();
        let value = keys.join(" ");
        let detected = detect(&field(Some("args"), &value));
        assert_eq!(detected.hits.len(), MAX_HITS_PER_FIELD);
        assert!(detected.truncated);
        assert!(detected.hits.iter().all(|h| h.kind == Kind::AwsAccessKeyId));
        let few = keys[..3].join(" ");
        let detected = detect(&field(Some("args"), &few));
        assert_eq!((detected.hits.len(), detected.truncated), (3, false));
    }

    #[test]
    fn header_values_with_a_scheme_are_authorization_headers() {
        // mcp-remote's README: `"env": {"AUTH_HEADER": "Bearer <token>"}`.
        let header = |s: &str| vec![(Kind::AuthorizationHeader, s.to_string())];
        assert_eq!(found(Some("AUTH_HEADER"), &format!("Bearer {R}")), header(R));
        assert_eq!(found(Some("authHeader"), &format!("Token {R}")), header(R));
        assert_eq!(found(Some("CUSTOM_HEADERS"), &format!("Bot {R}")), header(R));
        assert_eq!(found(Some("--header"), &format!("Basic {R}")), header(R));
        // The specific kind still wins; references and bare values under a header name do not count.
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJlX2J5dGVzXzEyMzQ1Njc4OQ";
        assert_eq!(found(Some("AUTH_HEADER"), &format!("Bearer {jwt}")), vec![(Kind::Jwt, jwt.to_string())]);
        assert_eq!(found(Some("AUTH_HEADER"), "Bearer ${MCP_TOKEN}"), []);
        assert_eq!(found(Some("AUTH_HEADER"), R), []);
        assert_eq!(found(Some("HEADER_NAME"), &format!("Bearer {R}")), []);
    }

    #[test]
    fn supabase_public_keys_are_not_reported() {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwt = |role: &str| {
            let claims =
                format!(r#"{{"iss":"supabase","ref":"abcdefghijklmnopqrst","role":"{role}","iat":1700000000}}"#);
            format!("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{}.{R}{R}", URL_SAFE_NO_PAD.encode(claims))
        };
        let anon = jwt("anon");
        for (name, value) in [
            ("SUPABASE_ANON_KEY", anon.clone()),
            ("SUPABASE_KEY", anon.clone()),
            ("apikey", anon.clone()),
            ("Authorization", format!("Bearer {anon}")),
            ("args", format!("--supabase-key={anon}")),
            ("SUPABASE_KEY", "sb_publishable_Qx7Lm2Rt9VbN4cW8yEz1Ka_3Hj6pDs0F".to_string()),
            ("Authorization", "Bearer sb_publishable_Qx7Lm2Rt9VbN4cW8yEz1Ka_3Hj6pDs0F".to_string()),
        ] {
            assert_eq!(found(Some(name), &value), [], "{name}={value}");
        }
        let service = jwt("service_role");
        assert_eq!(found(Some("SUPABASE_SERVICE_ROLE_KEY"), &service), vec![(Kind::Jwt, service.clone())]);
        assert_eq!(found(Some("SUPABASE_KEY"), "sb_secret_Qx7Lm2Rt9VbN4cW8yEz1Ka_3Hj6pDs0F").len(), 1);
    }

    /// A valid-looking AWS access key id, different for every `n`.
    pub(crate) fn aws_key(n: u32) -> String {
        const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let mut x = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xdead_beef_cafe;
        let body: String = (0..16)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(BASE32[(x % 32) as usize])
            })
            .collect();
        format!("AKIA{body}")
    }
}

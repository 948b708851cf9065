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
//! Where two hits overlap, the more specific one is kept (`Rank`): `Bearer ghp_…` is a GitHub
//! token, not an Authorization header; `API_KEY=sk-ant-…` an Anthropic key, not a generic secret.

mod known;
mod named;
mod placeholder;
mod shape;

use crate::Kind;
use crate::fields::Field;

pub(crate) use known::pem_fingerprint_input;
#[cfg(feature = "corpus")]
pub(crate) use known::{base62_6, crc32};

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

/// The credentials in `field`'s value, in order, none overlapping.
pub(crate) fn detect(field: &Field<'_, '_>) -> Vec<Hit> {
    let value = field.value;
    let mut hits = Vec::new();
    if value.len() < MIN_FIELD_LEN {
        return hits;
    }
    known::scan(value, field.service_account, &mut hits);
    if let Some(name) = field.name {
        named_value(name, value, 0, &mut hits);
    }
    pairs(value, &mut |name, start, end| named_value(name, &value[start..end], start, &mut hits));
    resolve(hits)
}

/// Judges `value` (at `offset` in the field) as the value of `name`.
fn named_value(name: &str, value: &str, offset: usize, hits: &mut Vec<Hit>) {
    if named::is_authorization(name) {
        named::authorization(value, offset, hits);
    } else {
        named::check(name, value, offset, hits);
    }
}

/// Keeps, of overlapping hits, the most specific; returns them in string order.
fn resolve(mut hits: Vec<Hit>) -> Vec<Hit> {
    hits.sort_by_key(|h| (h.rank, h.start, std::cmp::Reverse(h.end)));
    let mut kept: Vec<Hit> = Vec::with_capacity(hits.len());
    for hit in hits {
        if !kept.iter().any(|k| k.start < hit.end && hit.start < k.end) {
            kept.push(hit);
        }
    }
    kept.sort_by_key(|h| h.start);
    kept
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
                let start = at + k.len() + 1 + (v.len() - v.trim_start().len());
                if !key.is_empty() {
                    emit(key, start, at + k.len() + 1 + v.trim_end().len());
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
    let mut at = q + 1;
    for pair in url[q + 1..query_end].split('&') {
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
            if let Some(s) = start.take() {
                out.push((s, &value[s..i]));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.push((s, &value[s..]));
    }
    out
}

/// Detection over a bare name and value, for other modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// The kinds and secret texts `detect` finds in `value` under `name`.
    pub(crate) fn detect_value(name: &str, value: &str) -> Vec<(Kind, String)> {
        let field = Field { path: &[], server: None, name: Some(name), value, line: None, service_account: false };
        detect(&field).iter().map(|h| (h.kind, value[h.start..h.end].to_string())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field<'a>(name: Option<&'a str>, value: &'a str) -> Field<'a, 'a> {
        Field { path: &[], server: None, name, value, line: None, service_account: false }
    }

    fn found(name: Option<&str>, value: &str) -> Vec<(Kind, String)> {
        detect(&field(name, value)).iter().map(|h| (h.kind, value[h.start..h.end].to_string())).collect()
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
}

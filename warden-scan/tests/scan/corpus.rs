//! The scanner against generated hosts: every client's files, every credential kind planted in
//! env values, headers, arguments and URLs, trap values everywhere.
//!
//! Run with `cargo nextest run -p warden-scan --no-capture -E 'test(corpus::)'` to see the
//! per-kind table.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use warden_scan::{Finding, Kind, Limits, Report, report};
use warden_scan_corpus::{self as corpus, Planted};

use super::{key, scanner, temp};

/// Hosts per corpus: about 1 500 planted credentials, 40+ of each kind, over 340 files.
const HOSTS: usize = 20;
const SEED: u64 = 0x5ca9_2024;
const MIN_RECALL: f64 = 0.98;
/// Recall each kind must reach on its own: a sub-format the detector drops entirely (every
/// OpenSSH key, say, a quarter of private keys) barely moves the overall figure.
const MIN_KIND_RECALL: f64 = 0.95;

fn scan(corpus: &corpus::Corpus) -> (tempfile::TempDir, PathBuf, Report) {
    let (dir, root) = temp();
    corpus.write(&root).expect("corpus written");
    let report = scanner(Limits::default()).scan_paths(std::slice::from_ref(&root));
    (dir, root, report)
}

fn relative(root: &Path, finding: &Finding) -> PathBuf {
    finding.file.strip_prefix(root).unwrap_or(&finding.file).to_path_buf()
}

/// What a fingerprint is taken over: a PEM key's base64 body, anything else as it is.
fn fingerprint_input(kind: Kind, secret: &str) -> String {
    if matches!(kind, Kind::PrivateKey | Kind::GcpServiceAccountKey) {
        secret.lines().filter(|l| !l.starts_with("-----")).collect()
    } else {
        secret.to_string()
    }
}

#[derive(Default)]
struct Tally {
    planted: usize,
    found: usize,
    misses: Vec<String>,
}

/// Recall and false positives of one scan of `corpus`, with the per-kind table printed.
struct Measured {
    recall: f64,
    /// Kinds below `MIN_KIND_RECALL`, with their recall.
    weak_kinds: Vec<(Kind, f64)>,
    kinds: usize,
    false_positives: Vec<(PathBuf, String, Kind)>,
    wrong_server: Vec<String>,
    wrong_fingerprint: Vec<String>,
}

fn measure(corpus: &corpus::Corpus) -> Measured {
    let (_dir, root, report) = scan(corpus);
    assert!(report.unreadable.is_empty(), "{:#?}", report.unreadable);
    assert!(!report.truncated);
    assert_eq!(report.files_scanned, corpus.files.len());

    // Findings by (file, location, kind); each planted credential claims one.
    let mut found: HashMap<(PathBuf, String, Kind), Vec<&Finding>> = HashMap::new();
    for finding in &report.findings {
        found.entry((relative(&root, finding), finding.location.clone(), finding.kind)).or_default().push(finding);
    }
    let key = key();
    let mut by_kind: BTreeMap<Kind, Tally> = BTreeMap::new();
    let mut wrong_server = Vec::new();
    let mut wrong_fingerprint = Vec::new();
    for planted in &corpus.planted {
        let tally = by_kind.entry(planted.kind).or_default();
        tally.planted += 1;
        let claimed = found.get_mut(&(planted.file.clone(), planted.location.clone(), planted.kind)).and_then(Vec::pop);
        let Some(finding) = claimed else {
            tally.misses.push(format!("{}: {}", planted.file.display(), planted.location));
            continue;
        };
        tally.found += 1;
        if finding.server != planted.server {
            wrong_server.push(format!(
                "{} {}: {:?} != {:?}",
                planted.file.display(),
                planted.location,
                finding.server,
                planted.server
            ));
        }
        let expected = key.fingerprint(fingerprint_input(planted.kind, &planted.secret).as_bytes());
        if finding.fingerprint != expected {
            wrong_fingerprint.push(format!("{} {} {:?}", planted.file.display(), planted.location, planted.kind));
        }
    }
    let false_positives: Vec<_> = found.iter().filter(|(_, rest)| !rest.is_empty()).map(|(k, _)| k.clone()).collect();

    let planted: usize = by_kind.values().map(|t| t.planted).sum();
    let hits: usize = by_kind.values().map(|t| t.found).sum();
    let recall = hits as f64 / planted as f64;
    println!("{:<28} {:>7} {:>6} {:>7}", "kind", "planted", "found", "recall");
    for (kind, tally) in &by_kind {
        println!(
            "{:<28} {:>7} {:>6} {:>7.3}",
            kind.as_str(),
            tally.planted,
            tally.found,
            tally.found as f64 / tally.planted as f64
        );
        for miss in tally.misses.iter().take(5) {
            println!("    missed {miss}");
        }
    }
    println!(
        "files {} planted {planted} found {hits} recall {recall:.4} false positives {}",
        corpus.files.len(),
        false_positives.len()
    );
    let weak_kinds = by_kind
        .iter()
        .map(|(kind, tally)| (*kind, tally.found as f64 / tally.planted as f64))
        .filter(|(_, recall)| *recall < MIN_KIND_RECALL)
        .collect();
    Measured { recall, weak_kinds, kinds: by_kind.len(), false_positives, wrong_server, wrong_fingerprint }
}

fn assert_good(m: &Measured) {
    assert_eq!(m.kinds, Kind::ALL.len(), "every kind planted");
    assert!(m.recall >= MIN_RECALL, "recall {:.4} < {MIN_RECALL}", m.recall);
    assert!(m.weak_kinds.is_empty(), "kinds below {MIN_KIND_RECALL}: {:?}", m.weak_kinds);
    assert!(m.false_positives.is_empty(), "false positives: {:#?}", m.false_positives);
    assert!(m.wrong_server.is_empty(), "server attribution: {:#?}", m.wrong_server);
    assert!(m.wrong_fingerprint.is_empty(), "fingerprint not over the exact secret: {:#?}", m.wrong_fingerprint);
}

#[test]
fn recall_over_planted_credentials_and_no_false_positives() {
    assert_good(&measure(&corpus::generate(SEED, HOSTS)));
}

#[test]
fn recall_holds_across_seeds() {
    for seed in 1..=5 {
        let m = measure(&corpus::generate(SEED.wrapping_mul(seed + 7), 8));
        assert_good(&m);
    }
}

#[test]
fn trap_only_hosts_yield_nothing() {
    let corpus = corpus::generate_traps(SEED ^ 1, HOSTS);
    let (_dir, root, report) = scan(&corpus);
    assert!(report.unreadable.is_empty(), "{:#?}", report.unreadable);
    assert_eq!(report.files_scanned, corpus.files.len());
    let found: Vec<_> =
        report.findings.iter().map(|f| format!("{} {} {}", relative(&root, f).display(), f.location, f.kind)).collect();
    println!("trap-only files {} findings {}", corpus.files.len(), found.len());
    assert!(found.is_empty(), "false positives on traps: {found:#?}");
}

#[test]
fn lines_point_at_the_value() {
    let corpus = corpus::generate(SEED ^ 2, 4);
    let (_dir, root, report) = scan(&corpus);
    let texts: HashMap<&Path, &str> = corpus.files.iter().map(|f| (f.path.as_path(), f.text.as_str())).collect();
    let by_place: HashMap<(PathBuf, &str), &Planted> =
        corpus.planted.iter().map(|p| ((p.file.clone(), p.location.as_str()), p)).collect();
    let mut checked = 0;
    for finding in &report.findings {
        let file = relative(&root, finding);
        let Some(planted) = by_place.get(&(file.clone(), finding.location.as_str())) else { continue };
        let line = finding.line.unwrap_or_else(|| panic!("no line for {} {}", file.display(), finding.location));
        let text_line = texts[file.as_path()].lines().nth(line as usize - 1).unwrap_or("");
        let first = planted.secret.lines().next().unwrap_or("");
        let needle = &first[..first.len().min(40)];
        assert!(text_line.contains(needle), "{} {}: line {line} is {text_line:?}", file.display(), finding.location);
        checked += 1;
    }
    assert!(checked > 100, "{checked}");
}

/// Distinctive pieces of a secret that must not appear in any output: the whole of a one-line
/// secret, every body line of a PEM key.
fn needles(secret: &str) -> Vec<&str> {
    secret.lines().map(str::trim).filter(|l| l.len() >= 12 && !l.starts_with("-----")).collect()
}

#[test]
fn no_output_contains_a_secret() {
    let corpus = corpus::generate(SEED ^ 3, 8);
    let (_dir, _root, report) = scan(&corpus);
    assert!(report.findings.len() >= corpus.planted.len());
    let outputs = [
        ("table", report::table(&report)),
        ("json", report::json(&report)),
        ("sarif", report::sarif(&report)),
        ("debug", format!("{report:?} {:?}", scanner(Limits::default()))),
        ("serde", serde_json::to_string(&report).expect("serialisable")),
    ];
    let mut checked = 0;
    for planted in &corpus.planted {
        for needle in needles(&planted.secret) {
            for (name, output) in &outputs {
                assert!(
                    !output.contains(needle),
                    "{name} output contains the {:?} at {}",
                    planted.kind,
                    planted.location
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= corpus.planted.len());
}

#[test]
fn parse_errors_hold_no_content() {
    let corpus = corpus::generate(SEED ^ 4, 3);
    let scanner = scanner(Limits::default());
    let mut errors = 0;
    for file in &corpus.files {
        let secrets: Vec<&str> =
            corpus.planted.iter().filter(|p| p.file == file.path).flat_map(|p| needles(&p.secret)).collect();
        // Cut the file inside its text and add a stray bracket: every parser fails somewhere.
        for cut in [file.text.len() / 3, file.text.len() / 2, file.text.len() * 3 / 4] {
            let mut cut = cut;
            while !file.text.is_char_boundary(cut) {
                cut -= 1;
            }
            let broken = format!("{}\n]]] = : {{\"", &file.text[..cut]);
            if let Err(e) = scanner.scan_text(&file.path, &broken) {
                errors += 1;
                let message = e.to_string();
                for secret in &secrets {
                    assert!(!message.contains(secret), "{message}");
                }
                assert!(
                    message.starts_with("not valid") || message.contains("nested") || message.contains("expands"),
                    "{message}"
                );
            }
        }
    }
    assert!(errors > 20, "{errors}");
}

#[test]
fn scan_text_matches_scan_paths_for_one_file() {
    let corpus = corpus::generate(SEED ^ 5, 1);
    let file = corpus.files.iter().find(|f| f.path.ends_with(".claude.json")).expect("a .claude.json");
    let findings = scanner(Limits::default()).scan_text(&file.path, &file.text).expect("parses");
    let planted: Vec<_> = corpus.planted.iter().filter(|p| p.file == file.path).collect();
    assert_eq!(findings.len(), planted.len());
    for p in planted {
        assert!(findings.iter().any(|f| f.location == p.location && f.kind == p.kind && f.file == file.path));
    }
}

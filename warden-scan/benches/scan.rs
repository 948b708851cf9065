//! Scan throughput in files per second over a generated corpus (every client's files, every
//! credential kind, traps throughout), beside two baselines measured in the same run: reading the
//! same files without parsing them (the floor any scan pays on this disk), and `scan_text` over
//! the same texts already in memory (parsing and detection alone, no I/O).
//!
//! `cargo bench -p warden-scan --bench scan -- --sample-size 10 --measurement-time 3`

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use warden_scan::{FingerprintKey, Limits, Scanner};
use warden_scan_corpus as corpus;

/// Hosts in the corpus: 18 files each.
const HOSTS: usize = 10;

fn scan(c: &mut Criterion) {
    let corpus = corpus::generate(0xbe4c, HOSTS);
    let dir = tempfile::tempdir().expect("a temporary folder");
    corpus.write(dir.path()).expect("corpus written");
    let root = dir.path().to_path_buf();
    let files: Vec<PathBuf> = corpus.files.iter().map(|f| root.join(&f.path)).collect();
    let scanner = Scanner::new(FingerprintKey::new([1; 32]), Limits::default());
    let report = scanner.scan_paths(std::slice::from_ref(&root));
    assert_eq!(report.files_scanned, corpus.files.len());
    let bytes: usize = corpus.files.iter().map(|f| f.text.len()).sum();
    println!(
        "corpus: {} files, {} KiB, {} planted, {} findings",
        corpus.files.len(),
        bytes / 1024,
        corpus.planted.len(),
        report.findings.len()
    );

    let mut group = c.benchmark_group("scan");
    group.throughput(Throughput::Elements(corpus.files.len() as u64));
    group.bench_function("baseline_read_files", |b| {
        b.iter(|| {
            for file in &files {
                black_box(std::fs::read(file).expect("readable"));
            }
        })
    });
    group.bench_function("scan_text_in_memory", |b| {
        b.iter(|| {
            for file in &corpus.files {
                black_box(scanner.scan_text(&file.path, &file.text).expect("parses"));
            }
        })
    });
    group.bench_function("scan_paths_walk", |b| b.iter(|| black_box(scanner.scan_paths(std::slice::from_ref(&root)))));
    group.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);

//! A generated corpus for measuring `warden-scan`: fake credentials of every `Kind` (`fakes`),
//! look-alikes that are not credentials (`traps`), and whole host trees of MCP configuration
//! files for every `Client`, with the ground truth — file, location, kind — of every planted
//! credential.
//!
//! Everything is generated at run time from a seed (`StdRng`), so no fixture is committed and no
//! value is a real secret. A traps-only corpus has the same files with nothing planted: any
//! finding in it is a false positive.
//!
//! A crate of its own, used only by test code (warden-scan's tests and bench, the `tests`
//! package's end-to-end suites), so no shipped binary links fake credentials — which a cargo
//! feature of warden-scan could not promise, features being unified across a build. It sees the
//! scanner only through its public API: fakes are written to each format's published shape
//! (GitHub's and npm's CRC32 computed here, independently of the detector's), and locations are
//! rendered by `warden_scan::location`, the one definition of that form.
#![forbid(unsafe_code)]

mod fakes;
mod layout;
mod servers;
mod traps;
mod tree;

use std::io;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;

pub use fakes::{Fake, fake};
pub use traps::{Trap, args as trap_args, headers as trap_headers, named as trap_named, urls as trap_urls};

use warden_scan::{Client, Kind};

/// A credential planted in a corpus file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planted {
    /// The file, relative to the corpus root.
    pub file: PathBuf,
    /// Where in the file, in `Finding::location` form.
    pub location: String,
    /// What it is.
    pub kind: Kind,
    /// The server entry it is in (for env files: the entry that loads the file).
    pub server: Option<String>,
    /// The secret itself (test-only data: a scanner must never output it).
    pub secret: String,
}

/// A corpus file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorpusFile {
    /// Relative to the corpus root.
    pub path: PathBuf,
    /// The client whose file shape it has.
    pub client: Client,
    pub text: String,
}

/// Files and their ground truth.
#[derive(Clone, Debug, Default)]
pub struct Corpus {
    pub files: Vec<CorpusFile>,
    pub planted: Vec<Planted>,
}

/// A corpus of `hosts` home folders (each with a project), with credentials planted throughout
/// and trap values around them.
pub fn generate(seed: u64, hosts: usize) -> Corpus {
    build(seed, hosts, true)
}

/// The same shapes with trap values only: nothing in it is a credential.
pub fn generate_traps(seed: u64, hosts: usize) -> Corpus {
    build(seed, hosts, false)
}

fn build(seed: u64, hosts: usize, planting: bool) -> Corpus {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut plan = servers::Plan::new(planting);
    let mut corpus = Corpus::default();
    for index in 0..hosts {
        for file in layout::host(index, &mut rng, &mut plan) {
            for (location, kind, secret, server) in file.plants {
                corpus.planted.push(Planted { file: file.path.clone(), location, kind, server, secret });
            }
            corpus.files.push(CorpusFile { path: file.path, client: file.client, text: file.text });
        }
    }
    corpus
}

impl Corpus {
    /// Writes every file under `root`.
    pub fn write(&self, root: &Path) -> io::Result<()> {
        for file in &self.files {
            let path = root.join(&file.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, &file.text)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_reproduce_and_every_kind_and_client_appears() {
        let a = generate(1, 4);
        let b = generate(1, 4);
        assert_eq!(a.files, b.files);
        assert_eq!(a.planted, b.planted);
        for &kind in Kind::ALL {
            assert!(a.planted.iter().any(|p| p.kind == kind), "{kind:?} never planted");
        }
        for client in [
            Client::ClaudeDesktop,
            Client::ClaudeCode,
            Client::Cursor,
            Client::VsCode,
            Client::Windsurf,
            Client::Continue,
            Client::GeminiCli,
            Client::Codex,
            Client::Generic,
            Client::EnvFile,
        ] {
            assert!(a.files.iter().any(|f| f.client == client), "{client:?}");
            assert!(a.files.iter().filter(|f| f.client == client).all(|f| Client::from_path(&f.path) == client));
        }
        assert!(generate_traps(1, 2).planted.is_empty());
    }

    #[test]
    fn planted_secrets_are_in_their_files() {
        let corpus = generate(2, 3);
        for p in &corpus.planted {
            let file = corpus.files.iter().find(|f| f.path == p.file).unwrap();
            let first_line = p.secret.lines().next().unwrap();
            assert!(file.text.contains(first_line), "{p:?}");
        }
    }

    #[test]
    fn mcp_remote_auth_headers_are_planted() {
        // `"env": {"AUTH_HEADER": "Bearer …"}` with `--header Authorization:${AUTH_HEADER}`.
        let corpus = generate(0x5ca9_2024, 20);
        let planted: Vec<_> = corpus
            .planted
            .iter()
            .filter(|p| p.location.ends_with("env.AUTH_HEADER") && p.kind == Kind::AuthorizationHeader)
            .collect();
        assert!(!planted.is_empty());
        for p in planted {
            let file = corpus.files.iter().find(|f| f.path == p.file).unwrap();
            assert!(file.text.contains(&format!("Bearer {}", p.secret)), "{p:?}");
            assert!(file.text.contains("Authorization:${AUTH_HEADER}"), "{p:?}");
        }
    }
}

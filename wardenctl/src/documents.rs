//! The operator's resource files for `apply` and `diff`: every YAML/JSON document under the
//! paths given, each validated here first so a mistake is reported with its file.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use warden_core::policy_test::PolicyTest;
use warden_core::{Admission, Document};

/// Reads every YAML/JSON document under `paths`, validating each locally first so mistakes are
/// reported with their file; the control plane validates again, authoritatively.
pub fn read(paths: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, Document)>> {
    Ok(read_all(paths, false)?.0.into_iter().map(|read| (read.path, read.document)).collect())
}

/// The resources and the `PolicyTest`s under `paths`.
pub fn read_with_tests(paths: &[PathBuf]) -> anyhow::Result<(Vec<Document>, Vec<Test>)> {
    let (resources, tests) = read_all(paths, true)?;
    Ok((resources.into_iter().map(|r| r.document).collect(), tests))
}

/// What `apply` sends for each document under `paths`: its canonical JSON (with
/// `metadata.resourceVersion` when the operator set one), except a `CredentialBridge` that
/// carries its key, which goes as written (its `keyFile` read): the control plane checks the
/// key's strength itself before it keeps only the digest. `PolicyTest`s are not resources:
/// they are left out, and said so on standard error.
pub fn wire(paths: &[PathBuf]) -> anyhow::Result<Vec<Vec<u8>>> {
    let (resources, tests) = read_all(paths, false)?;
    if !tests.is_empty() {
        eprintln!("skipping {} PolicyTest document(s): run them with wardenctl test", tests.len());
    }
    Ok(resources.into_iter().map(|read| read.written.unwrap_or_else(|| with_version(&read.document))).collect())
}

/// A `PolicyTest` and its file.
pub type Test = (PathBuf, PolicyTest);

/// One document read.
struct Read {
    /// Its file.
    path: PathBuf,
    document: Document,
    /// For a bridge with a key, the JSON as written.
    written: Option<Vec<u8>>,
}

/// Each document under `paths`: the resources, and the policy tests (parsed only when
/// `parse_tests`; otherwise each is only counted, with an empty case list).
fn read_all(paths: &[PathBuf], parse_tests: bool) -> anyhow::Result<(Vec<Read>, Vec<Test>)> {
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files)?;
    }
    if files.is_empty() {
        bail!("no .yaml, .yml or .json files in {paths:?}");
    }
    let (mut out, mut tests) = (Vec::new(), Vec::new());
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let values = warden_core::resource::yaml_documents(&text).with_context(|| file.display().to_string())?;
        for (i, mut value) in values.into_iter().enumerate() {
            let context = || format!("{} (document {})", file.display(), i + 1);
            if PolicyTest::is(&value) {
                let test = if parse_tests {
                    PolicyTest::from_json(value).with_context(context)?
                } else {
                    PolicyTest { name: String::new(), cases: Vec::new() }
                };
                tests.push((file.clone(), test));
                continue;
            }
            let keyed = bridge_key(&mut value, &file).with_context(context)?;
            let written = keyed.then(|| serde_json::to_vec(&value).expect("JSON values serialize"));
            // http issuers are an admission rule of the control plane: let it decide.
            let doc = Document::from_json(value, &Admission { allow_http_issuers: true }).with_context(context)?;
            out.push(Read { path: file.clone(), document: doc, written });
        }
    }
    Ok((out, tests))
}

/// For a `CredentialBridge`, reads `spec.keyFile` (relative to the document's file; one line,
/// surrounding white space dropped) into `spec.key`; whether the document carries a key.
fn bridge_key(value: &mut serde_json::Value, file: &Path) -> anyhow::Result<bool> {
    if value["kind"] != "CredentialBridge" {
        return Ok(false);
    }
    let Some(spec) = value.get_mut("spec").and_then(|s| s.as_object_mut()) else { return Ok(false) };
    if let Some(key_file) = spec.remove("keyFile") {
        if spec.contains_key("key") {
            bail!("spec: give key or keyFile, not both");
        }
        let key_file = key_file.as_str().context("spec.keyFile: must be a path")?;
        let path = file.parent().unwrap_or(Path::new(".")).join(key_file);
        let key =
            std::fs::read_to_string(&path).with_context(|| format!("spec.keyFile: reading {}", path.display()))?;
        spec.insert("key".into(), key.trim().into());
    }
    Ok(spec.contains_key("key"))
}

/// Canonical JSON, keeping `metadata.resourceVersion` when the operator set it (optimistic
/// concurrency).
fn with_version(document: &Document) -> Vec<u8> {
    let json = document.to_canonical_json();
    let Some(version) = document.metadata.resource_version else { return json };
    let mut value: serde_json::Value = serde_json::from_slice(&json).expect("canonical JSON parses");
    value["metadata"]["resourceVersion"] = version.into();
    serde_json::to_vec(&value).expect("serializes")
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            let is_doc =
                entry.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if entry.is_dir() || is_doc {
                collect_files(&entry, out)?;
            }
        }
    } else {
        if !path.exists() {
            bail!("{}: no such file or directory", path.display());
        }
        out.push(path.to_path_buf());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_s_key_file_is_read_beside_its_document_and_sent_as_written() {
        let dir = std::env::temp_dir().join(format!("wardenctl-bridge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = "4f9c2a7e1b8d3f60a5c9e2b71d4f8a3c6e0b9d2f";
        std::fs::write(dir.join("ci.key"), format!("{key}\n")).unwrap();
        let document = |key_line: &str| {
            format!(
                "apiVersion: warden.dev/v1\nkind: CredentialBridge\nmetadata: {{name: ci}}\nspec:\n  server: notes\n  {key_line}\n  principal: ci\n  owner: team\n  exitPlan: tokens\n  expires: 2027-01-01T00:00:00Z\n"
            )
        };
        let file = dir.join("bridge.yaml");
        std::fs::write(&file, document("keyFile: ci.key")).unwrap();
        let sent = wire(std::slice::from_ref(&file)).unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&sent[0]).unwrap();
        assert_eq!(sent["spec"]["key"], key, "the control plane checks the key itself");
        assert!(sent["spec"].get("keyFile").is_none());
        // What `diff` compares holds the digest only.
        let (_, parsed) = &read(std::slice::from_ref(&file)).unwrap()[0];
        assert!(!String::from_utf8(parsed.to_canonical_json()).unwrap().contains(key));
        std::fs::write(&file, document(&format!("keyFile: ci.key\n  key: {key}"))).unwrap();
        let both = read(std::slice::from_ref(&file)).unwrap_err();
        assert!(format!("{both:#}").contains("not both"), "{both:#}");
        std::fs::write(&file, document("keyFile: missing.key")).unwrap();
        assert!(format!("{:#}", read(std::slice::from_ref(&file)).unwrap_err()).contains("missing.key"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

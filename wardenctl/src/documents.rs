//! The operator's resource files for `apply` and `diff`: every YAML/JSON document under the
//! paths given, each validated here first so a mistake is reported with its file.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use warden_core::{Admission, Document};

/// Reads every YAML/JSON document under `paths`, validating each locally first so mistakes are
/// reported with their file; the control plane validates again, authoritatively.
pub fn read(paths: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, Document)>> {
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files)?;
    }
    if files.is_empty() {
        bail!("no .yaml, .yml or .json files in {paths:?}");
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let values = warden_core::resource::yaml_documents(&text).with_context(|| file.display().to_string())?;
        for (i, value) in values.into_iter().enumerate() {
            // http issuers are an admission rule of the control plane: let it decide.
            let doc = Document::from_json(value, &Admission { allow_http_issuers: true })
                .with_context(|| format!("{} (document {})", file.display(), i + 1))?;
            out.push((file.clone(), doc));
        }
    }
    Ok(out)
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

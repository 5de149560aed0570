//! Model URIs: what the spec's `model.uri` names and where its bytes come from.
//!
//! - `hf://org/repo/path/file.gguf[@revision]`: a file of a Hugging Face repository, fetched from the hub's
//!   `resolve` endpoint (`HF_ENDPOINT`, default `https://huggingface.co`), revision `main` by default.
//! - `https://…` (and `http://…` for in-cluster mirrors): any URL.
//! - `file:///path`: a file on the node, checked in place (no copy).
//! - `pvc://claim/path`: a file on a PersistentVolumeClaim the pod mounts at `<pvc root>/<claim>`, checked in
//!   place (no copy).
//!
//! A file named `…-00001-of-0000N.gguf` is the first shard of a split GGUF: every shard is fetched.

use super::FetchError;
use std::path::{Component, Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelUri {
    Hf {
        org: String,
        repo: String,
        /// Path inside the repository (may contain directories).
        path: String,
        revision: String,
    },
    Url(String),
    File(PathBuf),
    Pvc {
        claim: String,
        path: String,
    },
}

fn bad(uri: &str, reason: impl Into<String>) -> FetchError {
    FetchError::BadUri {
        uri: uri.to_string(),
        reason: reason.into(),
    }
}

/// A relative path made only of normal components (no `..`, no root, nothing empty): safe to join under a
/// cache or mount root.
fn relative_path(uri: &str, what: &str, p: &str) -> Result<PathBuf, FetchError> {
    if p.is_empty() {
        return Err(bad(uri, format!("the {what} is empty")));
    }
    let path = Path::new(p);
    if !path.components().all(|c| matches!(c, Component::Normal(_))) || p.ends_with('/') {
        return Err(bad(
            uri,
            format!("the {what} `{p}` must be a relative file path without `.` or `..`"),
        ));
    }
    Ok(path.to_path_buf())
}

/// Hugging Face names and revisions: letters, digits, `-`, `_`, `.` (and `/` in revisions such as
/// `refs/pr/1`). Anything else would change the meaning of the resolve URL.
fn hub_name_ok(s: &str, allow_slash: bool) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c) || (allow_slash && c == '/'))
}

impl ModelUri {
    pub fn parse(uri: &str) -> Result<Self, FetchError> {
        let uri = uri.trim();
        if let Some(rest) = uri.strip_prefix("hf://") {
            let (body, revision) = match rest.rsplit_once('@') {
                Some((b, r)) => (b, r.to_string()),
                None => (rest, "main".to_string()),
            };
            let mut parts = body.splitn(3, '/');
            let (org, repo, path) = match (parts.next(), parts.next(), parts.next()) {
                (Some(o), Some(r), Some(p)) => (o, r, p),
                _ => {
                    return Err(bad(
                        uri,
                        "expected hf://org/repo/path/to/file.gguf[@revision]",
                    ))
                }
            };
            for (what, s) in [("organisation", org), ("repository", repo)] {
                if !hub_name_ok(s, false) {
                    return Err(bad(uri, format!("the {what} name `{s}` is not valid")));
                }
            }
            if !hub_name_ok(&revision, true) {
                return Err(bad(uri, format!("the revision `{revision}` is not valid")));
            }
            relative_path(uri, "path in the repository", path)?;
            return Ok(ModelUri::Hf {
                org: org.into(),
                repo: repo.into(),
                path: path.into(),
                revision,
            });
        }
        if uri.starts_with("https://") || uri.starts_with("http://") {
            let parsed = reqwest::Url::parse(uri).map_err(|e| bad(uri, e.to_string()))?;
            if parsed.host_str().is_none() {
                return Err(bad(uri, "the URL has no host"));
            }
            return Ok(ModelUri::Url(uri.to_string()));
        }
        if let Some(rest) = uri.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad(
                    uri,
                    "expected an absolute path: file:///path/to/model.gguf",
                ));
            }
            return Ok(ModelUri::File(PathBuf::from(rest)));
        }
        if let Some(rest) = uri.strip_prefix("pvc://") {
            let (claim, path) = rest
                .split_once('/')
                .ok_or_else(|| bad(uri, "expected pvc://claim/path/to/model.gguf"))?;
            // A claim name is a Kubernetes object name (RFC 1123 subdomain).
            if claim.is_empty()
                || !claim
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
            {
                return Err(bad(uri, format!("`{claim}` is not a valid claim name")));
            }
            relative_path(uri, "path on the claim", path)?;
            return Ok(ModelUri::Pvc {
                claim: claim.into(),
                path: path.into(),
            });
        }
        Err(bad(
            uri,
            "unknown scheme (supported: hf://, https://, http://, file://, pvc://)",
        ))
    }

    /// The file name the URI ends in (the last path segment).
    pub fn file_name(&self) -> String {
        let last = |s: &str| s.rsplit('/').next().unwrap_or_default().to_string();
        match self {
            ModelUri::Hf { path, .. } | ModelUri::Pvc { path, .. } => last(path),
            ModelUri::Url(u) => reqwest::Url::parse(u)
                .ok()
                .and_then(|u| u.path_segments()?.next_back().map(str::to_string))
                .unwrap_or_default(),
            ModelUri::File(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }
}

/// The `(index, count)` of a split-GGUF shard name `…-0000I-of-0000N.gguf` (llama.cpp's `gguf-split`
/// naming, 1-based), or `None` for an ordinary file.
pub fn split_index(name: &str) -> Option<(u32, u32)> {
    let stem = name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (_, index) = rest.rsplit_once('-')?;
    let five_digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !five_digits(index) || !five_digits(count) {
        return None;
    }
    let (i, n) = (index.parse().ok()?, count.parse().ok()?);
    (1..=n).contains(&i).then_some((i, n))
}

/// Every shard's path for a path naming one shard of a split GGUF (in order), or just the path.
pub fn shard_paths(path: &str) -> Vec<String> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let Some((i, n)) = split_index(name) else {
        return vec![path.to_string()];
    };
    let suffix = format!("-{i:05}-of-{n:05}.gguf");
    let base = &path[..path.len() - suffix.len()];
    (1..=n)
        .map(|k| format!("{base}-{k:05}-of-{n:05}.gguf"))
        .collect()
}

/// The hub's resolve URL of one file (`endpoint` without a trailing slash).
pub fn hf_resolve_url(endpoint: &str, org: &str, repo: &str, revision: &str, path: &str) -> String {
    // A revision such as `refs/pr/1` is one path segment in the resolve URL.
    let rev = revision.replace('/', "%2F");
    format!(
        "{}/{org}/{repo}/resolve/{rev}/{path}",
        endpoint.trim_end_matches('/')
    )
}

/// Where a `pvc://` URI's file lives on this pod: `<root>/<claim>/<path>`.
pub fn pvc_path(root: &Path, claim: &str, path: &str) -> PathBuf {
    root.join(claim).join(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            ModelUri::parse("hf://Qwen/Qwen3-GGUF/q4/model-Q4_K_M.gguf@v1.0").unwrap(),
            ModelUri::Hf {
                org: "Qwen".into(),
                repo: "Qwen3-GGUF".into(),
                path: "q4/model-Q4_K_M.gguf".into(),
                revision: "v1.0".into()
            }
        );
        let ModelUri::Hf { revision, .. } = ModelUri::parse("hf://a/b/c.gguf").unwrap() else {
            panic!("not hf")
        };
        assert_eq!(revision, "main");
        assert_eq!(
            ModelUri::parse("pvc://models-claim/dir/m.gguf").unwrap(),
            ModelUri::Pvc {
                claim: "models-claim".into(),
                path: "dir/m.gguf".into()
            }
        );
        assert_eq!(
            ModelUri::parse("file:///models/m.gguf").unwrap(),
            ModelUri::File("/models/m.gguf".into())
        );
        assert_eq!(
            ModelUri::parse("https://example.com/x/m.gguf")
                .unwrap()
                .file_name(),
            "m.gguf"
        );
    }

    #[test]
    fn rejects_paths_that_escape_and_unknown_schemes() {
        for bad in [
            "hf://a/b/../../etc/passwd",
            "hf://a/b",
            "hf://a/b/c.gguf@",
            "hf://a/b/c.gguf@../x",
            "hf://../b/c.gguf",
            "pvc://claim/../../etc/shadow",
            "pvc://Claim_X/m.gguf",
            "pvc://claim",
            "file://relative/m.gguf",
            "s3://bucket/m.gguf",
            "https://",
        ] {
            let err = ModelUri::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad.trim()), "{bad}: {err}");
        }
    }

    #[test]
    fn expands_split_ggufs() {
        assert_eq!(split_index("m-00002-of-00003.gguf"), Some((2, 3)));
        assert_eq!(split_index("m-00004-of-00003.gguf"), None);
        assert_eq!(split_index("m-Q4_K_M.gguf"), None);
        assert_eq!(
            shard_paths("dir/m-00002-of-00003.gguf"),
            [
                "dir/m-00001-of-00003.gguf",
                "dir/m-00002-of-00003.gguf",
                "dir/m-00003-of-00003.gguf"
            ]
        );
        assert_eq!(shard_paths("m.gguf"), ["m.gguf"]);
        assert_eq!(
            hf_resolve_url("https://huggingface.co/", "o", "r", "refs/pr/1", "a/b.gguf"),
            "https://huggingface.co/o/r/resolve/refs%2Fpr%2F1/a/b.gguf"
        );
    }
}

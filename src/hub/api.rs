//! The few Hub HTTP endpoints yibuild uses, over a blocking client (`ureq`):
//!
//! - `GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true`: the commit a
//!   revision points at, and every file with its size, git blob id and LFS sha256;
//! - `GET {endpoint}/{repo}/resolve/{commit}/{path}` with `Range`: file bytes
//!   (LFS files redirect to a CDN; redirects are followed, the token is not
//!   sent across hosts).

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;

use super::lock::LockedFile;
use super::HubConfig;

/// A revision as the Hub reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRevision {
    /// The commit sha.
    pub commit: String,
    /// Every file of the repository at that commit.
    pub files: BTreeMap<String, LockedFile>,
}

#[derive(Deserialize)]
struct RevisionJson {
    sha: String,
    #[serde(default)]
    siblings: Vec<SiblingJson>,
}

#[derive(Deserialize)]
struct SiblingJson {
    rfilename: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default, rename = "blobId")]
    blob_id: Option<String>,
    #[serde(default)]
    lfs: Option<LfsJson>,
}

#[derive(Deserialize)]
struct LfsJson {
    sha256: String,
    size: u64,
}

/// A blocking Hub client bound to one endpoint and token.
#[derive(Clone)]
pub struct HubClient {
    agent: ureq::Agent,
    endpoint: String,
    token: Option<String>,
}

/// Percent-encodes one URL path segment (unreserved characters stay as they are).
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a `/`-separated path, keeping the slashes.
pub(crate) fn encode_path(p: &str) -> String {
    p.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// The HTTP agent every Hub request goes through: answers of any status are
/// returned (so errors can say what the Hub said), with connect and read
/// timeouts and yibuild's user agent.
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("yibuild/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

impl HubClient {
    /// A client for `config.endpoint` with `config.token`.
    pub fn new(config: &HubConfig) -> HubClient {
        HubClient {
            agent: agent(),
            endpoint: config.endpoint.clone(),
            token: config.token.clone(),
        }
    }

    fn get(&self, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let req = self.agent.get(url);
        match &self.token {
            Some(t) => req.header("Authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    /// Resolves `revision` of `repo` to a commit and lists its files.
    pub fn revision(&self, repo: &str, revision: &str) -> Result<RemoteRevision> {
        let url = format!(
            "{}/api/models/{}/revision/{}?blobs=true",
            self.endpoint,
            encode_path(repo),
            encode_segment(revision)
        );
        let what = format!("hf://{repo}@{revision}");
        let mut resp = self
            .get(&url)
            .call()
            .map_err(|e| anyhow!("{what}: cannot reach {}: {e}", self.endpoint))?;
        check_status(&resp, &what, self.token.is_some())?;
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| anyhow!("{what}: cannot read the answer of {}: {e}", self.endpoint))?;
        let json: RevisionJson = serde_json::from_str(&text).map_err(|e| {
            anyhow!(
                "{what}: unexpected revision answer from {}: {e}",
                self.endpoint
            )
        })?;
        if !super::layout::is_commit(&json.sha) {
            bail!(
                "{what}: the Hub answered with `{}`, not a commit sha",
                json.sha
            );
        }
        let mut files = BTreeMap::new();
        for s in json.siblings {
            if s.blob_id.is_none() && s.lfs.is_none() {
                bail!(
                    "{what}: the Hub did not report a blob id for `{}` (an endpoint without `?blobs=true` support?)",
                    s.rfilename
                );
            }
            let (size, sha256) = match s.lfs {
                Some(lfs) => (lfs.size, Some(lfs.sha256)),
                None => (s.size.unwrap_or(0), None),
            };
            files.insert(
                s.rfilename,
                LockedFile {
                    size,
                    sha256,
                    blob_id: s.blob_id,
                },
            );
        }
        Ok(RemoteRevision {
            commit: json.sha,
            files,
        })
    }

    /// Starts downloading bytes `range` of `path` at `commit`; the caller
    /// reads the body. A server that ignores `Range` is an error unless the
    /// range starts at 0.
    pub fn download(
        &self,
        repo: &str,
        commit: &str,
        path: &str,
        range: Range<u64>,
    ) -> Result<ureq::Body> {
        let url = format!(
            "{}/{}/resolve/{commit}/{}",
            self.endpoint,
            encode_path(repo),
            encode_path(path)
        );
        let what = format!("hf://{repo}@{commit}/{path}");
        let resp = self
            .get(&url)
            .header("Range", &format!("bytes={}-{}", range.start, range.end - 1))
            .call()
            .map_err(|e| anyhow!("{what}: cannot reach {}: {e}", self.endpoint))?;
        check_status(&resp, &what, self.token.is_some())?;
        if resp.status().as_u16() != 206 && range.start != 0 {
            bail!("{what}: the server ignored the Range header");
        }
        Ok(resp.into_body())
    }
}

/// An HTTP error answer, with a message that says what to do.
#[derive(Debug)]
pub struct StatusError {
    /// The HTTP status.
    pub status: u16,
    /// What failed and what to do.
    pub message: String,
}

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StatusError {}

/// Whether a failed request may succeed when tried again: connection
/// problems, rate limits and server errors, not 4xx answers.
pub fn is_retryable(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<StatusError>() {
        Some(s) => s.status >= 500 || s.status == 429,
        None => true,
    }
}

/// Turns a failed answer into an error that says what to do.
fn check_status(
    resp: &ureq::http::Response<ureq::Body>,
    what: &str,
    has_token: bool,
) -> Result<()> {
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let code = header("X-Error-Code");
    let message = header("X-Error-Message");
    let detail = if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    };
    let message = match (status, code.as_str()) {
        (_, "GatedRepo") | (401 | 403, _) if !has_token => format!(
            "{what}: access denied (HTTP {status}){detail}; the repository is gated or private: \
             accept its terms on the Hub and set HF_TOKEN"
        ),
        (_, "GatedRepo") | (401 | 403, _) => format!(
            "{what}: access denied (HTTP {status}){detail}; the token in HF_TOKEN has no access \
             to this repository (gated: accept its terms on the Hub)"
        ),
        (_, "RepoNotFound") => {
            format!("{what}: repository not found{detail}; check the name in the recipe")
        }
        (_, "RevisionNotFound") => {
            format!("{what}: revision not found{detail}; check the branch, tag or commit")
        }
        (_, "EntryNotFound") => format!("{what}: file not found{detail}"),
        (404, _) => format!("{what}: not found (HTTP 404){detail}"),
        _ => format!("{what}: HTTP {status}{detail}"),
    };
    Err(StatusError { status, message }.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_revisions_and_paths() {
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_path("a b/c.json"), "a%20b/c.json");
    }
}

//! The Hub's write endpoints, as `huggingface_hub` uses them for
//! `upload_folder` (read from its `hf_api.py`, `_commit_api.py` and `lfs.py`):
//!
//! - `POST /api/repos/create` `{name, organization, type, private}`: 409 when
//!   the repository exists;
//! - `POST /api/models/{repo}/branch/{branch}`: 409 when the branch exists;
//! - `POST /api/models/{repo}/preupload/{rev}` `{files: [{path, sample, size}]}`:
//!   per file, `uploadMode` (`lfs` or `regular`) and the `oid` the revision
//!   already has at that path (sha256 for LFS files, git blob sha1 otherwise);
//! - `POST {repo}.git/info/lfs/objects/batch` (the git-lfs batch API, basic
//!   and the Hub's multipart transfers): per object, an `upload` action (PUT
//!   the bytes to `href`, or each chunk to its part URL and the parts' ETags
//!   to `href`; then POST `{oid, size}` to the optional `verify` href), or no
//!   action at all when the Hub already stores the object — what makes
//!   uploads resumable;
//! - `POST /api/models/{repo}/commit/{rev}` (NDJSON): a `header` line with the
//!   summary, then one `file` line per regular file (base64 content) and one
//!   `lfsFile` line per LFS file (sha256 and size).
//!
//! The token goes only into the `Authorization` header of Hub API requests
//! (never to the storage URLs LFS uploads are sent to), and every text the
//! server sends back is scrubbed of it before it becomes part of an error.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::api::{agent, encode_path, encode_segment, StatusError};
use super::HubConfig;

/// How the Hub wants a file sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMode {
    /// Inline in the commit, base64-encoded.
    Regular,
    /// Through LFS storage; the commit names its sha256.
    Lfs,
}

/// What the pre-upload check says about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preupload {
    /// How to send it.
    pub mode: UploadMode,
    /// The id of the file the revision has at that path, if any: sha256 for
    /// LFS files, the git blob sha1 for regular ones.
    pub remote_oid: Option<String>,
}

/// A file announced to the pre-upload check.
#[derive(Debug, Clone)]
pub struct Announce<'a> {
    /// Path in the repository.
    pub path: &'a str,
    /// Up to the first 512 bytes (the Hub sniffs binary content from them).
    pub sample: &'a [u8],
    /// Size in bytes.
    pub size: u64,
}

/// One line of a commit after the header.
#[derive(Debug, Clone)]
pub enum CommitFile<'a> {
    /// A regular file, sent inline.
    Regular {
        /// Path in the repository.
        path: &'a str,
        /// Its bytes.
        bytes: &'a [u8],
    },
    /// An LFS file whose object is already uploaded.
    Lfs {
        /// Path in the repository.
        path: &'a str,
        /// Hex sha256 of the bytes.
        sha256: &'a str,
        /// Size in bytes.
        size: u64,
    },
}

/// An LFS batch answer for one object.
#[derive(Debug, Clone, Deserialize)]
pub struct LfsObject {
    /// Hex sha256.
    pub oid: String,
    /// What to do with it; absent when the Hub already has the object.
    #[serde(default)]
    pub actions: Option<LfsActions>,
    /// Why the Hub refused the object.
    #[serde(default)]
    pub error: Option<LfsError>,
}

/// The actions of an LFS batch answer.
#[derive(Debug, Clone, Deserialize)]
pub struct LfsActions {
    /// Where to PUT the bytes.
    pub upload: Option<LfsAction>,
    /// Where to confirm the upload.
    #[serde(default)]
    pub verify: Option<LfsAction>,
}

/// One LFS action: a URL and the headers to send with it.
#[derive(Debug, Clone, Deserialize)]
pub struct LfsAction {
    /// The URL.
    pub href: String,
    /// Headers to send (for multipart uploads, part URLs and a chunk size).
    #[serde(default)]
    pub header: BTreeMap<String, Json>,
}

/// An error the LFS batch API reports for one object.
#[derive(Debug, Clone, Deserialize)]
pub struct LfsError {
    /// An HTTP-like code.
    #[serde(default)]
    pub code: i64,
    /// What is wrong.
    #[serde(default)]
    pub message: String,
}

#[derive(Deserialize)]
struct PreuploadAnswer {
    files: Vec<PreuploadFile>,
}

#[derive(Deserialize)]
struct PreuploadFile {
    path: String,
    #[serde(rename = "uploadMode")]
    upload_mode: String,
    #[serde(default)]
    oid: Option<String>,
}

/// A client for the Hub's write endpoints, bound to one endpoint and token.
pub struct HubWriter {
    agent: ureq::Agent,
    endpoint: String,
    token: String,
}

impl std::fmt::Debug for HubWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        write!(f, "HubWriter({})", self.endpoint)
    }
}

/// Replaces every occurrence of `token` in `text` (an answer the server
/// sent, which may echo the request) so it can be shown.
fn scrub(text: &str, token: &str) -> String {
    if token.is_empty() {
        text.to_owned()
    } else {
        text.replace(token, "<token>")
    }
}

impl HubWriter {
    /// A client for `config.endpoint`. Writing needs a token: without one
    /// the error says where yibuild looked.
    pub fn new(config: &HubConfig) -> Result<HubWriter> {
        let Some(token) = config.token.clone() else {
            bail!(
                "publishing needs a Hub token with write access: set HF_TOKEN, or log in with \
                 `hf auth login` (which writes {})",
                super::token_file().display()
            );
        };
        Ok(HubWriter {
            agent: agent(),
            endpoint: config.endpoint.clone(),
            token,
        })
    }

    fn api(&self, repo: &str, what: &str, rev: &str) -> String {
        format!(
            "{}/api/models/{}/{what}/{}",
            self.endpoint,
            encode_path(repo),
            encode_segment(rev)
        )
    }

    /// POSTs `body` with the token and returns the status and the answer.
    fn post(
        &self,
        url: &str,
        content_type: &str,
        body: &[u8],
        what: &str,
    ) -> Result<(u16, String)> {
        let mut resp = self
            .agent
            .post(url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Content-Type", content_type)
            .header("Accept", content_type_accept(content_type))
            .send(body)
            .map_err(|e| {
                anyhow!(
                    "{what}: cannot reach {}: {}",
                    self.endpoint,
                    scrub(&e.to_string(), &self.token)
                )
            })?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let (code, message) = (header("X-Error-Code"), header("X-Error-Message"));
        let text = resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .unwrap_or_default();
        if (200..300).contains(&status) || status == 409 {
            return Ok((status, text));
        }
        Err(self
            .status_error(status, &code, &message, &text, what)
            .into())
    }

    /// An error answer as a message that says what to do.
    fn status_error(
        &self,
        status: u16,
        code: &str,
        message: &str,
        body: &str,
        what: &str,
    ) -> StatusError {
        let said = if !message.is_empty() {
            message.to_owned()
        } else {
            serde_json::from_str::<Json>(body)
                .ok()
                .and_then(|j| j["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| body.chars().take(200).collect())
        };
        let said = scrub(said.trim(), &self.token);
        let detail = if said.is_empty() {
            String::new()
        } else {
            format!(" ({said})")
        };
        let message = match (status, code) {
            (401 | 403, _) => format!(
                "{what}: access denied (HTTP {status}){detail}; the Hub token (HF_TOKEN or the \
                 token file) needs write access to this repository"
            ),
            (_, "RepoNotFound") => format!(
                "{what}: repository not found{detail}; create it on the Hub or set `create: true` \
                 on the publish step"
            ),
            (_, "RevisionNotFound") => {
                format!("{what}: branch not found{detail}; create it on the Hub first")
            }
            _ => format!("{what}: HTTP {status}{detail}"),
        };
        StatusError { status, message }
    }

    /// Creates the model repository `repo`; false when it already exists.
    pub fn create_repo(&self, repo: &str, private: bool) -> Result<bool> {
        let (organization, name) = match repo.split_once('/') {
            Some((o, n)) => (Some(o), n),
            None => (None, repo),
        };
        let body = json!({"name": name, "organization": organization, "type": "model", "private": private});
        let (status, _) = self.post(
            &format!("{}/api/repos/create", self.endpoint),
            "application/json",
            body.to_string().as_bytes(),
            &format!("creating {repo}"),
        )?;
        Ok(status != 409)
    }

    /// Creates branch `branch` of `repo` from its default branch; false when
    /// it already exists.
    pub fn create_branch(&self, repo: &str, branch: &str) -> Result<bool> {
        let (status, _) = self.post(
            &self.api(repo, "branch", branch),
            "application/json",
            b"{}",
            &format!("creating branch {branch} of {repo}"),
        )?;
        Ok(status != 409)
    }

    /// The pre-upload check of `files` for `repo` at `rev`, in the same order.
    pub fn preupload(&self, repo: &str, rev: &str, files: &[Announce]) -> Result<Vec<Preupload>> {
        let what = format!("{repo}@{rev}");
        let mut out = Vec::with_capacity(files.len());
        // The Hub takes at most a few hundred files per request.
        for chunk in files.chunks(256) {
            let b64 = base64::engine::general_purpose::STANDARD;
            let body = json!({"files": chunk.iter().map(|f| json!({
                "path": f.path,
                "sample": b64.encode(f.sample),
                "size": f.size,
            })).collect::<Vec<_>>()});
            let (status, text) = self.post(
                &self.api(repo, "preupload", rev),
                "application/json",
                body.to_string().as_bytes(),
                &what,
            )?;
            if status == 409 {
                bail!("{what}: the pre-upload check answered HTTP 409");
            }
            let answer: PreuploadAnswer = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{what}: unexpected pre-upload answer from {}",
                    self.endpoint
                )
            })?;
            let by_path: BTreeMap<&str, &PreuploadFile> =
                answer.files.iter().map(|f| (f.path.as_str(), f)).collect();
            for f in chunk {
                let Some(p) = by_path.get(f.path) else {
                    bail!(
                        "{what}: the pre-upload answer does not mention `{}`",
                        f.path
                    );
                };
                let mode = match (p.upload_mode.as_str(), f.size) {
                    // Empty files cannot go through LFS storage.
                    (_, 0) | ("regular", _) => UploadMode::Regular,
                    ("lfs", _) => UploadMode::Lfs,
                    (other, _) => bail!(
                        "{what}: the Hub asks to send `{}` as `{other}`, which yibuild does not \
                         support (only `regular` and `lfs`)",
                        f.path
                    ),
                };
                out.push(Preupload {
                    mode,
                    remote_oid: p.oid.clone(),
                });
            }
        }
        Ok(out)
    }

    /// Asks the LFS batch API where to upload `objects` (`(sha256, size)`);
    /// objects the Hub already stores come back without actions.
    pub fn lfs_batch(
        &self,
        repo: &str,
        rev: &str,
        objects: &[(String, u64)],
    ) -> Result<Vec<LfsObject>> {
        let what = format!("{repo}@{rev}: LFS batch");
        let body = json!({
            "operation": "upload",
            "transfers": ["basic", "multipart"],
            "objects": objects.iter().map(|(oid, size)| json!({"oid": oid, "size": size})).collect::<Vec<_>>(),
            "hash_algo": "sha256",
            "ref": {"name": rev},
        });
        let (_, text) = self.post(
            &format!(
                "{}/{}.git/info/lfs/objects/batch",
                self.endpoint,
                encode_path(repo)
            ),
            "application/vnd.git-lfs+json",
            body.to_string().as_bytes(),
            &what,
        )?;
        #[derive(Deserialize)]
        struct Batch {
            objects: Vec<LfsObject>,
        }
        let batch: Batch = serde_json::from_str(&text)
            .with_context(|| format!("{what}: unexpected answer from {}", self.endpoint))?;
        Ok(batch.objects)
    }

    /// Sends the bytes of `file` as one LFS object (basic transfer), then
    /// confirms it when the Hub asked for that. The storage URL gets only the
    /// headers the batch answer gave, never the token.
    pub fn lfs_upload(
        &self,
        path: &str,
        file: &Path,
        sha256: &str,
        size: u64,
        actions: &LfsActions,
    ) -> Result<()> {
        let what = format!("uploading {path}");
        let Some(upload) = &actions.upload else {
            return Ok(());
        };
        match upload.header.get("chunk_size") {
            Some(chunk) => self.multipart(&what, file, sha256, size, upload, chunk)?,
            None => {
                let body = std::fs::File::open(file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let mut req = self.agent.put(&upload.href);
                for (k, v) in &upload.header {
                    if let Some(v) = v.as_str() {
                        req = req.header(k.as_str(), v);
                    }
                }
                self.check_put(req.send(body), &what)?;
            }
        }
        if let Some(verify) = &actions.verify {
            let body = json!({"oid": sha256, "size": size}).to_string();
            self.post(
                &verify.href,
                "application/vnd.git-lfs+json",
                body.as_bytes(),
                &format!("{what}: verify"),
            )?;
        }
        Ok(())
    }

    /// The answer of a PUT to LFS storage, as the response or an error.
    fn check_put(
        &self,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        what: &str,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut resp = sent.map_err(|e| {
            anyhow!(
                "{what}: the upload was interrupted: {}",
                scrub(&e.to_string(), &self.token)
            )
        })?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            return Err(self.status_error(status, "", "", &text, what).into());
        }
        Ok(resp)
    }

    /// The Hub's multipart transfer (`lfs.py` `_upload_multi_part`): the
    /// batch answer's header maps part numbers (`"00001"`…) to URLs and gives
    /// `chunk_size`; each chunk is PUT to its URL (held in memory, one at a
    /// time, so storage gets a Content-Length), and the parts' ETags are
    /// POSTed to the upload `href` to assemble the object.
    fn multipart(
        &self,
        what: &str,
        file: &Path,
        sha256: &str,
        size: u64,
        upload: &LfsAction,
        chunk: &Json,
    ) -> Result<()> {
        let chunk = chunk
            .as_u64()
            .or_else(|| chunk.as_str().and_then(|c| c.parse().ok()))
            .filter(|&c| c > 0)
            .with_context(|| {
                format!("{what}: the Hub sent a bad multipart chunk size `{chunk}`")
            })?;
        let mut parts: Vec<(u64, &str)> = upload
            .header
            .iter()
            .filter_map(|(k, v)| Some((k.parse::<u64>().ok()?, v.as_str()?)))
            .collect();
        parts.sort();
        if parts.len() as u64 != size.div_ceil(chunk) {
            bail!(
                "{what}: the Hub sent {} part URLs for {size} bytes in chunks of {chunk}",
                parts.len()
            );
        }
        let mut reader =
            std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
        let mut etags = Vec::with_capacity(parts.len());
        for (number, url) in &parts {
            let mut buf = Vec::new();
            std::io::Read::by_ref(&mut reader)
                .take(chunk)
                .read_to_end(&mut buf)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let part = format!("{what} (part {number} of {})", parts.len());
            let resp = self.check_put(self.agent.put(*url).send(&buf[..]), &part)?;
            let etag = resp
                .headers()
                .get("ETag")
                .and_then(|v| v.to_str().ok())
                .filter(|e| !e.is_empty())
                .with_context(|| format!("{part}: the storage answered without an ETag"))?;
            etags.push(json!({"partNumber": number, "etag": etag}));
        }
        let body = json!({"oid": sha256, "parts": etags}).to_string();
        let resp = self
            .agent
            .post(&upload.href)
            .header("Content-Type", "application/vnd.git-lfs+json")
            .header("Accept", "application/vnd.git-lfs+json")
            .send(body.as_bytes());
        self.check_put(resp, &format!("{what}: completing the multipart upload"))?;
        Ok(())
    }

    /// Makes one commit on `rev` of `repo`; returns the commit id.
    pub fn commit(
        &self,
        repo: &str,
        rev: &str,
        summary: &str,
        description: &str,
        files: &[CommitFile],
    ) -> Result<String> {
        let what = format!("{repo}@{rev}: commit");
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut body =
            json!({"key": "header", "value": {"summary": summary, "description": description}})
                .to_string();
        body.push('\n');
        for f in files {
            let line = match f {
                CommitFile::Regular { path, bytes } => json!({
                    "key": "file",
                    "value": {"content": b64.encode(bytes), "path": path, "encoding": "base64"},
                }),
                CommitFile::Lfs { path, sha256, size } => json!({
                    "key": "lfsFile",
                    "value": {"path": path, "algo": "sha256", "oid": sha256, "size": size},
                }),
            };
            body.push_str(&line.to_string());
            body.push('\n');
        }
        let (status, text) = self.post(
            &self.api(repo, "commit", rev),
            "application/x-ndjson",
            body.as_bytes(),
            &what,
        )?;
        if status == 409 {
            bail!("{what}: the branch moved while committing (HTTP 409); publish again");
        }
        let answer: Json = serde_json::from_str(&text)
            .with_context(|| format!("{what}: unexpected answer from {}", self.endpoint))?;
        answer["commitOid"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("{what}: the answer names no `commitOid`"))
    }
}

/// The `Accept` header for a request body type.
fn content_type_accept(content_type: &str) -> &str {
    match content_type {
        "application/vnd.git-lfs+json" => content_type,
        _ => "application/json",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_every_copy_of_the_token() {
        assert_eq!(
            scrub("bad token hf_abc in hf_abc", "hf_abc"),
            "bad token <token> in <token>"
        );
        assert_eq!(scrub("nothing", ""), "nothing");
    }

    #[test]
    fn a_writer_without_a_token_says_where_to_put_one() {
        let config = HubConfig {
            endpoint: "http://127.0.0.1:9".into(),
            token: None,
            cache_dir: "unused".into(),
            offline: false,
            update_lock: false,
            connections: 1,
            chunk_size: 1,
            progress: false,
        };
        let err = HubWriter::new(&config).unwrap_err().to_string();
        assert!(err.contains("HF_TOKEN") && err.contains("token"), "{err}");
    }
}

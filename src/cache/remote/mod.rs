//! The shared remote cache: the same two tables as the local cache (objects
//! by blake3, actions by step key) in an S3-compatible bucket, so CI runners
//! and colleagues reuse each other's builds.
//!
//! Layout under `s3://bucket/prefix/`: `objects/ab/cdef…` and
//! `actions/ab/<key>.json`, exactly as on disk. The protocol keeps the bucket
//! sound without locks: objects are immutable and named by their content, so
//! concurrent uploads of one object write the same bytes; an action is put
//! only after all its objects, and with `If-None-Match: *`, so the first
//! writer's entry stays. Downloads are verified before they enter the local
//! cache; a corrupt object is reported, never used, and (when this build may
//! write) deleted so the rebuilt output can replace it.

mod s3;
mod transfer;

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};

pub use s3::S3Location;
pub use transfer::{CONCURRENCY, PART_SIZE};

use super::{Cache, Manifest};

/// What a build may do with the remote cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RemoteMode {
    /// Restore hits and upload what was built (the default).
    #[default]
    ReadWrite,
    /// Restore hits, never write: for untrusted jobs such as pull requests.
    Read,
    /// Upload what was built, never restore: for a builder that seeds the cache.
    PushOnly,
}

impl RemoteMode {
    /// Parses `read`, `read-write` or `push-only`.
    pub fn parse(text: &str) -> Result<RemoteMode> {
        Ok(match text {
            "read-write" => RemoteMode::ReadWrite,
            "read" => RemoteMode::Read,
            "push-only" => RemoteMode::PushOnly,
            _ => bail!("`{text}` is not a remote cache mode (read, read-write or push-only)"),
        })
    }

    /// Whether hits are restored.
    pub fn reads(self) -> bool {
        self != RemoteMode::PushOnly
    }

    /// Whether built outputs are uploaded.
    pub fn writes(self) -> bool {
        self != RemoteMode::Read
    }
}

/// Where the remote cache is and how to use it, after flags, environment and
/// `.yibuild.yaml` are combined.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteSettings {
    /// `s3://bucket/prefix`.
    pub url: String,
    /// What the build may do.
    pub mode: RemoteMode,
    /// An explicit endpoint for stores other than AWS.
    pub endpoint: Option<String>,
    /// The bucket's region.
    pub region: Option<String>,
    /// Fail instead of building locally when the remote is unusable.
    pub required: bool,
}

/// Why a remote operation did not deliver.
#[derive(Debug)]
pub enum RemoteError {
    /// The store could not be reached or refused the request (network,
    /// credentials, permissions): the rest of the build should not keep trying.
    Unreachable(anyhow::Error),
    /// The remote entry is damaged (bad JSON, missing or corrupt object): this
    /// step is rebuilt; other entries are still used.
    Corrupt(String),
    /// Writing into the local cache failed.
    Local(anyhow::Error),
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteError::Unreachable(e) => write!(f, "{e:#}"),
            RemoteError::Corrupt(what) => f.write_str(what),
            RemoteError::Local(e) => write!(f, "local cache: {e:#}"),
        }
    }
}

impl std::error::Error for RemoteError {}

/// The innermost cause of `e` ("Connection refused (os error 111)", the
/// store's 403 answer): what the user has to fix, without the layers of
/// client, retry and request wording around it.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    // An S3 refusal carries an XML error document; its code and message are
    // what matters (`403 Forbidden (SignatureDoesNotMatch)`).
    let tag = |name: &str| {
        let start = text.find(&format!("<{name}>"))? + name.len() + 2;
        let end = start + text[start..].find(&format!("</{name}>"))?;
        Some(text[start..end].trim().to_owned()).filter(|t| !t.is_empty())
    };
    match (
        text.find("<?xml").or_else(|| text.find("<Error>")),
        tag("Code"),
    ) {
        (Some(at), Some(code)) => {
            let head = text[..at].trim_end().trim_end_matches(':');
            match tag("Message") {
                Some(message) => format!("{head} ({code}: {message})"),
                None => format!("{head} ({code})"),
            }
        }
        _ => text,
    }
}

/// What an upload did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Bytes sent (objects the bucket already had are not sent again).
    pub bytes: u64,
    /// Whether this upload wrote the action entry (false when another writer
    /// had already put it).
    pub action_written: bool,
}

/// An open remote cache.
pub struct RemoteCache {
    settings: RemoteSettings,
    location: S3Location,
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for RemoteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteCache({})", self.settings.url)
    }
}

impl RemoteCache {
    /// Opens the bucket and checks that it answers (one HEAD request), so a
    /// misconfigured remote is reported once, up front.
    pub fn connect(settings: &RemoteSettings) -> Result<RemoteCache> {
        let location = S3Location::parse(&settings.url)?;
        let store = s3::open(
            &location,
            settings.endpoint.as_deref(),
            settings.region.as_deref(),
        )?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(CONCURRENCY)
            .thread_name("yibuild-remote")
            .enable_all()
            .build()
            .context("cannot start the remote cache's I/O threads")?;
        let remote = RemoteCache {
            settings: settings.clone(),
            location,
            store,
            runtime,
        };
        // A listing, not a HEAD of some key: a HEAD of a missing bucket reads
        // as a missing key, which would hide a misspelt bucket until the
        // first upload (or forever, in read mode).
        let probe = remote.location.path("actions");
        match remote
            .runtime
            .block_on(remote.store.list_with_delimiter(Some(&probe)))
        {
            Ok(_) => Ok(remote),
            Err(e) => {
                let endpoint = settings
                    .endpoint
                    .as_deref()
                    .map(|e| format!(" (endpoint {e})"))
                    .unwrap_or_default();
                bail!(
                    "remote cache {}{endpoint} is not usable: {}",
                    settings.url,
                    root_cause(&e)
                )
            }
        }
    }

    /// The settings it was opened with.
    pub fn settings(&self) -> &RemoteSettings {
        &self.settings
    }

    fn action_path(&self, key: &str) -> object_store::path::Path {
        self.location
            .path(&format!("actions/{}/{key}.json", &key[..2]))
    }

    fn object_path(&self, hash: &str) -> object_store::path::Path {
        self.location
            .path(&format!("objects/{}/{}", &hash[..2], &hash[2..]))
    }

    /// The output manifest the bucket has for step `key`, if any.
    pub fn lookup(&self, key: &str) -> Result<Option<Manifest>, RemoteError> {
        let path = self.action_path(key);
        let bytes = self.runtime.block_on(async {
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        let Some(bytes) = bytes.map_err(|e| RemoteError::Unreachable(e.into()))? else {
            return Ok(None);
        };
        match Manifest::parse(&bytes) {
            Ok(m) => Ok(Some(m)),
            Err(why) => {
                self.forget(&path);
                Err(RemoteError::Corrupt(format!(
                    "the action entry {path} is not a valid manifest ({why})"
                )))
            }
        }
    }

    /// Downloads the objects of `manifest` that the local cache lacks, then
    /// records the action `key` locally. Returns the bytes fetched. A corrupt
    /// object is deleted from the bucket when this build may write, so that
    /// the local rebuild's upload replaces it.
    pub fn pull(&self, cache: &Cache, key: &str, manifest: &Manifest) -> Result<u64, RemoteError> {
        let mut fetched = 0;
        for entry in manifest.files.iter().filter(|e| !cache.has_object(e)) {
            let path = self.object_path(&entry.hash);
            let got =
                self.runtime
                    .block_on(transfer::download(self.store.as_ref(), &path, cache, entry));
            match got {
                Ok(n) => fetched += n,
                Err(e @ RemoteError::Corrupt(_)) => {
                    self.forget(&path);
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        cache
            .record_action(key, manifest)
            .map_err(|e| RemoteError::Local(e.into()))?;
        Ok(fetched)
    }

    /// Uploads the objects of `manifest` the bucket lacks, then the action
    /// entry, which is created only if no other writer has put it.
    pub fn push(&self, cache: &Cache, key: &str, manifest: &Manifest) -> Result<Pushed> {
        self.runtime.block_on(async {
            let mut pushed = Pushed::default();
            for entry in &manifest.files {
                let local = cache.object_path(&entry.hash);
                let remote = self.object_path(&entry.hash);
                pushed.bytes += transfer::upload(self.store.as_ref(), &remote, &local, entry.size)
                    .await
                    .with_context(|| format!("cannot upload object {}", entry.hash))?;
            }
            let body = serde_json::to_vec_pretty(manifest)?;
            let options = PutOptions::from(PutMode::Create);
            match self
                .store
                .put_opts(&self.action_path(key), body.into(), options)
                .await
            {
                Ok(_) => pushed.action_written = true,
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("cannot upload the action entry of {key}")))
                }
            }
            Ok(pushed)
        })
    }

    /// Deletes a damaged remote entry, when this build may write.
    fn forget(&self, path: &object_store::path::Path) {
        if self.settings.mode.writes() {
            self.runtime.block_on(self.store.delete(path)).ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);

    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    #[test]
    fn the_root_cause_is_the_innermost_error_with_s3_codes_extracted() {
        let refused = Chain(
            "Generic S3 error: HEAD failed",
            Some(Box::new(Chain("Connection refused (os error 111)", None))),
        );
        assert_eq!(root_cause(&refused), "Connection refused (os error 111)");
        let xml = Chain(
            "Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\"?>\
             <Error><Code>NoSuchBucket</Code><Message>no bucket `x`</Message></Error>",
            None,
        );
        assert_eq!(
            root_cause(&xml),
            "Server returned non-2xx status code: 404 Not Found (NoSuchBucket: no bucket `x`)"
        );
    }
}

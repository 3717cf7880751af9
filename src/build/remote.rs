//! The remote cache as one build uses it: lookups, restores and background
//! uploads, with one warning and a local build when it fails.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::build::error::BuildError;

use crate::build::events::Reporter;
use crate::cache::remote::{RemoteCache, RemoteError, RemoteSettings};
use crate::cache::{Cache, Manifest};
use crate::fs::size::human_bytes;

/// The remote cache as one build uses it. The first time it cannot be
/// reached it is turned off for the rest of the build with one warning (or,
/// with `required`, the build fails).
pub(crate) struct Remote<'a> {
    cache: Option<RemoteCache>,
    off: AtomicBool,
    failure: std::sync::Mutex<Option<String>>,
    reporter: &'a dyn Reporter,
}

impl<'a> Remote<'a> {
    /// Connects to the configured remote; one that cannot be used is a
    /// warning and a local build, or an error when it is required.
    pub(crate) fn connect(
        settings: Option<&RemoteSettings>,
        reporter: &'a dyn Reporter,
    ) -> Result<Remote<'a>, BuildError> {
        let cache = match settings.map(RemoteCache::connect) {
            None => None,
            Some(Ok(remote)) => Some(remote),
            Some(Err(e)) if settings.is_some_and(|s| s.required) => {
                return Err(BuildError::RemoteRequired(e))
            }
            Some(Err(e)) => {
                reporter.warning(&format!("{e:#}; building without it"));
                None
            }
        };
        Ok(Remote {
            cache,
            off: AtomicBool::new(false),
            failure: Default::default(),
            reporter,
        })
    }

    pub(crate) fn usable(&self) -> Option<&RemoteCache> {
        self.cache
            .as_ref()
            .filter(|_| !self.off.load(Ordering::Relaxed))
    }

    /// The remote, if hits may be restored from it.
    pub(crate) fn readable(&self) -> Option<&RemoteCache> {
        self.usable().filter(|r| r.settings().mode.reads())
    }

    /// The remote, if built outputs may be uploaded to it.
    pub(crate) fn writable(&self) -> Option<&Self> {
        self.usable()
            .filter(|r| r.settings().mode.writes())
            .map(|_| self)
    }

    /// The remote's manifest for `key`; errors are reported and read as a miss.
    pub(crate) fn lookup(&self, key: &str) -> Option<Manifest> {
        let r = self.readable()?;
        match r.lookup(key) {
            Ok(hit) => hit,
            Err(RemoteError::Corrupt(what)) => {
                self.reporter.warning(&format!(
                    "remote cache {}: {what}; ignored",
                    r.settings().url
                ));
                None
            }
            Err(e) => {
                self.unreachable(&e.to_string());
                None
            }
        }
    }

    /// A restore of `step` failed: report it; the step is built here instead.
    pub(crate) fn refused(&self, step: &str, e: RemoteError) -> Result<(), BuildError> {
        match e {
            RemoteError::Corrupt(what) => self.reporter.warning(&format!(
                "step `{step}`: the remote cache's entry is damaged ({what}); it was not used and the step is built here"
            )),
            RemoteError::Unreachable(_) => self.unreachable(&e.to_string()),
            RemoteError::Local(e) => return Err(BuildError::Restore(e)),
        }
        Ok(())
    }

    /// Uploads a built step, reporting the outcome as a note or a warning.
    pub(crate) fn upload(&self, cache: &Cache, step: &str, key: &str, manifest: &Manifest) {
        let Some(r) = self.usable() else {
            return;
        };
        match r.push(cache, key, manifest) {
            Ok(p) => self.reporter.note(
                step,
                &format!("uploaded {} to the remote cache", human_bytes(p.bytes)),
            ),
            Err(e) => self.unreachable(&format!("{e:#}")),
        }
    }

    pub(crate) fn unreachable(&self, why: &str) {
        if self.off.swap(true, Ordering::Relaxed) {
            return;
        }
        let url = self
            .cache
            .as_ref()
            .map_or("", |r| r.settings().url.as_str());
        *self.failure.lock().expect("remote failure lock") = Some(why.to_owned());
        self.reporter.warning(&format!(
            "remote cache {url} failed ({why}); the rest of the build does not use it"
        ));
    }

    /// Fails the build if the remote was required and failed during it.
    pub(crate) fn finish(&self) -> Result<(), BuildError> {
        let required = self.cache.as_ref().is_some_and(|r| r.settings().required);
        match self.failure.lock().expect("remote failure lock").take() {
            Some(why) if required => Err(BuildError::RemoteRequired(anyhow::anyhow!(why))),
            _ => Ok(()),
        }
    }
}

//! Hugging Face Hub sources (`hf://org/name[@revision]`): resolution of a
//! revision to a commit, the `yibuild.lock` file that pins it, selective and
//! resumable downloads into the standard Hub cache (shared with Python's
//! `huggingface_hub`), and the header-only pre-flight view that lets a build
//! validate every source before it downloads any weights.
//!
//! yibuild reads the `HF_*` variables itself and passes endpoint, token and
//! cache directory explicitly, so no library default decides where bytes go.

pub mod api;
pub mod download;
pub mod layout;
pub mod lock;
pub mod select;
pub mod upload;

use std::path::PathBuf;

pub use lock::{LockEntry, LockFile, LockedFile};

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// What the command line says about Hub access.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubOptions {
    /// `--offline`: use only the lock and the local Hub cache.
    pub offline: bool,
    /// `--update-lock`: resolve revisions again and rewrite their lock entries.
    pub update_lock: bool,
    /// Draw download progress bars (not under `--json` or `--quiet`).
    pub progress: bool,
}

/// Where and how to talk to the Hub: endpoint, token, cache directory and
/// whether the network may be used.
#[derive(Clone)]
pub struct HubConfig {
    /// `HF_ENDPOINT`, without a trailing slash.
    pub endpoint: String,
    /// `HF_TOKEN` (or the token file `huggingface-cli login` writes).
    pub token: Option<String>,
    /// The Hub cache (`HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// No network: `--offline` or `HF_HUB_OFFLINE=1`.
    pub offline: bool,
    /// `--update-lock`.
    pub update_lock: bool,
    /// Connections used at once for one file's download.
    pub connections: usize,
    /// Bytes per ranged request (the unit of parallelism and of resume).
    pub chunk_size: u64,
    /// Draw progress bars (off under `--json` and `--quiet`).
    pub progress: bool,
}

impl std::fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("HubConfig")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("update_lock", &self.update_lock)
            .finish()
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// The token file `hf auth login` writes: `HF_TOKEN_PATH`, else
/// `$HF_HOME/token` (default `~/.cache/huggingface/token`).
pub fn token_file() -> PathBuf {
    std::env::var_os("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("token"))
}

fn hf_home() -> PathBuf {
    if let Some(home) = std::env::var_os("HF_HOME") {
        return PathBuf::from(home);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map_or_else(|| PathBuf::from("."), PathBuf::from)
                .join(".cache")
        });
    base.join("huggingface")
}

impl HubConfig {
    /// The configuration from the environment (`HF_ENDPOINT`, `HF_TOKEN`,
    /// `HF_HUB_CACHE`/`HF_HOME`, `HF_HUB_OFFLINE`) and the command line.
    pub fn from_env(opts: HubOptions) -> HubConfig {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
            .trim()
            .trim_end_matches('/')
            .to_owned();
        let token = std::env::var("HF_TOKEN")
            .ok()
            .or_else(|| std::fs::read_to_string(token_file()).ok())
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        HubConfig {
            endpoint,
            token,
            cache_dir: hub_cache_dir(),
            offline: opts.offline || env_flag("HF_HUB_OFFLINE") || env_flag("TRANSFORMERS_OFFLINE"),
            update_lock: opts.update_lock,
            connections: 8,
            chunk_size: 64 << 20,
            progress: opts.progress,
        }
    }
}

/// The standard Hugging Face Hub cache directory (`HF_HUB_CACHE`, else
/// `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
pub fn hub_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("huggingface").join("hub")
}

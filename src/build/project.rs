//! Project settings shared by every build in a directory tree: the remote
//! cache and the executor, read from `.yibuild.yaml`.
//!
//! The file is found like cargo finds `.cargo/config.toml`: in the current
//! directory or the nearest parent that has one (or the file named by
//! `YIBUILD_CONFIG`). Command-line flags override environment variables, which
//! override the file. A bad file is a bad recipe: exit code 2, with the place.
//!
//! ```yaml
//! remote_cache:
//!   url: s3://team-models/yibuild
//!   mode: read-write        # read | read-write | push-only
//!   endpoint: https://minio.internal:9000   # else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL
//!   region: us-east-1
//!   required: false
//! executor: local           # or slurm
//! slurm:                    # defaults for the Slurm executor
//!   partition: gpu
//!   account: lab
//!   time: "4:00:00"
//!   srun_args: [--qos=normal]
//!   retries: 1
//!   node_cache: /scratch/yibuild   # nodes without a shared filesystem
//! ```

use std::path::{Path, PathBuf};

use crate::build::error::InputError;
use crate::build::options::SlurmConfig;
use crate::cache::remote::{RemoteMode, RemoteSettings};
use crate::syntax::diag::{Diag, RecipeError};
use crate::syntax::fields::Fields;
use crate::syntax::yaml::parse_documents;

/// The name of the project settings file.
pub const CONFIG_FILE: &str = ".yibuild.yaml";

/// What `.yibuild.yaml` says; every field is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectConfig {
    /// The file these settings came from, if any.
    pub file: Option<PathBuf>,
    /// `remote_cache:`.
    pub remote_cache: Option<RemoteCacheSettings>,
    /// `executor:` (`local` or `slurm`).
    pub executor: Option<String>,
    /// `slurm:`, settings of the Slurm executor.
    pub slurm: Option<SlurmConfig>,
}

/// The `remote_cache:` section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteCacheSettings {
    /// `s3://bucket/prefix`.
    pub url: Option<String>,
    /// `read`, `read-write` or `push-only`.
    pub mode: Option<String>,
    /// An explicit endpoint for stores other than AWS (MinIO, R2, Ceph).
    pub endpoint: Option<String>,
    /// The bucket's region.
    pub region: Option<String>,
    /// Fail the build instead of building locally when the remote is unusable.
    pub required: Option<bool>,
}

impl ProjectConfig {
    /// Finds and reads the project settings for a build started in `cwd`:
    /// `$YIBUILD_CONFIG` if set, else the nearest `.yibuild.yaml` in `cwd` or
    /// a parent. No file means default settings.
    pub fn discover(cwd: &Path) -> Result<ProjectConfig, RecipeError> {
        if let Some(path) = std::env::var_os("YIBUILD_CONFIG").filter(|p| !p.is_empty()) {
            return ProjectConfig::load(Path::new(&path));
        }
        for dir in cwd.ancestors() {
            let candidate = dir.join(CONFIG_FILE);
            if candidate.is_file() {
                return ProjectConfig::load(&candidate);
            }
        }
        Ok(ProjectConfig::default())
    }

    /// Reads one settings file.
    pub fn load(path: &Path) -> Result<ProjectConfig, RecipeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RecipeError::file(path, format!("cannot read project settings: {e}")))?;
        let mut config = ProjectConfig::parse(path, &text)?;
        config.file = Some(path.to_owned());
        Ok(config)
    }

    /// Parses settings text; `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<ProjectConfig, RecipeError> {
        let diag = Diag::new(path, text);
        let docs = parse_documents(text).map_err(|e| diag.error(e.span, e.message))?;
        let Some(root) = docs.first() else {
            return Ok(ProjectConfig::default());
        };
        let top = Fields::new(
            &diag,
            root,
            "project settings",
            &["remote_cache", "executor", "slurm"],
        )?;
        let remote_cache = match top.opt("remote_cache") {
            Some(node) => {
                let f = Fields::new(
                    &diag,
                    node,
                    "`remote_cache`",
                    &["url", "mode", "endpoint", "region", "required"],
                )?;
                let settings = RemoteCacheSettings {
                    url: f.opt_str("url")?,
                    mode: f.opt_str("mode")?,
                    endpoint: f.opt_str("endpoint")?,
                    region: f.opt_str("region")?,
                    required: f.opt_bool("required")?,
                };
                f.finish()?;
                Some(settings)
            }
            None => None,
        };
        let executor = top.opt_str("executor")?;
        if let (Some(e), Some(node)) = (&executor, top.opt("executor")) {
            if e != "local" && e != "slurm" {
                return Err(diag
                    .error(node.span, format!("unknown executor `{e}`"))
                    .with_help("use `local` or `slurm`"));
            }
        }
        let slurm = top
            .opt("slurm")
            .map(|node| {
                let f = Fields::new(
                    &diag,
                    node,
                    "`slurm`",
                    &[
                        "partition",
                        "account",
                        "time",
                        "srun_args",
                        "retries",
                        "node_cache",
                    ],
                )?;
                let base = path.parent().unwrap_or(Path::new("."));
                let settings = SlurmConfig {
                    partition: f.opt_str("partition")?,
                    account: f.opt_str("account")?,
                    time: f.opt_str("time")?,
                    srun_args: f.opt_str_list("srun_args")?,
                    retries: f.opt_u64("retries")?.unwrap_or(0) as u32,
                    node_cache: f.opt_str("node_cache")?.map(|d| base.join(d)),
                };
                f.finish()?;
                Ok::<_, RecipeError>(settings)
            })
            .transpose()?;
        top.finish()?;
        Ok(ProjectConfig {
            file: None,
            remote_cache,
            executor,
            slurm,
        })
    }
}

/// The remote cache options given on the command line or in the
/// environment; each one that is set overrides the project file.
#[derive(Debug, Clone, Default)]
pub struct RemoteOverrides {
    /// `--remote-cache` / `YIBUILD_REMOTE_CACHE`.
    pub url: Option<String>,
    /// `--remote-cache-mode` / `YIBUILD_REMOTE_CACHE_MODE`.
    pub mode: Option<String>,
    /// `--remote-cache-endpoint` / `YIBUILD_REMOTE_CACHE_ENDPOINT`.
    pub endpoint: Option<String>,
    /// `--remote-cache-required`.
    pub required: bool,
}

impl ProjectConfig {
    /// The remote cache to use: none unless a URL is set somewhere. A bad
    /// mode is an [`InputError`] naming where it came from.
    pub fn remote_settings(
        &self,
        overrides: &RemoteOverrides,
    ) -> Result<Option<RemoteSettings>, InputError> {
        let file = self.remote_cache.clone().unwrap_or_default();
        let Some(url) = overrides.url.clone().or(file.url) else {
            return Ok(None);
        };
        let mode = match (&overrides.mode, &file.mode) {
            (Some(m), _) => RemoteMode::parse(m).map_err(|e| InputError::Setting {
                place: "--remote-cache-mode".to_owned(),
                why: format!("{e:#}"),
            })?,
            (None, Some(m)) => RemoteMode::parse(m).map_err(|e| {
                let place = self.file.as_deref().unwrap_or(Path::new(CONFIG_FILE));
                InputError::Setting {
                    place: format!("{}: remote_cache.mode", place.display()),
                    why: format!("{e:#}"),
                }
            })?,
            (None, None) => RemoteMode::default(),
        };
        Ok(Some(RemoteSettings {
            url,
            mode,
            endpoint: overrides
                .endpoint
                .clone()
                .or(file.endpoint)
                .or_else(|| aws_endpoint(|k| std::env::var(k).ok())),
            region: file.region,
            required: overrides.required || file.required.unwrap_or(false),
        }))
    }
}

/// The S3 endpoint the AWS CLIs and SDKs would use: `AWS_ENDPOINT_URL_S3`,
/// else `AWS_ENDPOINT_URL` (empty values are unset). It applies when neither
/// the command line nor `.yibuild.yaml` names an endpoint, so one variable
/// points yibuild and the AWS tools at the same MinIO or R2 store.
fn aws_endpoint(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .into_iter()
        .find_map(|k| env(k).filter(|v| !v.trim().is_empty()))
        .map(|v| v.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_key() {
        let text = "remote_cache:\n  url: s3://b/p\n  mode: read\n  endpoint: http://127.0.0.1:9000\n  region: eu-west-1\n  required: true\nexecutor: local\n";
        let c = ProjectConfig::parse(Path::new(".yibuild.yaml"), text).unwrap();
        let r = c.remote_cache.unwrap();
        assert_eq!(r.url.as_deref(), Some("s3://b/p"));
        assert_eq!(r.mode.as_deref(), Some("read"));
        assert_eq!(r.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(r.region.as_deref(), Some("eu-west-1"));
        assert_eq!(r.required, Some(true));
        assert_eq!(c.executor.as_deref(), Some("local"));
    }

    #[test]
    fn unknown_key_names_the_place() {
        let text = "remote_cache:\n  urll: s3://b/p\n";
        let err = ProjectConfig::parse(Path::new(".yibuild.yaml"), text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(".yibuild.yaml:2:3"), "{msg}");
        assert!(msg.contains("did you mean `url`"), "{msg}");
    }

    #[test]
    fn flags_override_the_file() {
        let text = "remote_cache:\n  url: s3://file/p\n  mode: read\n  required: true\n";
        let c = ProjectConfig::parse(Path::new(".yibuild.yaml"), text).unwrap();
        let from_file = c
            .remote_settings(&RemoteOverrides::default())
            .unwrap()
            .unwrap();
        assert_eq!(from_file.url, "s3://file/p");
        assert_eq!(from_file.mode, RemoteMode::Read);
        assert!(from_file.required);
        let flags = RemoteOverrides {
            url: Some("s3://flag/q".into()),
            mode: Some("push-only".into()),
            ..Default::default()
        };
        let s = c.remote_settings(&flags).unwrap().unwrap();
        assert_eq!(
            (s.url.as_str(), s.mode),
            ("s3://flag/q", RemoteMode::PushOnly)
        );
        let bad = RemoteOverrides {
            mode: Some("write".into()),
            ..Default::default()
        };
        let err = c.remote_settings(&bad).unwrap_err().to_string();
        assert!(err.contains("`write` is not a remote cache mode"), "{err}");
        assert_eq!(
            ProjectConfig::default()
                .remote_settings(&RemoteOverrides::default())
                .unwrap(),
            None
        );
    }

    #[test]
    fn reads_the_slurm_section() {
        let text = "executor: slurm\nslurm:\n  partition: gpu\n  account: lab\n  time: \"4:00:00\"\n  srun_args: [--qos=high]\n  retries: 2\n";
        let c = ProjectConfig::parse(Path::new(".yibuild.yaml"), text).unwrap();
        assert_eq!(c.executor.as_deref(), Some("slurm"));
        assert_eq!(
            c.slurm,
            Some(SlurmConfig {
                partition: Some("gpu".into()),
                account: Some("lab".into()),
                time: Some("4:00:00".into()),
                srun_args: vec!["--qos=high".into()],
                retries: 2,
                node_cache: None,
            })
        );
        let err = ProjectConfig::parse(Path::new(".yibuild.yaml"), "executor: slrum\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(".yibuild.yaml:1:11"), "{err}");
        assert!(err.contains("unknown executor `slrum`"), "{err}");
    }

    #[test]
    fn aws_endpoint_url_s3_wins_over_aws_endpoint_url() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(aws_endpoint(env(&[])), None);
        assert_eq!(
            aws_endpoint(env(&[("AWS_ENDPOINT_URL", "http://a:9000")])).as_deref(),
            Some("http://a:9000")
        );
        let both = &[
            ("AWS_ENDPOINT_URL", "http://a:9000"),
            ("AWS_ENDPOINT_URL_S3", "http://s3:9000"),
        ];
        assert_eq!(aws_endpoint(env(both)).as_deref(), Some("http://s3:9000"));
        let empty_s3 = &[
            ("AWS_ENDPOINT_URL", "http://a:9000"),
            ("AWS_ENDPOINT_URL_S3", " "),
        ];
        assert_eq!(
            aws_endpoint(env(empty_s3)).as_deref(),
            Some("http://a:9000")
        );
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = ProjectConfig::parse(Path::new(".yibuild.yaml"), "").unwrap();
        assert_eq!(c, ProjectConfig::default());
    }
}

//! Opening an S3-compatible bucket from `s3://bucket/prefix`, with credentials
//! from the standard AWS chain: environment variables, then the shared
//! credentials file's profile, then what object_store finds itself (web
//! identity, container and instance credentials).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as StorePath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

/// A bucket and the key prefix the cache lives under.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Location {
    /// The bucket name.
    pub bucket: String,
    /// The prefix inside the bucket (no leading or trailing `/`).
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<S3Location> {
        let Some(rest) = url.strip_prefix("s3://") else {
            bail!("remote cache `{url}` is not an s3:// URL (expected s3://bucket/prefix)");
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("remote cache `{url}` names no bucket (expected s3://bucket/prefix)");
        }
        Ok(S3Location {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        })
    }

    /// The store path of `rel` under the prefix.
    pub fn path(&self, rel: &str) -> StorePath {
        if self.prefix.is_empty() {
            StorePath::from(rel)
        } else {
            StorePath::from(format!("{}/{rel}", self.prefix))
        }
    }
}

/// Opens the bucket. `endpoint` is for stores other than AWS (an `http://`
/// endpoint is allowed to be plain HTTP, as MinIO on a LAN usually is).
pub fn open(
    location: &S3Location,
    endpoint: Option<&str>,
    region: Option<&str>,
) -> Result<Arc<dyn ObjectStore>> {
    // object_store's HTTP client uses rustls without a built-in provider; ring
    // is the one the rest of yibuild (ureq) already uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&location.bucket)
        .with_client_options(
            ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(300)),
        );
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        if let Some(profile) = profile_credentials() {
            builder = builder
                .with_access_key_id(profile.access_key_id)
                .with_secret_access_key(profile.secret_access_key);
            if let Some(token) = profile.session_token {
                builder = builder.with_token(token);
            }
            if let Some(r) = profile.region.filter(|_| region.is_none()) {
                builder = builder.with_region(r);
            }
        }
    }
    if let Some(endpoint) = endpoint {
        // object_store also reads AWS_ENDPOINT_URL_S3 itself and prefers it
        // to any endpoint set here; the endpoint yibuild resolved (flag, then
        // .yibuild.yaml, then the AWS variables) must win.
        builder = builder
            .with_endpoint(endpoint)
            .with_config(AmazonS3ConfigKey::S3Endpoint, endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    if let Some(region) = region {
        builder = builder.with_region(region);
    }
    let store = builder
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
        })
        .build()
        .context("cannot configure the S3 client")?;
    Ok(Arc::new(store))
}

/// Keys from the shared credentials file.
struct ProfileCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    region: Option<String>,
}

/// The `AWS_PROFILE` (or `default`) profile of `AWS_SHARED_CREDENTIALS_FILE`
/// (or `~/.aws/credentials`), with its region from `AWS_CONFIG_FILE` (or
/// `~/.aws/config`).
fn profile_credentials() -> Option<ProfileCredentials> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = |var: &str, name: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
    };
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_owned());
    let creds =
        std::fs::read_to_string(file("AWS_SHARED_CREDENTIALS_FILE", "credentials")?).ok()?;
    let section = ini_section(&creds, &profile);
    let get = |k: &str| {
        section
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let config = file("AWS_CONFIG_FILE", "config").and_then(|p| std::fs::read_to_string(p).ok());
    let region = config.and_then(|text| {
        let name = if profile == "default" {
            profile.clone()
        } else {
            format!("profile {profile}")
        };
        ini_section(&text, &name)
            .into_iter()
            .find(|(k, _)| k == "region")
            .map(|(_, v)| v)
    });
    Some(ProfileCredentials {
        access_key_id: get("aws_access_key_id")?,
        secret_access_key: get("aws_secret_access_key")?,
        session_token: get("aws_session_token"),
        region,
    })
}

/// The `key = value` pairs of `[name]` in an INI text.
fn ini_section(text: &str, name: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = header.trim() == name;
        } else if let (true, Some((k, v))) = (inside, line.split_once('=')) {
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_prefix() {
        let l = S3Location::parse("s3://models/team/yibuild/").unwrap();
        assert_eq!(l.bucket, "models");
        assert_eq!(l.prefix, "team/yibuild");
        assert_eq!(
            l.path("actions/ab/k.json").as_ref(),
            "team/yibuild/actions/ab/k.json"
        );
        let bare = S3Location::parse("s3://models").unwrap();
        assert_eq!(bare.path("objects/x").as_ref(), "objects/x");
        assert!(S3Location::parse("gs://models").is_err());
        assert!(S3Location::parse("s3:///x").is_err());
    }

    #[test]
    fn reads_an_ini_section() {
        let text = "[default]\naws_access_key_id = A\n\n[ci]\n# comment\naws_access_key_id=B\naws_secret_access_key = S\n";
        assert_eq!(
            ini_section(text, "ci"),
            vec![
                ("aws_access_key_id".to_owned(), "B".to_owned()),
                ("aws_secret_access_key".to_owned(), "S".to_owned())
            ]
        );
        assert_eq!(ini_section(text, "none"), vec![]);
    }
}

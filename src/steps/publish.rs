//! `publish`: a release folder (a `package` step's output) uploaded to a
//! Hugging Face Hub repository through the Hub's HTTP API
//! ([`crate::hub::upload`]), as one commit per repository and branch.
//!
//! What is sent is decided file by file: the pre-upload check tells how the
//! Hub wants each file (inline or through LFS) and which content the branch
//! already has at that path; a file whose sha256 (LFS) or git blob id
//! (regular) matches is skipped, so publishing an unchanged release sends no
//! file and makes no commit. LFS objects go first and the commit last: an
//! interrupted publish leaves objects on the Hub that the LFS batch answer
//! then reports as present, so the next publish sends only what is missing.
//!
//! `quantized:` lays the GGUF files of the release out as the Hub's users
//! expect: all in the one repository (`together`, the default), one branch per
//! quantization type (`branches`, each branch the release without the other
//! GGUFs), or one repository per type (`repos`, named like gguf-my-repo's
//! `{repo}-{TYPE}-GGUF`, each with a short card whose `base_model` is the main
//! repository and `base_model_relation: quantized`, so the Hub's model tree
//! links them).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value as Json};
use sha1::Digest as _;
use sha2::Sha256;

use super::{input_ref, InputRef, ParseContext, Step, StepContext};
use crate::cache::memo::list_files;
use crate::fs::files::{read_chunks, read_json, write_json};
use crate::hub::upload::{Announce, CommitFile, HubWriter, UploadMode};
use crate::hub::{HubConfig, HubOptions};
use crate::syntax::diag::RecipeError;
use crate::syntax::fields::Fields;
use crate::syntax::yaml::Node;

/// The receipt a publish step leaves in its output.
pub const RECEIPT_FILE: &str = "publish.json";

/// Where the GGUF files of a release go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantLayout {
    /// With everything else, in one commit.
    Together,
    /// One branch per quantization type, named after it (`Q4_K_M`).
    Branches,
    /// One repository per quantization type, `{repo}-{TYPE}-GGUF`.
    Repos,
}

impl QuantLayout {
    fn name(self) -> &'static str {
        match self {
            QuantLayout::Together => "together",
            QuantLayout::Branches => "branches",
            QuantLayout::Repos => "repos",
        }
    }

    fn parse(text: &str) -> Option<QuantLayout> {
        [
            QuantLayout::Together,
            QuantLayout::Branches,
            QuantLayout::Repos,
        ]
        .into_iter()
        .find(|l| l.name() == text)
    }
}

/// Where and how a release is published: a publish step's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishSpec {
    /// The Hub repository, `org/name`.
    pub repo: String,
    /// The branch the release is committed to.
    pub revision: String,
    /// Create the repositories that do not exist yet.
    pub create: bool,
    /// Repositories created are private.
    pub private: bool,
    /// Where the GGUF files go.
    pub quantized: QuantLayout,
}

impl PublishSpec {
    /// The spec as a publish step's [`Step::params`] gives it.
    pub fn to_json(&self) -> Json {
        json!({
            "repo": self.repo,
            "revision": self.revision,
            "create": self.create,
            "private": self.private,
            "quantized": self.quantized.name(),
        })
    }

    /// Reads back what [`PublishSpec::to_json`] wrote (`yibuild publish`
    /// reads the spec of a recipe's publish steps from their parameters).
    pub fn from_json(v: &Json) -> Result<PublishSpec> {
        let text = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .with_context(|| format!("internal: publish parameters lack `{k}`"))
        };
        Ok(PublishSpec {
            repo: text("repo")?,
            revision: text("revision")?,
            create: v["create"].as_bool().unwrap_or(false),
            private: v["private"].as_bool().unwrap_or(false),
            quantized: QuantLayout::parse(&text("quantized")?)
                .context("internal: bad `quantized` in publish parameters")?,
        })
    }
}

/// A `publish` step.
#[derive(Debug, Clone)]
pub struct Publish {
    release: InputRef,
    spec: PublishSpec,
}

/// Why `id` is not a Hub repository id (`org/name`), if it is not one. The
/// Hub's rule (huggingface_hub's `validate_repo_id`): letters, digits, `-`,
/// `_` and `.`, at most 96 characters a part, no `--` or `..`, not starting
/// or ending with `-` or `.`.
fn repo_id_problem(id: &str) -> Option<&'static str> {
    let Some((org, name)) = id.split_once('/') else {
        return Some("it must be `org/name`");
    };
    for part in [org, name] {
        if part.is_empty() || part.len() > 96 {
            return Some("each part must have 1 to 96 characters");
        }
        if !part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Some("use letters, digits, `-`, `_` and `.` (one `/` between org and name)");
        }
        if part.contains("--") || part.contains("..") {
            return Some("`--` and `..` are not allowed");
        }
        if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
            return Some("a part may not start or end with `-` or `.`");
        }
    }
    None
}

impl Publish {
    /// Parses `{release, repo, revision, create, private, quantized}`.
    pub fn parse(node: &Node, cx: &ParseContext) -> Result<Publish, RecipeError> {
        let f = Fields::new(
            cx.diag,
            node,
            format!("publish step `{}`", cx.step),
            &[
                "release",
                "repo",
                "revision",
                "create",
                "private",
                "quantized",
            ],
        )?;
        f.finish()?;
        let repo = f.req_str("repo")?;
        if let Some(why) = repo_id_problem(&repo) {
            return Err(cx.diag.error(
                f.req("repo")?.span,
                format!("`repo` must be a Hub repository id, found `{repo}`: {why}"),
            ));
        }
        let revision = f.opt_str("revision")?.unwrap_or_else(|| "main".to_owned());
        if revision.is_empty() || revision.contains(char::is_whitespace) {
            return Err(cx.diag.error(
                f.req("revision")?.span,
                format!("`revision` must be a branch name, found `{revision}`"),
            ));
        }
        let quantized = match f.opt_str("quantized")? {
            None => QuantLayout::Together,
            Some(text) => QuantLayout::parse(&text).ok_or_else(|| {
                cx.diag.error(
                    f.opt("quantized").map_or(node.span, |n| n.span),
                    format!(
                        "`quantized` must be `together`, `branches` or `repos`, found `{text}`"
                    ),
                )
            })?,
        };
        Ok(Publish {
            release: input_ref(cx.diag, f.req("release")?, "release")?,
            spec: PublishSpec {
                repo,
                revision,
                create: f.opt_bool("create")?.unwrap_or(false),
                private: f.opt_bool("private")?.unwrap_or(false),
                quantized,
            },
        })
    }
}

impl Step for Publish {
    fn kind(&self) -> &'static str {
        "publish"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<InputRef> {
        vec![self.release.clone()]
    }

    fn params(&self) -> Json {
        self.spec.to_json()
    }

    fn run(&self, ctx: &StepContext) -> Result<()> {
        let release = &ctx.input(&self.release.name)?.path;
        let config = HubConfig::from_env(HubOptions::default());
        let reports = publish_release(&config, release, &self.spec, false, ctx.log)?;
        let receipt: Vec<Json> = reports.iter().map(TargetReport::to_json).collect();
        write_json(&ctx.out_dir.join(RECEIPT_FILE), &Json::Array(receipt))
    }
}

/// Where a file's bytes are.
#[derive(Debug, Clone)]
enum Content {
    /// A file of the release.
    File(PathBuf),
    /// Made for the upload (a quantization repository's card).
    Bytes(Vec<u8>),
}

/// One file to publish, hashed.
#[derive(Debug, Clone)]
struct LocalFile {
    /// Path in the repository.
    path: String,
    content: Content,
    size: u64,
    sha256: String,
    sample: Vec<u8>,
}

impl LocalFile {
    fn from_file(path: String, file: PathBuf) -> Result<LocalFile> {
        let mut hasher = Sha256::new();
        let mut sample = Vec::new();
        let size = read_chunks(&file, |chunk| {
            if sample.len() < 512 {
                sample.extend_from_slice(&chunk[..chunk.len().min(512 - sample.len())]);
            }
            hasher.update(chunk);
        })?;
        Ok(LocalFile {
            path,
            content: Content::File(file),
            size,
            sha256: format!("{:x}", hasher.finalize()),
            sample,
        })
    }

    fn from_bytes(path: &str, bytes: Vec<u8>) -> LocalFile {
        LocalFile {
            path: path.to_owned(),
            size: bytes.len() as u64,
            sha256: format!("{:x}", Sha256::digest(&bytes)),
            sample: bytes[..bytes.len().min(512)].to_vec(),
            content: Content::Bytes(bytes),
        }
    }

    fn bytes(&self) -> Result<Vec<u8>> {
        match &self.content {
            Content::File(p) => {
                std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
            }
            Content::Bytes(b) => Ok(b.clone()),
        }
    }

    /// The git blob id of the content: what the Hub reports for regular files.
    fn git_oid(&self) -> Result<String> {
        let bytes = self.bytes()?;
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", bytes.len()).as_bytes());
        h.update(&bytes);
        Ok(format!("{:x}", h.finalize()))
    }
}

/// One repository and branch and the files that go there.
#[derive(Debug)]
struct Target {
    repo: String,
    revision: String,
    files: Vec<LocalFile>,
}

/// What happened (or, in a dry run, would happen) to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOutcome {
    /// The branch already has this content.
    Unchanged,
    /// Sent inline in the commit.
    Regular,
    /// Sent through LFS storage (now or by an earlier, interrupted publish).
    Lfs,
}

impl FileOutcome {
    /// The word used in reports and receipts.
    pub fn as_str(self) -> &'static str {
        match self {
            FileOutcome::Unchanged => "unchanged",
            FileOutcome::Regular => "regular",
            FileOutcome::Lfs => "lfs",
        }
    }
}

/// What publishing did to one repository and branch.
#[derive(Debug, Clone)]
pub struct TargetReport {
    /// The repository.
    pub repo: String,
    /// The branch.
    pub revision: String,
    /// Each file: path, size and outcome.
    pub files: Vec<(String, u64, FileOutcome)>,
    /// LFS objects whose bytes were sent by this run (the others were
    /// already on the Hub).
    pub lfs_sent: Vec<String>,
    /// The repository was (or, in a dry run, would be) created.
    pub created: bool,
    /// The commit made; none when nothing changed or in a dry run.
    pub commit: Option<String>,
    /// Nothing was sent: only what would be.
    pub dry_run: bool,
}

impl TargetReport {
    /// The report as JSON (the receipt, and `yibuild publish --json`).
    pub fn to_json(&self) -> Json {
        let files: Vec<Json> = self
            .files
            .iter()
            .map(|(p, size, o)| json!({"path": p, "size": size, "upload": o.as_str()}))
            .collect();
        json!({
            "repo": self.repo,
            "revision": self.revision,
            "created": self.created,
            "commit": self.commit,
            "dry_run": self.dry_run,
            "files": files,
            "lfs_sent": self.lfs_sent,
        })
    }

    /// Files that are (or would be) sent.
    pub fn changed(&self) -> impl Iterator<Item = &(String, u64, FileOutcome)> {
        self.files
            .iter()
            .filter(|(_, _, o)| *o != FileOutcome::Unchanged)
    }
}

/// The quantization type in a GGUF file name (`name-Q4_K_M.gguf` → `Q4_K_M`).
fn gguf_type(file: &str) -> Option<&str> {
    let stem = file.strip_suffix(".gguf")?;
    stem.rsplit(['-', '.']).next().filter(|t| !t.is_empty())
}

/// The recipe's name and digest, from the release's `build-report.json`.
fn release_identity(release: &Path) -> Result<(String, String)> {
    let report = read_json(&release.join("build-report.json")).with_context(|| {
        format!(
            "{} is not a release folder (a `package` step's output)",
            release.display()
        )
    })?;
    match (report["recipe"].as_str(), report["recipe_digest"].as_str()) {
        (Some(name), Some(digest)) => Ok((name.to_owned(), digest.to_owned())),
        _ => bail!(
            "{}: build-report.json names no recipe and digest",
            release.display()
        ),
    }
}

/// The card of a quantization repository: front matter that links it to the
/// main repository in the Hub's model tree, the release card's license and
/// language, and a pointer to the full card.
fn quant_card(release: &Path, main_repo: &str, quant: &str, file: &str) -> Vec<u8> {
    let mut fm = Map::new();
    let release_fm = std::fs::read_to_string(release.join("README.md"))
        .ok()
        .and_then(|text| {
            let rest = text.strip_prefix("---\n")?;
            let end = rest.find("\n---")?;
            let docs = crate::syntax::yaml::parse_documents(&rest[..end]).ok()?;
            docs.first().map(Node::to_json)
        })
        .unwrap_or(Json::Null);
    for key in ["license", "license_name", "license_link", "language"] {
        if let Some(v) = release_fm.get(key) {
            fm.insert(key.to_owned(), v.clone());
        }
    }
    fm.insert("base_model".to_owned(), json!(main_repo));
    fm.insert("base_model_relation".to_owned(), json!("quantized"));
    fm.insert("library_name".to_owned(), json!("gguf"));
    fm.insert("tags".to_owned(), json!(["gguf", "yibuild", quant]));
    fm.insert("pipeline_tag".to_owned(), json!("text-generation"));
    format!(
        "---\n{}---\n\n# {main_repo} {quant} GGUF\n\n`{file}`: the {quant} quantization of \
         [{main_repo}](https://huggingface.co/{main_repo}), built and published by yibuild. \
         The model card there describes the model, its evaluation and how it was built.\n",
        crate::card::to_yaml(&Json::Object(fm), 0)
    )
    .into_bytes()
}

/// The repositories and branches a release goes to, with their files.
fn targets(release: &Path, spec: &PublishSpec) -> Result<Vec<Target>> {
    let (name, _) = release_identity(release)?;
    let archive = format!("{name}.tar");
    let mut common = Vec::new();
    let mut quants: Vec<(String, LocalFile)> = Vec::new();
    let mut rels = list_files(release)?;
    rels.sort();
    for rel in rels {
        // The optional tarball repeats the folder; the Hub gets the folder.
        if rel == archive {
            continue;
        }
        let file = LocalFile::from_file(rel.clone(), release.join(&rel))?;
        match gguf_type(&rel).filter(|_| !rel.contains('/')) {
            Some(t) if spec.quantized != QuantLayout::Together => quants.push((t.to_owned(), file)),
            _ => common.push(file),
        }
    }
    let mut out = vec![Target {
        repo: spec.repo.clone(),
        revision: spec.revision.clone(),
        files: common.clone(),
    }];
    for (quant, file) in quants {
        out.push(match spec.quantized {
            QuantLayout::Branches => {
                let mut files = common.clone();
                files.push(file);
                files.sort_by(|a, b| a.path.cmp(&b.path));
                Target {
                    repo: spec.repo.clone(),
                    revision: quant,
                    files,
                }
            }
            // (`Together` left every GGUF in `common`: no quant targets.)
            QuantLayout::Repos | QuantLayout::Together => {
                let card = quant_card(release, &spec.repo, &quant, &file.path);
                Target {
                    repo: format!("{}-{quant}-GGUF", spec.repo),
                    revision: "main".to_owned(),
                    files: vec![file, LocalFile::from_bytes("README.md", card)],
                }
            }
        });
    }
    Ok(out)
}

/// Publishes the release folder `release` as `spec` says (or, with
/// `dry_run`, only asks the Hub what would be sent). `log` gets one line per
/// file sent and per commit.
pub fn publish_release(
    config: &HubConfig,
    release: &Path,
    spec: &PublishSpec,
    dry_run: bool,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Vec<TargetReport>> {
    if config.offline {
        bail!("publishing needs the network, but the Hub is offline (--offline or HF_HUB_OFFLINE)");
    }
    let writer = HubWriter::new(config)?;
    let (name, digest) = release_identity(release)?;
    let summary = format!(
        "{name}: release built by yibuild (recipe {})",
        &digest[..digest.len().min(12)]
    );
    let description = format!(
        "Published by yibuild {} from recipe `{name}`, recipe digest {digest}.",
        env!("CARGO_PKG_VERSION")
    );
    let mut reports = Vec::new();
    for target in targets(release, spec)? {
        let r = publish_target(
            &writer,
            &target,
            spec,
            (&summary, &description),
            dry_run,
            log,
        )?;
        reports.push(r);
    }
    Ok(reports)
}

/// Whether `e` is the Hub's "no such repository" (or branch) answer.
fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::hub::api::StatusError>()
        .is_some_and(|s| s.status == 404)
}

fn publish_target(
    writer: &HubWriter,
    target: &Target,
    spec: &PublishSpec,
    (summary, description): (&str, &str),
    dry_run: bool,
    log: &(dyn Fn(&str) + Sync),
) -> Result<TargetReport> {
    let (repo, rev) = (target.repo.as_str(), target.revision.as_str());
    let mut report = TargetReport {
        repo: repo.to_owned(),
        revision: rev.to_owned(),
        files: Vec::new(),
        lfs_sent: Vec::new(),
        created: false,
        commit: None,
        dry_run,
    };
    if spec.create && !dry_run {
        report.created = writer.create_repo(repo, spec.private)?;
        if report.created {
            log(&format!("created repository {repo}"));
        }
    }
    if rev != spec.revision && !dry_run && writer.create_branch(repo, rev)? {
        log(&format!("created branch {rev} of {repo}"));
    }
    let announce: Vec<Announce> = target
        .files
        .iter()
        .map(|f| Announce {
            path: &f.path,
            sample: &f.sample,
            size: f.size,
        })
        .collect();
    let checks = match writer.preupload(repo, rev, &announce) {
        Ok(c) => c,
        // A dry run of a repository or branch that does not exist yet:
        // everything would be sent, big files through LFS as the Hub does.
        Err(e) if dry_run && is_not_found(&e) && (spec.create || rev != spec.revision) => {
            report.created = spec.create;
            for f in &target.files {
                let outcome = match f.path.ends_with(".safetensors") || f.path.ends_with(".gguf") {
                    true => FileOutcome::Lfs,
                    false => FileOutcome::Regular,
                };
                report.files.push((f.path.clone(), f.size, outcome));
            }
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    let mut commit = Vec::new();
    let mut lfs: Vec<&LocalFile> = Vec::new();
    let mut regular: Vec<(&LocalFile, Vec<u8>)> = Vec::new();
    for (f, check) in target.files.iter().zip(&checks) {
        let local_oid = match check.mode {
            UploadMode::Lfs => f.sha256.clone(),
            UploadMode::Regular => f.git_oid()?,
        };
        let outcome = if check.remote_oid.as_deref() == Some(local_oid.as_str()) {
            FileOutcome::Unchanged
        } else if check.mode == UploadMode::Lfs {
            lfs.push(f);
            FileOutcome::Lfs
        } else {
            regular.push((f, f.bytes()?));
            FileOutcome::Regular
        };
        report.files.push((f.path.clone(), f.size, outcome));
    }
    if dry_run || (lfs.is_empty() && regular.is_empty()) {
        return Ok(report);
    }
    if !lfs.is_empty() {
        let objects: Vec<(String, u64)> = lfs.iter().map(|f| (f.sha256.clone(), f.size)).collect();
        let answers = writer.lfs_batch(repo, rev, &objects)?;
        for f in &lfs {
            let Some(answer) = answers.iter().find(|a| a.oid == f.sha256) else {
                bail!(
                    "{repo}@{rev}: the LFS batch answer does not mention `{}`",
                    f.path
                );
            };
            if let Some(err) = &answer.error {
                bail!(
                    "{repo}@{rev}: the Hub refused `{}` (LFS error {}: {})",
                    f.path,
                    err.code,
                    err.message
                );
            }
            let Some(actions) = answer.actions.as_ref().filter(|a| a.upload.is_some()) else {
                log(&format!("{}: already on the Hub, not sent again", f.path));
                continue;
            };
            let Content::File(path) = &f.content else {
                bail!("internal: LFS content `{}` is not a file", f.path);
            };
            log(&format!(
                "uploading {} ({} bytes) to {repo}",
                f.path, f.size
            ));
            writer.lfs_upload(&f.path, path, &f.sha256, f.size, actions)?;
            report.lfs_sent.push(f.path.clone());
        }
    }
    for f in &lfs {
        commit.push(CommitFile::Lfs {
            path: &f.path,
            sha256: &f.sha256,
            size: f.size,
        });
    }
    for (f, bytes) in &regular {
        commit.push(CommitFile::Regular {
            path: &f.path,
            bytes,
        });
    }
    let oid = writer.commit(repo, rev, summary, description, &commit)?;
    log(&format!(
        "committed {} files to {repo}@{rev} ({oid})",
        commit.len()
    ));
    report.commit = Some(oid);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_follow_the_hubs_rule() {
        assert_eq!(repo_id_problem("org/Model-7B.v1_2"), None);
        assert!(repo_id_problem("model").is_some());
        assert!(repo_id_problem("a/b/c").is_some());
        assert!(repo_id_problem("org/a--b").is_some());
        assert!(repo_id_problem("org/-a").is_some());
        assert!(repo_id_problem("org/a b").is_some());
    }

    #[test]
    fn gguf_types_come_from_file_names() {
        assert_eq!(gguf_type("tiny-Q4_K_M.gguf"), Some("Q4_K_M"));
        assert_eq!(gguf_type("tiny.Q8_0.gguf"), Some("Q8_0"));
        assert_eq!(gguf_type("model.safetensors"), None);
    }

    #[test]
    fn a_spec_reads_back_from_its_parameters() {
        let spec = PublishSpec {
            repo: "o/m".into(),
            revision: "dev".into(),
            create: true,
            private: false,
            quantized: QuantLayout::Repos,
        };
        assert_eq!(PublishSpec::from_json(&spec.to_json()).unwrap(), spec);
    }

    #[test]
    fn git_oids_match_git_hash_object() {
        // `printf 'hello\n' | git hash-object --stdin`
        let f = LocalFile::from_bytes("a", b"hello\n".to_vec());
        assert_eq!(
            f.git_oid().unwrap(),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }
}

//! `yibuild publish` against a stand-in of the Hub's write endpoints written
//! here (create repo, branch, pre-upload, LFS batch with basic PUT + verify
//! or multipart parts + completion, NDJSON commit), which stores what it
//! receives the way the Hub does and records every request: the first
//! upload, an unchanged re-publish, resuming an interrupted publish, a
//! changed GGUF, the token never printed, the dry run, and one branch or
//! repository per quantization.

mod common;

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::process::Output;
use std::sync::{Arc, Mutex};

use base64::Engine;
use common::http::{read_request, respond};
use common::hub_server::{git_blob_id, sha256};
use common::Project;
use serde_json::{json, Value as Json};

/// A token no output may contain.
const TOKEN: &str = "hf_zzPublishTokenNeverPrinted4242";

const RECIPE: &str = r#"
yibuild: 1
name: tiny-pub
card: {license: mit, language: [en]}
sources:
  base: ./models/base
steps:
  patched:
    patch_config: {model: base, set: {max_position_embeddings: 256}}
  q8:
    quantize: {model: patched, format: gguf, type: Q8_0}
  release:
    package: {model: base, quantized: [q8]}
  hub:
    publish: {release: release, repo: me/tiny-pub, create: true}
"#;

/// LFS objects larger than this go up in parts of this size (multipart).
const MULTIPART_CHUNK: u64 = 200_000;

/// A file as a branch holds it.
#[derive(Debug, Clone, PartialEq)]
struct HubFile {
    bytes: Vec<u8>,
    lfs: bool,
}

/// One commit the stand-in accepted.
#[derive(Debug, Clone)]
struct Commit {
    repo: String,
    branch: String,
    summary: String,
    description: String,
    /// Paths in the commit, each with `lfs` or `regular`.
    files: BTreeMap<String, &'static str>,
}

#[derive(Default)]
struct State {
    /// repo → branch → path → file.
    repos: BTreeMap<String, BTreeMap<String, BTreeMap<String, HubFile>>>,
    /// repo → LFS objects by sha256.
    lfs: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// (method, path) of every request.
    seen: Vec<(String, String)>,
    /// Paths of LFS objects PUT, in order, as `repo:oid`.
    puts: Vec<String>,
    /// Whether any storage PUT carried an Authorization header.
    put_had_auth: bool,
    /// Multipart parts received, by `repo:oid`, by part number.
    parts: BTreeMap<String, BTreeMap<u64, Vec<u8>>>,
    commits: Vec<Commit>,
    /// Fail the next PUT of this object (by sha256) with a dropped connection.
    fail_put: Option<String>,
    /// Answer the next commit with HTTP 500.
    fail_commit: bool,
}

struct Hub {
    endpoint: String,
    state: Arc<Mutex<State>>,
}

impl Hub {
    fn start() -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let (st, ep) = (state.clone(), endpoint.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (st, ep) = (st.clone(), ep.clone());
                std::thread::spawn(move || serve(stream, &st, &ep));
            }
        });
        Hub { endpoint, state }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn branch(&self, repo: &str, branch: &str) -> BTreeMap<String, HubFile> {
        self.state().repos[repo][branch].clone()
    }

    fn puts(&self) -> Vec<String> {
        self.state().puts.clone()
    }

    fn commits(&self) -> Vec<Commit> {
        self.state().commits.clone()
    }

    /// Forgets the requests, PUTs and commits seen so far (not the data).
    fn reset(&self) {
        let mut st = self.state();
        st.seen.clear();
        st.puts.clear();
        st.commits.clear();
    }
}

fn json_answer(stream: &mut TcpStream, status: &str, v: Json) {
    respond(
        stream,
        status,
        &[("Content-Type", "application/json".into())],
        v.to_string().as_bytes(),
    );
}

fn hub_error(stream: &mut TcpStream, status: &str, code: &str, message: &str) {
    respond(
        stream,
        status,
        &[
            ("X-Error-Code", code.into()),
            ("X-Error-Message", message.into()),
        ],
        json!({ "error": message }).to_string().as_bytes(),
    );
}

/// The Hub's rule of thumb in this stand-in: weights go through LFS.
fn is_lfs(path: &str) -> bool {
    path.ends_with(".safetensors") || path.ends_with(".gguf")
}

fn serve(mut stream: TcpStream, state: &Mutex<State>, endpoint: &str) {
    let Some(req) = read_request(&stream) else {
        return;
    };
    let mut st = state.lock().unwrap();
    st.seen.push((req.method.clone(), req.path.clone()));
    let parts: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    // Storage: where LFS bytes are PUT (no Hub token expected there).
    if req.method == "PUT" && parts.first() == Some(&"storage") {
        let (repo, oid) = (format!("{}/{}", parts[1], parts[2]), parts[3].to_owned());
        st.put_had_auth |= req.headers.contains_key("authorization");
        if st.fail_put.as_deref() == Some(oid.as_str()) {
            st.fail_put = None;
            drop(st);
            stream.shutdown(std::net::Shutdown::Both).ok();
            return;
        }
        if sha256(&req.body) != oid {
            return hub_error(&mut stream, "400 Bad Request", "", "sha256 mismatch");
        }
        st.puts.push(format!("{repo}:{oid}"));
        st.lfs.entry(repo).or_default().insert(oid, req.body);
        return respond(&mut stream, "200 OK", &[], b"");
    }
    // Multipart: parts PUT one by one, then assembled from their ETags.
    if req.method == "PUT" && parts.first() == Some(&"part") {
        let key = format!("{}/{}:{}", parts[1], parts[2], parts[3]);
        st.put_had_auth |= req.headers.contains_key("authorization");
        let etag = format!("\"{}\"", &sha256(&req.body)[..16]);
        let number: u64 = parts[4].parse().unwrap();
        st.parts.entry(key).or_default().insert(number, req.body);
        return respond(&mut stream, "200 OK", &[("ETag", etag)], b"");
    }
    if req.method == "POST" && parts.first() == Some(&"complete") {
        let (repo, oid) = (format!("{}/{}", parts[1], parts[2]), parts[3].to_owned());
        let body: Json = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body["oid"], oid.as_str());
        let got = st
            .parts
            .remove(&format!("{repo}:{oid}"))
            .unwrap_or_default();
        let mut bytes = Vec::new();
        for (i, part) in body["parts"].as_array().unwrap().iter().enumerate() {
            let n = part["partNumber"].as_u64().unwrap();
            assert_eq!(n, i as u64 + 1);
            let etag = format!("\"{}\"", &sha256(&got[&n])[..16]);
            assert_eq!(part["etag"], etag.as_str());
            bytes.extend_from_slice(&got[&n]);
        }
        if sha256(&bytes) != oid {
            return hub_error(
                &mut stream,
                "400 Bad Request",
                "",
                "parts do not make the object",
            );
        }
        st.puts.push(format!("{repo}:{oid}"));
        st.lfs.entry(repo).or_default().insert(oid, bytes);
        return respond(&mut stream, "200 OK", &[], b"");
    }
    // Everything else is the Hub API and needs the token.
    let auth = req
        .headers
        .get("authorization")
        .cloned()
        .unwrap_or_default();
    if auth != format!("Bearer {TOKEN}") {
        // Like some servers, echo what was received: the client must not
        // print it.
        let got = auth.trim_start_matches("Bearer ");
        return hub_error(
            &mut stream,
            "401 Unauthorized",
            "",
            &format!("Invalid credentials in Authorization header: {got}"),
        );
    }
    let body: Json = serde_json::from_slice(&req.body).unwrap_or(Json::Null);
    if req.path == "/api/repos/create" {
        let repo = format!(
            "{}/{}",
            body["organization"].as_str().unwrap(),
            body["name"].as_str().unwrap()
        );
        if st.repos.contains_key(&repo) {
            return hub_error(
                &mut stream,
                "409 Conflict",
                "",
                "You already created this model repo",
            );
        }
        st.repos
            .entry(repo.clone())
            .or_default()
            .insert("main".into(), BTreeMap::new());
        return json_answer(
            &mut stream,
            "200 OK",
            json!({"url": format!("{endpoint}/{repo}")}),
        );
    }
    if parts.len() == 6 && parts[1].ends_with(".git") && parts[5] == "batch" {
        // /{org}/{name}.git/info/lfs/objects/batch
        let repo = format!("{}/{}", parts[0], parts[1].trim_end_matches(".git"));
        let have = st.lfs.get(&repo).cloned().unwrap_or_default();
        let objects: Vec<Json> = body["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let oid = o["oid"].as_str().unwrap();
                let size = o["size"].as_u64().unwrap();
                if have.contains_key(oid) {
                    json!({"oid": oid, "size": size})
                } else if size > MULTIPART_CHUNK {
                    // Large objects: the Hub's multipart transfer.
                    let mut header = json!({"chunk_size": MULTIPART_CHUNK.to_string()});
                    for n in 1..=size.div_ceil(MULTIPART_CHUNK) {
                        header[format!("{n:05}")] = json!(format!("{endpoint}/part/{repo}/{oid}/{n}"));
                    }
                    json!({"oid": oid, "size": size, "actions": {
                        "upload": {"href": format!("{endpoint}/complete/{repo}/{oid}"), "header": header},
                    }})
                } else {
                    json!({"oid": oid, "size": o["size"], "actions": {
                        "upload": {"href": format!("{endpoint}/storage/{repo}/{oid}"), "header": {"X-Test-Upload": "1"}},
                        "verify": {"href": format!("{endpoint}/api/lfs-verify/{repo}")},
                    }})
                }
            })
            .collect();
        return respond(
            &mut stream,
            "200 OK",
            &[("Content-Type", "application/vnd.git-lfs+json".into())],
            json!({"transfer": "basic", "objects": objects})
                .to_string()
                .as_bytes(),
        );
    }
    if parts.len() >= 4 && parts[1] == "lfs-verify" {
        let repo = format!("{}/{}", parts[2], parts[3]);
        let ok = st
            .lfs
            .get(&repo)
            .is_some_and(|o| o.contains_key(body["oid"].as_str().unwrap_or("")));
        return match ok {
            true => respond(&mut stream, "200 OK", &[], b""),
            false => hub_error(&mut stream, "404 Not Found", "", "object not uploaded"),
        };
    }
    // /api/models/{org}/{name}/{action}/{rev}
    if parts.len() != 6 || parts[0] != "api" || parts[1] != "models" {
        return hub_error(&mut stream, "404 Not Found", "", "no such endpoint");
    }
    let repo = format!("{}/{}", parts[2], parts[3]);
    let (action, rev) = (parts[4], parts[5].to_owned());
    let Some(branches) = st.repos.get(&repo).cloned() else {
        return hub_error(
            &mut stream,
            "404 Not Found",
            "RepoNotFound",
            "Repository not found",
        );
    };
    if action == "branch" {
        if branches.contains_key(&rev) {
            return hub_error(&mut stream, "409 Conflict", "", "Branch already exists");
        }
        let main = branches["main"].clone();
        st.repos.get_mut(&repo).unwrap().insert(rev, main);
        return json_answer(&mut stream, "200 OK", json!({}));
    }
    let Some(files) = branches.get(&rev).cloned() else {
        return hub_error(
            &mut stream,
            "404 Not Found",
            "RevisionNotFound",
            "Invalid rev id",
        );
    };
    match action {
        "preupload" => {
            let answers: Vec<Json> = body["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    let path = f["path"].as_str().unwrap();
                    let lfs = is_lfs(path);
                    let oid = files.get(path).map(|h| match h.lfs {
                        true => sha256(&h.bytes),
                        false => git_blob_id(&h.bytes),
                    });
                    json!({"path": path, "uploadMode": if lfs {"lfs"} else {"regular"}, "shouldIgnore": false, "oid": oid})
                })
                .collect();
            json_answer(&mut stream, "200 OK", json!({"files": answers}))
        }
        "commit" => {
            if st.fail_commit {
                st.fail_commit = false;
                return hub_error(
                    &mut stream,
                    "500 Internal Server Error",
                    "",
                    "try again later",
                );
            }
            let text = String::from_utf8(req.body.clone()).unwrap();
            let mut lines = text
                .lines()
                .map(|l| serde_json::from_str::<Json>(l).unwrap());
            let header = lines.next().unwrap();
            assert_eq!(header["key"], "header");
            let mut commit = Commit {
                repo: repo.clone(),
                branch: rev.clone(),
                summary: header["value"]["summary"].as_str().unwrap().to_owned(),
                description: header["value"]["description"].as_str().unwrap().to_owned(),
                files: BTreeMap::new(),
            };
            let mut new_files = files.clone();
            for line in lines {
                let v = &line["value"];
                let path = v["path"].as_str().unwrap().to_owned();
                match line["key"].as_str().unwrap() {
                    "file" => {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(v["content"].as_str().unwrap())
                            .unwrap();
                        new_files.insert(path.clone(), HubFile { bytes, lfs: false });
                        commit.files.insert(path, "regular");
                    }
                    "lfsFile" => {
                        let oid = v["oid"].as_str().unwrap();
                        let Some(bytes) = st.lfs.get(&repo).and_then(|o| o.get(oid)).cloned()
                        else {
                            return hub_error(
                                &mut stream,
                                "400 Bad Request",
                                "",
                                "LFS object not found",
                            );
                        };
                        assert_eq!(v["size"].as_u64(), Some(bytes.len() as u64));
                        new_files.insert(path.clone(), HubFile { bytes, lfs: true });
                        commit.files.insert(path, "lfs");
                    }
                    other => panic!("unexpected commit line {other}"),
                }
            }
            st.repos.get_mut(&repo).unwrap().insert(rev, new_files);
            st.commits.push(commit);
            let oid = format!("{:040x}", st.commits.len());
            json_answer(
                &mut stream,
                "200 OK",
                json!({"commitOid": oid, "commitUrl": format!("{endpoint}/{repo}/commit/{oid}")}),
            )
        }
        _ => hub_error(&mut stream, "404 Not Found", "", "no such endpoint"),
    }
}

/// A project with the tiny base model and [`RECIPE`].
fn project() -> Project {
    let p = Project::with_base();
    p.write("recipe.yaml", RECIPE);
    p
}

/// Runs `yibuild ARGS` against `hub` with the token in HF_TOKEN, and checks
/// the token appears nowhere in what it printed.
fn yb(p: &Project, hub: &Hub, args: &[&str]) -> Output {
    let out = p
        .cmd(args)
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_TOKEN", TOKEN)
        .env("HF_HOME", p.path("hf-home"))
        .output()
        .unwrap();
    assert_no_token(&out);
    out
}

fn assert_no_token(out: &Output) {
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !o.contains(TOKEN) && !e.contains(TOKEN),
        "token printed:\n{o}\n{e}"
    );
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The release folder's files with their bytes.
fn release(p: &Project) -> BTreeMap<String, Vec<u8>> {
    common::tree_bytes(&p.path("build/tiny-pub/release"))
        .into_iter()
        .collect()
}

fn gguf_name(files: &BTreeMap<String, Vec<u8>>) -> String {
    files.keys().find(|k| k.ends_with(".gguf")).unwrap().clone()
}

#[test]
fn first_publish_creates_the_repo_and_commits_the_release_once() {
    let (p, hub) = (project(), Hub::start());
    let out = yb(&p, &hub, &["publish", "recipe.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let local = release(&p);
    let remote = hub.branch("me/tiny-pub", "main");
    assert_eq!(
        remote.keys().collect::<Vec<_>>(),
        local.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &local {
        assert_eq!(&remote[path].bytes, bytes, "{path}");
        assert_eq!(remote[path].lfs, is_lfs(path), "{path}");
    }
    let commits = hub.commits();
    assert_eq!(commits.len(), 1);
    assert_eq!(
        (commits[0].repo.as_str(), commits[0].branch.as_str()),
        ("me/tiny-pub", "main")
    );
    let report: Json = serde_json::from_slice(&local["build-report.json"]).unwrap();
    let digest = report["recipe_digest"].as_str().unwrap();
    assert!(
        commits[0].summary.contains(&digest[..12]),
        "{}",
        commits[0].summary
    );
    assert!(commits[0].description.contains(digest));
    // Weights through LFS, once each, without the Hub token at the storage.
    let lfs: Vec<&String> = local.keys().filter(|k| is_lfs(k)).collect();
    assert_eq!(hub.puts().len(), lfs.len());
    assert!(
        !hub.state().put_had_auth,
        "the token was sent to LFS storage"
    );
    // The weights are larger than the stand-in's chunk: they went in parts.
    assert!(local["model.safetensors"].len() as u64 > MULTIPART_CHUNK);
    assert!(
        hub.state()
            .seen
            .iter()
            .filter(|(_, p)| p.starts_with("/part/"))
            .count()
            > 1
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "Published `hub` to me/tiny-pub@main (created): {} files sent ({} through LFS), 0 unchanged; commit",
            local.len(),
            lfs.len()
        )),
        "{stdout}"
    );
}

#[test]
fn an_unchanged_republish_sends_nothing_and_makes_no_commit() {
    let (p, hub) = (project(), Hub::start());
    assert_eq!(
        yb(&p, &hub, &["publish", "recipe.yaml"]).status.code(),
        Some(0)
    );
    hub.reset();
    let out = yb(&p, &hub, &["publish", "recipe.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(hub.puts().is_empty());
    assert!(hub.commits().is_empty());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "0 files sent (0 through LFS), {} unchanged; up to date, no commit",
            release(&p).len()
        )),
        "{stdout}"
    );
    // Only the repository creation (it exists: 409) and the pre-upload check.
    let seen: Vec<String> = hub.state().seen.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(
        seen,
        [
            "/api/repos/create",
            "/api/models/me/tiny-pub/preupload/main"
        ]
    );
}

#[test]
fn an_interrupted_publish_resumes_without_sending_uploaded_objects_again() {
    let (p, hub) = (project(), Hub::start());
    assert_eq!(p.run(&["recipe.yaml"]).status.code(), Some(0));
    let local = release(&p);
    let gguf = gguf_name(&local);
    // The GGUF's PUT is cut: the model's weights went up, nothing is committed.
    hub.state().fail_put = Some(sha256(&local[&gguf]));
    let out = yb(&p, &hub, &["publish", "recipe.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("uploading {gguf}")),
        "{}",
        text(&out)
    );
    assert!(hub.commits().is_empty());
    let sent_first = hub.puts();
    assert_eq!(sent_first.len(), 1, "{sent_first:?}");
    assert!(sent_first[0].ends_with(&sha256(&local["model.safetensors"])));
    // The next publish sends only the GGUF, then the commit fails once.
    hub.reset();
    hub.state().fail_commit = true;
    let out = yb(&p, &hub, &["publish", "recipe.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("HTTP 500 (try again later)"),
        "{}",
        text(&out)
    );
    assert_eq!(
        hub.puts(),
        [format!("me/tiny-pub:{}", sha256(&local[&gguf]))]
    );
    // And the third sends no bytes at all: it only commits.
    hub.reset();
    let out = yb(&p, &hub, &["publish", "recipe.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(hub.puts().is_empty());
    assert_eq!(hub.commits().len(), 1);
    assert_eq!(hub.commits()[0].files.len(), local.len());
    let remote = hub.branch("me/tiny-pub", "main");
    for (path, bytes) in &local {
        assert_eq!(&remote[path].bytes, bytes, "{path}");
    }
}

#[test]
fn a_changed_gguf_uploads_only_that_file_and_the_files_recording_it() {
    let (p, hub) = (project(), Hub::start());
    assert_eq!(
        yb(&p, &hub, &["publish", "recipe.yaml"]).status.code(),
        Some(0)
    );
    let before = release(&p);
    // The quantized model's context changes; the released model does not.
    p.write(
        "recipe.yaml",
        &RECIPE.replace(
            "max_position_embeddings: 256",
            "max_position_embeddings: 512",
        ),
    );
    hub.reset();
    let out = yb(&p, &hub, &["publish", "recipe.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after = release(&p);
    let gguf = gguf_name(&after);
    assert_ne!(before[&gguf], after[&gguf]);
    assert_eq!(
        hub.puts(),
        [format!("me/tiny-pub:{}", sha256(&after[&gguf]))]
    );
    let commits = hub.commits();
    assert_eq!(commits.len(), 1);
    let changed: BTreeMap<String, &str> = [
        (gguf.clone(), "lfs"),
        ("README.md".to_owned(), "regular"),
        ("SHA256SUMS".to_owned(), "regular"),
        ("build-report.json".to_owned(), "regular"),
        // The release ships the recipe as written, and it was edited.
        ("recipe.yaml".to_owned(), "regular"),
    ]
    .into_iter()
    .collect();
    assert_eq!(commits[0].files, changed);
    assert_eq!(hub.branch("me/tiny-pub", "main")[&gguf].bytes, after[&gguf]);
}

#[test]
fn the_token_is_never_printed_even_when_the_hub_echoes_it() {
    let (p, hub) = (project(), Hub::start());
    let out = p
        .cmd(&["publish", "recipe.yaml"])
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_TOKEN", format!("{TOKEN}-wrong"))
        .output()
        .unwrap();
    assert_no_token(&out);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("access denied (HTTP 401)"), "{t}");
    assert!(
        t.contains("Invalid credentials in Authorization header: <token>"),
        "{t}"
    );
    // The token file `hf auth login` writes is used when HF_TOKEN is unset,
    // and a missing token is an error that says where to put one.
    let home = p.path("hf-home");
    let out = p
        .cmd(&["publish", "recipe.yaml", "--json"])
        .env("HF_ENDPOINT", &hub.endpoint)
        .env_remove("HF_TOKEN")
        .env("HF_HOME", &home)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("set HF_TOKEN"), "{}", text(&out));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("token"), format!("{TOKEN}\n")).unwrap();
    let out = p
        .cmd(&["publish", "recipe.yaml", "--json", "-v"])
        .env("HF_ENDPOINT", &hub.endpoint)
        .env_remove("HF_TOKEN")
        .env("HF_HOME", &home)
        .output()
        .unwrap();
    assert_no_token(&out);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let events = common::events(&out);
    let published: Vec<&Json> = events.iter().filter(|e| e["event"] == "publish").collect();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0]["repo"], "me/tiny-pub");
    assert_eq!(published[0]["created"], true);
}

#[test]
fn dry_run_lists_what_would_be_sent_and_sends_nothing() {
    let (p, hub) = (project(), Hub::start());
    let out = yb(&p, &hub, &["publish", "recipe.yaml", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let local = release(&p);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(&format!(
            "Dry run of `hub` to me/tiny-pub@main (new repository): {} files would be sent",
            local.len()
        )),
        "{stdout}"
    );
    for path in local.keys() {
        let kind = if is_lfs(path) { "lfs" } else { "regular" };
        assert!(
            stdout.lines().any(
                |l| l.starts_with(&format!("  {kind:<8}")) && l.ends_with(&format!("  {path}"))
            ),
            "{path} missing from:\n{stdout}"
        );
    }
    assert!(hub.state().repos.is_empty(), "a dry run created something");
    assert!(hub.puts().is_empty() && hub.commits().is_empty());
    // After a publish and a change, the dry run lists only what changed.
    assert_eq!(
        yb(&p, &hub, &["publish", "recipe.yaml"]).status.code(),
        Some(0)
    );
    p.write(
        "recipe.yaml",
        &RECIPE.replace(
            "max_position_embeddings: 256",
            "max_position_embeddings: 512",
        ),
    );
    hub.reset();
    let out = yb(&p, &hub, &["publish", "recipe.yaml", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let listed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(|l| l.rsplit("  ").next().unwrap())
        .collect();
    let gguf = gguf_name(&release(&p));
    assert_eq!(
        listed,
        [
            "README.md",
            "SHA256SUMS",
            "build-report.json",
            "recipe.yaml",
            gguf.as_str()
        ]
    );
    assert!(hub.puts().is_empty() && hub.commits().is_empty());
}

#[test]
fn a_plain_build_never_publishes() {
    let (p, hub) = (project(), Hub::start());
    let out = yb(&p, &hub, &["recipe.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(p.path("build/tiny-pub/release/README.md").exists());
    assert!(!p.path("build/tiny-pub/hub").exists());
    assert!(hub.state().seen.is_empty());
    // Named as a target, the step publishes, and leaves a receipt that the
    // cache keeps: the same release is not published twice by builds.
    let out = yb(&p, &hub, &["recipe.yaml", "hub"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(hub.commits().len(), 1);
    let receipt: Json =
        serde_json::from_slice(&std::fs::read(p.path("build/tiny-pub/hub/publish.json")).unwrap())
            .unwrap();
    assert_eq!(receipt[0]["repo"], "me/tiny-pub");
    assert_eq!(receipt[0]["commit"], json!(format!("{:040x}", 1)));
    hub.reset();
    let out = yb(&p, &hub, &["recipe.yaml", "hub"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(hub.state().seen.is_empty());
}

#[test]
fn one_repo_per_quantization_links_back_in_the_model_tree() {
    let (p, hub) = (project(), Hub::start());
    p.write(
        "recipe.yaml",
        &RECIPE.replace("create: true}", "create: true, quantized: repos}"),
    );
    let out = yb(&p, &hub, &["publish", "recipe.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let local = release(&p);
    let gguf = gguf_name(&local);
    let main = hub.branch("me/tiny-pub", "main");
    assert!(!main.contains_key(&gguf));
    assert_eq!(main.len(), local.len() - 1);
    let quant = hub.branch("me/tiny-pub-Q8_0-GGUF", "main");
    assert_eq!(
        quant.keys().collect::<Vec<_>>(),
        ["README.md", gguf.as_str()]
    );
    assert_eq!(quant[&gguf].bytes, local[&gguf]);
    let card = String::from_utf8(quant["README.md"].bytes.clone()).unwrap();
    let fm = card.split("---\n").nth(1).unwrap();
    assert!(fm.contains("base_model: me/tiny-pub\n"), "{card}");
    assert!(fm.contains("base_model_relation: quantized\n"), "{card}");
    assert!(fm.contains("license: mit\n"), "{card}");
}

#[test]
fn one_branch_per_quantization_holds_the_release_with_that_gguf() {
    let (p, hub) = (project(), Hub::start());
    p.write(
        "recipe.yaml",
        &RECIPE.replace("create: true}", "create: true, quantized: branches}"),
    );
    let out = yb(&p, &hub, &["publish", "recipe.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let local = release(&p);
    let gguf = gguf_name(&local);
    assert!(!hub.branch("me/tiny-pub", "main").contains_key(&gguf));
    let branch = hub.branch("me/tiny-pub", "Q8_0");
    assert_eq!(branch.len(), local.len());
    assert_eq!(branch[&gguf].bytes, local[&gguf]);
    let targets: Vec<(String, String)> = hub
        .commits()
        .iter()
        .map(|c| (c.repo.clone(), c.branch.clone()))
        .collect();
    assert_eq!(
        targets,
        [
            ("me/tiny-pub".to_owned(), "main".to_owned()),
            ("me/tiny-pub".to_owned(), "Q8_0".to_owned())
        ]
    );
    // The branch shares the model's LFS object with main: sent once.
    let weights = sha256(&local["model.safetensors"]);
    assert_eq!(
        hub.puts().iter().filter(|p| p.ends_with(&weights)).count(),
        1
    );
}

#[test]
fn bad_publish_steps_are_refused_with_their_place() {
    let p = project();
    p.write(
        "recipe.yaml",
        &RECIPE.replace("repo: me/tiny-pub", "repo: tiny-pub"),
    );
    let out = p.run(&["publish", "recipe.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    assert!(t.contains("recipe.yaml:15:"), "{t}");
    assert!(
        t.contains("`repo` must be a Hub repository id, found `tiny-pub`: it must be `org/name`"),
        "{t}"
    );
    p.write(
        "recipe.yaml",
        &RECIPE.replace("create: true}", "create: true, quantized: all}"),
    );
    let out = p.run(&["publish", "recipe.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("`quantized` must be `together`, `branches` or `repos`, found `all`")
    );
    p.write("recipe.yaml", RECIPE);
    let out = p.run(&["publish", "recipe.yaml", "release"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("`release` is a package step, not a publish step"));
}

//! A tiny Hugging Face Hub for tests: serves model folders (made with
//! `yibuild::fixtures`) over the endpoints yibuild uses, on 127.0.0.1, counts
//! every request, and can cut a response mid-body or flip a byte of it.
//!
//! - `GET /api/models/{org}/{name}/revision/{rev}?blobs=true`
//! - `GET /{org}/{name}/resolve/{rev}/{path}` with `Range`: small files are
//!   served directly (ETag = git blob id); `.safetensors` files answer 302 to
//!   `/lfs/{sha256}` like the Hub's CDN redirect (X-Linked-Etag).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::Digest;

use super::http::{head, read_request, respond};

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The path without the query.
    pub path: String,
    /// The byte range served (`start..end`), for file bodies.
    pub served: Option<(u64, u64)>,
}

struct File {
    bytes: Vec<u8>,
    sha256: String,
    blob_id: String,
    lfs: bool,
}

struct Repo {
    commit: String,
    refs: Vec<String>,
    files: BTreeMap<String, File>,
}

#[derive(Default)]
struct State {
    repos: BTreeMap<String, Repo>,
    seen: Vec<Seen>,
    /// Cut the next body of this file (by path in the repo) after n bytes.
    cut: BTreeMap<String, u64>,
    /// Flip a byte in the next body of this file.
    corrupt: BTreeMap<String, u64>,
    /// Gated repositories and the token they accept.
    tokens: BTreeMap<String, String>,
}

/// The running server.
pub struct HubServer {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn git_blob_id(bytes: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex(&h.finalize())
}

pub fn sha256(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

impl HubServer {
    /// Starts a server with no repositories.
    pub fn start() -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let ep = endpoint.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let st = st.clone();
                let ep = ep.clone();
                std::thread::spawn(move || handle(stream, &st, &ep));
            }
        });
        HubServer { endpoint, state }
    }

    /// Serves the files of `dir` (plus `extra` files) as `repo`, reachable by
    /// `main` and the given extra refs; returns the commit sha.
    pub fn add_repo(
        &self,
        repo: &str,
        dir: &Path,
        refs: &[&str],
        extra: &[(&str, &[u8])],
    ) -> String {
        let mut files = BTreeMap::new();
        let mut add = |path: String, bytes: Vec<u8>| {
            let lfs = path.ends_with(".safetensors") || path.ends_with(".bin");
            files.insert(
                path,
                File {
                    sha256: sha256(&bytes),
                    blob_id: git_blob_id(&bytes),
                    bytes,
                    lfs,
                },
            );
        };
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            add(
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            );
        }
        for (p, b) in extra {
            add(p.to_string(), b.to_vec());
        }
        let mut h = sha1::Sha1::new();
        h.update(repo.as_bytes());
        for (p, f) in &files {
            h.update(p.as_bytes());
            h.update(f.blob_id.as_bytes());
        }
        let commit = hex(&h.finalize());
        let mut all_refs = vec!["main".to_owned()];
        all_refs.extend(refs.iter().map(|r| r.to_string()));
        self.state.lock().unwrap().repos.insert(
            repo.to_owned(),
            Repo {
                commit: commit.clone(),
                refs: all_refs,
                files,
            },
        );
        commit
    }

    /// Makes `repo` gated: only `Authorization: Bearer {token}` may read it.
    pub fn gate(&self, repo: &str, token: &str) {
        self.state
            .lock()
            .unwrap()
            .tokens
            .insert(repo.to_owned(), token.to_owned());
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Forgets the requests seen so far.
    pub fn reset(&self) {
        self.state.lock().unwrap().seen.clear();
    }

    /// Requests whose path ends with `suffix`.
    pub fn count(&self, suffix: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.path.ends_with(suffix))
            .count()
    }

    /// The next body of `path` stops after `after` bytes.
    pub fn cut_next(&self, path: &str, after: u64) {
        self.state
            .lock()
            .unwrap()
            .cut
            .insert(path.to_owned(), after);
    }

    /// The next body of `path` has the byte at file offset `at` flipped.
    pub fn corrupt_next(&self, path: &str, at: u64) {
        self.state
            .lock()
            .unwrap()
            .corrupt
            .insert(path.to_owned(), at);
    }

    /// The sha256 of `path` in `repo`.
    pub fn file_sha256(&self, repo: &str, path: &str) -> String {
        self.state.lock().unwrap().repos[repo].files[path]
            .sha256
            .clone()
    }
}

fn not_found(stream: &mut TcpStream, code: &str) {
    respond(
        stream,
        "404 Not Found",
        &[
            ("X-Error-Code", code.into()),
            ("X-Error-Message", format!("{code} (test hub)")),
        ],
        b"",
    );
}

fn parse_range(h: Option<&String>, len: u64) -> (u64, u64) {
    let Some(v) = h.and_then(|v| v.strip_prefix("bytes=")) else {
        return (0, len);
    };
    let (a, b) = v.split_once('-').unwrap();
    let start: u64 = a.parse().unwrap();
    let end = if b.is_empty() {
        len
    } else {
        b.parse::<u64>().unwrap() + 1
    };
    (start, end.min(len))
}

fn handle(mut stream: TcpStream, state: &Mutex<State>, endpoint: &str) {
    let Some(request) = read_request(&stream) else {
        return;
    };
    let req_headers = request.headers;
    let decoded = request.path;
    let mut st = state.lock().unwrap();
    let seen_index = st.seen.len();
    st.seen.push(Seen {
        path: decoded.clone(),
        served: None,
    });
    let parts: Vec<&str> = decoded.trim_start_matches('/').splitn(6, '/').collect();
    let repo_of = if parts.first() == Some(&"api") { 2 } else { 0 };
    if parts.len() > repo_of + 1 {
        let repo = format!("{}/{}", parts[repo_of], parts[repo_of + 1]);
        if let Some(token) = st.tokens.get(&repo) {
            if req_headers.get("authorization") != Some(&format!("Bearer {token}")) {
                return respond(
                    &mut stream,
                    "401 Unauthorized",
                    &[("X-Error-Code", "GatedRepo".into())],
                    b"",
                );
            }
        }
    }
    // Revision API.
    if parts.len() >= 6 && parts[0] == "api" && parts[1] == "models" && parts[4] == "revision" {
        let repo = format!("{}/{}", parts[2], parts[3]);
        let rev = parts[5];
        let Some(r) = st.repos.get(&repo) else {
            return not_found(&mut stream, "RepoNotFound");
        };
        if !r.refs.iter().any(|x| x == rev) && rev != r.commit {
            return not_found(&mut stream, "RevisionNotFound");
        }
        let siblings: Vec<serde_json::Value> = r
            .files
            .iter()
            .map(|(p, f)| {
                let mut v = serde_json::json!({"rfilename": p, "size": f.bytes.len(), "blobId": f.blob_id});
                if f.lfs {
                    v["lfs"] = serde_json::json!({"sha256": f.sha256, "size": f.bytes.len(), "pointerSize": 134});
                }
                v
            })
            .collect();
        let body =
            serde_json::json!({"id": repo, "sha": r.commit, "siblings": siblings}).to_string();
        return respond(
            &mut stream,
            "200 OK",
            &[("Content-Type", "application/json".into())],
            body.as_bytes(),
        );
    }
    // CDN for LFS objects.
    let (repo_name, file_path, file) = if parts.len() == 2 && parts[0] == "lfs" {
        let found = st.repos.iter().find_map(|(name, r)| {
            r.files
                .iter()
                .find(|(_, f)| f.sha256 == parts[1])
                .map(|(p, _)| (name.clone(), p.clone()))
        });
        let Some((name, p)) = found else {
            return not_found(&mut stream, "EntryNotFound");
        };
        (name.clone(), p.clone(), &st.repos[&name].files[&p])
    } else if parts.len() >= 5 && parts[2] == "resolve" {
        let repo = format!("{}/{}", parts[0], parts[1]);
        let rest = decoded
            .trim_start_matches('/')
            .splitn(5, '/')
            .nth(4)
            .unwrap_or("");
        let Some(r) = st.repos.get(&repo) else {
            return not_found(&mut stream, "RepoNotFound");
        };
        if !r.refs.iter().any(|x| x == parts[3]) && parts[3] != r.commit {
            return not_found(&mut stream, "RevisionNotFound");
        }
        let Some(f) = r.files.get(rest) else {
            return not_found(&mut stream, "EntryNotFound");
        };
        if f.lfs {
            let headers = vec![
                ("Location", format!("{endpoint}/lfs/{}", f.sha256)),
                ("X-Linked-Etag", format!("\"{}\"", f.sha256)),
                ("X-Linked-Size", f.bytes.len().to_string()),
                ("X-Repo-Commit", r.commit.clone()),
            ];
            return respond(&mut stream, "302 Found", &headers, b"");
        }
        (repo.clone(), rest.to_owned(), f)
    } else {
        return not_found(&mut stream, "EntryNotFound");
    };
    let len = file.bytes.len() as u64;
    let (start, end) = parse_range(req_headers.get("range"), len);
    let mut body = file.bytes[start as usize..end as usize].to_vec();
    let commit = st.repos[&repo_name].commit.clone();
    let etag = if file.lfs {
        file.sha256.clone()
    } else {
        file.blob_id.clone()
    };
    // Faults apply to the first body they fit in (not to header reads).
    let cut = st.cut.get(&file_path).copied().filter(|c| end - start > *c);
    if cut.is_some() {
        st.cut.remove(&file_path);
    }
    if let Some(at) = st
        .corrupt
        .get(&file_path)
        .copied()
        .filter(|a| (start..end).contains(a))
    {
        st.corrupt.remove(&file_path);
        body[(at - start) as usize] ^= 0x5a;
    }
    let served_end = cut.map_or(end, |c| (start + c).min(end));
    st.seen[seen_index].served = Some((start, served_end));
    drop(st);
    let mut headers = vec![
        ("ETag", format!("\"{etag}\"")),
        ("X-Repo-Commit", commit),
        ("Accept-Ranges", "bytes".into()),
    ];
    let status = if req_headers.contains_key("range") {
        headers.push((
            "Content-Range",
            format!("bytes {start}-{}/{len}", end.saturating_sub(1)),
        ));
        "206 Partial Content"
    } else {
        "200 OK"
    };
    match cut {
        Some(c) => {
            // Promise the whole body, send part of it, hang up.
            stream
                .write_all(head(status, &headers, body.len()).as_bytes())
                .ok();
            stream.write_all(&body[..(c as usize).min(body.len())]).ok();
            stream.flush().ok();
            stream.shutdown(std::net::Shutdown::Both).ok();
        }
        None => respond(&mut stream, status, &headers, &body),
    }
}

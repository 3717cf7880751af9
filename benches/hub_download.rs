//! Download throughput over loopback from the test Hub: ranged parallel
//! chunks written in place, then the sha256 verification pass. Measures
//! yibuild's own overhead (the network is never this fast).
//!
//! `cargo bench --bench hub_download [-- SIZE_MIB]` (default 256 MiB).

#[path = "../tests/common/http.rs"]
mod http;
#[path = "../tests/common/hub_server.rs"]
mod hub_server;

use std::time::Instant;

use yibuild::hub::api::HubClient;
use yibuild::hub::download::{fetch_file, verify, RemoteFile, Transfer};
use yibuild::hub::layout::RepoCache;
use yibuild::hub::HubConfig;

fn main() {
    let mib: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(256);
    let dir = std::env::temp_dir().join(format!("yibuild-hub-bench-{}", std::process::id()));
    let upstream = dir.join("upstream");
    std::fs::create_dir_all(&upstream).unwrap();
    let mut rng = yibuild::fixtures::SplitMix(1);
    let bytes: Vec<u8> = (0..mib << 17)
        .flat_map(|_| rng.next_u64().to_le_bytes())
        .collect();
    std::fs::write(upstream.join("model.safetensors"), &bytes).unwrap();
    std::fs::write(upstream.join("config.json"), b"{}").unwrap();
    let server = hub_server::HubServer::start();
    let commit = server.add_repo("bench/model", &upstream, &[], &[]);
    for connections in [1, 8] {
        let cache_dir = dir.join(format!("hf-{connections}"));
        let config = HubConfig {
            endpoint: server.endpoint.clone(),
            token: None,
            cache_dir: cache_dir.clone(),
            offline: false,
            update_lock: false,
            connections,
            chunk_size: 16 << 20,
            progress: false,
        };
        let client = HubClient::new(&config);
        let remote = client.revision("bench/model", &commit).unwrap();
        let file = &remote.files["model.safetensors"];
        let cache = RepoCache::new(&cache_dir, "bench/model");
        let start = Instant::now();
        let path = fetch_file(
            &client,
            &cache,
            RemoteFile {
                repo: "bench/model",
                commit: &commit,
                path: "model.safetensors",
                file,
            },
            Transfer {
                connections,
                chunk_size: config.chunk_size,
            },
            &|_| {},
            &|why| eprintln!("{why}"),
        )
        .unwrap();
        let total = start.elapsed().as_secs_f64();
        let start = Instant::now();
        verify(&path, file).unwrap();
        let hash = start.elapsed().as_secs_f64();
        println!(
            "{mib} MiB, {connections} connection(s): fetch+verify {:.0} MiB/s ({total:.2} s), sha256 pass alone {:.0} MiB/s",
            mib as f64 / total,
            mib as f64 / hash
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

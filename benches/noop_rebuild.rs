//! No-op rebuilds, three ways:
//!
//! 1. over large sources: the first build hashes every source byte; the
//!    second must read none of them (memoized by file identity);
//! 2. of a generated recipe of many cached `run` steps: no step rewrites its
//!    record or re-materializes its output, so the rebuild writes nothing;
//! 3. of the demo (`recipes/tiny-demo.yaml`): the whole no-op build, and the
//!    share of it the repair check takes (one `stat` per materialized file,
//!    compared with the identity recorded when it was materialized).
//!
//! `cargo bench --bench noop_rebuild [-- SIZE_GIB [STEPS]]` (default 2 GiB of
//! sources, 1000 steps).

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn write_source(dir: &Path, gib: f64) {
    std::fs::create_dir_all(dir).unwrap();
    let shards = 4;
    let per_shard = (gib * (1u64 << 30) as f64 / shards as f64) as usize;
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x243F_6A88_85A3_08D3u64;
    for s in 0..shards {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(dir.join(format!("shard-{s}.bin"))).unwrap(),
        );
        let mut left = per_shard;
        while left > 0 {
            for b in block.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            let n = left.min(block.len());
            f.write_all(&block[..n]).unwrap();
            left -= n;
        }
    }
    std::fs::write(
        dir.join("config.json"),
        "{\"max_position_embeddings\": 200000}\n",
    )
    .unwrap();
}

fn time_build(dir: &Path) -> f64 {
    time_recipe(dir, "recipe.yaml")
}

fn time_recipe(dir: &Path, recipe: &str) -> f64 {
    let t = Instant::now();
    let st = Command::new(env!("CARGO_BIN_EXE_yibuild"))
        .current_dir(dir)
        .env_remove("YIBUILD_CACHE_DIR")
        .env_remove("YIBUILD_BUILD_DIR")
        .args(["-q", recipe])
        .status()
        .unwrap();
    assert!(st.success());
    t.elapsed().as_secs_f64()
}

fn best_of(n: usize, f: impl Fn() -> f64) -> f64 {
    (0..n).map(|_| f()).fold(f64::INFINITY, f64::min)
}

/// A recipe of `steps` independent `run` steps, each writing one small file.
fn many_steps(dir: &Path, steps: usize) {
    let mut recipe = String::from("yibuild: 1\nname: many\nsteps:\n");
    for i in 0..steps {
        recipe.push_str(&format!(
            "  s{i}:\n    run: {{command: 'echo {i} > \"$YIBUILD_OUT/out.txt\"'}}\n"
        ));
    }
    std::fs::write(dir.join("many.yaml"), recipe).unwrap();
}

/// The repair check alone over the demo's cached steps: for each step, what
/// a no-op build does before calling it cached (lookup, record, stat every
/// materialized file). Returns (seconds, files checked).
fn repair_check(project: &Path, recipe: &yibuild::recipe::Recipe) -> (f64, usize) {
    use yibuild::cache::{Cache, OutputState};
    let cache = Cache::open_unlocked(&project.join("cache")).unwrap();
    let build = project.join("build").canonicalize().unwrap();
    let steps: Vec<_> = recipe
        .steps
        .iter()
        .map(|s| cache.record(&recipe.name, &s.name).expect("built"))
        .map(|r| (cache.lookup(&r.key).expect("cached"), r))
        .collect();
    let t = Instant::now();
    let mut files = 0;
    for ((manifest, record), step) in steps.iter().zip(&recipe.steps) {
        let dest = build.join(&recipe.name).join(&step.name);
        let state = cache
            .output_state(manifest, &dest, record.materialized.as_ref())
            .unwrap();
        assert_eq!(state, OutputState::Intact, "{}", step.name);
        files += manifest.files.len();
    }
    (t.elapsed().as_secs_f64(), files)
}

fn main() {
    let mut numbers = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<f64>().ok());
    let gib = numbers.next().unwrap_or(2.0);
    let steps = numbers.next().map_or(1000, |n| n as usize);
    let dir = tempfile::tempdir().unwrap();
    write_source(&dir.path().join("models/big"), gib);
    std::fs::write(
        dir.path().join("recipe.yaml"),
        "yibuild: 1\nname: bench\nsources:\n  big: ./models/big\nsteps:\n  patched:\n    patch_config: {model: big, set: {max_position_embeddings: 32768}}\n",
    )
    .unwrap();
    let first = time_build(dir.path());
    let noop: Vec<f64> = (0..5).map(|_| time_build(dir.path())).collect();
    let best = noop.iter().cloned().fold(f64::INFINITY, f64::min);
    println!("sources: {gib:.1} GiB in 4 files");
    println!("first build (hashes every byte, from page cache): {first:.3} s");
    println!(
        "no-op rebuild (best of 5): {best:.3} s = {:.2}% of the first build",
        100.0 * best / first
    );

    let many = tempfile::tempdir().unwrap();
    many_steps(many.path(), steps);
    let first = time_recipe(many.path(), "many.yaml");
    let noop = best_of(5, || time_recipe(many.path(), "many.yaml"));
    println!("{steps} run steps: first build {first:.2} s; no-op rebuild (best of 5) {noop:.3} s");

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let demo = tempfile::tempdir().unwrap();
    copy_tree(&root.join("recipes/tiny"), &demo.path().join("tiny"));
    std::fs::copy(
        root.join("recipes/tiny-demo.yaml"),
        demo.path().join("demo.yaml"),
    )
    .unwrap();
    let first = time_recipe(demo.path(), "demo.yaml");
    let noop = best_of(5, || time_recipe(demo.path(), "demo.yaml"));
    let recipe = yibuild::recipe::Recipe::load(&demo.path().join("demo.yaml")).unwrap();
    let files = repair_check(demo.path(), &recipe).1;
    let check = best_of(5, || repair_check(demo.path(), &recipe).0);
    println!(
        "demo: first build {first:.2} s; no-op rebuild (best of 5) {noop:.3} s; repair check of {} steps, {files} files: {:.2} ms ({:.1}% of the no-op build)",
        recipe.steps.len(),
        check * 1e3,
        100.0 * check / noop
    );
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

//! The fuzz targets of `fuzz/targets.rs`, driven on the stable toolchain: every
//! input of the committed corpus (`fuzz/corpus/<target>/`, which holds the
//! seeds and every crash ever found) runs as a regression test, then random
//! mutations of it run for `YIBUILD_FUZZ_SECONDS` per target (default 1; CI
//! sets more). A panicking input is written to `target/fuzz-crashes/` and
//! fails the test with its path; move it into the corpus once fixed.
//! `YIBUILD_FUZZ_SEED` replays a run (the seed is printed).

#[path = "../fuzz/targets.rs"]
mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*: a small, seedable generator for mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens worth splicing into text formats (YAML, JSON) and integers worth
/// writing into binary ones (GGUF, safetensors lengths and counts).
const TOKENS: &[&str] = &[
    "&a ",
    "*a",
    "&b ",
    "*b",
    "[",
    "]",
    "{",
    "}",
    ": ",
    "- ",
    "\n",
    "\n  ",
    "'",
    "\"",
    "---\n",
    "!!str ",
    "~",
    "null",
    "-1",
    "1e308",
    "9223372036854775807",
    "18446744073709551616",
    "..",
    "/",
    "../",
    "/etc/passwd",
    "\\u0000",
    "merge_method",
    "slices",
    "layer_range",
    "models",
    "steps",
    "sources",
    "weight_map",
    "data_offsets",
    "shape",
    "dtype",
    "files",
    "path",
    "hash",
    "size",
];
const INTEGERS: &[u64] = &[
    0,
    1,
    7,
    8,
    255,
    256,
    u16::MAX as u64,
    u32::MAX as u64,
    1 << 31,
    1 << 32,
    1 << 48,
    u64::MAX / 2,
    u64::MAX,
];

/// One random edit of `data` (`other` is another corpus input to splice from).
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    let at = rng.below(data.len() + 1);
    match rng.below(8) {
        0 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] ^= 1 << rng.below(8);
        }
        1 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] = rng.next() as u8;
        }
        2 if !data.is_empty() => {
            let end = (at + 1 + rng.below(16)).min(data.len());
            data.drain(at.min(end)..end);
        }
        3 if !data.is_empty() => {
            let start = rng.below(data.len());
            let end = (start + 1 + rng.below(64)).min(data.len());
            let piece = data[start..end].to_vec();
            data.splice(at..at, piece);
        }
        4 => {
            let token = TOKENS[rng.below(TOKENS.len())];
            data.splice(at..at, token.bytes());
        }
        5 if data.len() >= 8 => {
            let i = rng.below(data.len() - 7);
            let v = INTEGERS[rng.below(INTEGERS.len())];
            let width = [1, 2, 4, 8][rng.below(4)];
            data[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
        }
        6 if !other.is_empty() => {
            let start = rng.below(other.len());
            let end = (start + 1 + rng.below(256)).min(other.len());
            data.splice(at..at, other[start..end].iter().copied());
        }
        _ => {
            let digits = (rng.next() % 100_000).to_string();
            data.splice(at..at, digits.bytes());
        }
    }
}

/// The committed corpus of `target`, sorted by file name.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Runs `target` on `data` in a fresh scratch folder; the panic message if it panicked.
fn run_one(target: targets::Target, data: &[u8]) -> Option<String> {
    let scratch = tempfile::tempdir().unwrap();
    let result = catch_unwind(AssertUnwindSafe(|| target(scratch.path(), data)));
    result.err().map(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic without a message".to_owned())
    })
}

/// Keeps a crashing input and fails with where it is.
fn report_crash(name: &str, data: &[u8], message: &str, seed: u64) -> ! {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}", &blake3::hash(data).to_hex()[..16]));
    std::fs::write(&path, data).unwrap();
    panic!(
        "fuzz target `{name}` panicked ({message}) on {} (seed {seed})",
        path.display()
    );
}

fn fuzz(name: &str) {
    let target = targets::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a known target")
        .1;
    let seeds = corpus(name);
    assert!(!seeds.is_empty(), "fuzz/corpus/{name} is empty");
    for (path, data) in &seeds {
        if let Some(message) = run_one(target, data) {
            panic!("corpus input {} panics: {message}", path.display());
        }
    }
    let seconds: f64 = std::env::var("YIBUILD_FUZZ_SECONDS")
        .ok()
        .map(|s| s.parse().expect("YIBUILD_FUZZ_SECONDS is a number"))
        .unwrap_or(1.0);
    let seed = std::env::var("YIBUILD_FUZZ_SEED")
        .ok()
        .map(|s| s.parse().expect("YIBUILD_FUZZ_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let mut data = seeds[rng.below(seeds.len())].1.clone();
        let other = &seeds[rng.below(seeds.len())].1;
        for _ in 0..1 + rng.below(8) {
            mutate(&mut rng, &mut data, other);
        }
        if let Some(message) = run_one(target, &data) {
            report_crash(name, &data, &message, seed);
        }
        runs += 1;
    }
    eprintln!("fuzz `{name}`: {runs} inputs in {seconds} s (seed {seed}), no panic");
}

#[test]
fn fuzz_recipe() {
    fuzz("recipe");
}

#[test]
fn fuzz_mergekit() {
    fuzz("mergekit");
}

#[test]
fn fuzz_safetensors() {
    fuzz("safetensors");
}

#[test]
fn fuzz_index() {
    fuzz("index");
}

#[test]
fn fuzz_gguf() {
    fuzz("gguf");
}

#[test]
fn fuzz_manifest() {
    fuzz("manifest");
}

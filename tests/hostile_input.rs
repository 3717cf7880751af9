//! Hostile and absurd input is refused with a clear error before it can cost
//! unbounded time or memory or reach outside its folder: YAML alias bombs,
//! absurd eval lengths, model indexes pointing outside the model, and the
//! errors a full disk and a `run` step's background processes must give.

mod common;

use std::path::Path;

use common::{with_status, Project};

/// Nine levels of nine aliases each (9^9 strings if expanded), in under 600 bytes.
fn billion_laughs() -> String {
    let mut text = String::from("lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..9 {
        let items = vec![format!("*lol{}", level - 1); 9].join(", ");
        text.push_str(&format!("lol{level}: &lol{level} [{items}]\n"));
    }
    text
}

#[test]
fn alias_bomb_recipe_is_refused_with_the_limit_and_its_location() {
    let p = Project::new();
    let bomb = billion_laughs();
    assert!(bomb.len() < 700, "{}", bomb.len());
    p.write("recipe.yaml", &format!("yibuild: 1\nname: t\n{bomb}"));
    let out = p.run(&["recipe.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("YAML alias expansion limit")
            && err.contains("more than 100000 nodes (limit MAX_ALIAS_NODES)"),
        "{err}"
    );
    // Anchoring lol4 (9^5 strings) passes the limit.
    assert!(err.contains("--> recipe.yaml:7:"), "{err}");
}

#[test]
fn alias_bomb_mergekit_config_is_refused() {
    let p = Project::new();
    p.write(
        "bomb.yml",
        &format!("merge_method: linear\n{}", billion_laughs()),
    );
    let out = p.run(&["merge", "bomb.yml", "out"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("limit MAX_ALIAS_NODES"), "{err}");
    assert!(err.contains("--> bomb.yml:6:"), "{err}");
    assert!(!p.path("out").exists());
}

#[test]
fn absurd_passkey_length_is_a_recipe_error() {
    let p = Project::with_base();
    p.write(
        "recipe.yaml",
        "yibuild: 1\nname: t\nsources:\n  base: ./models/base\nsteps:\n  e:\n    eval:\n      model: base\n      allow_long_context: true\n      passkey: {lengths: [256, 1000000000]}\n",
    );
    let out = p.run(&["recipe.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("passkey length 1000000000 is more than 16777216 tokens (limit MAX_WINDOW)"),
        "{err}"
    );
    assert!(err.contains("--> recipe.yaml:10:32"), "{err}");
}

#[test]
fn passkey_window_larger_than_memory_fails_before_allocating() {
    let p = Project::with_base();
    // 16Mi tokens of activations of even the tiny model are about 70 GiB per
    // thousand hidden units; the fixture's figure is printed, not allocated.
    p.write(
        "recipe.yaml",
        "yibuild: 1\nname: t\nsources:\n  base: ./models/base\nsteps:\n  e:\n    eval:\n      model: base\n      device: cpu\n      allow_long_context: true\n      passkey: {lengths: [16777216]}\n",
    );
    let out = p.run(&["recipe.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    let phys = physical_gib();
    // The tiny model needs 16Mi * (6*64 + 3*64 + 2*32 + 4*128) * 4 bytes = 72 GiB.
    if phys > 72 {
        eprintln!("skipped: this machine has {phys} GiB, enough for the window");
        return;
    }
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("a window of 16777216 tokens needs about 72 GiB of memory for activations"),
        "{err}"
    );
}

fn physical_gib() -> u64 {
    // SAFETY: sysconf only reads system constants.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages as u64 * size as u64) >> 30
}

/// A two-shard base model whose first shard is renamed to a dotfile and named
/// so by the index.
fn dotfile_shard_project() -> Project {
    let p = Project::new();
    let dir = p.path("models/base");
    yibuild::fixtures::TinyLlama {
        shards: 2,
        ..Default::default()
    }
    .write(&dir)
    .unwrap();
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::rename(
        dir.join("model-00001-of-00002.safetensors"),
        dir.join(".model-00001-of-00002.safetensors"),
    )
    .unwrap();
    std::fs::write(
        &index,
        text.replace(
            "\"model-00001-of-00002.safetensors\"",
            "\".model-00001-of-00002.safetensors\"",
        ),
    )
    .unwrap();
    p.write(
        "recipe.yaml",
        "yibuild: 1\nname: t\nsources:\n  base: ./models/base\nsteps:\n  q:\n    quantize: {model: base, format: gguf, type: Q8_0}\n",
    );
    p
}

#[test]
fn a_changed_dotfile_shard_is_noticed() {
    let p = dotfile_shard_project();
    let (code, events, err) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&events, "built"), ["q"]);
    // Same size, different bytes: the last byte of the dotfile shard's data.
    let shard = p.path("models/base/.model-00001-of-00002.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&shard, &bytes).unwrap();
    let (code, events, err) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&events, "built"), ["q"], "{events:?}");
}

#[test]
fn a_source_index_pointing_outside_its_folder_fails_the_build() {
    let p = dotfile_shard_project();
    let index = p.path("models/base/model.safetensors.index.json");
    std::fs::rename(
        p.path("models/base/.model-00001-of-00002.safetensors"),
        p.path("models/outside.safetensors"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(
        &index,
        text.replace(
            "\".model-00001-of-00002.safetensors\"",
            "\"../outside.safetensors\"",
        ),
    )
    .unwrap();
    let out = p.run(&["recipe.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("model.safetensors.index.json: weight_map entry `")
            && err.contains(
                "names shard `../outside.safetensors`, which is not a file inside the model folder"
            ),
        "{err}"
    );
    assert!(!p.path("build/t/q").exists());
}

/// A tmpfs of `size` mounted at `dir`, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts one, or says why it cannot (not root, no mount permission).
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn merging_onto_a_full_disk_names_the_file_and_the_os_error() {
    let p = Project::with_base();
    let disk = match Tmpfs::mount(&p.path("disk"), "64k") {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipped: cannot mount a small tmpfs ({why})");
            return;
        }
    };
    p.write(
        "linear.yml",
        "merge_method: linear\ndtype: bfloat16\nmodels:\n  - model: ./models/base\n    parameters: {weight: 1.0}\n",
    );
    let out = p.run(&["merge", "linear.yml", "disk/out"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("the output writer stopped"), "{err}");
    assert!(
        err.contains("cannot write disk/.out.yibuild-tmp-")
            && err.contains("/model.safetensors")
            && err.contains("No space left on device (os error 28)"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&disk.0).unwrap().count(),
        0,
        "the partial output is removed"
    );
}

#[test]
fn a_run_steps_background_child_cannot_change_its_stored_output() {
    let p = Project::new();
    p.write(
        "recipe.yaml",
        r#"yibuild: 1
name: t
steps:
  r:
    run:
      command: 'echo $$ > "$YIBUILD_OUT/pid"; (sleep 1; echo late > "$YIBUILD_OUT/f") & echo early > "$YIBUILD_OUT/f"'
      outputs: [f, pid]
"#,
    );
    let (code, events, err) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&events, "built"), ["r"]);
    let group: i32 = std::fs::read_to_string(p.path("build/t/r/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The whole group is gone as soon as the step ends, not after the sleep.
    assert_eq!(live_members(group), 0, "group {group} outlived the step");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        std::fs::read_to_string(p.path("build/t/r/f")).unwrap(),
        "early\n"
    );
    let (code, events, err) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&events, "cached"), ["r"]);
}

/// Processes of process group `group` that are alive (zombies not counted).
fn live_members(group: i32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // After the command name in parentheses: state, ppid, pgrp.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.len() > 2 && fields[0] != "Z" && fields[2] == group.to_string()
        })
        .count()
}

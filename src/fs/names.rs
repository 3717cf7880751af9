//! The name gate: every name that becomes part of a path (recipe names, step
//! and instance names, mergekit-multi document names, `run` output paths,
//! cache keys) passes here first, so no name can reach outside the directory
//! it is joined onto.

use std::path::{Component, Path};

/// Why `name` cannot be one path component, or `None` when it can: it must be
/// non-empty, not `.` or `..`, and contain no `/`, `\` or NUL.
pub fn component_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("`.` and `..` name a directory, not an output")
    } else if name.contains('/') || name.contains('\\') {
        Some("it contains a path separator")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else {
        None
    }
}

/// Checks that `name` is one normal path component (see [`component_problem`]).
pub fn check_component(what: &str, name: &str) -> Result<(), String> {
    match component_problem(name) {
        None => Ok(()),
        Some(why) => Err(format!(
            "{what} `{}` cannot be used as a file name: {why}",
            name.escape_debug()
        )),
    }
}

/// Why the `/`-separated relative path `path` could escape the directory it is
/// joined onto, or `None` when every component passes the name gate (no
/// absolute path, no `..`, no `.`, no empty component, no NUL).
pub fn relative_path_problem(path: &str) -> Option<&'static str> {
    if path.starts_with('/') {
        return Some("it is absolute");
    }
    path.split('/').find_map(component_problem)
}

/// Whether `inner` is `outer` or inside it, after resolving both (symlinks
/// included). Paths that cannot be resolved are compared as written, made
/// absolute.
pub fn contains(outer: &Path, inner: &Path) -> bool {
    let resolve = |p: &Path| {
        p.canonicalize()
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let (outer, inner) = (resolve(outer), resolve(inner));
    inner
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect::<Vec<_>>()
        .starts_with(&outer.components().collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_components_pass() {
        for ok in [
            "merged",
            "merged[density=0.5]",
            "a.b",
            "..a",
            "x..",
            "...yaml",
        ] {
            assert_eq!(component_problem(ok), None, "{ok}");
        }
    }

    #[test]
    fn escapes_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "/abs", "a\\b", "a\0b"] {
            assert!(component_problem(bad).is_some(), "{bad:?}");
        }
        for bad in ["../../x", "/etc/passwd", "a//b", "a/./b", "a/", "a\0"] {
            assert!(relative_path_problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(relative_path_problem("a/b.json"), None);
        assert!(check_component("step name", "..")
            .unwrap_err()
            .contains("step name `..`"));
    }

    #[test]
    fn containment_resolves_dot_and_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outer = tmp.path().join("build");
        std::fs::create_dir_all(outer.join("r")).unwrap();
        assert!(contains(&outer, &outer.join("r")));
        assert!(contains(tmp.path(), &outer));
        assert!(!contains(&outer, tmp.path()));
        std::os::unix::fs::symlink(tmp.path(), outer.join("up")).unwrap();
        assert!(!contains(&outer, &outer.join("up")));
    }
}

//! Keeps ARCHITECTURE.md and the source tree honest: every workspace member has a heading in
//! the codemap, and every Rust file opens with a `//!` line saying what it owns.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn workspace_members() -> Vec<String> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let members = manifest
        .split("members = [")
        .nth(1)
        .expect("members")
        .split(']')
        .next()
        .expect("]");
    members
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn every_workspace_member_is_in_the_codemap() {
    let codemap = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let members = workspace_members();
    assert!(members.len() >= 5, "{members:?}");
    for member in members {
        assert!(
            codemap
                .lines()
                .any(|l| l.starts_with("## ") && l.contains(&format!("`{member}`"))),
            "ARCHITECTURE.md has no heading for workspace member {member}"
        );
    }
}

#[test]
fn crate_names_follow_their_paths() {
    for member in workspace_members() {
        let manifest =
            std::fs::read_to_string(root().join(&member).join("Cargo.toml")).expect("manifest");
        let name = manifest
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .map(|n| n.trim_matches('"').to_string())
            .expect("package name");
        let last = member.rsplit('/').next().expect("path");
        let expected = match member.split('/').next() {
            Some("internal") => format!("skein-{last}"),
            Some("cmd") => last.to_string(),
            _ => continue,
        };
        assert_eq!(name, expected, "crate at {member}");
    }
}

#[test]
fn every_rust_file_opens_with_a_module_comment() {
    let mut missing = Vec::new();
    let mut stack = vec![root()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                if name != "target" && !name.to_string_lossy().starts_with('.') {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read");
                if !text.trim_start().starts_with("//!") {
                    missing.push(
                        path.strip_prefix(root())
                            .unwrap_or(&path)
                            .display()
                            .to_string(),
                    );
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "files without a leading //! line: {missing:?}"
    );
}

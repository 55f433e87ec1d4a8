//! `suture build -o` is checked before any work: a missing directory or a
//! directory as the output fails at once (no kernel needed), leaving nothing.

use std::process::Command;

fn build(out: &std::path::Path, patch: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_suture"))
        .arg("build")
        .arg("-o")
        .arg(out)
        .arg(patch)
        .args(["--kernel", "0.0.0-no-such-release-amd64"])
        .output()
        .unwrap()
}

#[test]
fn build_output_in_missing_directory_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let patch = dir.path().join("fix.patch");
    std::fs::write(&patch, "").unwrap();
    let out = build(std::path::Path::new("/nonexistent/dir/x.ko"), &patch);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("/nonexistent/dir"), "{err}");
    assert!(
        !err.contains("no-such-release"),
        "checked before the kernel: {err}"
    );
}

#[test]
fn build_output_onto_directory_fails_fast_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let patch = dir.path().join("fix.patch");
    std::fs::write(&patch, "").unwrap();
    let target = dir.path().join("fix.ko");
    std::fs::create_dir(&target).unwrap();
    let out = build(&target, &patch);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("is a directory"), "{err}");
    assert!(
        !err.contains("no-such-release"),
        "checked before the kernel: {err}"
    );
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, vec!["fix.ko", "fix.patch"]);
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
}

//! `suture build -o` is checked before any work: a missing directory or a
//! directory as the output fails at once (no kernel needed), leaving nothing.

use std::process::Command;

/// Runs `suture build -o OUT` for a release that does not exist and returns
/// its stderr, after checking that it failed before looking the release up.
fn refused_early(out: &std::path::Path, patch: &std::path::Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_suture"))
        .arg("build")
        .arg("-o")
        .arg(out)
        .arg(patch)
        .args(["--kernel", "0.0.0-no-such-release-amd64"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(
        !err.contains("no-such-release"),
        "checked before the kernel: {err}"
    );
    err
}

#[test]
fn build_output_in_missing_directory_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let patch = dir.path().join("fix.patch");
    std::fs::write(&patch, "").unwrap();
    let err = refused_early(std::path::Path::new("/nonexistent/dir/x.ko"), &patch);
    assert!(err.contains("/nonexistent/dir"), "{err}");
}

#[test]
fn build_output_onto_directory_fails_fast_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let patch = dir.path().join("fix.patch");
    std::fs::write(&patch, "").unwrap();
    let target = dir.path().join("fix.ko");
    std::fs::create_dir(&target).unwrap();
    let err = refused_early(&target, &patch);
    assert!(err.contains("is a directory"), "{err}");
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, vec!["fix.ko", "fix.patch"]);
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
}

/// With `--json`, a build that fails for bad input still prints its
/// document (`status: error`, the message), and exits 1.
#[test]
fn a_failed_json_build_prints_an_error_document() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_suture"))
        .arg("build")
        .arg(dir.path().join("missing.patch"))
        .args(["--kernel", "6.1.0-57-amd64", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "error", "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("missing.patch"),
        "{v}"
    );
}

//! Compiles go through a compiler launcher without changing the bytes
//! (issue 13.5): `ccache` when it is installed, or the program
//! `SUTURE_CC_LAUNCHER` names (`distcc` on a build cluster; here a wrapper
//! script that logs each call and runs the compiler). The build's
//! reproduction check compares every replaced function with the release's
//! image, so a build that succeeds through the launcher is the compiler's
//! own code.

mod common;

use std::path::Path;
use std::process::Command;

fn build_with(release: &str, env: &[(&str, &str)], out: &Path) -> (i32, String) {
    let o = Command::new(common::suture())
        .arg("build")
        .arg(common::examples().join("cmdline.patch"))
        .args(["--kernel", release, "-o"])
        .arg(out)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_named_launcher_runs_every_compile_and_the_build_still_reproduces_the_kernel() {
    let Some(release) = common::ready_61() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("calls.log");
    let launcher = tmp.path().join("launch");
    std::fs::write(
        &launcher,
        format!(
            "#!/bin/sh\necho \"$1\" >> '{}'\nexec \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = tmp.path().join("fix.ko");
    let (status, err) = build_with(
        &release,
        &[("SUTURE_CC_LAUNCHER", launcher.to_str().unwrap())],
        &out,
    );
    assert_eq!(status, 0, "{err}");
    assert!(out.is_file());
    assert!(
        err.contains(&format!("compiler launcher: {}", launcher.display())),
        "{err}"
    );
    assert!(
        err.contains("byte-identical to the running kernel's build"),
        "{err}"
    );
    let calls = std::fs::read_to_string(&log).expect("the launcher was never run");
    // The patched side of fs/proc/cmdline.c at least, each time through the
    // release's own compiler.
    assert!(!calls.is_empty());
    assert!(calls.lines().all(|l| l.ends_with("/gcc-12")), "{calls}");

    // A launcher that is not a plain path is refused before any work.
    let (status, err) = build_with(&release, &[("SUTURE_CC_LAUNCHER", "/tmp/a b")], &out);
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("not a plain absolute path"), "{err}");
}

#[test]
fn ccache_is_used_when_installed_and_hits_on_the_second_build() {
    let Some(release) = common::ready_61() else {
        return;
    };
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    if !Path::new("/usr/bin/ccache").is_file() {
        assert!(!ci, "CI installs ccache (scripts/setup.sh)");
        eprintln!("SKIP: ccache is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ccache");
    let env = [("CCACHE_DIR", dir.to_str().unwrap())];
    let stats = || {
        let o = Command::new("ccache")
            .arg("--print-stats")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let get = |k: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse().ok())
                .unwrap_or(0)
        };
        // Direct and preprocessed hits, and misses (ccache 4's keys).
        (
            get("direct_cache_hit\t") + get("preprocessed_cache_hit\t"),
            get("cache_miss\t"),
        )
    };
    let out = tmp.path().join("fix.ko");
    let (status, err) = build_with(&release, &env, &out);
    assert_eq!(status, 0, "{err}");
    assert!(err.contains("compiler launcher: /usr/bin/ccache"), "{err}");
    let (hits0, misses0) = stats();
    assert!(
        misses0 >= 1,
        "the first build compiled through ccache: {hits0} hits, {misses0} misses"
    );
    let (status, err) = build_with(&release, &env, &out);
    assert_eq!(status, 0, "{err}");
    let (hits1, _) = stats();
    assert!(
        hits1 > hits0,
        "the second build hit the cache: {hits0} -> {hits1} hits"
    );
    // The reproduction check passed both times: the cached objects are the
    // compiler's.
    assert!(
        err.contains("byte-identical to the running kernel's build"),
        "{err}"
    );
}

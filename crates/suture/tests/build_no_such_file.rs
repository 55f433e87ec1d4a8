//! A patch of a file the release's source does not have is said as such:
//! exit 3 for one release (nothing to build, like no change), "not
//! applicable" per release in a build for several, never a raw I/O error
//! (`reading /var/cache/suture/RELEASE/src/...: No such file or directory`).

mod common;

use std::path::Path;
use std::process::Command;

fn release() -> Option<String> {
    let r = std::env::var("SUTURE_TEST_RELEASE").unwrap_or_else(|_| "6.1.0-56-amd64".into());
    if Path::new(&format!("/boot/vmlinuz-{r}")).exists() {
        return Some(r);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install the kernel {r}"
    );
    eprintln!("SKIP: /boot/vmlinuz-{r} is not installed");
    None
}

const NO_SUCH_FILE: &str =
    "--- a/fs/proc/no_such_file.c\n+++ b/fs/proc/no_such_file.c\n@@ -4,3 +4,3 @@\n a\n-b\n+c\n d\n";

fn message(file: &str, release: &str) -> String {
    format!("{file}: {release} has no such file (the patch changes a file this release's source does not have)")
}

fn build(args: &[&str], patch: &Path) -> (Option<i32>, String, String) {
    let o = Command::new(common::suture())
        .arg("build")
        .arg(patch)
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_file_the_release_lacks_exits_3_saying_so() {
    let Some(r) = release() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let patch = tmp.path().join("nsf.patch");
    std::fs::write(&patch, NO_SUCH_FILE).unwrap();
    let ko = tmp.path().join("x.ko");
    let (status, _, err) = build(&["--kernel", &r, "-o", ko.to_str().unwrap()], &patch);
    assert_eq!(status, Some(3), "{err}");
    assert!(
        err.contains(&message("fs/proc/no_such_file.c", &r)),
        "{err}"
    );
    assert!(
        !err.contains("No such file or directory"),
        "a raw I/O error: {err}"
    );
    assert!(!ko.exists());

    // A new file (--- /dev/null) is not a missing one: it keeps its own answer.
    let created = tmp.path().join("new.patch");
    std::fs::write(
        &created,
        "--- /dev/null\n+++ b/fs/proc/brand_new.c\n@@ -0,0 +1,1 @@\n+int x;\n",
    )
    .unwrap();
    let (status, _, err) = build(&["--kernel", &r, "-o", ko.to_str().unwrap()], &created);
    assert_eq!(status, Some(1), "{err}");
    assert!(
        err.contains("adds a new source file") && !err.contains("no such file"),
        "{err}"
    );
}

#[test]
fn a_file_the_releases_lack_is_not_applicable_per_release() {
    let Some(r) = release() else { return };
    let Some(r612) = common::ready_612() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let patch = tmp.path().join("nsf.patch");
    std::fs::write(&patch, NO_SUCH_FILE).unwrap();
    let out = tmp.path().join("out");
    let (status, stdout, err) = build(
        &[
            "--kernel",
            &r,
            "--kernel",
            &r612,
            "-o",
            out.to_str().unwrap(),
            "--json",
        ],
        &patch,
    );
    let v: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{err}"));
    assert_eq!(status, Some(3), "{v}\n{err}");
    for (i, rel) in [&r, &r612].into_iter().enumerate() {
        let o = &v["releases"][i];
        assert_eq!(o["release"], rel.as_str(), "{v}");
        assert_eq!(o["status"], "not_applicable", "{v}");
        assert_eq!(o["kind"], "no_such_file", "{v}");
        assert_eq!(
            o["detail"],
            message("fs/proc/no_such_file.c", rel).as_str(),
            "{v}"
        );
    }
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "nothing written"
    );
}

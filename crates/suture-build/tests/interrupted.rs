//! A build killed with SIGKILL while kbuild compiles, on the real release's
//! tree: its make's process group is recorded beside the lock, and the next
//! build that takes the lock stops that group before it uses the tree (it used
//! to keep compiling in a tree the lock no longer covered); the dead build's
//! `work-PID` directory is removed by the next build. Then a patch of a file
//! the release lacks is "not applicable: no such file", not an I/O error.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use suture_build::{BuildOptions, NotApplicable, NotApplicableKind};
use suture_kernel::{Release, Tree};

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

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn options(release: &str, patch: PathBuf, output: PathBuf) -> BuildOptions {
    BuildOptions {
        patches: vec![patch],
        release: release.to_string(),
        output: Some(output),
        name: None,
        kallsyms: None,
        replace: true,
        cache: suture_build::cache_root(),
        keep_work: false,
        states: vec![],
        sign: None,
        cves: vec![],
        description: None,
        module_src: None,
        max_units: None,
    }
}

/// A scratch directory (suture-build has no tempfile dependency), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let p = std::env::temp_dir().join(format!("suture-interrupted-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Processes of group `pgid` that have not exited (zombies excluded).
fn running_in_group(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f[2].parse::<i32>().ok() == Some(pgid) && !matches!(f[0], "Z" | "X") {
            out.push(pid);
        }
    }
    out
}

const HELPER_OUT: &str = "SUTURE_TEST_INTERRUPTED_OUT";

/// Not a test: the build the next test kills while it compiles.
#[test]
#[ignore]
fn helper_build_to_be_killed() {
    let Some(out) = std::env::var_os(HELPER_OUT).map(PathBuf::from) else {
        return;
    };
    let Some(r) = release() else { return };
    let _ = suture_build::build(&options(&r, examples().join("cmdline.patch"), out), &|m| {
        eprintln!("{m}")
    });
}

#[test]
fn a_killed_build_does_not_share_the_tree_with_the_next_and_leaves_no_work_dir() {
    let Some(r) = release() else { return };
    let tmp = Scratch::new();
    let base = suture_build::cache_root().join(&r);
    let running = base.join("running.json");
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_build_to_be_killed",
            "--ignored",
            "--nocapture",
        ])
        .env(HELPER_OUT, tmp.path().join("x.ko"))
        // The compiler itself must run: ccache would answer from its cache
        // without a cc1 to kill.
        .env(suture_kernel::launcher::ENV, "none")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let hpid = helper.id();
    // Its make, recorded (another build of the release may hold the lock first).
    let until = Instant::now() + Duration::from_secs(600);
    let pgid = loop {
        if let Ok(b) = fs::read(&running) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                if v["token"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(&format!("{hpid}-")))
                {
                    break v["pgid"].as_i64().unwrap() as i32;
                }
            }
        }
        assert!(
            helper.try_wait().unwrap().is_none(),
            "the helper build ended before it compiled"
        );
        assert!(Instant::now() < until, "the helper build never compiled");
        std::thread::sleep(Duration::from_millis(10));
    };
    // Killed while the compiler proper compiles the patched file (not while
    // make reads the makefiles and runs its own short compiler checks).
    let until = Instant::now() + Duration::from_secs(120);
    let compiling = |p: &i32| {
        fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "cc1")
            && fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                c.split(|&b| b == 0)
                    .any(|a| a.ends_with(b"fs/proc/cmdline.c"))
            })
    };
    while !running_in_group(pgid).iter().any(compiling) {
        assert!(
            helper.try_wait().unwrap().is_none(),
            "the helper build ended before it compiled"
        );
        assert!(Instant::now() < until, "no cc1 in the helper build's make");
        std::thread::sleep(Duration::from_millis(5));
    }
    helper.kill().unwrap();
    helper.wait().unwrap();
    assert!(
        !running_in_group(pgid).is_empty(),
        "the killed build's make had already finished: the test proves nothing"
    );
    assert!(
        base.join(format!("work-{hpid}")).exists(),
        "the killed build's work directory"
    );

    // The next build: once it holds the lock, nothing of the dead one runs.
    let rel = Release::find(&r, Path::new("/")).unwrap();
    let notes = std::cell::RefCell::new(Vec::new());
    let tree = Tree::open(rel, &suture_build::cache_root(), &|m| {
        notes.borrow_mut().push(m.to_string())
    })
    .unwrap();
    let left = running_in_group(pgid);
    assert!(
        left.is_empty(),
        "the dead build's make still runs in the tree: {left:?} ({:?})",
        notes.borrow()
    );
    assert!(!running.exists());
    let cmdline = fs::read_to_string(tree.dir.join("fs/proc/cmdline.c")).unwrap();
    assert!(!cmdline.contains("suture=live"), "the tree was restored");
    drop(tree);

    // A file the release lacks: not applicable (no such file), and the dead
    // build's work directory is gone.
    let patch = tmp.path().join("no_such_file.patch");
    fs::write(
        &patch,
        "--- a/fs/proc/no_such_file.c\n+++ b/fs/proc/no_such_file.c\n@@ -1,3 +1,3 @@\n a\n-b\n+c\n d\n",
    )
    .unwrap();
    let e = suture_build::build(&options(&r, patch, tmp.path().join("y.ko")), &|m| {
        eprintln!("{m}")
    })
    .unwrap_err();
    let na = e
        .downcast_ref::<NotApplicable>()
        .unwrap_or_else(|| panic!("not `not applicable`: {e:#}"));
    assert_eq!(na.kind, NotApplicableKind::NoSuchFile);
    assert_eq!(
        na.to_string(),
        format!("fs/proc/no_such_file.c: {r} has no such file (the patch changes a file this release's source does not have)")
    );
    assert!(
        !base.join(format!("work-{hpid}")).exists(),
        "the dead build's work directory was not removed"
    );
    assert!(!tmp.path().join("y.ko").exists() && !tmp.path().join("x.ko").exists());
}

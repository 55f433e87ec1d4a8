//! The patch author's toolbox, end to end on Debian's own kernel: shadow
//! variables, callbacks, cumulative patches and states, and system calls
//! (`include/suture.h`, `docs/patch-author-guide.md`). Each test builds example
//! patches from `examples/` with the real `suture build`, boots the release in
//! QEMU and checks what the kernel does before loading, while loaded and after
//! unloading.
//!
//! Like `vm.rs`: without the release installed the tests skip, except under
//! `CI=true`, where a missing kernel is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use suture_lab::Vm;

fn release() -> String {
    if let Ok(r) = std::env::var("SUTURE_TEST_RELEASE") {
        return r;
    }
    let o = Command::new("dpkg-query")
        .args(["-W", "-f=${Depends}", "linux-image-amd64"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    o.split([',', ' '])
        .find_map(|w| w.strip_prefix("linux-image-"))
        .map(str::to_string)
        .unwrap_or_else(|| "6.1.0-56-amd64".to_string())
}

fn suture() -> &'static str {
    env!("CARGO_BIN_EXE_suture")
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn ready() -> bool {
    suture_lab::require_kernel_or_skip(&release()).expect("kernel for the VM tests")
}

// One guest at a time keeps each within its timeout on a 2-core machine.
static VM_LOCK: Mutex<()> = Mutex::new(());

struct Built {
    status: i32,
    stdout: String,
    stderr: String,
}

fn build(patch: &str, out: &Path, extra: &[&str]) -> Built {
    let o = Command::new(suture())
        .arg("build")
        .arg(examples().join(patch))
        .args(["--kernel", &release(), "-o"])
        .arg(out)
        .args(extra)
        .output()
        .expect("running suture build");
    Built {
        status: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Builds `patch` as module `name` into `dir/name.ko`.
fn build_ok(patch: &str, name: &str, dir: &Path, extra: &[&str]) -> (PathBuf, Built) {
    let ko = dir.join(format!("{name}.ko"));
    let mut args = vec!["--name", name];
    args.extend_from_slice(extra);
    let b = build(patch, &ko, &args);
    assert_eq!(b.status, 0, "suture build {patch} failed:\n{}\n{}", b.stdout, b.stderr);
    assert!(ko.exists());
    (ko, b)
}

fn vm() -> Vm {
    let mut vm = Vm::new(&release()).unwrap();
    vm.add_executable(Path::new(suture()), "/bin/suture").unwrap();
    vm
}

/// The value after `KEY:` on its own line of the guest's output.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {key}: line in guest output:\n{out}"))
        .trim()
}

/// `Suture:\tSERIAL live LIVE` of a /proc/PID/status line, as numbers.
fn tag(s: &str) -> (i64, i64) {
    let v: Vec<&str> = s.split_whitespace().collect();
    assert!(v.len() == 4 && v[0] == "Suture:" && v[2] == "live", "not a tag line: {s:?}");
    (v[1].parse().unwrap(), v[3].parse().unwrap())
}

#[test]
fn shadow_variable_tags_tasks_at_fork_shows_them_and_frees_them_at_exit() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ko, b) = build_ok("shadow-task-tag.patch", "livepatch_tag", tmp.path(), &[]);
    // One patch, three translation units; the callback comes from kernel/exit.c.
    for f in ["kernel_clone", "proc_pid_status", "release_task"] {
        assert!(b.stdout.contains(&format!("replaces vmlinux:{f} ")), "{}", b.stdout);
    }
    assert!(b.stdout.contains("callback vmlinux post_unpatch: suture_tags_free_all"), "{}", b.stdout);
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm();
    vm.add_file(&ko, "/root/tag.ko").unwrap();
    // `sh -c 'grep ...'`: a new task (forked after the load) reading its own status.
    let run = vm
        .run(
            "echo BEFORE:$(grep -c Suture /proc/self/status)\n\
             suture load /root/tag.ko || exit 10\n\
             echo FIRST:$(sh -c 'grep Suture /proc/self/status')\n\
             for i in 1 2 3 4 5 6 7 8; do /bin/true; done\n\
             echo SECOND:$(sh -c 'grep Suture /proc/self/status')\n\
             echo OLDTASK:$(grep -c Suture /proc/$$/status)\n\
             suture unload livepatch_tag || exit 12\n\
             echo AFTER:$(sh -c 'grep -c Suture /proc/self/status')\n\
             echo FREED:$(dmesg | grep -c 'suture example: all task tags freed')\n",
        )
        .unwrap();
    let out = run.script_output();
    eprintln!("guest output:\n{out}");
    assert_eq!(run.exit_status, 0, "{out}");
    assert_eq!(field(out, "BEFORE"), "0", "{out}");
    let (s1, live1) = tag(field(out, "FIRST"));
    let (s2, live2) = tag(field(out, "SECOND"));
    // The serial is the patch's own new static counter: it started at 0 on load
    // and counts the forks since (the command substitution, sh, grep...).
    assert!(s1 >= 1, "{out}");
    assert!(s2 >= s1 + 8, "8 forks happened between the two reads: {out}");
    // Tasks that exited were reaped and their tags freed: the number alive
    // stays put while the serial grows.
    assert!(live2 <= live1 + 1, "tags of exited tasks were not freed: {out}");
    // The shell started before the load has no tag: only forks under the patch do.
    assert_eq!(field(out, "OLDTASK"), "0", "{out}");
    // After unload: new tasks have none, and the post-unpatch callback freed the rest.
    assert_eq!(field(out, "AFTER"), "0", "{out}");
    assert_eq!(field(out, "FREED"), "1", "{out}");
}

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
/// `SUTURE_SYSCALL_DEFINE0` (whose stock entry points are aliases of the body)
/// and a two-argument `SUTURE_SYSCALL_DEFINE2`, in one patch.
#[test]
fn system_calls_without_and_with_arguments_are_patched() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ko, b) = build_ok("syscalls-0-and-2.patch", "livepatch_syscalls", tmp.path(), &[]);
    for f in ["__x64_sys_getppid", "__x64_sys_sethostname"] {
        assert!(b.stdout.contains(&format!("replaces vmlinux:{f} ")), "{}", b.stdout);
    }
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm();
    vm.add_file(&ko, "/root/sc.ko").unwrap();
    let run = vm
        .run(
            "echo PPID_BEFORE:$(sh -c 'echo $PPID')\n\
             hostname alpha; echo HOST_BEFORE:$(hostname)\n\
             suture load /root/sc.ko || exit 10\n\
             echo PPID_AFTER:$(sh -c 'echo $PPID')\n\
             hostname alpha; echo HOST_AFTER:$(hostname)\n\
             suture unload livepatch_syscalls || exit 12\n\
             echo PPID_UNLOADED:$(sh -c 'echo $PPID')\n\
             hostname alpha; echo HOST_UNLOADED:$(hostname)\n",
        )
        .unwrap();
    let out = run.script_output();
    assert_eq!(run.exit_status, 0, "{out}");
    assert_ne!(field(out, "PPID_BEFORE"), "4242", "{out}");
    assert_eq!(field(out, "PPID_AFTER"), "4242", "{out}");
    assert_ne!(field(out, "PPID_UNLOADED"), "4242", "{out}");
    assert_eq!(field(out, "HOST_BEFORE"), "alpha", "{out}");
    // The arguments reached the new body: the name is the one passed, marked.
    assert_eq!(field(out, "HOST_AFTER"), "Slpha", "{out}");
    assert_eq!(field(out, "HOST_UNLOADED"), "alpha", "{out}");
}

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

/// The `suture-cb:` lines of the kernel log, in order, without timestamps,
/// printed between the line starting with `from` and the one starting with `to`.
fn callback_lines(out: &str, from: &str, to: &str) -> Vec<String> {
    out.lines()
        .skip_while(|l| !l.starts_with(from))
        .take_while(|l| !l.starts_with(to))
        .filter_map(|l| l.find("suture-cb: ").map(|i| l[i + "suture-cb: ".len()..].trim().to_string()))
        .collect()
}

#[test]
fn callbacks_run_in_order_and_a_failing_pre_patch_callback_leaves_no_trace() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ko, b) = build_ok("callbacks.patch", "livepatch_cb", tmp.path(), &[]);
    for k in ["pre_patch", "post_patch", "pre_unpatch", "post_unpatch"] {
        assert!(b.stdout.contains(&format!("callback vmlinux {k}: suture_{k}")), "{}", b.stdout);
    }
    let (refuse, _) = build_ok("callbacks-refuse.patch", "livepatch_refuse", tmp.path(), &[]);
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm();
    vm.add_file(&ko, "/root/cb.ko").unwrap();
    vm.add_file(&refuse, "/root/refuse.ko").unwrap();
    // The kernel log goes to a file between the steps: `dmesg -c` empties the
    // ring, so each CB* line lists what one step printed.
    let run = vm
        .run(
            "dmesg -n 1; dmesg -c > /dev/null\n\
             echo BEFORE:$(cat /proc/cmdline)\n\
             suture load /root/cb.ko || exit 10\n\
             echo LOADED:$(cat /proc/cmdline)\n\
             dmesg -c > /tmp/load.log\n\
             suture unload livepatch_cb || exit 12\n\
             dmesg -c > /tmp/unload.log\n\
             echo UNLOADED:$(cat /proc/cmdline)\n\
             cat /tmp/load.log /tmp/unload.log | grep suture-cb:\n\
             echo LOADCB:$(grep -c suture-cb: /tmp/load.log)\n\
             suture load /root/refuse.ko; echo REFUSERC:$?\n\
             dmesg -c > /tmp/refuse.log\n\
             echo REFUSED:$(grep -c 'suture-cb: pre-patch refuses' /tmp/refuse.log)\n\
             echo KERNELSAYS:$(grep -c \"pre-patch callback failed for object 'vmlinux'\" /tmp/refuse.log)\n\
             echo MODULES:$(grep -c livepatch_ /proc/modules)\n\
             echo SYSFS:$(ls /sys/kernel/livepatch/)\n\
             echo FINAL:$(cat /proc/cmdline)\n",
        )
        .unwrap();
    let out = run.script_output();
    eprintln!("guest output:\n{out}");
    assert_eq!(run.exit_status, 0, "{out}");
    assert!(field(out, "LOADED").ends_with(" suture=callbacks"), "{out}");
    assert_eq!(field(out, "UNLOADED"), field(out, "BEFORE"), "{out}");
    assert_eq!(
        callback_lines(out, "UNLOADED:", "LOADCB:"),
        vec!["pre-patch vmlinux", "post-patch vmlinux", "pre-unpatch vmlinux", "post-unpatch vmlinux"],
        "{out}"
    );
    // pre-patch and post-patch both ran during the load, before suture load returned.
    assert_eq!(field(out, "LOADCB"), "2", "{out}");
    // The refusing patch: the load fails, its callback ran, the kernel said why,
    // and nothing is left: no module, no sysfs directory, the old behaviour.
    assert_ne!(field(out, "REFUSERC"), "0", "{out}");
    assert_eq!(field(out, "REFUSED"), "1", "{out}");
    assert_eq!(field(out, "KERNELSAYS"), "1", "{out}");
    assert_eq!(field(out, "MODULES"), "0", "{out}");
    assert_eq!(field(out, "SYSFS"), "", "{out}");
    assert_eq!(field(out, "FINAL"), field(out, "BEFORE"), "{out}");
}

#[test]
fn a_cumulative_patch_replaces_the_loaded_one_and_states_refuse_a_downgrade() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (one, b) = build_ok("cmdline.patch", "lp_one", tmp.path(), &["--state", "1:2"]);
    assert!(b.stdout.contains("state    1:2"), "{}", b.stdout);
    // Same code as lp_two, but it would take state 1 back to version 1.
    let (down, _) = build_ok("cmdline-second.patch", "lp_down", tmp.path(), &["--state", "1:1"]);
    let (two, _) = build_ok("cmdline-second.patch", "lp_two", tmp.path(), &["--state", "1:2"]);
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm();
    for (ko, name) in [(&one, "one"), (&down, "down"), (&two, "two")] {
        vm.add_file(ko, &format!("/root/{name}.ko")).unwrap();
    }
    let run = vm
        .run(
            "dmesg -n 1\n\
             echo BEFORE:$(cat /proc/cmdline)\n\
             suture load /root/one.ko || exit 10\n\
             echo ONE:$(cat /proc/cmdline)\n\
             dmesg -c > /dev/null\n\
             suture load /root/down.ko > /tmp/down.out 2>&1; echo DOWNRC:$?\n\
             cat /tmp/down.out\n\
             echo DOWNMSG:$(dmesg | grep -c 'Livepatch patch (lp_down) is not compatible with the already installed livepatches')\n\
             echo STILL:$(cat /proc/cmdline)\n\
             echo DOWNMOD:$(grep -c '^lp_down ' /proc/modules)\n\
             suture load /root/two.ko || exit 11\n\
             echo TWO:$(cat /proc/cmdline)\n\
             echo SYSFS2:$(ls /sys/kernel/livepatch/)\n\
             echo ONEMOD:$(grep -c '^lp_one ' /proc/modules)\n\
             rmmod lp_one; echo RMMOD:$?\n\
             echo ONEGONE:$(grep -c '^lp_one ' /proc/modules)\n\
             suture unload lp_two || exit 12\n\
             echo UNLOADED:$(cat /proc/cmdline)\n\
             echo SYSFS:$(ls /sys/kernel/livepatch/)\n\
             echo MODULES:$(grep -c '^lp_' /proc/modules)\n",
        )
        .unwrap();
    let out = run.script_output();
    eprintln!("guest output:\n{out}");
    assert_eq!(run.exit_status, 0, "{out}");
    let before = field(out, "BEFORE");
    assert!(field(out, "ONE").ends_with(" suture=live"), "{out}");
    // The downgrade is refused by the kernel (klp_is_patch_compatible) and
    // patch 1 keeps running.
    assert_ne!(field(out, "DOWNRC"), "0", "{out}");
    assert_eq!(field(out, "DOWNMSG"), "1", "{out}");
    assert_eq!(field(out, "STILL"), field(out, "ONE"), "{out}");
    assert_eq!(field(out, "DOWNMOD"), "0", "{out}");
    // Patch 2 replaces patch 1 atomically: only its text, only its directory;
    // patch 1's module stays loaded, disabled, and can be removed.
    let two = field(out, "TWO");
    assert!(two.ends_with(" suture=second") && !two.contains("suture=live"), "{out}");
    assert_eq!(field(out, "SYSFS2"), "lp_two", "{out}");
    assert_eq!(field(out, "ONEMOD"), "1", "{out}");
    assert_eq!(field(out, "RMMOD"), "0", "{out}");
    assert_eq!(field(out, "ONEGONE"), "0", "{out}");
    // Unloading patch 2 restores the original, not patch 1.
    assert_eq!(field(out, "UNLOADED"), before, "{out}");
    assert_eq!(field(out, "SYSFS"), "", "{out}");
    assert_eq!(field(out, "MODULES"), "0", "{out}");
}

#[test]
fn a_system_call_is_patched_through_suture_syscall_define() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ko, b) = build_ok("uname-syscall.patch", "livepatch_uname", tmp.path(), &[]);
    // The entry points are what gets redirected; the body is a new function.
    assert!(b.stdout.contains("replaces vmlinux:__x64_sys_newuname "), "{}", b.stdout);
    assert!(b.stdout.contains("adds     __suture_do_sys_newuname"), "{}", b.stdout);
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm();
    vm.add_file(&ko, "/root/uname.ko").unwrap();
    let run = vm
        .run(
            "echo BEFORE:$(uname -s)\n\
             echo RBEFORE:$(uname -r)\n\
             suture load /root/uname.ko || exit 10\n\
             echo AFTER:$(uname -s)\n\
             echo RAFTER:$(uname -r)\n\
             suture unload livepatch_uname || exit 12\n\
             echo UNLOADED:$(uname -s)\n",
        )
        .unwrap();
    let out = run.script_output();
    eprintln!("guest output:\n{out}");
    assert_eq!(run.exit_status, 0, "{out}");
    assert_eq!(field(out, "BEFORE"), "Linux", "{out}");
    assert_eq!(field(out, "AFTER"), "Suture", "{out}");
    // Only the marker changed: the rest of the structure is still the kernel's.
    assert_eq!(field(out, "RAFTER"), field(out, "RBEFORE"), "{out}");
    assert_eq!(field(out, "UNLOADED"), "Linux", "{out}");
}

#[test]
fn a_module_patched_before_it_loads_runs_its_callbacks_when_it_loads() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ko, b) = build_ok("module-callbacks.patch", "livepatch_bmcb", tmp.path(), &[]);
    assert!(b.stdout.contains("callback binfmt_misc pre_patch: suture_bm_pre_patch"), "{}", b.stdout);
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm();
    vm.add_file(&ko, "/root/p.ko").unwrap();
    vm.add_release_module("kernel/fs/binfmt_misc.ko").unwrap();
    let bm = format!("/lib/modules/{}/kernel/fs/binfmt_misc.ko", release());
    let script = format!(
        "dmesg -n 1; dmesg -c > /dev/null; mkdir -p /bm\n\
         suture load /root/p.ko || exit 10\n\
         echo ATLOAD:$(dmesg -c | grep -c suture-cb:)\n\
         insmod {bm} || exit 11\n\
         dmesg -c > /tmp/insmod.log\n\
         mount -t binfmt_misc none /bm || exit 12\n\
         echo STATUS:$(cat /bm/status)\n\
         umount /bm; rmmod binfmt_misc || exit 13\n\
         dmesg -c > /tmp/rmmod.log\n\
         echo INSMOD:$(grep suture-cb: /tmp/insmod.log | sed 's/.*suture-cb: //' | tr '\\n' ,)\n\
         echo RMMOD:$(grep suture-cb: /tmp/rmmod.log | sed 's/.*suture-cb: //' | tr '\\n' ,)\n\
         suture unload livepatch_bmcb || exit 14\n\
         echo ATUNLOAD:$(dmesg -c | grep -c suture-cb:)\n"
    );
    let run = vm.run(&script).unwrap();
    let out = run.script_output();
    eprintln!("guest output:\n{out}");
    assert_eq!(run.exit_status, 0, "{out}");
    // The module is not there at load: its object's callbacks wait for it.
    assert_eq!(field(out, "ATLOAD"), "0", "{out}");
    assert_eq!(field(out, "INSMOD"), "pre-patch binfmt_misc,post-patch binfmt_misc,", "{out}");
    assert_eq!(field(out, "STATUS"), "enabled (suture)", "{out}");
    assert_eq!(field(out, "RMMOD"), "pre-unpatch binfmt_misc,post-unpatch binfmt_misc,", "{out}");
    // Module gone: unloading the patch has no module callbacks left to run.
    assert_eq!(field(out, "ATUNLOAD"), "0", "{out}");
}

//! The patch author's toolbox, end to end on Debian's own kernel: shadow
//! variables, callbacks, cumulative patches and states, a stalled transition,
//! and system calls (`include/suture.h`, `docs/patch-author-guide.md`). Each
//! test builds example patches from `examples/` with the real `suture build`,
//! boots the release in QEMU and checks what the kernel does before loading,
//! while loaded and after unloading.
//!
//! The shadow-variable, callback, cumulative and stall scenarios run on both
//! series, `_on_61` and `_on_612` (`SUTURE_TEST_RELEASE_612`; 6.12 guests run
//! with call-depth tracking on), with the patches of `examples/6.12/` where
//! 6.12's sources need a port. Without a release installed its tests skip,
//! except under `CI=true`, where a missing kernel is a failure.

mod common;

use common::{build_ok, field, vm, vm_lock};

/// `SUTURE_SYSCALL_DEFINE0` (whose stock entry points are aliases of the body)
/// and a two-argument `SUTURE_SYSCALL_DEFINE2`, in one patch.
#[test]
fn system_calls_without_and_with_arguments_are_patched() {
    let Some(release) = common::ready_61() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (ko, b) = build_ok(
        &release,
        "syscalls-0-and-2.patch",
        "livepatch_syscalls",
        tmp.path(),
        &[],
    );
    for f in ["__x64_sys_getppid", "__x64_sys_sethostname"] {
        assert!(
            b.stdout.contains(&format!("replaces vmlinux:{f} ")),
            "{}",
            b.stdout
        );
    }
    let _g = vm_lock();
    let mut vm = vm(&release);
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

/// `Suture:\tSERIAL live LIVE` of a /proc/PID/status line, as numbers.
fn tag(s: &str) -> (i64, i64) {
    let v: Vec<&str> = s.split_whitespace().collect();
    assert!(
        v.len() == 4 && v[0] == "Suture:" && v[2] == "live",
        "not a tag line: {s:?}"
    );
    (v[1].parse().unwrap(), v[3].parse().unwrap())
}

#[test]
fn shadow_variable_tags_tasks_at_fork_shows_them_and_frees_them_at_exit_on_61() {
    if let Some(r) = common::ready_61() {
        shadow_variable_tags_tasks_at_fork_shows_them_and_frees_them_at_exit(&r);
    }
}

#[test]
fn shadow_variable_tags_tasks_at_fork_shows_them_and_frees_them_at_exit_on_612() {
    if let Some(r) = common::ready_612() {
        shadow_variable_tags_tasks_at_fork_shows_them_and_frees_them_at_exit(&r);
    }
}

fn shadow_variable_tags_tasks_at_fork_shows_them_and_frees_them_at_exit(release: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (ko, b) = build_ok(
        release,
        "shadow-task-tag.patch",
        "livepatch_tag",
        tmp.path(),
        &[],
    );
    // One patch, three translation units; the callback comes from kernel/exit.c.
    for f in ["kernel_clone", "proc_pid_status", "release_task"] {
        assert!(
            b.stdout.contains(&format!("replaces vmlinux:{f} ")),
            "{}",
            b.stdout
        );
    }
    assert!(
        b.stdout
            .contains("callback vmlinux post_unpatch: suture_tags_free_all"),
        "{}",
        b.stdout
    );
    let _g = vm_lock();
    let mut vm = vm(release);
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
    assert!(
        s2 >= s1 + 8,
        "8 forks happened between the two reads: {out}"
    );
    // Tasks that exited were reaped and their tags freed: the number alive
    // stays put while the serial grows.
    assert!(
        live2 <= live1 + 1,
        "tags of exited tasks were not freed: {out}"
    );
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
        .filter_map(|l| {
            l.find("suture-cb: ")
                .map(|i| l[i + "suture-cb: ".len()..].trim().to_string())
        })
        .collect()
}

#[test]
fn callbacks_run_in_order_and_a_failing_pre_patch_callback_leaves_no_trace_on_61() {
    if let Some(r) = common::ready_61() {
        callbacks_run_in_order_and_a_failing_pre_patch_callback_leaves_no_trace(&r);
    }
}

#[test]
fn callbacks_run_in_order_and_a_failing_pre_patch_callback_leaves_no_trace_on_612() {
    if let Some(r) = common::ready_612() {
        callbacks_run_in_order_and_a_failing_pre_patch_callback_leaves_no_trace(&r);
    }
}

fn callbacks_run_in_order_and_a_failing_pre_patch_callback_leaves_no_trace(release: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (ko, b) = build_ok(release, "callbacks.patch", "livepatch_cb", tmp.path(), &[]);
    for k in ["pre_patch", "post_patch", "pre_unpatch", "post_unpatch"] {
        assert!(
            b.stdout
                .contains(&format!("callback vmlinux {k}: suture_{k}")),
            "{}",
            b.stdout
        );
    }
    let (refuse, _) = build_ok(
        release,
        "callbacks-refuse.patch",
        "livepatch_refuse",
        tmp.path(),
        &[],
    );
    let _g = vm_lock();
    let mut vm = vm(release);
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
        vec![
            "pre-patch vmlinux",
            "post-patch vmlinux",
            "pre-unpatch vmlinux",
            "post-unpatch vmlinux"
        ],
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
fn a_cumulative_patch_replaces_the_loaded_one_and_states_refuse_a_downgrade_on_61() {
    if let Some(r) = common::ready_61() {
        a_cumulative_patch_replaces_the_loaded_one_and_states_refuse_a_downgrade(&r);
    }
}

#[test]
fn a_cumulative_patch_replaces_the_loaded_one_and_states_refuse_a_downgrade_on_612() {
    if let Some(r) = common::ready_612() {
        a_cumulative_patch_replaces_the_loaded_one_and_states_refuse_a_downgrade(&r);
    }
}

fn a_cumulative_patch_replaces_the_loaded_one_and_states_refuse_a_downgrade(release: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (one, b) = build_ok(
        release,
        "cmdline.patch",
        "lp_one",
        tmp.path(),
        &["--state", "1:2"],
    );
    assert!(b.stdout.contains("state    1:2"), "{}", b.stdout);
    // Same code as lp_two, but it would take state 1 back to version 1.
    let (down, _) = build_ok(
        release,
        "cmdline-second.patch",
        "lp_down",
        tmp.path(),
        &["--state", "1:1"],
    );
    let (two, _) = build_ok(
        release,
        "cmdline-second.patch",
        "lp_two",
        tmp.path(),
        &["--state", "1:2"],
    );
    let _g = vm_lock();
    let mut vm = vm(release);
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
    assert!(
        two.ends_with(" suture=second") && !two.contains("suture=live"),
        "{out}"
    );
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
    let Some(release) = common::ready_61() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (ko, b) = build_ok(
        &release,
        "uname-syscall.patch",
        "livepatch_uname",
        tmp.path(),
        &[],
    );
    // The entry points are what gets redirected; the body is a new function.
    assert!(
        b.stdout.contains("replaces vmlinux:__x64_sys_newuname "),
        "{}",
        b.stdout
    );
    assert!(
        b.stdout.contains("adds     __suture_do_sys_newuname"),
        "{}",
        b.stdout
    );
    let _g = vm_lock();
    let mut vm = vm(&release);
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
    let Some(release) = common::ready_61() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (ko, b) = build_ok(
        &release,
        "module-callbacks.patch",
        "livepatch_bmcb",
        tmp.path(),
        &[],
    );
    assert!(
        b.stdout
            .contains("callback binfmt_misc pre_patch: suture_bm_pre_patch"),
        "{}",
        b.stdout
    );
    let _g = vm_lock();
    let mut vm = vm(&release);
    vm.add_file(&ko, "/root/p.ko").unwrap();
    vm.add_release_module("kernel/fs/binfmt_misc.ko").unwrap();
    let bm = format!("/lib/modules/{release}/kernel/fs/binfmt_misc.ko");
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
    assert_eq!(
        field(out, "INSMOD"),
        "pre-patch binfmt_misc,post-patch binfmt_misc,",
        "{out}"
    );
    assert_eq!(field(out, "STATUS"), "enabled (suture)", "{out}");
    assert_eq!(
        field(out, "RMMOD"),
        "pre-unpatch binfmt_misc,post-unpatch binfmt_misc,",
        "{out}"
    );
    // Module gone: unloading the patch has no module callbacks left to run.
    assert_eq!(field(out, "ATUNLOAD"), "0", "{out}");
}

/// Issue 4's stall, through the whole pipeline: an out-of-tree module
/// (`examples/stall`) whose kthread sleeps uninterruptibly in
/// `suture_stall_wait`, patched with `suture build --module-src`. While the
/// kthread is in there, `suture load --timeout 5` fails, names it, and the old
/// code keeps running; once it has left, the same load succeeds.
fn a_stalled_transition_is_reversed_and_succeeds_once_the_task_leaves(release: &str) {
    let tmp = tempfile::tempdir().unwrap();
    // The module as hosts run it: built normally with the release's kbuild.
    let src =
        common::make_example_module(release, "stall", &["suture_stall.c", "Kbuild"], tmp.path());
    let srcdir = common::examples().join("stall");
    let (ko, b) = build_ok(
        release,
        "stall-wait.patch",
        "livepatch_stall",
        tmp.path(),
        &["--module-src", srcdir.to_str().unwrap()],
    );
    assert!(
        b.stdout
            .contains("replaces suture_stall:suture_stall_wait "),
        "{}",
        b.stdout
    );
    // The hook (init, exit) as well as the replacement carry unwind data:
    // tasks are only switched when their stacks can be walked.
    assert_eq!(
        common::functions_without_orc(&ko),
        Vec::<String>::new(),
        "{}",
        ko.display()
    );
    let _g = vm_lock();
    let mut vm = vm(release).timeout(std::time::Duration::from_secs(300));
    vm.add_file(&src.join("suture_stall.ko"), "/root/suture_stall.ko")
        .unwrap();
    vm.add_file(&ko, "/root/p.ko").unwrap();
    let run = vm
        .run(
            "dmesg -n 1\n\
             insmod /root/suture_stall.ko || exit 9\n\
             KT=; for d in /proc/[0-9]*; do [ \"$(cat $d/comm 2>/dev/null)\" = suture_stall ] && KT=${d#/proc/}; done\n\
             i=0; while ! grep -q suture_stall_wait /proc/$KT/stack; do i=$((i+1)); [ $i -gt 100 ] && break; usleep 50000; done\n\
             echo KT:$KT\n\
             echo BEFORE:$(cat /proc/suture_stall)\n\
             suture load --timeout 5 /root/p.ko > /tmp/stall.out 2>&1; echo STALLRC:$?\n\
             cat /tmp/stall.out\n\
             echo STALLED:$(cat /proc/suture_stall)\n\
             echo SYSFS:$(ls /sys/kernel/livepatch/)\n\
             echo MODULE:$(grep -c '^livepatch_stall ' /proc/modules)\n\
             echo STILL_IN:$(grep -c suture_stall_wait /proc/$KT/stack)\n\
             echo 1 > /sys/module/suture_stall/parameters/release\n\
             i=0; while ! grep -q suture_stall_idle /proc/$KT/stack; do i=$((i+1)); [ $i -gt 100 ] && break; usleep 50000; done\n\
             suture load --timeout 60 /root/p.ko || exit 10\n\
             echo PATCHED:$(cat /proc/suture_stall)\n\
             echo OBJPATCHED:$(cat /sys/kernel/livepatch/livepatch_stall/suture_stall/patched)\n\
             suture unload livepatch_stall || exit 12\n\
             echo UNLOADED:$(cat /proc/suture_stall)\n\
             rmmod suture_stall || exit 13\n",
        )
        .unwrap();
    let out = run.script_output();
    eprintln!("guest output:\n{out}");
    assert_eq!(run.exit_status, 0, "{out}");
    let kt = field(out, "KT");
    assert!(kt.parse::<u32>().is_ok(), "no kthread: {out}");
    assert_eq!(field(out, "BEFORE"), "stall original", "{out}");
    assert_ne!(field(out, "STALLRC"), "0", "{out}");
    assert!(
        out.contains("did not finish its transition within 5s"),
        "{out}"
    );
    assert!(
        out.contains(&format!("task {kt} (tid {kt}) \"suture_stall\"")),
        "{out}"
    );
    assert!(
        out.contains("patched function(s) on its stack: suture_stall_wait"),
        "{out}"
    );
    // Reversed and removed: the old code runs, nothing of the patch is left.
    assert_eq!(field(out, "STALLED"), "stall original", "{out}");
    assert_eq!(field(out, "SYSFS"), "", "{out}");
    assert_eq!(field(out, "MODULE"), "0", "{out}");
    assert_eq!(field(out, "STILL_IN"), "1", "{out}");
    assert_eq!(field(out, "PATCHED"), "stall patched", "{out}");
    assert_eq!(field(out, "OBJPATCHED"), "1", "{out}");
    assert_eq!(field(out, "UNLOADED"), "stall original", "{out}");
}

#[test]
fn a_stalled_transition_is_reversed_and_succeeds_once_the_task_leaves_on_61() {
    if let Some(r) = common::ready_61() {
        a_stalled_transition_is_reversed_and_succeeds_once_the_task_leaves(&r);
    }
}

#[test]
fn a_stalled_transition_is_reversed_and_succeeds_once_the_task_leaves_on_612() {
    if let Some(r) = common::ready_612() {
        a_stalled_transition_is_reversed_and_succeeds_once_the_task_leaves(&r);
    }
}

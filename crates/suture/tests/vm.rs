//! End to end, on Debian's own kernel: `suture build` turns a source patch into a
//! livepatch module, then a QEMU guest booted on that release runs `suture load`
//! and `suture unload`, and each test checks what the kernel does before loading,
//! after loading and after unloading. Nothing here is mocked: kbuild, gcc, the
//! kernel image and the livepatch core are the real ones.
//!
//! The release is the one the README's setup installs (`SUTURE_TEST_RELEASE`
//! overrides it). Without it installed the tests skip, except under `CI=true`.

mod common;

use common::{examples, field, suture, Built, VM_LOCK};
use std::path::{Path, PathBuf};
use std::process::Command;
use suture_lab::Vm;

/// `SUTURE_TEST_RELEASE`, else the release `linux-image-amd64` depends on.
fn release() -> String {
    common::release_61()
}

fn ready() -> bool {
    suture_lab::require_kernel_or_skip(&release()).expect("kernel for the VM tests")
}

fn build(patch: &str, out: &Path, extra: &[&str]) -> Built {
    common::build(&release(), &examples().join(patch), out, extra)
}

fn build_ok(patch: &str, dir: &Path) -> PathBuf {
    let ko = dir.join(patch.replace(".patch", ".ko"));
    let b = build(patch, &ko, &[]);
    assert_eq!(
        b.status, 0,
        "suture build {patch} failed:\n{}\n{}",
        b.stdout, b.stderr
    );
    assert!(ko.exists());
    ko
}

fn vm() -> Vm {
    common::vm(&release())
}

#[test]
fn proc_cmdline_prints_the_patched_text_while_loaded() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ko = build_ok("cmdline.patch", tmp.path());
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm();
    vm.add_file(&ko, "/root/cmdline.ko").unwrap();
    let run = vm
        .run(
            "echo BEFORE:$(cat /proc/cmdline)\n\
             suture load /root/cmdline.ko || exit 10\n\
             echo AFTER:$(cat /proc/cmdline)\n\
             echo ENABLED:$(cat /sys/kernel/livepatch/livepatch_cmdline/enabled)\n\
             suture list --json > /tmp/list.json || exit 11\n\
             echo LIST:$(tr -d '\\n ' < /tmp/list.json)\n\
             suture unload livepatch_cmdline || exit 12\n\
             echo UNLOADED:$(cat /proc/cmdline)\n\
             echo SYSFS:$(ls /sys/kernel/livepatch/)\n",
        )
        .unwrap();
    let out = run.script_output();
    assert_eq!(run.exit_status, 0, "{out}");
    assert!(!field(out, "BEFORE").contains("suture=live"), "{out}");
    assert!(field(out, "AFTER").ends_with(" suture=live"), "{out}");
    assert_eq!(field(out, "ENABLED"), "1");
    assert!(field(out, "LIST").contains("livepatch_cmdline"), "{out}");
    assert_eq!(field(out, "UNLOADED"), field(out, "BEFORE"), "{out}");
    assert_eq!(field(out, "SYSFS"), "", "{out}");
}

#[test]
fn a_changed_function_may_call_a_new_function() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ko = build_ok("cmdline-new-function.patch", tmp.path());
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm();
    vm.add_file(&ko, "/root/p.ko").unwrap();
    let run = vm
        .run(
            "echo BEFORE:$(cat /proc/cmdline)\n\
             suture load /root/p.ko || exit 10\n\
             echo AFTER:$(cat /proc/cmdline)\n\
             echo NEWSYM:$(grep -c ' suture_cmdline_note' /proc/kallsyms)\n\
             suture unload livepatch_cmdline_new_function || exit 12\n\
             echo UNLOADED:$(cat /proc/cmdline)\n",
        )
        .unwrap();
    let out = run.script_output();
    assert_eq!(run.exit_status, 0, "{out}");
    assert!(
        !field(out, "BEFORE").contains("suture=new-function"),
        "{out}"
    );
    // The new function's text is what the kernel printed, and it lives in the module.
    assert!(
        field(out, "AFTER").contains(" suture=new-function"),
        "{out}"
    );
    assert_eq!(field(out, "NEWSYM"), "1", "{out}");
    assert_eq!(field(out, "UNLOADED"), field(out, "BEFORE"), "{out}");
}

#[test]
fn a_module_function_is_patched_whether_the_module_loads_before_or_after() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ko = build_ok("binfmt-misc-status.patch", tmp.path());
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm();
    vm.add_file(&ko, "/root/p.ko").unwrap();
    vm.add_release_module("kernel/fs/binfmt_misc.ko").unwrap();
    let bm = format!("/lib/modules/{}/kernel/fs/binfmt_misc.ko", release());
    // Module loaded first, then the patch; then the patch first (late patching).
    let script = format!(
        "mkdir -p /bm\n\
         insmod {bm} || exit 9\n\
         mount -t binfmt_misc none /bm || exit 8\n\
         echo BEFORE:$(cat /bm/status)\n\
         suture load /root/p.ko || exit 10\n\
         echo AFTER:$(cat /bm/status)\n\
         echo 0 > /bm/status\n\
         echo AFTER_DISABLED:$(cat /bm/status)\n\
         echo 1 > /bm/status\n\
         suture unload livepatch_binfmt_misc_status || exit 12\n\
         echo UNLOADED:$(cat /bm/status)\n\
         umount /bm; rmmod binfmt_misc || exit 13\n\
         suture load /root/p.ko || exit 14\n\
         insmod {bm} || exit 15\n\
         mount -t binfmt_misc none /bm || exit 16\n\
         echo LATE:$(cat /bm/status)\n\
         echo LATE_PATCHED:$(cat /sys/kernel/livepatch/livepatch_binfmt_misc_status/binfmt_misc/patched)\n\
         umount /bm; rmmod binfmt_misc || exit 17\n\
         echo GONE_PATCHED:$(cat /sys/kernel/livepatch/livepatch_binfmt_misc_status/binfmt_misc/patched)\n\
         insmod {bm} || exit 19\n\
         mount -t binfmt_misc none /bm || exit 20\n\
         echo RELOADED:$(cat /bm/status)\n\
         umount /bm; rmmod binfmt_misc || exit 21\n\
         suture unload livepatch_binfmt_misc_status || exit 18\n\
         echo COMPLAINTS:$(dmesg | grep -cE 'Oops|BUG:|WARNING:|nonzero|refusing to load')\n"
    );
    let run = vm.run(&script).unwrap();
    let out = run.script_output();
    assert_eq!(run.exit_status, 0, "{out}");
    assert_eq!(field(out, "BEFORE"), "enabled", "{out}");
    assert_eq!(field(out, "AFTER"), "enabled (suture)", "{out}");
    // The patched function really reads the module's own static variable.
    assert_eq!(field(out, "AFTER_DISABLED"), "disabled (suture)", "{out}");
    assert_eq!(field(out, "UNLOADED"), "enabled", "{out}");
    assert_eq!(field(out, "LATE"), "enabled (suture)", "{out}");
    assert_eq!(field(out, "LATE_PATCHED"), "1", "{out}");
    assert_eq!(field(out, "GONE_PATCHED"), "0", "{out}");
    // Loaded again while the patch stays: on 6.1 the kernel leaves the
    // module's livepatch relocations written when it goes away and refused
    // to write them again ("existing value is nonzero", "refusing to load
    // module"); the hook clears them at post_unpatch.
    assert_eq!(field(out, "RELOADED"), "enabled (suture)", "{out}");
    assert_eq!(field(out, "COMPLAINTS"), "0", "{out}");
}

/// Issue 12.0: a patch of a btrfs function that fires btrfs's own tracepoint
/// (`trace_btrfs_inode_new`). Its module used to keep `.static_call_sites`
/// and `__jump_table` entries on btrfs's tracepoint keys through klp
/// relocations that the kernel applies only when btrfs loads, while it reads
/// those sections when the livepatch loads: `suture unload` oopsed in
/// `static_call_del_module` with btrfs absent. Now the entries are dropped
/// (the call through the trampoline is still right): the patch loads and
/// unloads with btrfs absent, and again with btrfs loaded after it, its
/// tracepoint enabled and disabled (every site of its static call and jump
/// label rewritten) in between; the kernel log shows no oops or warning.
#[test]
fn a_module_patch_on_the_modules_own_tracepoint_loads_and_unloads_cleanly() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ko = build_ok("btrfs-tracepoint.patch", tmp.path());
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm();
    vm.add_file(&ko, "/root/p.ko").unwrap();
    let mods = [
        "kernel/crypto/crc32c_generic.ko",
        "kernel/crypto/xor.ko",
        "kernel/lib/raid6/raid6_pq.ko",
        "kernel/lib/zstd/zstd_compress.ko",
        "kernel/lib/libcrc32c.ko",
        "kernel/fs/btrfs/btrfs.ko",
    ];
    for m in mods {
        vm.add_release_module(m).unwrap();
    }
    let lib = format!("/lib/modules/{}", release());
    let deps: String = mods[..5]
        .iter()
        .map(|m| format!("insmod {lib}/{m} || exit 9\n"))
        .collect();
    let lp = "/sys/kernel/livepatch/livepatch_btrfs_tracepoint";
    let script = format!(
        "{deps}\
         suture load /root/p.ko || exit 10\n\
         echo ABSENT_PATCHED:$(cat {lp}/btrfs/patched)\n\
         suture unload livepatch_btrfs_tracepoint || exit 11\n\
         suture load /root/p.ko || exit 12\n\
         insmod {lib}/kernel/fs/btrfs/btrfs.ko || exit 13\n\
         echo LATE_PATCHED:$(cat {lp}/btrfs/patched)\n\
         mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null\n\
         ev=/sys/kernel/tracing/events/btrfs/btrfs_inode_new/enable\n\
         echo 1 > $ev || exit 14\n\
         echo TRACING:$(cat $ev)\n\
         echo 0 > $ev || exit 15\n\
         suture unload livepatch_btrfs_tracepoint || exit 16\n\
         rmmod btrfs || exit 17\n\
         {}",
        common::KERNEL_LOG_CHECK
    );
    let run = vm.run(&script).unwrap();
    let out = run.script_output();
    assert_eq!(run.exit_status, 0, "{out}");
    // A livepatch object's `patched` reads 0 until its module is loaded.
    assert_eq!(field(out, "ABSENT_PATCHED"), "0", "{out}");
    assert_eq!(field(out, "LATE_PATCHED"), "1", "{out}");
    assert_eq!(field(out, "TRACING"), "1", "{out}");
    assert_eq!(field(out, "COMPLAINTS"), "0", "{out}");
}

#[test]
fn refusals_name_the_problem_and_leave_nothing_behind() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.ko");

    // A change to __init code alone: nothing running to patch, the fix takes
    // effect at the next boot; said as "not applicable" (3), not as an error.
    let b = build("cmdline-init.patch", &out, &[]);
    assert_eq!(b.status, 3, "{}\n{}", b.stdout, b.stderr);
    assert!(
        b.stderr.contains("proc_cmdline_init")
            && b.stderr.contains("__init")
            && b.stderr.contains("next boot"),
        "{}",
        b.stderr
    );
    assert!(!out.exists());
    // The same __init change beside a change to running code is refused: the
    // running part alone would not be the fix.
    let b = build("cmdline-init-and-show.patch", &out, &[]);
    assert_eq!(b.status, 2, "{}\n{}", b.stdout, b.stderr);
    assert!(
        b.stderr.contains("proc_cmdline_init") && b.stderr.contains("__init"),
        "{}",
        b.stderr
    );
    assert!(!out.exists());

    let b = build("cmdline-does-not-apply.patch", &out, &[]);
    assert_eq!(b.status, 1, "{}", b.stderr);
    assert!(
        b.stderr.contains("fs/proc/cmdline.c") && b.stderr.contains("does not apply"),
        "{}",
        b.stderr
    );
    assert!(!out.exists());

    let b = build("cmdline-comment.patch", &out, &[]);
    assert_eq!(b.status, 3, "{}", b.stderr);
    assert!(b.stderr.contains("no functional change"), "{}", b.stderr);
    assert!(!out.exists());

    let o = Command::new(suture())
        .arg("build")
        .arg(examples().join("cmdline.patch"))
        .args(["--kernel", "6.1.0-999-amd64", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("6.1.0-999-amd64") && err.contains("not installed"),
        "{err}"
    );
    assert!(!out.exists());
    // The tree was left as it was: the next build of a good patch still works.
    let b = build("cmdline.patch", &out, &[]);
    assert_eq!(b.status, 0, "{}", b.stderr);
}

#[test]
fn a_function_whose_name_is_not_unique_calls_a_static_function_of_its_file() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ko = tmp.path().join("serial.ko");
    // `type_show` is defined by many files of vmlinux; the patch must replace
    // serial_core.c's, and reach serial_core.c's static `uart_get_info`.
    let b = build("serial-type-show.patch", &ko, &["--json"]);
    assert_eq!(b.status, 0, "{}\n{}", b.stdout, b.stderr);
    let report: serde_json::Value = serde_json::from_str(&b.stdout).unwrap();
    let f = &report["replaced"][0];
    assert_eq!(f["function"], "type_show");
    assert!(
        f["sympos"].as_u64().unwrap() > 0,
        "type_show is not unique: sympos must be set: {report}"
    );
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm();
    vm.add_file(&ko, "/root/p.ko").unwrap();
    let run = vm
        .run(
            "echo BEFORE:$(cat /sys/class/tty/ttyS0/type)\n\
             echo SIBLING_BEFORE:$(cat /sys/class/tty/ttyS1/type)\n\
             suture load /root/p.ko || exit 10\n\
             echo AFTER:$(cat /sys/class/tty/ttyS0/type)\n\
             echo SIBLING_AFTER:$(cat /sys/class/tty/ttyS1/type)\n\
             suture unload livepatch_serial_type_show || exit 12\n\
             echo UNLOADED:$(cat /sys/class/tty/ttyS0/type)\n",
        )
        .unwrap();
    let out = run.script_output();
    assert_eq!(run.exit_status, 0, "{out}");
    let before = field(out, "BEFORE");
    assert!(before.parse::<u32>().is_ok(), "{out}");
    // The static callee ran: the port type it filled in is still printed.
    assert_eq!(field(out, "AFTER"), format!("{before} (suture)"), "{out}");
    assert_eq!(
        field(out, "SIBLING_AFTER"),
        format!("{} (suture)", field(out, "SIBLING_BEFORE")),
        "{out}"
    );
    assert_eq!(field(out, "UNLOADED"), before, "{out}");
}

/// `--kallsyms`: a copy of /proc/kallsyms taken in a guest running the release
/// gives the same positions as the tables inside the image.
#[test]
fn a_proc_kallsyms_copy_stands_in_for_the_image() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = {
        let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // Compressed, so that the serial console carries 1 MB instead of 5.
        vm().run("echo KS-START; gzip -c /proc/kallsyms | base64; echo KS-END\n")
            .unwrap()
    };
    assert_eq!(run.exit_status, 0);
    let out = run.script_output();
    let b64: String = out
        .lines()
        .skip_while(|l| l.trim() != "KS-START")
        .skip(1)
        .take_while(|l| l.trim() != "KS-END")
        .collect::<Vec<_>>()
        .join("\n");
    let gz = tmp.path().join("kallsyms.gz");
    std::fs::write(tmp.path().join("kallsyms.b64"), b64).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "base64 -d {0}/kallsyms.b64 > {1} && gunzip -c {1} > {0}/kallsyms",
            tmp.path().display(),
            gz.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    let kallsyms = tmp.path().join("kallsyms");
    let text = std::fs::read_to_string(&kallsyms).unwrap();
    assert!(text.lines().count() > 50_000, "short kallsyms copy");

    let via_copy = tmp.path().join("copy.ko");
    let b = build(
        "serial-type-show.patch",
        &via_copy,
        &["--json", "--kallsyms", kallsyms.to_str().unwrap()],
    );
    assert_eq!(b.status, 0, "{}", b.stderr);
    let from_copy: serde_json::Value = serde_json::from_str(&b.stdout).unwrap();
    assert!(
        from_copy["symbol_source"]
            .as_str()
            .unwrap()
            .contains("kallsyms copy"),
        "{from_copy}"
    );

    let via_image = tmp.path().join("image.ko");
    let b = build("serial-type-show.patch", &via_image, &["--json"]);
    assert_eq!(b.status, 0, "{}", b.stderr);
    let from_image: serde_json::Value = serde_json::from_str(&b.stdout).unwrap();
    assert!(
        from_image["symbol_source"]
            .as_str()
            .unwrap()
            .contains("/boot/vmlinuz"),
        "{from_image}"
    );
    assert_eq!(from_copy["replaced"], from_image["replaced"]);
    // Independent check of the position against the copy itself: type_show's
    // instances in address order, and the one just after uart_get_info.
    let mut entries: Vec<(u64, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let addr = u64::from_str_radix(it.next()?, 16).ok()?;
            let _kind = it.next()?;
            let name = it.next()?;
            (it.next().is_none() && (name == "type_show" || name == "uart_get_info"))
                .then_some((addr, name))
        })
        .collect();
    entries.sort();
    let uart = entries.iter().position(|e| e.1 == "uart_get_info").unwrap();
    let pos = entries[..uart]
        .iter()
        .filter(|e| e.1 == "type_show")
        .count()
        + 1;
    assert_eq!(
        from_copy["replaced"][0]["sympos"].as_u64().unwrap() as usize,
        pos
    );
}

/// Two releases installed side by side: each is built from the source of its
/// own package version, never from the neighbour's, and its patch works on it.
#[test]
fn an_older_release_is_built_from_its_own_source() {
    let Ok(old) = std::env::var("SUTURE_TEST_RELEASE_OLD") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set SUTURE_TEST_RELEASE_OLD (scripts/test.sh does)"
        );
        eprintln!("SKIP: SUTURE_TEST_RELEASE_OLD is not set");
        return;
    };
    assert!(
        suture_lab::require_kernel_or_skip(&old).unwrap(),
        "SUTURE_TEST_RELEASE_OLD={old} names a release that is not installed"
    );
    let version = |pkg: &str| {
        let o = Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", pkg])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let (old_src, new_src) = (
        version(&format!("linux-headers-{old}")),
        version(&format!("linux-headers-{}", release())),
    );
    assert_ne!(
        old_src, new_src,
        "the two releases come from the same source version: nothing to test"
    );

    let tmp = tempfile::tempdir().unwrap();
    let ko = tmp.path().join("old.ko");
    let o = Command::new(suture())
        .arg("build")
        .arg(examples().join("cmdline.patch"))
        .args(["--kernel", &old, "--json", "-o"])
        .arg(&ko)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("linux-source-6.1 {old_src}")),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["release"], old.as_str());
    // The module is for that release, and the kernel of that release runs it.
    let modinfo = Command::new("modinfo")
        .args(["-F", "vermagic"])
        .arg(&ko)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&modinfo.stdout).starts_with(&format!("{old} ")));
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = Vm::new(&old).unwrap();
    vm.add_executable(Path::new(suture()), "/bin/suture")
        .unwrap();
    vm.add_file(&ko, "/root/p.ko").unwrap();
    let run = vm
        .run(
            "echo UNAME:$(uname -r)\n\
             echo BEFORE:$(cat /proc/cmdline)\n\
             suture load /root/p.ko || exit 10\n\
             echo AFTER:$(cat /proc/cmdline)\n\
             suture unload livepatch_cmdline || exit 12\n",
        )
        .unwrap();
    let out = run.script_output();
    assert_eq!(run.exit_status, 0, "{out}");
    assert_eq!(field(out, "UNAME"), old);
    assert_eq!(
        field(out, "AFTER"),
        format!("{} suture=live", field(out, "BEFORE")),
        "{out}"
    );
}

/// The records `suture build` writes let `suture verify` prove on the host that
/// the functions a patch replaces are the running kernel's code, read from
/// /proc/kcore, before and while the patch is live.
#[test]
fn the_host_verifies_replaced_functions_against_kernel_memory() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cmdline = build_ok("cmdline.patch", tmp.path());
    let serial = build_ok("serial-type-show.patch", tmp.path());
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm();
    vm.add_file(&cmdline, "/root/cmdline.ko").unwrap();
    vm.add_file(&serial, "/root/serial.ko").unwrap();
    let run = vm
        .run(
            "suture verify /root/cmdline.ko; echo VERIFY_CMDLINE:$?\n\
             suture verify --json /root/serial.ko > /tmp/v.json; echo VERIFY_SERIAL:$?\n\
             echo SERIAL_JSON:$(tr -d '\\n ' < /tmp/v.json)\n\
             suture load /root/cmdline.ko > /dev/null || exit 10\n\
             suture verify /root/cmdline.ko; echo VERIFY_PATCHED:$?\n\
             suture unload livepatch_cmdline > /dev/null || exit 12\n",
        )
        .unwrap();
    let out = run.script_output();
    assert_eq!(run.exit_status, 0, "{out}");
    assert_eq!(field(out, "VERIFY_CMDLINE"), "0", "{out}");
    assert_eq!(field(out, "VERIFY_SERIAL"), "0", "{out}");
    // type_show is not unique: the record names its position and was compared.
    let json = field(out, "SERIAL_JSON");
    assert!(
        json.contains("type_show") && json.contains("\"match\""),
        "{json}"
    );
    assert!(!json.contains("unchecked"), "{json}");
    assert_eq!(field(out, "VERIFY_PATCHED"), "0", "{out}");
}

/// `--module-src`: a module built out of tree (examples/oot) is patched like
/// the release's own modules, its static variable reached through livepatch.
#[test]
fn an_out_of_tree_module_is_patched() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // The module as hosts run it: built normally with the release's kbuild.
    let src =
        common::make_example_module(&release(), "oot", &["suture_oot.c", "Kbuild"], tmp.path());

    let ko = tmp.path().join("oot-patch.ko");
    let srcdir = examples().join("oot");
    let b = build(
        "oot-answer.patch",
        &ko,
        &["--module-src", srcdir.to_str().unwrap()],
    );
    assert_eq!(b.status, 0, "{}\n{}", b.stdout, b.stderr);
    assert!(
        b.stdout.contains("suture_oot:suture_oot_show"),
        "{}",
        b.stdout
    );
    let syms = Command::new("readelf")
        .args(["-sW"])
        .arg(&ko)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&syms.stdout).contains(".klp.sym.suture_oot.answer,0"));
    // The user's directory was only read.
    assert!(!srcdir.join("suture_oot.o").exists());

    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm();
    vm.add_file(&src.join("suture_oot.ko"), "/root/suture_oot.ko")
        .unwrap();
    vm.add_file(&ko, "/root/p.ko").unwrap();
    let run = vm
        .run(
            "insmod /root/suture_oot.ko || exit 9\n\
             echo BEFORE:$(cat /proc/suture_oot)\n\
             suture load /root/p.ko || exit 10\n\
             echo AFTER:$(cat /proc/suture_oot)\n\
             echo 7 > /sys/module/suture_oot/parameters/answer\n\
             echo AFTER_SET:$(cat /proc/suture_oot)\n\
             echo 42 > /sys/module/suture_oot/parameters/answer\n\
             suture unload livepatch_oot_answer || exit 12\n\
             echo UNLOADED:$(cat /proc/suture_oot)\n",
        )
        .unwrap();
    let out = run.script_output();
    assert_eq!(run.exit_status, 0, "{out}");
    assert_eq!(field(out, "BEFORE"), "answer 42", "{out}");
    assert_eq!(field(out, "AFTER"), "answer 42 (suture)", "{out}");
    // The replacement reads the module's own variable (a livepatch relocation).
    assert_eq!(field(out, "AFTER_SET"), "answer 7 (suture)", "{out}");
    assert_eq!(field(out, "UNLOADED"), "answer 42", "{out}");
}

//! End to end on Debian's 6.12 series: a kernel built with `X86_KERNEL_IBT`,
//! `CALL_PADDING` (16 NOPs and a `__pfx_` symbol before every function),
//! call-depth tracking and return thunks. Same shape as `vm.rs`: the real
//! `suture build`, then a QEMU guest booted on that release runs `suture load`
//! and `suture unload`, checking what the kernel does before, while loaded and
//! after.
//!
//! The guest boots with `retbleed=force,stuff spectre_v2=retpoline`, which turns
//! call-depth tracking on even on QEMU's CPU model: the kernel then rewrites the
//! module's calls (`.call_sites`) to go through accounting thunks it writes into
//! the callees' padding, and refuses ("Invalid padding area") a callee whose 16
//! bytes before the entry are not NOPs. That warning is printed once per boot
//! and this kernel already prints it at boot for one of its own assembly
//! functions, so the padding is checked on the module file, and the guest
//! checks that the patched code runs with tracking on. (TCG does not implement
//! CET, so IBT itself is not enforced in the guest either.)
//!
//! The release comes from `SUTURE_TEST_RELEASE_612` (`scripts/test.sh` sets it
//! from `scripts/setup.sh --with-612`). Unset, the tests skip with a message,
//! except under `CI`, where they must run.

mod common;

use common::{examples, field, suture, vm, VM_LOCK};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The 6.12 release under test, or `None` (after saying why) when the tests
/// skip. Under `CI` a missing release is a failure, not a skip.
fn release() -> Option<String> {
    common::ready_612()
}

/// `examples/cmdline-new-function.patch` and `examples/binfmt-misc-status.patch`
/// for 6.12's sources, whose context differs from 6.1's (cmdline.c includes
/// "internal.h"; binfmt_misc keeps `enabled` per namespace since 6.7).
const CMDLINE_NEW_FUNCTION_612: &str = r#"--- a/fs/proc/cmdline.c
+++ b/fs/proc/cmdline.c
@@ -5,9 +5,16 @@
 #include <linux/seq_file.h>
 #include "internal.h"
 
+/* Out of line on purpose: the livepatch must carry it as a function of its own. */
+static noinline void suture_cmdline_note(struct seq_file *m)
+{
+	seq_puts(m, " suture=new-function");
+}
+
 static int cmdline_proc_show(struct seq_file *m, void *v)
 {
 	seq_puts(m, saved_command_line);
+	suture_cmdline_note(m);
 	seq_putc(m, '\n');
 	return 0;
 }
"#;

const BINFMT_MISC_STATUS_612: &str = r#"--- a/fs/binfmt_misc.c
+++ b/fs/binfmt_misc.c
@@ -910,7 +910,7 @@
 	char *s;
 
 	misc = i_binfmt_misc(file_inode(file));
-	s = misc->enabled ? "enabled\n" : "disabled\n";
+	s = misc->enabled ? "enabled (suture)\n" : "disabled (suture)\n";
 	return simple_read_from_buffer(buf, nbytes, ppos, s, strlen(s));
 }
 
"#;

/// A patch given as text, written under `dir` with the file name the module
/// name derives from (`livepatch_` + stem).
fn patch_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn build_ok(release: &str, patch: &Path, dir: &Path) -> (PathBuf, serde_json::Value) {
    let ko = dir.join(patch.file_name().unwrap()).with_extension("ko");
    let o = Command::new(suture())
        .arg("build")
        .arg(patch)
        .args(["--kernel", release, "--json", "-o"])
        .arg(&ko)
        .output()
        .expect("running suture build");
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "suture build {patch} for {release} failed:\n{out}\n{err}",
        patch = patch.display()
    );
    let report: serde_json::Value = serde_json::from_str(&out).expect("--json report");
    assert_eq!(report["release"], release);
    (ko, report)
}

/// What the kernel logged that would mean the module's code is not laid out
/// or marked the way an IBT/call-thunk kernel expects (warnings printed once
/// per boot only count if the boot itself did not print them already).
fn layout_complaints(dmesg: &str) -> Vec<&str> {
    const BAD: [&str; 6] = [
        "Invalid padding area",
        "Unpatched return thunk",
        "Missing ENDBR",
        "missing ENDBR",
        "control protection",
        "Oops",
    ];
    dmesg
        .lines()
        .filter(|l| BAD.iter().any(|b| l.contains(b)))
        .collect()
}

/// Empties the kernel log before the first load: what the kernel says about
/// its own image at boot (some of its assembly functions have no padding) is
/// not about the module.
const CLEAR: &str = "dmesg -c > /dev/null\n";

/// The script lines that print the guest's dmesg between markers.
const DMESG: &str = "echo DMESG-START; dmesg; echo DMESG-END\n";

fn dmesg_of(out: &str) -> String {
    out.lines()
        .skip_while(|l| l.trim() != "DMESG-START")
        .skip(1)
        .take_while(|l| l.trim() != "DMESG-END")
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each of `funcs` (name, whether the module takes its address) starts where
/// the kernel expects on this series: 16 NOPs before it (where call-depth
/// accounting goes) named by a `__pfx_` symbol, and `endbr64` first when it
/// can be reached indirectly (replacements are, through `klp_func.new_func`).
fn check_module_layout(ko: &Path, funcs: &[(&str, bool)]) {
    // suture-klp's reader: the finished module has `.klp.rela.*` sections
    // beside the ordinary ones, which the differ's reader rejects.
    use suture_klp::elf::{Elf, SHN_LORESERVE, SHN_UNDEF};
    let elf = Elf::parse(std::fs::read(ko).unwrap()).unwrap();
    let symtab = elf.symtab().unwrap();
    let strtab = elf.shdrs[symtab].link as usize;
    let syms: Vec<(String, suture_klp::elf::Sym)> = elf
        .syms(symtab)
        .unwrap()
        .into_iter()
        .map(|s| (elf.str_at(strtab, s.name).unwrap().to_string(), s))
        .collect();
    for &(name, indirect) in funcs {
        let (_, s) = syms
            .iter()
            .find(|(n, s)| {
                n == name && s.info & 0xf == 2 && s.shndx != SHN_UNDEF && s.shndx < SHN_LORESERVE
            })
            .unwrap_or_else(|| panic!("{} defines no function {name}", ko.display()));
        let data = elf.data(s.shndx as usize).unwrap();
        let v = s.value as usize;
        assert!(
            v >= 16,
            "{name} starts {v} bytes into its section: no room for its 16-byte padding"
        );
        assert_eq!(
            &data[v - 16..v],
            &[0x90u8; 16][..],
            "{name}: the 16 bytes before it are not CALL_PADDING NOPs"
        );
        if indirect {
            assert_eq!(
                &data[v..v + 4],
                &[0xf3, 0x0f, 0x1e, 0xfa][..],
                "{name} does not start with endbr64"
            );
        }
        let pfx = format!("__pfx_{name}");
        assert!(
            syms.iter()
                .any(|(n, p)| *n == pfx && p.value + 16 == s.value && p.shndx == s.shndx),
            "{name} has no {pfx} symbol over its padding"
        );
    }
}

/// (section index, offset) pairs.
type Sites = Vec<(u32, u64)>;

/// The call sites `.call_sites` lists in the module, as (section, offset of the
/// call instruction), and the fields livepatch relocates, as (section, offset).
fn call_sites_and_klp_fields(ko: &Path) -> (Sites, Sites) {
    use suture_klp::elf::{Elf, SHF_RELA_LIVEPATCH, SHT_RELA};
    let elf = Elf::parse(std::fs::read(ko).unwrap()).unwrap();
    let symtab = elf.symtab().unwrap();
    let syms = elf.syms(symtab).unwrap();
    let (mut sites, mut klp) = (Vec::new(), Vec::new());
    for i in 0..elf.shdrs.len() {
        let sh = elf.shdrs[i];
        if sh.kind != SHT_RELA {
            continue;
        }
        if sh.flags & SHF_RELA_LIVEPATCH != 0 {
            klp.extend(elf.relas(i).unwrap().iter().map(|r| (sh.info, r.offset)));
        } else if elf.section_name(sh.info as usize).unwrap() == ".call_sites" {
            for r in elf.relas(i).unwrap() {
                let s = syms[r.sym()];
                sites.push((s.shndx as u32, s.value.wrapping_add(r.addend as u64)));
            }
        }
    }
    (sites, klp)
}

#[test]
fn proc_cmdline_is_patched_on_612() {
    let Some(release) = release() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (ko, report) = build_ok(&release, &examples().join("cmdline.patch"), tmp.path());
    assert_eq!(
        report["replaced"][0]["function"], "cmdline_proc_show",
        "{report}"
    );
    check_module_layout(&ko, &[("cmdline_proc_show", true)]);
    assert_eq!(
        common::functions_without_orc(&ko),
        Vec::<String>::new(),
        "{}",
        ko.display()
    );
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm(&release);
    vm.add_file(&ko, "/root/cmdline.ko").unwrap();
    let run = vm
        .run(&format!(
            "echo UNAME:$(uname -r)\n\
             echo RETBLEED:$(cat /sys/devices/system/cpu/vulnerabilities/retbleed)\n\
             echo BEFORE:$(cat /proc/cmdline)\n\
             {CLEAR}suture load /root/cmdline.ko || exit 10\n\
             echo AFTER:$(cat /proc/cmdline)\n\
             echo ENABLED:$(cat /sys/kernel/livepatch/livepatch_cmdline/enabled)\n\
             suture unload livepatch_cmdline || exit 12\n\
             echo UNLOADED:$(cat /proc/cmdline)\n\
             echo SYSFS:$(ls /sys/kernel/livepatch/)\n\
             {DMESG}"
        ))
        .unwrap();
    let out = run.script_output();
    assert_eq!(run.exit_status, 0, "{out}");
    assert_eq!(field(out, "UNAME"), release);
    // The guest really runs with call-depth tracking: the module's calls went
    // through the kernel's call-thunk patching.
    assert!(
        field(out, "RETBLEED").contains("Stuffing"),
        "call-depth tracking is not on in the guest: {out}"
    );
    let before = field(out, "BEFORE");
    assert!(!before.contains("suture=live"), "{out}");
    assert_eq!(
        field(out, "AFTER"),
        format!("{before} suture=live"),
        "{out}"
    );
    assert_eq!(field(out, "ENABLED"), "1");
    assert_eq!(field(out, "UNLOADED"), before, "{out}");
    assert_eq!(field(out, "SYSFS"), "", "{out}");
    let dmesg = dmesg_of(out);
    assert!(
        dmesg.contains("livepatch_cmdline"),
        "no livepatch messages in dmesg:\n{dmesg}"
    );
    assert!(
        layout_complaints(&dmesg).is_empty(),
        "{:?}",
        layout_complaints(&dmesg)
    );
}

/// The new function is called from the replacement inside the module: with
/// call-depth tracking the kernel writes an accounting thunk into the new
/// function's padding at load time, which only works if the padding is there.
#[test]
fn a_changed_function_may_call_a_new_function_on_612() {
    let Some(release) = release() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (ko, report) = build_ok(
        &release,
        &patch_file(
            tmp.path(),
            "cmdline-new-function.patch",
            CMDLINE_NEW_FUNCTION_612,
        ),
        tmp.path(),
    );
    assert!(
        report["new_functions"]
            .to_string()
            .contains("suture_cmdline_note"),
        "{report}"
    );
    // The new function is only called directly: its padding is what matters.
    check_module_layout(
        &ko,
        &[("cmdline_proc_show", true), ("suture_cmdline_note", false)],
    );
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm(&release);
    vm.add_file(&ko, "/root/p.ko").unwrap();
    let run = vm
        .run(&format!(
            "echo BEFORE:$(cat /proc/cmdline)\n\
             {CLEAR}suture load /root/p.ko || exit 10\n\
             echo AFTER:$(cat /proc/cmdline)\n\
             echo NEWSYM:$(grep -c ' suture_cmdline_note' /proc/kallsyms)\n\
             echo PFX:$(grep -c ' __pfx_suture_cmdline_note' /proc/kallsyms)\n\
             suture unload livepatch_cmdline_new_function || exit 12\n\
             echo UNLOADED:$(cat /proc/cmdline)\n\
             {DMESG}"
        ))
        .unwrap();
    let out = run.script_output();
    assert_eq!(run.exit_status, 0, "{out}");
    let before = field(out, "BEFORE");
    assert!(
        field(out, "AFTER").contains(" suture=new-function"),
        "{out}"
    );
    assert_eq!(field(out, "NEWSYM"), "1", "{out}");
    // objtool named the padding of the new function when kbuild linked the module.
    assert_eq!(field(out, "PFX"), "1", "{out}");
    assert_eq!(field(out, "UNLOADED"), before, "{out}");
    let dmesg = dmesg_of(out);
    assert!(
        layout_complaints(&dmesg).is_empty(),
        "{:?}",
        layout_complaints(&dmesg)
    );
}

/// `examples/serial-type-show.patch` for 6.12 (the function moved 49 lines).
const SERIAL_TYPE_SHOW_612: &str = r#"--- a/drivers/tty/serial/serial_core.c
+++ b/drivers/tty/serial/serial_core.c
@@ -2920,7 +2920,7 @@
 	struct tty_port *port = dev_get_drvdata(dev);
 
 	uart_get_info(port, &tmp);
-	return sprintf(buf, "%d\n", tmp.type);
+	return sprintf(buf, "%d (suture)\n", tmp.type);
 }
 
 static ssize_t line_show(struct device *dev,
"#;

/// The replacement calls a static function of vmlinux, reached through a
/// livepatch relocation: the call must enter the callee through its
/// `__pfx_` padding (where the kernel keeps the call-depth thunk), and must
/// not be in the module's `.call_sites`, which the kernel processes before
/// livepatch relocates the call.
#[test]
fn a_static_callee_is_called_through_its_padding_on_612() {
    let Some(release) = release() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (ko, report) = build_ok(
        &release,
        &patch_file(tmp.path(), "serial-type-show.patch", SERIAL_TYPE_SHOW_612),
        tmp.path(),
    );
    assert_eq!(report["replaced"][0]["function"], "type_show", "{report}");
    check_module_layout(&ko, &[("type_show", true)]);
    let text = String::from_utf8_lossy(&std::fs::read(&ko).unwrap()).into_owned();
    assert!(
        text.contains(".klp.sym.vmlinux.__pfx_uart_get_info,0"),
        "the call to uart_get_info does not go through its padding"
    );
    let (sites, klp) = call_sites_and_klp_fields(&ko);
    assert!(!sites.is_empty() && !klp.is_empty(), "{sites:?} {klp:?}");
    for (sec, call) in &sites {
        assert!(
            !klp.contains(&(*sec, call + 1)),
            "the call at {sec}:{call:#x} is relocated by livepatch but listed in .call_sites"
        );
    }
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm(&release);
    vm.add_file(&ko, "/root/p.ko").unwrap();
    let run = vm
        .run(&format!(
            "echo BEFORE:$(cat /sys/class/tty/ttyS0/type)\n\
             {CLEAR}suture load /root/p.ko || exit 10\n\
             echo AFTER:$(cat /sys/class/tty/ttyS0/type)\n\
             echo SIBLING_AFTER:$(cat /sys/class/tty/ttyS1/type)\n\
             suture unload livepatch_serial_type_show || exit 12\n\
             echo UNLOADED:$(cat /sys/class/tty/ttyS0/type)\n\
             {DMESG}"
        ))
        .unwrap();
    let out = run.script_output();
    assert_eq!(run.exit_status, 0, "{out}");
    let before = field(out, "BEFORE");
    assert!(before.parse::<u32>().is_ok(), "{out}");
    // uart_get_info ran (through its padding): the port type it filled in is printed.
    assert_eq!(field(out, "AFTER"), format!("{before} (suture)"), "{out}");
    assert!(field(out, "SIBLING_AFTER").ends_with(" (suture)"), "{out}");
    assert_eq!(field(out, "UNLOADED"), before, "{out}");
    let dmesg = dmesg_of(out);
    assert!(
        layout_complaints(&dmesg).is_empty(),
        "{:?}",
        layout_complaints(&dmesg)
    );
}

/// Module code on 6.12 (modules ship xz-compressed): patched with the module
/// loaded first, and with the patch loaded first (late patching).
#[test]
fn a_module_function_is_patched_before_and_after_the_module_loads_on_612() {
    let Some(release) = release() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (ko, _) = build_ok(
        &release,
        &patch_file(
            tmp.path(),
            "binfmt-misc-status.patch",
            BINFMT_MISC_STATUS_612,
        ),
        tmp.path(),
    );
    check_module_layout(&ko, &[("bm_status_read", true)]);
    // binfmt_misc.o went through objtool when it was compiled; objtool runs
    // again when kbuild links the livepatch module and must write ORC for all
    // of it, the generated hook (init_module, cleanup_module) included.
    assert_eq!(
        common::functions_without_orc(&ko),
        Vec::<String>::new(),
        "{}",
        ko.display()
    );
    // busybox insmod takes an uncompressed module.
    let xz = format!("/lib/modules/{release}/kernel/fs/binfmt_misc.ko.xz");
    let plain = Command::new("xz")
        .args(["-dc", &xz])
        .output()
        .expect("running xz");
    assert!(
        plain.status.success(),
        "xz -dc {xz}: {}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm(&release);
    vm.add_file(&ko, "/root/p.ko").unwrap();
    vm.add_bytes("/root/binfmt_misc.ko", plain.stdout, 0o644);
    let bm = "/root/binfmt_misc.ko";
    let script = format!(
        "mkdir -p /bm\n\
         insmod {bm} || exit 9\n\
         mount -t binfmt_misc none /bm || exit 8\n\
         echo BEFORE:$(cat /bm/status)\n\
         {CLEAR}suture load /root/p.ko || exit 10\n\
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
         suture unload livepatch_binfmt_misc_status || exit 18\n\
         {DMESG}"
    );
    let run = vm.run(&script).unwrap();
    let out = run.script_output();
    assert_eq!(run.exit_status, 0, "{out}");
    assert_eq!(field(out, "BEFORE"), "enabled", "{out}");
    assert_eq!(field(out, "AFTER"), "enabled (suture)", "{out}");
    assert_eq!(field(out, "AFTER_DISABLED"), "disabled (suture)", "{out}");
    assert_eq!(field(out, "UNLOADED"), "enabled", "{out}");
    assert_eq!(field(out, "LATE"), "enabled (suture)", "{out}");
    assert_eq!(field(out, "LATE_PATCHED"), "1", "{out}");
    let dmesg = dmesg_of(out);
    assert!(
        layout_complaints(&dmesg).is_empty(),
        "{:?}",
        layout_complaints(&dmesg)
    );
}

/// `examples/cmdline-init.patch` and `examples/cmdline-comment.patch` for
/// 6.12's cmdline.c (one more include, a longer init function).
const CMDLINE_INIT_612: &str = r#"--- a/fs/proc/cmdline.c
+++ b/fs/proc/cmdline.c
@@ -17,7 +17,7 @@
 {
 	struct proc_dir_entry *pde;
 
-	pde = proc_create_single("cmdline", 0, NULL, cmdline_proc_show);
+	pde = proc_create_single("cmdline", 0444, NULL, cmdline_proc_show);
 	pde_make_permanent(pde);
 	pde->size = saved_command_line_len + 1;
 	return 0;
"#;

/// `examples/cmdline-init-and-show.patch` for 6.12.
const CMDLINE_INIT_AND_SHOW_612: &str = r#"--- a/fs/proc/cmdline.c
+++ b/fs/proc/cmdline.c
@@ -8,6 +8,7 @@
 static int cmdline_proc_show(struct seq_file *m, void *v)
 {
 	seq_puts(m, saved_command_line);
+	seq_puts(m, " suture=live");
 	seq_putc(m, '\n');
 	return 0;
 }
@@ -17,7 +18,7 @@
 {
 	struct proc_dir_entry *pde;
 
-	pde = proc_create_single("cmdline", 0, NULL, cmdline_proc_show);
+	pde = proc_create_single("cmdline", 0444, NULL, cmdline_proc_show);
 	pde_make_permanent(pde);
 	pde->size = saved_command_line_len + 1;
 	return 0;
"#;

const CMDLINE_COMMENT_612: &str = r#"--- a/fs/proc/cmdline.c
+++ b/fs/proc/cmdline.c
@@ -8,6 +8,7 @@
 static int cmdline_proc_show(struct seq_file *m, void *v)
 {
 	seq_puts(m, saved_command_line);
+	/* The trailing newline is part of the ABI. */
 	seq_putc(m, '\n');
 	return 0;
 }
"#;

/// The refusals of `vm.rs` on 6.12: each names its reason, exits with its
/// status, and writes nothing; the tree is left as it was.
#[test]
fn refusals_name_the_problem_and_leave_nothing_behind_on_612() {
    let Some(release) = release() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.ko");
    let build = |patch: &Path| {
        let o = Command::new(suture())
            .arg("build")
            .arg(patch)
            .args(["--kernel", &release, "-o"])
            .arg(&out)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (status, err) = build(&patch_file(
        tmp.path(),
        "cmdline-init.patch",
        CMDLINE_INIT_612,
    ));
    assert_eq!(status, Some(3), "{err}");
    assert!(
        err.contains("proc_cmdline_init") && err.contains("__init") && err.contains("next boot"),
        "{err}"
    );
    assert!(!out.exists());
    let (status, err) = build(&patch_file(
        tmp.path(),
        "cmdline-init-and-show.patch",
        CMDLINE_INIT_AND_SHOW_612,
    ));
    assert_eq!(status, Some(2), "{err}");
    assert!(
        err.contains("proc_cmdline_init") && err.contains("__init"),
        "{err}"
    );
    assert!(!out.exists());
    let (status, err) = build(&examples().join("cmdline-does-not-apply.patch"));
    assert_eq!(status, Some(1), "{err}");
    assert!(
        err.contains("fs/proc/cmdline.c") && err.contains("does not apply"),
        "{err}"
    );
    assert!(!out.exists());
    let (status, err) = build(&patch_file(
        tmp.path(),
        "cmdline-comment.patch",
        CMDLINE_COMMENT_612,
    ));
    assert_eq!(status, Some(3), "{err}");
    assert!(err.contains("no functional change"), "{err}");
    assert!(!out.exists());
    // The tree was restored after each: a good patch still builds.
    let (status, err) = build(&examples().join("cmdline.patch"));
    assert_eq!(status, Some(0), "{err}");
}

/// The patch takes the address of uart_get_info, a static function nothing in
/// the running kernel takes the address of: gcc gives the patched copy an
/// `endbr64`, the original has none, and the pointer has to point to the
/// original. On IBT hardware an indirect call to it would trap: refused.
const SERIAL_FPTR_612: &str = r#"--- a/drivers/tty/serial/serial_core.c
+++ b/drivers/tty/serial/serial_core.c
@@ -2918,8 +2918,10 @@
 {
 	struct serial_struct tmp;
 	struct tty_port *port = dev_get_drvdata(dev);
+	int (*get)(struct tty_port *, struct serial_struct *) = uart_get_info;
 
-	uart_get_info(port, &tmp);
+	OPTIMIZER_HIDE_VAR(get);
+	get(port, &tmp);
 	return sprintf(buf, "%d\n", tmp.type);
 }
 
"#;

#[test]
fn a_pointer_to_an_original_without_endbr_is_refused_on_612() {
    let Some(release) = release() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.ko");
    let b = common::build(
        &release,
        &patch_file(tmp.path(), "serial-fptr.patch", SERIAL_FPTR_612),
        &out,
        &[],
    );
    let err = b.stderr;
    assert_eq!(b.status, 2, "{err}");
    assert!(
        err.contains("uart_get_info") && err.contains("endbr64") && err.contains("IBT"),
        "{err}"
    );
    assert!(!out.exists());
}

/// `--kallsyms`: a copy of /proc/kallsyms taken in a guest running the 6.12
/// release (KASLR on, `__pfx_` symbols included) gives the same module as the
/// tables inside the image: same position, same call through the padding.
#[test]
fn a_proc_kallsyms_copy_stands_in_for_the_image_on_612() {
    let Some(release) = release() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let run = {
        let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        vm(&release)
            .run("echo KS-START; gzip -c /proc/kallsyms | base64; echo KS-END\n")
            .unwrap()
    };
    assert_eq!(run.exit_status, 0);
    let b64: String = run
        .script_output()
        .lines()
        .skip_while(|l| l.trim() != "KS-START")
        .skip(1)
        .take_while(|l| l.trim() != "KS-END")
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(tmp.path().join("kallsyms.b64"), b64).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "base64 -d {0}/kallsyms.b64 | gunzip -c > {0}/kallsyms",
            tmp.path().display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    let kallsyms = tmp.path().join("kallsyms");
    let text = std::fs::read_to_string(&kallsyms).unwrap();
    assert!(text.lines().count() > 50_000, "short kallsyms copy");
    assert!(
        text.contains(" __pfx_uart_get_info"),
        "no __pfx_ symbols in the copy"
    );
    let patch = patch_file(tmp.path(), "serial-type-show.patch", SERIAL_TYPE_SHOW_612);
    let build = |out: &str, extra: &[&str]| {
        let ko = tmp.path().join(out);
        let o = Command::new(suture())
            .arg("build")
            .arg(&patch)
            .args(["--kernel", &release, "--json", "-o"])
            .arg(&ko)
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (ko, report)
    };
    let (copy_ko, from_copy) = build("copy.ko", &["--kallsyms", kallsyms.to_str().unwrap()]);
    let (image_ko, from_image) = build("image.ko", &[]);
    assert!(
        from_copy["symbol_source"]
            .as_str()
            .unwrap()
            .contains("kallsyms copy"),
        "{from_copy}"
    );
    assert_eq!(from_copy["replaced"], from_image["replaced"]);
    for ko in [&copy_ko, &image_ko] {
        let bytes = std::fs::read(ko).unwrap();
        assert!(
            String::from_utf8_lossy(&bytes).contains(".klp.sym.vmlinux.__pfx_uart_get_info,0"),
            "{}: the call to uart_get_info does not go through its padding",
            ko.display()
        );
    }
}

/// `--kernel` twice: one module per release in one run, each for its own
/// release; a patch whose context only 6.1 has is reported not applicable on
/// 6.12 while 6.1's module is still built.
#[test]
fn one_run_builds_one_module_per_release() {
    let Some(r612) = release() else { return };
    let r61 = common::release_61();
    assert!(
        suture_lab::require_kernel_or_skip(&r61).unwrap(),
        "{r61} is not installed"
    );
    let tmp = tempfile::tempdir().unwrap();
    let run = |patch: &Path, dir: &Path| {
        let o = Command::new(suture())
            .arg("build")
            .arg(patch)
            .args(["--kernel", &r61, "--kernel", &r612, "--json", "-o"])
            .arg(dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let v: serde_json::Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {err}"));
        (o.status.code(), v, err)
    };
    let both = tmp.path().join("both");
    let (status, v, err) = run(&examples().join("cmdline.patch"), &both);
    assert_eq!(status, Some(0), "{v}\n{err}");
    for (i, r) in [&r61, &r612].into_iter().enumerate() {
        let o = &v["releases"][i];
        assert_eq!(o["release"], r.as_str(), "{v}");
        assert_eq!(o["status"], "built", "{v}");
        let ko = both.join(format!("livepatch_cmdline-{r}.ko"));
        let modinfo = Command::new("modinfo")
            .args(["-F", "vermagic"])
            .arg(&ko)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&modinfo.stdout).starts_with(&format!("{r} ")),
            "{}",
            ko.display()
        );
    }
    let one = tmp.path().join("one");
    let (status, v, err) = run(&examples().join("cmdline-new-function.patch"), &one);
    assert_eq!(status, Some(0), "{v}\n{err}");
    assert_eq!(v["releases"][0]["status"], "built", "{v}");
    assert_eq!(v["releases"][1]["status"], "not_applicable", "{v}");
    assert!(
        v["releases"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("does not apply"),
        "{v}"
    );
    assert!(one
        .join(format!("livepatch_cmdline_new_function-{r61}.ko"))
        .exists());
    assert!(!one
        .join(format!("livepatch_cmdline_new_function-{r612}.ko"))
        .exists());
}

/// The replacement prints the symbol of an unexported vmlinux function, so it
/// takes that function's address (through a livepatch relocation, the
/// function being outside this file). `kernel_clone` is only ever called
/// directly in vmlinux: its endbr64 is sealed at boot, and a pointer to it
/// would trap on CET hardware. `proc_pid_status` sits in a table of pointers,
/// so its endbr64 stays.
fn cmdline_pointer_patch(func: &str) -> String {
    format!(
        "--- a/fs/proc/cmdline.c\n\
         +++ b/fs/proc/cmdline.c\n\
         @@ -3,11 +3,13 @@\n \
         #include <linux/init.h>\n \
         #include <linux/proc_fs.h>\n \
         #include <linux/seq_file.h>\n\
         +#include <linux/sched/task.h>\n \
         #include \"internal.h\"\n \
         \n \
         static int cmdline_proc_show(struct seq_file *m, void *v)\n \
         {{\n \
         \tseq_puts(m, saved_command_line);\n\
         +\tseq_printf(m, \" suture=%ps\", {func});\n \
         \tseq_putc(m, '\\n');\n \
         \treturn 0;\n \
         }}\n"
    )
}

#[test]
fn a_pointer_to_a_function_whose_endbr_is_sealed_at_boot_is_refused_on_612() {
    let Some(release) = release() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.ko");
    let sealed = patch_file(
        tmp.path(),
        "ptr-sealed.patch",
        &cmdline_pointer_patch("kernel_clone"),
    );
    let b = common::build(&release, &sealed, &out, &[]);
    let err = b.stderr;
    assert_eq!(b.status, 2, "{err}");
    assert!(
        err.contains("kernel_clone") && err.contains("seals at boot") && err.contains("IBT"),
        "{err}"
    );
    assert!(!out.exists());
    // A function whose endbr64 stays is fine, reached through livepatch.
    let kept = patch_file(
        tmp.path(),
        "ptr-kept.patch",
        &cmdline_pointer_patch("proc_pid_status"),
    );
    let (ko, report) = build_ok(&release, &kept, tmp.path());
    assert_eq!(
        report["replaced"][0]["function"], "cmdline_proc_show",
        "{report}"
    );
    let text = String::from_utf8_lossy(&std::fs::read(&ko).unwrap()).into_owned();
    assert!(
        text.contains(".klp.sym.vmlinux.proc_pid_status,0"),
        "the pointer is not a livepatch relocation"
    );
}

/// `suture verify` on 6.12: the kernel changes its own code after the image
/// was built (it seals unused endbr64 into NOPs, points calls at call-depth
/// thunks, rewrites return thunks and applies alternatives), and the records
/// the build writes mask exactly that. `kernel_clone` and `release_task` are
/// only called directly, so their endbr64 is sealed; `proc_pid_status` and
/// `cmdline_proc_show` are reached through pointers and keep theirs.
#[test]
fn the_host_verifies_replaced_functions_against_kernel_memory_on_612() {
    let Some(release) = release() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (tag, report) = build_ok(
        &release,
        &examples().join("6.12/shadow-task-tag.patch"),
        tmp.path(),
    );
    assert_eq!(
        report["replaced"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );
    // The records mask the first 4 bytes (endbr64) exactly where the image's
    // seal list says the kernel turns them into a NOP: the sealed functions'
    // masks start at 0, proc_pid_status's only at its fentry call (4).
    let modinfo = Command::new("modinfo")
        .args(["-F", "suture_func"])
        .arg(&tag)
        .output()
        .unwrap();
    let records = String::from_utf8_lossy(&modinfo.stdout).into_owned();
    let mask_of = |f: &str| {
        let line = records
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(f))
            .unwrap_or_else(|| panic!("{records}"));
        line.rsplit(' ').next().unwrap().to_string()
    };
    for (f, first) in [
        ("kernel_clone", "0+"),
        ("release_task", "0+"),
        ("proc_pid_status", "4+"),
    ] {
        assert!(mask_of(f).starts_with(first), "{f}: {}", mask_of(f));
    }
    let (cmdline, _) = build_ok(&release, &examples().join("cmdline.patch"), tmp.path());
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = vm(&release).timeout(std::time::Duration::from_secs(400));
    vm.add_file(&tag, "/root/tag.ko").unwrap();
    vm.add_file(&cmdline, "/root/cmdline.ko").unwrap();
    let run = vm
        .run(
            "suture verify --json /root/tag.ko > /tmp/v.json; echo VERIFY_TAG:$?\n\
             echo TAG_JSON:$(tr -d '\\n ' < /tmp/v.json)\n\
             suture verify /root/cmdline.ko; echo VERIFY_CMDLINE:$?\n\
             suture load /root/tag.ko > /dev/null || exit 10\n\
             suture verify /root/tag.ko; echo VERIFY_PATCHED:$?\n\
             suture unload livepatch_shadow_task_tag > /dev/null || exit 12\n",
        )
        .unwrap();
    let out = run.script_output();
    assert_eq!(run.exit_status, 0, "{out}");
    let json = field(out, "TAG_JSON");
    assert_eq!(field(out, "VERIFY_TAG"), "0", "{out}");
    for f in ["kernel_clone", "release_task", "proc_pid_status"] {
        assert!(json.contains(&format!("\"name\":\"{f}\"")), "{json}");
    }
    assert_eq!(json.matches("\"match\"").count(), 3, "{json}");
    assert_eq!(field(out, "VERIFY_CMDLINE"), "0", "{out}");
    assert_eq!(field(out, "VERIFY_PATCHED"), "0", "{out}");
}

//! kbuild decides which changed files a release builds (issue 12.1, 12.2):
//! a file Debian's config leaves out is not built, named with its option
//! (exit 3, JSON status `not_built`); a patch with built and unbuilt files
//! builds the former and reports the latter; a `.c` file built only through
//! other units' `#include` is compiled through them; a patched file that does
//! not compile while the original does needs changes in other files (exit 2,
//! the compiler's first error). Built against the release's own tree.

mod common;

use std::process::Command;

/// A change to a driver Debian does not configure (CONFIG_SERIAL_ALTERA_JTAGUART).
const ALTERA: &str = r#"--- a/drivers/tty/serial/altera_jtaguart.c
+++ b/drivers/tty/serial/altera_jtaguart.c
@@ -532,4 +532,5 @@
 MODULE_DESCRIPTION("Altera JTAG UART driver");
 MODULE_AUTHOR("Thomas Chou <thomas@wytron.com.tw>");
 MODULE_LICENSE("GPL");
+/* x */ static int suture_unused;
 MODULE_ALIAS("platform:" DRV_NAME);
"#;

/// rtmutex.c is compiled only as part of rtmutex_api.c (and, on PREEMPT_RT,
/// of rwsem.c, spinlock_rt.c and ww_rt_mutex.c).
const RTMUTEX: &str = r#"--- a/kernel/locking/rtmutex.c
+++ b/kernel/locking/rtmutex.c
@@ -1524,7 +1524,7 @@
 
 	lockdep_assert_held(&lock->wait_lock);
 
-	if (!waiter_task) /* never enqueued */
+	if (WARN_ON_ONCE(!waiter_task)) /* never enqueued */
 		return;
 
 	scoped_guard(raw_spinlock, &waiter_task->pi_lock) {
"#;

/// Uses a struct member this release does not have.
const NEEDS_MEMBER: &str = r#"--- a/fs/proc/cmdline.c
+++ b/fs/proc/cmdline.c
@@ -7,6 +7,7 @@
 static int cmdline_proc_show(struct seq_file *m, void *v)
 {
 	seq_puts(m, saved_command_line);
+	m->suture_no_such_member = 1;
 	seq_putc(m, '\n');
 	return 0;
 }
"#;

fn build(patch_text: &str, args: &[&str]) -> (Option<i32>, serde_json::Value, String, bool) {
    let tmp = tempfile::tempdir().unwrap();
    let patch = tmp.path().join("fix.patch");
    std::fs::write(&patch, patch_text).unwrap();
    let ko = tmp.path().join("fix.ko");
    let o = Command::new(common::suture())
        .arg("build")
        .arg(&patch)
        .args(args)
        .args(["--json", "-o"])
        .arg(&ko)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let doc = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{err}", String::from_utf8_lossy(&o.stdout)));
    (o.status.code(), doc, err, ko.exists())
}

#[test]
fn a_file_the_config_leaves_out_is_not_built_and_named_with_its_option() {
    let Some(r) = common::ready_61() else { return };
    let (status, doc, err, written) = build(ALTERA, &["--kernel", &r]);
    let line = format!("drivers/tty/serial/altera_jtaguart.c: not built by {r} (CONFIG_SERIAL_ALTERA_JTAGUART is not set)");
    assert_eq!(status, Some(3), "{err}");
    assert_eq!(doc["status"], "not_built", "{doc}");
    assert_eq!(doc["files"][0], line.as_str(), "{doc}");
    assert!(err.contains(&line), "{err}");
    // Nothing was compiled: the compiler never saw the file.
    assert!(!err.contains("compiling"), "{err}");
    assert!(!written);

    // With a file the release does build, that one goes into the module
    // and the other is reported.
    let both = format!(
        "{ALTERA}{}",
        std::fs::read_to_string(common::examples().join("cmdline.patch")).unwrap()
    );
    let (status, doc, err, written) = build(&both, &["--kernel", &r]);
    assert_eq!(status, Some(0), "{err}");
    assert!(written);
    assert_eq!(doc["replaced"][0]["function"], "cmdline_proc_show", "{doc}");
    assert_eq!(doc["not_built"][0], line.as_str(), "{doc}");
}

#[test]
fn a_c_file_built_only_through_includes_is_compiled_through_them() {
    let Some(r) = common::ready_61() else { return };
    let (status, doc, err, written) = build(RTMUTEX, &["--kernel", &r]);
    assert_eq!(status, Some(0), "{err}");
    assert!(written);
    // rwsem.c includes it too (under PREEMPT_RT, off here: its unit drops
    // out as unchanged).
    assert!(
        err.contains("kernel/locking/rtmutex.c is not an object of its own: kernel/locking/rtmutex_api.o, kernel/locking/rwsem.o include it"),
        "{err}"
    );
    let replaced: Vec<(&str, &str)> = doc["replaced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["function"].as_str().unwrap(),
                f["source_file"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        replaced.contains(&("remove_waiter", "kernel/locking/rtmutex_api.c")),
        "{replaced:?}"
    );
}

#[test]
fn a_fix_that_needs_other_changes_is_said_with_the_first_error() {
    let Some(r) = common::ready_61() else { return };
    let (status, doc, err, written) = build(NEEDS_MEMBER, &["--kernel", &r]);
    assert_eq!(status, Some(2), "{err}");
    assert_eq!(doc["status"], "needs_other_changes", "{doc}");
    let detail = doc["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("fs/proc/cmdline.c: needs changes in other files"),
        "{detail}"
    );
    assert!(
        detail.contains("first error: fs/proc/cmdline.c:10:10: error:")
            && detail.contains("suture_no_such_member"),
        "{detail}"
    );
    assert!(!written);
}

#[test]
fn several_releases_are_each_decided_by_their_own_config() {
    let Some(r) = common::ready_61() else { return };
    let Ok(r612) = std::env::var("SUTURE_TEST_RELEASE_612") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set SUTURE_TEST_RELEASE_612"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let patch = tmp.path().join("altera.patch");
    std::fs::write(&patch, ALTERA).unwrap();
    let out = tmp.path().join("out");
    let o = Command::new(common::suture())
        .arg("build")
        .arg(&patch)
        .args(["--kernel", &r, "--kernel", &r612, "--json", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for (i, rel) in [&r, &r612].into_iter().enumerate() {
        assert_eq!(v["releases"][i]["status"], "not_built", "{v}");
        let line = v["releases"][i]["files"][0].as_str().unwrap();
        assert!(
            line.contains(&format!(
                "not built by {rel} (CONFIG_SERIAL_ALTERA_JTAGUART is not set)"
            )),
            "{line}"
        );
    }
}

/// `drivers/Makefile` lists `char/ipmi/` itself: kbuild's single-target path
/// compiled ipmi_msghandler.o twice at once (once with drivers/char's flags)
/// and failed (`fixdep: error opening file ...ipmi_msghandler.o.d`, or `nm
/// failed`); compiled through the directory that lists it, it builds and its
/// function is byte-identical to the shipped module's (issue 12.8).
const IPMI: &str = r#"--- a/drivers/char/ipmi/ipmi_msghandler.c
+++ b/drivers/char/ipmi/ipmi_msghandler.c
@@ -1589,6 +1589,8 @@
 
 int ipmi_set_gets_events(struct ipmi_user *user, bool val)
 {
+	if (!user)
+		return -ENODEV;
 	unsigned long        flags;
 	struct ipmi_smi      *intf = user->intf;
 	struct ipmi_recv_msg *msg, *msg2;
"#;

#[test]
fn an_object_listed_by_a_grandparent_directory_builds() {
    let Some(r) = common::ready_61() else { return };
    let (status, doc, err, written) = build(IPMI, &["--kernel", &r]);
    assert_eq!(status, Some(0), "{err}");
    assert!(written);
    assert_eq!(doc["replaced"][0]["objname"], "ipmi_msghandler", "{doc}");
    assert_eq!(
        doc["replaced"][0]["function"], "ipmi_set_gets_events",
        "{doc}"
    );
}

/// A static inline of a subsystem header: every unit that includes it is
/// compiled before and after (issue 12.3); only inode.c's use changes.
const PROC_HEADER: &str = r#"--- a/fs/proc/internal.h
+++ b/fs/proc/internal.h
@@ -100,7 +100,7 @@
 
 static inline bool pde_has_proc_lseek(const struct proc_dir_entry *pde)
 {
-	return pde->flags & PROC_ENTRY_proc_lseek;
+	return pde && (pde->flags & PROC_ENTRY_proc_lseek);
 }
 
 extern struct kmem_cache *proc_dir_entry_cache;
"#;

#[test]
fn a_header_change_is_compiled_in_every_unit_that_includes_it() {
    let Some(r) = common::ready_61() else { return };
    // --max-units refuses before anything is compiled.
    let tmp = tempfile::tempdir().unwrap();
    let patch = tmp.path().join("hdr.patch");
    std::fs::write(&patch, PROC_HEADER).unwrap();
    let o = Command::new(common::suture())
        .arg("build")
        .arg(&patch)
        .args(["--kernel", &r, "--max-units", "5", "-o"])
        .arg(tmp.path().join("x.ko"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("more than --max-units 5") && !err.contains("compiling"),
        "{err}"
    );

    let (status, doc, err, written) = build(PROC_HEADER, &["--kernel", &r]);
    assert_eq!(status, Some(0), "{err}");
    assert!(written);
    assert!(err.contains("fs/proc/internal.h: included by "), "{err}");
    let n: usize = err
        .split("fs/proc/internal.h: included by ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(n > 10, "{err}");
    assert!(
        err.contains(&format!("compiled {n} of {n} units (patched)")),
        "{err}"
    );
    let replaced: Vec<(&str, &str)> = doc["replaced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["function"].as_str().unwrap(),
                f["source_file"].as_str().unwrap(),
            )
        })
        .collect();
    // The units that only include the header dropped out as unchanged.
    assert!(
        !replaced.is_empty() && replaced.iter().all(|(_, f)| *f == "fs/proc/inode.c"),
        "{replaced:?}"
    );
}

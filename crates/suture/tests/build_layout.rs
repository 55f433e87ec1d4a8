//! Layout changes are refused (issue 12.4): a patch that adds a member in the
//! middle of a struct the running kernel's code already uses (`struct
//! kthread`, defined in kernel/kthread.c; every kthread the kernel started
//! has one in the old layout) is refused by name, with the old and new size,
//! the first member that moved and a pointer to shadow variables. Read from
//! the DWARF of the objects compiled before and after the patch, in the
//! release's own tree.

mod common;

use std::process::Command;

const KTHREAD: &str = r#"--- a/kernel/kthread.c
+++ b/kernel/kthread.c
@@ -53,6 +53,7 @@
 	unsigned long flags;
 	unsigned int cpu;
 	int result;
+	void *suture_cookie;
 	int (*threadfn)(void *);
 	void *data;
 	struct completion parked;
"#;

const REASON: &str = "layout changed: size 112 -> 120 bytes, first member moved: threadfn (offset 16 -> 24); existing code uses the old layout: keep the struct as it is and attach new data with shadow variables (docs/patch-author-guide.md)";

#[test]
fn a_member_added_in_the_middle_of_a_struct_of_a_c_file_is_refused_by_name() {
    let Some(r) = common::ready_61() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let patch = tmp.path().join("kthread.patch");
    std::fs::write(&patch, KTHREAD).unwrap();
    let ko = tmp.path().join("x.ko");

    let o = Command::new(common::suture())
        .arg("build")
        .arg(&patch)
        .args(["--kernel", &r, "-o"])
        .arg(&ko)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("kernel/kthread.c: struct kthread: {REASON}")),
        "{err}"
    );
    assert!(!ko.exists());

    let o = Command::new(common::suture())
        .arg("build")
        .arg(&patch)
        .args(["--kernel", &r, "--json", "-o"])
        .arg(&ko)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["status"], "refused", "{doc}");
    assert_eq!(
        doc["reasons"][0],
        format!("kernel/kthread.c: struct kthread: {REASON}").as_str(),
        "{doc}"
    );
    assert_eq!(doc["reasons"].as_array().unwrap().len(), 1, "{doc}");
    assert!(!ko.exists());
}

/// The same in a header: every unit that includes it sees the new layout
/// (nine units here), the refusal is said once, for the header.
const NF_QUEUE: &str = r#"--- a/include/net/netfilter/nf_queue.h
+++ b/include/net/netfilter/nf_queue.h
@@ -15,6 +15,7 @@
 	struct net_device	*skb_dev;
 	unsigned int		id;
 	unsigned int		hook_index;	/* index in hook_entries->hook[] */
+	unsigned long		suture_cookie;
 #if IS_ENABLED(CONFIG_BRIDGE_NETFILTER)
 	struct net_device	*bridge_dev;
 	struct net_device	*physin;
"#;

#[test]
fn a_member_added_to_a_header_struct_is_refused_once_naming_the_header() {
    let Some(r) = common::ready_61() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let patch = tmp.path().join("nf_queue.patch");
    std::fs::write(&patch, NF_QUEUE).unwrap();
    let ko = tmp.path().join("x.ko");
    let o = Command::new(common::suture())
        .arg("build")
        .arg(&patch)
        .args(["--kernel", &r, "--json", "-o"])
        .arg(&ko)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["status"], "refused", "{doc}");
    assert_eq!(
        doc["reasons"],
        serde_json::json!([
            "include/net/netfilter/nf_queue.h: struct nf_queue_entry: layout changed: size 120 -> 128 bytes, first member moved: bridge_dev (offset 40 -> 48); existing code uses the old layout: keep the struct as it is and attach new data with shadow variables (docs/patch-author-guide.md)"
        ]),
        "{doc}"
    );
    assert!(!ko.exists());
}

//! Read-only data of the patched unit (issue 12.5): the `__func__` string of a
//! changed function (vmlinux holds hundreds of `__func__.0`) and the unit's
//! constant tables read by value travel with the patch as its own copies,
//! instead of `.klp.sym` references whose instance among same-named ones would
//! have to be decided. Built against the release's own tree.

mod common;

use std::path::Path;

use suture_klp::elf::{Elf, SHN_LORESERVE, SHN_UNDEF};

/// simple_fill_super's warning names the function with `__func__`; the
/// string changes, so the function does, and its `__func__.N` stays.
const LIBFS: &str = r#"--- a/fs/libfs.c
+++ b/fs/libfs.c
@@ -696,7 +696,7 @@
 		/* warn if it tries to conflict with the root inode */
 		if (unlikely(i == 1))
 			printk(KERN_WARNING "%s: %s passed in a files array"
-				"with an index of 1!\n", __func__,
+				" with an index of 1!\n", __func__,
 				s->s_type->name);
 
 		dentry = d_alloc_name(root, files->name);
"#;

/// handle_reserve_ticket (inlined into __reserve_bytes) passes the constant
/// tables `priority_flush_states` and `evict_flush_states` (enum arrays, read
/// by value) to priority_reclaim_metadata_space; the fix adds a warning with
/// `__func__`.
const BTRFS: &str = r#"--- a/fs/btrfs/space-info.c
+++ b/fs/btrfs/space-info.c
@@ -1579,6 +1579,8 @@
 	}
 
 	ret = ticket->error;
+	if (ret && ret != -ENOSPC)
+		pr_warn("BTRFS: %s: ticket error %d\n", __func__, ret);
 	ASSERT(list_empty(&ticket->list));
 	/*
 	 * Check that we can't have an error set if the reservation succeeded,
"#;

/// The module's symbols: (name, defined in one of its sections).
fn symbols(ko: &Path) -> Vec<(String, bool)> {
    let elf = Elf::parse(std::fs::read(ko).unwrap()).unwrap();
    let symtab = elf.symtab().unwrap();
    let strtab = elf.shdrs[symtab].link as usize;
    elf.syms(symtab)
        .unwrap()
        .iter()
        .map(|s| {
            let name = elf.str_at(strtab, s.name).unwrap().to_string();
            (name, s.shndx != SHN_UNDEF && s.shndx < SHN_LORESERVE)
        })
        .collect()
}

fn build(release: &str, text: &str, name: &str) -> Vec<(String, bool)> {
    let tmp = tempfile::tempdir().unwrap();
    let patch = tmp.path().join(format!("{name}.patch"));
    std::fs::write(&patch, text).unwrap();
    let ko = tmp.path().join(format!("{name}.ko"));
    let b = common::build(release, &patch, &ko, &[]);
    assert_eq!(
        b.status, 0,
        "suture build {name} failed:\n{}\n{}",
        b.stdout, b.stderr
    );
    symbols(&ko)
}

fn assert_copied(syms: &[(String, bool)], prefix: &str) {
    assert!(
        syms.iter().any(|(n, def)| *def && n.starts_with(prefix)),
        "{prefix} is a copy in the module: {syms:?}"
    );
    assert!(
        !syms
            .iter()
            .any(|(n, _)| n.starts_with(".klp.") && n.contains(prefix)),
        "{prefix} is not reached in the running kernel: {syms:?}"
    );
}

#[test]
fn a_changed_functions_func_string_is_copied_into_the_module() {
    let Some(r) = common::ready_61() else { return };
    let syms = build(&r, LIBFS, "libfs");
    assert_copied(&syms, "__func__.");
}

#[test]
fn constant_tables_read_by_value_are_copied_into_a_module_patch() {
    let Some(r) = common::ready_61() else { return };
    let syms = build(&r, BTRFS, "btrfs");
    for name in ["__func__.", "priority_flush_states", "evict_flush_states"] {
        assert_copied(&syms, name);
    }
    // The functions it calls are still the running module's.
    assert!(
        syms.iter()
            .any(|(n, _)| n == ".klp.sym.btrfs.priority_reclaim_metadata_space,0"),
        "{syms:?}"
    );
}

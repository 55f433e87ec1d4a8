//! The post-link rewrite's second line of defence: no special section of a
//! livepatch module may need a relocation that livepatch applies only when
//! another module loads. The objects are compiled by gcc with the livepatch
//! symbols spelled by hand, as the differ would write them.

use std::process::Command;

use suture_klp::postlink::{late_relocatable, post_link};

fn object(src: &str) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("m.c");
    let o = tmp.path().join("m.o");
    std::fs::write(&c, src).unwrap();
    let out = Command::new("gcc")
        .args(["-c", "-O2", "-fno-pic", "-o"])
        .arg(&o)
        .arg(&c)
        .output()
        .expect("gcc");
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&o).unwrap()
}

fn keyed(objname: &str, section: &str) -> String {
    format!(
        r#"extern int key asm("\".klp.sym.{objname}.__SCK__tp_func_btrfs_inode_new,0\"");
__attribute__((used, section("{section}"))) static void *entry = &key;
"#
    )
}

#[test]
fn module_symbol_in_static_call_sites_is_refused() {
    let err = post_link(&object(&keyed("btrfs", ".static_call_sites")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(".static_call_sites") && err.contains("btrfs"),
        "{err}"
    );
    assert!(err.contains("__SCK__tp_func_btrfs_inode_new"), "{err}");
    for sec in [
        "__jump_table",
        ".altinstructions",
        "__ex_table",
        "__bug_table",
        ".data..percpu",
    ] {
        assert!(post_link(&object(&keyed("btrfs", sec))).is_err(), "{sec}");
    }
}

#[test]
fn vmlinux_symbols_and_module_code_or_data_pass() {
    // vmlinux klp relocations are applied while the patch module loads.
    let (_, r) = post_link(&object(&keyed("vmlinux", ".static_call_sites"))).unwrap();
    assert_eq!(
        r.klp_relas,
        vec![(".klp.rela.vmlinux..static_call_sites".to_string(), 1)]
    );
    let (_, r) = post_link(&object(&keyed("btrfs", ".data.entry"))).unwrap();
    assert_eq!(
        r.klp_relas,
        vec![(".klp.rela.btrfs..data.entry".to_string(), 1)]
    );
}

#[test]
fn late_relocatable_sections() {
    for s in [
        ".text",
        ".text.foo",
        ".rodata",
        ".rodata.str1.1",
        ".data",
        ".data..ro_after_init",
        ".fixup",
    ] {
        assert!(late_relocatable(s), "{s}");
    }
    for s in [
        ".static_call_sites",
        "__jump_table",
        ".altinstructions",
        ".altinstr_replacement",
        ".data..percpu",
        ".textual",
        ".orc_unwind_ip",
        ".printk_index",
    ] {
        assert!(!late_relocatable(s), "{s}");
    }
}

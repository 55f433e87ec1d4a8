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

/// A patched module's reference to another module's export: its relocation
/// goes to the patched module's `.klp.rela` section, against a `.klp.sym`
/// symbol of the other module (applied when the patched module loads, after
/// the module it depends on).
fn cross(section: &str) -> String {
    format!(
        r#"extern int other asm("\".klp.xsym.vfat.fat.fat_build_inode,0\"");
__attribute__((used, section("{section}"))) static void *entry = &other;
"#
    )
}

#[test]
fn another_modules_symbol_is_relocated_with_the_patched_module() {
    use suture_klp::elf::{Elf, SHF_RELA_LIVEPATCH, SHN_LIVEPATCH};
    let (ko, r) = post_link(&object(&cross(".data.entry"))).unwrap();
    assert_eq!(
        r.klp_syms,
        vec![".klp.sym.fat.fat_build_inode,0".to_string()]
    );
    assert_eq!(
        r.klp_relas,
        vec![(".klp.rela.vfat..data.entry".to_string(), 1)]
    );
    let e = Elf::parse(ko).unwrap();
    let symtab = e.symtab().unwrap();
    let strtab = e.shdrs[symtab].link as usize;
    let syms = e.syms(symtab).unwrap();
    let named: Vec<(&str, u16)> = syms
        .iter()
        .map(|s| (e.str_at(strtab, s.name).unwrap(), s.shndx))
        .filter(|(n, _)| n.starts_with(".klp."))
        .collect();
    // Renamed in place: the symbol index the relocation names is unchanged.
    assert_eq!(
        named,
        vec![(".klp.sym.fat.fat_build_inode,0", SHN_LIVEPATCH)]
    );
    let sec = (0..e.shdrs.len())
        .find(|&i| e.section_name(i).unwrap() == ".klp.rela.vfat..data.entry")
        .unwrap();
    assert_ne!(e.shdrs[sec].flags & SHF_RELA_LIVEPATCH, 0);
    let rel = e.relas(sec).unwrap();
    assert_eq!(
        e.str_at(strtab, syms[rel[0].sym()].name).unwrap(),
        ".klp.sym.fat.fat_build_inode,0"
    );
}

#[test]
fn another_modules_symbol_in_a_special_section_is_refused() {
    for sec in [
        ".static_call_sites",
        "__jump_table",
        "__ex_table",
        ".altinstructions",
    ] {
        let err = post_link(&object(&cross(sec))).unwrap_err().to_string();
        assert!(
            err.contains(sec) && err.contains("vfat") && err.contains("fat_build_inode"),
            "{sec}: {err}"
        );
    }
    // The kernel refuses vmlinux symbols in a module's klp relocation sections.
    let src = r#"extern int other asm("\".klp.xsym.vfat.vmlinux.printk,0\"");
__attribute__((used, section(".data.entry"))) static void *entry = &other;
"#;
    let err = post_link(&object(src)).unwrap_err().to_string();
    assert!(
        err.contains("malformed") && err.contains("vmlinux.printk"),
        "{err}"
    );
}

#[test]
fn the_hooks_vmlinux_references_become_livepatch_symbols() {
    let src = "extern void *__suture_klp_vmlinux__text_poke(void *, const void *, unsigned long);\n\
               extern int __suture_klp_vmlinux__text_mutex;\n\
               void f(void) { __suture_klp_vmlinux__text_poke(&__suture_klp_vmlinux__text_mutex, 0, 0); }\n";
    let (_, r) = post_link(&object(src)).unwrap();
    let mut syms = r.klp_syms.clone();
    syms.sort();
    assert_eq!(
        syms,
        [
            ".klp.sym.vmlinux.text_mutex,0",
            ".klp.sym.vmlinux.text_poke,0"
        ]
    );
    assert_eq!(
        r.klp_relas,
        vec![(".klp.rela.vmlinux..text".to_string(), 2)]
    );
}

/// A name the kernel's `sscanf` would cut (more than KLP_SYMNAME_MAX, 511
/// bytes) is refused when the rewrite makes it, naming it.
#[test]
fn a_hook_reference_beyond_the_kernels_name_limit_is_refused() {
    let long = format!("t{}", "x".repeat(511));
    let src = format!(
        "extern int __suture_klp_vmlinux__{long};\n\
         int f(void) {{ return __suture_klp_vmlinux__{long}; }}\n"
    );
    let err = format!("{:#}", post_link(&object(&src)).unwrap_err());
    assert!(
        err.contains(&long) && err.contains("KLP_SYMNAME_MAX"),
        "{err}"
    );
}

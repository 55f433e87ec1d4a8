//! The build-time run-pre check on the real release: our compiled original of
//! `cmdline_proc_show` is accepted as the kernel's code; the same object with one
//! instruction byte changed is refused, naming the function.

use std::path::Path;
use suture_build::{reproduces, SymbolSource};
use suture_kernel::{Release, Tree};

fn release() -> Option<String> {
    let r = std::env::var("SUTURE_TEST_RELEASE").unwrap_or_else(|_| "6.1.0-56-amd64".into());
    if Path::new(&format!("/boot/vmlinuz-{r}")).exists() {
        return Some(r);
    }
    assert!(std::env::var_os("CI").is_none(), "CI must install the kernel {r}");
    eprintln!("SKIP: /boot/vmlinuz-{r} is not installed");
    None
}

#[test]
fn a_changed_instruction_byte_is_caught() {
    let Some(r) = release() else { return };
    let cache = suture_build::cache_root();
    let rel = Release::find(&r, Path::new("/")).unwrap();
    let tree = Tree::open(rel, &cache, &|m| eprintln!("{m}")).unwrap();
    let objs = tree.original_objects(&["fs/proc/cmdline.o".to_string()]).unwrap();
    let (info, orig) = &objs[0];
    assert_eq!(info.objname, "vmlinux");
    let symbols = SymbolSource::open(&tree, None, &cache, &|m| eprintln!("{m}")).unwrap();

    let report = symbols.target("vmlinux", orig).unwrap();
    reproduces(&report, "fs/proc/cmdline.o", "vmlinux", &["cmdline_proc_show"]).unwrap();

    // Byte 5 follows the 5-byte `call __fentry__`: an opcode, not a relocated field.
    let elf = suture_elf::Object::parse(orig).unwrap();
    let sec = elf.section_by_name(".text.cmdline_proc_show").unwrap();
    let at = sec.offset as usize + 5;
    let relas = elf.relas_of(sec.index);
    assert!(!relas.is_empty(), "the function's relocations were not found");
    assert!(relas.iter().all(|r| !(r.offset..r.offset + 4).contains(&5)));
    let mut bad = orig.clone();
    bad[at] ^= 0x01;
    let report = symbols.target("vmlinux", &bad).unwrap();
    let err = reproduces(&report, "fs/proc/cmdline.o", "vmlinux", &["cmdline_proc_show"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("cmdline_proc_show") && err.contains("does not reproduce"), "{err}");
}

//! A module's references to another module's exports (issue 12.6): the
//! target says which module exports what (`TargetSym::OtherModule`), and
//! `place_module_exports` finds each export's position, and its padding, in
//! that module's kallsyms, from its `.ko`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use suture_abi::target::{Target, TargetSym};
use suture_symbols::*;

fn other(module: &str, sympos: u32) -> TargetSym {
    TargetSym::OtherModule {
        module: module.into(),
        sympos,
    }
}

/// `m.ko`: two units linked as kbuild links a module (`ld -r`): a static
/// `dup` in one, the exported global `dup` in the other; `padded` with a
/// 16-byte `__pfx_padded` before it, as objtool writes on CALL_PADDING
/// kernels.
fn module_ko(dir: &Path) -> Vec<u8> {
    let a = "static __attribute__((used, noinline)) int dup(int x) { return x + 1; }\n\
             int use_a(int x) { return dup(x); }\n";
    let b = "int dup(int x) { return x * 2; }\n\
             asm(\".section .text.padded,\\\"ax\\\"\\n\
             .type __pfx_padded,@function\\n__pfx_padded:\\n.fill 16,1,0x90\\n.size __pfx_padded,16\\n\
             .globl padded\\n.type padded,@function\\npadded:\\nret\\n.size padded,1\\n.text\\n\");\n";
    for (n, src) in [("a", a), ("b", b)] {
        std::fs::write(dir.join(format!("{n}.c")), src).unwrap();
        let out = Command::new("gcc")
            .args(["-c", "-O2", "-ffunction-sections", "-o"])
            .arg(dir.join(format!("{n}.o")))
            .arg(dir.join(format!("{n}.c")))
            .output()
            .expect("gcc is needed for this test");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ko = dir.join("m.ko");
    let out = Command::new("ld")
        .arg("-r")
        .arg(dir.join("a.o"))
        .arg(dir.join("b.o"))
        .arg("-o")
        .arg(&ko)
        .output()
        .expect("ld");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(ko).unwrap()
}

#[test]
fn exports_of_another_module_are_placed_in_its_kallsyms() {
    let dir = std::env::temp_dir().join(format!("suture-cross-module-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ko = module_ko(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let mut t = Target {
        objname: "user".into(),
        symbols: HashMap::new(),
    };
    t.symbols.insert("dup".into(), other("m", 0));
    t.symbols.insert("padded".into(), other("m", 0));
    t.symbols.insert("use_a".into(), other("n", 0));
    t.symbols.insert("printk".into(), TargetSym::Exported);
    place_module_exports(&mut t, "m", &ko).unwrap();
    // The static `dup` comes first in the module's symtab (locals first), the
    // exported one second: a bare `dup,0` would be ambiguous to the kernel.
    assert_eq!(t.symbols["dup"], other("m", 2));
    assert_eq!(t.symbols["padded"], other("m", 0));
    assert_eq!(t.symbols["__pfx_padded"], other("m", 0));
    // No padding, no entry; another module's and vmlinux's entries untouched.
    assert!(!t.symbols.contains_key("__pfx_dup"));
    assert_eq!(t.symbols["use_a"], other("n", 0));
    assert_eq!(t.symbols["printk"], TargetSym::Exported);

    // An export the module does not define: Module.symvers and the .ko disagree.
    t.symbols.insert("gone".into(), other("m", 0));
    let e = place_module_exports(&mut t, "m", &ko)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gone") && e.contains("m.ko"), "{e}");
}

/// The releases under test: `SUTURE_TEST_RELEASE` (else 6.1.0-57-amd64) and
/// `SUTURE_TEST_RELEASE_612` when set; one whose modules or headers are not
/// installed is skipped, saying why (a failure under `CI`).
fn releases() -> Vec<String> {
    let mut v =
        vec![std::env::var("SUTURE_TEST_RELEASE").unwrap_or_else(|_| "6.1.0-57-amd64".into())];
    v.extend(std::env::var("SUTURE_TEST_RELEASE_612").ok());
    v.retain(|r| {
        let paths = ReleasePaths::new(Path::new("/"), r);
        let ok = paths.modules.is_dir() && paths.load_exports().is_ok();
        if !ok {
            assert!(
                std::env::var("CI").map_or(true, |v| v.is_empty()),
                "CI is set but the modules or headers of {r} are missing"
            );
            eprintln!("SKIPPED {r}: install linux-image-{r} and linux-headers-{r}");
        }
        ok
    });
    v
}

/// Debian's vfat calls fat's exports (`fat_build_inode`, `fat_search_long`,
/// ...): with vfat's own `.ko` standing in for its translation units, every
/// such reference is fat's, every vmlinux export stays a normal relocation,
/// and each of fat's exports is placed in fat's kallsyms.
#[test]
fn vfat_reaches_fat_through_its_own_klp_relocations() {
    for r in releases() {
        vfat_and_fat(&r);
    }
}

fn vfat_and_fat(r: &str) {
    let paths = ReleasePaths::new(Path::new("/"), r);
    let exports = paths.load_exports().unwrap();
    let vfat = paths.load_module("vfat").unwrap();
    let fat = paths.load_module("fat").unwrap();
    let mut rep =
        build_target_report(TargetImage::Module { ko: &vfat }, &exports, "vfat", &vfat).unwrap();
    let t = &mut rep.target;
    for n in [
        "fat_build_inode",
        "fat_search_long",
        "fat_add_entries",
        "fat_time_unix2fat",
    ] {
        assert_eq!(t.symbols.get(n), Some(&other("fat", 0)), "{r}: {n}");
    }
    assert_eq!(t.symbols.get("d_splice_alias"), Some(&TargetSym::Exported));
    assert!(
        !t.symbols
            .values()
            .any(|s| matches!(s, TargetSym::OtherModule { module, .. } if module != "fat")),
        "vfat uses no other module's exports"
    );
    place_module_exports(t, "fat", &fat).unwrap();
    assert_eq!(t.symbols["fat_build_inode"], other("fat", 0));
    // 6.12 pads functions (CALL_PADDING): the padding is fat's too.
    let padded = r.starts_with("6.12.");
    assert_eq!(
        t.symbols.get("__pfx_fat_build_inode") == Some(&other("fat", 0)),
        padded,
        "{r}"
    );
    // fat's own exports are fat's own symbols for a patch to fat.
    let rep = build_target_report(TargetImage::Module { ko: &fat }, &exports, "fat", &fat).unwrap();
    assert!(matches!(
        rep.target.symbols["fat_build_inode"],
        TargetSym::Unexported { .. }
    ));
}

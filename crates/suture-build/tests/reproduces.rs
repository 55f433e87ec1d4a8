//! The build-time run-pre check on the real release: our compiled original of
//! `cmdline_proc_show` is accepted as the kernel's code; the same object with one
//! instruction byte changed is refused, naming the function; so is the object
//! compiled by a tree configured with one option different from the release's.

use std::path::Path;
use suture_build::{reproduces, SymbolSource};
use suture_kernel::{Release, Tree};

fn release() -> Option<String> {
    let r = std::env::var("SUTURE_TEST_RELEASE").unwrap_or_else(|_| "6.1.0-56-amd64".into());
    if Path::new(&format!("/boot/vmlinuz-{r}")).exists() {
        return Some(r);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install the kernel {r}"
    );
    eprintln!("SKIP: /boot/vmlinuz-{r} is not installed");
    None
}

/// The run-pre check of `cmdline_proc_show` in `obj` against the image.
fn check_cmdline(symbols: &SymbolSource, obj: &[u8]) -> anyhow::Result<()> {
    let report = symbols.target("vmlinux", obj)?;
    reproduces(
        &report,
        "fs/proc/cmdline.o",
        "vmlinux",
        &["cmdline_proc_show"],
    )
}

/// The refusal of `obj`, which must name the function.
fn refused(symbols: &SymbolSource, obj: &[u8]) -> String {
    let err = check_cmdline(symbols, obj).unwrap_err().to_string();
    assert!(
        err.contains("cmdline_proc_show") && err.contains("does not reproduce"),
        "{err}"
    );
    err
}

#[test]
fn a_changed_instruction_byte_is_caught() {
    let Some(r) = release() else { return };
    let cache = suture_build::cache_root();
    let rel = Release::find(&r, Path::new("/")).unwrap();
    let tree = Tree::open(rel, &cache, &|m| eprintln!("{m}")).unwrap();
    let objs = tree
        .original_objects(&["fs/proc/cmdline.o".to_string()])
        .unwrap();
    let (info, orig) = &objs[0];
    assert_eq!(info.objname, "vmlinux");
    let symbols = suture_build::symbol_source(&tree, None, &cache, &|m| eprintln!("{m}")).unwrap();

    check_cmdline(&symbols, orig).unwrap();

    // Byte 5 follows the 5-byte `call __fentry__`: an opcode, not a relocated field.
    let elf = suture_elf::Object::parse(orig).unwrap();
    let sec = elf.section_by_name(".text.cmdline_proc_show").unwrap();
    let at = sec.data.start() + 5;
    let relas = elf.relas_of(sec.index);
    assert!(
        !relas.is_empty(),
        "the function's relocations were not found"
    );
    assert!(relas.iter().all(|r| !(r.offset..r.offset + 4).contains(&5)));
    let mut bad = orig.clone();
    bad[at] ^= 0x01;
    refused(&symbols, &bad);
}

/// The option the wrong build turns off. Debian builds with return thunks
/// (`CONFIG_RETHUNK=y`): `cmdline_proc_show` ends in `jmp
/// __x86_return_thunk`; without them gcc ends it in `ret; int3` (checked by
/// compiling fs/proc/cmdline.o both ways). Everything else, source,
/// compiler and flags, is the release's own.
const WRONG_OPTION: &str = "CONFIG_RETHUNK";

#[test]
fn a_tree_built_with_another_config_option_is_caught() {
    let Some(r) = release() else { return };
    let cache = suture_build::cache_root();
    let progress = |m: &str| eprintln!("{m}");
    let rel = Release::find(&r, Path::new("/")).unwrap();
    let shipped = std::fs::read_to_string(&rel.config).unwrap();
    assert!(
        shipped.lines().any(|l| l == format!("{WRONG_OPTION}=y")),
        "{r} no longer builds with {WRONG_OPTION}=y: pick another option for this test"
    );

    // The wrong tree: the release's config with the one option off, in a
    // cache of its own (kept, like the release's: a cold prepare is ~1 min).
    let wrong_cache = cache.join(format!("wrongcfg-no-{WRONG_OPTION}"));
    std::fs::create_dir_all(&wrong_cache).unwrap();
    let wrong_config = wrong_cache.join(format!("config-{r}"));
    let edited: String = shipped
        .lines()
        .map(|l| {
            if l == format!("{WRONG_OPTION}=y") {
                format!("# {WRONG_OPTION} is not set\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&wrong_config, edited).unwrap();
    let mut wrong_rel = rel.clone();
    wrong_rel.config = wrong_config;
    let wrong = Tree::open(wrong_rel, &wrong_cache, &progress).unwrap();
    // olddefconfig kept the option off: the tree really is built differently.
    let cfg = std::fs::read_to_string(wrong.dir.join(".config")).unwrap();
    assert!(
        cfg.lines()
            .any(|l| l == format!("# {WRONG_OPTION} is not set")),
        "olddefconfig turned {WRONG_OPTION} back on"
    );
    let (info, wrong_obj) = wrong
        .original_objects(&["fs/proc/cmdline.o".to_string()])
        .unwrap()
        .remove(0);
    assert_eq!(info.objname, "vmlinux");
    drop(wrong);

    let right = Tree::open(rel, &cache, &progress).unwrap();
    let (_, right_obj) = right
        .original_objects(&["fs/proc/cmdline.o".to_string()])
        .unwrap()
        .remove(0);
    let code = |o: &[u8]| {
        let elf = suture_elf::Object::parse(o).unwrap();
        let s = elf.section_by_name(".text.cmdline_proc_show").unwrap();
        s.data.to_vec()
    };
    assert_ne!(
        code(&wrong_obj),
        code(&right_obj),
        "{WRONG_OPTION} did not change cmdline_proc_show"
    );

    let symbols = suture_build::symbol_source(&right, None, &cache, &progress).unwrap();
    // The right build passes: a refusal below is the option's doing.
    check_cmdline(&symbols, &right_obj).unwrap();
    let err = refused(&symbols, &wrong_obj);
    assert!(
        err.contains("config"),
        "the refusal names the config among the causes: {err}"
    );
    eprintln!("refused as expected: {err}");
}

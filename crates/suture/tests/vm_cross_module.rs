//! A patch that spans objects (issue 12.6): patched code of one module
//! calling what another module exports. Debian's vfat calls fat's exports;
//! `examples/vfat-lookup.patch` adds a marker to `vfat_lookup`, which calls
//! `fat_build_inode` (and, inlined, `fat_search_long`). Those references must
//! be livepatch relocations of vfat's (`.klp.rela.vfat.*` against
//! `.klp.sym.fat.*`), resolved when vfat loads, after fat, which vfat
//! depends on: not normal relocations, which would make the livepatch module
//! depend on fat, so that loading it fails with "Unknown symbol" where fat is
//! not loaded.
//!
//! One guest boot: the patch loads while neither module is; fat and vfat
//! load after it, vfat comes up patched, a lookup on a vfat mount runs the
//! patched code; then everything is unloaded and the kernel log is clean.

mod common;

use common::{build, examples, field, ready_61, vm, vm_lock};
use suture_klp::elf::{Elf, SHF_RELA_LIVEPATCH, SHN_LIVEPATCH};

const NAME: &str = "livepatch_vfat_lookup";

#[test]
fn a_module_patch_reaches_another_modules_exports_without_depending_on_it() {
    let Some(release) = ready_61() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ko = tmp.path().join("vfat-lookup.ko");
    let b = build(
        &release,
        &examples().join("vfat-lookup.patch"),
        &ko,
        &["--name", NAME],
    );
    assert_eq!(b.status, 0, "{}\n{}", b.stdout, b.stderr);

    // What the module says before any guest runs it: no dependency at all,
    // fat's symbols are livepatch symbols in vfat's klp relocation section.
    let bytes = std::fs::read(&ko).unwrap();
    let info = suture_host::modinfo::parse_module(&bytes).unwrap();
    assert!(info.depends.is_empty(), "depends: {:?}", info.depends);
    // The release's modules, uncompressed (busybox insmod takes no .ko.xz).
    let module = |rel: &str| -> Vec<u8> {
        let base = format!("/lib/modules/{release}/kernel/{rel}");
        let data = std::fs::read(&base)
            .or_else(|_| std::fs::read(format!("{base}.xz")))
            .unwrap_or_else(|e| panic!("{base}: {e}"));
        suture_symbols::decompress_module(&data)
            .unwrap()
            .into_owned()
    };
    let vfat_info = suture_host::modinfo::parse_module(&module("fs/fat/vfat.ko")).unwrap();
    assert_eq!(
        vfat_info.depends,
        vec!["fat".to_string()],
        "vfat itself needs fat"
    );
    let e = Elf::parse(bytes).unwrap();
    let symtab = e.symtab().unwrap();
    let strtab = e.shdrs[symtab].link as usize;
    let syms = e.syms(symtab).unwrap();
    let name = |s: &suture_klp::elf::Sym| e.str_at(strtab, s.name).unwrap().to_string();
    let klp: Vec<String> = syms
        .iter()
        .filter(|s| s.shndx == SHN_LIVEPATCH)
        .map(name)
        .collect();
    // On CALL_PADDING releases (6.12) the call enters through the padding.
    assert!(
        klp.iter().any(|n| n == ".klp.sym.fat.fat_build_inode,0"
            || n == ".klp.sym.fat.__pfx_fat_build_inode,0"),
        "{klp:?}"
    );
    // The patch's references are fat's or vfat's; vmlinux appears only for
    // the hook's own relocation clearing on releases whose livepatch core
    // does not clear them (6.1).
    let hook = [
        ".klp.sym.vmlinux.text_poke,0",
        ".klp.sym.vmlinux.text_poke_sync,0",
        ".klp.sym.vmlinux.text_mutex,0",
    ];
    assert!(
        klp.iter().all(|n| n.starts_with(".klp.sym.fat.")
            || n.starts_with(".klp.sym.vfat.")
            || hook.contains(&n.as_str())),
        "{klp:?}"
    );
    let undefined: Vec<String> = syms
        .iter()
        .filter(|s| s.shndx == 0 && s.name != 0)
        .map(name)
        .collect();
    assert!(
        !undefined
            .iter()
            .any(|n| n.starts_with("fat_") || n.contains(".klp.")),
        "{undefined:?}"
    );
    let klp_secs: Vec<String> = (0..e.shdrs.len())
        .filter(|&i| e.shdrs[i].flags & SHF_RELA_LIVEPATCH != 0)
        .map(|i| e.section_name(i).unwrap().to_string())
        .collect();
    // vfat's, and the hook's own (.text, vmlinux) where it clears relocations.
    assert!(
        klp_secs.iter().any(|s| s.starts_with(".klp.rela.vfat."))
            && klp_secs
                .iter()
                .all(|s| s.starts_with(".klp.rela.vfat.") || s == ".klp.rela.vmlinux..text"),
        "{klp_secs:?}"
    );

    let _g = vm_lock();
    let mut vm = vm(&release);
    vm.add_file(&ko, "/root/p.ko").unwrap();
    for m in [
        "drivers/block/loop.ko",
        "fs/nls/nls_cp437.ko",
        "fs/nls/nls_ascii.ko",
        "fs/fat/fat.ko",
        "fs/fat/vfat.ko",
    ] {
        vm.add_bytes(&format!("/root/mods/{m}"), module(m), 0o644);
    }
    let k = "/root/mods";
    let lp = format!("/sys/kernel/livepatch/{NAME}");
    let script = format!(
        "mods() {{ grep -c -E '^(fat|vfat) ' /proc/modules; }}\n\
         insmod {k}/drivers/block/loop.ko || exit 9\n\
         insmod {k}/fs/nls/nls_cp437.ko || exit 9\n\
         insmod {k}/fs/nls/nls_ascii.ko || exit 9\n\
         dd if=/dev/zero of=/tmp/fat.img bs=1024 count=2048 2>/dev/null\n\
         mkdosfs /tmp/fat.img >/dev/null || exit 9\n\
         mkdir -p /mnt\n\
         echo BEFORE_LOAD:$(mods)\n\
         suture load /root/p.ko || exit 10\n\
         echo LOADED_ALONE:$(mods)\n\
         echo ENABLED:$(cat {lp}/enabled)\n\
         echo EARLY_PATCHED:$(cat {lp}/vfat/patched)\n\
         insmod {k}/fs/fat/fat.ko || exit 11\n\
         insmod {k}/fs/fat/vfat.ko || exit 12\n\
         echo LATE_PATCHED:$(cat {lp}/vfat/patched)\n\
         mount -t vfat -o loop /tmp/fat.img /mnt || exit 13\n\
         echo one > /mnt/first.txt; echo two > /mnt/second.txt\n\
         umount /mnt; mount -t vfat -o loop /tmp/fat.img /mnt || exit 14\n\
         echo READ:$(cat /mnt/first.txt)\n\
         echo MARKER:$(dmesg | grep -c 'suture: vfat_lookup first.txt found')\n\
         umount /mnt\n\
         suture unload {NAME} || exit 15\n\
         mount -t vfat -o loop /tmp/fat.img /mnt || exit 16\n\
         echo READ_UNPATCHED:$(cat /mnt/second.txt)\n\
         echo MARKER_UNPATCHED:$(dmesg | grep -c 'suture: vfat_lookup second.txt')\n\
         umount /mnt\n\
         rmmod vfat || exit 17\n\
         rmmod fat || exit 18\n\
         echo LEFT:$(mods)\n\
         echo GONE:$(test -e {lp} && echo present || echo gone)\n\
         echo BAD:$(dmesg | grep -c -E 'Oops|WARNING|BUG:|Call Trace|Unknown symbol|livepatch: .*(failed|error)')\n\
         dmesg | grep -E 'livepatch|suture|fat|vfat|Unknown|WARN|Oops'\n"
    );
    let run = vm.run(&script).unwrap();
    let out = run.script_output();
    eprintln!("{out}");
    assert_eq!(run.exit_status, 0, "{out}");
    assert_eq!(field(out, "BEFORE_LOAD"), "0", "{out}");
    // The patch loaded while neither vfat nor fat was loaded, and pulled
    // neither in.
    assert_eq!(field(out, "LOADED_ALONE"), "0", "{out}");
    assert_eq!(field(out, "ENABLED"), "1", "{out}");
    assert_eq!(field(out, "EARLY_PATCHED"), "0", "{out}");
    // vfat came up patched: its klp relocations, fat's symbols included, were
    // resolved as it loaded.
    assert_eq!(field(out, "LATE_PATCHED"), "1", "{out}");
    assert_eq!(field(out, "READ"), "one", "{out}");
    assert_eq!(
        field(out, "MARKER"),
        "1",
        "the patched vfat_lookup ran:\n{out}"
    );
    assert_eq!(field(out, "READ_UNPATCHED"), "two", "{out}");
    assert_eq!(
        field(out, "MARKER_UNPATCHED"),
        "0",
        "unloaded, the original runs:\n{out}"
    );
    assert_eq!(field(out, "LEFT"), "0", "{out}");
    assert_eq!(field(out, "GONE"), "gone", "{out}");
    assert_eq!(field(out, "BAD"), "0", "{out}");
}

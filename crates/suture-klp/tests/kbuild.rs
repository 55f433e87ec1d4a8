//! Links a real livepatch module with the installed release's kbuild and checks
//! the livepatch ELF format of the result. The klp object is compiled from C by
//! the same kbuild, with its livepatch symbol spelled by hand, so that this test
//! covers the module stage without the differ.

use std::path::Path;
use std::process::Command;
use suture_klp::elf::{self, Elf};
use suture_klp::{build_module, Func, ModuleSpec, Object};

/// The 6.1 release under test: `SUTURE_TEST_RELEASE` (scripts/test.sh sets
/// it to the release Debian's linux-image-amd64 installs), else 6.1.0-57;
/// it prints as its name, so it reads as one in messages and paths.
struct Release;
const RELEASE: Release = Release;

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = std::env::var("SUTURE_TEST_RELEASE").unwrap_or_else(|_| "6.1.0-57-amd64".into());
        f.write_str(&r)
    }
}

fn headers() -> Option<std::path::PathBuf> {
    let h = Path::new("/usr/src").join(format!("linux-headers-{RELEASE}"));
    if h.join("Module.symvers").exists() {
        return Some(h);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install linux-headers-{RELEASE}"
    );
    eprintln!("skipping: linux-headers-{RELEASE} is not installed");
    None
}

const REPL: &str = r#"
#include <linux/seq_file.h>
extern char *klp_saved_command_line asm("\".klp.sym.vmlinux.saved_command_line,0\"");
__attribute__((used)) static int cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "suture-test %s\n", klp_saved_command_line);
	return 0;
}
"#;

#[test]
fn links_a_livepatch_module_in_klp_format() {
    let Some(headers) = headers() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("repl.c"), REPL).unwrap();
    std::fs::write(src.join("Kbuild"), "obj-m := repl.o\n").unwrap();
    let st = Command::new("make")
        .arg("-C")
        .arg(&headers)
        .arg(format!("M={}", src.display()))
        .arg("repl.o")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let obj = std::fs::read(src.join("repl.o")).unwrap();

    let spec = ModuleSpec {
        name: "livepatch_klptest".into(),
        replace: true,
        objects: vec![Object {
            objname: "vmlinux".into(),
            funcs: vec![Func {
                old_name: "cmdline_proc_show".into(),
                sympos: 0,
                symbol: "cmdline_proc_show".into(),
            }],
            callbacks: vec![],
        }],
        states: vec![],
        clear_module_relocs: false,
    };
    let (ko, report) = build_module(&spec, &[(0, obj)], &headers, tmp.path()).unwrap();
    assert_eq!(
        report.klp_syms,
        vec![".klp.sym.vmlinux.saved_command_line,0".to_string()]
    );
    assert_eq!(report.klp_relas.len(), 1, "{report:?}");
    assert_eq!(report.klp_relas[0].0, ".klp.rela.vmlinux..text");

    let e = Elf::parse(ko.clone()).unwrap();
    let symtab = e.symtab().unwrap();
    let strtab = e.shdrs[symtab].link as usize;
    let syms = e.syms(symtab).unwrap();
    let (idx, klp) = syms
        .iter()
        .enumerate()
        .find(|(_, s)| e.str_at(strtab, s.name).unwrap() == ".klp.sym.vmlinux.saved_command_line,0")
        .unwrap();
    assert_eq!(klp.shndx, elf::SHN_LIVEPATCH);
    assert!(syms.iter().all(|s| s.shndx != elf::SHN_UNDEF
        || e.str_at(strtab, s.name).unwrap() != ".klp.sym.vmlinux.saved_command_line,0"));
    // The klp relocation section: right flags, and it points at the klp symbol.
    let sec = (0..e.shdrs.len())
        .find(|&i| e.section_name(i).unwrap() == ".klp.rela.vmlinux..text")
        .unwrap();
    let sh = e.shdrs[sec];
    assert_eq!(
        sh.flags,
        elf::SHF_ALLOC | elf::SHF_INFO_LINK | elf::SHF_RELA_LIVEPATCH
    );
    assert_eq!(e.section_name(sh.info as usize).unwrap(), ".text");
    let relas = e.relas(sec).unwrap();
    assert_eq!(relas.len(), 1);
    assert_eq!(relas[0].sym(), idx);
    // No ordinary relocation section still refers to it.
    for i in 0..e.shdrs.len() {
        if e.shdrs[i].kind == elf::SHT_RELA && i != sec {
            assert!(e.relas(i).unwrap().iter().all(|r| r.sym() != idx));
        }
    }
    // modinfo carries the livepatch tag and the release's vermagic.
    let modinfo = (0..e.shdrs.len())
        .find(|&i| e.section_name(i).unwrap() == ".modinfo")
        .unwrap();
    let mi = String::from_utf8_lossy(e.data(modinfo).unwrap()).into_owned();
    assert!(mi.contains("livepatch=Y"), "{mi}");
    assert!(mi.contains(&format!("vermagic={RELEASE} ")), "{mi}");
}

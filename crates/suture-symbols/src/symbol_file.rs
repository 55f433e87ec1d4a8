//! The target's symbols from one file named on the command line (`suture diff
//! --symbols FILE`): an ELF object or module, whose own symbol table stands
//! for the target, or a copy of `/proc/kallsyms`. Without the release's image
//! nothing decides between same-named symbols by their bytes: positions count
//! them in file order, as the kernel's `sympos` does.

use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use suture_abi::target::{Target, TargetSym};

/// An ELF file (by its magic) or else a kallsyms text copy. `objname` defaults
/// to the module a `.ko` is named after, otherwise `vmlinux`.
pub fn symbols_from_file(path: &Path, objname: Option<&str>) -> Result<Target> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(b"\x7fELF") {
        symbols_from_elf(&bytes, path, objname)
    } else {
        let text = String::from_utf8(bytes)
            .with_context(|| format!("{}: neither ELF nor text", path.display()))?;
        symbols_from_kallsyms(&text, objname.unwrap_or("vmlinux"))
            .with_context(|| format!("{}: not a kallsyms copy", path.display()))
    }
}

/// Every named symbol `bytes` defines; exported when a `__ksymtab_NAME` entry
/// says so; locals defined more than once numbered from 1 in table order.
pub fn symbols_from_elf(bytes: &[u8], path: &Path, objname: Option<&str>) -> Result<Target> {
    let o =
        suture_elf::Object::parse(bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let objname = match objname {
        Some(n) => n.to_string(),
        None if path.extension().is_some_and(|e| e == "ko") => path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .replace('-', "_"),
        None => "vmlinux".to_string(),
    };
    let exported: HashSet<&str> = o
        .symbols
        .iter()
        .filter_map(|s| s.name.strip_prefix("__ksymtab_"))
        .collect();
    let mut count: HashMap<&str, u32> = HashMap::new();
    for s in o
        .symbols
        .iter()
        .filter(|s| s.bind == suture_elf::STB_LOCAL && s.section().is_some())
    {
        *count.entry(s.name.as_str()).or_default() += 1;
    }
    let mut seen: HashMap<&str, u32> = HashMap::new();
    let mut symbols = HashMap::new();
    for s in &o.symbols {
        if s.name.is_empty()
            || s.section().is_none()
            || matches!(s.typ, suture_elf::STT_SECTION | suture_elf::STT_FILE)
        {
            continue;
        }
        let ts = if s.bind == suture_elf::STB_LOCAL {
            let k = seen.entry(s.name.as_str()).or_default();
            *k += 1;
            TargetSym::Unexported {
                sympos: if count[s.name.as_str()] > 1 { *k } else { 0 },
            }
        } else if exported.contains(s.name.as_str()) {
            TargetSym::Exported
        } else {
            TargetSym::Unexported { sympos: 0 }
        };
        symbols.entry(s.name.to_string()).or_insert(ts);
    }
    Ok(Target { objname, symbols })
}

/// `ADDR TYPE NAME [mod]` lines, `objname`'s only; positions count
/// same-named symbols of the object in file order.
pub fn symbols_from_kallsyms(text: &str, objname: &str) -> Result<Target> {
    let mut lines = Vec::new();
    for (n, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let k = suture_abi::kallsyms::parse_line(l)
            .map_err(|why| anyhow::anyhow!("line {}: {why}: {l:?}", n + 1))?;
        if k.object() == objname {
            lines.push(k.name.to_string());
        }
    }
    let mut count: HashMap<&str, u32> = HashMap::new();
    for n in &lines {
        *count.entry(n.as_str()).or_default() += 1;
    }
    let mut seen: HashMap<&str, u32> = HashMap::new();
    let mut symbols = HashMap::new();
    for n in &lines {
        let k = seen.entry(n.as_str()).or_default();
        *k += 1;
        let pos = if count[n.as_str()] > 1 { *k } else { 0 };
        symbols
            .entry(n.clone())
            .or_insert(TargetSym::Unexported { sympos: pos });
    }
    Ok(Target {
        objname: objname.to_string(),
        symbols,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_positions_and_modules() {
        let t = symbols_from_kallsyms(
            "ffffffff81000000 T _stext\nffffffff81001000 t foo\nffffffff81002000 t foo\nffffffffc0000000 t foo\t[ext4]\nffffffff81003000 t bar\n",
            "vmlinux",
        )
        .unwrap();
        assert_eq!(t.symbols["foo"], TargetSym::Unexported { sympos: 1 });
        assert_eq!(t.symbols["bar"], TargetSym::Unexported { sympos: 0 });
        let m = symbols_from_kallsyms("ffffffffc0000000 t foo\t[ext4]\n", "ext4").unwrap();
        assert_eq!(m.symbols["foo"], TargetSym::Unexported { sympos: 0 });
        assert!(symbols_from_kallsyms("garbage\n", "vmlinux").is_err());
    }

    #[test]
    fn a_file_is_elf_or_kallsyms_text() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kallsyms");
        std::fs::write(&k, "ffffffffc0000000 t foo\t[ext4]\n").unwrap();
        let t = symbols_from_file(&k, Some("ext4")).unwrap();
        assert_eq!(t.objname, "ext4");
        assert_eq!(t.symbols["foo"], TargetSym::Unexported { sympos: 0 });
        assert!(symbols_from_file(&k, None).unwrap().symbols.is_empty());
        let bin = dir.path().join("bin");
        std::fs::write(&bin, [0xff, 0xfe, 0]).unwrap();
        let e = format!("{:#}", symbols_from_file(&bin, None).unwrap_err());
        assert!(e.contains("neither ELF nor text"), "{e}");
        std::fs::write(&bin, b"\x7fELF\x02").unwrap();
        assert!(symbols_from_file(&bin, None).is_err());
        assert!(symbols_from_file(&dir.path().join("none"), None).is_err());
    }

    #[test]
    fn elf_symbols_locals_positions_and_exports() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let c = dir.join("t.c");
        std::fs::write(
            &c,
            "static int dup(void) { return 1; }\nint use1(void) { return dup(); }\nint expd(void) { return 2; }\nint unexp(void) { return 3; }\nint __ksymtab_expd;\n",
        )
        .unwrap();
        let c2 = dir.join("u.c");
        std::fs::write(
            &c2,
            "static int dup(void) { return 4; }\nint use2(void) { return dup(); }\n",
        )
        .unwrap();
        let o1 = dir.join("t.o");
        let o2 = dir.join("u.o");
        let o = dir.join("both.o");
        for (src, obj) in [(&c, &o1), (&c2, &o2)] {
            let st = std::process::Command::new("gcc")
                .args(["-c", "-O0", "-o"])
                .arg(obj)
                .arg(src)
                .status()
                .unwrap();
            assert!(st.success());
        }
        let st = std::process::Command::new("ld")
            .arg("-r")
            .arg("-o")
            .arg(&o)
            .arg(&o1)
            .arg(&o2)
            .status()
            .unwrap();
        assert!(st.success());
        let t = symbols_from_file(&o, None).unwrap();
        assert_eq!(t.objname, "vmlinux");
        assert_eq!(
            t.symbols["dup"],
            TargetSym::Unexported { sympos: 1 },
            "two local dups: positions from 1"
        );
        assert_eq!(t.symbols["expd"], TargetSym::Exported);
        assert_eq!(t.symbols["unexp"], TargetSym::Unexported { sympos: 0 });
        let t = symbols_from_file(&o, Some("my_mod")).unwrap();
        assert_eq!(t.objname, "my_mod");
        let ko = dir.join("my-mod.ko");
        std::fs::copy(&o, &ko).unwrap();
        assert_eq!(symbols_from_file(&ko, None).unwrap().objname, "my_mod");
    }
}

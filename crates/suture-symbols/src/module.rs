//! A module's symbols as its kallsyms lists them once loaded.

use object::elf;

use crate::kallsyms::{KSym, Kallsyms};
use crate::obj::{Aligned, Obj, Shn};
use crate::Result;

/// The name the kernel gives a module file or Module.symvers entry:
/// `drivers/net/foo-bar.ko` → `foo_bar`.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.strip_suffix(".ko").unwrap_or(base);
    base.replace('-', "_")
}

/// Where a module symbol of [`module_symbols`] lives: addresses of a module's
/// symbols are not known before it loads, so each symbol gets this key instead,
/// unique per (section, offset).
pub(crate) fn module_key(shndx: usize, value: u64) -> u64 {
    ((shndx as u64 + 1) << 40) | (value & ((1 << 40) - 1))
}

/// The symtab indexes the loaded module's kallsyms keeps, in order: what
/// `layout_symtab`/`add_kallsyms` keep for the core kallsyms (the set that stays
/// after init) minus the undefined entries `module_kallsyms_on_each_symbol`
/// skips. Assumes CONFIG_KALLSYMS_ALL and CONFIG_MODULE_UNLOAD, as distribution
/// kernels have them (without MODULE_UNLOAD `.exit` sections would be dropped too).
pub(crate) fn kept_symbols(obj: &Obj) -> Vec<usize> {
    let pcpu = obj.sections.iter().position(|s| s.name == ".data..percpu");
    (1..obj.symbols.len())
        .filter(|&i| {
            let s = &obj.symbols[i];
            let Shn::Sec(idx) = s.shn else { return false };
            if s.name.is_empty() {
                return false;
            }
            if Some(idx) == pcpu {
                return true;
            }
            let sec = &obj.sections[idx];
            // The loader clears SHF_ALLOC on .modinfo and __versions before
            // laying out the symbol table; .init* sections are freed after init.
            sec.flags & elf::SHF_ALLOC as u64 != 0
                && sec.name != ".modinfo"
                && sec.name != "__versions"
                && !sec.name.starts_with(".init")
        })
        .collect()
}

/// The type letter the kernel's `elf_type` gives a module symbol (lower case;
/// /proc/kallsyms shows the module's exported ones in upper case).
fn type_letter(obj: &Obj, i: usize, pcpu: Option<usize>) -> char {
    let s = &obj.symbols[i];
    if s.bind == elf::STB_WEAK {
        return if s.st_type == elf::STT_OBJECT {
            'v'
        } else {
            'w'
        };
    }
    let idx = match s.shn {
        Shn::Undef => return 'U',
        Shn::Abs => return 'a',
        Shn::Sec(idx) if Some(idx) == pcpu => return 'a',
        Shn::Sec(idx) => idx,
        Shn::Common | Shn::Other(_) => return '?',
    };
    let sec = &obj.sections[idx];
    let alloc = sec.flags & elf::SHF_ALLOC as u64 != 0;
    if sec.flags & elf::SHF_EXECINSTR as u64 != 0 {
        't'
    } else if alloc && sec.ty != elf::SHT_NOBITS {
        if sec.flags & elf::SHF_WRITE as u64 == 0 {
            'r'
        } else {
            'd'
        }
    } else if sec.ty == elf::SHT_NOBITS {
        'b'
    } else if sec.name.starts_with(".debug") {
        'n'
    } else {
        '?'
    }
}

/// The module's name from `.modinfo` (`name=`), else `None`.
pub(crate) fn modinfo_name(obj: &Obj) -> Option<String> {
    let sec = obj.sections.iter().find(|s| s.name == ".modinfo")?;
    sec.data
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"name="))
        .map(|n| String::from_utf8_lossy(n).into_owned())
}

/// A module's symbols in the order its kallsyms lists them (symtab order,
/// filtered as the kernel's `add_kallsyms`/`is_core_symbol` do), tagged with the
/// module's name (from `.modinfo`, else `fallback_name`). The addresses are not
/// load addresses (unknown before loading) but keys unique per section and
/// offset.
pub fn module_symbols(ko: &[u8], fallback_name: &str) -> Result<Kallsyms> {
    let buf = Aligned::new(ko);
    let obj = Obj::parse(fallback_name, buf.bytes())?;
    let name = modinfo_name(&obj).unwrap_or_else(|| module_name(fallback_name));
    let pcpu = obj.sections.iter().position(|s| s.name == ".data..percpu");
    let syms = kept_symbols(&obj)
        .into_iter()
        .map(|i| {
            let s = &obj.symbols[i];
            KSym {
                addr: module_key(s.sec().unwrap_or(0), s.value),
                kind: type_letter(&obj, i, pcpu),
                name: s.name.clone(),
                module: Some(name.clone()),
            }
        })
        .collect();
    Ok(Kallsyms::from_symbols(syms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(module_name("drivers/net/foo-bar.ko"), "foo_bar");
        assert_eq!(module_name("fs/ext4/ext4"), "ext4");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(module_symbols(b"\x7fELF\x02\x01\x01", "x.ko").is_err());
        assert!(module_symbols(b"", "x.ko").is_err());
    }
}

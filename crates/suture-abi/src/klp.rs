//! The livepatch ELF format's names and constants (the kernel's
//! `Documentation/livepatch/module-elf-format.rst`, `include/uapi/linux/elf.h`),
//! shared by the differ, which writes `.klp.sym` names, and the post-link
//! rewrite, which reads them.

/// `SHF_RELA_LIVEPATCH`: a `.klp.rela.OBJ.SECTION` relocation section.
pub const SHF_RELA_LIVEPATCH: u64 = 0x0010_0000;
/// `SHN_LIVEPATCH`: the section index of a symbol livepatch resolves.
pub const SHN_LIVEPATCH: u16 = 0xff20;
/// The kernel's `sscanf` limits for `.klp.sym.%55[^.].%511[^,],%lu`.
pub const KLP_OBJNAME_MAX: usize = 55;
pub const KLP_SYMNAME_MAX: usize = 511;

/// A parsed `.klp.sym.OBJ.NAME,POS` symbol name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KlpSym<'a> {
    pub objname: &'a str,
    pub name: &'a str,
    pub pos: u64,
}

/// Parses a klp symbol name with the limits the kernel's `sscanf` applies
/// (`.klp.sym.%55[^.].%511[^,],%lu`), so that what we emit is what it accepts.
pub fn parse_klp_sym(s: &str) -> Option<KlpSym<'_>> {
    parse_klp_body(s.strip_prefix(".klp.sym.")?)
}

/// `OBJ.NAME,POS`, the part of a klp symbol name after `.klp.sym.`.
fn parse_klp_body(rest: &str) -> Option<KlpSym<'_>> {
    let (objname, rest) = rest.split_once('.')?;
    let (name, pos) = rest.rsplit_once(',')?;
    if objname.is_empty()
        || objname.len() > KLP_OBJNAME_MAX
        || name.is_empty()
        || name.len() > KLP_SYMNAME_MAX
    {
        return None;
    }
    if name.contains(',') || pos.is_empty() || !pos.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(KlpSym {
        objname,
        name,
        pos: pos.parse().ok()?,
    })
}

pub fn klp_sym_name(objname: &str, name: &str, pos: u32) -> String {
    format!(".klp.sym.{objname}.{name},{pos}")
}

/// A parsed `.klp.xsym.OBJ.MODULE.NAME,POS`, the differ's name for a reference
/// of object OBJ's patched code to module MODULE's symbol: OBJ, whose
/// `.klp.rela` sections carry the relocations, and the symbol
/// `.klp.sym.MODULE.NAME,POS` it becomes. Refused unless OBJ and MODULE are
/// two modules: the kernel forbids vmlinux symbols in a module's klp
/// relocation sections, and a module's own symbols are `.klp.sym.OBJ.*`.
pub fn parse_klp_xsym(s: &str) -> Option<(&str, KlpSym<'_>)> {
    let rest = s.strip_prefix(".klp.xsym.")?;
    let (obj, rest) = rest.split_once('.')?;
    let sym = parse_klp_body(rest)?;
    if obj.is_empty()
        || obj.len() > KLP_OBJNAME_MAX
        || obj == "vmlinux"
        || sym.objname == "vmlinux"
        || sym.objname == obj
    {
        return None;
    }
    Some((obj, sym))
}

/// `.klp.xsym.TARGET.OBJ.NAME,POS`: the differ's name for a reference of
/// module TARGET's patched code to module OBJ's symbol (see [`parse_klp_xsym`]).
pub fn klp_xsym_name(target: &str, objname: &str, name: &str, pos: u32) -> String {
    format!(".klp.xsym.{target}.{objname}.{name},{pos}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_within_the_kernels_limits() {
        let n = klp_sym_name("vmlinux", "saved_command_line", 0);
        let k = parse_klp_sym(&n).unwrap();
        assert_eq!(
            (k.objname, k.name, k.pos),
            ("vmlinux", "saved_command_line", 0)
        );
        let x = klp_xsym_name("vfat", "fat", "fat_build_inode", 2);
        let (obj, k) = parse_klp_xsym(&x).unwrap();
        assert_eq!(
            (obj, k.objname, k.name, k.pos),
            ("vfat", "fat", "fat_build_inode", 2)
        );
        assert!(parse_klp_sym(&klp_sym_name(&"m".repeat(KLP_OBJNAME_MAX + 1), "f", 0)).is_none());
        assert!(parse_klp_sym(&klp_sym_name("m", &"f".repeat(KLP_SYMNAME_MAX + 1), 0)).is_none());
        assert!(parse_klp_sym(&klp_sym_name("m", &"f".repeat(KLP_SYMNAME_MAX), 0)).is_some());
    }
}

//! The livepatch ELF format's names and constants (the kernel's
//! `Documentation/livepatch/module-elf-format.rst`, `include/uapi/linux/elf.h`),
//! shared by the differ, which writes `.klp.sym` names, and the post-link
//! rewrite, which reads them.

use crate::NameError;

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

/// OBJ and NAME as the kernel's `sscanf` reads them back: OBJ up to the
/// first `.`, NAME up to the first `,`, each within its buffer. A longer
/// name is not cut short: the kernel would refuse the whole module.
fn check_klp_parts(objname: &str, name: &str) -> Result<(), NameError> {
    if objname.is_empty() || objname.len() > KLP_OBJNAME_MAX || objname.contains('.') {
        return Err(NameError {
            what: "livepatch object name",
            value: objname.to_string(),
            rule: "the kernel reads 1 to 55 bytes without a `.` (KLP_OBJNAME_MAX)",
        });
    }
    if name.is_empty() || name.len() > KLP_SYMNAME_MAX || name.contains(',') {
        return Err(NameError {
            what: "livepatch symbol name",
            value: name.to_string(),
            rule: "the kernel reads 1 to 511 bytes without a `,` (KLP_SYMNAME_MAX)",
        });
    }
    Ok(())
}

/// `.klp.sym.OBJ.NAME,POS`, refused when [`parse_klp_sym`] (and so the
/// kernel) would not read back OBJ and NAME.
pub fn klp_sym_name(objname: &str, name: &str, pos: u64) -> Result<String, NameError> {
    check_klp_parts(objname, name)?;
    Ok(format!(".klp.sym.{objname}.{name},{pos}"))
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
/// module TARGET's patched code to module OBJ's symbol, refused unless
/// [`parse_klp_xsym`] would read it back.
pub fn klp_xsym_name(
    target: &str,
    objname: &str,
    name: &str,
    pos: u64,
) -> Result<String, NameError> {
    check_klp_parts(target, name)?;
    check_klp_parts(objname, name)?;
    if target == "vmlinux" || objname == "vmlinux" || target == objname {
        return Err(NameError {
            what: "livepatch reference to another module",
            value: format!("{target} -> {objname}"),
            rule: "it joins two different modules, neither of them vmlinux",
        });
    }
    Ok(format!(".klp.xsym.{target}.{objname}.{name},{pos}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_within_the_kernels_limits() {
        let n = klp_sym_name("vmlinux", "saved_command_line", 0).unwrap();
        assert_eq!(n, ".klp.sym.vmlinux.saved_command_line,0");
        let k = parse_klp_sym(&n).unwrap();
        assert_eq!(
            (k.objname, k.name, k.pos),
            ("vmlinux", "saved_command_line", 0)
        );
        let x = klp_xsym_name("vfat", "fat", "fat_build_inode", 2).unwrap();
        assert_eq!(x, ".klp.xsym.vfat.fat.fat_build_inode,2");
        let (obj, k) = parse_klp_xsym(&x).unwrap();
        assert_eq!(
            (obj, k.objname, k.name, k.pos),
            ("vfat", "fat", "fat_build_inode", 2)
        );
        let longest = "f".repeat(KLP_SYMNAME_MAX);
        let n = klp_sym_name(&"m".repeat(KLP_OBJNAME_MAX), &longest, 7).unwrap();
        assert_eq!(parse_klp_sym(&n).unwrap().name, longest);
        let n = klp_xsym_name("vfat", "fat", &longest, 0).unwrap();
        assert_eq!(parse_klp_xsym(&n).unwrap().1.name, longest);
    }

    /// What the kernel would not read back is refused where it is made,
    /// naming the name.
    #[test]
    fn names_beyond_the_kernels_limits_are_not_made() {
        let long = "f".repeat(KLP_SYMNAME_MAX + 1);
        let e = klp_sym_name("vmlinux", &long, 0).unwrap_err();
        assert_eq!(e.what, "livepatch symbol name");
        assert!(e.to_string().contains(&long), "{e}");
        assert!(e.to_string().contains("KLP_SYMNAME_MAX"), "{e}");
        assert!(klp_xsym_name("vfat", "fat", &long, 0).is_err());
        for (obj, name) in [
            (&"m".repeat(KLP_OBJNAME_MAX + 1)[..], "f"),
            ("", "f"),
            ("a.b", "f"),
            ("m", ""),
            ("m", "a,b"),
        ] {
            assert!(klp_sym_name(obj, name, 0).is_err(), "{obj:?} {name:?}");
            assert!(
                klp_xsym_name("vfat", obj, name, 0).is_err(),
                "{obj:?} {name:?}"
            );
            assert!(
                klp_xsym_name(obj, "fat", name, 0).is_err(),
                "{obj:?} {name:?}"
            );
        }
        for (t, o) in [("vmlinux", "fat"), ("vfat", "vmlinux"), ("vfat", "vfat")] {
            assert!(klp_xsym_name(t, o, "f", 0).is_err(), "{t} {o}");
            assert!(parse_klp_xsym(&format!(".klp.xsym.{t}.{o}.f,0")).is_none());
        }
    }
}

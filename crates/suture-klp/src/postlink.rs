//! ELF transforms around the kbuild link. Pure: bytes in, bytes out.
//!
//! - Before the link, [`add_aliases`] gives each replacement function (a LOCAL
//!   symbol in the klp object) a GLOBAL alias the generated hook can name in
//!   `klp_func.new_func`.
//! - After the link, [`post_link`] turns the finished `.ko` into the livepatch
//!   format (Documentation/livepatch/module-elf-format.rst): undefined
//!   `.klp.sym.OBJ.NAME,POS` symbols become `SHN_LIVEPATCH` symbols, and every
//!   relocation against them moves into a `.klp.rela.OBJ.SECTION` section
//!   flagged `SHF_RELA_LIVEPATCH | SHF_INFO_LINK | SHF_ALLOC`. Linkers preserve
//!   neither, which is why this runs last, on the final file. A patched
//!   module's reference to another module's export comes as
//!   `.klp.xsym.OBJ.MODULE.NAME,POS`: renamed `.klp.sym.MODULE.NAME,POS`, its
//!   relocations go to `.klp.rela.OBJ.SECTION`, applied when OBJ loads (the
//!   kernel allows another module's symbols there, never vmlinux's).

use crate::elf::{self, Elf, Rela, Shdr};
use anyhow::{bail, ensure, Context, Result};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The hook's name for an unexported vmlinux symbol `NAME` it needs:
/// `__suture_klp_vmlinux__NAME` becomes `.klp.sym.vmlinux.NAME,0`.
pub const HOOK_VMLINUX_PREFIX: &str = "__suture_klp_vmlinux__";

// The livepatch symbol-name formats are a contract with the differ, which
// writes them: one definition, in suture-abi.
pub use suture_abi::klp::{klp_sym_name, parse_klp_sym, parse_klp_xsym, KlpSym};

/// Adds a GLOBAL FUNC alias for each `(existing symbol, alias)` pair.
pub fn add_aliases(obj: &[u8], aliases: &[(String, String)]) -> Result<Vec<u8>> {
    let mut e = Elf::parse(obj.to_vec())?;
    let symtab = e.symtab()?;
    let strtab = e.shdrs[symtab].link as usize;
    ensure!(
        strtab < e.shdrs.len(),
        "symbol table links to a missing string table"
    );
    let syms = e.syms(symtab)?;
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (i, s) in syms.iter().enumerate() {
        if s.shndx != elf::SHN_UNDEF && s.shndx < elf::SHN_LORESERVE {
            by_name.entry(e.str_at(strtab, s.name)?).or_insert(i);
        }
    }
    let mut new_syms = Vec::new();
    for (target, _) in aliases {
        let i = *by_name
            .get(target.as_str())
            .with_context(|| format!("no defined symbol {target} to alias"))?;
        new_syms.push(syms[i]);
    }
    let names: Vec<String> = aliases.iter().map(|(_, a)| a.clone()).collect();
    let offs = e.add_strings(strtab, &names)?;
    let mut data = e.data(symtab)?.to_vec();
    for (mut s, off) in new_syms.into_iter().zip(offs) {
        s.name = off;
        s.info = (1 << 4) | 2; // STB_GLOBAL, STT_FUNC
        s.other = 0; // STV_DEFAULT
        data.extend_from_slice(&elf::encode_sym(&s));
    }
    let at = e.append(&data, 8);
    let sh = &mut e.shdrs[symtab];
    sh.offset = at;
    sh.size = data.len() as u64;
    e.finish()
}

/// What [`post_link`] did, for the build report and for tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PostLink {
    /// Symbols marked `SHN_LIVEPATCH`, by name.
    pub klp_syms: Vec<String>,
    /// `.klp.rela.*` sections created, with their number of relocations.
    pub klp_relas: Vec<(String, usize)>,
    /// `.call_sites` entries removed because the call's target is a livepatch
    /// relocation (see [`drop_klp_call_sites`]).
    pub dropped_call_sites: usize,
}

pub fn post_link(ko: &[u8]) -> Result<(Vec<u8>, PostLink)> {
    let mut e = Elf::parse(ko.to_vec())?;
    let symtab = e.symtab()?;
    let strtab = e.shdrs[symtab].link as usize;
    ensure!(
        strtab < e.shdrs.len(),
        "symbol table links to a missing string table"
    );
    let mut syms = e.syms(symtab)?;
    let mut report = PostLink::default();
    // symbol index → the object whose `.klp.rela` sections get its relocations
    let mut klp_obj: HashMap<usize, String> = HashMap::new();
    // `.klp.xsym.*` symbols: index and the `.klp.sym.*` name they take.
    let mut renamed: Vec<(usize, String)> = Vec::new();
    for (i, s) in syms.iter_mut().enumerate() {
        let name = e.str_at(strtab, s.name)?;
        let (obj, final_name) = if name.starts_with(".klp.xsym.") {
            let (obj, k) = parse_klp_xsym(name).with_context(|| {
                format!("malformed livepatch symbol name {name:?} (expected .klp.xsym.MODULE.OTHER_MODULE.NAME,POS)")
            })?;
            let n = klp_sym_name(k.objname, k.name, k.pos)
                .with_context(|| format!("livepatch symbol {name:?}"))?;
            renamed.push((i, n.clone()));
            (obj.to_string(), n)
        } else if let Some(n) = name.strip_prefix(HOOK_VMLINUX_PREFIX) {
            // The hook's own references to unexported vmlinux symbols (a C
            // name cannot carry `.klp.sym.vmlinux.NAME,0`'s dots and comma).
            let n = klp_sym_name("vmlinux", n, 0)
                .with_context(|| format!("malformed hook symbol name {name:?}"))?;
            renamed.push((i, n.clone()));
            ("vmlinux".to_string(), n)
        } else if name.starts_with(".klp.sym.") {
            let k = parse_klp_sym(name)
                .with_context(|| format!("malformed livepatch symbol name {name:?}"))?;
            (k.objname.to_string(), name.to_string())
        } else {
            continue;
        };
        ensure!(
            s.shndx == elf::SHN_UNDEF || s.shndx == elf::SHN_LIVEPATCH,
            "livepatch symbol {name} is defined in the module; it must refer to the target"
        );
        klp_obj.insert(i, obj);
        report.klp_syms.push(final_name);
        s.shndx = elf::SHN_LIVEPATCH;
    }
    if klp_obj.is_empty() {
        return Ok((ko.to_vec(), report));
    }
    if !renamed.is_empty() {
        let names: Vec<String> = renamed.iter().map(|(_, n)| n.clone()).collect();
        let offs = e.add_strings(strtab, &names)?;
        for ((i, _), off) in renamed.iter().zip(offs) {
            syms[*i].name = off;
        }
    }
    // Rewrite the symbol table in place: same size, same order.
    let st_off = e.shdrs[symtab].offset as usize;
    for (i, s) in syms.iter().enumerate() {
        let o = st_off + i * elf::SYM_SIZE;
        e.bytes[o..o + elf::SYM_SIZE].copy_from_slice(&elf::encode_sym(s));
    }
    // (objname, target section) → relocations moved out of ordinary RELA sections.
    let mut moved: BTreeMap<(String, u32), Vec<Rela>> = BTreeMap::new();
    for sec in 0..e.shdrs.len() {
        let sh = e.shdrs[sec];
        if sh.kind != elf::SHT_RELA || sh.link as usize != symtab {
            continue;
        }
        if sh.flags & elf::SHF_RELA_LIVEPATCH != 0 {
            bail!("the module already has livepatch relocation sections: post-link ran twice?");
        }
        let relas = e.relas(sec)?;
        let (klp, keep): (Vec<Rela>, Vec<Rela>) = relas
            .into_iter()
            .partition(|r| klp_obj.contains_key(&r.sym()));
        if klp.is_empty() {
            continue;
        }
        for r in klp {
            moved
                .entry((klp_obj[&r.sym()].clone(), sh.info))
                .or_default()
                .push(r);
        }
        let mut data = Vec::with_capacity(keep.len() * elf::RELA_SIZE);
        for r in &keep {
            data.extend_from_slice(&elf::encode_rela(r));
        }
        let o = sh.offset as usize;
        e.bytes[o..o + data.len()].copy_from_slice(&data);
        e.shdrs[sec].size = data.len() as u64;
    }
    for ((objname, target), relas) in &moved {
        let target_name = e.section_name(*target as usize)?;
        if objname != "vmlinux" && !late_relocatable(target_name) {
            let sym = relas
                .first()
                .and_then(|r| syms.get(r.sym()))
                .map(|s| e.str_at(strtab, s.name))
                .transpose()?;
            bail!(
                "{target_name} needs a livepatch relocation for module {objname} ({}): the kernel reads that section when the \
                 patch module loads, before relocations for {objname} are applied; refusing to write a module that would \
                 disturb the kernel",
                sym.unwrap_or("?")
            );
        }
    }
    let klp_fields: HashSet<(u32, u64)> = moved
        .iter()
        .flat_map(|((_, t), v)| v.iter().map(move |r| (*t, r.offset)))
        .collect();
    report.dropped_call_sites = drop_klp_call_sites(&mut e, symtab, &syms, &klp_fields)?;
    let mut names = Vec::new();
    let mut new_shdrs = Vec::new();
    for ((objname, target), relas) in &moved {
        let target_name = e.section_name(*target as usize)?;
        let name = format!(".klp.rela.{objname}.{target_name}");
        let mut data = Vec::with_capacity(relas.len() * elf::RELA_SIZE);
        for r in relas {
            data.extend_from_slice(&elf::encode_rela(r));
        }
        let at = e.append(&data, 8);
        report.klp_relas.push((name.clone(), relas.len()));
        names.push(name);
        new_shdrs.push(Shdr {
            name: 0,
            kind: elf::SHT_RELA,
            flags: elf::SHF_ALLOC | elf::SHF_INFO_LINK | elf::SHF_RELA_LIVEPATCH,
            addr: 0,
            offset: at,
            size: data.len() as u64,
            link: symtab as u32,
            info: *target,
            addralign: 8,
            entsize: elf::RELA_SIZE as u64,
        });
    }
    let shstrndx = e.shstrndx;
    let offs = e.add_strings(shstrndx, &names)?;
    for (mut sh, off) in new_shdrs.into_iter().zip(offs) {
        sh.name = off;
        e.shdrs.push(sh);
    }
    Ok((e.finish()?, report))
}

/// Whether a section may carry relocations that livepatch applies only when
/// the target module loads: plain code and data, which nothing reads before the
/// patched functions run. Special sections (static call sites, jump labels,
/// alternatives, exception and bug tables, ORC, site lists, per-CPU data) are
/// read or copied when the patch module itself loads.
pub fn late_relocatable(section: &str) -> bool {
    let under = |p: &str| section == p || section.starts_with(&format!("{p}."));
    if section.starts_with(".data..percpu") {
        return false;
    }
    under(".text") || under(".rodata") || under(".data") || section == ".fixup"
}

/// objtool lists every call of the module in `.call_sites`; with call-depth
/// tracking the kernel rewrites each listed call, when the module loads, to
/// enter its destination through the accounting thunk in the destination's
/// padding. A call whose destination is a livepatch relocation is not
/// relocated yet at that point (livepatch applies it later, in
/// `klp_enable_patch` or when the target module loads): the kernel would read
/// a displacement of 0, take the next instruction for the destination and
/// warn "Invalid padding area". Such calls are left out of `.call_sites`; the
/// differ points them at the callee's `__pfx_` padding instead, which holds
/// the thunk when tracking is on and NOPs otherwise. `klp_fields` are the
/// (section, offset) of every field with a livepatch relocation. Shrinks
/// `.call_sites` and its relocation section in place; returns how many
/// entries went.
fn drop_klp_call_sites(
    e: &mut Elf,
    symtab: usize,
    syms: &[elf::Sym],
    klp_fields: &HashSet<(u32, u64)>,
) -> Result<usize> {
    let Some(cs) =
        (0..e.shdrs.len()).find(|&i| e.section_name(i).is_ok_and(|n| n == ".call_sites"))
    else {
        return Ok(0);
    };
    let Some(rsec) = (0..e.shdrs.len()).find(|&i| {
        e.shdrs[i].kind == elf::SHT_RELA
            && e.shdrs[i].info as usize == cs
            && e.shdrs[i].link as usize == symtab
    }) else {
        return Ok(0);
    };
    let mut relas = e.relas(rsec)?;
    relas.sort_by_key(|r| r.offset);
    let before = relas.len();
    ensure!(
        e.shdrs[cs].size == 4 * before as u64,
        ".call_sites holds {} bytes for {before} relocations: not one 4-byte entry each",
        e.shdrs[cs].size
    );
    let mut keep = Vec::with_capacity(before);
    for r in relas {
        let s = syms
            .get(r.sym())
            .context(".call_sites relocation against a missing symbol")?;
        // The entry names the call instruction; its displacement follows the
        // one-byte opcode.
        let call = s.value.wrapping_add(r.addend as u64);
        if !klp_fields.contains(&(s.shndx as u32, call.wrapping_add(1))) {
            keep.push(r);
        }
    }
    let dropped = before - keep.len();
    if dropped == 0 {
        return Ok(0);
    }
    let mut data = Vec::with_capacity(keep.len() * elf::RELA_SIZE);
    for (i, r) in keep.iter_mut().enumerate() {
        r.offset = 4 * i as u64;
        data.extend_from_slice(&elf::encode_rela(r));
    }
    let o = e.shdrs[rsec].offset as usize;
    e.bytes[o..o + data.len()].copy_from_slice(&data);
    e.shdrs[rsec].size = data.len() as u64;
    e.shdrs[cs].size = 4 * keep.len() as u64;
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn klp_sym_names_round_trip_with_kernel_limits() {
        let n = klp_sym_name("vmlinux", "saved_command_line", 0).unwrap();
        assert_eq!(n, ".klp.sym.vmlinux.saved_command_line,0");
        let k = parse_klp_sym(&n).unwrap();
        assert_eq!(
            (k.objname, k.name, k.pos),
            ("vmlinux", "saved_command_line", 0)
        );
        let k = parse_klp_sym(".klp.sym.binfmt_misc.foo.isra.0,2").unwrap();
        assert_eq!((k.objname, k.name, k.pos), ("binfmt_misc", "foo.isra.0", 2));
        assert!(parse_klp_sym(".klp.sym.vmlinux.foo").is_none());
        assert!(parse_klp_sym(".klp.sym.vmlinux.foo,x").is_none());
        assert!(parse_klp_sym(&format!(".klp.sym.{}.f,0", "m".repeat(56))).is_none());
        assert!(parse_klp_sym(".klp.sym..f,0").is_none());
    }

    #[test]
    fn cross_module_symbols_name_both_objects() {
        let (obj, k) = parse_klp_xsym(".klp.xsym.vfat.fat.fat_build_inode,0").unwrap();
        assert_eq!(
            (obj, k.objname, k.name, k.pos),
            ("vfat", "fat", "fat_build_inode", 0)
        );
        let (obj, k) = parse_klp_xsym(".klp.xsym.nfsd.sunrpc.svc_foo.isra.0,2").unwrap();
        assert_eq!(
            (obj, k.objname, k.name, k.pos),
            ("nfsd", "sunrpc", "svc_foo.isra.0", 2)
        );
        // vmlinux on either side, the module's own symbol, bad shapes.
        for bad in [
            ".klp.xsym.vfat.vmlinux.printk,0",
            ".klp.xsym.vmlinux.fat.fat_build_inode,0",
            ".klp.xsym.vfat.vfat.vfat_lookup,0",
            ".klp.xsym.vfat.fat_build_inode,0",
            ".klp.xsym..fat.x,0",
            ".klp.xsym.vfat.fat.x",
        ] {
            assert!(parse_klp_xsym(bad).is_none(), "{bad}");
        }
        assert!(parse_klp_xsym(&format!(".klp.xsym.{}.fat.x,0", "m".repeat(56))).is_none());
    }
}

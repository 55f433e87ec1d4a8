//! References: how a PATCHED symbol is named in the klp object (its ORIG
//! name and position, or a `.klp.sym` reached through the target).

use suture_elf::*;

use crate::model::Obj;
use crate::pipeline::{Diff, KlpRef};
use crate::TargetSym;

impl Diff<'_> {
    /// Position of an ORIG symbol among same-named local symbols, 0 when unique.
    pub fn orig_sympos(&self, oi: usize) -> u32 {
        self.o_sympos[oi]
    }

    /// The name a PATCHED symbol has in the running kernel.
    pub fn orig_name(&self, pi: usize) -> &str {
        match self.twin_p[pi] {
            Some(o) => &self.o.sym(o).name,
            None => &self.p.sym(pi).name,
        }
    }

    /// How an unchanged symbol is reached: `None` for a plain (exported or
    /// external) name, `Some(sympos)` for a `.klp.sym` reference; `Err` when a
    /// target table is given and lacks a symbol ORIG defines.
    pub fn lookup(&self, pi: usize) -> Result<Option<u32>, String> {
        let name = self.orig_name(pi);
        let twin = self.twin_p[pi];
        let defined = twin.is_some();
        match &self.opts.target {
            None => {
                if let Some(o) = twin {
                    Ok(Some(self.orig_sympos(o)))
                } else {
                    Ok(None)
                }
            }
            Some(t) => match t.symbols.get(name) {
                Some(TargetSym::Exported) => Ok(None),
                Some(TargetSym::Unexported { sympos }) => Ok(Some(*sympos)),
                // What ORIG defines is the target's own, whatever another
                // module exports under that name.
                Some(TargetSym::OtherModule { module, .. }) if defined => Err(format!(
                    "{name} is defined in ORIG, but the symbols of {} list it as an export of module {module}",
                    t.objname
                )),
                Some(TargetSym::OtherModule { .. }) => Ok(None),
                // A weak default (`void __weak release_thread()`) is usually
                // overridden elsewhere: the running kernel has one global of
                // that name, not this object's copy, so reach it by name.
                None if defined && self.p.sym(pi).bind == STB_WEAK => Ok(Some(0)),
                None if defined => Err(format!(
                    "{name} is defined in ORIG but not found in the symbols of {}",
                    t.objname
                )),
                None => Ok(None),
            },
        }
    }

    /// How the output reaches a PATCHED symbol it does not define: `Some` through
    /// a livepatch relocation (`.klp.sym.OBJ.NAME,POS`, OBJ the target or, for a
    /// module target, another module that exports the symbol), `None` by plain
    /// name (the module loader resolves it). A symbol with no section is the
    /// target's own only when the target table lists it unexported; a defined
    /// one is decided by [`Self::lookup`].
    /// The one rule both for writing references and for checking what a kept
    /// special-section entry would need.
    pub fn reach(&self, pi: usize) -> Result<Option<KlpRef<'_>>, String> {
        let s = self.p.sym(pi);
        let obj = self.objname();
        if s.section().is_some() {
            return Ok(self.lookup(pi)?.map(|sympos| KlpRef { obj, sympos }));
        }
        Ok(
            match self
                .opts
                .target
                .as_ref()
                .and_then(|t| t.symbols.get(s.name.as_str()))
            {
                Some(TargetSym::Unexported { sympos }) => Some(KlpRef {
                    obj,
                    sympos: *sympos,
                }),
                // vmlinux reaches no module's symbol, and a module's klp relocations
                // may not name vmlinux: those stay plain.
                Some(TargetSym::OtherModule { module, sympos })
                    if obj != "vmlinux" && module != "vmlinux" && module != obj =>
                {
                    Some(KlpRef {
                        obj: module,
                        sympos: *sympos,
                    })
                }
                _ => None,
            },
        )
    }

    /// The undefined symbol a livepatch relocation to `name` (as
    /// [`Self::reach`] found it) is written against: `.klp.sym.OBJ.NAME,POS` for
    /// the target's own symbol, `.klp.xsym.TARGET.OBJ.NAME,POS` for another
    /// module's (see the crate docs). `Err` names a symbol the kernel could
    /// not resolve under such a name (longer than its `sscanf` reads).
    pub fn klp_symbol(&self, k: KlpRef<'_>, name: &str) -> Result<String, String> {
        let target = self.objname();
        let pos = u64::from(k.sympos);
        if k.obj == target {
            suture_abi::klp::klp_sym_name(k.obj, name, pos)
        } else {
            suture_abi::klp::klp_xsym_name(target, k.obj, name, pos)
        }
        .map_err(|e| format!("{name} cannot be reached through a livepatch relocation: {e}"))
    }

    /// The name a reference to PATCHED symbol `pi` is written under before the
    /// `.klp.sym` decoration: its own for a symbol with no section, ORIG's otherwise.
    pub fn reference_name(&self, pi: usize) -> &str {
        let s = self.p.sym(pi);
        if s.section().is_none() {
            &s.name
        } else {
            self.orig_name(pi)
        }
    }

    pub fn objname(&self) -> &str {
        match &self.opts.target {
            Some(t) if !t.objname.is_empty() => &t.objname,
            _ => "vmlinux",
        }
    }

    pub fn describe_rela(x: &Obj, sec: usize, base: u64, r: &Rela) -> String {
        format!(
            "+{:#x} {} {}",
            r.offset - base,
            rtype_name(r.rtype),
            x.describe(x.target(sec, r))
        )
    }
}

pub fn rtype_name(t: u32) -> String {
    match t {
        R_X86_64_NONE => "R_X86_64_NONE".into(),
        R_X86_64_64 => "R_X86_64_64".into(),
        R_X86_64_PC32 => "R_X86_64_PC32".into(),
        R_X86_64_PLT32 => "R_X86_64_PLT32".into(),
        R_X86_64_32 => "R_X86_64_32".into(),
        R_X86_64_32S => "R_X86_64_32S".into(),
        R_X86_64_PC64 => "R_X86_64_PC64".into(),
        R_X86_64_GOTPCREL => "R_X86_64_GOTPCREL".into(),
        n => format!("type {n}"),
    }
}

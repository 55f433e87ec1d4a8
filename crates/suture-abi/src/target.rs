//! How the object a patch targets exposes its symbols: what suture-symbols
//! learns from the release (kallsyms, `Module.symvers`, module symtabs) and
//! the differ needs to name each reference of the klp object.

use std::collections::HashMap;

/// How the object the patch targets (vmlinux or one module) exposes its symbols.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `vmlinux`, or the module name as the kernel spells it (`-` turned into `_`).
    pub objname: String,
    /// Keyed by the symbol's name as ORIG spells it.
    pub symbols: HashMap<String, TargetSym>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSym {
    /// Exported to modules (`EXPORT_SYMBOL*` of vmlinux): a normal relocation.
    Exported,
    /// Reached through kallsyms: a livepatch relocation. `sympos` is the position
    /// among same-named symbols of the object in kallsyms order, 0 when unique.
    Unexported { sympos: u32 },
    /// For a module target: exported by another module, `module` (its name as
    /// the kernel spells it). Reached through a livepatch relocation of the
    /// target (`.klp.sym.MODULE.NAME,POS` in `.klp.rela.OBJNAME.*`), resolved
    /// when the target loads, rather than through a normal one that would make
    /// the patch module depend on, and load, `module`. `sympos` is the position
    /// among `module`'s same-named symbols, 0 when unique.
    OtherModule { module: String, sympos: u32 },
}

//! From the target's symbols and ORIG.o to the differ's `Target`: which
//! instance of a duplicated name belongs to ORIG's translation unit.
//!
//! The evidence is the code itself. The target was built from the same source,
//! config and compiler as ORIG, so each function of ORIG is byte-identical to
//! its instance in the target once relocated fields are masked; and a function
//! located that way tells, through its relocated fields, the addresses of what
//! it references (static variables, static callees, string literals).

use std::collections::{HashMap, HashSet};

use object::elf;
use suture_abi::target::{Target, TargetSym};

use crate::exports::Exports;
use crate::image::{u32_at, u64_at, Image};
use crate::kallsyms::{Instance, Kallsyms};
use crate::module::{kept_symbols, modinfo_name, module_key};
use crate::obj::{Aligned, Obj, Rel, Shn};
use crate::{Error, Result};

/// The object a patch targets, as far as it is known.
#[derive(Debug, Clone, Copy)]
pub enum TargetImage<'a> {
    /// vmlinux: its kallsyms (decoded from the image or read from a
    /// `/proc/kallsyms` copy) and, when available, the extracted ELF vmlinux,
    /// whose bytes decide between same-named symbols.
    Vmlinux {
        kallsyms: &'a Kallsyms,
        vmlinux: Option<&'a [u8]>,
    },
    /// A module, as its `.ko` file was shipped: its symtab gives the kallsyms
    /// order, its bytes and relocations decide between same-named symbols.
    Module { ko: &'a [u8] },
    /// Symbols only, from a `/proc/kallsyms` copy: vmlinux's, or for a module
    /// objname that module's entries. Names with several instances cannot be
    /// told apart without code.
    Kallsyms { kallsyms: &'a Kallsyms },
}

/// How one symbol with several instances in the target was pinned down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub name: String,
    pub sympos: u32,
    pub instances: usize,
    /// `bytes` (only this instance matches ORIG's code), `bytes+relocations`
    /// (several match the code, one matches what it references too), or
    /// `referenced by SYMBOL` (the address a located function or initialised
    /// object refers to, or the placement of a located symbol in the same section).
    pub how: String,
}

/// A symbol of ORIG with several instances in the target and no evidence for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    pub name: String,
    pub why: String,
}

#[derive(Debug, Clone, Default)]
pub struct TargetReport {
    /// Symbols that could not be pinned down are absent from `target.symbols`.
    pub target: Target,
    pub decisions: Vec<Decision>,
    /// Names ORIG defines or references that the target does not have at all
    /// (discarded at link time, or a wrong target).
    pub absent: Vec<String>,
    pub unresolved: Vec<Unresolved>,
    /// Functions of ORIG with a unique name whose bytes differ from the target's:
    /// a sign that ORIG does not reproduce the target build.
    pub mismatched: Vec<String>,
    /// Weak functions of ORIG whose name belongs to a strong definition
    /// elsewhere in the target (their own code is unnamed there): left out of
    /// `target.symbols`.
    pub weak_overridden: Vec<String>,
    /// How many of ORIG's functions were found byte-identical (relocated
    /// fields masked) in the target.
    pub verified_functions: usize,
    /// Likewise for ORIG's initialised objects.
    pub verified_objects: usize,
    /// Functions ORIG defines that the target has but that were neither
    /// verified nor found to differ (their instance was not pinned down).
    pub unverified_functions: Vec<String>,
    /// Functions ORIG defines (in allocated sections).
    pub defined_functions: usize,
    /// Whether code could be compared (an image or a .ko was given).
    pub compared_code: bool,
    /// Decisions worth telling the patch author (identical copies).
    pub warnings: Vec<String>,
}

impl TargetReport {
    /// Records that `name`'s instance at `sympos` is ORIG's, and how that
    /// was decided.
    fn decide(&mut self, name: &str, sympos: u32, instances: usize, how: String) {
        self.target
            .symbols
            .insert(name.to_string(), TargetSym::Unexported { sympos });
        self.decisions.push(Decision {
            name: name.to_string(),
            sympos,
            instances,
            how,
        });
    }
}

/// The differ's `Target` for every symbol ORIG defines or references; an error
/// naming every symbol whose instance could not be decided.
pub fn build_target(
    image: TargetImage,
    exports: &Exports,
    objname: &str,
    orig: &[u8],
) -> Result<Target> {
    let r = build_target_report(image, exports, objname, orig)?;
    // Nothing of ORIG found at all: a wrong target, not a list of ambiguities.
    if r.compared_code && r.defined_functions > 0 && r.verified_functions == 0 {
        return Err(Error::WrongTarget(format!(
            "none of ORIG's {} functions is in {objname} as ORIG has it ({} missing from its symbols, \
             {} with different code): ORIG is not part of {objname}, or was not built from its source, \
             config and compiler; for a module, pass the module's name and .ko",
            r.defined_functions,
            r.defined_functions - r.mismatched.len() - r.unverified_functions.len() - r.weak_overridden.len(),
            r.mismatched.len() + r.unverified_functions.len(),
        )));
    }
    if !r.unresolved.is_empty() {
        return Err(Error::Ambiguous(r.unresolved));
    }
    Ok(r.target)
}

/// The mapping in the image's address space (vmlinux: virtual addresses; a
/// module: keys per section and offset, see `module_key`).
trait Space {
    fn instances(&self, name: &str) -> Vec<Instance>;
    fn read(&self, addr: u64, len: usize) -> Option<&[u8]>;
    /// The address ORIG's relocation symbol has in the target, read back from the
    /// field linked into a located function at `func_addr` (the relocation sits
    /// `rel_off` bytes into the function).
    fn deref(&self, func_addr: u64, rel_off: u64, r: &Rel) -> Option<u64>;
    fn can_read(&self) -> bool;
    /// For a field [`Space::deref`] cannot place because it refers to a
    /// symbol the target does not define (a `.ko`'s reference to vmlinux or
    /// another module, resolved only at load): a key equal for two fields
    /// exactly when they reach the same symbol at the same offset, `None`
    /// unless that symbol is named `name` (ORIG's). Only for comparing copies
    /// with each other ([`interchangeable`]), never an address.
    fn external_key(&self, _func_addr: u64, _rel_off: u64, _r: &Rel, _name: &str) -> Option<u64> {
        None
    }
    /// Where the local symbol at `addr` is in the target's symbol table,
    /// when that order groups symbols by the object that defined them: a
    /// `.ko` is an `ld -r` of its units, which keeps each input object's
    /// local symbols together, in link order. `None` for vmlinux, whose
    /// kallsyms is sorted by address.
    fn local_order(&self, _addr: u64) -> Option<usize> {
        None
    }
}

struct VmlinuxSpace<'a> {
    kallsyms: &'a Kallsyms,
    image: Option<Image<'a>>,
    /// `vmlinux`, or a module when only its kallsyms entries are known.
    objname: &'a str,
}

impl Space for VmlinuxSpace<'_> {
    fn instances(&self, name: &str) -> Vec<Instance> {
        self.kallsyms.instances(self.objname, name)
    }
    fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        self.image.as_ref()?.bytes_at(addr, len)
    }
    fn can_read(&self) -> bool {
        self.image.is_some()
    }
    fn deref(&self, func_addr: u64, rel_off: u64, r: &Rel) -> Option<u64> {
        if !r.invertible() {
            return None;
        }
        let p = func_addr.checked_add(rel_off)?;
        let f = self.read(p, r.width())?;
        let field: u64 = match r.ty {
            elf::R_X86_64_64 | elf::R_X86_64_PC64 => u64_at(f, 0)?,
            elf::R_X86_64_32 => u32_at(f, 0)? as u64,
            // PC32, PLT32 and 32S are sign-extended.
            _ => u32_at(f, 0)? as i32 as i64 as u64,
        };
        let s = field.wrapping_sub(r.addend as u64);
        Some(if r.pc_relative() {
            s.wrapping_add(p)
        } else {
            s
        })
    }
}

struct ModuleSpace<'a> {
    name: String,
    obj: Obj<'a>,
    kept: Vec<usize>,
    by_name: HashMap<String, Vec<usize>>,
    /// Symbol-table index of the first local symbol at each key.
    local_at: HashMap<u64, usize>,
}

impl<'a> ModuleSpace<'a> {
    fn new(ko: &'a [u8]) -> Result<Self> {
        let obj = Obj::parse("target module", ko)?;
        let kept = kept_symbols(&obj);
        let name = modinfo_name(&obj).unwrap_or_default();
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (pos, &i) in kept.iter().enumerate() {
            by_name
                .entry(obj.symbols[i].name.clone())
                .or_default()
                .push(pos);
        }
        let mut local_at = HashMap::new();
        for &i in &kept {
            let sym = &obj.symbols[i];
            if let (elf::STB_LOCAL, Some(sec)) = (sym.bind, sym.sec()) {
                local_at.entry(module_key(sec, sym.value)).or_insert(i);
            }
        }
        Ok(ModuleSpace {
            name,
            obj,
            kept,
            by_name,
            local_at,
        })
    }
}

/// Where the exports of `module` that `target` reaches ([`TargetSym::OtherModule`])
/// are in that module's kallsyms, from its `.ko` (compressed or not): the
/// position of the exported (global) symbol among its same-named ones (0 when
/// the name is unique, as the kernel requires then), and its `__pfx_` padding
/// symbol when it has one (CALL_PADDING kernels), for calls. An export the
/// `.ko` does not define is an error: Module.symvers and the module disagree.
pub fn place_module_exports(target: &mut Target, module: &str, ko: &[u8]) -> Result<()> {
    let names: Vec<String> = target
        .symbols
        .iter()
        .filter(|(n, t)| {
            matches!(t, TargetSym::OtherModule { module: m, .. } if m == module)
                && !n.starts_with("__pfx_")
        })
        .map(|(n, _)| n.clone())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let plain = crate::decompress_module(ko)?;
    let buf = Aligned::new(&plain);
    let md = ModuleSpace::new(buf.bytes())?;
    let sym_of = |i: &Instance| &md.obj.symbols[md.kept[i.index]];
    let pos = |inst: &[Instance], at: usize| if inst.len() == 1 { 0 } else { inst[at].sympos };
    for name in names {
        let inst = md.instances(&name);
        let Some(at) = inst.iter().position(|i| sym_of(i).bind == elf::STB_GLOBAL) else {
            return Err(Error::Object {
                file: format!("{module}.ko"),
                msg: format!(
                    "does not define {name}, which Module.symvers says {module} exports: \
                     the module and Module.symvers come from different builds"
                ),
            });
        };
        let func = sym_of(&inst[at]);
        target.symbols.insert(
            name.clone(),
            TargetSym::OtherModule {
                module: module.to_string(),
                sympos: pos(&inst, at),
            },
        );
        // The padding ends where the function starts, in its section.
        let pfx_name = format!("__pfx_{name}");
        if target.symbols.contains_key(&pfx_name) {
            continue;
        }
        let pfx = md.instances(&pfx_name);
        if let Some(p) = pfx.iter().position(|i| {
            let s = sym_of(i);
            s.shn == func.shn && s.value.wrapping_add(s.size) == func.value && s.value < func.value
        }) {
            target.symbols.insert(
                pfx_name,
                TargetSym::OtherModule {
                    module: module.to_string(),
                    sympos: pos(&pfx, p),
                },
            );
        }
    }
    Ok(())
}

impl Space for ModuleSpace<'_> {
    fn instances(&self, name: &str) -> Vec<Instance> {
        let Some(v) = self.by_name.get(name) else {
            return Vec::new();
        };
        v.iter()
            .enumerate()
            .map(|(n, &pos)| {
                let s = &self.obj.symbols[self.kept[pos]];
                Instance {
                    index: pos,
                    sympos: n as u32 + 1,
                    addr: module_key(s.sec().unwrap_or(0), s.value),
                }
            })
            .collect()
    }
    fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let sec = ((addr >> 40) as usize).checked_sub(1)?;
        let off = (addr & ((1 << 40) - 1)) as usize;
        self.obj
            .sections
            .get(sec)?
            .data
            .get(off..off.checked_add(len)?)
    }
    fn can_read(&self) -> bool {
        true
    }
    fn deref(&self, func_addr: u64, rel_off: u64, r: &Rel) -> Option<u64> {
        // In a .ko the fields are still relocations: read the module's own
        // relocation at that place. Same field value on both sides means
        // S_orig + A_orig = S_ko + A_ko.
        let sec = ((func_addr >> 40) as usize).checked_sub(1)?;
        let at = (func_addr & ((1 << 40) - 1)) + rel_off;
        let kr = self.obj.relocs_in(sec, at, at + 1).first()?;
        if kr.ty != r.ty {
            return None;
        }
        let ks = &self.obj.symbols[kr.sym];
        let base = module_key(ks.sec()?, ks.value);
        Some(
            base.wrapping_add(kr.addend as u64)
                .wrapping_sub(r.addend as u64),
        )
    }
    fn external_key(&self, func_addr: u64, rel_off: u64, r: &Rel, name: &str) -> Option<u64> {
        let sec = ((func_addr >> 40) as usize).checked_sub(1)?;
        let at = (func_addr & ((1 << 40) - 1)) + rel_off;
        let kr = self.obj.relocs_in(sec, at, at + 1).first()?;
        let ks = &self.obj.symbols[kr.sym];
        if kr.ty != r.ty || ks.sec().is_some() || ks.name.is_empty() || ks.name != name {
            return None;
        }
        // One undefined symbol-table entry per name: its index names the
        // symbol. Above every module_key (section + 1 in bits 40 and up).
        Some((1 << 63) | ((kr.sym as u64) << 32) | (kr.addend.wrapping_sub(r.addend) as u32 as u64))
    }
    fn local_order(&self, addr: u64) -> Option<usize> {
        self.local_at.get(&addr).copied()
    }
}

/// Of several copies of a local function whose code matches ORIG's (a
/// static inline gcc did not inline, copied into several units of one
/// module, each copy calling its own unit's `.cold` part or reading its own
/// strings), the one placed where ORIG's symbol table puts it: a module's
/// symbol table keeps each unit's local symbols together and in the unit's
/// own order ([`Space::local_order`]), so ORIG's copy lies between the
/// nearest of ORIG's locals already located (by unique name or by code)
/// before it and after it in ORIG's order; another unit's copy lies outside
/// ORIG's block, so beyond those neighbours. With a neighbour on one side
/// only, the copy nearest to it on the open side is ORIG's. `None` without
/// neighbours, or when the order does not single out one copy.
fn among_own_locals(
    space: &dyn Space,
    orig: &Obj,
    addr_of: &HashMap<usize, (u64, String)>,
    func: usize,
    matches: &[(Instance, Vec<Site>)],
) -> Option<Instance> {
    // (ORIG index, order in the target) of the nearest neighbours.
    let mut before: Option<(usize, usize)> = None;
    let mut after: Option<(usize, usize)> = None;
    for (&j, (a, _)) in addr_of {
        let s = &orig.symbols[j];
        if j == func || s.bind != elf::STB_LOCAL || s.sec().is_none() {
            continue;
        }
        let Some(o) = space.local_order(*a) else {
            continue;
        };
        if j < func && before.is_none_or(|(k, _)| j > k) {
            before = Some((j, o));
        } else if j > func && after.is_none_or(|(k, _)| j < k) {
            after = Some((j, o));
        }
    }
    let placed: Vec<(usize, Instance)> = matches
        .iter()
        .filter_map(|(c, _)| Some((space.local_order(c.addr)?, *c)))
        .collect();
    match (before.map(|b| b.1), after.map(|a| a.1)) {
        (Some(lo), Some(hi)) if lo < hi => {
            let mut inside = placed.iter().filter(|(o, _)| lo < *o && *o < hi);
            let one = inside.next()?.1;
            inside.next().is_none().then_some(one)
        }
        (None, Some(hi)) => placed
            .iter()
            .filter(|(o, _)| *o < hi)
            .max_by_key(|(o, _)| *o)
            .map(|p| p.1),
        (Some(lo), None) => placed
            .iter()
            .filter(|(o, _)| *o > lo)
            .min_by_key(|(o, _)| *o)
            .map(|p| p.1),
        _ => None,
    }
}

/// Where one relocation of ORIG ended up in the target's copy of the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Site {
    /// The relocated field, at this offset from the start of the target's copy.
    Field(u64),
    /// A `jmp`/`jcc rel32` to another function of the same translation unit
    /// that the assembler shortened to rel8 in the target, where both were in
    /// one `.text` section (ORIG has one section per function, so it cannot):
    /// no field left, only the jump's destination.
    Relaxed(u64),
}

/// Does ORIG's code `orig` (starting at `fstart` in its section, relocations
/// `rels`) equal the target's copy at `addr`, relocated fields masked and
/// relaxed jumps allowed for? `Ok` gives where each relocation ended up;
/// `Err(offset)` the first ORIG byte that differs (`usize::MAX`: no bytes at
/// `addr`).
/// Offsets, relative to function `sym`, of its jump-label sites that objtool
/// turns into NOPs (`--hack-jump-label`: `__jump_table` entries whose key is
/// marked with +2, x86's `arch_static_branch`). Kernels that run objtool on
/// each object (6.1) ship objects with the NOPs already there; kernels that
/// run it on vmlinux.o only (IBT, 6.12) leave the compiler's `jmp` in a single
/// object, while the image has the NOP.
fn jump_label_nops(obj: &Obj, sym: usize) -> Vec<u64> {
    let f = &obj.symbols[sym];
    let Some(fsec) = f.sec() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, sec) in obj.sections.iter().enumerate() {
        if sec.name != "__jump_table" {
            continue;
        }
        let relocs = obj.relocs_in(i, 0, u64::MAX);
        // struct jump_entry on x86-64: s32 code, s32 target, long key.
        for r in relocs.iter().filter(|r| r.offset % 16 == 0) {
            let Some(key) = relocs.iter().find(|k| k.offset == r.offset + 8) else {
                continue;
            };
            let (cs, ks) = (&obj.symbols[r.sym], &obj.symbols[key.sym]);
            let key_addend = (ks.value as i64).wrapping_add(key.addend);
            let site = (cs.value as i64).wrapping_add(r.addend);
            if cs.sec() == Some(fsec)
                && key_addend & 2 != 0
                && site >= f.value as i64
                && (site as u64) < f.value + f.size
            {
                out.push(site as u64 - f.value);
            }
        }
    }
    out.sort_unstable();
    out
}

fn match_code(
    space: &dyn Space,
    addr: u64,
    orig: &[u8],
    fstart: u64,
    rels: &[Rel],
    nops: &[u64],
) -> Result<Vec<Site>, usize> {
    // The target's copy is never longer; near the end of a segment it may be
    // readable only in part.
    let mut len = orig.len();
    let img = loop {
        if let Some(b) = space.read(addr, len) {
            break b;
        }
        if len == 0 || orig.len() - len >= 64 {
            return Err(usize::MAX);
        }
        len -= 1;
    };
    let mut sites = Vec::with_capacity(rels.len());
    let (mut i, mut j, mut k) = (0usize, 0usize, 0usize);
    let field_at = |k: usize| rels.get(k).map(|r| (r.offset - fstart) as usize);
    while i < orig.len() {
        // Relocations overlapping already-consumed bytes (none in real code)
        // get no site; their symbols are simply not learnt from.
        while field_at(k).is_some_and(|o| o < i) {
            sites.push(Site::Field(u64::MAX));
            k += 1;
        }
        let next = field_at(k);
        let rel32_jump = |r: &Rel| r.pc_relative() && r.width() == 4;
        if next == Some(i + 1) && orig[i] == 0xe9 && rel32_jump(&rels[k]) {
            let (&op, rest) = img.get(j..).and_then(|s| s.split_first()).ok_or(i)?;
            if op == 0xeb {
                let d = *rest.first().ok_or(i)? as i8 as i64;
                sites.push(Site::Relaxed(
                    addr.wrapping_add(j as u64 + 2).wrapping_add(d as u64),
                ));
                (i, j, k) = (i + 5, j + 2, k + 1);
                continue;
            }
        }
        if next == Some(i + 2)
            && orig[i] == 0x0f
            && orig[i + 1] & 0xf0 == 0x80
            && rel32_jump(&rels[k])
        {
            let op = *img.get(j).ok_or(i)?;
            if op == 0x70 | (orig[i + 1] & 0x0f) {
                let d = *img.get(j + 1).ok_or(i)? as i8 as i64;
                sites.push(Site::Relaxed(
                    addr.wrapping_add(j as u64 + 2).wrapping_add(d as u64),
                ));
                (i, j, k) = (i + 6, j + 2, k + 1);
                continue;
            }
        }
        if next == Some(i) {
            let w = rels[k].width().max(1);
            if j + w > img.len() {
                return Err(i);
            }
            sites.push(Site::Field(j as u64));
            (i, j, k) = (i + w, j + w, k + 1);
            continue;
        }
        if nops.binary_search(&(i as u64)).is_ok() {
            // A jump-label `jmp` here, a NOP of the same length in the image.
            const NOPS: [(u8, &[u8]); 2] = [
                (0xeb, &[0x66, 0x90]),
                (0xe9, &[0x0f, 0x1f, 0x44, 0x00, 0x00]),
            ];
            if let Some((_, nop)) = NOPS.iter().find(|(op, _)| orig[i] == *op) {
                let n = nop.len();
                // A `jmp rel32` to a label of the same function has no relocation.
                if next.is_none_or(|o| o >= i + n)
                    && img.get(j..j + n) == Some(*nop)
                    && i + n <= orig.len()
                {
                    (i, j) = (i + n, j + n);
                    continue;
                }
            }
        }
        if img.get(j) != Some(&orig[i]) {
            return Err(i);
        }
        (i, j) = (i + 1, j + 1);
    }
    while sites.len() < rels.len() {
        sites.push(Site::Field(u64::MAX));
    }
    Ok(sites)
}

/// The address ORIG's relocation symbol has in the target, from where the
/// relocation ended up in a matched copy at `addr`.
fn site_symbol(space: &dyn Space, addr: u64, site: Site, r: &Rel) -> Option<u64> {
    match site {
        Site::Field(u64::MAX) => None,
        Site::Field(off) => space.deref(addr, off, r),
        // The jump lands on S + A + 4 (the field is the instruction's last 4 bytes).
        Site::Relaxed(dest) => Some(dest.wrapping_sub(r.addend.wrapping_add(4) as u64)),
    }
}

/// The instance to use when every instance matching ORIG's code is an
/// interchangeable copy: each relocated field of each copy resolves to the
/// same address (the same callee, the same variable, the same literal), so
/// the copies differ in nothing but where they are. The lowest position.
/// `None` when any field differs or cannot be read: copies that reference
/// their own unit's statics are not interchangeable.
fn interchangeable(
    space: &dyn Space,
    orig: &Obj,
    func: usize,
    matches: &[(Instance, Vec<Site>)],
) -> Option<Instance> {
    if matches.len() < 2 {
        return None;
    }
    let f = &orig.symbols[func];
    let rels = orig.relocs_in(f.sec()?, f.value, f.value + f.size);
    let targets = |(c, sites): &(Instance, Vec<Site>)| -> Option<Vec<u64>> {
        if sites.len() != rels.len() {
            return None;
        }
        rels.iter()
            .zip(sites)
            .map(|(r, &site)| {
                let at = match site_symbol(space, c.addr, site, r) {
                    Some(at) => at,
                    // A module's call to vmlinux (`__x86_return_thunk`, an
                    // export): the same symbol in every copy is the same callee.
                    None => match site {
                        Site::Field(off) if off != u64::MAX => {
                            return space.external_key(c.addr, off, r, &orig.symbols[r.sym].name)
                        }
                        _ => return None,
                    },
                };
                // A PC-relative reference to the copy itself (a recursive
                // call, a local jump table) moves with the copy.
                Some(if at >= c.addr && at < c.addr + f.size.max(1) {
                    at - c.addr
                } else {
                    at
                })
            })
            .collect()
    };
    let first = targets(&matches[0])?;
    for m in &matches[1..] {
        if targets(m)? != first {
            return None;
        }
    }
    matches.iter().map(|(c, _)| *c).min_by_key(|c| c.sympos)
}

struct Resolver<'s, 'o> {
    space: &'s dyn Space,
    orig: &'s Obj<'o>,
    /// Target address of ORIG's symbols, as far as known, with the function the
    /// evidence came from.
    addr_of: HashMap<usize, (u64, String)>,
    section_base: HashMap<usize, (u64, String)>,
    /// Addresses that evidence disagreed on: not used.
    conflicted: HashSet<usize>,
    conflicted_sec: HashSet<usize>,
    /// Functions of ORIG whose instance is known and byte-verified.
    located: HashMap<usize, u64>,
    processed: HashSet<usize>,
}

/// Records that evidence `from` puts `key` at `addr`. Evidence that disagrees
/// with an earlier record makes the key conflicted: never used again.
fn note(
    known: &mut HashMap<usize, (u64, String)>,
    conflicted: &mut HashSet<usize>,
    key: usize,
    addr: u64,
    from: &str,
) {
    if conflicted.contains(&key) {
        return;
    }
    match known.get(&key) {
        Some((a, _)) if *a != addr => {
            known.remove(&key);
            conflicted.insert(key);
        }
        Some(_) => {}
        None => {
            known.insert(key, (addr, from.to_string()));
        }
    }
}

impl<'s, 'o> Resolver<'s, 'o> {
    fn note_sym(&mut self, sym: usize, addr: u64, from: &str) {
        note(&mut self.addr_of, &mut self.conflicted, sym, addr, from);
    }
    fn note_section(&mut self, sec: usize, base: u64, from: &str) {
        note(
            &mut self.section_base,
            &mut self.conflicted_sec,
            sec,
            base,
            from,
        );
    }

    /// Where ORIG's symbol `sym` is in the target, if evidence says so.
    fn known(&self, sym: usize) -> Option<(u64, &str)> {
        if let Some((a, f)) = self.addr_of.get(&sym) {
            return Some((*a, f));
        }
        let s = &self.orig.symbols[sym];
        let sec = s.sec()?;
        let (b, f) = self.section_base.get(&sec)?;
        Some((b.wrapping_add(s.value), f))
    }

    /// Checks ORIG's symbol `sym` (function or initialised data) against the
    /// target at `addr`, relocated fields masked, and if it matches records
    /// what its relocations point to. `false` if the bytes differ.
    fn harvest(&mut self, sym: usize, addr: u64) -> bool {
        if self.processed.contains(&sym) {
            return true;
        }
        let Some((bytes, rels)) = self.orig.function(sym) else {
            return true;
        };
        if bytes.is_empty() || !self.space.can_read() {
            return true;
        }
        let f = &self.orig.symbols[sym];
        let nops = jump_label_nops(self.orig, sym);
        let Ok(sites) = match_code(self.space, addr, bytes, f.value, rels, &nops) else {
            return false;
        };
        self.processed.insert(sym);
        self.located.insert(sym, addr);
        let from = format!("referenced by {}", f.name);
        for (r, site) in rels.iter().copied().zip(sites) {
            let Some(s) = site_symbol(self.space, addr, site, &r) else {
                continue;
            };
            let rs = &self.orig.symbols[r.sym];
            if rs.st_type == elf::STT_SECTION {
                let Some(sec) = rs.sec() else { continue };
                // Merged strings do not keep their section's layout in the image.
                let merged = self.orig.sections[sec].flags & elf::SHF_MERGE as u64 != 0;
                if !merged {
                    self.note_section(sec, s, &from);
                }
            } else {
                self.note_sym(r.sym, s, &from);
                if let Some(sec) = rs.sec() {
                    if self.orig.sections[sec].flags & elf::SHF_MERGE as u64 == 0 {
                        self.note_section(sec, s.wrapping_sub(rs.value), &from);
                    }
                }
            }
        }
        true
    }

    /// Whether every checkable relocation of ORIG's function `func` agrees with
    /// the instance at `addr`: references to symbols located elsewhere must land
    /// there, and string literals must read the same.
    fn relocations_agree(&self, func: usize, addr: u64, sites: &[Site]) -> (bool, usize) {
        let f = &self.orig.symbols[func];
        let mut checked = 0;
        for (r, &site) in self
            .orig
            .relocs_in(f.sec().unwrap(), f.value, f.value + f.size)
            .iter()
            .zip(sites)
        {
            let Some(s) = site_symbol(self.space, addr, site, r) else {
                continue;
            };
            let rs = &self.orig.symbols[r.sym];
            let sec = rs.sec();
            let merged_strings = sec.is_some_and(|i| {
                let fl = self.orig.sections[i].flags;
                fl & elf::SHF_MERGE as u64 != 0 && fl & elf::SHF_STRINGS as u64 != 0
            });
            if merged_strings {
                // The literal referenced: the same bias k on both sides keeps the
                // comparison right whatever the instruction's length after the field.
                let k: i64 = if r.pc_relative() { 4 } else { 0 };
                let sdata = self.orig.sections[sec.unwrap()].data;
                let off = rs.value as i64 + r.addend + k;
                let Some(lit) = usize::try_from(off).ok().and_then(|o| sdata.get(o..)) else {
                    continue;
                };
                let lit = &lit[..lit
                    .iter()
                    .position(|&b| b == 0)
                    .map_or(lit.len(), |n| n + 1)];
                let at = s.wrapping_add(rs.value).wrapping_add((r.addend + k) as u64);
                checked += 1;
                if self.space.read(at, lit.len()) != Some(lit) {
                    return (false, checked);
                }
            } else if rs.st_type == elf::STT_SECTION {
                if let Some((b, _)) = sec.and_then(|i| self.section_base.get(&i)) {
                    checked += 1;
                    if *b != s {
                        return (false, checked);
                    }
                }
            } else if let Some((a, _)) = self.known(r.sym) {
                checked += 1;
                if a != s {
                    return (false, checked);
                }
            }
        }
        (true, checked)
    }
}

fn is_candidate(orig: &Obj, i: usize) -> bool {
    let s = &orig.symbols[i];
    // `.L` names are assembler-local labels that no linked image lists.
    if s.name.is_empty()
        || s.name.starts_with(".L")
        || matches!(s.st_type, elf::STT_SECTION | elf::STT_FILE)
    {
        return false;
    }
    match s.shn {
        Shn::Undef | Shn::Common => true,
        Shn::Sec(sec) => {
            orig.sections[sec].flags & elf::SHF_ALLOC as u64 != 0
                && !orig.sections[sec].name.starts_with(".discard")
        }
        _ => false,
    }
}

pub fn build_target_report(
    image: TargetImage,
    exports: &Exports,
    objname: &str,
    orig: &[u8],
) -> Result<TargetReport> {
    let orig_buf = Aligned::new(orig);
    let orig = Obj::parse("ORIG", orig_buf.bytes())?;
    let ko_plain;
    let ko_buf;
    let vm;
    let md;
    let space: &dyn Space = match image {
        TargetImage::Vmlinux { kallsyms, vmlinux } => {
            if objname != "vmlinux" {
                return Err(Error::Image(format!(
                    "the vmlinux image and its kallsyms are not the symbols of module {objname}; \
                     pass the module's .ko"
                )));
            }
            vm = VmlinuxSpace {
                kallsyms,
                image: vmlinux.map(Image::parse).transpose()?,
                objname: "vmlinux",
            };
            &vm
        }
        TargetImage::Kallsyms { kallsyms } => {
            vm = VmlinuxSpace {
                kallsyms,
                image: None,
                objname,
            };
            &vm
        }
        TargetImage::Module { ko } => {
            // Distributions ship modules compressed (6.12's are `.ko.xz`).
            ko_plain = crate::decompress_module(ko)?;
            ko_buf = Aligned::new(&ko_plain);
            md = ModuleSpace::new(ko_buf.bytes())?;
            if !md.name.is_empty() && md.name != objname {
                return Err(Error::Object {
                    file: "target module".into(),
                    msg: format!(
                        "is module {:?}, not {objname:?}; pass the .ko of the target module",
                        md.name
                    ),
                });
            }
            &md
        }
    };
    resolve(space, &orig, exports, objname)
}

fn resolve(
    space: &dyn Space,
    orig: &Obj,
    exports: &Exports,
    objname: &str,
) -> Result<TargetReport> {
    let mut rep = TargetReport {
        target: Target {
            objname: objname.to_string(),
            symbols: HashMap::new(),
        },
        ..Default::default()
    };
    let mut rv = Resolver {
        space,
        orig,
        addr_of: HashMap::new(),
        section_base: HashMap::new(),
        conflicted: HashSet::new(),
        conflicted_sec: HashSet::new(),
        located: HashMap::new(),
        processed: HashSet::new(),
    };
    // Symbols still to decide: ORIG index and the target's instances.
    let mut pending: Vec<(usize, Vec<Instance>)> = Vec::new();
    let mut seen_names = HashSet::new();
    for i in 0..orig.symbols.len() {
        if !is_candidate(orig, i) {
            continue;
        }
        let s = &orig.symbols[i];
        if !seen_names.insert(s.name.clone()) {
            continue;
        }
        let local = s.bind == elf::STB_LOCAL;
        let inst = space.instances(&s.name);
        // A module's reference to another module's export (that the module
        // does not define itself): reached through a klp relocation of this
        // module, applied when it loads, so that the patch module need not
        // depend on the other one. Its position among the other module's
        // symbols is [`place_module_exports`]'s to find; 0 until then.
        // (A weak reference stays a normal one: it may go unresolved, which a
        // klp relocation may not.)
        if s.bind == elf::STB_GLOBAL && s.shn == Shn::Undef && inst.is_empty() {
            if let Some(m) = exports.exporting_module(objname, &s.name) {
                rep.target.symbols.insert(
                    s.name.clone(),
                    TargetSym::OtherModule {
                        module: m.to_string(),
                        sympos: 0,
                    },
                );
                continue;
            }
        }
        // An exported function ORIG defines whose name other (static) symbols
        // share needs its position anyway: klp_func.old_sympos must pick it
        // out, and a klp relocation reaches an exported symbol as well as a
        // normal one. So only unique or undefined exports stay `Exported`.
        if !local
            && exports.reachable_from(objname, &s.name)
            && (inst.len() <= 1 || s.sec().is_none())
        {
            rep.target
                .symbols
                .insert(s.name.clone(), TargetSym::Exported);
            // Still evidence: an exported function of ORIG, once located,
            // tells where the statics it references are.
            if let ([one], Some(_)) = (inst.as_slice(), s.sec()) {
                rv.addr_of.insert(i, (one.addr, "unique name".into()));
            }
            continue;
        }
        match inst.len() {
            0 => rep.absent.push(s.name.clone()),
            1 => {
                rep.target
                    .symbols
                    .insert(s.name.clone(), TargetSym::Unexported { sympos: 0 });
                if s.sec().is_some() || s.shn == Shn::Undef {
                    rv.addr_of.insert(i, (inst[0].addr, "unique name".into()));
                }
                if let Some(sec) = s.sec() {
                    if orig.sections[sec].flags & elf::SHF_MERGE as u64 == 0 {
                        let from = format!("in the same section as {} (unique name)", s.name);
                        rv.note_section(sec, inst[0].addr.wrapping_sub(s.value), &from);
                    }
                }
            }
            _ => pending.push((i, inst)),
        }
    }
    // Uniquely named symbols: their bytes are checked before what they
    // reference is trusted.
    let mut unique: Vec<(usize, u64)> = rv
        .addr_of
        .iter()
        .filter(|(i, _)| orig.symbols[**i].sec().is_some())
        .map(|(i, (a, _))| (*i, *a))
        .collect();
    unique.sort();
    for (i, a) in unique {
        if !rv.harvest(i, a) && orig.symbols[i].is_func() {
            // A weak definition overridden at link time leaves its name to the
            // strong one: a different function, not a failed reproduction.
            if orig.symbols[i].bind == elf::STB_WEAK {
                rep.weak_overridden.push(orig.symbols[i].name.clone());
                rep.target.symbols.remove(&orig.symbols[i].name);
            } else {
                rep.mismatched.push(orig.symbols[i].name.clone());
            }
        }
    }
    rep.mismatched.sort();
    rep.weak_overridden.sort();

    // Byte matches per pending function, computed once.
    let mut byte_matches: HashMap<usize, Vec<(Instance, Vec<Site>)>> = HashMap::new();
    if space.can_read() {
        for (i, inst) in &pending {
            if !orig.symbols[*i].is_func() {
                continue;
            }
            let Some((bytes, rels)) = orig.function(*i) else {
                continue;
            };
            if bytes.is_empty() {
                continue;
            }
            let nops = jump_label_nops(orig, *i);
            let m = inst
                .iter()
                .filter_map(|c| {
                    Some((
                        *c,
                        match_code(space, c.addr, bytes, orig.symbols[*i].value, rels, &nops)
                            .ok()?,
                    ))
                })
                .collect();
            byte_matches.insert(*i, m);
        }
    }

    loop {
        let mut progress = false;
        let mut still = Vec::new();
        for (i, inst) in std::mem::take(&mut pending) {
            let s = &orig.symbols[i];
            let mut decided: Option<(Instance, String)> = None;
            if let Some(m) = byte_matches.get(&i) {
                if m.len() == 1 {
                    decided = Some((m[0].0, "bytes".into()));
                } else if m.len() > 1 {
                    let agree: Vec<Instance> = m
                        .iter()
                        .filter(|(c, sites)| {
                            let (ok, n) = rv.relocations_agree(i, c.addr, sites);
                            ok && n > 0
                        })
                        .map(|(c, _)| *c)
                        .collect();
                    if agree.len() == 1 {
                        decided = Some((agree[0], "bytes+relocations".into()));
                    }
                }
            }
            if decided.is_none() {
                if let Some((a, from)) = rv.known(i) {
                    let hits: Vec<Instance> =
                        inst.iter().filter(|c| c.addr == a).copied().collect();
                    if let Some(&first) = hits.first() {
                        // Byte-check a function found by reference before using it.
                        let ok = !s.is_func()
                            || byte_matches
                                .get(&i)
                                .is_none_or(|m| m.iter().any(|(c, _)| c.addr == a));
                        if ok {
                            decided = Some((first, from.to_string()));
                        }
                    }
                }
            }
            match decided {
                Some((c, how)) => {
                    progress = true;
                    rep.decide(&s.name, c.sympos, inst.len(), how);
                    rv.addr_of.insert(i, (c.addr, s.name.clone()));
                    if let Some(sec) = s.sec() {
                        if orig.sections[sec].flags & elf::SHF_MERGE as u64 == 0 {
                            let from = format!("in the same section as {}", s.name);
                            rv.note_section(sec, c.addr.wrapping_sub(s.value), &from);
                        }
                    }
                    if s.sec().is_some() {
                        rv.harvest(i, c.addr);
                    }
                }
                None => still.push((i, inst)),
            }
        }
        pending = still;
        if !progress || pending.is_empty() {
            break;
        }
    }

    for (i, inst) in pending {
        let s = &orig.symbols[i];
        if let Some(c) = byte_matches
            .get(&i)
            .and_then(|m| interchangeable(space, orig, i, m))
        {
            // Identical code with identical references (a static inline gcc
            // did not inline, in several units): any copy does what ORIG's
            // does, so the first stands for ORIG's.
            let n = byte_matches[&i].len();
            rep.warnings.push(format!(
                "{}: {n} of its {} instances are byte-identical copies that reference the same things; using the first (position {}): they are interchangeable",
                s.name,
                inst.len(),
                c.sympos
            ));
            rep.decide(
                &s.name,
                c.sympos,
                inst.len(),
                format!("identical copies ({n} interchangeable)"),
            );
            continue;
        }
        if let Some(c) = byte_matches
            .get(&i)
            .and_then(|m| among_own_locals(space, orig, &rv.addr_of, i, m))
        {
            let n = byte_matches[&i].len();
            rep.decide(
                &s.name,
                c.sympos,
                inst.len(),
                format!("the one of {n} matching copies where this object's own local symbols are in {objname}'s symbol table"),
            );
            continue;
        }
        let why = if !space.can_read() && objname == "vmlinux" {
            format!(
                "{} instances and no kernel image to compare code with; pass the target's \
                 /boot/vmlinuz-RELEASE (install linux-image-RELEASE) as well",
                inst.len()
            )
        } else if !space.can_read() {
            format!(
                "{} instances in {objname} and no code to compare with; pass the module's .ko file",
                inst.len()
            )
        } else if let Some(m) = byte_matches.get(&i) {
            if m.is_empty() {
                format!(
                    "none of its {} instances matches ORIG's code: ORIG was not built from the \
                     target's source, config and compiler",
                    inst.len()
                )
            } else {
                format!(
                    "{} of its {} instances match ORIG's code and what it references does not tell them apart",
                    m.len(),
                    inst.len()
                )
            }
        } else if s.sec().is_none() {
            format!(
                "{} instances and ORIG only references it, from nothing located in the target",
                inst.len()
            )
        } else {
            format!(
                "{} instances and nothing of ORIG located in the target references it or shares its section",
                inst.len()
            )
        };
        rep.unresolved.push(Unresolved {
            name: s.name.clone(),
            why,
        });
    }
    rep.verified_functions = rv
        .located
        .keys()
        .filter(|&&i| orig.symbols[i].is_func())
        .count();
    rep.verified_objects = rv.located.len() - rep.verified_functions;
    let absent: HashSet<&str> = rep.absent.iter().map(String::as_str).collect();
    let skip: HashSet<&str> = rep
        .mismatched
        .iter()
        .chain(&rep.weak_overridden)
        .map(String::as_str)
        .collect();
    let mut seen = HashSet::new();
    for (i, s) in orig.symbols.iter().enumerate() {
        if s.is_func()
            && s.sec().is_some()
            && is_candidate(orig, i)
            && !rv.located.contains_key(&i)
            && !absent.contains(s.name.as_str())
            && !skip.contains(s.name.as_str())
            && seen.insert(s.name.as_str())
        {
            rep.unverified_functions.push(s.name.clone());
        }
    }
    rep.unverified_functions.sort();
    rep.compared_code = space.can_read();
    let mut seen = HashSet::new();
    rep.defined_functions = (0..orig.symbols.len())
        .filter(|&i| {
            let s = &orig.symbols[i];
            s.is_func()
                && s.sec().is_some()
                && is_candidate(orig, i)
                && seen.insert(s.name.as_str())
        })
        .count();
    add_prefix_symbols(space, orig, &rv.addr_of, &mut rep.target);
    rep.absent.sort();
    rep.decisions.sort_by(|a, b| a.name.cmp(&b.name));
    rep.unresolved.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rep)
}

/// CALL_PADDING kernels (6.2+ with `CALL_PADDING`, e.g. Debian's 6.12) name the
/// padding before each function `__pfx_NAME`, in kallsyms and in a module's
/// symbol table. A call the patch makes through a livepatch relocation has to
/// enter its callee there: the kernel keeps the call-depth accounting thunk in
/// the padding (NOPs when tracking is off), and it cannot redirect such a call
/// itself because livepatch relocates it only after the module's call sites
/// were processed. ORIG, one object objtool never saw, has no `__pfx_`
/// symbols, so for every symbol reached through kallsyms whose instance is
/// known, the prefix right before that instance (at most 64 bytes, the largest
/// padding the kernel configures) is added with its own position.
fn add_prefix_symbols(
    space: &dyn Space,
    orig: &Obj,
    addr_of: &HashMap<usize, (u64, String)>,
    target: &mut Target,
) {
    let mut found = Vec::new();
    for (&i, &(addr, _)) in addr_of {
        let name = &orig.symbols[i].name;
        if !matches!(target.symbols.get(name), Some(TargetSym::Unexported { .. })) {
            continue;
        }
        let pname = format!("__pfx_{name}");
        if target.symbols.contains_key(&pname) {
            continue;
        }
        let inst = space.instances(&pname);
        if let Some(c) = inst.iter().find(|c| c.addr < addr && addr - c.addr <= 64) {
            found.push((pname, if inst.len() == 1 { 0 } else { c.sympos }));
        }
    }
    for (pname, sympos) in found {
        target
            .symbols
            .insert(pname, TargetSym::Unexported { sympos });
    }
}

/// A function of ORIG that differs from its instance in the image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{function}: {detail}")]
pub struct Mismatch {
    pub function: String,
    pub detail: String,
    /// The first differing byte (offset into the function), when the bytes differ.
    pub offset: Option<usize>,
}

/// Checks that ORIG's `func_name` is, relocated fields masked, byte-identical to
/// its instance in the on-disk vmlinux (the kernel patches its text at boot, the
/// file is as linked). With several instances of the name, one must match.
pub fn verify_function(
    vmlinux: &[u8],
    kallsyms: &Kallsyms,
    orig_obj: &[u8],
    func_name: &str,
) -> Result<(), Mismatch> {
    let mm = |detail: String, offset| Mismatch {
        function: func_name.to_string(),
        detail,
        offset,
    };
    let img = Image::parse(vmlinux).map_err(|e| mm(e.to_string(), None))?;
    let orig_buf = Aligned::new(orig_obj);
    let orig = Obj::parse("ORIG", orig_buf.bytes()).map_err(|e| mm(e.to_string(), None))?;
    let i = orig
        .by_name
        .get(func_name)
        .and_then(|v| {
            v.iter()
                .copied()
                .find(|&i| orig.symbols[i].is_func() && orig.symbols[i].sec().is_some())
        })
        .ok_or_else(|| mm("ORIG does not define this function".into(), None))?;
    let (bytes, rels) = orig
        .function(i)
        .ok_or_else(|| mm("ORIG's symbol lies outside its section".into(), None))?;
    let inst = kallsyms.instances("vmlinux", func_name);
    if inst.is_empty() {
        return Err(mm(
            "the target kernel has no symbol of this name".into(),
            None,
        ));
    }
    // Relocations to uniquely named symbols must land on them: same code
    // shape calling another function is not the same function.
    let space = VmlinuxSpace {
        kallsyms,
        image: Some(img),
        objname: "vmlinux",
    };
    let fvalue = orig.symbols[i].value;
    let nops = jump_label_nops(&orig, i);
    let wrong_target = |addr: u64, sites: &[Site]| -> Option<String> {
        rels.iter().zip(sites).find_map(|(r, &site)| {
            let rs = &orig.symbols[r.sym];
            if rs.st_type == elf::STT_SECTION || rs.name.is_empty() {
                return None;
            }
            let want = kallsyms.unique_addr(&rs.name)?;
            let got = site_symbol(&space, addr, site, r)?;
            (got != want).then(|| {
                format!(
                    "the relocation at +{:#x} reaches {got:#x} in the image, not {} at {want:#x}",
                    r.offset - fvalue,
                    rs.name
                )
            })
        })
    };
    let mut first_diff: Option<(usize, u64)> = None;
    let mut reloc_diff = None;
    for c in &inst {
        match match_code(&space, c.addr, bytes, fvalue, rels, &nops) {
            Ok(sites) => match wrong_target(c.addr, &sites) {
                None => return Ok(()),
                Some(why) => reloc_diff = Some(why),
            },
            Err(usize::MAX) => {}
            Err(off) => {
                if !matches!(first_diff, Some((o, _)) if o >= off) {
                    first_diff = Some((off, c.addr));
                }
            }
        }
    }
    if let Some(why) = reloc_diff {
        return Err(mm(
            format!("{why}: rebuild with the target's source, config and compiler"),
            None,
        ));
    }
    match first_diff {
        Some((off, addr)) => Err(mm(
            format!(
                "differs from the image ({} instance(s); the closest, at {addr:#x}, first differs at \
                 ORIG's byte +{off:#x} ({:#04x})): rebuild with the target's source, config and compiler",
                inst.len(),
                bytes[off],
            ),
            Some(off),
        )),
        None => Err(mm("the image has no bytes at the symbol's address (not in a loadable segment)".into(), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kallsyms::KSym;
    use object::write::{Object, Relocation, Symbol, SymbolSection};
    use object::{
        Architecture, BinaryFormat, Endianness, RelocationFlags, SectionKind, SymbolFlags,
        SymbolKind, SymbolScope,
    };

    const BASE: u64 = 0xffffffff81000000;

    /// ORIG: `show` calls `helper`, loads the literal "two" and reads the
    /// static `counter`; `twin` calls the exported `sysfs_emit`.
    fn orig() -> Vec<u8> {
        orig_with(false)
    }

    fn orig_with(global_helper: bool) -> Vec<u8> {
        let mut o = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let func = |o: &mut Object, name: &str, code: &[u8]| {
            let sec = o.add_section(
                vec![],
                format!(".text.{name}").into_bytes(),
                SectionKind::Text,
            );
            o.append_section_data(sec, code, 16);
            let sym = o.add_symbol(Symbol {
                name: name.as_bytes().to_vec(),
                value: 0,
                size: code.len() as u64,
                kind: SymbolKind::Text,
                scope: if global_helper && name == "helper" {
                    SymbolScope::Linkage
                } else {
                    SymbolScope::Compilation
                },
                weak: false,
                section: SymbolSection::Section(sec),
                flags: SymbolFlags::None,
            });
            (sec, sym)
        };
        let show_code = [
            0xe8, 0, 0, 0, 0, 0x48, 0x8d, 0x3d, 0, 0, 0, 0, 0x8b, 0x05, 0, 0, 0, 0, 0xc3,
        ];
        let (show_sec, _) = func(&mut o, "show", &show_code);
        let (_, helper) = func(&mut o, "helper", &[0xc3]);
        let (twin_sec, _) = func(&mut o, "twin", &[0xe8, 0, 0, 0, 0, 0xc3]);
        // Reads its unit's own static: copies in two units are not interchangeable.
        let (pal_sec, _) = func(&mut o, "pal", &[0x8b, 0x05, 0, 0, 0, 0, 0xc3]);
        // je helper; jmp helper: rel32 forms, one relocation each.
        let (jumper_sec, _) = func(
            &mut o,
            "jumper",
            &[0x0f, 0x84, 0, 0, 0, 0, 0xe9, 0, 0, 0, 0],
        );
        let strs = o.add_section(
            vec![],
            b".rodata.str1.1".to_vec(),
            SectionKind::ReadOnlyString,
        );
        o.append_section_data(strs, b"one\0two\0", 1);
        let strs_sym = o.section_symbol(strs);
        let bss = o.add_section(
            vec![],
            b".bss.counter".to_vec(),
            SectionKind::UninitializedData,
        );
        o.append_section_bss(bss, 4, 4);
        let bss_sym = o.section_symbol(bss);
        o.add_symbol(Symbol {
            name: b"counter".to_vec(),
            value: 0,
            size: 4,
            kind: SymbolKind::Data,
            scope: SymbolScope::Compilation,
            weak: false,
            section: SymbolSection::Section(bss),
            flags: SymbolFlags::None,
        });
        let tally_sec = o.add_section(
            vec![],
            b".bss.tally".to_vec(),
            SectionKind::UninitializedData,
        );
        o.append_section_bss(tally_sec, 4, 4);
        let tally = o.add_symbol(Symbol {
            name: b"tally".to_vec(),
            value: 0,
            size: 4,
            kind: SymbolKind::Data,
            scope: SymbolScope::Compilation,
            weak: false,
            section: SymbolSection::Section(tally_sec),
            flags: SymbolFlags::None,
        });
        let emit = o.add_symbol(Symbol {
            name: b"sysfs_emit".to_vec(),
            value: 0,
            size: 0,
            kind: SymbolKind::Text,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Undefined,
            flags: SymbolFlags::None,
        });
        let rel = |o: &mut Object, sec, offset, symbol, addend, r_type| {
            o.add_relocation(
                sec,
                Relocation {
                    offset,
                    symbol,
                    addend,
                    flags: RelocationFlags::Elf { r_type },
                },
            )
            .unwrap()
        };
        rel(&mut o, show_sec, 1, helper, -4, elf::R_X86_64_PLT32);
        // "two" is at offset 4: the addend is 4 - 4.
        rel(&mut o, show_sec, 8, strs_sym, 0, elf::R_X86_64_PC32);
        rel(&mut o, show_sec, 14, bss_sym, -4, elf::R_X86_64_PC32);
        rel(&mut o, twin_sec, 1, emit, -4, elf::R_X86_64_PLT32);
        rel(&mut o, pal_sec, 2, tally, -4, elf::R_X86_64_PC32);
        rel(&mut o, jumper_sec, 2, helper, -4, elf::R_X86_64_PC32);
        rel(&mut o, jumper_sec, 7, helper, -4, elf::R_X86_64_PLT32);
        o.write().unwrap()
    }

    /// A linked image: two byte-identical `show`s (the first calls `decoy` and
    /// reads the first `counter`, the second calls `helper` and reads the
    /// second), `helper`, `decoy`, two identical `twin`s, the literal, two counters.
    fn image() -> (Vec<u8>, Kallsyms) {
        let mut text = vec![0xccu8; 0x600];
        let put_rel = |text: &mut Vec<u8>, at: u64, target: u64| {
            let p = BASE + at;
            let v = (target.wrapping_sub(p + 4)) as i32;
            text[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
        };
        for (a, call, ctr) in [(0x000u64, 0x300u64, 0x500u64), (0x100, 0x200, 0x504)] {
            let code = [
                0xe8, 0, 0, 0, 0, 0x48, 0x8d, 0x3d, 0, 0, 0, 0, 0x8b, 0x05, 0, 0, 0, 0, 0xc3,
            ];
            text[a as usize..a as usize + code.len()].copy_from_slice(&code);
            put_rel(&mut text, a + 1, BASE + call);
            put_rel(&mut text, a + 8, BASE + 0x400);
            put_rel(&mut text, a + 14, BASE + ctr);
        }
        text[0x200] = 0xc3;
        text[0x300] = 0xc3;
        // Two `jumper`s shortened to rel8 by the assembler: the first jumps to
        // helper, the second to decoy.
        for (a, dest) in [(0x210usize, 0x200usize), (0x2a0, 0x300)] {
            let d = |next: usize| (dest as i64 - next as i64) as i8 as u8;
            text[a..a + 4].copy_from_slice(&[0x74, d(a + 2), 0xeb, d(a + 4)]);
        }
        for a in [0x340u64, 0x380] {
            text[a as usize..a as usize + 6].copy_from_slice(&[0xe8, 0, 0, 0, 0, 0xc3]);
            put_rel(&mut text, a + 1, BASE + 0x3c0);
        }
        for (a, t) in [(0x440u64, 0x508u64), (0x480, 0x50c)] {
            text[a as usize..a as usize + 7].copy_from_slice(&[0x8b, 0x05, 0, 0, 0, 0, 0xc3]);
            put_rel(&mut text, a + 2, BASE + t);
        }
        text[0x400..0x404].copy_from_slice(b"two\0");
        let mut elf = vec![0u8; 0x1000];
        elf[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
        elf[0x10] = 2;
        elf[0x12] = 0x3e;
        elf[0x20] = 64;
        elf[0x36] = 56;
        elf[0x38] = 1;
        let ph = 64;
        elf[ph] = 1;
        elf[ph + 8..ph + 16].copy_from_slice(&0x1000u64.to_le_bytes());
        elf[ph + 16..ph + 24].copy_from_slice(&BASE.to_le_bytes());
        elf[ph + 32..ph + 40].copy_from_slice(&(text.len() as u64).to_le_bytes());
        elf.extend_from_slice(&text);
        let sym = |a: u64, n: &str| KSym {
            addr: BASE + a,
            kind: 't',
            name: n.into(),
            module: None,
        };
        let k = Kallsyms::from_symbols(vec![
            sym(0x000, "show"),
            sym(0x100, "show"),
            sym(0x200, "helper"),
            sym(0x210, "jumper"),
            sym(0x2a0, "jumper"),
            sym(0x300, "decoy"),
            sym(0x340, "twin"),
            sym(0x380, "twin"),
            sym(0x3c0, "sysfs_emit"),
            sym(0x440, "pal"),
            sym(0x480, "pal"),
            sym(0x500, "counter"),
            sym(0x504, "counter"),
            sym(0x508, "tally"),
            sym(0x50c, "tally"),
        ]);
        (elf, k)
    }

    #[test]
    fn relocations_decide_between_identical_bytes_and_locate_data() {
        let (img, k) = image();
        let exports = Exports::parse("0x1\tsysfs_emit\tvmlinux\tEXPORT_SYMBOL_GPL\t\n").unwrap();
        let o = orig();
        let rep = build_target_report(
            TargetImage::Vmlinux {
                kallsyms: &k,
                vmlinux: Some(&img),
            },
            &exports,
            "vmlinux",
            &o,
        )
        .unwrap();
        let t = &rep.target.symbols;
        assert_eq!(t["show"], TargetSym::Unexported { sympos: 2 });
        assert_eq!(t["counter"], TargetSym::Unexported { sympos: 2 });
        assert_eq!(t["helper"], TargetSym::Unexported { sympos: 0 });
        assert_eq!(t["sysfs_emit"], TargetSym::Exported);
        let how: HashMap<&str, &str> = rep
            .decisions
            .iter()
            .map(|d| (d.name.as_str(), d.how.as_str()))
            .collect();
        assert_eq!(how["show"], "bytes+relocations");
        assert_eq!(how["counter"], "referenced by show");
        assert_eq!(t["jumper"], TargetSym::Unexported { sympos: 1 });
        assert_eq!(how["jumper"], "bytes+relocations");
        // Identical code calling the same function: interchangeable copies,
        // the first one used, and the author told.
        assert_eq!(t["twin"], TargetSym::Unexported { sympos: 1 });
        assert_eq!(how["twin"], "identical copies (2 interchangeable)");
        assert!(
            rep.warnings
                .iter()
                .any(|w| w.starts_with("twin: 2 of its 2 instances are byte-identical copies")),
            "{:?}",
            rep.warnings
        );
        // Identical code reading each unit's own static: nothing tells them
        // apart, and they are not interchangeable.
        let unresolved: Vec<&str> = rep.unresolved.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(unresolved, ["pal", "tally"]);
        assert!(
            rep.unresolved[0].why.contains("2 of its 2 instances match"),
            "{}",
            rep.unresolved[0].why
        );
        let e = build_target(
            TargetImage::Vmlinux {
                kallsyms: &k,
                vmlinux: Some(&img),
            },
            &exports,
            "vmlinux",
            &o,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pal") && !e.contains("twin"), "{e}");
    }

    /// A `.ko` with two byte-identical `twin`s, each calling an undefined
    /// (vmlinux) function: `callee` of the first, of the second `callee` too
    /// or, with `differ`, `other`.
    fn module_with_twins(callee: &str, differ: bool) -> Vec<u8> {
        let mut o = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let text = o.add_section(vec![], b".text".to_vec(), SectionKind::Text);
        o.append_section_data(text, &[0xe8, 0, 0, 0, 0, 0xc3, 0xcc, 0xcc], 16);
        o.append_section_data(text, &[0xe8, 0, 0, 0, 0, 0xc3], 8);
        let mut undef = |name: &str| {
            o.add_symbol(Symbol {
                name: name.as_bytes().to_vec(),
                value: 0,
                size: 0,
                kind: SymbolKind::Text,
                scope: SymbolScope::Linkage,
                weak: false,
                section: SymbolSection::Undefined,
                flags: SymbolFlags::None,
            })
        };
        let first = undef(callee);
        let second = if differ { undef("other") } else { first };
        for (value, to) in [(0u64, first), (8, second)] {
            o.add_symbol(Symbol {
                name: b"twin".to_vec(),
                value,
                size: 6,
                kind: SymbolKind::Text,
                scope: SymbolScope::Compilation,
                weak: false,
                section: SymbolSection::Section(text),
                flags: SymbolFlags::None,
            });
            o.add_relocation(
                text,
                Relocation {
                    offset: value + 1,
                    symbol: to,
                    addend: -4,
                    flags: RelocationFlags::Elf {
                        r_type: elf::R_X86_64_PLT32,
                    },
                },
            )
            .unwrap();
        }
        o.write().unwrap()
    }

    #[test]
    fn identical_copies_in_a_module_calling_the_same_vmlinux_function_are_interchangeable() {
        let o = orig();
        let exports = Exports::parse("0x1\tsysfs_emit\tvmlinux\tEXPORT_SYMBOL_GPL\t\n").unwrap();
        let report =
            |ko: &[u8]| build_target_report(TargetImage::Module { ko }, &exports, "x", &o).unwrap();
        // In a .ko a call to vmlinux stays a relocation against an undefined
        // symbol: the same one in both copies.
        let rep = report(&module_with_twins("sysfs_emit", false));
        assert_eq!(
            rep.target.symbols["twin"],
            TargetSym::Unexported { sympos: 1 }
        );
        assert!(
            rep.warnings
                .iter()
                .any(|w| w.starts_with("twin: 2 of its 2 instances are byte-identical copies")),
            "{:?}",
            rep.warnings
        );
        // Different callees, or both calling something ORIG does not: not
        // interchangeable.
        for ko in [
            module_with_twins("sysfs_emit", true),
            module_with_twins("other", false),
        ] {
            let rep = report(&ko);
            assert!(!rep.target.symbols.contains_key("twin"));
            assert!(
                rep.unresolved.iter().any(|u| u.name == "twin"),
                "{:?}",
                rep.unresolved
            );
        }
    }

    #[test]
    fn exported_functions_sharing_a_name_get_their_position() {
        let (img, k) = image();
        let exports = Exports::parse("0x1\thelper\tvmlinux\tEXPORT_SYMBOL\t\n").unwrap();
        let t = |k: &Kallsyms| {
            build_target_report(
                TargetImage::Vmlinux {
                    kallsyms: k,
                    vmlinux: Some(&img),
                },
                &exports,
                "vmlinux",
                &orig_with(true),
            )
            .unwrap()
            .target
            .symbols["helper"]
                .clone()
        };
        assert_eq!(t(&k), TargetSym::Exported);
        // A static variable elsewhere is also called helper: klp_func.old_sympos
        // for a patched helper must say which.
        let mut syms = k.symbols().to_vec();
        syms.push(KSym {
            addr: BASE + 0x508,
            kind: 'd',
            name: "helper".into(),
            module: None,
        });
        assert_eq!(
            t(&Kallsyms::from_symbols(syms)),
            TargetSym::Unexported { sympos: 1 }
        );
    }

    #[test]
    fn module_symbols_from_proc_kallsyms() {
        let k = crate::parse_proc_kallsyms(
            "ffffffff81000000 t show\n\
             ffffffffc0000000 t show\t[mymod]\n\
             ffffffffc0000100 t helper\t[mymod]\n\
             ffffffffc0000200 t show\t[mymod]\n\
             ffffffffc1000000 t helper\t[othermod]\n",
        )
        .unwrap();
        let rep = build_target_report(
            TargetImage::Kallsyms { kallsyms: &k },
            &Exports::default(),
            "mymod",
            &orig(),
        )
        .unwrap();
        assert_eq!(rep.target.objname, "mymod");
        assert_eq!(
            rep.target.symbols["helper"],
            TargetSym::Unexported { sympos: 0 }
        );
        let u = rep.unresolved.iter().find(|u| u.name == "show").unwrap();
        assert!(
            u.why.contains("2 instances in mymod") && u.why.contains(".ko"),
            "{}",
            u.why
        );
        assert!(rep.absent.contains(&"counter".to_string()));
        // vmlinux's image says nothing about a module.
        let (img, vk) = image();
        let e = build_target(
            TargetImage::Vmlinux {
                kallsyms: &vk,
                vmlinux: Some(&img),
            },
            &Exports::default(),
            "mymod",
            &orig(),
        );
        assert!(e.unwrap_err().to_string().contains(".ko"));
    }

    #[test]
    fn an_object_of_another_target_is_refused_as_such() {
        let (img, _) = image();
        let other = Kallsyms::from_symbols(vec![KSym {
            addr: BASE,
            kind: 'T',
            name: "_text".into(),
            module: None,
        }]);
        let t = TargetImage::Vmlinux {
            kallsyms: &other,
            vmlinux: Some(&img),
        };
        let e = build_target(t, &Exports::default(), "vmlinux", &orig()).unwrap_err();
        assert!(matches!(e, Error::WrongTarget(_)), "{e}");
        assert!(e.to_string().contains("none of ORIG's 5 functions"), "{e}");
        // Without code to compare, missing symbols are only listed as absent.
        let rep = build_target_report(
            TargetImage::Kallsyms { kallsyms: &other },
            &Exports::default(),
            "vmlinux",
            &orig(),
        )
        .unwrap();
        assert_eq!(
            rep.absent,
            [
                "counter",
                "helper",
                "jumper",
                "pal",
                "show",
                "sysfs_emit",
                "tally",
                "twin"
            ]
        );
    }

    /// Corrupted objects and images give errors or reports, never panics.
    #[test]
    fn corrupted_inputs_do_not_panic() {
        let (img, k) = image();
        let o = orig();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..3000 {
            let (mut o2, mut img2) = (o.clone(), img.clone());
            for _ in 0..1 + rnd() % 4 {
                let target = if round % 2 == 0 { &mut o2 } else { &mut img2 };
                let i = (rnd() as usize) % target.len();
                target[i] = rnd() as u8;
            }
            if round % 7 == 0 {
                let n = (rnd() as usize) % o2.len();
                o2.truncate(n);
            }
            let t = TargetImage::Vmlinux {
                kallsyms: &k,
                vmlinux: Some(&img2),
            };
            let _ = build_target_report(t, &Exports::default(), "vmlinux", &o2);
            let _ = verify_function(&img2, &k, &o2, "show");
            let _ = verify_function(&img2, &k, &o2, "jumper");
            let _ = crate::module_symbols(&o2, "x.ko");
            let _ = build_target_report(
                TargetImage::Module { ko: &o2 },
                &Exports::default(),
                "x",
                &o,
            );
        }
    }

    #[test]
    fn a_wrong_literal_rules_an_instance_out() {
        let (mut img, k) = image();
        // The literal now reads "tw!": no `show` agrees, helper alone cannot
        // decide since the string check fails for both.
        img[0x1000 + 0x402] = b'!';
        let o = orig();
        let rep = build_target_report(
            TargetImage::Vmlinux {
                kallsyms: &k,
                vmlinux: Some(&img),
            },
            &Exports::default(),
            "vmlinux",
            &o,
        )
        .unwrap();
        assert!(
            rep.unresolved.iter().any(|u| u.name == "show"),
            "{:?}",
            rep.decisions
        );
    }

    #[test]
    fn verify_function_reports_the_first_difference() {
        let (mut img, k) = image();
        let o = orig();
        verify_function(&img, &k, &o, "show").unwrap();
        for b in [0x1000 + 0x12usize, 0x1000 + 0x100 + 0x12] {
            img[b] = 0x90;
        }
        let m = verify_function(&img, &k, &o, "show").unwrap_err();
        assert_eq!(m.offset, Some(0x12));
        let m = verify_function(&img[..0x800], &k, &o, "show").unwrap_err();
        assert_eq!(m.offset, None, "{m}");
        // Same bytes, but the call of the only byte-matching `show` goes to decoy.
        let (img, k) = image();
        let k2 = Kallsyms::from_symbols(
            k.symbols()
                .iter()
                .filter(|s| s.addr != BASE + 0x100)
                .cloned()
                .collect(),
        );
        let m = verify_function(&img, &k2, &o, "show").unwrap_err();
        assert!(m.to_string().contains("not helper"), "{m}");
        verify_function(&img, &k, &o, "jumper").unwrap();
        let k3 = Kallsyms::from_symbols(
            k.symbols()
                .iter()
                .filter(|s| s.addr != BASE + 0x210)
                .cloned()
                .collect(),
        );
        let m = verify_function(&img, &k3, &o, "jumper").unwrap_err();
        assert!(m.to_string().contains("not helper"), "{m}");
        assert_eq!(m.offset, None, "{m}");
    }

    #[test]
    fn bad_objects_are_errors() {
        let (img, k) = image();
        let t = TargetImage::Vmlinux {
            kallsyms: &k,
            vmlinux: Some(&img),
        };
        assert!(build_target(t, &Exports::default(), "vmlinux", b"\x7fELF").is_err());
        assert!(
            build_target(t, &Exports::default(), "vmlinux", &img).is_err(),
            "an executable is not ORIG"
        );
        let bad = TargetImage::Vmlinux {
            kallsyms: &k,
            vmlinux: Some(b"junk"),
        };
        assert!(build_target(bad, &Exports::default(), "vmlinux", &orig()).is_err());
    }
}

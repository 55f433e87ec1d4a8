//! Inclusion, special-section slicing and the klp object.

use std::collections::{BTreeMap, VecDeque};

use suture_elf::fx::{FxHashMap as HashMap, FxHashSet as HashSet};

use suture_elf::*;

use crate::model::Target;
use crate::pipeline::{Diff, Status};
use crate::{Error, Outcome, Patch, Refusal, ReplacedFunc};

/// Sections sliced entry by entry, keeping entries that point into included code.
const SLICED: &[&str] = &[
    "__bug_table",
    "__ex_table",
    "__jump_table",
    ".altinstructions",
    ".static_call_sites",
    ".return_sites",
    ".retpoline_sites",
    ".call_sites",
    ".smp_locks",
    ".parainstructions",
    ".printk_index",
    ".ibt_endbr_seal",
    ".kcfi_traps",
];

/// Sections objtool writes and, when it runs at module link, writes again
/// for the whole module (see `Options::objtool_at_link`).
const OBJTOOL_LINK_MADE: &[&str] = &[
    ".orc_unwind_ip",
    ".return_sites",
    ".retpoline_sites",
    ".call_sites",
    ".ibt_endbr_seal",
];

/// Sections that only make sense whole and only when a kept entry uses them.
fn whole_on_demand(name: &str) -> bool {
    matches!(
        name,
        ".fixup" | ".altinstr_replacement" | ".altinstr_aux" | ".text..refcount"
    )
}

struct Inc<'d, 'a> {
    d: &'d mut Diff<'a>,
    /// PATCHED symbols defined in the output.
    defs: HashSet<usize>,
    /// PATCHED byte ranges copied, by section.
    pieces: BTreeMap<usize, Vec<(u64, u64)>>,
    queue: VecDeque<(usize, u64, u64)>,
    /// Kept entries per sliced section (entry start offsets), and the entry size.
    kept: BTreeMap<usize, (usize, std::collections::BTreeSet<u64>)>,
    refusals: Vec<Refusal>,
    /// Start offsets of the stubs of `.fixup` (where `__ex_table` entries point)
    /// and of `.altinstr_replacement` (where `.altinstructions` entries point),
    /// sorted, by section.
    stub_starts: HashMap<usize, Vec<u64>>,
    /// PATCHED symbols whose address some allocated data holds (a relocation
    /// of a non-code section reaches them): see [`Inc::copyable_rodata`].
    held_by_data: HashSet<usize>,
}

impl<'d, 'a> Inc<'d, 'a> {
    fn add_piece(&mut self, sec: usize, start: u64, end: u64) {
        let v = self.pieces.entry(sec).or_default();
        if v.iter().any(|&(a, b)| a <= start && end <= b) {
            return;
        }
        v.push((start, end));
        self.queue.push_back((sec, start, end));
    }

    fn define(&mut self, sym: usize) {
        if !self.defs.insert(sym) {
            return;
        }
        // The padding symbol before a function (CALL_PADDING) goes with it.
        if let Some(&pfx) = self.d.pfx_p.get(&sym) {
            self.define(pfx);
        }
        let s = self.d.p.sym(sym);
        let Some(sec) = s.section() else { return };
        // Corrupt symbols may claim bytes past their section.
        let size = self.d.p.sec(sec).size;
        // Unnamed CALL_PADDING goes with its function, like a `__pfx_` symbol.
        let pad = self.d.pad_p.get(&sym).copied().unwrap_or(0);
        let a = s.value.saturating_sub(pad).min(size);
        let b = s.value.saturating_add(s.size).min(size);
        self.add_piece(sec, a, b.max(a));
    }

    fn whole(&mut self, sec: usize) {
        let size = self.d.p.sec(sec).size;
        self.add_piece(sec, 0, size);
    }

    /// Whether an included reference to `sym` copies it into the patch.
    fn must_define(&self, sym: usize) -> bool {
        let d = &*self.d;
        let s = d.p.sym(sym);
        let Some(sec) = s.section() else { return false };
        let secname = &d.p.sec(sec).name;
        if secname.starts_with(".init.") || secname.starts_with(".exit.") || secname == ".modinfo" {
            return false;
        }
        if d.p.special[sym] {
            return true;
        }
        match d.status[sym] {
            Status::New => {
                matches!(s.typ, STT_FUNC | STT_OBJECT | STT_TLS) || d.twin_p[sym].is_none()
            }
            Status::Changed => s.typ == STT_FUNC || !d.p.sec(sec).is_write(),
            Status::Same => self.copyable_rodata(sym),
        }
    }

    /// Whether an unchanged object may travel with the patch as its own copy
    /// instead of being reached in the running kernel (which needs the unit's
    /// instance among same-named ones decided, and fails for names many units
    /// share). A copy is another address with the same bytes: sound only for
    /// data nobody writes and whose address nothing can hold on to as "the"
    /// object. Already copied elsewhere in [`Self::must_define`] and
    /// [`Self::visit`]: the special statics (`__func__.N`, `__FUNCTION__.N`,
    /// `CSWTCH.N`, ...), string literals (SHF_MERGE|SHF_STRINGS) and anonymous
    /// constants (`.LC*`, unnamed `.rodata`). Here, a named object, when all of:
    /// - local (a global may be compared with, or aliased by, another unit),
    ///   an STT_OBJECT of nonzero size;
    /// - in `.rodata` or `.rodata.*`, not writable: never `.data*`/`.bss*`,
    ///   `.data..ro_after_init` (written at boot, then read-only: its content
    ///   is the kernel's, not the compiler's), `.init.rodata`, special tables;
    /// - its bytes hold no pointer but to string literals: an ops table
    ///   (`file_operations`, `attribute_group`, `seq_operations`, ...) holds
    ///   function or object pointers, so it is never copied, whether it is
    ///   registered with the kernel or compared by address (`f_op == &x_fops`);
    /// - no allocated data section of the unit holds its address (a driver's
    ///   `id_table`, `MODULE_DEVICE_TABLE`, a registration struct), and no other
    ///   symbol names its address (an alias such as `__mod_*_device_table`):
    ///   only code reads it, through the address it computes each time.
    ///
    /// What is left is tables read by value (`static const u8 x[]`, enum
    /// arrays, `const char *const names[]`): the patched code reads its copy,
    /// the rest of the kernel the original, and both hold the same bytes. A
    /// pointer into the copy the patched code hands out lives as long as the
    /// patch module, as a pointer to one of its string literals does.
    fn copyable_rodata(&self, sym: usize) -> bool {
        let d = &*self.d;
        let s = d.p.sym(sym);
        let Some(sec) = s.section() else { return false };
        let x = d.p.sec(sec);
        if s.bind != STB_LOCAL
            || s.typ != STT_OBJECT
            || s.size == 0
            || !(x.name == ".rodata" || x.name.starts_with(".rodata."))
            || !x.is_alloc()
            || x.is_write()
            || x.is_exec()
            || x.is_nobits()
            || self.held_by_data.contains(&sym)
        {
            return false;
        }
        let end = s.value.saturating_add(s.size);
        if d.p.relas_in(sec, s.value, end).iter().any(|r| !matches!(d.p.target(sec, &r), Target::Sec { sec: t, .. } if d.p.sec(t).is_strings())) {
            return false;
        }
        // Another name for (some of) the same bytes.
        !d.p.syms_of(sec).iter().any(|&o| {
            let o = d.p.sym(o);
            o.index != sym && o.value < end && s.value < o.value.saturating_add(o.size.max(1))
        })
    }

    /// IBT: a function pointer the patch takes to a changed function points to
    /// the original (see `Out::reloc`). If the compiler gave only the patched
    /// copy an `endbr64` (the patch is what takes its address), the original
    /// cannot be called indirectly: on IBT hardware the call would trap.
    fn check_pointer_target(&mut self, in_sec: usize, r: &Rela, sym: usize, addend: i64) {
        const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
        let d = &*self.d;
        let s = d.p.sym(sym);
        if SLICED.contains(&d.p.sec(in_sec).name.as_str())
            || r.rtype != R_X86_64_32S
            || addend != 0
            || s.typ != STT_FUNC
            || d.status[sym] != Status::Changed
            || d.orig_name(sym).contains('.')
        {
            return;
        }
        let Some(o) = d.twin_p[sym] else { return };
        if d.p.bytes(sym).starts_with(&ENDBR64) && !d.o.bytes(o).starts_with(&ENDBR64) {
            let name = d.orig_name(sym).to_string();
            if !self.refusals.iter().any(|x| x.subject == name) {
                self.refusals.push(Refusal {
                    subject: name.clone(),
                    reason: format!(
                        "the patch takes the address of {name}, which the running kernel's code never does: its original has no endbr64, so an indirect call through the pointer (which must point to the original) would trap with IBT; call it directly, or add a new function and take its address"
                    ),
                });
            }
        }
    }

    fn visit(&mut self, in_sec: usize, r: &Rela) {
        let t = self.d.p.target(in_sec, r);
        if let Target::Sym { sym, addend } = t {
            self.check_pointer_target(in_sec, r, sym, addend);
        }
        match t {
            Target::Sym { sym, .. } => {
                if self.d.p.sym(sym).section().is_some() && self.must_define(sym) {
                    // Read-only data has no value to start from.
                    if !self.defs.contains(&sym)
                        && self.d.p.is_static_local(sym)
                        && self.d.twin_p[sym].is_none()
                        && self
                            .d
                            .p
                            .sym(sym)
                            .section()
                            .is_some_and(|s| self.d.p.sec(s).is_write())
                    {
                        self.d.report.warnings.push(format!(
                            "static local variable {} has no counterpart in ORIG: assuming it is new (it starts from its initial value)",
                            self.d.p.sym(sym).name
                        ));
                    }
                    self.define(sym);
                }
            }
            Target::Sec { sec, off } => {
                let s = self.d.p.sec(sec);
                let new_section = self.d.o.elf.section_by_name(&s.name).is_none();
                if s.name == ".fixup" {
                    self.stub(sec, off, Some("__ex_table"));
                } else if s.name == ".altinstr_replacement" {
                    self.stub(sec, off, Some(".altinstructions"));
                } else if s.name == ".altinstr_aux" {
                    // Reached by a `jmp` whose field ends the instruction.
                    let adj = if rela_is_pcrel(r.rtype) && self.d.p.sec(in_sec).is_exec() {
                        4
                    } else {
                        0
                    };
                    self.stub(sec, off.saturating_add(adj), None);
                } else if crate::model::is_special_section(&s.name)
                    || s.is_strings()
                    || !s.is_write()
                    || s.is_exec()
                    || new_section
                    || whole_on_demand(&s.name)
                {
                    self.whole(sec);
                } else {
                    self.refusals.push(Refusal {
                        subject: s.name.to_string(),
                        reason: format!("included code refers to {}+{off:#x}, existing writable data no symbol names", s.name),
                    });
                }
            }
        }
    }

    /// `.fixup` holds one stub per exception-table entry, `.altinstr_replacement`
    /// one replacement per alternative, `.altinstr_aux` one `static_cpu_has()`
    /// test per call site (`testb; jnz yes; jmp no`, reached by a `jmp` from
    /// its function and jumping back into it): copy only the stub included code
    /// uses (it ends where the next stub starts), not the stubs of every other
    /// function, `__init` code included. Stubs start where `table`'s entries
    /// point, or, without a table, where any other section's relocations do.
    fn stub(&mut self, sec: usize, off: i64, table: Option<&str>) {
        if !self.stub_starts.contains_key(&sec) {
            let p = &self.d.p;
            let mut v = Vec::new();
            let from: Vec<usize> = match table {
                Some(t) => p
                    .elf
                    .section_by_name(t)
                    .map(|s| s.index)
                    .into_iter()
                    .collect(),
                None => p.elf.relocated_sections().filter(|&t| t != sec).collect(),
            };
            for t in from {
                let exec = p.sec(t).is_exec();
                for r in p.elf.relas_of(t) {
                    if let Target::Sec { sec: s2, off } = p.target(t, &r) {
                        let off = if table.is_none() && exec && rela_is_pcrel(r.rtype) {
                            off.saturating_add(4)
                        } else {
                            off
                        };
                        if s2 == sec && off >= 0 {
                            v.push(off as u64);
                        }
                    }
                }
            }
            v.sort_unstable();
            v.dedup();
            self.stub_starts.insert(sec, v);
        }
        let size = self.d.p.sec(sec).size;
        let starts = &self.stub_starts[&sec];
        let off = off.clamp(0, size as i64) as u64;
        let i = starts.partition_point(|&x| x <= off);
        if i == 0 {
            // Not a known stub start: keep everything rather than guess.
            self.whole(sec);
            return;
        }
        let a = starts[i - 1];
        let b = starts.get(i).copied().unwrap_or(size).min(size);
        self.add_piece(sec, a, b.max(a));
    }

    fn drain(&mut self) {
        while let Some((sec, a, b)) = self.queue.pop_front() {
            let relas: Vec<Rela> = self.d.p.relas_in(sec, a, b).to_vec();
            for r in &relas {
                self.visit(sec, r);
            }
        }
    }

    fn included_code(&self, t: Target) -> bool {
        match t {
            Target::Sym { sym, .. } => {
                self.defs.contains(&sym) && self.d.p.sym(sym).typ == STT_FUNC
            }
            Target::Sec { .. } => false,
        }
    }

    /// The name of the module symbol a relocation of a kept special-section
    /// entry would reach through a module-specific livepatch relocation, if any.
    /// Undefined symbols count too: a key defined in another unit of the same
    /// module (btrfs's tracepoint keys live in `super.o`) is just as much the
    /// module's.
    /// Another module's exports count as well: their klp relocations are
    /// applied when the target loads, like the target's own. Returns the
    /// symbol's name and the module that holds it.
    fn module_klp_target(&self, sec: usize, r: &Rela) -> Option<(String, String)> {
        let Target::Sym { sym, .. } = self.d.p.target(sec, r) else {
            return None;
        };
        if self.defs.contains(&sym) || self.must_define(sym) {
            return None;
        }
        match self.d.reach(sym) {
            Ok(Some(k)) => Some((self.d.reference_name(sym).to_string(), k.obj.to_string())),
            _ => None,
        }
    }

    /// The kernel initialises a module's special sections (static call sites,
    /// jump labels, alternatives, exception tables, ...) when the module loads,
    /// but applies its klp relocations for another module only when that module
    /// loads: an entry that needs one would be read unrelocated, and
    /// `static_call_del_module` oopses on unload. So a patch for a module keeps
    /// no such entry. Static call sites can always go (the call through the
    /// trampoline stays correct), printk index entries (debugfs metadata only)
    /// and tracepoint jump labels too (the patched code
    /// then does not fire that tracepoint); anything else is refused by name.
    /// vmlinux symbols are fine: their klp relocations are applied at load.
    fn module_key_ok(&mut self, name: &str, sec: usize, group: &[Rela]) -> bool {
        if self.d.objname() == "vmlinux" {
            return true;
        }
        let Some((kname, owner)) = group.iter().find_map(|r| self.module_klp_target(sec, r)) else {
            return true;
        };
        let tracepoint = kname.starts_with("__tracepoint_") || kname.starts_with("__SCK__tp_func_");
        // Whose symbol it is, and when its relocation is applied.
        let whose = if owner == self.d.objname() {
            format!("module {owner}")
        } else {
            format!("module {owner}, reached from {}", self.d.objname())
        };
        if matches!(name, ".static_call_sites" | ".printk_index")
            || (name == "__jump_table" && tracepoint)
        {
            let what = if tracepoint { "tracepoint" } else { "symbol" };
            let w = format!(
                "{name}: entry using {kname} dropped ({what} of {whose}, whose klp relocations are applied after the entry is read)"
            );
            if !self.d.report.warnings.contains(&w) {
                self.d.report.warnings.push(w);
            }
        } else if !self.refusals.iter().any(|r| r.subject == kname) {
            self.refusals.push(Refusal {
                subject: kname.clone(),
                reason: format!(
                    "{name} entry of changed code uses {kname} of {whose}: module special sections are initialised before klp relocations are applied"
                ),
            });
        }
        false
    }

    /// One pass over the sliced sections; returns whether anything new was kept.
    fn slice_pass(&mut self) -> bool {
        let mut grew = false;
        let names: Vec<(usize, String)> = self
            .d
            .p
            .elf
            .sections
            .iter()
            .filter(|s| SLICED.contains(&s.name.as_str()))
            .map(|s| (s.index, s.name.to_string()))
            .collect();
        for (sec, name) in names {
            let size = self.d.p.sec(sec).size;
            let es = match self.kept.get(&sec) {
                Some((e, _)) => *e,
                None => {
                    match self.d.entry_size(&name, sec) {
                        Some(e) if e > 0 => {
                            self.kept.insert(sec, (e, Default::default()));
                            e
                        }
                        other => {
                            let _ = other;
                            let msg = "no entry size fits the layout of its relocations (give --entry-size)".to_string();
                            if name == ".printk_index" {
                                self.d.report.warnings.push(format!(
                                    "{name}: {msg}; the printk index of the patch is dropped"
                                ));
                            } else if !self.refusals.iter().any(|r| r.subject == name) {
                                self.refusals.push(Refusal {
                                    subject: name.clone(),
                                    reason: format!("cannot slice: {msg}"),
                                });
                            }
                            self.kept.insert(sec, (0, Default::default()));
                            0
                        }
                    }
                }
            };
            if es == 0 {
                continue;
            }
            // One entry's relocations at a time, copied out of the input's
            // table (a copy of the whole table was the differ's peak).
            let mut group = Vec::new();
            let mut k = 0;
            let mut start = 0u64;
            while start < size {
                let end = start + es as u64;
                let a = k;
                let relas = self.d.p.elf.relas_of(sec);
                while relas.get(k).is_some_and(|r| r.offset < end) {
                    k += 1;
                }
                group.clear();
                group.extend(relas.slice(a..k));
                let group = &group[..];
                let already = self.kept[&sec].1.contains(&start);
                if !already
                    && group
                        .iter()
                        .any(|r| self.included_code(self.d.p.target(sec, r)))
                {
                    if !self.module_key_ok(&name, sec, group) {
                        start = end;
                        continue;
                    }
                    self.kept.get_mut(&sec).unwrap().1.insert(start);
                    for r in group {
                        self.visit(sec, r);
                    }
                    grew = true;
                }
                start = end;
            }
        }
        // ORC: entry i of .orc_unwind belongs to the code .orc_unwind_ip entry i points at.
        if let (Some(ip), Some(_)) = (
            self.d.p.elf.section_by_name(".orc_unwind_ip"),
            self.d.p.elf.section_by_name(".orc_unwind"),
        ) {
            let ip = ip.index;
            self.kept.entry(ip).or_insert((4, Default::default()));
            for r in self.d.p.elf.relas_of(ip) {
                let start = r.offset - r.offset % 4;
                if !self.kept[&ip].1.contains(&start) && self.included_code(self.d.p.target(ip, &r))
                {
                    self.kept.get_mut(&ip).unwrap().1.insert(start);
                    grew = true;
                }
            }
        }
        grew
    }
}

/// Output section index per PATCHED section, with where each piece landed.
struct Layout {
    out_of: HashMap<usize, usize>,
    /// (src start, src end, out start) per PATCHED section.
    map: HashMap<usize, Vec<(u64, u64, u64)>>,
}

impl Layout {
    fn locate(&self, sec: usize, off: i64) -> Option<(usize, i64)> {
        let v = self.map.get(&sec)?;
        let o = off.max(0) as u64;
        v.iter()
            .find(|&&(a, b, _)| a <= o && o <= b)
            .map(|&(a, _, out)| (self.out_of[&sec], out as i64 + (off - a as i64)))
    }
}

pub fn run(d: &mut Diff) -> Result<Outcome, Error> {
    let np = d.p.elf.symbols.len();
    let mut inc = Inc {
        d,
        defs: HashSet::default(),
        pieces: BTreeMap::new(),
        queue: VecDeque::new(),
        kept: BTreeMap::new(),
        refusals: Vec::new(),
        stub_starts: HashMap::default(),
        held_by_data: HashSet::default(),
    };
    inc.held_by_data = held_by_data(&inc.d.p);

    // Changed functions (except __init/__exit code, which is refused) and new globals.
    let mut roots = Vec::new();
    let mut init_exit = Vec::new();
    for i in 0..np {
        let s = inc.d.p.sym(i);
        let Some(sec) = s.section() else { continue };
        let secname = inc.d.p.sec(sec).name.clone();
        let init = secname.starts_with(".init.") || secname.starts_with(".exit.");
        match (inc.d.status[i], s.typ) {
            (Status::Changed, STT_FUNC) if init => {
                let reason = init_exit_reason(
                    secname.starts_with(".init."),
                    inc.d.objname() == "vmlinux",
                    &secname,
                );
                init_exit.push(Refusal {
                    subject: inc.d.orig_name(i).to_string(),
                    reason,
                });
            }
            (Status::Changed, STT_FUNC) => roots.push(i),
            (Status::Changed, _) => {
                let sec = inc.d.p.sec(sec);
                if sec.is_write() || secname.starts_with(".init.") {
                    inc.refusals.push(Refusal {
                        subject: inc.d.orig_name(i).to_string(),
                        reason: format!(
                            "existing data changed (size or initial contents, in {secname}): a livepatch cannot change data the running kernel already uses (use shadow variables or callbacks)"
                        ),
                    });
                }
            }
            (Status::New, STT_FUNC) if s.bind != STB_LOCAL && !init => roots.push(i),
            _ => {}
        }
    }
    // A changed function needs an ftrace hook in the running kernel to be
    // redirected; a local one that is only called can be reached through
    // its callers instead, which are then replaced (and so on up, for a
    // caller that has no hook either).
    let mut queue: Vec<usize> = roots
        .iter()
        .copied()
        .filter(|&i| inc.d.status[i] == Status::Changed)
        .collect();
    let mut queued: HashSet<usize> = queue.iter().copied().collect();
    while let Some(i) = queue.pop() {
        if let Some(&par) = inc.d.parent_p.get(&i) {
            if inc.d.status[par] == Status::Changed {
                continue;
            }
        }
        let Some(o) = inc.d.twin_p[i] else { continue };
        if Diff::fentry_offset(&inc.d.o, o).is_some() {
            continue;
        }
        let callers = crate::callers::only_callers(&inc.d.o, o).and_then(|cs| {
            let mut out = Vec::new();
            for c in cs {
                let Some(cp) = inc.d.twin_o[c] else {
                    return Err(format!(
                        "its caller {} is gone from PATCHED",
                        inc.d.o.sym(c).name.as_str()
                    ));
                };
                let cp = inc.d.parent_p.get(&cp).copied().unwrap_or(cp);
                let sec = match inc.d.p.sym(cp).section() {
                    Some(sec) => inc.d.p.sec(sec).name.as_str(),
                    None => "",
                };
                // Init and exit code is not replaced.
                if sec.starts_with(".init.") || sec.starts_with(".exit.") {
                    return Err(format!(
                        "its caller {} is init or exit code",
                        inc.d.orig_name(cp)
                    ));
                }
                // Its own `.cold` part jumping back into it is not a caller.
                if cp != i {
                    out.push(cp);
                }
            }
            if out.is_empty() {
                return Err("nothing in this object calls it".into());
            }
            Ok(out)
        });
        let mut callers = match callers {
            Ok(c) => c,
            Err(why) => {
                inc.refusals.push(Refusal {
                    subject: inc.d.orig_name(i).to_string(),
                    reason: format!("changed, but has no ftrace hook (its first relocation is not a call to __fentry__: notrace or not traced): it cannot be redirected, nor reached through its callers: {why}"),
                });
                continue;
            }
        };
        callers.sort_unstable();
        callers.dedup();
        inc.d.via_callers.insert(i);
        let names: Vec<String> = callers
            .iter()
            .map(|&c| inc.d.orig_name(c).to_string())
            .collect();
        inc.d.report.warnings.push(format!(
            "{}: changed, but has no ftrace hook (notrace); the functions that call it are replaced instead, and their replacements call its new code: {}",
            inc.d.orig_name(i),
            names.join(", ")
        ));
        for c in callers {
            if inc.d.status[c] != Status::Changed {
                inc.d.status[c] = Status::Changed;
                roots.push(c);
            }
            if queued.insert(c) {
                queue.push(c);
            }
        }
    }
    for &i in &roots {
        inc.define(i);
    }
    // SUTURE_*_CALLBACK(): the functions travel with the patch (the module's
    // hook points `struct klp_callbacks` at them); the pointer sections do not.
    let mut callbacks = Vec::new();
    for kind in crate::CALLBACK_KINDS {
        let sec = format!(".suture.callbacks.{kind}");
        let fns = inc.d.annotated_functions(&sec);
        if fns.len() > 1 {
            let names: Vec<String> = fns
                .iter()
                .map(|&f| inc.d.p.sym(f).name.to_string())
                .collect();
            inc.refusals.push(Refusal {
                subject: sec.clone(),
                reason: format!(
                    "{} {kind} callbacks ({}): the kernel keeps one per patched object; call the others from one function",
                    fns.len(),
                    names.join(", ")
                ),
            });
            continue;
        }
        for f in fns {
            inc.define(f);
            inc.d
                .report
                .callbacks
                .push(format!("{kind}: {}", inc.d.p.sym(f).name));
            callbacks.push(crate::Callback {
                kind: kind.to_string(),
                symbol: inc.d.p.sym(f).name.to_string(),
            });
        }
    }
    // Callbacks (KPATCH_PRE_PATCH_CALLBACK()...) travel with the patch.
    let cb: Vec<usize> = inc
        .d
        .p
        .elf
        .sections
        .iter()
        .filter(|s| s.name.starts_with(".kpatch.callbacks."))
        .map(|s| s.index)
        .collect();
    for sec in cb {
        inc.whole(sec);
    }
    inc.drain();
    loop {
        let grew = inc.slice_pass();
        inc.drain();
        if !grew {
            break;
        }
    }
    // Changed read-only data that no included code copies would silently stay old.
    for i in 0..np {
        let s = inc.d.p.sym(i);
        if inc.d.status[i] == Status::Changed && s.typ != STT_FUNC && !inc.defs.contains(&i) {
            let sec = inc.d.p.sec(s.section().unwrap());
            if !sec.is_write() && !sec.name.starts_with(".init.") {
                inc.refusals.push(Refusal {
                    subject: inc.d.orig_name(i).to_string(),
                    reason: format!("read-only data changed (in {}) but no changed function uses it: the change cannot take effect", sec.name),
                });
            }
        }
    }
    // A copied constant is only seen by the patched code: functions left out of
    // the patch keep reading the old one.
    let copied: HashSet<usize> = inc
        .defs
        .iter()
        .copied()
        .filter(|&i| inc.d.status[i] == Status::Changed && inc.d.p.sym(i).typ != STT_FUNC)
        .collect();
    if !copied.is_empty() {
        let mut stale: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for sec in inc.d.p.elf.sections.iter().filter(|s| s.is_exec()) {
            for r in inc.d.p.elf.relas_of(sec.index) {
                let Target::Sym { sym, .. } = inc.d.p.target(sec.index, &r) else {
                    continue;
                };
                if !copied.contains(&sym) {
                    continue;
                }
                if let Some(f) = inc.d.p.containing(sec.index, r.offset as i64) {
                    if !inc.defs.contains(&f) {
                        stale
                            .entry(inc.d.orig_name(sym).to_string())
                            .or_default()
                            .push(inc.d.orig_name(f).to_string());
                    }
                }
            }
        }
        for (obj, mut users) in stale {
            users.sort();
            users.dedup();
            inc.d.report.warnings.push(format!(
                "read-only {obj} changed: the patch carries a new copy for its functions, but {} keep using the old one",
                users.join(", ")
            ));
        }
    }

    let mut refusals = std::mem::take(&mut inc.d.report.refusals);
    refusals.append(&mut inc.refusals);
    // SUTURE_FORCE_UNSAFE(fn): the author takes responsibility for what the
    // differ would refuse about fn; each refusal is still said, as a warning.
    let forced: Vec<String> = inc
        .d
        .annotated_functions(".suture.force_unsafe")
        .into_iter()
        .chain(inc.d.annotated_functions(".kpatch.force_unsafe"))
        .map(|f| inc.d.orig_name(f).to_string())
        .collect();
    if !forced.is_empty() {
        let (unsafe_ok, rest): (Vec<Refusal>, Vec<Refusal>) = refusals
            .into_iter()
            .partition(|r| forced.contains(&r.subject));
        for r in unsafe_ok {
            inc.d.report.warnings.push(format!(
                "UNSAFE, forced by SUTURE_FORCE_UNSAFE({}): {}",
                r.subject, r.reason
            ));
        }
        refusals = rest;
    }
    let defs = inc.defs;
    let pieces = inc.pieces;
    let kept = inc.kept;
    let d = inc.d;

    let mut func_defs: Vec<usize> = defs
        .iter()
        .copied()
        .filter(|&i| d.p.sym(i).typ == STT_FUNC)
        .collect();
    func_defs.sort();
    let mut changed = Vec::new();
    let mut new = Vec::new();
    for &f in &func_defs {
        match d.status[f] {
            Status::Changed => changed.push(d.orig_name(f).to_string()),
            Status::New => new.push(d.p.sym(f).name.to_string()),
            Status::Same => {}
        }
    }
    d.report.changed = changed;
    d.report.new = new;
    if refusals.is_empty()
        && !init_exit.is_empty()
        && d.report.changed.is_empty()
        && d.report.new.is_empty()
    {
        d.report.refusals = init_exit;
        return Ok(Outcome::InitExitOnly(std::mem::take(&mut d.report)));
    }
    refusals.extend(fixed_branches_out(d, &pieces, &func_defs));
    refusals.extend(init_exit);
    if !refusals.is_empty() {
        d.report.refusals = refusals;
        return Ok(Outcome::Refused(std::mem::take(&mut d.report)));
    }
    if d.report.changed.is_empty() && d.report.new.is_empty() {
        return Ok(Outcome::NoChange(std::mem::take(&mut d.report)));
    }
    let (object, replaced) = write(d, &defs, &pieces, &kept, &func_defs)?;
    Ok(Outcome::Changes(Patch {
        object,
        report: std::mem::take(&mut d.report),
        replaced,
        callbacks,
    }))
}

/// PATCHED local objects in `.rodata*` some allocated non-code section holds
/// the address of (see [`Inc::copyable_rodata`]; other symbols are never
/// copied by that rule, and keeping them out keeps the set small).
fn held_by_data(p: &crate::model::Obj) -> HashSet<usize> {
    let mut v = HashSet::default();
    for sec in p.elf.relocated_sections() {
        let x = p.sec(sec);
        if !x.is_alloc() || x.is_exec() {
            continue;
        }
        for r in p.elf.relas_of(sec) {
            if let Target::Sym { sym, .. } = p.target(sec, &r) {
                let s = p.sym(sym);
                if s.bind == STB_LOCAL
                    && s.typ == STT_OBJECT
                    && s.section()
                        .is_some_and(|t| p.sec(t).name.starts_with(".rodata"))
                {
                    v.insert(sym);
                }
            }
        }
    }
    v
}

/// What is true of a changed `__init`/`__exit` function, by where it lives.
fn init_exit_reason(init: bool, vmlinux: bool, secname: &str) -> String {
    match (init, vmlinux) {
        (true, true) => format!(
            "changed __init function (in {secname}): it ran at boot and was freed; nothing in the running kernel to patch (the fix takes effect at the next boot into the updated kernel)"
        ),
        (false, true) => format!(
            "changed __exit function (in {secname}): exit code of built-in code is discarded at link time and never runs; nothing to patch"
        ),
        (true, false) => format!(
            "changed module init function (in {secname}): it runs only when the module loads and is freed afterwards; the fix takes effect when the module is next loaded from the updated package"
        ),
        (false, false) => format!(
            "changed module exit function (in {secname}): exit code is notrace (no ftrace hook) and cannot be redirected; it runs at unload, and the fix takes effect when the module is next loaded from the updated package"
        ),
    }
}

/// Branches and calls the assembler resolved itself, with no relocation,
/// that leave the bytes the klp object copies: in a section several
/// functions share (`__sched` code in `.sched.text`, `noinstr`, an object
/// built without `-ffunction-sections`) gcc's calls between static
/// functions are fixed offsets. The writer lays the copied pieces out anew,
/// so such a call would land wherever the offset now points (a 6.1 guest
/// oopsed in `__rt_mutex_start_proxy_lock`). Refused, naming the function,
/// its target and the section, until such branches are turned into
/// relocations.
fn fixed_branches_out(
    d: &Diff<'_>,
    pieces: &BTreeMap<usize, Vec<(u64, u64)>>,
    func_defs: &[usize],
) -> Vec<Refusal> {
    use iced_x86::{Decoder, DecoderOptions};
    let mut out: Vec<Refusal> = Vec::new();
    for (&sec, v) in pieces {
        let s = d.p.sec(sec);
        if !s.is_exec() || s.is_nobits() {
            continue;
        }
        // The ranges as the writer merges them: offsets inside one stay.
        let merged = merged_ranges(v);
        let mut relocated: Vec<u64> = d.p.elf.relas_of(sec).iter().map(|r| r.offset).collect();
        relocated.sort_unstable();
        let is_relocated = |from: u64, len: u64| {
            let i = relocated.partition_point(|&o| o < from);
            relocated.get(i).is_some_and(|&o| o < from + len)
        };
        let name_at = |off: u64| -> Option<&str> {
            let f = func_defs.iter().copied().find(|&f| {
                let fs = d.p.sym(f);
                fs.section() == Some(sec) && fs.value <= off && off < fs.value + fs.size.max(1)
            })?;
            Some(if d.status[f] == Status::Changed {
                d.orig_name(f)
            } else {
                d.p.sym(f).name.as_str()
            })
        };
        let name_of_target = |off: u64| -> String {
            (0..d.p.elf.symbols.len())
                .find(|&i| {
                    let t = d.p.sym(i);
                    t.typ == STT_FUNC
                        && t.section() == Some(sec)
                        && t.value <= off
                        && off < t.value + t.size.max(1)
                })
                .map(|i| d.p.sym(i).name.to_string())
                .unwrap_or_else(|| format!("{}+{off:#x}", s.name))
        };
        for (a, e) in merged {
            let (a2, e2) = (
                (a as usize).min(s.data.len()),
                (e as usize).min(s.data.len()),
            );
            let mut dec = Decoder::with_ip(64, &s.data[a2..e2], a, DecoderOptions::NONE);
            while dec.can_decode() {
                let at = dec.ip();
                let insn = dec.decode();
                if insn.is_invalid()
                    || !(insn.is_call_near()
                        || insn.is_jmp_short_or_near()
                        || insn.is_jcc_short_or_near()
                        || insn.is_loop()
                        || insn.is_jcx_short())
                {
                    continue;
                }
                let c = dec.get_constant_offsets(&insn);
                let field = if c.has_immediate() {
                    (at + c.immediate_offset() as u64, c.immediate_size() as u64)
                } else {
                    (at + 1, insn.len() as u64 - 1)
                };
                if is_relocated(field.0, field.1) {
                    continue;
                }
                let target = insn.near_branch_target();
                if (a..e).contains(&target) {
                    continue;
                }
                let Some(func) = name_at(at) else { continue };
                let subject = func.to_string();
                if out.iter().any(|r| r.subject == subject) {
                    continue;
                }
                out.push(Refusal {
                    subject,
                    reason: format!(
                        "a {} to {} at a fixed offset in {}, a section it shares with other functions (the assembler left no relocation): the copy in the livepatch module would land elsewhere",
                        if insn.is_call_near() { "call" } else { "jump" },
                        name_of_target(target),
                        s.name
                    ),
                });
            }
        }
    }
    out
}

/// A section's copied byte ranges, sorted, overlapping and touching ones
/// merged: each becomes one contiguous run in the output.
fn merged_ranges(v: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut v = v.to_vec();
    v.sort();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (a, e) in v {
        match merged.last_mut() {
            Some(l) if a <= l.1 => l.1 = l.1.max(e),
            _ => merged.push((a, e)),
        }
    }
    merged
}

fn align_up(x: u64, a: u64) -> u64 {
    let a = a.max(1);
    x.div_ceil(a) * a
}

struct Out<'x, 'a> {
    d: &'x Diff<'a>,
    b: Builder,
    /// Builder symbol indexes are 0-based; relocations count from 1 (NULL).
    secsym: HashMap<usize, usize>,
    def_sym: HashMap<usize, usize>,
    refs: HashMap<String, usize>,
    locals: Vec<OutSymbol>,
    globals: Vec<OutSymbol>,
    errors: Vec<String>,
}

enum SymRef {
    Local(usize),
    Global(usize),
}

fn write(
    d: &mut Diff,
    defs: &HashSet<usize>,
    pieces: &BTreeMap<usize, Vec<(u64, u64)>>,
    kept: &BTreeMap<usize, (usize, std::collections::BTreeSet<u64>)>,
    func_defs: &[usize],
) -> Result<(Vec<u8>, Vec<ReplacedFunc>), Error> {
    let dd: &Diff = d;
    let mut layout = Layout {
        out_of: HashMap::default(),
        map: HashMap::default(),
    };
    let mut b = Builder::default();
    let mut src_of_out: Vec<Option<usize>> = Vec::new();
    for (&sec, v) in pieces {
        let s = dd.p.sec(sec);
        let merged = merged_ranges(v);
        let whole = merged.len() == 1 && merged[0] == (0, s.size);
        let mut data = Vec::new();
        let mut size = 0u64;
        let mut m = Vec::new();
        for (a, e) in merged {
            // Keep each piece's alignment phase: code and data keep their layout.
            let al = s.addralign.clamp(1, 4096);
            let mut at = align_up(size, al) + (a % al);
            if whole {
                at = a;
            }
            m.push((a, e, at));
            if !s.is_nobits() {
                data.resize(at as usize, 0);
                let (a2, e2) = (
                    (a as usize).min(s.data.len()),
                    (e as usize).min(s.data.len()),
                );
                data.extend_from_slice(&s.data[a2..e2]);
                data.resize((at + (e - a)) as usize, 0);
                // A branch field given a relocation still holds the
                // assembler's displacement; the module loader wants 0.
                if let Some(v) = dd.p.resolved.get(&sec) {
                    let from = v.partition_point(|&o| o < a);
                    for &o in v[from..].iter().take_while(|&&o| o + 4 <= e) {
                        let at = (at + (o - a)) as usize;
                        if let Some(f) = data.get_mut(at..at + 4) {
                            f.fill(0);
                        }
                    }
                }
            }
            size = at + (e - a);
        }
        layout.out_of.insert(sec, b.sections.len());
        layout.map.insert(sec, m);
        src_of_out.push(Some(sec));
        b.sections.push(OutSection {
            name: s.name.to_string(),
            sh_type: s.sh_type,
            flags: s.flags & !SHF_GROUP,
            addralign: s.addralign,
            entsize: if whole { s.entsize } else { 0 },
            data,
            nobits_size: size,
            relas: Vec::new(),
            rela_flags: 0,
        });
        if !whole {
            b.sections.last_mut().unwrap().flags &= !(SHF_MERGE | SHF_STRINGS);
        }
    }

    let mut out = Out {
        d: dd,
        b,
        secsym: HashMap::default(),
        def_sym: HashMap::default(),
        refs: HashMap::default(),
        locals: Vec::new(),
        globals: Vec::new(),
        errors: Vec::new(),
    };
    // Symbols: FILE, section symbols, local definitions, then globals.
    if let Some(f) = dd.p.elf.symbols.iter().find(|s| s.typ == STT_FILE) {
        out.locals.push(OutSymbol {
            name: f.name.to_string(),
            bind: STB_LOCAL,
            typ: STT_FILE,
            other: 0,
            section: SymSection::Reserved(SHN_ABS),
            value: 0,
            size: 0,
        });
    }
    let mut defs_sorted: Vec<usize> = defs.iter().copied().collect();
    defs_sorted.sort();
    let mut pending_defs = Vec::new();
    for &i in &defs_sorted {
        let s = dd.p.sym(i);
        let sec = s.section().unwrap();
        let Some((osec, off)) = layout.locate(sec, s.value as i64) else {
            continue;
        };
        let (name, bind) = match dd.twin_p[i] {
            Some(_) => (dd.orig_name(i).to_string(), STB_LOCAL),
            None => (s.name.to_string(), s.bind),
        };
        let sym = OutSymbol {
            name,
            bind,
            typ: s.typ,
            other: s.other,
            section: SymSection::Section(osec),
            value: off as u64,
            size: s.size,
        };
        pending_defs.push((i, sym));
    }
    for (i, sym) in pending_defs {
        let r = if sym.bind == STB_LOCAL {
            SymRef::Local(out.locals.len())
        } else {
            SymRef::Global(out.globals.len())
        };
        if sym.bind == STB_LOCAL {
            out.locals.push(sym);
        } else {
            out.globals.push(sym);
        }
        out.def_sym.insert(i, encode(r));
    }

    // Relocations of the copied pieces.
    let mut all_relas: Vec<Vec<OutRela>> = vec![Vec::new(); out.b.sections.len()];
    for (&sec, m) in &layout.map {
        let oidx = layout.out_of[&sec];
        for &(a, e, at) in m {
            for r in dd.p.relas_in(sec, a, e) {
                let offset = at + (r.offset - a);
                if let Some(mut rr) = out.reloc(sec, &r, offset, &layout, true) {
                    // -mnop-mcount objects carry a NOP and an R_X86_64_NONE where the
                    // ftrace call goes; the module loader's ftrace expects the call.
                    if r.rtype == R_X86_64_NONE
                        && dd.p.sym(r.sym).name == "__fentry__"
                        && dd.p.sec(sec).is_exec()
                    {
                        let d = &mut out.b.sections[oidx].data;
                        let o = offset as usize;
                        if o >= 1
                            && d.get(o - 1..o + 4) == Some(&[0x0f, 0x1f, 0x44, 0x00, 0x00][..])
                        {
                            d[o - 1..o + 4].copy_from_slice(&[0xe8, 0, 0, 0, 0]);
                            rr.rtype = R_X86_64_PLT32;
                            rr.addend = -4;
                        }
                    }
                    all_relas[oidx].push(rr);
                }
            }
        }
    }
    // Sliced special sections.
    let mut specials: Vec<(OutSection, Vec<OutRela>)> = Vec::new();
    let orc_ip = dd.p.elf.section_by_name(".orc_unwind_ip").map(|s| s.index);
    for (&sec, (es, starts)) in kept {
        if starts.is_empty() || *es == 0 {
            continue;
        }
        let s = dd.p.sec(sec);
        if dd.opts.objtool_at_link && OBJTOOL_LINK_MADE.contains(&s.name.as_str()) {
            continue;
        }
        let starts: Vec<u64> = starts.iter().copied().collect();
        let mut data = Vec::new();
        let mut relas = Vec::new();
        for &st in &starts {
            let at = data.len() as u64;
            // A truncated last entry is padded: another entry may follow it here.
            data.resize(at as usize, 0);
            let end = (st as usize + es).min(s.data.len());
            data.extend_from_slice(&s.data[st as usize..end]);
            if starts.last() != Some(&st) {
                data.resize(at as usize + es, 0);
            }
            for r in dd.p.relas_in(sec, st, st + *es as u64) {
                if let Some(rr) = out.reloc(sec, &r, at + (r.offset - st), &layout, false) {
                    relas.push(rr);
                }
            }
        }
        specials.push((
            OutSection {
                name: s.name.to_string(),
                sh_type: s.sh_type,
                flags: s.flags & !SHF_GROUP,
                addralign: s.addralign,
                entsize: s.entsize,
                data,
                nobits_size: 0,
                relas: Vec::new(),
                rela_flags: 0,
            },
            relas,
        ));
        if Some(sec) == orc_ip {
            if let Some(u) = dd.p.elf.section_by_name(".orc_unwind") {
                let mut od = Vec::new();
                for &st in &starts {
                    let i = (st / 4) as usize * 6;
                    if let Some(e) = u.data.get(i..i + 6) {
                        od.extend_from_slice(e);
                    }
                }
                specials.push((
                    OutSection {
                        name: u.name.to_string(),
                        sh_type: u.sh_type,
                        flags: u.flags & !SHF_GROUP,
                        addralign: u.addralign,
                        entsize: u.entsize,
                        data: od,
                        nobits_size: 0,
                        relas: Vec::new(),
                        rela_flags: 0,
                    },
                    Vec::new(),
                ));
            }
        }
    }
    // -mnop-mcount without a relocation: the call to __fentry__ is put back.
    for &f in func_defs {
        let Some(off) = Diff::fentry_offset(&dd.p, f) else {
            continue;
        };
        let s = dd.p.sym(f);
        let sec = s.section().unwrap();
        let site = s.value + off;
        if dd
            .p
            .relas_in(sec, site, site + 4)
            .iter()
            .any(|r| dd.p.sym(r.sym).name == "__fentry__")
        {
            continue;
        }
        let Some((oidx, o)) = layout.locate(sec, site as i64) else {
            continue;
        };
        let o = o as usize;
        let d = &mut out.b.sections[oidx].data;
        if o >= 1 && d.get(o - 1..o + 4) == Some(&[0x0f, 0x1f, 0x44, 0x00, 0x00][..]) {
            d[o - 1..o + 4].copy_from_slice(&[0xe8, 0, 0, 0, 0]);
            let sym = out.plain("__fentry__");
            all_relas[oidx].push(OutRela {
                offset: o as u64,
                sym,
                rtype: R_X86_64_PLT32,
                addend: -4,
            });
            all_relas[oidx].sort_by_key(|r| r.offset);
        }
    }
    // ftrace call sites of the included traced functions, regenerated.
    let mut mcount = Vec::new();
    let mut mcount_relas = Vec::new();
    for &f in func_defs {
        if let Some(off) = Diff::fentry_offset(&dd.p, f) {
            let Some(&target) = out.def_sym.get(&f) else {
                continue;
            };
            mcount_relas.push(OutRela {
                offset: mcount.len() as u64,
                sym: target,
                rtype: R_X86_64_64,
                addend: off as i64 - 1,
            });
            mcount.extend_from_slice(&[0u8; 8]);
        }
    }
    if !mcount.is_empty() {
        specials.push((
            OutSection {
                name: "__mcount_loc".into(),
                sh_type: SHT_PROGBITS,
                flags: SHF_ALLOC,
                addralign: 8,
                entsize: 0,
                data: mcount,
                nobits_size: 0,
                relas: Vec::new(),
                rela_flags: 0,
            },
            mcount_relas,
        ));
    }
    // .modinfo: only the namespaces the patched code imports.
    if let Some(mi) = dd.p.elf.section_by_name(".modinfo") {
        let mut data = Vec::new();
        // Built-in code spells them `<mod>.import_ns=NS`; modpost reads a
        // module's own `import_ns=NS`.
        for e in mi.data.split(|&c| c == 0) {
            if let Some(p) = e.windows(10).position(|w| w == b"import_ns=") {
                if p == 0 || e[p - 1] == b'.' {
                    data.extend_from_slice(&e[p..]);
                    data.push(0);
                }
            }
        }
        if !data.is_empty() {
            specials.push((
                OutSection {
                    name: ".modinfo".into(),
                    sh_type: SHT_PROGBITS,
                    flags: mi.flags & !SHF_GROUP,
                    addralign: 1,
                    entsize: 0,
                    data,
                    nobits_size: 0,
                    relas: Vec::new(),
                    rela_flags: 0,
                },
                Vec::new(),
            ));
        }
    }
    specials.push((
        OutSection {
            name: ".note.GNU-stack".into(),
            sh_type: SHT_PROGBITS,
            flags: 0,
            addralign: 1,
            entsize: 0,
            data: Vec::new(),
            nobits_size: 0,
            relas: Vec::new(),
            rela_flags: 0,
        },
        Vec::new(),
    ));
    for (s, r) in specials {
        out.b.sections.push(s);
        all_relas.push(r);
    }
    if !out.errors.is_empty() {
        return Err(Error::Other(format!(
            "cannot build the patch object: {}",
            out.errors.join("; ")
        )));
    }

    // Final symbol order: FILE and other locals, section symbols, globals.
    let nsecsyms = out.secsym.len();
    let mut secsyms: Vec<(usize, usize)> = out.secsym.iter().map(|(&s, &i)| (s, i)).collect();
    secsyms.sort_by_key(|x| x.1);
    let nlocals = out.locals.len();
    let remap = |code: usize| -> usize {
        // Codes: locals 2k, section symbols by order (tagged), globals 2k+1.
        match code & 3 {
            0 => code / 4 + 1,
            1 => nlocals + nsecsyms + code / 4 + 1,
            _ => nlocals + code / 4 + 1,
        }
    };
    for rel in all_relas.iter_mut() {
        for r in rel.iter_mut() {
            r.sym = remap(r.sym);
        }
    }
    for (i, rel) in all_relas.into_iter().enumerate() {
        out.b.sections[i].relas = rel;
    }
    let mut symbols = std::mem::take(&mut out.locals);
    for (sec, _) in &secsyms {
        symbols.push(OutSymbol {
            name: String::new(),
            bind: STB_LOCAL,
            typ: STT_SECTION,
            other: 0,
            section: SymSection::Section(*sec),
            value: 0,
            size: 0,
        });
    }
    symbols.append(&mut out.globals);
    out.b.symbols = symbols;
    let bytes = out.b.write().map_err(|e| Error::Other(e.to_string()))?;

    let mut replaced = Vec::new();
    for &f in func_defs {
        if dd.status[f] != Status::Changed || dd.via_callers.contains(&f) {
            continue;
        }
        if let Some(&par) = dd.parent_p.get(&f) {
            if dd.status[par] == Status::Changed && dd.p.sym(f).name.contains(".cold") {
                continue;
            }
        }
        let name = dd.orig_name(f).to_string();
        let sympos = match dd.lookup(f) {
            Ok(Some(p)) => p,
            _ => 0,
        };
        replaced.push(ReplacedFunc {
            name: name.clone(),
            sympos,
            symbol: name,
        });
    }
    let _ = src_of_out;
    Ok((bytes, replaced))
}

fn encode(r: SymRef) -> usize {
    match r {
        SymRef::Local(i) => i * 4,
        SymRef::Global(i) => i * 4 + 1,
    }
}

impl<'x, 'a> Out<'x, 'a> {
    fn section_symbol(&mut self, osec: usize) -> usize {
        let n = self.secsym.len();
        *self.secsym.entry(osec).or_insert(n * 4 + 2)
    }

    /// Every relocation to a symbol would repeat its error.
    fn error_once(&mut self, e: String) {
        if !self.errors.contains(&e) {
            self.errors.push(e);
        }
    }

    /// An undefined global symbol by plain name.
    fn plain(&mut self, name: &str) -> usize {
        if let Some(&c) = self.refs.get(name) {
            return c;
        }
        let code = encode(SymRef::Global(self.globals.len()));
        self.globals.push(OutSymbol::undefined_global(name));
        self.refs.insert(name.to_string(), code);
        code
    }

    /// An undefined symbol for an unchanged or external PATCHED symbol.
    fn reference(&mut self, pi: usize) -> Option<usize> {
        let s = self.d.p.sym(pi);
        let plain = self.d.reference_name(pi).to_string();
        let (name, typ, bind) = match self.d.reach(pi) {
            Ok(Some(k)) => match self.d.klp_symbol(k, &plain) {
                Ok(n) => (n, s.typ, STB_GLOBAL),
                Err(e) => {
                    self.error_once(e);
                    return None;
                }
            },
            // An external symbol keeps its binding (a weak reference stays weak).
            Ok(None) if s.section().is_none() => (plain, s.typ, s.bind.max(STB_GLOBAL)),
            Ok(None) => (plain, s.typ, STB_GLOBAL),
            Err(e) => {
                self.errors.push(e);
                return None;
            }
        };
        if let Some(&c) = self.refs.get(&name) {
            return Some(c);
        }
        let code = encode(SymRef::Global(self.globals.len()));
        self.globals.push(OutSymbol {
            name: name.clone(),
            bind,
            typ,
            other: 0,
            section: SymSection::Undef,
            value: 0,
            size: 0,
        });
        self.refs.insert(name, code);
        Some(code)
    }

    /// A direct call (`call rel32`) to a function reached through a livepatch
    /// relocation goes to the function's `__pfx_` padding when the target names
    /// one: on CALL_PADDING kernels the kernel keeps the call-depth accounting
    /// thunk there (NOPs when tracking is off) and, at module load, redirects a
    /// module's calls into it, but not the calls livepatch relocates only later
    /// (suture-klp's post-link drops those from `.call_sites`). Jumps (tail
    /// calls) keep the function itself: they must not be counted twice.
    fn call_through_padding(
        &mut self,
        in_sec: usize,
        r: &Rela,
        sym: usize,
        addend: i64,
        code: bool,
    ) -> Option<usize> {
        let sec = self.d.p.sec(in_sec);
        let is_call = code
            && sec.is_exec()
            && matches!(r.rtype, R_X86_64_PC32 | R_X86_64_PLT32)
            && addend == -4
            && r.offset >= 1
            && sec.data.get(r.offset as usize - 1) == Some(&0xe8);
        if !is_call {
            return None;
        }
        let t = self.d.opts.target.as_ref()?;
        let Ok(Some(k)) = self.d.reach(sym) else {
            return None;
        };
        let name = self.d.reference_name(sym).to_string();
        // The padding is in the same object as the function.
        let pfx = match t.symbols.get(&format!("__pfx_{name}")) {
            Some(crate::TargetSym::Unexported { sympos }) if k.obj == self.d.objname() => *sympos,
            Some(crate::TargetSym::OtherModule { module, sympos }) if k.obj == module => *sympos,
            _ => return None,
        };
        let full = match self.d.klp_symbol(
            crate::pipeline::KlpRef {
                obj: k.obj,
                sympos: pfx,
            },
            &format!("__pfx_{name}"),
        ) {
            Ok(n) => n,
            Err(e) => {
                self.error_once(e);
                return None;
            }
        };
        if let Some(&c) = self.refs.get(&full) {
            return Some(c);
        }
        let code = encode(SymRef::Global(self.globals.len()));
        self.globals.push(OutSymbol::undefined_global(full.clone()));
        self.refs.insert(full, code);
        Some(code)
    }

    fn reloc(
        &mut self,
        in_sec: usize,
        r: &Rela,
        offset: u64,
        layout: &Layout,
        code_or_data: bool,
    ) -> Option<OutRela> {
        let t = self.d.p.target(in_sec, r);
        let (sym, addend) = match t {
            Target::Sym { sym, addend } => {
                let s = self.d.p.sym(sym);
                // A function pointer taken in replacement code must still point to
                // the original function, which stays valid after the patch is gone.
                let fptr = code_or_data
                    && r.rtype == R_X86_64_32S
                    && addend == 0
                    && s.typ == STT_FUNC
                    && self.d.status[sym] == Status::Changed
                    && !self.d.orig_name(sym).contains('.');
                if let (Some(&c), false) = (self.def_sym.get(&sym), fptr) {
                    (c, addend)
                } else if let Some(c) =
                    self.call_through_padding(in_sec, r, sym, addend, code_or_data)
                {
                    (c, addend)
                } else {
                    (self.reference(sym)?, addend)
                }
            }
            // A `jmp` into a sliced stub (`.altinstr_aux`) has its field 4
            // bytes before the end of the instruction: the addend points 4
            // bytes before the stub's first byte, outside the copied piece.
            Target::Sec { sec, off } => match layout.locate(sec, off).or_else(|| {
                let pcrel_code = rela_is_pcrel(r.rtype) && self.d.p.sec(in_sec).is_exec();
                layout
                    .locate(sec, off.saturating_add(4))
                    .filter(|_| pcrel_code)
                    .map(|(s, o)| (s, o - 4))
            }) {
                Some((osec, o)) => (self.section_symbol(osec), o),
                None => {
                    self.errors.push(format!(
                        "a relocation in {} points to {}+{off:#x}, which is not in the patch",
                        self.d.p.sec(in_sec).name,
                        self.d.p.sec(sec).name
                    ));
                    return None;
                }
            },
        };
        Some(OutRela {
            offset,
            sym,
            rtype: r.rtype,
            addend,
        })
    }
}

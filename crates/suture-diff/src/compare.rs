//! Compare: each correlated function and data object, byte by byte with
//! relocations compared by what they reach, the differences that are only
//! line numbers, and the annotations that make a change ignorable.

use suture_elf::*;

use crate::model::{Key, Obj, Target};
use crate::pipeline::{Diff, Status, DATA_PREFIXES};
use crate::Refusal;

impl Diff<'_> {
    /// Section name minus the symbol's own suffix (`.text.foo` → `.text`).
    /// An alias shares the function section of the symbol it aliases
    /// (`__x64_sys_getppid` lives in `.text.__do_sys_getppid`): its class is
    /// that of the section, not the section's whole name.
    pub(crate) fn section_class(x: &Obj, i: usize) -> &str {
        let s = x.sym(i);
        let sec = s.section().unwrap();
        let n = x.sec(sec).name.as_str();
        if let Some(base) = n
            .strip_suffix(s.name.as_str())
            .and_then(|b| b.strip_suffix('.'))
        {
            if !base.is_empty() {
                return base;
            }
        }
        // Only function sections can hold aliases of another function. The
        // section's own symbols are the candidates; the lowest symbol index
        // wins, as in a scan of the symbol table.
        if n.starts_with(".text.") && s.typ == STT_FUNC {
            let mut best: Option<(usize, &str)> = None;
            for &j in x.syms_of(sec) {
                let o = x.sym(j);
                if j != i
                    && o.typ == STT_FUNC
                    && o.value == s.value
                    && !matches!(best, Some((k, _)) if k < j)
                {
                    if let Some(base) = n
                        .strip_suffix(o.name.as_str())
                        .and_then(|b| b.strip_suffix('.'))
                    {
                        if !base.is_empty() {
                            best = Some((j, base));
                        }
                    }
                }
            }
            if let Some((_, base)) = best {
                return base;
            }
        }
        n
    }

    pub(crate) fn is_data_section(name: &str) -> bool {
        DATA_PREFIXES.iter().any(|p| name.starts_with(p))
    }

    pub fn compare(&mut self) {
        let np = self.p.elf.symbols.len();
        for i in 0..np {
            let s = self.p.sym(i);
            if s.section().is_none()
                || !matches!(s.typ, STT_FUNC | STT_OBJECT | STT_NOTYPE | STT_TLS)
            {
                continue;
            }
            let Some(t) = self.twin_p[i] else {
                self.status[i] = Status::New;
                continue;
            };
            let (oc, pc) = (
                crate::model::mangle(Self::section_class(&self.o, t)),
                crate::model::mangle(Self::section_class(&self.p, i)),
            );
            if oc != pc {
                let text = |c: &str| {
                    matches!(
                        c,
                        ".text" | ".text.unlikely" | ".text.hot" | ".text.startup" | ".text.cold"
                    )
                };
                if !(text(&oc) && text(&pc)) {
                    self.report.refusals.push(Refusal {
                        subject: s.name.to_string(),
                        reason: format!(
                            "moved from section {oc} to {pc}, which a livepatch cannot follow"
                        ),
                    });
                    continue;
                }
            }
            let st = match s.typ {
                STT_FUNC => {
                    if self.func_equal(t, i) {
                        Status::Same
                    } else {
                        Status::Changed
                    }
                }
                STT_OBJECT | STT_TLS => {
                    let secname = &self.p.sec(s.section().unwrap()).name;
                    if Self::is_data_section(secname) && !self.data_equal(t, i) {
                        Status::Changed
                    } else {
                        Status::Same
                    }
                }
                _ => Status::Same,
            };
            self.status[i] = st;
        }
        self.apply_ignores();
        // Cold pieces have no ftrace hook: their change is their parent's.
        let ups: Vec<usize> = self
            .parent_p
            .iter()
            .filter(|(&c, &par)| {
                self.status[c] != Status::Same
                    && self.status[par] == Status::Same
                    && self.twin_p[par].is_some()
            })
            .map(|(_, &par)| par)
            .collect();
        for par in ups {
            self.status[par] = Status::Changed;
        }
    }

    /// `KPATCH_IGNORE_FUNCTION()` / `KPATCH_IGNORE_SECTION()`: the patch author
    /// says these changes are incidental (e.g. a different inlining decision).
    pub(crate) fn apply_ignores(&mut self) {
        let mut funcs = Vec::new();
        let mut secs = Vec::new();
        for (name, into_funcs) in [
            (".kpatch.ignore.functions", true),
            (".kpatch.ignore.sections", false),
            (".suture.ignore.functions", true),
            (".suture.ignore.sections", false),
        ] {
            let Some(sec) = self.p.elf.section_by_name(name).map(|s| s.index) else {
                continue;
            };
            for r in self.p.elf.relas_of(sec) {
                match self.p.target(sec, &r) {
                    Target::Sym { sym, .. } if into_funcs => funcs.push(sym),
                    Target::Sec { sec: s2, off } if !into_funcs => {
                        let (st, at) = self.p.string_at(s2, off);
                        if at == 0 {
                            secs.push(String::from_utf8_lossy(st).into_owned());
                        }
                    }
                    _ => {}
                }
            }
        }
        for f in funcs {
            self.status[f] = Status::Same;
            for c in self.children_p.get(&f).cloned().unwrap_or_default() {
                self.status[c] = Status::Same;
            }
            self.report.warnings.push(format!(
                "{}: changes ignored (SUTURE_IGNORE_FUNCTION)",
                self.p.sym(f).name
            ));
        }
        for name in secs {
            let Some(sec) = self.p.elf.section_by_name(&name).map(|s| s.index) else {
                continue;
            };
            for &i in self.p.syms_of(sec) {
                self.status[i] = Status::Same;
            }
            self.report
                .warnings
                .push(format!("{name}: changes ignored (SUTURE_IGNORE_SECTION)"));
        }
    }

    /// Functions a `.suture.*` (or `.kpatch.*`) annotation section points at, in
    /// order: one 8-byte pointer per entry, resolved through its relocation.
    pub fn annotated_functions(&self, section: &str) -> Vec<usize> {
        let Some(sec) = self.p.elf.section_by_name(section).map(|s| s.index) else {
            return Vec::new();
        };
        let mut v = Vec::new();
        for r in self.p.elf.relas_of(sec) {
            if let Target::Sym { sym, .. } = self.p.target(sec, &r) {
                if self.p.sym(sym).typ == STT_FUNC && !v.contains(&sym) {
                    v.push(sym);
                }
            }
        }
        v
    }

    pub(crate) fn relas_equal(&self, oi: usize, pi: usize) -> bool {
        let (os, ps) = (self.o.sym(oi), self.p.sym(pi));
        let (osec, psec) = (os.section().unwrap(), ps.section().unwrap());
        let or = self
            .o
            .relas_in(osec, os.value, os.value.saturating_add(os.size.max(1)));
        let pr = self
            .p
            .relas_in(psec, ps.value, ps.value.saturating_add(ps.size.max(1)));
        if or.len() != pr.len() {
            return false;
        }
        or.iter().zip(pr).all(|(a, b)| {
            a.offset - os.value == b.offset - ps.value
                && a.rtype == b.rtype
                && self.key_eq(osec, &a, psec, &b)
        })
    }

    pub(crate) fn func_equal(&self, oi: usize, pi: usize) -> bool {
        let (os, ps) = (self.o.sym(oi), self.p.sym(pi));
        if os.size != ps.size || !self.relas_equal(oi, pi) {
            return false;
        }
        let (ob, pb) = (self.o.bytes(oi), self.p.bytes(pi));
        ob == pb
            || self.equal_but_resolved(oi, pi, ob, pb)
            || crate::insn::line_macro_only(&self.o, oi, &self.p, pi, &self.line_anchors)
    }

    /// Equal once the fields of branches the assembler resolved in place
    /// (now relocations, compared as such) are masked on both sides.
    fn equal_but_resolved(&self, oi: usize, pi: usize, ob: &[u8], pb: &[u8]) -> bool {
        let mut fields: Vec<u64> = Vec::new();
        for (x, i) in [(&self.o, oi), (&self.p, pi)] {
            let s = x.sym(i);
            let Some(v) = s.section().and_then(|sec| x.resolved.get(&sec)) else {
                continue;
            };
            let from = v.partition_point(|&o| o < s.value);
            fields.extend(
                v[from..]
                    .iter()
                    .take_while(|&&o| o < s.value + s.size)
                    .map(|&o| o - s.value),
            );
        }
        !fields.is_empty() && crate::branches::equal_masked(ob, pb, &fields)
    }

    pub(crate) fn data_equal(&self, oi: usize, pi: usize) -> bool {
        let (os, ps) = (self.o.sym(oi), self.p.sym(pi));
        if os.size != ps.size {
            return false;
        }
        let onb = self.o.sec(os.section().unwrap()).is_nobits();
        let pnb = self.p.sec(ps.section().unwrap()).is_nobits();
        if onb || pnb {
            // .bss → .data with zeros is still the same value; anything else differs.
            let zero = |x: &Obj, i: usize, nb: bool| nb || x.bytes(i).iter().all(|&b| b == 0);
            return zero(&self.o, oi, onb) && zero(&self.p, pi, pnb) && self.relas_equal(oi, pi);
        }
        self.o.bytes(oi) == self.p.bytes(pi) && self.relas_equal(oi, pi)
    }

    /// Where a function's ftrace hook is, relative to the function: its first
    /// relocation calls `__fentry__`, or (-mnop-mcount) `__mcount_loc` records a
    /// site in its first bytes.
    pub fn fentry_offset(x: &Obj, f: usize) -> Option<u64> {
        let s = x.sym(f);
        let sec = s.section()?;
        if let Some(r) = x
            .relas_in(sec, s.value, s.value.saturating_add(s.size.max(1)))
            .first()
        {
            let t = x.sym(r.sym);
            if t.name == "__fentry__"
                && matches!(r.rtype, R_X86_64_PC32 | R_X86_64_PLT32 | R_X86_64_NONE)
            {
                return Some(r.offset - s.value);
            }
        }
        (0..16u64)
            .find(|&k| x.mcount_sites.contains(&(sec, s.value.saturating_add(k))))
            .map(|k| k + 1)
    }

    /// Whether two relocations reach the same thing. A string that differs
    /// only in line numbers of the unit's own file (`__FILE__ ":"
    /// __stringify(__LINE__)`, see [`crate::model::line_numbers_only`]) is the
    /// same, as kpatch's `__LINE__` rule treats moved line immediates: a
    /// function that is otherwise unchanged stays unchanged, and one that
    /// changed for another reason carries PATCHED's string.
    pub fn key_eq(&self, osec: usize, a: &Rela, psec: usize, b: &Rela) -> bool {
        let ka: Key = self.o.key(self.o.target(osec, a), a.rtype, osec);
        let kb: Key = self.p.key(self.p.target(psec, b), b.rtype, psec);
        ka == kb || Self::line_only_keys(&ka, &kb, &self.line_anchors)
    }

    /// [`Self::key_eq`]'s exception on its own: two string keys at the same
    /// place in strings that differ only in the unit's line numbers.
    pub(crate) fn line_only_keys(ka: &Key, kb: &Key, anchors: &[String]) -> bool {
        match (ka, kb) {
            (Key::Str(sa, at_a), Key::Str(sb, at_b)) => {
                at_a == at_b && crate::model::line_numbers_only(sa, sb, anchors)
            }
            _ => false,
        }
    }

    /// The strings two relocations reach, when they differ only in the unit's
    /// line numbers (for `--explain`).
    pub fn line_only_string(
        &self,
        osec: usize,
        a: &Rela,
        psec: usize,
        b: &Rela,
    ) -> Option<(String, String)> {
        let ka: Key = self.o.key(self.o.target(osec, a), a.rtype, osec);
        let kb: Key = self.p.key(self.p.target(psec, b), b.rtype, psec);
        match (&ka, &kb) {
            (Key::Str(sa, _), Key::Str(sb, _))
                if Self::line_only_keys(&ka, &kb, &self.line_anchors) =>
            {
                Some((
                    String::from_utf8_lossy(sa).into_owned(),
                    String::from_utf8_lossy(sb).into_owned(),
                ))
            }
            _ => None,
        }
    }
}

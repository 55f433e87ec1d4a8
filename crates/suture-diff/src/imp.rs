//! The differ's stages: correlate, compare, include, special sections, output.
//!
//! Comparison is per symbol, not per section: a function is its byte range and
//! the relocations inside it, each relocation target resolved through section
//! symbols to the symbol it lands in (or to string contents / constant bytes
//! where no symbol covers it) and compared by mangled name and addend. The output
//! is built from PATCHED byte ranges ("pieces") grouped per source section, so
//! objects compiled without -ffunction-sections work too.
//!
//! `.fixup`, `.altinstr_replacement` and `.altinstr_aux` are sliced to the
//! stubs included code and kept entries use (a stub ends where the next one
//! starts). Known simplification: debug sections are not carried over (their
//! relocations are not even read).

use suture_elf::fx::{FxHashMap as HashMap, FxHashSet as HashSet};

use suture_elf::*;

use crate::model::{Key, Obj, Target};
use crate::{EntrySize, Error, Explanation, Options, Outcome, Refusal, Report, TargetSym};

/// Where a livepatch relocation finds a symbol: the object whose kallsyms
/// holds it (the target, or for a module target another module the target
/// depends on) and the position among that object's same-named symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KlpRef<'t> {
    pub obj: &'t str,
    pub sympos: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Same,
    Changed,
    New,
}

pub(crate) struct Diff<'a> {
    pub o: Obj,
    pub p: Obj,
    pub opts: &'a Options,
    /// PATCHED symbol → ORIG twin, and back.
    pub twin_p: Vec<Option<usize>>,
    pub twin_o: Vec<Option<usize>>,
    pub status: Vec<Status>,
    pub report: Report,
    /// PATCHED functions that are `.cold`/`.part` pieces of another, with their parent.
    pub parent_p: HashMap<usize, usize>,
    pub children_p: HashMap<usize, Vec<usize>>,
    /// PATCHED function → its `__pfx_`/`__cfi_` padding symbol.
    pub pfx_p: HashMap<usize, usize>,
    /// PATCHED function → bytes of CALL_PADDING before it that no `__pfx_`
    /// symbol names (objtool, which adds those symbols, runs on vmlinux.o, not
    /// on single vmlinux objects, when the kernel has IBT).
    pub pad_p: HashMap<usize, u64>,
    /// Position of each ORIG symbol among ORIG's defined local symbols of its
    /// name, in file order, from 1; 0 when the name is unique or not local.
    pub o_sympos: Vec<u32>,
    /// What a line number of the unit's own source file follows in a string
    /// literal (see [`crate::model::line_number_anchors`]).
    pub line_anchors: Vec<String>,
}

fn load(bytes: Shared, file: &'static str) -> Result<Obj, Error> {
    // Debug sections are not carried over: their relocations are not read.
    let po = ParseOptions {
        debug_relocations: false,
    };
    let elf = Object::parse_shared(bytes, &po).map_err(|e| Error::Input {
        file,
        msg: e.to_string(),
    })?;
    if elf.symtab.is_none() {
        return Err(Error::Input {
            file,
            msg: "no symbol table".into(),
        });
    }
    // Code and data live in PROGBITS/NOBITS (and the like); a symbol inside a
    // relocation, symbol or string table is corruption, and copying such a
    // section into the output would make a table nothing can parse (the
    // fuzzer found `.rela.text.x` copied as a RELA section applying to section 0).
    for x in &elf.symbols {
        if let Some(sec) = x.section() {
            let t = elf.sections[sec].sh_type;
            if matches!(
                t,
                SHT_NULL
                    | SHT_SYMTAB
                    | SHT_STRTAB
                    | SHT_RELA
                    | SHT_REL
                    | SHT_GROUP
                    | SHT_SYMTAB_SHNDX
                    | 11
            ) {
                return Err(Error::Input {
                    file,
                    msg: format!("symbol {} ({}) is defined in {}, a section of type {t} that holds no code or data", x.index, x.name, elf.sections[sec].name),
                });
            }
        }
    }
    Ok(Obj::new(elf))
}

pub fn diff(orig: &[u8], patched: &[u8], opts: &Options) -> Result<Outcome, Error> {
    diff_shared(
        std::sync::Arc::new(orig.to_vec()),
        std::sync::Arc::new(patched.to_vec()),
        opts,
    )
}

/// [`diff`] on inputs the caller already holds (a `Vec` or a memory map): no copy.
pub fn diff_shared(orig: Shared, patched: Shared, opts: &Options) -> Result<Outcome, Error> {
    diff_shared_keep(orig, patched, opts).map(|(out, _model)| out)
}

/// The parsed inputs an [`Outcome`] was computed from, opaque.
pub struct Model<'a>(#[allow(dead_code)] Diff<'a>);

/// [`diff_shared`], handing back the parsed inputs as well, so that a process
/// about to exit can leave them to the kernel (`std::mem::forget`): freeing
/// tens of thousands of small allocations one by one is a tenth of a diff.
pub fn diff_shared_keep(
    orig: Shared,
    patched: Shared,
    opts: &Options,
) -> Result<(Outcome, Model<'_>), Error> {
    let mut d = Diff::new(orig, patched, opts)?;
    d.compare();
    let out = crate::include::run(&mut d)?;
    Ok((out, Model(d)))
}

/// The pipeline cut after each stage, for the Criterion benchmark of the
/// stages (each includes the ones before it): 0 parse, 1 correlate, 2 compare,
/// 3 include and write. Not an API.
#[doc(hidden)]
pub fn run_stages(orig: Shared, patched: Shared, opts: &Options, upto: u8) -> Result<(), Error> {
    if upto == 0 {
        load(orig, "ORIG")?;
        load(patched, "PATCHED")?;
        return Ok(());
    }
    let mut d = Diff::new(orig, patched, opts)?;
    if upto >= 2 {
        d.compare();
    }
    if upto >= 3 {
        crate::include::run(&mut d)?;
    }
    Ok(())
}

pub fn explain(
    orig: &[u8],
    patched: &[u8],
    func: &str,
    opts: &Options,
) -> Result<Explanation, Error> {
    explain_shared(
        std::sync::Arc::new(orig.to_vec()),
        std::sync::Arc::new(patched.to_vec()),
        func,
        opts,
    )
}

pub fn explain_shared(
    orig: Shared,
    patched: Shared,
    func: &str,
    opts: &Options,
) -> Result<Explanation, Error> {
    let d = Diff::new(orig, patched, opts)?;
    Ok(crate::explain::explain(&d, func))
}

/// Parent of a `.cold`/`.part.N` piece: the name before the suffix.
fn parent_name(name: &str) -> Option<&str> {
    for pat in [".cold", ".part."] {
        if let Some(i) = name.find(pat) {
            if i > 0 {
                return Some(&name[..i]);
            }
        }
    }
    None
}

const DATA_PREFIXES: &[&str] = &[
    ".data",
    ".bss",
    ".rodata",
    ".init.data",
    ".init.rodata",
    ".ref.data",
    ".tdata",
    ".tbss",
    ".exit.data",
];

impl<'a> Diff<'a> {
    pub fn new(orig: Shared, patched: Shared, opts: &'a Options) -> Result<Self, Error> {
        let o = load(orig, "ORIG")?;
        let p = load(patched, "PATCHED")?;
        if o.elf.e_flags != p.elf.e_flags {
            return Err(Error::Other(
                "ORIG and PATCHED have different ELF header flags".into(),
            ));
        }
        let np = p.elf.symbols.len();
        let no = o.elf.symbols.len();
        let mut d = Diff {
            o,
            p,
            opts,
            twin_p: vec![None; np],
            twin_o: vec![None; no],
            status: vec![Status::Same; np],
            report: Report::default(),
            parent_p: HashMap::default(),
            children_p: HashMap::default(),
            pfx_p: HashMap::default(),
            pad_p: HashMap::default(),
            o_sympos: Vec::new(),
            line_anchors: Vec::new(),
        };
        d.o_sympos = local_positions(&d.o.elf.symbols);
        d.line_anchors = crate::model::line_number_anchors(&d.o.files);
        d.check_related()?;
        d.correlate();
        d.find_children();
        d.correlate_static_locals();
        Ok(d)
    }

    fn check_related(&self) -> Result<(), Error> {
        let files = |x: &Obj| -> HashSet<String> {
            x.elf
                .symbols
                .iter()
                .filter(|s| s.typ == STT_FILE)
                .map(|s| s.name.to_string())
                .collect()
        };
        let (fo, fp) = (files(&self.o), files(&self.p));
        if !fo.is_empty() && !fp.is_empty() && fo.is_disjoint(&fp) {
            let mut a: Vec<_> = fo.into_iter().collect();
            let mut b: Vec<_> = fp.into_iter().collect();
            a.sort();
            b.sort();
            return Err(Error::Other(format!(
                "ORIG ({}) and PATCHED ({}) come from different source files: not a before/after pair",
                a.join(", "),
                b.join(", ")
            )));
        }
        Ok(())
    }

    /// Symbols that take part in name correlation.
    fn correlatable(x: &Obj, i: usize) -> bool {
        let s = x.sym(i);
        s.section().is_some()
            && matches!(s.typ, STT_FUNC | STT_OBJECT | STT_NOTYPE | STT_TLS)
            && !s.name.is_empty()
            && !s.name.starts_with(".L")
            && !x.special[i]
            && !x.is_static_local(i)
    }

    fn pair(&mut self, o: usize, p: usize) {
        self.twin_o[o] = Some(p);
        self.twin_p[p] = Some(o);
    }

    /// What name correlation matches: source file (for locals), name (exact or
    /// mangled) and type.
    fn correlation_key(x: &Obj, i: usize, exact: bool) -> (&str, &str, u8) {
        let n = if exact {
            x.sym(i).name.as_str()
        } else {
            x.mangled(i)
        };
        (x.file(i), n, x.sym(i).typ)
    }

    /// By exact name first, then by mangled name, within one source file's locals
    /// (an object may hold several files' statics of the same name).
    fn correlate(&mut self) {
        const NONE: u32 = u32::MAX;
        for exact in [true, false] {
            let key = |x, i| Self::correlation_key(x, i, exact);
            let hash = suture_elf::fx::hash_one::<(&str, &str, u8)>;
            // ORIG's candidates by a hash of their key, chained through `next`
            // in index order: a map of vectors keyed by the strings took 400 KB
            // on the largest corpus pair, the differ's peak.
            let o = &self.o;
            let mut head: HashMap<u64, u32> = HashMap::default();
            let mut next = vec![NONE; o.elf.symbols.len()];
            for i in (0..o.elf.symbols.len()).rev() {
                if self.twin_o[i].is_none() && Self::correlatable(o, i) {
                    let h = head.entry(hash(&key(o, i))).or_insert(NONE);
                    next[i] = *h;
                    *h = i as u32;
                }
            }
            let mut pairs = Vec::new();
            for i in 0..self.p.elf.symbols.len() {
                if self.twin_p[i].is_some() || !Self::correlatable(&self.p, i) {
                    continue;
                }
                let k = key(&self.p, i);
                let Some(first) = head.get_mut(&hash(&k)) else {
                    continue;
                };
                // The first ORIG symbol of the same key (hashes may collide).
                let (mut prev, mut j) = (NONE, *first);
                while j != NONE && key(o, j as usize) != k {
                    (prev, j) = (j, next[j as usize]);
                }
                if j == NONE {
                    continue;
                }
                if prev == NONE {
                    *first = next[j as usize];
                } else {
                    next[prev as usize] = next[j as usize];
                }
                pairs.push((j as usize, i));
            }
            for (o, i) in pairs {
                self.pair(o, i);
            }
        }
    }

    fn find_children(&mut self) {
        let mut funcs: HashMap<(&str, &str), usize> = HashMap::default();
        for s in &self.p.elf.symbols {
            if s.typ == STT_FUNC && s.section().is_some() {
                funcs.insert((self.p.file(s.index), s.name.as_str()), s.index);
            }
        }
        let mut links = Vec::new();
        for s in &self.p.elf.symbols {
            if s.typ != STT_FUNC || s.section().is_none() {
                continue;
            }
            if let Some(pn) = parent_name(&s.name) {
                let file = self.p.file(s.index);
                let parent = funcs.get(&(file, pn)).or_else(|| funcs.get(&("", pn)));
                if let Some(&par) = parent {
                    links.push((s.index, par));
                }
            }
        }
        for s in &self.p.elf.symbols {
            let Some(base) = s
                .name
                .strip_prefix("__pfx_")
                .or_else(|| s.name.strip_prefix("__cfi_"))
            else {
                continue;
            };
            let Some(sec) = s.section() else { continue };
            let next = self
                .p
                .containing(sec, s.value.saturating_add(s.size) as i64);
            if let Some(f) = next.filter(|&f| self.p.sym(f).name == base) {
                self.pfx_p.insert(f, s.index);
            }
        }
        self.find_padding();
        for (c, par) in links {
            self.parent_p.insert(c, par);
            self.children_p.entry(par).or_default().push(c);
        }
    }

    /// CALL_PADDING (`-fpatchable-function-entry=N,N`): the compiler puts N NOPs
    /// before each function and records where they start in
    /// `__patchable_function_entries`. The kernel writes its call-depth
    /// accounting thunk into those bytes (for module code too, when the module
    /// is loaded) and checks that they are NOPs first, so a function copied
    /// into the patch must keep them.
    fn find_padding(&mut self) {
        let secs: Vec<usize> = self
            .p
            .elf
            .sections
            .iter()
            .filter(|s| s.name == "__patchable_function_entries")
            .map(|s| s.index)
            .collect();
        for pfe in secs {
            for r in self.p.elf.relas_of(pfe) {
                let s = self.p.sym(r.sym);
                let Some(sec) = s.section() else { continue };
                let start = (s.value as i64).wrapping_add(r.addend);
                if start < 0 {
                    continue;
                }
                let start = start as u64;
                // The function is the first one that starts after the record,
                // within the largest padding the kernel configures (64 bytes).
                let Some(&f) = self.p.syms_of(sec).iter().find(|&&i| {
                    let x = self.p.sym(i);
                    x.typ == STT_FUNC && x.value > start && x.value <= start + 64
                }) else {
                    continue;
                };
                if self.pfx_p.contains_key(&f) {
                    continue;
                }
                let v = self.p.sym(f).value;
                let data = &self.p.sec(sec).data;
                let pad = data.get(start as usize..v as usize).unwrap_or(&[]);
                // Only NOPs, and no other symbol in between: anything else is
                // not padding and stays out.
                let covered = self.p.containing(sec, start as i64).is_some_and(|c| c != f);
                if !pad.is_empty() && pad.iter().all(|&b| b == 0x90) && !covered {
                    self.pad_p.insert(f, v - start);
                }
            }
        }
    }

    /// Static locals referenced by a function (resolved through section symbols).
    fn statics_used(x: &Obj, f: usize) -> Vec<usize> {
        let s = x.sym(f);
        let Some(sec) = s.section() else {
            return Vec::new();
        };
        let mut v = Vec::new();
        for r in x.relas_in(sec, s.value, s.value.saturating_add(s.size.max(1))) {
            if let Target::Sym { sym, .. } = x.target(sec, &r) {
                if x.is_static_local(sym) && !v.contains(&sym) {
                    v.push(sym);
                }
            }
        }
        v
    }

    /// `var.N` numbers are unstable, and two functions may each have a `count`:
    /// pair statics through the correlated functions that use them.
    fn correlate_static_locals(&mut self) {
        let funcs: Vec<(usize, usize)> = (0..self.o.elf.symbols.len())
            .filter(|&i| self.o.sym(i).typ == STT_FUNC)
            .filter_map(|i| self.twin_o[i].map(|p| (i, p)))
            .collect();
        let mut uses = Vec::new();
        for &(of, pf) in &funcs {
            let ou = Self::statics_used(&self.o, of);
            if ou.is_empty() {
                continue;
            }
            let mut pu = Self::statics_used(&self.p, pf);
            let mut family = self.children_p.get(&pf).cloned().unwrap_or_default();
            if let Some(&par) = self.parent_p.get(&pf) {
                family.push(par);
            }
            for c in family {
                for s in Self::statics_used(&self.p, c) {
                    if !pu.contains(&s) {
                        pu.push(s);
                    }
                }
            }
            for &os in &ou {
                if self.twin_o[os].is_none() {
                    let cand = pu.iter().copied().find(|&ps| {
                        self.twin_p[ps].is_none()
                            && self.p.mangled(ps) == self.o.mangled(os)
                            && self.p.sym(ps).typ == self.o.sym(os).typ
                    });
                    if let Some(ps) = cand {
                        self.pair(os, ps);
                    }
                }
            }
            uses.push((of, pf, ou, pu));
        }
        // Statics no function pairs (used from data only): by name when unambiguous.
        let mut count_o: HashMap<(String, String), Vec<usize>> = HashMap::default();
        let mut count_p: HashMap<(String, String), Vec<usize>> = HashMap::default();
        for i in 0..self.o.elf.symbols.len() {
            if self.o.is_static_local(i) && self.o.sym(i).section().is_some() {
                count_o
                    .entry((self.o.file(i).to_string(), self.o.mangled(i).to_string()))
                    .or_default()
                    .push(i);
            }
        }
        for i in 0..self.p.elf.symbols.len() {
            if self.p.is_static_local(i) && self.p.sym(i).section().is_some() {
                count_p
                    .entry((self.p.file(i).to_string(), self.p.mangled(i).to_string()))
                    .or_default()
                    .push(i);
            }
        }
        for (k, vo) in &count_o {
            if let Some(vp) = count_p.get(k) {
                if vo.len() == 1
                    && vp.len() == 1
                    && self.twin_o[vo[0]].is_none()
                    && self.twin_p[vp[0]].is_none()
                {
                    self.pair(vo[0], vp[0]);
                }
            }
        }
        // A use that disappears means the patched code no longer shares the
        // running kernel's state: refuse rather than guess.
        for (of, _pf, ou, pu) in uses {
            for os in ou {
                let ok = self.twin_o[os].map(|ps| pu.contains(&ps)).unwrap_or(false);
                if !ok {
                    self.report.refusals.push(Refusal {
                        subject: self.o.sym(of).name.to_string(),
                        reason: format!(
                            "the reference to static local variable {} was removed (or could not be matched) in the patched function; a livepatch cannot drop the use of existing state",
                            self.o.sym(os).name
                        ),
                    });
                }
            }
        }
    }

    /// Section name minus the symbol's own suffix (`.text.foo` → `.text`).
    /// An alias shares the function section of the symbol it aliases
    /// (`__x64_sys_getppid` lives in `.text.__do_sys_getppid`): its class is
    /// that of the section, not the section's whole name.
    fn section_class(x: &Obj, i: usize) -> &str {
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

    fn is_data_section(name: &str) -> bool {
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
    fn apply_ignores(&mut self) {
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

    fn relas_equal(&self, oi: usize, pi: usize) -> bool {
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

    fn func_equal(&self, oi: usize, pi: usize) -> bool {
        let (os, ps) = (self.o.sym(oi), self.p.sym(pi));
        if os.size != ps.size || !self.relas_equal(oi, pi) {
            return false;
        }
        let (ob, pb) = (self.o.bytes(oi), self.p.bytes(pi));
        ob == pb || crate::insn::line_macro_only(&self.o, oi, &self.p, pi, &self.line_anchors)
    }

    fn data_equal(&self, oi: usize, pi: usize) -> bool {
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

    /// Position of an ORIG symbol among same-named local symbols, 0 when unique.
    pub fn orig_sympos(&self, oi: usize) -> u32 {
        self.o_sympos[oi]
    }

    /// Entry size of a sliced section: given, `sh_entsize`, or default, as long
    /// as the relocations repeat with that period; otherwise the smallest period
    /// they do repeat with (old kernels' structs differ from today's defaults).
    pub fn entry_size(&mut self, name: &str, sec: usize) -> Option<usize> {
        let total = self.p.sec(sec).size as usize;
        let relas = self.p.elf.relas_of(sec);
        // The last entry may lack its tail padding (kpatch met this too).
        let fits = |e: usize| e > 0 && period_ok(relas, e, total);
        let mut cands: Vec<(usize, &'static str)> = Vec::new();
        if let Some(&e) = self.opts.entry_sizes.get(name) {
            cands.push((e, "given"));
        }
        if self.p.sec(sec).entsize > 0 {
            cands.push((self.p.sec(sec).entsize as usize, "sh_entsize"));
        }
        if name == "__jump_table" {
            // code, target, key: three relocations per entry.
            let n = relas.len();
            if n > 0 && n % 3 == 0 && total % (n / 3) == 0 {
                cands.push((total / (n / 3), "relocations"));
            }
        }
        if let Some(e) = default_entry_size(name) {
            cands.push((e, "default"));
        }
        let chosen = match cands.iter().find(|c| fits(c.0)) {
            Some(&c) => Some(c),
            None => {
                let found = (1..=64)
                    .find(|&e| !relas.is_empty() && fits(e))
                    .map(|e| (e, "relocations"));
                if let (Some((e, _)), Some(&(c, src))) = (found, cands.first()) {
                    self.report.warnings.push(format!(
                        "{name}: the {src} entry size {c} does not match the layout of its relocations; using {e}"
                    ));
                }
                found.or_else(|| {
                    cands
                        .iter()
                        .find(|c| c.0 > 0 && total % c.0 == 0 && relas.is_empty())
                        .copied()
                })
            }
        };
        let (size, source) = chosen?;
        self.report
            .entry_sizes
            .insert(name.to_string(), EntrySize { size, source });
        Some(size)
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
    /// module's (see the crate docs).
    pub fn klp_symbol(&self, k: KlpRef<'_>, name: &str) -> String {
        let target = self.objname();
        if k.obj == target {
            suture_abi::klp::klp_sym_name(k.obj, name, k.sympos)
        } else {
            suture_abi::klp::klp_xsym_name(target, k.obj, name, k.sympos)
        }
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
    fn line_only_keys(ka: &Key, kb: &Key, anchors: &[String]) -> bool {
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

/// See [`Diff::o_sympos`]. Same-named locals are found by sorting their
/// indices by a hash of the name (a name-keyed map was the differ's memory
/// peak on large objects; sorting by the names themselves cost 1.5 M
/// instructions on the largest corpus pair).
fn local_positions(syms: &[Symbol]) -> Vec<u32> {
    local_positions_by(syms, suture_elf::fx::hash_one::<str>)
}

fn local_positions_by(syms: &[Symbol], hash: impl Fn(&str) -> u64) -> Vec<u32> {
    let counted = |x: &Symbol| {
        x.bind == STB_LOCAL && x.section().is_some() && x.typ != STT_SECTION && x.typ != STT_FILE
    };
    let mut locals: Vec<(u64, u32)> = (0..syms.len() as u32)
        .filter(|&i| counted(&syms[i as usize]))
        .map(|i| (hash(syms[i as usize].name.as_str()), i))
        .collect();
    locals.sort_unstable();
    let mut pos = vec![0; syms.len()];
    for run in locals.chunk_by(|a, b| a.0 == b.0).filter(|r| r.len() > 1) {
        // Equal hashes, almost always one name: number each name's symbols
        // in symbol order (the run is sorted by index).
        let mut done = vec![false; run.len()];
        for a in 0..run.len() {
            if done[a] {
                continue;
            }
            let name = &syms[run[a].1 as usize].name;
            let same: Vec<usize> = (a..run.len())
                .filter(|&b| !done[b] && syms[run[b].1 as usize].name == *name)
                .collect();
            if same.len() > 1 {
                for (k, &b) in same.iter().enumerate() {
                    pos[run[b].1 as usize] = k as u32 + 1;
                }
            }
            for b in same {
                done[b] = true;
            }
        }
    }
    pos
}

pub fn default_entry_size(name: &str) -> Option<usize> {
    Some(match name {
        ".parainstructions" => 16,
        "__ex_table" => 12,
        "__bug_table" => 12,
        ".altinstructions" => 13,
        ".orc_unwind" => 6,
        ".orc_unwind_ip" => 4,
        ".static_call_sites" => 8,
        ".printk_index" => 8,
        ".smp_locks" | ".return_sites" | ".retpoline_sites" | ".call_sites" | ".ibt_endbr_seal"
        | ".kcfi_traps" => 4,
        _ => return None,
    })
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
        9 => "R_X86_64_GOTPCREL".into(),
        n => format!("type {n}"),
    }
}

/// Every entry of `e` bytes carries a relocation of the same type at the same
/// relative offset as the first entry's first one (the field that says where
/// the entry belongs), and no relocation straddles two entries. Optional fields
/// (an alternative without replacement) may be missing.
fn period_ok(relas: Relas<'_>, e: usize, total: usize) -> bool {
    let Some(first) = relas.first() else {
        return total % e == 0;
    };
    let n = total.div_ceil(e);
    let anchor = (first.offset as usize, first.rtype);
    if anchor.0 >= e {
        return false;
    }
    let mut seen = 0usize;
    let mut last_extent = 0usize;
    for r in relas {
        let (i, rel) = (r.offset as usize / e, r.offset as usize % e);
        let ext = rel + suture_elf::rela_width(r.rtype);
        if ext > e || i >= n {
            return false;
        }
        if i == n - 1 {
            last_extent = last_extent.max(ext);
        }
        if rel == anchor.0 && r.rtype == anchor.1 {
            if i != seen {
                return false;
            }
            seen += 1;
        }
    }
    seen == n && (total % e == 0 || total % e >= last_extent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_named_locals_numbered_in_symbol_order_even_when_hashes_collide() {
        let sym = |name: &str, bind| Symbol {
            index: 0,
            name: name.into(),
            value: 0,
            size: 1,
            bind,
            typ: STT_FUNC,
            other: 0,
            shndx: 1,
            reserved: false,
        };
        let syms = [
            sym("a", STB_LOCAL),
            sym("b", STB_LOCAL),
            sym("a", STB_LOCAL),
            sym("a", STB_GLOBAL),
            sym("c", STB_LOCAL),
            sym("b", STB_LOCAL),
            sym("a", STB_LOCAL),
        ];
        let want = [1, 1, 2, 0, 0, 2, 3];
        assert_eq!(local_positions(&syms), want);
        // Every name hashing alike must give the same positions.
        assert_eq!(local_positions_by(&syms, |_| 7), want);
    }
}

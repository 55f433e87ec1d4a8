//! Correlate: pair each PATCHED symbol with its ORIG twin (by name, then
//! same-named locals by position and by what uses them), and find the
//! pieces (`.cold`, `.part.N`) and padding that belong to a function.

use suture_elf::fx::{FxHashMap as HashMap, FxHashSet as HashSet};

use suture_elf::*;

use crate::model::{Obj, Target};
use crate::pipeline::{parent_name, Diff};
use crate::{Error, Refusal};

impl Diff<'_> {
    pub(crate) fn check_related(&self) -> Result<(), Error> {
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
    pub(crate) fn correlatable(x: &Obj, i: usize) -> bool {
        let s = x.sym(i);
        s.section().is_some()
            && matches!(s.typ, STT_FUNC | STT_OBJECT | STT_NOTYPE | STT_TLS)
            && !s.name.is_empty()
            && !s.name.starts_with(".L")
            && !x.special[i]
            && !x.is_static_local(i)
    }

    pub(crate) fn pair(&mut self, o: usize, p: usize) {
        self.twin_o[o] = Some(p);
        self.twin_p[p] = Some(o);
    }

    /// What name correlation matches: source file (for locals), name (exact or
    /// mangled) and type.
    pub(crate) fn correlation_key(x: &Obj, i: usize, exact: bool) -> (&str, &str, u8) {
        let n = if exact {
            x.sym(i).name.as_str()
        } else {
            x.mangled(i)
        };
        (x.file(i), n, x.sym(i).typ)
    }

    /// By exact name first, then by mangled name, within one source file's locals
    /// (an object may hold several files' statics of the same name).
    pub(crate) fn correlate(&mut self) {
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

    pub(crate) fn find_children(&mut self) {
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
    pub(crate) fn find_padding(&mut self) {
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
    pub(crate) fn statics_used(x: &Obj, f: usize) -> Vec<usize> {
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
    pub(crate) fn correlate_static_locals(&mut self) {
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
        // running kernel's state: refuse rather than guess. Read-only data
        // is no state: the patched code may use its own copy (a constant
        // table the fix changed, renumbered `.N`), which travels with it.
        for (of, _pf, ou, pu) in uses {
            for os in ou {
                let ok = self.twin_o[os].map(|ps| pu.contains(&ps)).unwrap_or(false);
                let read_only = self
                    .o
                    .sym(os)
                    .section()
                    .is_some_and(|sec| !self.o.sec(sec).is_write());
                if !ok && !read_only {
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
}

/// See [`Diff::o_sympos`]. Same-named locals are found by sorting their
/// indices by a hash of the name (a name-keyed map was the differ's memory
/// peak on large objects; sorting by the names themselves cost 1.5 M
/// instructions on the largest corpus pair).
pub(crate) fn local_positions(syms: &[Symbol]) -> Vec<u32> {
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

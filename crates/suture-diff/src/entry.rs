//! Special sections' entry sizes: measured for the release, recorded in
//! the section, or known, and checked against the relocations' period.

use suture_elf::*;

use crate::pipeline::Diff;
use crate::EntrySize;

impl Diff<'_> {
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

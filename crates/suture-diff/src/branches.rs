//! Branches the assembler resolved in place. In a section several functions
//! share (`__sched` code in `.sched.text`, `noinstr`, an object built
//! without `-ffunction-sections`), gcc's rel32 calls and jumps between the
//! section's static functions carry no relocation: the displacement is
//! fixed. The klp object lays its functions out anew, so such a branch is
//! given the relocation it would have had in a section of its own (PLT32
//! for a call, PC32 for a jump, against the function it lands in), in
//! ORIG and PATCHED alike: it is then compared by what it reaches, and
//! written out as a reference like any other. Short (rel8) branches out of
//! a function cannot be turned into relocations; the include stage refuses
//! them.

use iced_x86::{Decoder, DecoderOptions};
use suture_elf::*;

/// Adds the missing relocations to every executable section of `elf` that
/// holds more than one function. Returns, per section, the offsets of the
/// fields given a relocation: their bytes still hold the assembler's
/// displacement, which comparisons mask and the writer zeroes (a RELA
/// field must be 0 for the module loader).
pub(crate) fn resolve_fixed_branches(
    elf: &mut Object,
) -> suture_elf::fx::FxHashMap<usize, Vec<u64>> {
    let mut added: Vec<(usize, Vec<Rela>)> = Vec::new();
    for (sec, s) in elf.sections.iter().enumerate() {
        if !s.is_exec() || s.is_nobits() || elf.rela_section_of(sec).is_none() {
            continue;
        }
        let mut funcs: Vec<(u64, u64, usize)> = elf
            .symbols
            .iter()
            .filter(|x| x.typ == STT_FUNC && x.section() == Some(sec) && x.size > 0)
            .map(|x| (x.value, x.size, x.index))
            .collect();
        if funcs.len() < 2 {
            continue;
        }
        funcs.sort_unstable();
        funcs.dedup_by_key(|f| f.0);
        let relocated: Vec<u64> = elf.relas_of(sec).iter().map(|r| r.offset).collect();
        let is_relocated = |from: u64| {
            let i = relocated.partition_point(|&o| o < from);
            relocated.get(i).is_some_and(|&o| o < from + 4)
        };
        let func_at = |addr: u64| -> Option<(u64, usize)> {
            let i = funcs.partition_point(|f| f.0 <= addr).checked_sub(1)?;
            let (v, size, idx) = funcs[i];
            (addr < v + size).then_some((v, idx))
        };
        let mut extra = Vec::new();
        for &(v, size, _) in &funcs {
            let (a, e) = (v as usize, (v + size) as usize);
            let Some(code) = s.data.get(a..e.min(s.data.len())) else {
                continue;
            };
            let mut d = Decoder::with_ip(64, code, v, DecoderOptions::NONE);
            while d.can_decode() {
                let at = d.ip();
                let insn = d.decode();
                let off = (at - v) as usize;
                let op = code[off];
                let call = insn.len() == 5 && op == 0xe8;
                let jmp = insn.len() == 5 && op == 0xe9;
                let jcc = insn.len() == 6 && op == 0x0f && code[off + 1] & 0xf0 == 0x80;
                if !(call || jmp || jcc) {
                    continue;
                }
                let field = at + insn.len() as u64 - 4;
                if is_relocated(field) {
                    continue;
                }
                let target = insn.near_branch_target();
                if (v..v + size).contains(&target) {
                    continue;
                }
                let Some((tv, tidx)) = func_at(target) else {
                    continue;
                };
                extra.push(Rela {
                    offset: field,
                    sym: tidx,
                    rtype: if call { R_X86_64_PLT32 } else { R_X86_64_PC32 },
                    addend: (target - tv) as i64 - 4,
                });
            }
        }
        if !extra.is_empty() {
            added.push((sec, extra));
        }
    }
    let mut fields = suture_elf::fx::FxHashMap::default();
    for (sec, extra) in added {
        let mut offs: Vec<u64> = extra.iter().map(|r| r.offset).collect();
        offs.sort_unstable();
        if elf.add_relas(sec, extra) {
            fields.insert(sec, offs);
        }
    }
    fields
}

/// Whether `a` and `b` (one function's bytes in ORIG and PATCHED) are equal
/// but for the 4-byte fields at `fields` (offsets relative to the function).
pub(crate) fn equal_masked(a: &[u8], b: &[u8], fields: &[u64]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut masked = vec![false; a.len()];
    for &f in fields {
        for m in masked.iter_mut().skip(f as usize).take(4) {
            *m = true;
        }
    }
    a.iter().zip(b).zip(&masked).all(|((x, y), &m)| m || x == y)
}

//! Where the running kernel's code differs from its image on disk: the sites
//! the kernel rewrites at boot or at run time, listed in tables the image
//! carries (found through their kallsyms bounds). A byte comparison of a
//! function in memory with the image (`suture verify`) masks these sites;
//! anything else that differs is a real difference.
//!
//! - `.altinstructions` (`__alt_instructions`): alternatives, applied at boot
//!   for the CPU's features (`clac`/`stac`, `static_cpu_has` jumps, paravirt
//!   calls on 6.12...): `instrlen` bytes at each site.
//! - `__jump_table` (`__start___jump_table`): static keys, a 2- or 5-byte NOP
//!   that becomes a jump whenever the key is enabled, at any time.
//! - `.smp_locks` (`__smp_locks`): `lock` prefixes, which the kernel turns
//!   into `ds` prefixes while only one CPU runs, and back.
//! - `.parainstructions` (`__parainstructions`, 6.1): paravirt call sites
//!   turned into native instructions at boot: `len` bytes at each site.
//! - `.ibt_endbr_seal` (`__ibt_endbr_seal`, IBT kernels): the `endbr64` of
//!   functions nothing takes the address of, turned into a 4-byte NOP.
//!
//! Calls and jumps with a 32-bit displacement (call-depth thunks, return
//! thunks, retpolines, static calls, the fentry call) are masked by the
//! instruction decoder of the caller, not listed here.

use crate::image::Image;
use crate::kallsyms::Kallsyms;
use crate::{ibt_sealed_sites, Error, Result};

/// Rewritten byte ranges of the image's code, `(address, length)`, sorted by
/// address. Tables the image does not have (no symbols for their bounds)
/// contribute nothing.
pub fn runtime_rewritten_sites(vmlinux: &[u8], kallsyms: &Kallsyms) -> Result<Vec<(u64, usize)>> {
    let image = Image::parse(vmlinux)?;
    let mut sites = Vec::new();
    let (lo, hi) = (kallsyms.unique_addr("_text"), kallsyms.unique_addr("_end"));
    let in_kernel = |a: u64| lo.is_some_and(|lo| a >= lo) && hi.is_some_and(|hi| a < hi);
    if let Some((base, t)) = table(
        &image,
        kallsyms,
        "__alt_instructions",
        "__alt_instructions_end",
    )? {
        sites.extend(alternatives(base, t, &in_kernel)?);
    }
    if let Some((base, t)) = table(&image, kallsyms, "__smp_locks", "__smp_locks_end")? {
        // A `lock` prefix, turned into a `ds` prefix while one CPU runs.
        sites.extend(relative_sites(base, t)?.into_iter().map(|a| (a, 1)));
    }
    if let Some((base, t)) = table(
        &image,
        kallsyms,
        "__start___jump_table",
        "__stop___jump_table",
    )? {
        for code in jump_label_sites(base, t)? {
            // The site holds what objtool or the compiler left: a 2-byte NOP
            // or short jump, else a 5-byte one.
            let len = match image.bytes_at(code, 2) {
                Some([0x66, 0x90] | [0xeb, _]) => 2,
                _ => 5,
            };
            sites.push((code, len));
        }
    }
    if let Some((_, t)) = table(
        &image,
        kallsyms,
        "__parainstructions",
        "__parainstructions_end",
    )? {
        sites.extend(paravirt_sites(t)?);
    }
    sites.extend(
        ibt_sealed_sites(vmlinux, kallsyms)?
            .into_iter()
            .map(|a| (a, 4)),
    );
    sites.sort_unstable();
    sites.dedup();
    Ok(sites)
}

/// The bytes of the table between kallsyms symbols `start` and `end`, with
/// its address; `None` when the kernel has no such table.
fn table<'a>(
    image: &Image<'a>,
    kallsyms: &Kallsyms,
    start: &str,
    end: &str,
) -> Result<Option<(u64, &'a [u8])>> {
    let (Some(s), Some(e)) = (kallsyms.unique_addr(start), kallsyms.unique_addr(end)) else {
        return Ok(None);
    };
    if e < s || e - s > 64 << 20 {
        return Err(Error::Image(format!(
            "{start}..{end} spans {s:#x}..{e:#x}: not a table"
        )));
    }
    let bytes = image.bytes_at(s, (e - s) as usize).ok_or_else(|| {
        Error::Image(format!(
            "{start} at {s:#x} is not in the image's loaded segments"
        ))
    })?;
    Ok(Some((s, bytes)))
}

fn i32_at(b: &[u8], o: usize) -> i64 {
    i32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as i64
}

/// `struct alt_instr`, packed: `s32 instr_offset`, `s32 repl_offset`, then
/// the feature (`u16 cpuid` in Debian's 6.1, `u32 ft_flags` in 6.12), `u8
/// instrlen`, `u8 replacementlen`; the offset is relative to the entry's own
/// field. The layout is the one (14 or 12 bytes) under which every site lies
/// in the kernel (`in_kernel`) and no length is absurd.
pub fn alternatives(
    base: u64,
    table: &[u8],
    in_kernel: &dyn Fn(u64) -> bool,
) -> Result<Vec<(u64, usize)>> {
    for size in [14usize, 12] {
        if table.len() % size != 0 {
            continue;
        }
        let entries: Vec<(u64, usize, usize)> = (0..table.len() / size)
            .map(|i| {
                let o = i * size;
                let site = (base + o as u64).wrapping_add(i32_at(table, o) as u64);
                (
                    site,
                    table[o + size - 2] as usize,
                    table[o + size - 1] as usize,
                )
            })
            .collect();
        if entries
            .iter()
            .all(|&(a, l, r)| in_kernel(a) && l <= 64 && r <= 64)
        {
            return Ok(entries
                .into_iter()
                .filter(|&(_, l, _)| l > 0)
                .map(|(a, l, _)| (a, l))
                .collect());
        }
    }
    Err(Error::Image(format!(
        "the alternatives table ({} bytes) is neither 14- nor 12-byte entries pointing into the kernel",
        table.len()
    )))
}

/// A list of 32-bit offsets, each relative to itself (`.smp_locks`).
pub fn relative_sites(base: u64, table: &[u8]) -> Result<Vec<u64>> {
    if table.len() % 4 != 0 {
        return Err(Error::Image(format!(
            "a site list of {} bytes: not 32-bit offsets",
            table.len()
        )));
    }
    Ok((0..table.len() / 4)
        .map(|i| (base + 4 * i as u64).wrapping_add(i32_at(table, 4 * i) as u64))
        .collect())
}

/// `struct jump_entry` (x86_64): `s32 code`, `s32 target`, `long key`, the
/// offsets relative to their own fields. Returns the code addresses.
pub fn jump_label_sites(base: u64, table: &[u8]) -> Result<Vec<u64>> {
    const SIZE: usize = 16;
    if table.len() % SIZE != 0 {
        return Err(Error::Image(format!(
            "the jump table holds {} bytes: not {SIZE}-byte entries",
            table.len()
        )));
    }
    Ok((0..table.len() / SIZE)
        .map(|i| (base + (i * SIZE) as u64).wrapping_add(i32_at(table, i * SIZE) as u64))
        .collect())
}

/// `struct paravirt_patch_site` (6.1, x86_64): `u8 *instr`, `u8 type`,
/// `u8 len`, padded to 16 bytes.
pub fn paravirt_sites(table: &[u8]) -> Result<Vec<(u64, usize)>> {
    const SIZE: usize = 16;
    if table.len() % SIZE != 0 {
        return Err(Error::Image(format!(
            "the paravirt table holds {} bytes: not {SIZE}-byte entries",
            table.len()
        )));
    }
    Ok(table
        .chunks_exact(SIZE)
        .map(|e| {
            (
                u64::from_le_bytes(e[..8].try_into().unwrap()),
                e[9] as usize,
            )
        })
        .filter(|&(_, len)| len > 0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternative_entries_point_relative_to_themselves() {
        let mut t = Vec::new();
        // Entry 0 at 0x1000: site 0x100 before it, 3 bytes (clac).
        t.extend_from_slice(&(-0x100i32).to_le_bytes());
        t.extend_from_slice(&[0; 4]);
        t.extend_from_slice(&[0; 4]);
        t.extend_from_slice(&[3, 3]);
        // Entry 1 at 0x100e: site 0x20 after it, 5 bytes.
        t.extend_from_slice(&0x20i32.to_le_bytes());
        t.extend_from_slice(&[0; 8]);
        t.extend_from_slice(&[5, 0]);
        let kernel = |a: u64| (0xe00..0x2000).contains(&a);
        assert_eq!(
            alternatives(0x1000, &t, &kernel).unwrap(),
            [(0xf00, 3), (0x102e, 5)]
        );
        assert!(alternatives(0x1000, &t[..13], &kernel).is_err());
        // 6.1's 12-byte entries: site 0x10 after entry 0, 2 bytes; entry 1
        // (at 0x100c) 0x40 after it, 6 bytes.
        let mut t = Vec::new();
        t.extend_from_slice(&0x10i32.to_le_bytes());
        t.extend_from_slice(&[0; 4]);
        t.extend_from_slice(&[0x12, 0x00, 2, 2]);
        t.extend_from_slice(&0x40i32.to_le_bytes());
        t.extend_from_slice(&[0; 4]);
        t.extend_from_slice(&[0x34, 0x00, 6, 0]);
        assert_eq!(
            alternatives(0x1000, &t, &kernel).unwrap(),
            [(0x1010, 2), (0x104c, 6)]
        );
        assert_eq!(
            relative_sites(0x3000, &(-4i32).to_le_bytes()).unwrap(),
            [0x2ffc]
        );
    }

    #[test]
    fn jump_entries_and_paravirt_sites() {
        let mut t = Vec::new();
        t.extend_from_slice(&(-8i32).to_le_bytes());
        t.extend_from_slice(&[0; 12]);
        t.extend_from_slice(&16i32.to_le_bytes());
        t.extend_from_slice(&[0; 12]);
        assert_eq!(jump_label_sites(0x2000, &t).unwrap(), [0x1ff8, 0x2020]);
        let mut p = Vec::new();
        p.extend_from_slice(&0xffff_ffff_8100_0010u64.to_le_bytes());
        p.extend_from_slice(&[7, 6, 0, 0, 0, 0, 0, 0]);
        assert_eq!(paravirt_sites(&p).unwrap(), [(0xffff_ffff_8100_0010, 6)]);
        assert!(paravirt_sites(&p[..15]).is_err());
    }
}

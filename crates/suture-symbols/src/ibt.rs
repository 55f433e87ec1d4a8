//! IBT sealing (`X86_KERNEL_IBT`): objtool lists, in `.ibt_endbr_seal`, every
//! `endbr64` of vmlinux at the start of a function whose address nothing takes;
//! at boot the kernel overwrites each with a 4-byte NOP ("seals" it), so an
//! indirect call or jump to such a function traps. The list stays in the image
//! (between `__ibt_endbr_seal` and `__ibt_endbr_seal_end`, 32-bit offsets
//! relative to each entry), and the image file itself is never sealed.

use crate::image::Image;
use crate::kallsyms::Kallsyms;
use crate::{Error, Result};

/// The `endbr64` instruction.
pub const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// Addresses of the `endbr64` instructions the kernel seals at boot, sorted;
/// empty for a kernel without IBT (no seal list in its symbols).
pub fn ibt_sealed_sites(vmlinux: &[u8], kallsyms: &Kallsyms) -> Result<Vec<u64>> {
    let (Some(start), Some(end)) = (
        kallsyms.unique_addr("__ibt_endbr_seal"),
        kallsyms.unique_addr("__ibt_endbr_seal_end"),
    ) else {
        return Ok(Vec::new());
    };
    if end < start || (end - start) % 4 != 0 || end - start > 64 << 20 {
        return Err(Error::Image(format!(
            "the IBT seal list spans {start:#x}..{end:#x}: not a list of 32-bit offsets"
        )));
    }
    let image = Image::parse(vmlinux)?;
    let list = image
        .bytes_at(start, (end - start) as usize)
        .ok_or_else(|| {
            Error::Image(format!(
                "the IBT seal list at {start:#x} is not in the image's loaded segments"
            ))
        })?;
    let mut sites: Vec<u64> = list
        .chunks_exact(4)
        .enumerate()
        .map(|(i, c)| {
            let rel = i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64;
            (start + 4 * i as u64).wrapping_add(rel as u64)
        })
        .collect();
    sites.sort_unstable();
    sites.dedup();
    Ok(sites)
}

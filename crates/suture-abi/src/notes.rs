//! ELF note records: the GNU build-id that ties a module to the kernel
//! build it was made for. The builder reads it from the release's image
//! (its `PT_NOTE` segment); the host reads the running kernel's from
//! `/sys/kernel/notes`. One reader for both, so that they agree.

/// `NT_GNU_BUILD_ID`.
const NT_GNU_BUILD_ID: u32 = 3;

/// The GNU build-id in a run of ELF notes (namesz, descsz, type, name,
/// desc; 4-byte aligned, little-endian), as lower-case hex; `None` when
/// there is none or a record runs past the end.
pub fn gnu_build_id(notes: &[u8]) -> Option<String> {
    let u32_at = |o: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            notes.get(o..o.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let mut p = 0usize;
    while p.checked_add(12)? <= notes.len() {
        let namesz = u32_at(p)? as usize;
        let descsz = u32_at(p + 4)? as usize;
        let ty = u32_at(p + 8)?;
        let name = notes.get(p + 12..(p + 12).checked_add(namesz)?)?;
        let desc_off = (p + 12).checked_add(namesz.div_ceil(4).checked_mul(4)?)?;
        let desc = notes.get(desc_off..desc_off.checked_add(descsz)?)?;
        if ty == NT_GNU_BUILD_ID && name == b"GNU\0" && !desc.is_empty() {
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        p = desc_off.checked_add(descsz.div_ceil(4).checked_mul(4)?)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(out: &mut Vec<u8>, name: &[u8], ty: u32, desc: &[u8]) {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(name);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out.extend_from_slice(desc);
        out.resize(out.len().div_ceil(4) * 4, 0);
    }

    #[test]
    fn the_gnu_build_id_among_other_notes() {
        let mut n = Vec::new();
        note(&mut n, b"Xen\0", 3, &[1, 2, 3]);
        note(&mut n, b"Linux\0", 6, b"6.1.0");
        note(&mut n, b"GNU\0", 3, &[0xeb, 0x4f, 0xbc, 0xd0, 0x37]);
        assert_eq!(gnu_build_id(&n).as_deref(), Some("eb4fbcd037"));
    }

    #[test]
    fn truncated_or_absent_is_none() {
        let mut n = Vec::new();
        note(&mut n, b"GNU\0", 3, &[0xaa; 20]);
        for cut in [0, 5, 12, 16, n.len() - 1] {
            assert_eq!(gnu_build_id(&n[..cut]), None, "cut at {cut}");
        }
        let mut e = Vec::new();
        note(&mut e, b"GNU\0", 3, &[]);
        assert_eq!(gnu_build_id(&e), None);
        // A size field that would overflow an offset.
        let mut huge = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 3, 0, 0, 0];
        huge.extend_from_slice(b"GNU\0");
        assert_eq!(gnu_build_id(&huge), None);
    }
}

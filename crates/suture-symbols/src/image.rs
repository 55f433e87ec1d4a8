//! A read-only view of an executable ELF image (the extracted vmlinux): enough to
//! turn a virtual address into file bytes and to read the GNU build-id. Parsed by
//! hand because only the program headers and notes matter here, and a stripped
//! image may lack section headers.

use crate::{Error, Result};

#[derive(Debug, Clone, Copy)]
struct Segment {
    vaddr: u64,
    offset: u64,
    filesz: u64,
}

/// An ELF64 little-endian executable in memory.
#[derive(Debug)]
pub struct Image<'a> {
    data: &'a [u8],
    loads: Vec<Segment>,
    notes: Vec<(u64, u64)>,
}

fn rd<const N: usize>(d: &[u8], off: usize) -> Option<[u8; N]> {
    d.get(off..off.checked_add(N)?)?.try_into().ok()
}
pub(crate) fn u16_at(d: &[u8], off: usize) -> Option<u16> {
    rd::<2>(d, off).map(u16::from_le_bytes)
}
pub(crate) fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    rd::<4>(d, off).map(u32::from_le_bytes)
}
pub(crate) fn u64_at(d: &[u8], off: usize) -> Option<u64> {
    rd::<8>(d, off).map(u64::from_le_bytes)
}

impl<'a> Image<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let bad = |m: &str| {
            Error::Image(format!(
                "vmlinux: {m}; pass the ELF that extract_vmlinux produced"
            ))
        };
        if !data.starts_with(b"\x7fELF") {
            return Err(bad("not an ELF file"));
        }
        if data.get(4) != Some(&2) || data.get(5) != Some(&1) {
            return Err(bad("not a 64-bit little-endian ELF file"));
        }
        let phoff = u64_at(data, 0x20).ok_or_else(|| bad("truncated ELF header"))? as usize;
        let phentsize = u16_at(data, 0x36).ok_or_else(|| bad("truncated ELF header"))? as usize;
        let phnum = u16_at(data, 0x38).ok_or_else(|| bad("truncated ELF header"))? as usize;
        if phentsize < 56 {
            return Err(bad("bad program header size"));
        }
        let mut loads = Vec::new();
        let mut notes = Vec::new();
        for i in 0..phnum {
            let p = phoff + i * phentsize;
            let ty = u32_at(data, p).ok_or_else(|| bad("truncated program headers"))?;
            let offset = u64_at(data, p + 8).ok_or_else(|| bad("truncated program headers"))?;
            let vaddr = u64_at(data, p + 16).ok_or_else(|| bad("truncated program headers"))?;
            let filesz = u64_at(data, p + 32).ok_or_else(|| bad("truncated program headers"))?;
            match ty {
                1 => loads.push(Segment {
                    vaddr,
                    offset,
                    filesz,
                }),
                4 => notes.push((offset, filesz)),
                _ => {}
            }
        }
        if loads.is_empty() {
            return Err(bad("no loadable segment"));
        }
        Ok(Image { data, loads, notes })
    }

    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// File bytes at a virtual address, `len` long, when the whole range lies in
    /// one segment's file image.
    pub fn bytes_at(&self, vaddr: u64, len: usize) -> Option<&'a [u8]> {
        // The percpu segment is linked at 0, so a kernel address never lands in
        // it by accident; percpu symbol values do, which is right.
        for s in &self.loads {
            if vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz {
                let rel = vaddr - s.vaddr;
                if rel.checked_add(len as u64)? > s.filesz {
                    return None;
                }
                let start = usize::try_from(s.offset + rel).ok()?;
                return self.data.get(start..start.checked_add(len)?);
            }
        }
        None
    }

    /// The GNU build-id note, lower-case hex.
    pub fn build_id(&self) -> Option<String> {
        self.notes.iter().find_map(|&(off, size)| {
            let start = usize::try_from(off).ok()?;
            let end = start.checked_add(usize::try_from(size).ok()?)?;
            notes_build_id(self.data.get(start..end)?)
        })
    }
}

/// The GNU build-id in a run of ELF notes, such as a `PT_NOTE` segment or a
/// running kernel's `/sys/kernel/notes`, as lower-case hex. Compare it with the
/// image's to make sure a `/proc/kallsyms` copy and an image are one build.
pub fn notes_build_id(notes: &[u8]) -> Option<String> {
    suture_abi::notes::gnu_build_id(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_among_other_notes() {
        let mut n = Vec::new();
        let mut note = |name: &[u8], ty: u32, desc: &[u8]| {
            n.extend_from_slice(&(name.len() as u32).to_le_bytes());
            n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            n.extend_from_slice(&ty.to_le_bytes());
            n.extend_from_slice(name);
            n.resize(n.len().next_multiple_of(4), 0);
            n.extend_from_slice(desc);
            n.resize(n.len().next_multiple_of(4), 0);
        };
        note(b"Xen\0", 6, b"linux\0");
        note(b"GNU\0", 3, &[0xeb, 0x4f, 0xbc, 0xd0, 0x37]);
        assert_eq!(notes_build_id(&n).as_deref(), Some("eb4fbcd037"));
        assert_eq!(notes_build_id(&n[..20]), None);
        assert_eq!(notes_build_id(&[]), None);
    }

    #[test]
    fn bad_images_are_errors() {
        assert!(Image::parse(b"").is_err());
        assert!(Image::parse(b"\x7fELF\x01\x01\x01").is_err());
        let mut h = vec![0u8; 64];
        h[..6].copy_from_slice(b"\x7fELF\x02\x01");
        h[0x20] = 64;
        h[0x36] = 56;
        h[0x38] = 3;
        assert!(Image::parse(&h).is_err(), "program headers past the end");
    }
}

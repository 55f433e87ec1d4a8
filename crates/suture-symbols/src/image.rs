//! A read-only view of an executable ELF image (the extracted vmlinux): enough to
//! turn a virtual address into file bytes and to read the GNU build-id. Only the
//! file header and program headers are read (`object`'s ELF reader), because a
//! stripped image may lack section headers; the notes go to the one build-id
//! reader the host uses too (`suture_abi::notes`).

use crate::{Error, Result};
use object::elf::{self, FileHeader64, ProgramHeader64};
use object::read::elf::{FileHeader, ProgramHeader};
use object::LittleEndian as LE;

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
    /// The `PT_NOTE` segments that lie inside the file.
    notes: Vec<&'a [u8]>,
}

// Little-endian readers for the kallsyms tables and relocated fields the
// other modules decode; `None` past the end.
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
        // The identification bytes first, so that a short or foreign file is
        // named for what it is rather than as a short header.
        if !data.starts_with(&elf::ELFMAG) {
            return Err(bad("not an ELF file"));
        }
        let ident = |field: usize| data.get(field).copied();
        if ident(std::mem::offset_of!(elf::Ident, class)) != Some(elf::ELFCLASS64)
            || ident(std::mem::offset_of!(elf::Ident, data)) != Some(elf::ELFDATA2LSB)
        {
            return Err(bad("not a 64-bit little-endian ELF file"));
        }
        let header = FileHeader64::<LE>::parse(data).map_err(|e| {
            bad(&if data.len() < size_of::<FileHeader64<LE>>() {
                "truncated ELF header".to_string()
            } else {
                format!("bad ELF header ({e})")
            })
        })?;
        if usize::from(header.e_phentsize(LE)) != size_of::<ProgramHeader64<LE>>() {
            return Err(bad("bad program header size"));
        }
        let phdrs = header
            .program_headers(LE, data)
            .map_err(|e| bad(&format!("truncated program headers ({e})")))?;
        let mut loads = Vec::new();
        let mut notes = Vec::new();
        for ph in phdrs {
            match ph.p_type(LE) {
                elf::PT_LOAD => loads.push(Segment {
                    vaddr: ph.p_vaddr(LE),
                    offset: ph.p_offset(LE),
                    filesz: ph.p_filesz(LE),
                }),
                // A note segment outside the file is skipped, as a missing
                // build-id: the image is still usable for its symbols.
                elf::PT_NOTE => notes.extend(ph.data(LE, data).ok()),
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
                let start = usize::try_from(s.offset.checked_add(rel)?).ok()?;
                return self.data.get(start..start.checked_add(len)?);
            }
        }
        None
    }

    /// The GNU build-id note, lower-case hex.
    pub fn build_id(&self) -> Option<String> {
        self.notes
            .iter()
            .find_map(|n| suture_abi::notes::gnu_build_id(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VADDR: u64 = 0xffff_ffff_8100_0000;

    fn note(name: &[u8], ty: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&ty.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    /// An ELF64 executable: its header, the program headers `(p_type,
    /// p_offset, p_vaddr, p_filesz)` right after it, then `body`.
    fn elf(phdrs: &[(u32, u64, u64, u64)], body: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for &(ty, offset, vaddr, filesz) in phdrs {
            let mut p = [0u8; 56];
            p[..4].copy_from_slice(&ty.to_le_bytes());
            p[8..16].copy_from_slice(&offset.to_le_bytes());
            p[16..24].copy_from_slice(&vaddr.to_le_bytes());
            p[32..40].copy_from_slice(&filesz.to_le_bytes());
            f.extend_from_slice(&p);
        }
        f.extend_from_slice(body);
        f
    }

    /// Text at `VADDR`, then the notes, each segment where `elf` puts the body.
    fn image(text: &[u8], notes: &[u8]) -> Vec<u8> {
        let body_at = 64 + 2 * 56;
        let mut body = text.to_vec();
        body.extend_from_slice(notes);
        elf(
            &[
                (elf::PT_LOAD, body_at, VADDR, text.len() as u64),
                (
                    elf::PT_NOTE,
                    body_at + text.len() as u64,
                    0,
                    notes.len() as u64,
                ),
            ],
            &body,
        )
    }

    fn error(data: &[u8]) -> String {
        Image::parse(data).unwrap_err().to_string()
    }

    #[test]
    fn segments_and_build_id() {
        let mut notes = note(b"Xen\0", 6, b"linux\0");
        notes.extend(note(b"GNU\0", 3, &[0xeb, 0x4f, 0xbc, 0xd0, 0x37]));
        let f = image(&[1, 2, 3, 4, 5, 6, 7, 8], &notes);
        let img = Image::parse(&f).unwrap();
        assert_eq!(img.build_id().as_deref(), Some("eb4fbcd037"));
        assert_eq!(img.bytes_at(VADDR + 2, 3), Some(&[3, 4, 5][..]));
        assert_eq!(img.bytes_at(VADDR + 6, 3), None, "runs past the segment");
        assert_eq!(img.bytes_at(VADDR - 1, 1), None);
        assert_eq!(img.data().len(), f.len());

        let other = image(&[0x90; 4], &note(b"Xen\0", 6, b"x"));
        assert_eq!(Image::parse(&other).unwrap().build_id(), None);
    }

    #[test]
    fn any_alignment() {
        let f = image(&[1, 2, 3, 4], &note(b"GNU\0", 3, &[0xab]));
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&f);
        let img = Image::parse(&shifted[1..]).unwrap();
        assert_eq!(img.bytes_at(VADDR + 1, 2), Some(&[2, 3][..]));
        assert_eq!(img.build_id().as_deref(), Some("ab"));
    }

    #[test]
    fn a_segment_outside_the_file_reads_as_nothing() {
        let f = elf(
            &[
                (elf::PT_LOAD, 1 << 40, VADDR, 16),
                (elf::PT_LOAD, u64::MAX - 4, VADDR + 0x100, 16),
                (elf::PT_NOTE, 1 << 40, 0, 12),
            ],
            &[],
        );
        let img = Image::parse(&f).unwrap();
        assert_eq!(img.bytes_at(VADDR, 4), None);
        assert_eq!(img.bytes_at(VADDR + 0x108, 4), None, "offset overflows");
        assert_eq!(img.build_id(), None);
    }

    #[test]
    fn bad_images_are_errors() {
        assert!(error(b"").contains("not an ELF file"));
        assert!(error(b"MZ\x90\x00").contains("not an ELF file"));
        assert!(error(b"\x7fELF\x01\x01\x01").contains("not a 64-bit little-endian"));
        assert!(error(b"\x7fELF\x02\x02\x01").contains("not a 64-bit little-endian"));
        let good = image(&[0xc3], &[]);
        for cut in [6, 16, 63] {
            assert!(
                error(&good[..cut]).contains("truncated ELF header"),
                "cut at {cut}"
            );
        }
        for cut in [64, 100, 64 + 56, 64 + 2 * 56 - 1] {
            assert!(
                error(&good[..cut]).contains("truncated program headers"),
                "cut at {cut}"
            );
        }
        let mut v = good.clone();
        v[6] = 0; // EI_VERSION
        assert!(error(&v).contains("bad ELF header"));
        let mut h = good.clone();
        h[0x36] = 32;
        assert!(error(&h).contains("bad program header size"));
        h[0x36] = 64;
        assert!(error(&h).contains("bad program header size"));
        let mut h = good.clone();
        h[0x38..0x3a].copy_from_slice(&0xfffeu16.to_le_bytes());
        assert!(error(&h).contains("truncated program headers"));
        let mut h = good.clone();
        h[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(
            error(&h).contains("truncated program headers"),
            "phoff overflows"
        );
        assert!(error(&elf(&[(elf::PT_NOTE, 0, 0, 0)], &[])).contains("no loadable segment"));
        assert!(error(&elf(&[], &[])).contains("no loadable segment"));
    }
}

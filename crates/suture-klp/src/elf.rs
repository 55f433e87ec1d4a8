//! Just enough ELF64 (little-endian) to edit a linked object in place: the
//! section header table, the symbol table and RELA sections. Edits only ever
//! append (new section contents, a new section header table at the end of the
//! file), so every existing offset, index and symbol position stays valid; that
//! matters because the livepatch format makes symbol indices ABI.

use anyhow::{bail, ensure, Context, Result};

pub const SHT_SYMTAB: u32 = 2;
pub const SHT_RELA: u32 = 4;
pub const SHF_ALLOC: u64 = 0x2;
pub const SHF_INFO_LINK: u64 = 0x40;
pub use suture_abi::klp::{SHF_RELA_LIVEPATCH, SHN_LIVEPATCH};
pub const SHN_UNDEF: u16 = 0;
pub const SHN_LORESERVE: u16 = 0xff00;
pub const SYM_SIZE: usize = 24;
pub const RELA_SIZE: usize = 24;
const SHDR_SIZE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shdr {
    pub name: u32,
    pub kind: u32,
    pub flags: u64,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
    pub link: u32,
    pub info: u32,
    pub addralign: u64,
    pub entsize: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sym {
    pub name: u32,
    pub info: u8,
    pub other: u8,
    pub shndx: u16,
    pub value: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rela {
    pub offset: u64,
    pub info: u64,
    pub addend: i64,
}

impl Rela {
    pub fn sym(&self) -> usize {
        (self.info >> 32) as usize
    }
}

fn u16_at(b: &[u8], o: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(
        b.get(o..o + 2).context("truncated ELF")?.try_into()?,
    ))
}
fn u32_at(b: &[u8], o: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        b.get(o..o + 4).context("truncated ELF")?.try_into()?,
    ))
}
fn u64_at(b: &[u8], o: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(
        b.get(o..o + 8).context("truncated ELF")?.try_into()?,
    ))
}

/// An ELF file being edited: the bytes, and the section headers decoded from them.
pub struct Elf {
    pub bytes: Vec<u8>,
    pub shdrs: Vec<Shdr>,
    pub shstrndx: usize,
}

impl Elf {
    pub fn parse(bytes: Vec<u8>) -> Result<Elf> {
        ensure!(
            bytes.len() >= 64 && bytes[..4] == *b"\x7fELF",
            "not an ELF file"
        );
        ensure!(
            bytes[4] == 2 && bytes[5] == 1,
            "not a 64-bit little-endian ELF file"
        );
        ensure!(u16_at(&bytes, 18)? == 62, "not an x86_64 object");
        let shoff = u64_at(&bytes, 0x28)? as usize;
        ensure!(
            u16_at(&bytes, 0x3a)? as usize == SHDR_SIZE,
            "unexpected section header size"
        );
        let shnum = u16_at(&bytes, 0x3c)? as usize;
        let shstrndx = u16_at(&bytes, 0x3e)? as usize;
        ensure!(
            shnum > 0 && shnum < SHN_LORESERVE as usize,
            "unsupported section count {shnum}"
        );
        ensure!(shstrndx < shnum, "section name table index out of range");
        let mut shdrs = Vec::with_capacity(shnum);
        for i in 0..shnum {
            let o = shoff
                .checked_add(i * SHDR_SIZE)
                .context("section header table out of range")?;
            shdrs.push(Shdr {
                name: u32_at(&bytes, o)?,
                kind: u32_at(&bytes, o + 4)?,
                flags: u64_at(&bytes, o + 8)?,
                addr: u64_at(&bytes, o + 16)?,
                offset: u64_at(&bytes, o + 24)?,
                size: u64_at(&bytes, o + 32)?,
                link: u32_at(&bytes, o + 40)?,
                info: u32_at(&bytes, o + 44)?,
                addralign: u64_at(&bytes, o + 48)?,
                entsize: u64_at(&bytes, o + 56)?,
            });
        }
        let elf = Elf {
            bytes,
            shdrs,
            shstrndx,
        };
        for (i, s) in elf.shdrs.iter().enumerate() {
            if s.kind != 8 && s.kind != 0 {
                elf.data(i)?;
            }
        }
        Ok(elf)
    }

    pub fn data(&self, i: usize) -> Result<&[u8]> {
        let s = self.shdrs.get(i).context("section index out of range")?;
        let (o, n) = (s.offset as usize, s.size as usize);
        self.bytes
            .get(o..o.checked_add(n).context("section out of range")?)
            .with_context(|| format!("section {i} lies outside the file"))
    }

    pub fn str_at(&self, strtab: usize, off: u32) -> Result<&str> {
        let d = self.data(strtab)?;
        let rest = d
            .get(off as usize..)
            .context("string offset out of range")?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .context("unterminated string")?;
        std::str::from_utf8(&rest[..end]).context("string is not UTF-8")
    }

    pub fn section_name(&self, i: usize) -> Result<&str> {
        self.str_at(self.shstrndx, self.shdrs[i].name)
    }

    pub fn symtab(&self) -> Result<usize> {
        let found: Vec<usize> = (0..self.shdrs.len())
            .filter(|&i| self.shdrs[i].kind == SHT_SYMTAB)
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => bail!("no symbol table"),
            _ => bail!("more than one symbol table"),
        }
    }

    pub fn syms(&self, symtab: usize) -> Result<Vec<Sym>> {
        let d = self.data(symtab)?;
        ensure!(
            d.len() % SYM_SIZE == 0,
            "symbol table size is not a multiple of {SYM_SIZE}"
        );
        (0..d.len() / SYM_SIZE)
            .map(|i| {
                let o = i * SYM_SIZE;
                Ok(Sym {
                    name: u32_at(d, o)?,
                    info: d[o + 4],
                    other: d[o + 5],
                    shndx: u16_at(d, o + 6)?,
                    value: u64_at(d, o + 8)?,
                    size: u64_at(d, o + 16)?,
                })
            })
            .collect()
    }

    pub fn relas(&self, sec: usize) -> Result<Vec<Rela>> {
        let d = self.data(sec)?;
        ensure!(
            d.len() % RELA_SIZE == 0,
            "relocation section size is not a multiple of {RELA_SIZE}"
        );
        (0..d.len() / RELA_SIZE)
            .map(|i| {
                let o = i * RELA_SIZE;
                Ok(Rela {
                    offset: u64_at(d, o)?,
                    info: u64_at(d, o + 8)?,
                    addend: u64_at(d, o + 16)? as i64,
                })
            })
            .collect()
    }

    /// Appends `data` at the end of the file, aligned; returns its offset.
    pub fn append(&mut self, data: &[u8], align: usize) -> u64 {
        let align = align.max(1);
        let padded = self.bytes.len().div_ceil(align) * align;
        self.bytes.resize(padded, 0);
        let at = self.bytes.len() as u64;
        self.bytes.extend_from_slice(data);
        at
    }

    /// Writes the (possibly grown) section header table at the end of the file.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        ensure!(
            self.shdrs.len() < SHN_LORESERVE as usize,
            "too many sections"
        );
        let mut table = Vec::with_capacity(self.shdrs.len() * SHDR_SIZE);
        for s in &self.shdrs {
            table.extend_from_slice(&s.name.to_le_bytes());
            table.extend_from_slice(&s.kind.to_le_bytes());
            table.extend_from_slice(&s.flags.to_le_bytes());
            table.extend_from_slice(&s.addr.to_le_bytes());
            table.extend_from_slice(&s.offset.to_le_bytes());
            table.extend_from_slice(&s.size.to_le_bytes());
            table.extend_from_slice(&s.link.to_le_bytes());
            table.extend_from_slice(&s.info.to_le_bytes());
            table.extend_from_slice(&s.addralign.to_le_bytes());
            table.extend_from_slice(&s.entsize.to_le_bytes());
        }
        let shoff = self.append(&table, 8);
        let n = self.shdrs.len() as u16;
        self.bytes[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        self.bytes[0x3c..0x3e].copy_from_slice(&n.to_le_bytes());
        Ok(self.bytes)
    }

    /// Adds names to a string table by appending a grown copy of it; returns
    /// the offsets of the new names.
    pub fn add_strings(&mut self, strtab: usize, names: &[String]) -> Result<Vec<u32>> {
        let mut data = self.data(strtab)?.to_vec();
        let mut offs = Vec::with_capacity(names.len());
        for n in names {
            offs.push(u32::try_from(data.len()).context("string table too large")?);
            data.extend_from_slice(n.as_bytes());
            data.push(0);
        }
        let at = self.append(&data, 1);
        let s = &mut self.shdrs[strtab];
        s.offset = at;
        s.size = data.len() as u64;
        Ok(offs)
    }
}

pub fn encode_sym(s: &Sym) -> [u8; SYM_SIZE] {
    let mut b = [0u8; SYM_SIZE];
    b[0..4].copy_from_slice(&s.name.to_le_bytes());
    b[4] = s.info;
    b[5] = s.other;
    b[6..8].copy_from_slice(&s.shndx.to_le_bytes());
    b[8..16].copy_from_slice(&s.value.to_le_bytes());
    b[16..24].copy_from_slice(&s.size.to_le_bytes());
    b
}

pub fn encode_rela(r: &Rela) -> [u8; RELA_SIZE] {
    let mut b = [0u8; RELA_SIZE];
    b[0..8].copy_from_slice(&r.offset.to_le_bytes());
    b[8..16].copy_from_slice(&r.info.to_le_bytes());
    b[16..24].copy_from_slice(&r.addend.to_le_bytes());
    b
}

//! The parts of a relocatable x86-64 ELF object (ORIG.o, a .ko) this crate needs.

use std::collections::HashMap;

use object::elf;
use object::read::elf::{FileHeader, Rela as _, SectionHeader, Sym as _};
use object::LittleEndian as LE;

use crate::{Error, Result};

#[derive(Debug)]
pub(crate) struct Sec<'a> {
    pub name: String,
    pub ty: u32,
    pub flags: u64,
    /// Empty for `SHT_NOBITS`.
    pub data: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shn {
    Undef,
    Abs,
    Common,
    /// Any other reserved index (e.g. `SHN_LIVEPATCH`).
    Other(u16),
    Sec(usize),
}

#[derive(Debug, Clone)]
pub(crate) struct Sym {
    pub name: String,
    pub st_type: u8,
    pub bind: u8,
    pub shn: Shn,
    pub value: u64,
    pub size: u64,
}

impl Sym {
    pub fn is_func(&self) -> bool {
        self.st_type == elf::STT_FUNC
    }
    pub fn sec(&self) -> Option<usize> {
        match self.shn {
            Shn::Sec(i) => Some(i),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Rel {
    pub offset: u64,
    pub ty: u32,
    pub sym: usize,
    pub addend: i64,
}

impl Rel {
    /// Width of the relocated field in bytes.
    pub fn width(&self) -> usize {
        suture_elf::rela_width(self.ty)
    }
    pub fn pc_relative(&self) -> bool {
        suture_elf::rela_is_pcrel(self.ty)
    }
    /// Whether the linker writes `S + A` (or `S + A - P`) verbatim, so that the
    /// symbol's address can be read back from the linked field.
    pub fn invertible(&self) -> bool {
        matches!(
            self.ty,
            elf::R_X86_64_PC32
                | elf::R_X86_64_PLT32
                | elf::R_X86_64_PC64
                | elf::R_X86_64_32S
                | elf::R_X86_64_32
                | elf::R_X86_64_64
        )
    }
}

#[derive(Debug)]
pub(crate) struct Obj<'a> {
    pub sections: Vec<Sec<'a>>,
    pub symbols: Vec<Sym>,
    /// Relocations by the index of the section they apply to, sorted by offset.
    pub relocs: HashMap<usize, Vec<Rel>>,
    /// Index of the symbol table, for section symbols' names.
    pub by_name: HashMap<String, Vec<usize>>,
}

impl<'a> Obj<'a> {
    pub fn parse(file: &str, data: &'a [u8]) -> Result<Self> {
        let err = |msg: String| Error::Object {
            file: file.to_string(),
            msg,
        };
        let oe =
            |e: object::read::Error| err(format!("{e}; is it a relocatable x86-64 ELF object?"));
        let hdr = elf::FileHeader64::<LE>::parse(data).map_err(oe)?;
        let e = hdr.endian().map_err(oe)?;
        if hdr.e_type(e) != elf::ET_REL {
            return Err(err("not a relocatable object (ET_REL)".into()));
        }
        if hdr.e_machine(e) != elf::EM_X86_64 {
            return Err(err("not an x86-64 object".into()));
        }
        let table = hdr.sections(e, data).map_err(oe)?;
        let mut sections = Vec::new();
        let mut relocs: HashMap<usize, Vec<Rel>> = HashMap::new();
        for s in table.iter() {
            let name = String::from_utf8_lossy(table.section_name(e, s).map_err(oe)?).into_owned();
            let ty = s.sh_type(e);
            let sdata = if ty == elf::SHT_NOBITS {
                &[][..]
            } else {
                s.data(e, data).map_err(oe)?
            };
            if ty == elf::SHT_RELA {
                let target = s.sh_info(e) as usize;
                let rel: &[elf::Rela64<LE>] = s.data_as_array(e, data).map_err(oe)?;
                let v = relocs.entry(target).or_default();
                for r in rel {
                    v.push(Rel {
                        offset: r.r_offset(e),
                        ty: r.r_type(e, false),
                        sym: r.r_sym(e, false) as usize,
                        addend: r.r_addend(e),
                    });
                }
            }
            sections.push(Sec {
                name,
                ty,
                flags: s.sh_flags(e),
                data: sdata,
            });
        }
        for v in relocs.values_mut() {
            v.sort_by_key(|r| r.offset);
        }
        let symtab = table.symbols(e, data, elf::SHT_SYMTAB).map_err(oe)?;
        let mut symbols = Vec::with_capacity(symtab.len());
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in symtab.symbols().iter().enumerate() {
            let name =
                String::from_utf8_lossy(s.name(e, symtab.strings()).map_err(oe)?).into_owned();
            let shn = match s.st_shndx(e) {
                elf::SHN_UNDEF => Shn::Undef,
                elf::SHN_ABS => Shn::Abs,
                elf::SHN_COMMON => Shn::Common,
                elf::SHN_XINDEX => match symtab
                    .symbol_section(e, s, object::SymbolIndex(i))
                    .map_err(oe)?
                {
                    Some(idx) => Shn::Sec(idx.0),
                    None => Shn::Undef,
                },
                n if n >= elf::SHN_LORESERVE => Shn::Other(n),
                n => Shn::Sec(n as usize),
            };
            if let Shn::Sec(idx) = shn {
                if idx >= sections.len() {
                    return Err(err(format!("symbol {name:?} has bad section index {idx}")));
                }
            }
            if !name.is_empty() {
                by_name.entry(name.clone()).or_default().push(i);
            }
            symbols.push(Sym {
                name,
                st_type: s.st_type(),
                bind: s.st_bind(),
                shn,
                value: s.st_value(e),
                size: s.st_size(e),
            });
        }
        for (&t, v) in &relocs {
            if t >= sections.len() || v.iter().any(|r| r.sym >= symbols.len()) {
                return Err(err("relocation section points outside the object".into()));
            }
        }
        Ok(Obj {
            sections,
            symbols,
            relocs,
            by_name,
        })
    }

    pub fn relocs_in(&self, sec: usize, from: u64, to: u64) -> &[Rel] {
        let Some(v) = self.relocs.get(&sec) else {
            return &[];
        };
        let a = v.partition_point(|r| r.offset < from);
        let b = v.partition_point(|r| r.offset < to);
        &v[a..b]
    }

    /// The bytes of a defined function and the relocations inside it.
    pub fn function(&self, sym: usize) -> Option<(&'a [u8], &[Rel])> {
        let s = &self.symbols[sym];
        let sec = &self.sections[s.sec()?];
        let start = usize::try_from(s.value).ok()?;
        let end = start.checked_add(usize::try_from(s.size).ok()?)?;
        let bytes = sec.data.get(start..end)?;
        Some((bytes, self.relocs_in(s.sec()?, s.value, s.value + s.size)))
    }
}

/// A copy of a byte slice with 8-byte alignment, since the ELF reader casts
/// headers in place and callers' buffers (`include_bytes!`, slices into larger
/// files) need not be aligned. Borrowed as is when already aligned.
pub(crate) enum Aligned<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u64>, usize),
}

impl<'a> Aligned<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        if (data.as_ptr() as usize) & 7 == 0 {
            return Aligned::Borrowed(data);
        }
        let mut v = vec![0u64; data.len().div_ceil(8)];
        for (w, c) in v.iter_mut().zip(data.chunks(8)) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            *w = u64::from_ne_bytes(b);
        }
        Aligned::Owned(v, data.len())
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Aligned::Borrowed(d) => d,
            // SAFETY: a u64 buffer viewed as bytes, within its length.
            Aligned::Owned(v, n) => unsafe {
                std::slice::from_raw_parts(v.as_ptr() as *const u8, *n)
            },
        }
    }
}

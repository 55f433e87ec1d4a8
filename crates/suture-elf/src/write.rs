//! A small writer for ELF64 x86_64 relocatable objects.
//!
//! The caller describes sections, symbols (in final order) and relocations; the
//! writer adds the NULL section, `.symtab`, `.strtab`, `.shstrtab`, one `.rela<name>`
//! per section that has relocations and, when needed, `.symtab_shndx`.

use crate::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SymSection {
    Undef,
    /// Index into `Builder::sections`.
    Section(usize),
    /// A reserved index written as is (SHN_ABS, SHN_COMMON, SHN_LIVEPATCH...).
    Reserved(u32),
}

#[derive(Debug, Clone)]
pub struct OutSymbol {
    pub name: String,
    pub bind: u8,
    pub typ: u8,
    pub other: u8,
    pub section: SymSection,
    pub value: u64,
    pub size: u64,
}

impl OutSymbol {
    /// A reference to a global defined elsewhere: the object's imports,
    /// among them the `.klp.sym.*` symbols of livepatch relocations.
    pub fn undefined_global(name: impl Into<String>) -> OutSymbol {
        OutSymbol {
            name: name.into(),
            bind: crate::STB_GLOBAL,
            typ: crate::STT_NOTYPE,
            other: 0,
            section: SymSection::Undef,
            value: 0,
            size: 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct OutRela {
    pub offset: u64,
    /// Index into `Builder::symbols` (0 is the NULL symbol the writer adds).
    pub sym: usize,
    pub rtype: u32,
    pub addend: i64,
}

/// The largest section alignment the writer accepts (64 KiB; kernel objects
/// use at most a page).
pub const MAX_ALIGN: u64 = 1 << 16;

#[derive(Debug, Clone)]
pub struct OutSection {
    pub name: String,
    pub sh_type: u32,
    pub flags: u64,
    pub addralign: u64,
    pub entsize: u64,
    /// Contents; for SHT_NOBITS only `nobits_size` matters.
    pub data: Vec<u8>,
    pub nobits_size: u64,
    pub relas: Vec<OutRela>,
    /// Flags of the `.rela` section (SHF_INFO_LINK is always added).
    pub rela_flags: u64,
}

impl OutSection {
    pub fn size(&self) -> u64 {
        if self.sh_type == SHT_NOBITS {
            self.nobits_size
        } else {
            self.data.len() as u64
        }
    }
}

/// Symbols are written in the order given, after the NULL symbol: index `i` in
/// `symbols` becomes symbol table index `i + 1`, which is what `OutRela::sym`
/// counts (so `sym == 0` is the NULL symbol). Locals must come before globals.
#[derive(Debug, Default, Clone)]
pub struct Builder {
    pub sections: Vec<OutSection>,
    pub symbols: Vec<OutSymbol>,
}

struct StrTab {
    data: Vec<u8>,
    map: HashMap<String, u32>,
}
impl StrTab {
    fn new() -> Self {
        StrTab {
            data: vec![0],
            map: HashMap::default(),
        }
    }
    fn add(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        if let Some(&o) = self.map.get(s) {
            return o;
        }
        let o = self.data.len() as u32;
        self.data.extend_from_slice(s.as_bytes());
        self.data.push(0);
        self.map.insert(s.to_string(), o);
        o
    }
}

struct Hdr {
    name: u32,
    sh_type: u32,
    flags: u64,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
    align: u64,
    entsize: u64,
}

impl Builder {
    /// The name of output section header `hi` (user sections come first, after NULL).
    fn section_name(&self, hi: usize) -> String {
        hi.checked_sub(1)
            .and_then(|i| self.sections.get(i))
            .map(|s| s.name.clone())
            .unwrap_or_else(|| format!("#{hi}"))
    }

    pub fn write(&self) -> Result<Vec<u8>, ElfError> {
        let nuser = self.sections.len();
        let nrela = self.sections.iter().filter(|s| !s.relas.is_empty()).count();
        // Section order: NULL, user sections, their .rela twins, .symtab, .strtab,
        // [.symtab_shndx], .shstrtab.
        let mut total = 1 + nuser + nrela + 3;
        let need_xindex = total >= SHN_LORESERVE as usize;
        if need_xindex {
            total += 1;
        }
        let user_index = |i: usize| (1 + i) as u32;
        let symtab_idx = (1 + nuser + nrela) as u32;
        let strtab_idx = symtab_idx + 1;
        let xindex_idx = strtab_idx + 1;
        let shstrtab_idx = if need_xindex {
            xindex_idx + 1
        } else {
            strtab_idx + 1
        };

        let mut first_global = None;
        for (i, s) in self.symbols.iter().enumerate() {
            if s.bind == STB_LOCAL {
                if first_global.is_some() {
                    return Err(ElfError::Write(format!(
                        "local symbol {} follows a global one",
                        s.name
                    )));
                }
            } else if first_global.is_none() {
                first_global = Some(i + 1);
            }
            if let SymSection::Section(x) = s.section {
                if x >= nuser {
                    return Err(ElfError::Write(format!(
                        "symbol {} refers to section {x}, out of range",
                        s.name
                    )));
                }
            }
        }
        let nsyms = self.symbols.len() + 1;
        let first_global = first_global.unwrap_or(nsyms);

        let mut strtab = StrTab::new();
        let mut symdata = vec![0u8; 24];
        let mut xdata = vec![0u8; 4];
        for s in &self.symbols {
            let name = strtab.add(&s.name);
            let shndx = match s.section {
                SymSection::Undef => 0,
                SymSection::Section(x) => user_index(x),
                SymSection::Reserved(r) => r,
            };
            let (raw, ext) =
                if shndx >= SHN_LORESERVE && matches!(s.section, SymSection::Section(_)) {
                    (SHN_XINDEX as u16, shndx)
                } else {
                    (shndx as u16, 0)
                };
            symdata.extend_from_slice(&name.to_le_bytes());
            symdata.push((s.bind << 4) | (s.typ & 0xf));
            symdata.push(s.other);
            symdata.extend_from_slice(&raw.to_le_bytes());
            symdata.extend_from_slice(&s.value.to_le_bytes());
            symdata.extend_from_slice(&s.size.to_le_bytes());
            xdata.extend_from_slice(&ext.to_le_bytes());
        }

        let mut shstr = StrTab::new();
        let mut hdrs: Vec<Hdr> = Vec::with_capacity(total);
        let mut blobs: Vec<(usize, Vec<u8>)> = Vec::new(); // (header index, data)
        hdrs.push(Hdr {
            name: 0,
            sh_type: 0,
            flags: 0,
            offset: 0,
            size: 0,
            link: 0,
            info: 0,
            align: 0,
            entsize: 0,
        });
        for s in &self.sections {
            hdrs.push(Hdr {
                name: shstr.add(&s.name),
                sh_type: s.sh_type,
                flags: s.flags,
                offset: 0,
                size: s.size(),
                link: 0,
                info: 0,
                align: s.addralign,
                entsize: s.entsize,
            });
            if s.sh_type != SHT_NOBITS {
                blobs.push((hdrs.len() - 1, s.data.clone()));
            }
        }
        for (i, s) in self.sections.iter().enumerate() {
            if s.relas.is_empty() {
                continue;
            }
            let mut d = Vec::with_capacity(s.relas.len() * 24);
            for r in &s.relas {
                if r.sym >= nsyms {
                    return Err(ElfError::Write(format!(
                        "{}: relocation to symbol {}, out of range",
                        s.name, r.sym
                    )));
                }
                if r.offset + rela_width(r.rtype) as u64 > s.size() {
                    return Err(ElfError::Write(format!(
                        "{}: relocation at {:#x} outside the section",
                        s.name, r.offset
                    )));
                }
                d.extend_from_slice(&r.offset.to_le_bytes());
                d.extend_from_slice(&(((r.sym as u64) << 32) | r.rtype as u64).to_le_bytes());
                d.extend_from_slice(&r.addend.to_le_bytes());
            }
            hdrs.push(Hdr {
                name: shstr.add(&format!(".rela{}", s.name)),
                sh_type: SHT_RELA,
                flags: s.rela_flags | SHF_INFO_LINK,
                offset: 0,
                size: d.len() as u64,
                link: symtab_idx,
                info: user_index(i),
                align: 8,
                entsize: 24,
            });
            blobs.push((hdrs.len() - 1, d));
        }
        hdrs.push(Hdr {
            name: shstr.add(".symtab"),
            sh_type: SHT_SYMTAB,
            flags: 0,
            offset: 0,
            size: symdata.len() as u64,
            link: strtab_idx,
            info: first_global as u32,
            align: 8,
            entsize: 24,
        });
        blobs.push((hdrs.len() - 1, symdata));
        hdrs.push(Hdr {
            name: shstr.add(".strtab"),
            sh_type: SHT_STRTAB,
            flags: 0,
            offset: 0,
            size: strtab.data.len() as u64,
            link: 0,
            info: 0,
            align: 1,
            entsize: 0,
        });
        blobs.push((hdrs.len() - 1, strtab.data));
        if need_xindex {
            hdrs.push(Hdr {
                name: shstr.add(".symtab_shndx"),
                sh_type: SHT_SYMTAB_SHNDX,
                flags: 0,
                offset: 0,
                size: xdata.len() as u64,
                link: symtab_idx,
                info: 0,
                align: 4,
                entsize: 4,
            });
            blobs.push((hdrs.len() - 1, xdata));
        }
        let shstr_name = shstr.add(".shstrtab");
        hdrs.push(Hdr {
            name: shstr_name,
            sh_type: SHT_STRTAB,
            flags: 0,
            offset: 0,
            size: 0,
            link: 0,
            info: 0,
            align: 1,
            entsize: 0,
        });
        let shstr_data = shstr.data;
        hdrs.last_mut().unwrap().size = shstr_data.len() as u64;
        blobs.push((hdrs.len() - 1, shstr_data));
        debug_assert_eq!(hdrs.len(), total);

        let mut out = vec![0u8; 64];
        for (hi, data) in &blobs {
            let align = hdrs[*hi].align.max(1);
            // The file offset honours the alignment, so an absurd one (from a
            // corrupt input: the fuzzer found 2^31) would mean gigabytes of
            // padding. Kernel objects use at most a page.
            if !align.is_power_of_two() || align > MAX_ALIGN {
                return Err(ElfError::Write(format!(
                    "section {}: alignment {align} is not a power of two up to {MAX_ALIGN}",
                    self.section_name(*hi)
                )));
            }
            out.resize(out.len().next_multiple_of(align as usize), 0);
            hdrs[*hi].offset = out.len() as u64;
            out.extend_from_slice(data);
        }
        // NOBITS sections still get a plausible offset.
        let end = out.len() as u64;
        for h in hdrs.iter_mut().skip(1) {
            if h.offset == 0 {
                h.offset = end;
            }
        }
        while out.len() % 8 != 0 {
            out.push(0);
        }
        let shoff = out.len() as u64;
        for (i, h) in hdrs.iter().enumerate() {
            let (size, link) = if i == 0 && need_xindex {
                (total as u64, shstrtab_idx)
            } else {
                (h.size, h.link)
            };
            out.extend_from_slice(&h.name.to_le_bytes());
            out.extend_from_slice(&h.sh_type.to_le_bytes());
            out.extend_from_slice(&h.flags.to_le_bytes());
            out.extend_from_slice(&0u64.to_le_bytes());
            out.extend_from_slice(&h.offset.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&link.to_le_bytes());
            out.extend_from_slice(&h.info.to_le_bytes());
            out.extend_from_slice(&h.align.to_le_bytes());
            out.extend_from_slice(&h.entsize.to_le_bytes());
        }
        let hdr = &mut out[..64];
        hdr[..4].copy_from_slice(b"\x7fELF");
        hdr[4] = 2; // ELFCLASS64
        hdr[5] = 1; // little-endian
        hdr[6] = 1; // EV_CURRENT
        hdr[16..18].copy_from_slice(&ET_REL.to_le_bytes());
        hdr[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        hdr[20..24].copy_from_slice(&1u32.to_le_bytes());
        hdr[40..48].copy_from_slice(&shoff.to_le_bytes());
        hdr[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        hdr[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        let (shnum, shstrndx) = if need_xindex {
            (0u16, SHN_XINDEX as u16)
        } else {
            (total as u16, shstrtab_idx as u16)
        };
        hdr[60..62].copy_from_slice(&shnum.to_le_bytes());
        hdr[62..64].copy_from_slice(&shstrndx.to_le_bytes());
        Ok(out)
    }
}

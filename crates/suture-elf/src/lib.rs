//! suture-elf: an ELF64 little-endian x86_64 relocatable-object model, no I/O.
//!
//! [`Object::parse`] turns bytes into sections, symbols and relocations, checking
//! every index and range so that corrupt input gives an [`ElfError`], never a panic.
//! [`Builder`] writes a relocatable object with the symbol order, `st_shndx` and
//! section flags exactly as the caller gives them (the differ needs that control:
//! `ld -r` and the module loader are picky about both).

// The workspace's rust-version (1.80) predates `is_multiple_of` (1.87).
#![allow(unknown_lints, clippy::manual_is_multiple_of)]

pub mod fx;
mod write;
use fx::FxHashMap as HashMap;
use std::sync::Arc;
pub use write::{Builder, OutRela, OutSection, OutSymbol, SymSection};

pub const ET_REL: u16 = 1;
pub const EM_X86_64: u16 = 62;

pub const SHT_NULL: u32 = 0;
pub const SHT_PROGBITS: u32 = 1;
pub const SHT_SYMTAB: u32 = 2;
pub const SHT_STRTAB: u32 = 3;
pub const SHT_RELA: u32 = 4;
pub const SHT_NOBITS: u32 = 8;
pub const SHT_REL: u32 = 9;
pub const SHT_GROUP: u32 = 17;
pub const SHT_SYMTAB_SHNDX: u32 = 18;

pub const SHF_WRITE: u64 = 0x1;
pub const SHF_ALLOC: u64 = 0x2;
pub const SHF_EXECINSTR: u64 = 0x4;
pub const SHF_MERGE: u64 = 0x10;
pub const SHF_STRINGS: u64 = 0x20;
pub const SHF_INFO_LINK: u64 = 0x40;
pub const SHF_GROUP: u64 = 0x200;
pub const SHF_RELA_LIVEPATCH: u64 = suture_abi::klp::SHF_RELA_LIVEPATCH;

pub const SHN_UNDEF: u32 = 0;
pub const SHN_LORESERVE: u32 = 0xff00;
/// As `st_shndx` is read here (widened): see suture-abi.
pub const SHN_LIVEPATCH: u32 = suture_abi::klp::SHN_LIVEPATCH as u32;
pub const SHN_ABS: u32 = 0xfff1;
pub const SHN_COMMON: u32 = 0xfff2;
pub const SHN_XINDEX: u32 = 0xffff;

pub const STB_LOCAL: u8 = 0;
pub const STB_GLOBAL: u8 = 1;
pub const STB_WEAK: u8 = 2;

pub const STT_NOTYPE: u8 = 0;
pub const STT_OBJECT: u8 = 1;
pub const STT_FUNC: u8 = 2;
pub const STT_SECTION: u8 = 3;
pub const STT_FILE: u8 = 4;
pub const STT_TLS: u8 = 6;

pub const R_X86_64_NONE: u32 = 0;
pub const R_X86_64_64: u32 = 1;
pub const R_X86_64_PC32: u32 = 2;
pub const R_X86_64_PLT32: u32 = 4;
pub const R_X86_64_GOTPCREL: u32 = 9;
pub const R_X86_64_32: u32 = 10;
pub const R_X86_64_32S: u32 = 11;
pub const R_X86_64_16: u32 = 12;
pub const R_X86_64_PC16: u32 = 13;
pub const R_X86_64_8: u32 = 14;
pub const R_X86_64_PC8: u32 = 15;
pub const R_X86_64_PC64: u32 = 24;
pub const R_X86_64_GOTOFF64: u32 = 25;
pub const R_X86_64_GOTPCRELX: u32 = 41;
pub const R_X86_64_REX_GOTPCRELX: u32 = 42;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("unsupported ELF: {0}")]
    Unsupported(String),
    #[error("truncated or corrupt ELF: {0}")]
    Corrupt(String),
    #[error("cannot write ELF: {0}")]
    Write(String),
}

fn corrupt<T>(msg: impl Into<String>) -> Result<T, ElfError> {
    Err(ElfError::Corrupt(msg.into()))
}

#[derive(Debug, Clone)]
pub struct Section {
    pub index: usize,
    pub name: Name,
    pub sh_type: u32,
    pub flags: u64,
    pub size: u64,
    pub link: u32,
    pub info: u32,
    pub addralign: u64,
    pub entsize: u64,
    /// File contents (empty for SHT_NOBITS; `size` still holds its memory size).
    pub data: Data,
}

/// The bytes a whole input file is read into, shared by its sections.
pub type Shared = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A section's contents: a range of the input, not a copy. Sharing matters for
/// the differ's memory: a kernel object is mostly debug information nobody
/// reads, and with a memory-mapped input those pages are never even loaded.
#[derive(Clone)]
pub struct Data {
    // A thin pointer to the shared buffer: 8 bytes less in every section and
    // name (a kernel object has tens of thousands) than the fat `Shared`.
    buf: Arc<Buffer>,
    // u32: the parser refuses inputs of 4 GiB or more; it keeps a Section
    // and a Name 8 bytes smaller (tens of thousands of them per object).
    start: u32,
    len: u32,
}

/// A `Shared` buffer with its bytes' address taken once: reading a name or a
/// section then costs no dynamic call (names are read millions of times).
struct Buffer {
    ptr: *const u8,
    len: usize,
    _owner: Shared,
}

// SAFETY: the bytes are immutable and owned by a `Send + Sync` value.
unsafe impl Send for Buffer {}
unsafe impl Sync for Buffer {}

impl Buffer {
    fn new(owner: Shared) -> Buffer {
        let b: &[u8] = (*owner).as_ref();
        Buffer {
            ptr: b.as_ptr(),
            len: b.len(),
            _owner: owner,
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `_owner` lives as long as `self` and only shared references
        // to it exist (this `Arc` holds one), so the slice its `as_ref` gave
        // stays valid and unchanged.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Data {
    pub fn empty() -> Data {
        Data {
            buf: Arc::new(Buffer::new(Arc::new(Vec::<u8>::new()))),
            start: 0,
            len: 0,
        }
    }
}

impl Data {
    /// Where the contents start in the buffer they were parsed from (for a
    /// section: its file offset).
    pub fn start(&self) -> usize {
        self.start as usize
    }
}

impl From<Vec<u8>> for Data {
    fn from(v: Vec<u8>) -> Data {
        let len = u32::try_from(v.len()).expect("section data of 4 GiB or more");
        Data {
            buf: Arc::new(Buffer::new(Arc::new(v))),
            start: 0,
            len,
        }
    }
}

impl std::ops::Deref for Data {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let start = self.start as usize;
        &self.buf.bytes()[start..start + self.len as usize]
    }
}

/// A symbol or section name. Parsed names point into the input's string
/// table instead of being copied: a kernel object has tens of thousands of
/// them, and a `String` each was a fifth of the differ's heap.
#[derive(Clone)]
pub struct Name(Data);

impl Name {
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks that the bytes are UTF-8 (`from_table`
        // replaces invalid ones in an owned copy), and `Data` is immutable.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The name at `range` of `table`, borrowed when it is UTF-8.
    fn from_table(table: &Data, start: usize, len: usize) -> Name {
        let b = &table[start..start + len];
        if std::str::from_utf8(b).is_ok() {
            Name(Data {
                buf: table.buf.clone(),
                start: table.start + start as u32,
                len: len as u32,
            })
        } else {
            // Corrupt input only: names are ASCII in practice.
            Name::from(String::from_utf8_lossy(b).into_owned())
        }
    }
}

impl Default for Name {
    fn default() -> Name {
        Name(Data::empty())
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        Name(Data::from(s.into_bytes()))
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name::from(s.to_owned())
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for Name {}
impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}
impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}
impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        self == other.as_str()
    }
}
impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        *self == other.as_str()
    }
}
impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}
impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Name {
    fn cmp(&self, other: &Name) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Data({} bytes)", self.len)
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Data) -> bool {
        **self == **other
    }
}

/// How much of an object to read.
#[derive(Debug, Clone)]
pub struct ParseOptions {
    /// Read the relocations of `.debug*` sections. The differ does not carry
    /// debug information over and skips them: in a kernel object they are
    /// most of the relocations (and of the memory a full parse takes).
    pub debug_relocations: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            debug_relocations: true,
        }
    }
}

impl Section {
    pub fn is_exec(&self) -> bool {
        self.flags & SHF_EXECINSTR != 0
    }
    pub fn is_alloc(&self) -> bool {
        self.flags & SHF_ALLOC != 0
    }
    pub fn is_write(&self) -> bool {
        self.flags & SHF_WRITE != 0
    }
    pub fn is_strings(&self) -> bool {
        self.flags & SHF_STRINGS != 0
    }
    pub fn is_nobits(&self) -> bool {
        self.sh_type == SHT_NOBITS
    }
}

#[derive(Debug, Clone)]
pub struct Symbol {
    pub index: usize,
    pub name: Name,
    pub value: u64,
    pub size: u64,
    pub bind: u8,
    pub typ: u8,
    pub other: u8,
    /// The section index, already resolved through SHT_SYMTAB_SHNDX when the raw
    /// field is SHN_XINDEX; reserved values (SHN_ABS, SHN_COMMON...) kept as is.
    pub shndx: u32,
    /// `shndx` is a reserved value (SHN_ABS, SHN_COMMON, SHN_LIVEPATCH...), not a
    /// section: with extended numbering a real index may exceed SHN_LORESERVE.
    pub reserved: bool,
}

impl Symbol {
    /// The defining section, when it is a real section.
    pub fn section(&self) -> Option<usize> {
        if self.shndx == SHN_UNDEF || self.reserved {
            None
        } else {
            Some(self.shndx as usize)
        }
    }
    pub fn is_undef(&self) -> bool {
        self.shndx == SHN_UNDEF
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rela {
    pub offset: u64,
    pub sym: usize,
    pub rtype: u32,
    pub addend: i64,
}

/// A section's relocations sorted by offset, read as `Rela`s on the fly from
/// the input's own SHT_RELA contents (24-byte entries, checked at parse):
/// copying them into `Rela`s took a fifth of the differ's heap.
#[derive(Clone, Copy)]
pub struct Relas<'a>(RelasRepr<'a>);

#[derive(Clone, Copy)]
enum RelasRepr<'a> {
    Input(&'a [u8]),
    Sorted(&'a [Rela]),
}

impl<'a> Relas<'a> {
    pub fn len(&self) -> usize {
        match self.0 {
            RelasRepr::Input(b) => b.len() / 24,
            RelasRepr::Sorted(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> Option<Rela> {
        match self.0 {
            RelasRepr::Input(b) => {
                let e = b.get(i * 24..i * 24 + 24)?;
                let word = |o: usize| u64::from_le_bytes(e[o..o + 8].try_into().unwrap());
                let info = word(8);
                Some(Rela {
                    offset: word(0),
                    sym: (info >> 32) as usize,
                    rtype: info as u32,
                    addend: word(16) as i64,
                })
            }
            RelasRepr::Sorted(v) => v.get(i).copied(),
        }
    }

    pub fn iter(&self) -> RelaIter<'a> {
        RelaIter {
            list: *self,
            range: 0..self.len(),
        }
    }

    pub fn to_vec(&self) -> Vec<Rela> {
        self.iter().collect()
    }

    pub fn first(&self) -> Option<Rela> {
        self.get(0)
    }

    /// The relocations `range` of these (clamped to the end).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Relas<'a> {
        let end = range.end.min(self.len());
        let start = range.start.min(end);
        Relas(match self.0 {
            RelasRepr::Input(b) => RelasRepr::Input(&b[start * 24..end * 24]),
            RelasRepr::Sorted(v) => RelasRepr::Sorted(&v[start..end]),
        })
    }

    /// The index of the first relocation for which `pred` is false (`pred`
    /// must hold for a prefix, as with `slice::partition_point`).
    pub fn partition_point(&self, mut pred: impl FnMut(&Rela) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(&self.get(mid).unwrap()) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

impl std::fmt::Debug for Relas<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for Relas<'a> {
    type Item = Rela;
    type IntoIter = RelaIter<'a>;
    fn into_iter(self) -> RelaIter<'a> {
        self.iter()
    }
}

impl<'a> IntoIterator for &Relas<'a> {
    type Item = Rela;
    type IntoIter = RelaIter<'a>;
    fn into_iter(self) -> RelaIter<'a> {
        self.iter()
    }
}

pub struct RelaIter<'a> {
    list: Relas<'a>,
    range: std::ops::Range<usize>,
}

impl Iterator for RelaIter<'_> {
    type Item = Rela;
    fn next(&mut self) -> Option<Rela> {
        self.range.next().and_then(|i| self.list.get(i))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.range.size_hint()
    }
}

impl DoubleEndedIterator for RelaIter<'_> {
    fn next_back(&mut self) -> Option<Rela> {
        self.range.next_back().and_then(|i| self.list.get(i))
    }
}

impl ExactSizeIterator for RelaIter<'_> {}

#[derive(Debug, Clone)]
pub struct Object {
    pub e_type: u16,
    pub e_machine: u16,
    pub e_flags: u32,
    pub sections: Vec<Section>,
    pub symbols: Vec<Symbol>,
    /// Section index of the symbol table, if any.
    pub symtab: Option<usize>,
    /// The SHT_RELA section that applies to each section (0: none). Dense
    /// vectors by section index here and in `secsym`: maps cost several
    /// times more at a kernel object's thousands of sections.
    rela_sec: Vec<u32>,
    /// Sorted copies of the relocation tables that were not sorted by offset
    /// (the others are read in place, see [`Relas`]).
    sorted_relas: HashMap<usize, Vec<Rela>>,
    /// Section index by the hash of its name (the first section of a name
    /// wins), so the index borrows the names instead of copying them.
    by_name: HashMap<u64, usize>,
    /// Sections whose name hash collides with a different name's.
    by_name_collided: Vec<usize>,
    /// STT_SECTION symbol of each section (0: none).
    secsym: Vec<u32>,
}

fn rd_u16(b: &[u8], off: usize) -> Result<u16, ElfError> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| ElfError::Corrupt(format!("read of 2 bytes at {off:#x} past the end")))
}
fn rd_u32(b: &[u8], off: usize) -> Result<u32, ElfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap()))
        .ok_or_else(|| ElfError::Corrupt(format!("read of 4 bytes at {off:#x} past the end")))
}
fn rd_u64(b: &[u8], off: usize) -> Result<u64, ElfError> {
    b.get(off..off + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
        .ok_or_else(|| ElfError::Corrupt(format!("read of 8 bytes at {off:#x} past the end")))
}

fn slice(b: &[u8], off: u64, size: u64, what: impl Fn() -> String) -> Result<&[u8], ElfError> {
    let end = off
        .checked_add(size)
        .ok_or_else(|| ElfError::Corrupt(format!("{}: offset overflow", what())))?;
    if end > b.len() as u64 {
        return corrupt(format!(
            "{}: range {off:#x}..{end:#x} past the end of the file ({:#x} bytes)",
            what(),
            b.len()
        ));
    }
    Ok(&b[off as usize..end as usize])
}

/// The NUL-terminated name at `off`. `what` names the table entry for an error
/// message and is only called on error: formatting it for every symbol of a
/// kernel object cost more than reading the symbol.
fn cstr(tab: &Data, off: u64, what: impl Fn() -> String) -> Result<Name, ElfError> {
    if off >= tab.len() as u64 {
        if off == 0 {
            return Ok(Name::default());
        }
        return corrupt(format!(
            "{}: name offset {off:#x} outside its string table",
            what()
        ));
    }
    let rest = &tab[off as usize..];
    let end = rest
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| ElfError::Corrupt(format!("{}: unterminated name", what())))?;
    Ok(Name::from_table(tab, off as usize, end))
}

impl Object {
    /// Parses a copy of `b`.
    pub fn parse(b: &[u8]) -> Result<Object, ElfError> {
        Self::parse_shared(Arc::new(b.to_vec()), &ParseOptions::default())
    }

    /// Parses `buf` without copying section contents out of it.
    pub fn parse_shared(buf: Shared, opts: &ParseOptions) -> Result<Object, ElfError> {
        let b: &[u8] = (*buf).as_ref();
        let owner = Arc::new(Buffer::new(buf.clone()));
        if b.len() < 4 || &b[..4] != b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        if b.len() < 64 {
            return corrupt("ELF header truncated");
        }
        if u32::try_from(b.len()).is_err() {
            return Err(ElfError::Unsupported(
                "an object file of 4 GiB or more".into(),
            ));
        }
        if b[4] != 2 {
            return Err(ElfError::Unsupported("not ELF64".into()));
        }
        if b[5] != 1 {
            return Err(ElfError::Unsupported("not little-endian".into()));
        }
        let e_type = rd_u16(b, 16)?;
        let e_machine = rd_u16(b, 18)?;
        if e_machine != EM_X86_64 {
            return Err(ElfError::Unsupported(format!(
                "machine {e_machine} is not x86_64 (62)"
            )));
        }
        if e_type != ET_REL {
            return Err(ElfError::Unsupported(format!(
                "ELF type {e_type} is not a relocatable object (1)"
            )));
        }
        let e_flags = rd_u32(b, 48)?;
        let shoff = rd_u64(b, 40)?;
        let shentsize = rd_u16(b, 58)? as u64;
        let mut shnum = rd_u16(b, 60)? as u64;
        let mut shstrndx = rd_u16(b, 62)? as u64;
        if shoff == 0 {
            return corrupt("no section header table");
        }
        if shentsize != 64 {
            return corrupt(format!("section header size {shentsize}, expected 64"));
        }
        // Extended numbering: the real counts live in section header 0.
        let sh0 = slice(b, shoff, 64, || "section header 0".into())?;
        if shnum == 0 {
            shnum = rd_u64(sh0, 32)?;
        }
        if shstrndx == SHN_XINDEX as u64 {
            shstrndx = rd_u32(sh0, 40)? as u64;
        }
        let table_size = shnum
            .checked_mul(64)
            .ok_or_else(|| ElfError::Corrupt("section count overflow".into()))?;
        let shdrs = slice(b, shoff, table_size, || "section header table".into())?;
        if shstrndx >= shnum {
            return corrupt(format!(
                "section name table index {shstrndx} out of range ({shnum} sections)"
            ));
        }
        let mut sections = Vec::with_capacity(shnum as usize);
        let mut raw_names = Vec::with_capacity(shnum as usize);
        for i in 0..shnum as usize {
            let h = &shdrs[i * 64..i * 64 + 64];
            let sh_type = rd_u32(h, 4)?;
            let size = rd_u64(h, 32)?;
            let offset = rd_u64(h, 24)?;
            let data = if sh_type == SHT_NOBITS || sh_type == SHT_NULL {
                Data::empty()
            } else {
                slice(b, offset, size, || format!("section {i} contents"))?;
                Data {
                    buf: owner.clone(),
                    start: offset as u32,
                    len: size as u32,
                }
            };
            raw_names.push(rd_u32(h, 0)? as u64);
            sections.push(Section {
                index: i,
                name: Name::default(),
                sh_type,
                flags: rd_u64(h, 8)?,
                size,
                link: rd_u32(h, 40)?,
                info: rd_u32(h, 44)?,
                addralign: rd_u64(h, 48)?,
                entsize: rd_u64(h, 56)?,
                data,
            });
        }
        if sections[shstrndx as usize].sh_type != SHT_STRTAB {
            return corrupt("section name table is not a string table");
        }
        let shstr = sections[shstrndx as usize].data.clone();
        for (i, s) in sections.iter_mut().enumerate() {
            s.name = cstr(&shstr, raw_names[i], || format!("section {i}"))?;
        }

        let mut obj = Object {
            e_type,
            e_machine,
            e_flags,
            sections,
            symbols: Vec::new(),
            symtab: None,
            rela_sec: Vec::new(),
            sorted_relas: HashMap::default(),
            by_name: HashMap::default(),
            by_name_collided: Vec::new(),
            secsym: Vec::new(),
        };
        obj.read_symbols()?;
        obj.read_relas(opts)?;
        obj.by_name.reserve(obj.sections.len());
        for s in &obj.sections {
            match obj.by_name.entry(name_hash(&s.name)) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(s.index);
                }
                std::collections::hash_map::Entry::Occupied(e) => {
                    if obj.sections[*e.get()].name != s.name {
                        obj.by_name_collided.push(s.index);
                    }
                }
            }
        }
        Ok(obj)
    }

    fn read_symbols(&mut self) -> Result<(), ElfError> {
        let symtabs: Vec<usize> = self
            .sections
            .iter()
            .filter(|s| s.sh_type == SHT_SYMTAB)
            .map(|s| s.index)
            .collect();
        let Some(&st) = symtabs.first() else {
            return Ok(());
        };
        if symtabs.len() > 1 {
            return corrupt("more than one symbol table");
        }
        let nsec = self.sections.len();
        let sec = &self.sections[st];
        if sec.entsize != 24 && sec.entsize != 0 {
            return corrupt(format!(
                "symbol table entry size {}, expected 24",
                sec.entsize
            ));
        }
        if sec.data.len() % 24 != 0 {
            return corrupt("symbol table size is not a multiple of 24");
        }
        let strndx = sec.link as usize;
        if strndx >= nsec || self.sections[strndx].sh_type != SHT_STRTAB {
            return corrupt("symbol table's string table index is invalid");
        }
        let shndx_tab = self
            .sections
            .iter()
            .find(|s| s.sh_type == SHT_SYMTAB_SHNDX && s.link as usize == st)
            .map(|s| s.data.clone());
        let strtab = &self.sections[strndx].data;
        let n = sec.data.len() / 24;
        let mut syms = Vec::with_capacity(n);
        for i in 0..n {
            let e = &sec.data[i * 24..i * 24 + 24];
            let name = cstr(strtab, rd_u32(e, 0)? as u64, || format!("symbol {i}"))?;
            let info = e[4];
            let other = e[5];
            let raw_shndx = rd_u16(e, 6)? as u32;
            let reserved = raw_shndx >= SHN_LORESERVE && raw_shndx != SHN_XINDEX;
            let shndx = if raw_shndx == SHN_XINDEX {
                let tab = shndx_tab.as_ref().ok_or_else(|| {
                    ElfError::Corrupt(format!(
                        "symbol {i} uses SHN_XINDEX but there is no SHT_SYMTAB_SHNDX"
                    ))
                })?;
                rd_u32(tab, i * 4)?
            } else {
                raw_shndx
            };
            if shndx != SHN_UNDEF && !reserved && shndx as usize >= nsec {
                return corrupt(format!(
                    "symbol {i} ({name}) refers to section {shndx}, out of range"
                ));
            }
            syms.push(Symbol {
                index: i,
                name,
                value: rd_u64(e, 8)?,
                size: rd_u64(e, 16)?,
                bind: info >> 4,
                typ: info & 0xf,
                other,
                shndx,
                reserved,
            });
        }
        self.secsym = vec![0; nsec];
        for s in &syms {
            if s.typ == STT_SECTION {
                if let Some(sec) = s.section() {
                    if self.secsym[sec] == 0 {
                        self.secsym[sec] = s.index as u32;
                    }
                }
            }
        }
        // Section symbols carry no name of their own: give them their section's,
        // so that messages and comparisons can name them.
        for s in syms.iter_mut() {
            if s.typ == STT_SECTION && s.name.is_empty() {
                if let Some(sec) = s.section() {
                    s.name = self.sections[sec].name.clone();
                }
            }
        }
        self.symbols = syms;
        self.symtab = Some(st);
        Ok(())
    }

    fn read_relas(&mut self, opts: &ParseOptions) -> Result<(), ElfError> {
        let nsec = self.sections.len();
        let mut rela_sec = vec![0u32; nsec];
        let mut sorted_relas = HashMap::default();
        for s in &self.sections {
            if s.sh_type == SHT_REL {
                return Err(ElfError::Unsupported(format!(
                    "{}: SHT_REL relocations (x86_64 uses RELA)",
                    s.name
                )));
            }
            if s.sh_type != SHT_RELA {
                continue;
            }
            let target = s.info as usize;
            if target == 0 || target >= nsec {
                return corrupt(format!(
                    "{}: applies to section {target}, out of range",
                    s.name
                ));
            }
            if !opts.debug_relocations && self.sections[target].name.starts_with(".debug") {
                continue;
            }
            if Some(s.link as usize) != self.symtab {
                return corrupt(format!(
                    "{}: linked to section {}, not the symbol table",
                    s.name, s.link
                ));
            }
            if s.data.len() % 24 != 0 {
                return corrupt(format!("{}: size is not a multiple of 24", s.name));
            }
            let tsize = self.sections[target].size;
            let mut sorted = true;
            let mut last = 0;
            for i in 0..s.data.len() / 24 {
                let e = &s.data[i * 24..i * 24 + 24];
                let offset = rd_u64(e, 0)?;
                let sym = (rd_u64(e, 8)? >> 32) as usize;
                if sym >= self.symbols.len() {
                    return corrupt(format!(
                        "{}: relocation {i} refers to symbol {sym}, out of range",
                        s.name
                    ));
                }
                if offset >= tsize {
                    return corrupt(format!(
                        "{}: relocation {i} at {offset:#x} outside its section",
                        s.name
                    ));
                }
                sorted &= offset >= last;
                last = offset;
            }
            // Assemblers emit them in order, and then the input's own table
            // serves; only what is not gets a sorted copy.
            if !sorted {
                let mut v: Vec<Rela> = Relas(RelasRepr::Input(&s.data)).iter().collect();
                v.sort_by_key(|r| r.offset);
                sorted_relas.insert(target, v);
            }
            if rela_sec[target] != 0 {
                return corrupt(format!("section {target} has two relocation sections"));
            }
            rela_sec[target] = s.index as u32;
        }
        self.rela_sec = rela_sec;
        self.sorted_relas = sorted_relas;
        Ok(())
    }

    pub fn section_by_name(&self, name: &str) -> Option<&Section> {
        let first = self
            .by_name
            .get(&name_hash(name))
            .map(|&i| &self.sections[i])
            .filter(|s| s.name == name);
        first.or_else(|| {
            self.by_name_collided
                .iter()
                .map(|&i| &self.sections[i])
                .find(|s| s.name == name)
        })
    }

    /// Adds relocations the caller derived (a branch the assembler resolved
    /// in place) to section `sec`, kept sorted by offset; `false` when `sec`
    /// has no relocation section to hold them.
    pub fn add_relas(&mut self, sec: usize, extra: Vec<Rela>) -> bool {
        if self.rela_section_of(sec).is_none() {
            return false;
        }
        if extra.is_empty() {
            return true;
        }
        let mut v: Vec<Rela> = self.relas_of(sec).iter().collect();
        v.extend(extra);
        v.sort_by_key(|r| r.offset);
        self.sorted_relas.insert(sec, v);
        true
    }

    /// Relocations that apply to section `sec` (empty when it has none).
    pub fn relas_of(&self, sec: usize) -> Relas<'_> {
        let Some(rs) = self.rela_section_of(sec) else {
            return Relas(RelasRepr::Sorted(&[]));
        };
        Relas(match self.sorted_relas.get(&sec) {
            Some(v) => RelasRepr::Sorted(v),
            None => RelasRepr::Input(&self.sections[rs].data),
        })
    }

    /// The SHT_RELA section that applies to section `sec`.
    pub fn rela_section_of(&self, sec: usize) -> Option<usize> {
        match self.rela_sec.get(sec) {
            Some(&rs) if rs != 0 => Some(rs as usize),
            _ => None,
        }
    }

    /// The sections that have relocations, in index order.
    pub fn relocated_sections(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.rela_sec.len()).filter(|&i| self.rela_sec[i] != 0)
    }

    /// The STT_SECTION symbol of a section, if the object has one.
    pub fn section_symbol(&self, sec: usize) -> Option<usize> {
        match self.secsym.get(sec) {
            Some(&i) if i != 0 => Some(i as usize),
            _ => None,
        }
    }
}

fn name_hash(name: &str) -> u64 {
    fx::hash_one(name)
}

/// The field an x86-64 relocation type patches, from the psABI's table: its
/// width in bytes and whether the value written is relative to the field's
/// own address (`P` in the psABI's calculation). `None` for a type suture
/// does not handle. The one rule for the differ and suture-symbols.
pub fn rela_field(rtype: u32) -> Option<(usize, bool)> {
    Some(match rtype {
        R_X86_64_NONE => (0, false),
        R_X86_64_64 | R_X86_64_GOTOFF64 => (8, false),
        R_X86_64_PC64 => (8, true),
        R_X86_64_32 | R_X86_64_32S => (4, false),
        R_X86_64_PC32
        | R_X86_64_PLT32
        | R_X86_64_GOTPCREL
        | R_X86_64_GOTPCRELX
        | R_X86_64_REX_GOTPCRELX => (4, true),
        R_X86_64_16 => (2, false),
        R_X86_64_PC16 => (2, true),
        R_X86_64_8 => (1, false),
        R_X86_64_PC8 => (1, true),
        _ => return None,
    })
}

/// Size in bytes of the field a relocation patches ([`rela_field`]); a type
/// outside it is taken as a 4-byte field, the width of most.
pub fn rela_width(rtype: u32) -> usize {
    rela_field(rtype).map_or(4, |(w, _)| w)
}

/// Whether a relocation type is PC-relative ([`rela_field`]; the addend then
/// compensates for the distance between the field and the end of the
/// instruction). A type outside it is taken as absolute.
pub fn rela_is_pcrel(rtype: u32) -> bool {
    rela_field(rtype).is_some_and(|(_, pc)| pc)
}

#[cfg(test)]
mod tests;

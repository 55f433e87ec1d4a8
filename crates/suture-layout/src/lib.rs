//! Struct and union layouts, read from the DWARF of a relocatable object, and
//! the layout changes between an object compiled before a patch and after it
//! (issue 12.4). Bytes in, report out: no I/O.
//!
//! A livepatch replaces functions, not data: every instance of a struct the
//! running kernel allocated keeps the layout it was compiled with, and every
//! unpatched function keeps reading it that way. A patch that adds a member,
//! moves one or changes its type therefore cannot be live-patched as it is
//! (kpatch leaves this to the patch author; suture refuses it by name).
//!
//! What is compared: every named struct or union defined at file scope (and
//! an anonymous one named by a typedef, `atomic_t`), with its byte size and
//! its members: name, offset in bits, bit-field width and type (spelled
//! out, `struct list_head *`, `int [4]`). Members of an anonymous struct or
//! union member are the parent's own, at their offsets from the parent's
//! start, as C reads them. A type is the same type on both sides when its
//! kind, name and declaring file agree (same-named types of different files
//! are told apart). Types on one side only (a new struct, or one the patched
//! code starts to use) are not layout changes, and neither are macros,
//! inline functions or enumerators: only sizes, offsets and member types.
//! A member renamed in place (same offset, width and type) is not a change
//! either; one moved, retyped or removed is, and so is one added, even into
//! padding (memory the old code never initialises).
//!
//! Relocatable objects leave the DWARF's string and line-table offsets to
//! RELA relocations (`.rela.debug_info`, `.rela.debug_line`): the sections
//! read are copied and those relocations applied to the copy first.

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use gimli::{constants as dw, AttributeValue, EndianSlice, LittleEndian, SectionId};
use object::{Object, ObjectSection, ObjectSymbol, RelocationKind, RelocationTarget};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a readable object: {0}")]
    Object(String),
    /// The object was compiled without debug information.
    #[error("the object has no .debug_info (compiled without -g)")]
    NoDebugInfo,
    #[error("{0}")]
    Unsupported(String),
    #[error("corrupt debug information: {0}")]
    Corrupt(String),
    #[error("reading the DWARF: {0}")]
    Dwarf(#[from] gimli::Error),
}

impl From<object::Error> for Error {
    fn from(e: object::Error) -> Error {
        Error::Object(e.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Struct,
    Union,
}

impl Kind {
    pub fn keyword(self) -> &'static str {
        match self {
            Kind::Struct => "struct",
            Kind::Union => "union",
        }
    }
}

/// One struct or union type as an object's DWARF describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    pub kind: Kind,
    /// The tag (`nf_queue_entry`), or for an anonymous struct or union the
    /// typedef that names it (`atomic_t`, with `typedef` set).
    pub name: String,
    pub typedef: bool,
    /// The declaring file, relative to the compilation directory
    /// (`include/net/netfilter/nf_queue.h`, `fs/proc/task_mmu.c`).
    pub file: Option<String>,
    /// `sizeof`, in bytes.
    pub size: u64,
    pub members: Vec<Member>,
}

impl Type {
    /// How C names the type: `struct nf_queue_entry`, `atomic_t`.
    pub fn subject(&self) -> String {
        subject(self.kind, self.typedef, &self.name)
    }
}

fn subject(kind: Kind, typedef: bool, name: &str) -> String {
    if typedef {
        name.to_string()
    } else {
        format!("{} {name}", kind.keyword())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `state`; `outer.inner` for a member of a named member whose type is
    /// an anonymous struct or union.
    pub name: String,
    pub at: Position,
    /// The member's type, spelled out: `struct list_head *`, `unsigned int`,
    /// `char [16]`, `int (struct sock *, int) *`.
    pub type_name: String,
}

/// Where a member is: its first bit from the start of the type, and its
/// width for a bit-field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub bit_offset: u64,
    pub bit_size: Option<u64>,
}

impl Position {
    fn is_bytes(&self) -> bool {
        self.bit_size.is_none() && self.bit_offset & 7 == 0
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.bit_size {
            None if self.bit_offset & 7 == 0 => write!(f, "offset {}", self.bit_offset / 8),
            None => write!(f, "bit offset {}", self.bit_offset),
            Some(w) => write!(f, "bit offset {}, {w} bits", self.bit_offset),
        }
    }
}

/// The first thing that differs among a type's members, in the original
/// member order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    Moved {
        name: String,
        old: Position,
        new: Position,
    },
    Retyped {
        name: String,
        old: String,
        new: String,
    },
    Removed {
        name: String,
        at: Position,
    },
    /// Only when no original member moved, changed type or went away.
    Added {
        name: String,
        at: Position,
    },
}

impl fmt::Display for MemberChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemberChange::Moved { name, old, new } => {
                if old.is_bytes() && new.is_bytes() {
                    write!(
                        f,
                        "first member moved: {name} (offset {} -> {})",
                        old.bit_offset / 8,
                        new.bit_offset / 8
                    )
                } else if old.bit_size == new.bit_size {
                    write!(
                        f,
                        "first member moved: {name} (bit offset {} -> {})",
                        old.bit_offset, new.bit_offset
                    )
                } else {
                    write!(f, "first member moved: {name} ({old} -> {new})")
                }
            }
            MemberChange::Retyped { name, old, new } => {
                write!(f, "first member changed type: {name} ({old} -> {new})")
            }
            MemberChange::Removed { name, at } => write!(f, "first member removed: {name} ({at})"),
            MemberChange::Added { name, at } => write!(f, "member added: {name} ({at})"),
        }
    }
}

/// A type present before and after the patch whose layout differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: Kind,
    pub name: String,
    pub typedef: bool,
    pub file: Option<String>,
    pub old_size: u64,
    pub new_size: u64,
    /// None when only the size changed (an alignment, say).
    pub first: Option<MemberChange>,
}

impl Change {
    /// `struct nf_queue_entry`.
    pub fn subject(&self) -> String {
        subject(self.kind, self.typedef, &self.name)
    }

    /// `layout changed: size 80 -> 88 bytes, first member moved: state
    /// (offset 24 -> 32)`.
    pub fn summary(&self) -> String {
        let mut s = if self.old_size == self.new_size {
            format!("layout changed: size {} bytes", self.old_size)
        } else {
            format!(
                "layout changed: size {} -> {} bytes",
                self.old_size, self.new_size
            )
        };
        if let Some(m) = &self.first {
            s.push_str(&format!(", {m}"));
        }
        s
    }

    /// The summary, and what to do instead.
    pub fn reason(&self) -> String {
        let what = if self.typedef {
            "type"
        } else {
            self.kind.keyword()
        };
        format!(
            "{}; existing code uses the old layout: keep the {what} as it is and attach new data with shadow variables (docs/patch-author-guide.md)",
            self.summary()
        )
    }
}

/// The layout changes between two objects of one translation unit, before
/// and after a patch: types present on both sides whose size or members
/// differ, in the original object's order.
pub fn compare(orig: &[u8], patched: &[u8]) -> Result<Vec<Change>, Error> {
    Ok(changes(&types(orig)?, &types(patched)?))
}

type Key<'t> = (Kind, bool, &'t str, Option<&'t str>);

fn key(t: &Type) -> Key<'_> {
    (t.kind, t.typedef, t.name.as_str(), t.file.as_deref())
}

/// The layout changes between two type lists (see [`compare`]). A key that
/// names several different layouts on one side (same name and file in
/// different scopes) is compared in order when both sides have as many,
/// else left alone.
pub fn changes(orig: &[Type], patched: &[Type]) -> Vec<Change> {
    fn group(ts: &[Type]) -> HashMap<Key<'_>, Vec<&Type>> {
        let mut m: HashMap<Key<'_>, Vec<&Type>> = HashMap::new();
        for t in ts {
            let v = m.entry(key(t)).or_default();
            if !v.contains(&t) {
                v.push(t);
            }
        }
        m
    }
    let (o, p) = (group(orig), group(patched));
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for t in orig {
        let k = key(t);
        if !seen.insert(k) {
            continue;
        }
        let (Some(os), Some(ps)) = (o.get(&k), p.get(&k)) else {
            continue;
        };
        if os.len() != ps.len() {
            continue;
        }
        for (a, b) in os.iter().zip(ps) {
            if let Some(c) = change(a, b) {
                out.push(c);
            }
        }
    }
    out
}

fn change(a: &Type, b: &Type) -> Option<Change> {
    if a.size == b.size && a.members == b.members {
        return None;
    }
    let by_name = |ms: &[Member]| -> HashMap<String, usize> {
        ms.iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), i))
            .collect()
    };
    let (an, bn) = (by_name(&a.members), by_name(&b.members));
    let gone: Vec<&Member> = a
        .members
        .iter()
        .filter(|m| !bn.contains_key(&m.name))
        .collect();
    let new: Vec<&Member> = b
        .members
        .iter()
        .filter(|m| !an.contains_key(&m.name))
        .collect();
    // A member renamed in place is the same storage under another name.
    let renamed = |m: &Member, others: &[&Member]| {
        others
            .iter()
            .any(|o| o.at == m.at && o.type_name == m.type_name)
    };
    let mut first = None;
    for m in &a.members {
        let c = match bn.get(&m.name) {
            Some(&i) => {
                let n = &b.members[i];
                if n.at != m.at {
                    Some(MemberChange::Moved {
                        name: m.name.clone(),
                        old: m.at,
                        new: n.at,
                    })
                } else if n.type_name != m.type_name {
                    Some(MemberChange::Retyped {
                        name: m.name.clone(),
                        old: m.type_name.clone(),
                        new: n.type_name.clone(),
                    })
                } else {
                    None
                }
            }
            None if renamed(m, &new) => None,
            None => Some(MemberChange::Removed {
                name: m.name.clone(),
                at: m.at,
            }),
        };
        if c.is_some() {
            first = c;
            break;
        }
    }
    if first.is_none() {
        first = new
            .iter()
            .find(|m| !renamed(m, &gone))
            .map(|m| MemberChange::Added {
                name: m.name.clone(),
                at: m.at,
            });
    }
    if first.is_none() && a.size == b.size {
        return None;
    }
    Some(Change {
        kind: a.kind,
        name: a.name.clone(),
        typedef: a.typedef,
        file: a.file.clone(),
        old_size: a.size,
        new_size: b.size,
        first,
    })
}

// ---- reading an object ----------------------------------------------------

type R<'a> = EndianSlice<'a, LittleEndian>;

const SECTIONS: [SectionId; 7] = [
    SectionId::DebugAbbrev,
    SectionId::DebugInfo,
    SectionId::DebugStr,
    SectionId::DebugLineStr,
    SectionId::DebugLine,
    SectionId::DebugStrOffsets,
    SectionId::DebugAddr,
];

/// The DWARF sections read, relocated when the object has relocations for
/// them (a copy; the input is not touched).
fn load(data: &[u8]) -> Result<HashMap<SectionId, Cow<'_, [u8]>>, Error> {
    let file = object::File::parse(data)?;
    if !file.is_little_endian() {
        return Err(Error::Unsupported("a big-endian object".into()));
    }
    let mut out = HashMap::new();
    for id in SECTIONS {
        let Some(sec) = file.section_by_name(id.name()) else {
            continue;
        };
        if sec.compressed_data()?.format != object::CompressionFormat::None {
            return Err(Error::Unsupported(format!("{} is compressed", id.name())));
        }
        let raw = sec.data()?;
        let mut relocs = sec.relocations().peekable();
        if relocs.peek().is_none() {
            out.insert(id, Cow::Borrowed(raw));
            continue;
        }
        let mut buf = raw.to_vec();
        for (offset, r) in relocs {
            if r.kind() != RelocationKind::Absolute {
                continue;
            }
            let width = match r.size() {
                32 => 4,
                64 => 8,
                _ => continue,
            };
            let s = match r.target() {
                RelocationTarget::Symbol(i) => file.symbol_by_index(i)?.address(),
                RelocationTarget::Absolute => 0,
                _ => continue,
            };
            let at = usize::try_from(offset)
                .ok()
                .filter(|&o| o.checked_add(width).is_some_and(|e| e <= buf.len()))
                .ok_or_else(|| {
                    Error::Corrupt(format!(
                        "a relocation at {offset:#x} is outside {}",
                        id.name()
                    ))
                })?;
            let field = &mut buf[at..at + width];
            let mut v = s.wrapping_add(r.addend() as u64);
            if r.has_implicit_addend() {
                let mut old = [0u8; 8];
                old[..width].copy_from_slice(field);
                v = v.wrapping_add(u64::from_le_bytes(old));
            }
            field.copy_from_slice(&v.to_le_bytes()[..width]);
        }
        out.insert(id, Cow::Owned(buf));
    }
    match out.get(&SectionId::DebugInfo) {
        Some(d) if !d.is_empty() => Ok(out),
        _ => Err(Error::NoDebugInfo),
    }
}

/// Every struct and union type the object's DWARF defines at file scope.
pub fn types(data: &[u8]) -> Result<Vec<Type>, Error> {
    let sections = load(data)?;
    let dwarf = gimli::Dwarf::load(|id| -> Result<R<'_>, Error> {
        Ok(EndianSlice::new(
            sections.get(&id).map(|c| &c[..]).unwrap_or(&[]),
            LittleEndian,
        ))
    })?;
    let mut out = Vec::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        unit_types(&dwarf, &unit, &mut out)?;
    }
    Ok(out)
}

/// What is kept of a DIE: the attributes layouts and type names need.
struct Node<'a> {
    tag: dw::DwTag,
    name: Option<&'a [u8]>,
    /// DW_AT_type: the unit offset, or `usize::MAX` for a reference this
    /// reader does not follow (another unit's).
    ty: Option<usize>,
    byte_size: Option<u64>,
    member_location: Option<u64>,
    data_bit_offset: Option<u64>,
    bit_offset: Option<u64>,
    bit_size: Option<u64>,
    /// Subrange: number of elements.
    count: Option<u64>,
    declaration: bool,
    decl_file: Option<u64>,
    kids: Vec<u32>,
}

impl Node<'_> {
    fn new(tag: dw::DwTag) -> Self {
        Node {
            tag,
            name: None,
            ty: None,
            byte_size: None,
            member_location: None,
            data_bit_offset: None,
            bit_offset: None,
            bit_size: None,
            count: None,
            declaration: false,
            decl_file: None,
            kids: Vec::new(),
        }
    }
}

const FOREIGN: usize = usize::MAX;

fn kept(tag: dw::DwTag) -> bool {
    matches!(
        tag,
        dw::DW_TAG_structure_type
            | dw::DW_TAG_union_type
            | dw::DW_TAG_class_type
            | dw::DW_TAG_member
            | dw::DW_TAG_typedef
            | dw::DW_TAG_base_type
            | dw::DW_TAG_pointer_type
            | dw::DW_TAG_reference_type
            | dw::DW_TAG_const_type
            | dw::DW_TAG_volatile_type
            | dw::DW_TAG_restrict_type
            | dw::DW_TAG_atomic_type
            | dw::DW_TAG_array_type
            | dw::DW_TAG_subrange_type
            | dw::DW_TAG_enumeration_type
            | dw::DW_TAG_subroutine_type
            | dw::DW_TAG_formal_parameter
            | dw::DW_TAG_unspecified_parameters
            | dw::DW_TAG_unspecified_type
    )
}

/// Tags whose children matter (members, dimensions, parameters).
fn descend(tag: dw::DwTag) -> bool {
    matches!(
        tag,
        dw::DW_TAG_structure_type
            | dw::DW_TAG_union_type
            | dw::DW_TAG_class_type
            | dw::DW_TAG_array_type
            | dw::DW_TAG_subroutine_type
    )
}

struct Dies<'a> {
    nodes: Vec<Node<'a>>,
    at: HashMap<usize, u32>,
}

impl<'a> Dies<'a> {
    fn get(&self, off: Option<usize>) -> Option<(u32, &Node<'a>)> {
        let i = *self.at.get(&off?)?;
        Some((i, &self.nodes[i as usize]))
    }
}

/// Reads the unit's type DIEs. Functions, variables and everything inside
/// them are skipped whole: a type declared in a function is that function's
/// alone (and replaced with it).
fn walk<'a>(
    dwarf: &gimli::Dwarf<R<'a>>,
    unit: &gimli::Unit<R<'a>>,
    node: gimli::EntriesTreeNode<'_, '_, '_, R<'a>>,
    parent: Option<u32>,
    dies: &mut Dies<'a>,
    depth: usize,
) -> Result<(), Error> {
    if depth > 64 {
        return Err(Error::Corrupt("types nested more than 64 deep".into()));
    }
    let mut children = node.children();
    while let Some(child) = children.next()? {
        let e = child.entry();
        if !kept(e.tag()) {
            continue;
        }
        let mut n = Node::new(e.tag());
        let mut attrs = e.attrs();
        while let Some(a) = attrs.next()? {
            match a.name() {
                dw::DW_AT_name => n.name = Some(dwarf.attr_string(unit, a.value())?.slice()),
                dw::DW_AT_type => {
                    n.ty = Some(match a.value() {
                        AttributeValue::UnitRef(o) => o.0,
                        _ => FOREIGN,
                    })
                }
                dw::DW_AT_byte_size => n.byte_size = a.udata_value(),
                dw::DW_AT_data_member_location => {
                    n.member_location = match a.value() {
                        AttributeValue::Exprloc(e) => plus_uconst(e.0.slice()),
                        v => v.udata_value(),
                    }
                }
                dw::DW_AT_data_bit_offset => n.data_bit_offset = a.udata_value(),
                dw::DW_AT_bit_offset => n.bit_offset = a.udata_value(),
                dw::DW_AT_bit_size => n.bit_size = a.udata_value(),
                dw::DW_AT_count => n.count = a.udata_value(),
                dw::DW_AT_upper_bound => {
                    n.count = match a.value() {
                        AttributeValue::Sdata(-1) => Some(0),
                        v => v.udata_value().map(|u| u.wrapping_add(1)),
                    }
                }
                dw::DW_AT_declaration => {
                    n.declaration = matches!(a.value(), AttributeValue::Flag(true))
                }
                dw::DW_AT_decl_file => {
                    if let AttributeValue::FileIndex(i) = a.value() {
                        n.decl_file = Some(i)
                    }
                }
                _ => {}
            }
        }
        let idx =
            u32::try_from(dies.nodes.len()).map_err(|_| Error::Corrupt("too many DIEs".into()))?;
        dies.at.insert(e.offset().0, idx);
        let tag = n.tag;
        dies.nodes.push(n);
        if let Some(p) = parent {
            dies.nodes[p as usize].kids.push(idx);
        }
        if descend(tag) {
            walk(dwarf, unit, child, Some(idx), dies, depth + 1)?;
        }
    }
    Ok(())
}

/// `DW_OP_plus_uconst N`, DWARF 2's way of writing a member's offset.
fn plus_uconst(expr: &[u8]) -> Option<u64> {
    let (&op, mut rest) = expr.split_first()?;
    if op != dw::DW_OP_plus_uconst.0 {
        return None;
    }
    let (mut v, mut shift) = (0u64, 0u32);
    loop {
        let (&b, r) = rest.split_first()?;
        rest = r;
        if shift >= 64 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    rest.is_empty().then_some(v)
}

fn unit_types<'a>(
    dwarf: &gimli::Dwarf<R<'a>>,
    unit: &gimli::Unit<R<'a>>,
    out: &mut Vec<Type>,
) -> Result<(), Error> {
    let mut dies = Dies {
        nodes: Vec::new(),
        at: HashMap::new(),
    };
    let mut tree = unit.entries_tree(None)?;
    walk(dwarf, unit, tree.root()?, None, &mut dies, 0)?;

    // Anonymous structs and unions named by a typedef.
    let mut typedef_of: HashMap<u32, (&[u8], Option<u64>)> = HashMap::new();
    for n in &dies.nodes {
        if n.tag != dw::DW_TAG_typedef {
            continue;
        }
        let (Some(name), Some((t, target))) = (n.name, dies.get(n.ty)) else {
            continue;
        };
        if aggregate(target.tag).is_some() && target.name.is_none() {
            typedef_of.entry(t).or_insert((name, n.decl_file));
        }
    }
    let mut files = Files {
        dwarf,
        unit,
        root: root(unit),
        cache: HashMap::new(),
    };
    let mut names = Names {
        dies: &dies,
        memo: HashMap::new(),
    };
    for (i, n) in dies.nodes.iter().enumerate() {
        let Some(kind) = aggregate(n.tag) else {
            continue;
        };
        let (Some(size), false) = (n.byte_size, n.declaration) else {
            continue;
        };
        let (name, typedef, decl_file) = match (n.name, typedef_of.get(&(i as u32))) {
            (Some(name), _) => (name, false, n.decl_file),
            (None, Some(&(name, f))) => (name, true, n.decl_file.or(f)),
            // An anonymous member type: part of its parent's layout.
            (None, None) => continue,
        };
        let mut members = Vec::new();
        flatten(&dies, &mut names, i as u32, 0, "", &mut members, 0);
        out.push(Type {
            kind,
            name: String::from_utf8_lossy(name).into_owned(),
            typedef,
            file: decl_file.and_then(|f| files.name(f)),
            size,
            members,
        });
    }
    Ok(())
}

fn aggregate(tag: dw::DwTag) -> Option<Kind> {
    match tag {
        dw::DW_TAG_structure_type | dw::DW_TAG_class_type => Some(Kind::Struct),
        dw::DW_TAG_union_type => Some(Kind::Union),
        _ => None,
    }
}

/// The members of aggregate `idx`, at `base` bits, names prefixed with
/// `prefix`; members of anonymous struct or union members are inlined.
fn flatten(
    dies: &Dies<'_>,
    names: &mut Names<'_, '_>,
    idx: u32,
    base: u64,
    prefix: &str,
    out: &mut Vec<Member>,
    depth: usize,
) {
    if depth > 32 {
        return;
    }
    for &k in &dies.nodes[idx as usize].kids {
        let m = &dies.nodes[k as usize];
        if m.tag != dw::DW_TAG_member {
            continue;
        }
        let at = Position {
            bit_offset: base.wrapping_add(member_bits(dies, m)),
            bit_size: m.bit_size,
        };
        let anonymous = dies
            .get(m.ty)
            .filter(|(_, t)| aggregate(t.tag).is_some() && t.name.is_none())
            .map(|(t, _)| t);
        match (m.name, anonymous) {
            (None, Some(t)) => flatten(dies, names, t, at.bit_offset, prefix, out, depth + 1),
            (Some(n), anon) => {
                let name = format!("{prefix}{}", String::from_utf8_lossy(n));
                out.push(Member {
                    name: name.clone(),
                    at,
                    type_name: names.name(m.ty),
                });
                if let Some(t) = anon {
                    flatten(
                        dies,
                        names,
                        t,
                        at.bit_offset,
                        &format!("{name}."),
                        out,
                        depth + 1,
                    );
                }
            }
            // Unnamed bit-field padding: nothing reads it.
            (None, None) => {}
        }
    }
}

/// A member's first bit from the start of its parent.
fn member_bits(dies: &Dies<'_>, m: &Node<'_>) -> u64 {
    if let Some(b) = m.data_bit_offset {
        return b;
    }
    let byte = m.member_location.unwrap_or(0).wrapping_mul(8);
    match (m.bit_offset, m.bit_size) {
        // DWARF 2/3: bits from the most significant end of the storage unit.
        (Some(from_msb), Some(width)) => {
            let storage = m.byte_size.or_else(|| size_of(dies, m.ty, 0)).unwrap_or(0);
            (byte + storage * 8).saturating_sub(from_msb + width)
        }
        _ => byte,
    }
}

fn size_of(dies: &Dies<'_>, ty: Option<usize>, depth: usize) -> Option<u64> {
    let (_, n) = dies.get(ty)?;
    if let Some(s) = n.byte_size {
        return Some(s);
    }
    match n.tag {
        dw::DW_TAG_typedef
        | dw::DW_TAG_const_type
        | dw::DW_TAG_volatile_type
        | dw::DW_TAG_atomic_type
            if depth < 16 =>
        {
            size_of(dies, n.ty, depth + 1)
        }
        _ => None,
    }
}

/// Type names, spelled out once per DIE.
struct Names<'d, 'a> {
    dies: &'d Dies<'a>,
    memo: HashMap<usize, String>,
}

impl Names<'_, '_> {
    fn name(&mut self, ty: Option<usize>) -> String {
        self.spell(ty, 0)
    }

    fn spell(&mut self, ty: Option<usize>, depth: usize) -> String {
        let Some(off) = ty else { return "void".into() };
        if off == FOREIGN {
            return "<type in another unit>".into();
        }
        if let Some(s) = self.memo.get(&off) {
            return s.clone();
        }
        if depth > 24 {
            return "...".into();
        }
        let dies = self.dies;
        let Some((_, n)) = dies.get(ty) else {
            return format!("<type at {off:#x}>");
        };
        let name = || n.name.map(|b| String::from_utf8_lossy(b).into_owned());
        let s = match n.tag {
            dw::DW_TAG_base_type | dw::DW_TAG_typedef | dw::DW_TAG_unspecified_type => {
                name().unwrap_or_else(|| "?".into())
            }
            dw::DW_TAG_structure_type | dw::DW_TAG_class_type => {
                format!("struct {}", name().unwrap_or_else(|| "<anonymous>".into()))
            }
            dw::DW_TAG_union_type => {
                format!("union {}", name().unwrap_or_else(|| "<anonymous>".into()))
            }
            dw::DW_TAG_enumeration_type => {
                format!("enum {}", name().unwrap_or_else(|| "<anonymous>".into()))
            }
            dw::DW_TAG_pointer_type | dw::DW_TAG_reference_type => {
                format!("{} *", self.spell(n.ty, depth + 1))
            }
            dw::DW_TAG_const_type => format!("const {}", self.spell(n.ty, depth + 1)),
            dw::DW_TAG_volatile_type => format!("volatile {}", self.spell(n.ty, depth + 1)),
            dw::DW_TAG_restrict_type => format!("restrict {}", self.spell(n.ty, depth + 1)),
            dw::DW_TAG_atomic_type => format!("_Atomic {}", self.spell(n.ty, depth + 1)),
            dw::DW_TAG_array_type => {
                let mut s = format!("{} ", self.spell(n.ty, depth + 1));
                let mut any = false;
                for &k in &n.kids {
                    let d = &dies.nodes[k as usize];
                    if d.tag == dw::DW_TAG_subrange_type {
                        any = true;
                        match d.count {
                            Some(c) => s.push_str(&format!("[{c}]")),
                            None => s.push_str("[]"),
                        }
                    }
                }
                if !any {
                    s.push_str("[]");
                }
                s
            }
            dw::DW_TAG_subroutine_type => {
                let mut params = Vec::new();
                for &k in &n.kids {
                    let d = &dies.nodes[k as usize];
                    match d.tag {
                        dw::DW_TAG_formal_parameter => params.push(self.spell(d.ty, depth + 1)),
                        dw::DW_TAG_unspecified_parameters => params.push("...".into()),
                        _ => {}
                    }
                }
                format!("{} ({})", self.spell(n.ty, depth + 1), params.join(", "))
            }
            t => format!("<{t}>"),
        };
        self.memo.insert(off, s.clone());
        s
    }
}

/// Declaring files, by line-table index, relative to the compilation
/// directory.
struct Files<'d, 'a> {
    dwarf: &'d gimli::Dwarf<R<'a>>,
    unit: &'d gimli::Unit<R<'a>>,
    root: Option<String>,
    cache: HashMap<u64, Option<String>>,
}

impl Files<'_, '_> {
    fn name(&mut self, index: u64) -> Option<String> {
        if let Some(n) = self.cache.get(&index) {
            return n.clone();
        }
        let n = self.resolve(index);
        self.cache.insert(index, n.clone());
        n
    }

    fn resolve(&self, index: u64) -> Option<String> {
        let lp = self.unit.line_program.as_ref()?;
        let h = lp.header();
        let f = h.file(index)?;
        let text = |v| {
            self.dwarf
                .attr_string(self.unit, v)
                .ok()
                .map(|s| String::from_utf8_lossy(s.slice()).into_owned())
        };
        let mut path = text(f.path_name())?;
        if !path.starts_with('/') {
            if let Some(d) = f.directory(h).and_then(text) {
                if !d.is_empty() {
                    path = format!("{}/{path}", d.trim_end_matches('/'));
                }
            }
        }
        Some(normalize(&path, self.root.as_deref()))
    }
}

/// What declaring files are relative to: the compilation directory (the
/// kernel tree, where kbuild names a unit `fs/proc/array.c`), or for a unit
/// named by an absolute path outside it (a module built out of tree, whose
/// copies before and after the patch live in different directories) the
/// unit's own directory.
fn root(unit: &gimli::Unit<R<'_>>) -> Option<String> {
    let text = |r: Option<R<'_>>| r.map(|c| String::from_utf8_lossy(c.slice()).into_owned());
    let comp_dir = text(unit.comp_dir);
    let name = text(unit.name);
    match (name, comp_dir) {
        (Some(n), c) if n.starts_with('/') => {
            let n = normalize(&n, None);
            match c {
                Some(c) if n.starts_with(&format!("{}/", normalize(&c, None))) => Some(c),
                _ => n.rsplit_once('/').map(|(d, _)| d.to_string()),
            }
        }
        (_, c) => c,
    }
}

/// `/tree/./include/linux/list.h` with comp_dir `/tree` → `include/linux/list.h`.
fn normalize(path: &str, root: Option<&str>) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." if parts.last().is_some_and(|l| *l != "..") => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let absolute = path.starts_with('/');
    if absolute {
        if let Some(c) = root {
            let cparts: Vec<&str> = c
                .split('/')
                .filter(|p| !p.is_empty() && *p != ".")
                .collect();
            if !cparts.is_empty() && parts.starts_with(&cparts) {
                return parts[cparts.len()..].join("/");
            }
        }
        return format!("/{}", parts.join("/"));
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_to_the_compilation_directory() {
        assert_eq!(
            normalize("/t/src/./include/linux/list.h", Some("/t/src")),
            "include/linux/list.h"
        );
        assert_eq!(
            normalize("./include/net/x.h", Some("/t/src")),
            "include/net/x.h"
        );
        assert_eq!(normalize("kernel/fork.c", Some("/t/src")), "kernel/fork.c");
        assert_eq!(
            normalize("/usr/include/stdio.h", Some("/t/src")),
            "/usr/include/stdio.h"
        );
        assert_eq!(normalize("fs/../include/a.h", None), "include/a.h");
    }

    #[test]
    fn dwarf2_member_offsets_are_read() {
        assert_eq!(plus_uconst(&[0x23, 0x18]), Some(24));
        assert_eq!(plus_uconst(&[0x23, 0x80, 0x01]), Some(128));
        assert_eq!(plus_uconst(&[0x10, 0x18]), None);
    }

    fn ty(members: &[(&str, u64, &str)], size: u64) -> Type {
        Type {
            kind: Kind::Struct,
            name: "s".into(),
            typedef: false,
            file: Some("a.c".into()),
            size,
            members: members
                .iter()
                .map(|&(n, off, t)| Member {
                    name: n.into(),
                    at: Position {
                        bit_offset: off * 8,
                        bit_size: None,
                    },
                    type_name: t.into(),
                })
                .collect(),
        }
    }

    #[test]
    fn the_first_member_that_moved_is_named() {
        let a = ty(
            &[("a", 0, "int"), ("b", 8, "long int"), ("state", 16, "int")],
            24,
        );
        let b = ty(
            &[
                ("a", 0, "int"),
                ("x", 8, "long int"),
                ("b", 16, "long int"),
                ("state", 24, "int"),
            ],
            32,
        );
        let c = change(&a, &b).unwrap();
        assert_eq!(
            c.summary(),
            "layout changed: size 24 -> 32 bytes, first member moved: b (offset 8 -> 16)"
        );
        assert!(c.reason().ends_with("keep the struct as it is and attach new data with shadow variables (docs/patch-author-guide.md)"));
    }

    #[test]
    fn a_rename_in_place_is_not_a_change_a_swap_is() {
        let a = ty(&[("a", 0, "int"), ("b", 4, "int")], 8);
        let renamed = ty(&[("a", 0, "int"), ("c", 4, "int")], 8);
        assert_eq!(change(&a, &renamed), None);
        let swapped = ty(&[("b", 0, "int"), ("a", 4, "int")], 8);
        assert_eq!(
            change(&a, &swapped).unwrap().summary(),
            "layout changed: size 8 bytes, first member moved: a (offset 0 -> 4)"
        );
    }

    #[test]
    fn a_member_added_into_padding_or_removed_is_a_change() {
        let a = ty(&[("a", 0, "long int"), ("b", 8, "char")], 16);
        let added = ty(
            &[("a", 0, "long int"), ("b", 8, "char"), ("c", 9, "char")],
            16,
        );
        assert_eq!(
            change(&a, &added).unwrap().summary(),
            "layout changed: size 16 bytes, member added: c (offset 9)"
        );
        let removed = ty(&[("a", 0, "long int")], 8);
        assert_eq!(
            change(&a, &removed).unwrap().summary(),
            "layout changed: size 16 -> 8 bytes, first member removed: b (offset 8)"
        );
        let retyped = ty(&[("a", 0, "long unsigned int"), ("b", 8, "char")], 16);
        assert_eq!(
            change(&a, &retyped).unwrap().summary(),
            "layout changed: size 16 bytes, first member changed type: a (long int -> long unsigned int)"
        );
    }

    #[test]
    fn types_on_one_side_only_and_same_names_of_other_files_are_not_compared() {
        let a = ty(&[("a", 0, "int")], 4);
        let mut other_file = ty(&[("a", 0, "int"), ("b", 4, "int")], 8);
        other_file.file = Some("b.c".into());
        assert!(changes(std::slice::from_ref(&a), std::slice::from_ref(&other_file)).is_empty());
        assert!(changes(std::slice::from_ref(&a), &[]).is_empty());
        assert!(changes(&[], std::slice::from_ref(&a)).is_empty());
        let mut grown = other_file;
        grown.file = a.file.clone();
        assert_eq!(changes(std::slice::from_ref(&a), &[grown]).len(), 1);
    }
}

//! Per-object indexes the stages share: symbols by section and offset, mangled
//! names, relocation targets resolved to symbols, string contents.

use std::borrow::Cow;

use suture_elf::fx::{FxHashMap as HashMap, FxHashSet as HashSet};

use suture_elf::*;

/// One parsed input with the lookups the differ needs, all hash- or
/// binary-search based (kernel objects reach tens of thousands of symbols).
pub struct Obj {
    pub elf: Object,
    /// Function and object symbols, grouped by section and sorted by value
    /// within it: section `s` has `in_sec[sec_start[s]..sec_start[s + 1]]`.
    /// One array, not a vector per section: with -ffunction-sections most
    /// sections hold one symbol, and a map of small vectors cost ten times more.
    in_sec: Vec<usize>,
    sec_start: Vec<u32>,
    /// Mangled names, only where they differ from the symbol's own name (a
    /// minority of symbols).
    mangled: HashMap<usize, Box<str>>,
    /// Index into `files` of the STT_FILE symbol each local symbol follows
    /// (0, the empty name, for globals).
    pub file_of: Vec<u32>,
    pub files: Vec<String>,
    pub special: Vec<bool>,
    /// Call sites `__mcount_loc` records, as (section, offset).
    pub mcount_sites: HashSet<(usize, u64)>,
    /// Fields of branches the assembler resolved in place that were given a
    /// relocation ([`crate::branches`]), sorted offsets by section.
    pub resolved: HashMap<usize, Vec<u64>>,
}

/// Where a relocation really points once section symbols are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A named symbol (never STT_SECTION), addend re-based to the symbol.
    Sym { sym: usize, addend: i64 },
    /// Somewhere in a section no symbol covers (strings, anonymous constants,
    /// `.fixup` code...): `off` is the re-based offset (value + addend).
    Sec { sec: usize, off: i64 },
}

/// Drop every `.<digits>` run: the numbers gcc and clang append to clones
/// (`.isra.3`, `.constprop.0`, `.part.5`, `.cold.12`, `.llvm.123`) and statics
/// (`__key.4567`) change with unrelated edits. `__UNIQUE_ID_<name><counter>`
/// loses its counter too. Most names have nothing to drop and are borrowed.
pub fn mangle(name: &str) -> Cow<'_, str> {
    let b = name.as_bytes();
    let dot_digit =
        name.contains('.') && b.windows(2).any(|w| w[0] == b'.' && w[1].is_ascii_digit());
    if !dot_digit && !has_unique_id(name) {
        return Cow::Borrowed(name);
    }
    // Bytes, not chars: only ASCII runs are dropped, so a name with other
    // UTF-8 (corrupt input) stays valid UTF-8.
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'.' && i + 1 < b.len() && b[i + 1].is_ascii_digit() {
            let mut j = i + 1;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if j == b.len() || b[j] == b'.' {
                i = j;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    let out = String::from_utf8(out)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    if let Some(rest) = out.strip_prefix("__UNIQUE_ID_") {
        let trimmed = rest.trim_end_matches(|c: char| c.is_ascii_digit());
        return Cow::Owned(format!("__UNIQUE_ID_{trimmed}"));
    }
    // clang: `<func>.__UNIQUE_ID_ddebug<counter>`
    if let Some(p) = out.find(".__UNIQUE_ID_") {
        let trimmed = out
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .to_string();
        if trimmed.len() > p {
            return Cow::Owned(trimmed);
        }
    }
    Cow::Owned(out)
}

/// `name.contains("__UNIQUE_ID_")` without the substring searcher's set-up,
/// which dominated this test on tens of thousands of short names.
fn has_unique_id(name: &str) -> bool {
    // On bytes: `i - 2` may fall inside a multi-byte character (found by
    // `cargo fuzz run diff_pair`, a panic on a corrupt symbol name).
    let b = name.as_bytes();
    name.match_indices('U')
        .any(|(i, _)| i >= 2 && b[i - 2..].starts_with(b"__UNIQUE_ID_"))
}

const SPECIAL_STATICS: &[&str] = &[
    "__key",
    "__warned",
    "__already_done",
    "__func__",
    "__FUNCTION__",
    "_rs",
    "CSWTCH",
    "_entry",
    "_entry_ptr",
    "__print_once",
    "__done",
];

fn is_special_name(name: &str) -> bool {
    if !name.contains('.') {
        return SPECIAL_STATICS.contains(&name)
            || name == "descriptor"
            || (has_unique_id(name) && name.contains("__UNIQUE_ID_ddebug"));
    }
    // gcc spells a function static `var.N`, clang `func.var`.
    let first = name.split('.').next().unwrap_or("");
    let last = name
        .rsplit('.')
        .find(|p| !p.is_empty() && !p.bytes().all(|c| c.is_ascii_digit()))
        .unwrap_or("");
    SPECIAL_STATICS
        .iter()
        .any(|s| *s == first || (name.contains('.') && *s == last))
        || first == "descriptor"
        || name.contains("__UNIQUE_ID_ddebug")
}

pub fn is_special_section(name: &str) -> bool {
    name == "__verbose"
        || name == "__dyndbg"
        || name.starts_with(".data.once")
        || name.starts_with(".data..once")
        || name.starts_with(".data..L__unnamed")
        || name.starts_with(".data.__unnamed")
        || name.starts_with(".data..Lubsan")
        || name.starts_with(".data.Lubsan")
}

impl Obj {
    pub fn new(elf: Object) -> Obj {
        let n = elf.symbols.len();
        let mut by_sec: Vec<(usize, u64, std::cmp::Reverse<u64>, usize)> = Vec::new();
        let mut mangled = HashMap::default();
        let mut file_of = Vec::with_capacity(n);
        let mut special = Vec::with_capacity(n);
        let mut files = vec![String::new()];
        let mut file = 0u32;
        // Once per section, not once per symbol: a kernel object has thousands of both.
        let special_sec: Vec<bool> = elf
            .sections
            .iter()
            .map(|x| is_special_section(&x.name))
            .collect();
        for s in &elf.symbols {
            if s.typ == STT_FILE {
                files.push(s.name.to_string());
                file = (files.len() - 1) as u32;
            }
            if let Cow::Owned(m) = mangle(&s.name) {
                if s.name != m {
                    mangled.insert(s.index, m.into_boxed_str());
                }
            }
            file_of.push(if s.bind == STB_LOCAL { file } else { 0 });
            let sec = s.section();
            let in_special_sec = sec.map(|x| special_sec[x]).unwrap_or(false);
            special.push(
                s.bind == STB_LOCAL
                    && (s.typ == STT_OBJECT || s.typ == STT_NOTYPE)
                    && !s.name.starts_with(".L")
                    && (is_special_name(&s.name) || in_special_sec),
            );
            if let Some(x) = sec {
                if matches!(s.typ, STT_FUNC | STT_OBJECT)
                    || (s.typ == STT_NOTYPE && !s.name.is_empty() && !s.name.starts_with(".L"))
                {
                    by_sec.push((x, s.value, std::cmp::Reverse(s.size), s.index));
                }
            }
        }
        by_sec.sort_unstable();
        let mut sec_start = vec![0u32; elf.sections.len() + 1];
        for &(x, ..) in &by_sec {
            sec_start[x + 1] += 1;
        }
        for i in 1..sec_start.len() {
            sec_start[i] += sec_start[i - 1];
        }
        // Not `collect()`: that would keep the tuples' four-times-larger buffer.
        let mut in_sec = Vec::with_capacity(by_sec.len());
        in_sec.extend(by_sec.iter().map(|&(.., i)| i));
        let mut o = Obj {
            elf,
            in_sec,
            sec_start,
            mangled,
            file_of,
            files,
            special,
            mcount_sites: Default::default(),
            resolved: Default::default(),
        };
        if let Some(m) = o.elf.section_by_name("__mcount_loc").map(|s| s.index) {
            let mut sites = HashSet::default();
            for r in o.elf.relas_of(m) {
                let s = o.sym(r.sym);
                if let Some(sec) = s.section() {
                    sites.insert((sec, (s.value as i64).wrapping_add(r.addend) as u64));
                }
            }
            o.mcount_sites = sites;
        }
        o
    }

    pub fn mangled(&self, i: usize) -> &str {
        self.mangled
            .get(&i)
            .map(|m| &**m)
            .unwrap_or(&self.elf.symbols[i].name)
    }

    /// The function and object symbols of section `sec`, sorted by value
    /// (the larger first among those at one address).
    pub fn syms_of(&self, sec: usize) -> &[usize] {
        match (self.sec_start.get(sec), self.sec_start.get(sec + 1)) {
            (Some(&a), Some(&b)) => &self.in_sec[a as usize..b as usize],
            _ => &[],
        }
    }

    pub fn file(&self, i: usize) -> &str {
        &self.files[self.file_of[i] as usize]
    }

    pub fn sym(&self, i: usize) -> &Symbol {
        &self.elf.symbols[i]
    }

    pub fn sec(&self, i: usize) -> &Section {
        &self.elf.sections[i]
    }

    /// A normal static local (`var.N`): correlated through the functions that
    /// use it, not by name.
    pub fn is_static_local(&self, i: usize) -> bool {
        let s = self.sym(i);
        s.bind == STB_LOCAL
            && s.typ == STT_OBJECT
            && s.name.contains('.')
            && !s.name.starts_with(".L")
            && !self.special[i]
    }

    /// The symbol covering `off` in section `sec`. A symbol of size zero covers
    /// only its own address; an offset just past the last symbol belongs to it
    /// (pointers to the end of an array).
    pub fn containing(&self, sec: usize, off: i64) -> Option<usize> {
        let v = self.syms_of(sec);
        if off < 0 {
            return None;
        }
        let off = off as u64;
        let idx = v.partition_point(|&i| self.elf.symbols[i].value <= off);
        let mut label = None;
        // Symbols may overlap (aliases, labels inside functions): look back a
        // bounded number of entries for a covering function or object.
        for &i in v[..idx].iter().rev().take(64) {
            let s = &self.elf.symbols[i];
            if off < s.value.saturating_add(s.size.max(1)) {
                if s.typ != STT_NOTYPE {
                    return Some(i);
                }
                label.get_or_insert(i);
            }
        }
        if label.is_some() {
            return label;
        }
        if idx == v.len() && idx > 0 {
            let s = &self.elf.symbols[v[idx - 1]];
            if s.size > 0 && off == s.value.saturating_add(s.size) && s.typ == STT_OBJECT {
                return Some(v[idx - 1]);
            }
        }
        None
    }

    /// Resolve a relocation applied in section `in_sec`.
    pub fn target(&self, in_sec: usize, r: &Rela) -> Target {
        let s = self.sym(r.sym);
        let Some(sec) = s.section() else {
            return Target::Sym {
                sym: r.sym,
                addend: r.addend,
            };
        };
        let sectionish = s.typ == STT_SECTION
            || (s.typ == STT_NOTYPE
                && s.bind == STB_LOCAL
                && (s.name.starts_with(".L") || s.name.is_empty()))
            || self.sec(sec).is_strings();
        if !sectionish {
            return Target::Sym {
                sym: r.sym,
                addend: r.addend,
            };
        }
        let off = (s.value as i64).wrapping_add(r.addend);
        if self.sec(sec).is_strings() {
            return Target::Sec { sec, off };
        }
        // An instruction's PC-relative field is followed (usually) by 4 more bytes
        // of instruction: the addend points 4 bytes before the real target.
        let adj = if rela_is_pcrel(r.rtype) && self.sec(in_sec).is_exec() {
            4
        } else {
            0
        };
        // A section holding exactly one symbol (-fdata-sections, -ffunction-sections)
        // needs no guessing about the instruction's length.
        if let v @ [_, ..] = self.syms_of(sec) {
            let mut named = v.iter().copied().filter(|&i| self.sym(i).typ != STT_NOTYPE);
            if let (Some(c), None) = (named.next(), named.next()) {
                let cs = self.sym(c);
                if cs.value == 0 && cs.size == self.sec(sec).size {
                    return Target::Sym {
                        sym: c,
                        addend: off,
                    };
                }
            }
        }
        // Otherwise the displacement may be followed by an immediate: try the
        // usual 4 bytes, then longer tails.
        let tries: &[i64] = if adj == 4 { &[4, 5, 6, 8, 12] } else { &[0] };
        for &a in tries {
            if let Some(c) = self.containing(sec, off.wrapping_add(a)) {
                return Target::Sym {
                    sym: c,
                    addend: off - self.sym(c).value as i64,
                };
            }
        }
        Target::Sec { sec, off }
    }

    /// The NUL-terminated string around `off` in a string section, and where
    /// `off` sits in it.
    pub fn string_at(&self, sec: usize, off: i64) -> (&[u8], i64) {
        let d = &self.sec(sec).data;
        if off < 0 || off as usize >= d.len() {
            return (&[], off);
        }
        let o = off as usize;
        let start = d[..o]
            .iter()
            .rposition(|&c| c == 0)
            .map(|p| p + 1)
            .unwrap_or(0);
        let end = d[o..]
            .iter()
            .position(|&c| c == 0)
            .map(|p| o + p)
            .unwrap_or(d.len());
        (&d[start..end], (o - start) as i64)
    }

    /// Relocations of section `sec` inside `[start, end)`.
    pub fn relas_in(&self, sec: usize, start: u64, end: u64) -> Relas<'_> {
        let v = self.elf.relas_of(sec);
        let a = v.partition_point(|r| r.offset < start);
        let b = v.partition_point(|r| r.offset < end).max(a);
        v.slice(a..b)
    }

    /// Bytes of symbol `i` (empty for NOBITS).
    pub fn bytes(&self, i: usize) -> &[u8] {
        let s = self.sym(i);
        let Some(sec) = s.section() else { return &[] };
        let d = &self.sec(sec).data;
        let a = (s.value as usize).min(d.len());
        let b = (s.value.saturating_add(s.size) as usize).min(d.len());
        &d[a..b]
    }

    /// How a relocation target compares across the two objects: by mangled
    /// name and addend, by string contents, or by constant bytes.
    pub fn key(&self, t: Target, rtype: u32, in_sec: usize) -> Key<'_> {
        match t {
            Target::Sym { sym, addend } => Key::Name(self.mangled(sym), addend),
            Target::Sec { sec, off } => {
                let s = self.sec(sec);
                if s.is_strings() {
                    let adj = if rela_is_pcrel(rtype) && self.sec(in_sec).is_exec() {
                        4
                    } else {
                        0
                    };
                    let (st, at) = self.string_at(sec, off.wrapping_add(adj));
                    Key::Str(st, at)
                } else if s.flags & SHF_MERGE != 0 && s.entsize > 0 {
                    let adj = if rela_is_pcrel(rtype) && self.sec(in_sec).is_exec() {
                        4
                    } else {
                        0
                    };
                    let o = off.wrapping_add(adj).max(0) as usize;
                    let e = (o + s.entsize as usize).min(s.data.len());
                    Key::Bytes(s.data.get(o..e).unwrap_or(&[]))
                } else if s.name == ".altinstr_aux" {
                    // Alternative-instruction helper code: its layout moves with
                    // unrelated alternatives, the branch into it does not matter.
                    Key::Name(&s.name, 0)
                } else {
                    Key::Name(&s.name, off)
                }
            }
        }
    }

    pub fn describe(&self, t: Target) -> String {
        match t {
            Target::Sym { sym, addend } => fmt_sym(&self.sym(sym).name, addend),
            Target::Sec { sec, off } => {
                let s = self.sec(sec);
                if s.is_strings() {
                    let (st, _) = self.string_at(sec, off);
                    format!("{}+{:#x} {:?}", s.name, off, String::from_utf8_lossy(st))
                } else {
                    format!("{}+{:#x}", s.name, off)
                }
            }
        }
    }
}

pub fn fmt_sym(name: &str, addend: i64) -> String {
    if addend == 0 {
        name.to_string()
    } else if addend < 0 {
        format!("{name}-{:#x}", -(addend as i128))
    } else {
        format!("{name}+{addend:#x}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    Name(&'a str, i64),
    Str(&'a [u8], i64),
    Bytes(&'a [u8]),
}

/// The names a line number of the unit's own source file follows in a string
/// literal: the file name as STT_FILE spells it (`x86.c`, the end of
/// `__FILE__`, `arch/x86/kvm/x86.c`) and its stem (`x86`, `KBUILD_BASENAME`).
/// Only the unit's own file: suture patches `.c` files, so header line numbers
/// never move.
pub fn line_number_anchors(files: &[String]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for f in files {
        let base = f.rsplit('/').next().unwrap_or(f);
        let stem = base.strip_suffix(".c");
        for n in [Some(f.as_str()), Some(base), stem].into_iter().flatten() {
            if n.len() >= 2 && !v.iter().any(|x| x == n) {
                v.push(n.to_string());
            }
        }
    }
    v
}

/// Whether `text` (what precedes a run of digits) ends with `ANCHOR:`, the
/// anchor not glued to a longer identifier (`/x86.c:`, `"x86:`, but not `ax86:`).
fn ends_with_anchor(text: &[u8], anchors: &[String]) -> bool {
    let Some(text) = text.strip_suffix(b":") else {
        return false;
    };
    anchors.iter().any(|a| {
        text.ends_with(a.as_bytes())
            && !matches!(text[..text.len() - a.len()].last(), Some(&c) if c.is_ascii_alphanumeric() || c == b'_')
    })
}

/// Whether two strings differ only in line numbers of the unit's source file
/// (see [`line_number_anchors`]): `__FILE__ ":" __stringify(__LINE__)` in
/// fortify's field-spanning `memcpy` warning (`field "run->x" at
/// arch/x86/kvm/x86.c:8493`) or in timer lockdep names, `KBUILD_BASENAME ":"
/// __stringify(__LINE__)` in lockdep names of regmap and v4l2 locks. A line
/// moved by an edit elsewhere in the file changes nothing the code does.
/// Equal strings are not "line numbers only" (false).
pub fn line_numbers_only(a: &[u8], b: &[u8], anchors: &[String]) -> bool {
    let digits = |x: &[u8]| x.iter().take_while(|c| c.is_ascii_digit()).count();
    let (mut i, mut j, mut any) = (0, 0, false);
    loop {
        match (a.get(i), b.get(j)) {
            (None, None) => return any,
            (Some(x), Some(y))
                if x.is_ascii_digit()
                    && y.is_ascii_digit()
                    && ends_with_anchor(&a[..i], anchors)
                    && ends_with_anchor(&b[..j], anchors) =>
            {
                let (m, n) = (digits(&a[i..]), digits(&b[j..]));
                any |= a[i..i + m] != b[j..j + n];
                i += m;
                j += n;
            }
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mangle_drops_ascii_counters_and_keeps_other_utf8() {
        assert_eq!(mangle("f.isra.3.cold.12"), "f.isra.cold");
        assert_eq!(mangle("__UNIQUE_ID_ddebug417"), "__UNIQUE_ID_ddebug");
        assert!(matches!(mangle("plain"), Cow::Borrowed("plain")));
        // '€' is three bytes; the 'U' two bytes after its start once panicked.
        assert_eq!(mangle("x€U.12"), "x€U");
        assert_eq!(mangle("é__UNIQUE_ID_x7"), "é__UNIQUE_ID_x7");
        assert!(!has_unique_id("a€U"));
    }

    #[test]
    fn only_line_numbers_after_the_units_own_file_name_may_differ() {
        let anchors = line_number_anchors(&["".into(), "x86.c".into()]);
        assert_eq!(anchors, vec!["x86.c", "x86"]);
        let only = |a: &str, b: &str| line_numbers_only(a.as_bytes(), b.as_bytes(), &anchors);
        assert!(only(
            "field \"p\" at arch/x86/kvm/x86.c:8493",
            "field \"p\" at arch/x86/kvm/x86.c:8494"
        ));
        assert!(only("x86.c:9", "x86.c:10"), "the number may grow a digit");
        assert!(
            only("x86:12:(hdl)->_lock", "x86:13:(hdl)->_lock"),
            "KBUILD_BASENAME"
        );
        assert!(only("at x86.c:1 and x86.c:2", "at x86.c:3 and x86.c:4"));
        assert!(
            !only("x86.c:12", "x86.c:12"),
            "equal is not a line-number difference"
        );
        assert!(!only("other.c:12", "other.c:13"), "another file's line");
        assert!(
            !only("ax86.c:12", "ax86.c:13"),
            "a longer name ending in the unit's"
        );
        assert!(!only("size 12", "size 13"), "a number that is no line");
        assert!(!only("x86.c 12", "x86.c 13"));
        assert!(!only("x86.c:12a", "x86.c:13b"), "the rest must match");
        assert!(!only("x86.c:12", "x86.c:13 "));
        assert!(!only("x86.c:12", "x86.c:"), "a number cannot vanish");
        assert!(
            !line_numbers_only(b"x86.c:1", b"x86.c:2", &[]),
            "no FILE symbol: no exception"
        );
    }
}

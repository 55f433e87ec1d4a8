//! The differ's stages: correlate, compare, include, special sections, output.
//!
//! Comparison is per symbol, not per section: a function is its byte range and
//! the relocations inside it, each relocation target resolved through section
//! symbols to the symbol it lands in (or to string contents / constant bytes
//! where no symbol covers it) and compared by mangled name and addend. The output
//! is built from PATCHED byte ranges ("pieces") grouped per source section, so
//! objects compiled without -ffunction-sections work too.
//!
//! `.fixup`, `.altinstr_replacement` and `.altinstr_aux` are sliced to the
//! stubs included code and kept entries use (a stub ends where the next one
//! starts). Known simplification: debug sections are not carried over (their
//! relocations are not even read).

use suture_elf::fx::FxHashMap as HashMap;

use suture_elf::*;

use crate::correlate::local_positions;
use crate::model::Obj;
use crate::{Error, Explanation, Options, Outcome, Report};

/// Where a livepatch relocation finds a symbol: the object whose kallsyms
/// holds it (the target, or for a module target another module the target
/// depends on) and the position among that object's same-named symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KlpRef<'t> {
    pub obj: &'t str,
    pub sympos: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Same,
    Changed,
    New,
}

pub(crate) struct Diff<'a> {
    pub o: Obj,
    pub p: Obj,
    pub opts: &'a Options,
    /// PATCHED symbol → ORIG twin, and back.
    pub twin_p: Vec<Option<usize>>,
    pub twin_o: Vec<Option<usize>>,
    pub status: Vec<Status>,
    pub report: Report,
    /// PATCHED functions that are `.cold`/`.part` pieces of another, with their parent.
    pub parent_p: HashMap<usize, usize>,
    pub children_p: HashMap<usize, Vec<usize>>,
    /// PATCHED function → its `__pfx_`/`__cfi_` padding symbol.
    pub pfx_p: HashMap<usize, usize>,
    /// PATCHED function → bytes of CALL_PADDING before it that no `__pfx_`
    /// symbol names (objtool, which adds those symbols, runs on vmlinux.o, not
    /// on single vmlinux objects, when the kernel has IBT).
    pub pad_p: HashMap<usize, u64>,
    /// Position of each ORIG symbol among ORIG's defined local symbols of its
    /// name, in file order, from 1; 0 when the name is unique or not local.
    pub o_sympos: Vec<u32>,
    /// What a line number of the unit's own source file follows in a string
    /// literal (see [`crate::model::line_number_anchors`]).
    pub line_anchors: Vec<String>,
    /// Changed PATCHED functions ftrace cannot hook, reached by replacing
    /// their callers instead ([`crate::callers`]): included, not replaced.
    pub via_callers: std::collections::BTreeSet<usize>,
}

fn load(bytes: Shared, file: &'static str) -> Result<Obj, Error> {
    // Debug sections are not carried over: their relocations are not read.
    let po = ParseOptions {
        debug_relocations: false,
    };
    let mut elf = Object::parse_shared(bytes, &po).map_err(|e| Error::Input {
        file,
        msg: e.to_string(),
    })?;
    if elf.symtab.is_none() {
        return Err(Error::Input {
            file,
            msg: "no symbol table".into(),
        });
    }
    // Code and data live in PROGBITS/NOBITS (and the like); a symbol inside a
    // relocation, symbol or string table is corruption, and copying such a
    // section into the output would make a table nothing can parse (the
    // fuzzer found `.rela.text.x` copied as a RELA section applying to section 0).
    for x in &elf.symbols {
        if let Some(sec) = x.section() {
            let t = elf.sections[sec].sh_type;
            if matches!(
                t,
                SHT_NULL
                    | SHT_SYMTAB
                    | SHT_STRTAB
                    | SHT_RELA
                    | SHT_REL
                    | SHT_GROUP
                    | SHT_SYMTAB_SHNDX
                    | 11
            ) {
                return Err(Error::Input {
                    file,
                    msg: format!("symbol {} ({}) is defined in {}, a section of type {t} that holds no code or data", x.index, x.name, elf.sections[sec].name),
                });
            }
        }
    }
    let resolved = crate::branches::resolve_fixed_branches(&mut elf);
    let mut obj = Obj::new(elf);
    obj.resolved = resolved;
    Ok(obj)
}

pub fn diff(orig: &[u8], patched: &[u8], opts: &Options) -> Result<Outcome, Error> {
    diff_shared(
        std::sync::Arc::new(orig.to_vec()),
        std::sync::Arc::new(patched.to_vec()),
        opts,
    )
}

/// [`diff`] on inputs the caller already holds (a `Vec` or a memory map): no copy.
pub fn diff_shared(orig: Shared, patched: Shared, opts: &Options) -> Result<Outcome, Error> {
    diff_shared_keep(orig, patched, opts).map(|(out, _model)| out)
}

/// The parsed inputs an [`Outcome`] was computed from, opaque.
pub struct Model<'a>(#[allow(dead_code)] Diff<'a>);

/// [`diff_shared`], handing back the parsed inputs as well, so that a process
/// about to exit can leave them to the kernel (`std::mem::forget`): freeing
/// tens of thousands of small allocations one by one is a tenth of a diff.
pub fn diff_shared_keep(
    orig: Shared,
    patched: Shared,
    opts: &Options,
) -> Result<(Outcome, Model<'_>), Error> {
    let mut d = Diff::new(orig, patched, opts)?;
    d.compare();
    let out = crate::include::run(&mut d)?;
    Ok((out, Model(d)))
}

/// The pipeline cut after each stage, for the Criterion benchmark of the
/// stages (each includes the ones before it): 0 parse, 1 correlate, 2 compare,
/// 3 include and write. Not an API.
#[doc(hidden)]
pub fn run_stages(orig: Shared, patched: Shared, opts: &Options, upto: u8) -> Result<(), Error> {
    if upto == 0 {
        load(orig, "ORIG")?;
        load(patched, "PATCHED")?;
        return Ok(());
    }
    let mut d = Diff::new(orig, patched, opts)?;
    if upto >= 2 {
        d.compare();
    }
    if upto >= 3 {
        crate::include::run(&mut d)?;
    }
    Ok(())
}

pub fn explain(
    orig: &[u8],
    patched: &[u8],
    func: &str,
    opts: &Options,
) -> Result<Explanation, Error> {
    explain_shared(
        std::sync::Arc::new(orig.to_vec()),
        std::sync::Arc::new(patched.to_vec()),
        func,
        opts,
    )
}

pub fn explain_shared(
    orig: Shared,
    patched: Shared,
    func: &str,
    opts: &Options,
) -> Result<Explanation, Error> {
    let d = Diff::new(orig, patched, opts)?;
    Ok(crate::explain::explain(&d, func))
}

/// Parent of a `.cold`/`.part.N` piece: the name before the suffix.
pub(crate) fn parent_name(name: &str) -> Option<&str> {
    for pat in [".cold", ".part."] {
        if let Some(i) = name.find(pat) {
            if i > 0 {
                return Some(&name[..i]);
            }
        }
    }
    None
}

pub(crate) const DATA_PREFIXES: &[&str] = &[
    ".data",
    ".bss",
    ".rodata",
    ".init.data",
    ".init.rodata",
    ".ref.data",
    ".tdata",
    ".tbss",
    ".exit.data",
];

impl<'a> Diff<'a> {
    pub fn new(orig: Shared, patched: Shared, opts: &'a Options) -> Result<Self, Error> {
        let o = load(orig, "ORIG")?;
        let p = load(patched, "PATCHED")?;
        if o.elf.e_flags != p.elf.e_flags {
            return Err(Error::Other(
                "ORIG and PATCHED have different ELF header flags".into(),
            ));
        }
        let np = p.elf.symbols.len();
        let no = o.elf.symbols.len();
        let mut d = Diff {
            o,
            p,
            opts,
            twin_p: vec![None; np],
            twin_o: vec![None; no],
            status: vec![Status::Same; np],
            report: Report::default(),
            parent_p: HashMap::default(),
            children_p: HashMap::default(),
            pfx_p: HashMap::default(),
            pad_p: HashMap::default(),
            o_sympos: Vec::new(),
            line_anchors: Vec::new(),
            via_callers: Default::default(),
        };
        d.o_sympos = local_positions(&d.o.elf.symbols);
        d.line_anchors = crate::model::line_number_anchors(&d.o.files);
        d.check_related()?;
        d.correlate();
        d.find_children();
        d.correlate_static_locals();
        Ok(d)
    }
}

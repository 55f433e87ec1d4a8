//! The object differ: two kernel objects (one translation unit compiled with
//! `-ffunction-sections -fdata-sections` before and after a source patch) in, one
//! relocatable "klp object" out.
//!
//! Stages, named as in kpatch's create-diff-object: correlate, compare, include,
//! special sections, klp relocations. Pure: bytes in, bytes out, no I/O.
//!
//! # The klp-object form of the output
//!
//! The output is an ordinary ELF64 relocatable object that `ld -r` and kbuild can
//! link without damage:
//! - changed functions are defined LOCAL, under their original names; new
//!   functions keep the binding they have in PATCHED;
//! - a reference to an unchanged symbol the target exports stays an undefined
//!   symbol with its plain name (a normal relocation, resolved by the module loader);
//! - a reference to an unchanged symbol the target does not export (static
//!   functions and variables, unexported globals, anything of a module) is an
//!   undefined GLOBAL symbol named `.klp.sym.<objname>.<name>,<pos>`; the module
//!   stage (suture-klp) turns those into `SHN_LIVEPATCH` symbols and moves their
//!   relocations into `.klp.rela.<objname>.<section>` sections after linking,
//!   because linkers do not preserve either;
//! - for a module target, a reference to a symbol another module exports is an
//!   undefined GLOBAL symbol named `.klp.xsym.<objname>.<module>.<name>,<pos>`:
//!   the module stage turns it into the `SHN_LIVEPATCH` symbol
//!   `.klp.sym.<module>.<name>,<pos>` and moves its relocations into the
//!   target's `.klp.rela.<objname>.<section>`, applied when the target loads
//!   (after `<module>`, which it depends on), so that the patch module itself
//!   depends on no module. vmlinux exports stay plain names: the kernel
//!   forbids vmlinux symbols in a module's klp relocation sections.

// The workspace's rust-version (1.80) predates `is_multiple_of` (1.87).
#![allow(unknown_lints, clippy::manual_is_multiple_of)]

use std::collections::{BTreeMap, HashMap};

mod branches;
mod callers;
mod compare;
mod correlate;
mod entry;
mod explain;
mod include;
mod insn;
mod model;
mod pipeline;
mod reference;

pub use pipeline::{
    diff, diff_shared, diff_shared_keep, explain, explain_shared, run_stages, Model,
};
pub use suture_elf::Shared;

// Defined with the other contracts in suture-abi; here too so that the
// differ's users need no second crate for its options.
pub use suture_abi::target::{Target, TargetSym};

/// What the differ may not infer by itself.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Size of one entry of a special section, by section name (`__jump_table` → 16).
    /// Sizes not given are inferred (`sh_entsize`, relocation layout) or defaulted
    /// for x86_64; the report says which sizes were used.
    pub entry_sizes: HashMap<String, usize>,
    /// The symbol table of the object the patch targets. `None`: ORIG's own symbol
    /// table stands in (locals unexported with positions counted in ORIG, globals
    /// unexported), as kpatch's unit tests do.
    pub target: Option<Target>,
    /// The release runs objtool when it links a module (`X86_KERNEL_IBT` or
    /// `LTO_CLANG`): objtool then writes ORC and its site lists for the whole
    /// livepatch module, and skips any it finds already present, which would
    /// leave the generated hook without them. The output carries none.
    pub objtool_at_link: bool,
}

#[derive(Debug)]
pub enum Outcome {
    /// A patch object was produced.
    Changes(Patch),
    /// The objects differ only in noise (moved `__LINE__` constants, renumbered
    /// `__UNIQUE_ID`s, ...): nothing to patch.
    NoChange(Report),
    /// At least one change cannot be live-patched; `report.refusals` says which and why.
    Refused(Report),
    /// Only `__init`/`__exit` code changed: nothing in the running kernel to
    /// patch (`report.refusals` says, per function, when the fix takes effect).
    InitExitOnly(Report),
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Changed functions, by their name in ORIG.
    pub changed: Vec<String>,
    /// Functions PATCHED adds.
    pub new: Vec<String>,
    pub refusals: Vec<Refusal>,
    pub warnings: Vec<String>,
    /// Callbacks declared with the `SUTURE_*_CALLBACK()` macros: `kind: function`.
    pub callbacks: Vec<String>,
    /// Entry sizes of the special sections met, and where each came from.
    pub entry_sizes: BTreeMap<String, EntrySize>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EntrySize {
    pub size: usize,
    /// `given`, `sh_entsize`, `relocations` or `default`.
    pub source: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// The function or section the refusal is about.
    pub subject: String,
    /// Why, in words a patch author can act on.
    pub reason: String,
}

#[derive(Debug)]
pub struct Patch {
    /// The klp object (see the crate docs).
    pub object: Vec<u8>,
    pub report: Report,
    /// The functions the patch replaces in the target: one `klp_func` each.
    pub replaced: Vec<ReplacedFunc>,
    /// Callbacks the patched source declared (`SUTURE_PRE_PATCH_CALLBACK()`...),
    /// for the `klp_object` of this object's target.
    pub callbacks: Vec<Callback>,
}

/// The four `struct klp_callbacks` members.
pub const CALLBACK_KINDS: [&str; 4] = ["pre_patch", "post_patch", "pre_unpatch", "post_unpatch"];

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Callback {
    /// One of [`CALLBACK_KINDS`].
    pub kind: String,
    /// The symbol in `Patch::object` that defines the callback function.
    pub symbol: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplacedFunc {
    /// The name of the function in the running kernel (`klp_func.old_name`).
    pub name: String,
    /// `klp_func.old_sympos`.
    pub sympos: u32,
    /// The (local) symbol in `Patch::object` that defines the replacement.
    pub symbol: String,
}

/// Why a function counts as changed (`suture diff --explain`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explanation {
    pub function: String,
    /// One line per finding, e.g. the first differing instruction of each side,
    /// decoded, or the first differing relocation, with offsets.
    pub lines: Vec<String>,
}

/// Bad input: not something to patch at all. Unsupported changes are not errors
/// but `Outcome::Refused`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: {msg}")]
    Input { file: &'static str, msg: String },
    #[error("{0}")]
    Other(String),
}

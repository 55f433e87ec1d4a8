//! Where the symbols of the kernel a patch targets come from, without the
//! distribution's debug package:
//!
//! - the kernel image itself: [`extract_vmlinux`] decompresses the bzImage and
//!   [`kallsyms_from_vmlinux`] decodes the kallsyms tables compiled into it;
//! - a copy of `/proc/kallsyms` ([`parse_proc_kallsyms`]);
//! - a module's own symbol table ([`module_symbols`]);
//! - `Module.symvers` for what is exported ([`Exports`]);
//! - for `suture diff --symbols`, one file: an object's own symbol table or a
//!   kallsyms copy, positions in file order ([`symbols_from_file`]).
//!
//! [`build_target`] turns those and the original object of one translation unit
//! into the differ's [`Target`](suture_abi::target::Target), deciding which of several
//! same-named symbols belongs to that translation unit by comparing code bytes
//! with the image ([`verify_function`] is the same comparison, used to refuse
//! builds that do not reproduce the running kernel).
//!
//! # Usage
//!
//! ```no_run
//! use std::path::Path;
//! use suture_symbols::{build_target, ReleasePaths, TargetImage};
//!
//! let paths = ReleasePaths::new(Path::new("/"), "6.1.0-56-amd64");
//! let (vmlinux, kallsyms) = paths.load_vmlinux()?;
//! let exports = paths.load_exports()?;
//! let orig = std::fs::read("fs/proc/cmdline.o")?;
//! let target = build_target(
//!     TargetImage::Vmlinux { kallsyms: &kallsyms, vmlinux: Some(&vmlinux) },
//!     &exports,
//!     "vmlinux",
//!     &orig,
//! )?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See README.md beside this crate for what was measured on Debian's images.

mod exports;
mod extract;
mod ibt;
mod image;
mod io;
mod kallsyms;
mod module;
mod obj;
mod runtime;
mod source;
mod symbol_file;
mod target;

pub use exports::{Export, Exports};
pub use extract::{decompress_module, extract_vmlinux};
pub use ibt::{ibt_sealed_sites, ENDBR64};
pub use image::Image;
pub use io::{load_proc_kallsyms, ReleasePaths};
pub use kallsyms::{
    decode_tables, kallsyms_from_vmlinux, parse_proc_kallsyms, Instance, KSym, Kallsyms,
};
pub use module::{module_name, module_symbols};
pub use runtime::runtime_rewritten_sites;
pub use source::{prefetch_vmlinux, runtime_mask, SymbolSource};
pub use symbol_file::{symbols_from_elf, symbols_from_file, symbols_from_kallsyms};
pub use target::{
    build_target, build_target_report, place_module_exports, verify_function, Decision, Mismatch,
    TargetImage, TargetReport, Unresolved,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel image (bzImage or vmlinux) is not usable.
    #[error("kernel image: {0}")]
    Image(String),
    /// No usable symbol table.
    #[error("kallsyms: {0}")]
    Kallsyms(String),
    #[error("Module.symvers: {0}")]
    Symvers(String),
    /// An object file (ORIG.o or a .ko) is not usable.
    #[error("{file}: {msg}")]
    Object { file: String, msg: String },
    /// ORIG does not belong to the target at all.
    #[error("{0}")]
    WrongTarget(String),
    /// Symbols of ORIG that have several instances in the target and that no
    /// evidence ties to one of them.
    #[error("cannot tell which instance belongs to this translation unit: {}", .0.iter().map(|u| format!("{} ({})", u.name, u.why)).collect::<Vec<_>>().join("; "))]
    Ambiguous(Vec<Unresolved>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

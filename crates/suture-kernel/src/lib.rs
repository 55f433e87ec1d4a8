//! Release → source tree: find a Debian kernel release's files, prepare (and
//! cache) a source tree that reproduces its build, apply a patch, and compile
//! single translation units with kbuild. The pure parts (release names, unified
//! diffs, kbuild command files) are unit-tested; the rest drives tar, make and gcc.

pub mod includes;
pub mod kbuild;
pub mod launcher;
pub mod patchfile;
pub mod release;
pub mod tree;

pub use release::{Release, ReleaseName};
pub use tree::{ObjectInfo, Tree};

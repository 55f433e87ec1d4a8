//! suture-host: load, unload and list livepatch modules on the running
//! kernel. A thin edge over sysfs, procfs and two syscalls (`finit_module`,
//! `delete_module`, isolated in [`sys`]); the decisions are made on data read
//! from a configurable root so they are testable against a temporary tree.

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod kcore;
pub mod kexec;
pub mod modinfo;
pub mod modsig;
pub mod report;
pub mod state;
pub mod sys;
pub mod sysfs;

mod check;
mod error;
mod load;
mod table;
mod unload;

use std::path::{Path, PathBuf};
use std::time::Duration;
use sys::{Kernel, SysKernel};
use sysfs::Root;

pub use modinfo::ModuleInfo;
pub use sysfs::{PatchState, StalledTask};

pub use check::Checked;
pub use error::{modinfo_refusal, unknown_symbols, ErrorKind, HostError};
pub use load::{
    force_warning, ForceConfirm, LoadOptions, LoadReport, TransitionAid, KERNEL_SIGNAL_PERIOD,
};
pub use table::format_table;
pub use unload::{UnloadOptions, UnloadReport};

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A host: where sysfs/procfs are and how to make syscalls.
pub struct Host {
    pub root: Root,
    pub kernel: Box<dyn Kernel>,
}

impl Default for Host {
    fn default() -> Self {
        Host::system()
    }
}

impl Host {
    /// The running system: `/sys`, `/proc`, real syscalls.
    pub fn system() -> Self {
        Host {
            root: Root::default(),
            kernel: Box::new(SysKernel),
        }
    }

    pub fn with(root: impl Into<PathBuf>, kernel: Box<dyn Kernel>) -> Self {
        Host {
            root: Root(root.into()),
            kernel,
        }
    }
}

/// [`Host::load`] on the running system.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<LoadReport, HostError> {
    Host::system().load(path, opts)
}

/// [`Host::unload`] on the running system.
pub fn unload(name: &str, opts: &UnloadOptions) -> Result<UnloadReport, HostError> {
    Host::system().unload(name, opts)
}

/// [`Host::list`] on the running system.
pub fn list() -> Result<Vec<PatchState>, HostError> {
    Host::system().list()
}

#[cfg(test)]
mod tests;

//! What went wrong on the host, as a category a caller can act on, with
//! the message and what to do next.

use crate::*;
use serde::Serialize;
use std::io;
use std::path::Path;

/// What went wrong, as a category a caller (or a JSON consumer) can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Io,
    NotAModule,
    NotLivepatch,
    ReleaseMismatch,
    BuildIdMismatch,
    AlreadyLoaded,
    Busy,
    Incompatible,
    UnknownSymbol,
    Signature,
    /// The trust store holds certificates and the module carries no signature.
    Unsigned,
    /// Signed by a key no certificate in the trust store matches.
    UnknownSigner,
    /// The signature block is malformed, damaged or of an unsupported kind.
    BadSignature,
    /// The module changed after it was signed, or since it was installed.
    Modified,
    /// The trust store cannot be read.
    TrustStore,
    Permission,
    TransitionTimeout,
    NotLoaded,
    ModuleInUse,
    Kernel,
    /// Arguments that name nothing sensible (kexec).
    BadInput,
    /// No image or initramfs installed for the release (kexec).
    UnknownRelease,
    /// kexec switched off or not built in.
    KexecDisabled,
    /// The file is not a kernel image the running kernel can boot.
    NotKernel,
    /// A state file or directory exists and cannot be read or parsed:
    /// what it recorded cannot be honoured, so nothing is loaded from it.
    StateUnreadable,
}

/// An error with what happened, what to do next, and the evidence.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
pub struct HostError {
    pub kind: ErrorKind,
    pub message: String,
    /// The next step for the operator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Kernel log lines about the module, when the kernel explained itself.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_log: Vec<String>,
    /// Tasks that had not switched when a transition timed out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stalled_tasks: Vec<StalledTask>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        for t in &self.stalled_tasks {
            write!(
                f,
                "\n  task {} (tid {}) {:?}: patch_state {}, blocked in {}",
                t.pid,
                t.tid,
                t.comm,
                t.patch_state,
                t.blocking_function.as_deref().unwrap_or("?")
            )?;
            if !t.patched_on_stack.is_empty() {
                write!(
                    f,
                    ", patched function(s) on its stack: {}",
                    t.patched_on_stack.join(", ")
                )?;
            }
        }
        if !self.kernel_log.is_empty() {
            write!(f, "\n  kernel log:")?;
            for l in &self.kernel_log {
                write!(f, "\n    {l}")?;
            }
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// The symbols the kernel log says a load could not resolve: the module
/// loader's `MOD: Unknown symbol NAME (err -2)` and the livepatch core's
/// `symbol 'NAME' not found in symbol table` (klp relocations), each once,
/// in order.
pub fn unknown_symbols(log: &[String]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for l in log {
        let name = if let Some((_, rest)) = l.split_once("Unknown symbol ") {
            rest.split_whitespace().next()
        } else if let Some((_, rest)) = l.split_once("symbol '") {
            rest.split_once("' not found").map(|(n, _)| n)
        } else {
            None
        };
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            if !v.iter().any(|x| x == n) {
                v.push(n.to_string());
            }
        }
    }
    v
}

/// Why a file's `.modinfo` cannot be used: not a module at all, or fields
/// no kbuild writes (which would otherwise become paths and script text).
pub fn modinfo_refusal(path: &Path, e: &modinfo::ModinfoError) -> HostError {
    use modinfo::ModinfoError::*;
    match e {
        BadField(_) | NameMismatch(..) => HostError::new(
            ErrorKind::NotAModule,
            format!("refusing {}: {e}", path.display()),
        )
        .hint("kbuild never writes such a module: it was altered or made by hand; rebuild it with suture build"),
        _ => HostError::new(
            ErrorKind::NotAModule,
            format!("{} is not a loadable kernel module: {e}", path.display()),
        ),
    }
}

impl HostError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        HostError {
            kind,
            message: message.into(),
            hint: None,
            kernel_log: vec![],
            stalled_tasks: vec![],
            errno: None,
        }
    }
    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
    pub fn io(what: String, e: &io::Error) -> Self {
        let mut err = Self::new(ErrorKind::Io, format!("{what}: {e}"));
        err.errno = e.raw_os_error();
        if e.kind() == io::ErrorKind::PermissionDenied {
            err = err.hint("run as root (needs CAP_SYS_MODULE and write access to /sys)");
        }
        err
    }
}

pub(crate) fn already_loaded(name: &str) -> HostError {
    HostError::new(
        ErrorKind::AlreadyLoaded,
        format!("a module named {name} is already loaded"),
    )
    .hint(format!(
        "see `suture list`; to replace it, `suture unload {name}` first"
    ))
}

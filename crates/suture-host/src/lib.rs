//! suture-host: load, unload and list livepatch modules on the running
//! kernel. A thin edge over sysfs, procfs and two syscalls (`finit_module`,
//! `delete_module`, isolated in [`sys`]); the decisions are made on data read
//! from a configurable root so they are testable against a temporary tree.

pub mod modinfo;
pub mod sys;
pub mod sysfs;

use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use sys::{Kernel, SysKernel};
use sysfs::{Root, StalledTask, WaitOutcome};

pub use modinfo::ModuleInfo;
pub use sysfs::PatchState;

/// What went wrong, as a category a caller (or a JSON consumer) can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Io,
    NotAModule,
    NotLivepatch,
    ReleaseMismatch,
    AlreadyLoaded,
    Busy,
    Incompatible,
    UnknownSymbol,
    Signature,
    Permission,
    TransitionTimeout,
    NotLoaded,
    ModuleInUse,
    Kernel,
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

impl HostError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        HostError {
            kind,
            message: message.into(),
            hint: None,
            kernel_log: vec![],
            stalled_tasks: vec![],
            errno: None,
        }
    }
    fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
    fn io(what: String, e: &io::Error) -> Self {
        let mut err = Self::new(ErrorKind::Io, format!("{what}: {e}"));
        err.errno = e.raw_os_error();
        if e.kind() == io::ErrorKind::PermissionDenied {
            err = err.hint("run as root (needs CAP_SYS_MODULE and write access to /sys)");
        }
        err
    }
}

/// Options for [`load`]. `Default` gives a 60 s transition timeout.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// How long the patching transition may take before it is reversed.
    pub timeout: Duration,
    pub poll_interval: Duration,
    /// Module parameters passed to `finit_module`.
    pub params: String,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(10),
            params: String::new(),
        }
    }
}

/// Options for [`unload`].
#[derive(Debug, Clone)]
pub struct UnloadOptions {
    /// Bound on each wait: the unpatching transition, the sysfs directory
    /// going away, the module reference dropping.
    pub timeout: Duration,
    pub poll_interval: Duration,
}

impl Default for UnloadOptions {
    fn default() -> Self {
        UnloadOptions {
            timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(10),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub name: String,
    pub path: PathBuf,
    pub release: String,
    /// `finit_module` itself (module init enables the patch).
    pub load_ms: f64,
    /// From the end of `finit_module` to `transition` reading 0.
    pub transition_ms: f64,
    pub total_ms: f64,
    pub state: PatchState,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnloadReport {
    pub name: String,
    /// False when the patch was already disabled and only the module remained.
    pub was_enabled: bool,
    pub transition_ms: f64,
    pub total_ms: f64,
}

fn ms(d: Duration) -> f64 {
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

    /// Checks, loads and waits for a livepatch module; on a transition
    /// timeout the patch is reversed and removed, and the error names the
    /// tasks that did not switch.
    pub fn load(&self, path: &Path, opts: &LoadOptions) -> Result<LoadReport, HostError> {
        let start = Instant::now();
        let data = std::fs::read(path)
            .map_err(|e| HostError::io(format!("cannot read {}", path.display()), &e))?;
        let info = modinfo::parse_module(&data).map_err(|e| {
            HostError::new(
                ErrorKind::NotAModule,
                format!("{} is not a loadable kernel module: {e}", path.display()),
            )
        })?;
        if !info.livepatch {
            return Err(HostError::new(
                ErrorKind::NotLivepatch,
                format!(
                    "refusing to load {}: module {:?} is not a livepatch module (its .modinfo has no livepatch=Y)",
                    path.display(),
                    info.name
                ),
            )
            .hint("suture only loads livepatch modules; use insmod or modprobe for ordinary modules"));
        }
        let release = self
            .kernel
            .release()
            .map_err(|e| HostError::io("uname".into(), &e))?;
        match info.release() {
            Some(r) if r == release => {}
            other => {
                return Err(HostError::new(
                    ErrorKind::ReleaseMismatch,
                    format!(
                        "refusing to load {}: built for kernel {}, but this kernel is {release}",
                        path.display(),
                        other.map_or("(no vermagic)".to_string(), |r| r.to_string())
                    ),
                )
                .hint(format!(
                    "build the patch against the {release} headers/source"
                )));
            }
        }
        let name = info.name.clone();
        if self.root.module_dir(&name).is_dir() {
            return Err(already_loaded(&name));
        }
        let busy = sysfs::patches_in_transition(&self.root);
        if !busy.is_empty() {
            return Err(HostError::new(
                ErrorKind::Busy,
                format!("livepatch {:?} is still in transition; the kernel allows one transition at a time", busy[0]),
            )
            .hint("wait for it to finish (`suture list`), then retry"));
        }

        let file = std::fs::File::open(path)
            .map_err(|e| HostError::io(format!("cannot open {}", path.display()), &e))?;
        let mark = self.kernel.log_mark();
        let t0 = Instant::now();
        if let Err(e) = self.kernel.finit_module(&file, &opts.params) {
            return Err(self.explain_load_errno(&name, &e, self.kernel.log_since(mark)));
        }
        let load_time = t0.elapsed();

        if !self.root.patch_dir(&name).is_dir() {
            // klp_enable_patch creates the directory before init returns, so
            // its absence means the module did not enable a patch.
            return Err(HostError::new(
                ErrorKind::Kernel,
                format!(
                    "module {name} loaded but {} did not appear",
                    self.root.patch_dir(&name).display()
                ),
            )
            .hint(format!(
                "check `dmesg`; remove the module with `rmmod {name}`"
            )));
        }

        let t1 = Instant::now();
        match sysfs::wait_until(opts.timeout, opts.poll_interval, || {
            sysfs::transition_done(&self.root, &name)
        }) {
            WaitOutcome::Done(_) => {}
            WaitOutcome::TimedOut => return Err(self.abort_load(&name, opts)),
        }
        let transition_time = t1.elapsed();
        let state = sysfs::read_patch(&self.root, &name)
            .map_err(|e| HostError::io(format!("reading {}", self.root.patch_dir(&name).display()), &e))?
            .ok_or_else(|| {
                HostError::new(ErrorKind::Kernel, format!("livepatch {name} disappeared right after its transition"))
                    .hint("another patch with atomic replace may have replaced it; see `suture list` and `dmesg`")
            })?;
        if state.enabled != Some(true) {
            return Err(HostError::new(
                ErrorKind::Kernel,
                format!("livepatch {name} finished its transition disabled"),
            )
            .hint("someone disabled it concurrently; see `dmesg`"));
        }
        Ok(LoadReport {
            name,
            path: path.to_path_buf(),
            release,
            load_ms: ms(load_time),
            transition_ms: ms(transition_time),
            total_ms: ms(start.elapsed()),
            state,
        })
    }

    fn explain_load_errno(&self, name: &str, e: &io::Error, log: Vec<String>) -> HostError {
        let errno = e.raw_os_error().unwrap_or(0);
        let log_has = |s: &str| log.iter().any(|l| l.contains(s));
        let mut err = match errno {
            libc::EEXIST => already_loaded(name),
            libc::EBUSY => {
                let busy = sysfs::patches_in_transition(&self.root);
                if let Some(other) = busy.first() {
                    HostError::new(ErrorKind::Busy, format!("the kernel refused {name}: livepatch {other:?} is in transition"))
                        .hint("wait for that transition to finish (`suture list`), then retry")
                } else {
                    HostError::new(
                        ErrorKind::Busy,
                        format!("the kernel refused {name} with EBUSY: another patch was in transition, or ftrace could not attach to a patched function"),
                    )
                    .hint("check `dmesg` for an ftrace/IPMODIFY conflict (a kprobe or tracer on the same function) and retry once transitions are done")
                }
            }
            libc::ENOEXEC => HostError::new(
                ErrorKind::Incompatible,
                format!("the kernel rejected {name} as an invalid module for this kernel (ENOEXEC)"),
            )
            .hint("the module does not match this kernel's build (vermagic, symbol CRCs or ELF layout); rebuild it against this release and check `dmesg`"),
            libc::EINVAL => HostError::new(
                ErrorKind::Incompatible,
                format!("the kernel rejected {name} (EINVAL): the livepatch core could not apply it"),
            )
            .hint("a function to patch was not found or is ambiguous, the module is incompatible with installed livepatches, or its format is invalid; check `dmesg`"),
            libc::ENOENT => HostError::new(
                ErrorKind::UnknownSymbol,
                format!("the kernel could not resolve symbols of {name} (ENOENT)"),
            )
            .hint("`dmesg` shows `Unknown symbol`; the module needs symbols this kernel does not export, or a module it depends on is not loaded"),
            libc::EKEYREJECTED => HostError::new(ErrorKind::Signature, format!("the kernel rejected the signature of {name}"))
                .hint("sign the module with a key the kernel trusts (e.g. one enrolled with mokutil) or load it where signatures are not enforced"),
            libc::EBADMSG => HostError::new(ErrorKind::Signature, format!("the signature appended to {name} is malformed"))
                .hint("re-sign the module (scripts/sign-file) or strip the broken signature"),
            libc::EPERM | libc::EACCES => {
                let disabled = std::fs::read_to_string(self.root.0.join("proc/sys/kernel/modules_disabled"))
                    .is_ok_and(|s| s.trim() == "1");
                let msg = if disabled {
                    "module loading is disabled (kernel.modules_disabled=1) until reboot".to_string()
                } else {
                    format!("the kernel did not permit loading {name}")
                };
                HostError::new(if disabled { ErrorKind::Permission } else { ErrorKind::Signature }, msg).hint(
                    "run as root; if you are root, signature enforcement (module.sig_enforce, Secure Boot lockdown) requires a module signed with a trusted key",
                )
            }
            libc::ENODEV => HostError::new(ErrorKind::Kernel, format!("the livepatch core refused {name} (ENODEV)"))
                .hint("livepatching is not initialised on this kernel; check `dmesg`"),
            _ => HostError::new(ErrorKind::Kernel, format!("loading {name} failed: {e}")).hint("check `dmesg`"),
        };
        if log_has("Unknown symbol") && err.kind != ErrorKind::UnknownSymbol {
            err.kind = ErrorKind::UnknownSymbol;
        }
        err.errno = Some(errno);
        err.kernel_log = log;
        err
    }

    /// The patching transition did not finish: record who is stuck, reverse
    /// the transition, remove the module, and report.
    fn abort_load(&self, name: &str, opts: &LoadOptions) -> HostError {
        let patched = sysfs::read_patch(&self.root, name)
            .ok()
            .flatten()
            .map(|p| sysfs::patched_function_names(&p))
            .unwrap_or_default();
        let stalled = sysfs::stalled_tasks(&self.root, 1, &patched);
        let mut msg = format!(
            "livepatch {name} did not finish its transition within {:?}: {} task(s) had not switched",
            opts.timeout,
            stalled.len()
        );
        let enabled = self.root.patch_dir(name).join("enabled");
        let cleanup = (|| -> Result<(), String> {
            std::fs::write(&enabled, "0")
                .map_err(|e| format!("writing 0 to {}: {e}", enabled.display()))?;
            if sysfs::wait_until(opts.timeout, opts.poll_interval, || {
                !self.root.patch_dir(name).is_dir()
            }) == WaitOutcome::TimedOut
            {
                return Err("the reversal did not finish either".into());
            }
            self.remove_module(name, opts.timeout, opts.poll_interval)
                .map_err(|e| e.message)
        })();
        match cleanup {
            Ok(()) => msg.push_str("; the transition was reversed and the module removed"),
            Err(e) => msg.push_str(&format!(
                "; reversing it failed ({e}): the patch may still be in transition"
            )),
        }
        let mut err = HostError::new(ErrorKind::TransitionTimeout, msg).hint(
            "the listed tasks sleep in or above a patched function; retry when they are idle, or give a longer --timeout",
        );
        err.stalled_tasks = stalled;
        err
    }

    /// Waits for the module's reference count to drop, then deletes it.
    fn remove_module(
        &self,
        name: &str,
        timeout: Duration,
        poll: Duration,
    ) -> Result<(), HostError> {
        let refcnt = self.root.module_dir(name).join("refcnt");
        let _ = sysfs::wait_until(timeout, poll, || {
            std::fs::read_to_string(&refcnt).map_or(true, |s| s.trim() == "0")
        });
        let mut last = None;
        // The reference can still be held for a moment after sysfs shows 0
        // (the livepatch core drops it from a work item); retry EAGAIN/EBUSY
        // briefly rather than for the whole timeout, which the refcount
        // wait above already spent if someone really holds the module.
        let retry_for = timeout.min(Duration::from_secs(5));
        let outcome =
            sysfs::wait_until(
                retry_for,
                poll.max(Duration::from_millis(20)),
                || match self.kernel.delete_module(name) {
                    Ok(()) => {
                        last = None;
                        true
                    }
                    Err(e)
                        if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EBUSY)) =>
                    {
                        last = Some(e);
                        false
                    }
                    Err(e) => {
                        last = Some(e);
                        true
                    }
                },
            );
        match (outcome, last) {
            (WaitOutcome::Done(_), None) => Ok(()),
            (WaitOutcome::Done(_), Some(e)) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            (_, Some(e)) => {
                let mut err = HostError::new(
                    ErrorKind::ModuleInUse,
                    format!("removing module {name} failed: {e}"),
                );
                err.errno = e.raw_os_error();
                Err(err.hint(
                    "a livepatch whose transition was forced keeps its module reference forever; such a module can only go away with a reboot",
                ))
            }
            (WaitOutcome::TimedOut, None) => Err(HostError::new(
                ErrorKind::ModuleInUse,
                format!("removing module {name} timed out"),
            )),
        }
    }

    /// Disables a livepatch, waits for the unpatching transition and for the
    /// kernel to release the module, then removes it.
    pub fn unload(&self, name: &str, opts: &UnloadOptions) -> Result<UnloadReport, HostError> {
        let start = Instant::now();
        // Module names are registered with '_' where the file has '-', as
        // modprobe/rmmod accept either spelling.
        let name = &name.replace('-', "_");
        let pdir = self.root.patch_dir(name);
        let module_loaded = self.root.module_dir(name).is_dir();
        if !pdir.is_dir() && !module_loaded {
            return Err(HostError::new(
                ErrorKind::NotLoaded,
                format!("no livepatch or module named {name:?} is loaded"),
            )
            .hint("see `suture list` for loaded livepatches (module names use underscores)"));
        }
        let mut was_enabled = false;
        let mut transition_time = Duration::ZERO;
        if pdir.is_dir() {
            let state = sysfs::read_patch(&self.root, name)
                .map_err(|e| HostError::io(format!("reading {}", pdir.display()), &e))?;
            let patched = state
                .as_ref()
                .map(sysfs::patched_function_names)
                .unwrap_or_default();
            was_enabled = state.as_ref().is_some_and(|s| s.enabled == Some(true));
            if was_enabled {
                let enabled = pdir.join("enabled");
                if let Err(e) = std::fs::write(&enabled, "0") {
                    let mut err = HostError::io(
                        format!("disabling {name} (writing 0 to {})", enabled.display()),
                        &e,
                    );
                    if e.raw_os_error() == Some(libc::EBUSY) {
                        err.kind = ErrorKind::Busy;
                        err = err.hint("another livepatch is in transition; wait for it (`suture list`) and retry");
                    }
                    return Err(err);
                }
            }
            let t = Instant::now();
            if sysfs::wait_until(opts.timeout, opts.poll_interval, || {
                sysfs::transition_done(&self.root, name)
            }) == WaitOutcome::TimedOut
            {
                let stalled = sysfs::stalled_tasks(&self.root, 0, &patched);
                let mut err = HostError::new(
                    ErrorKind::TransitionTimeout,
                    format!(
                        "livepatch {name} did not finish unpatching within {:?}: {} task(s) still run patched code",
                        opts.timeout,
                        stalled.len()
                    ),
                )
                .hint(format!(
                    "the transition is still in progress and will finish when these tasks leave the patched functions; \
                     run `suture unload {name}` again later, or write 1 to {} to re-enable (reverse) it",
                    pdir.join("enabled").display()
                ));
                err.stalled_tasks = stalled;
                return Err(err);
            }
            transition_time = t.elapsed();
            if sysfs::wait_until(opts.timeout, opts.poll_interval, || !pdir.is_dir())
                == WaitOutcome::TimedOut
            {
                return Err(HostError::new(
                    ErrorKind::Kernel,
                    format!(
                        "{} still exists after the unpatching transition",
                        pdir.display()
                    ),
                )
                .hint("check `dmesg`"));
            }
        }
        if self.root.module_dir(name).is_dir() {
            self.remove_module(name, opts.timeout, opts.poll_interval)?;
        }
        Ok(UnloadReport {
            name: name.to_string(),
            was_enabled,
            transition_ms: ms(transition_time),
            total_ms: ms(start.elapsed()),
        })
    }

    /// Every active livepatch, plus loaded livepatch modules whose patch is
    /// disabled.
    pub fn list(&self) -> Result<Vec<PatchState>, HostError> {
        sysfs::list_patches(&self.root).map_err(|e| HostError::io("listing livepatches".into(), &e))
    }
}

fn already_loaded(name: &str) -> HostError {
    HostError::new(
        ErrorKind::AlreadyLoaded,
        format!("a module named {name} is already loaded"),
    )
    .hint(format!(
        "see `suture list`; to replace it, `suture unload {name}` first"
    ))
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

/// Renders `list` as a fixed-width table for people.
pub fn format_table(patches: &[PatchState]) -> String {
    if patches.is_empty() {
        return "no livepatches loaded\n".to_string();
    }
    let yn = |b: Option<bool>| match b {
        Some(true) => "1",
        Some(false) => "0",
        None => "-",
    };
    let mut rows = vec![[
        "NAME",
        "ENABLED",
        "TRANSITION",
        "OBJECTS (patched)",
        "FUNCTIONS",
        "MODULE",
    ]
    .map(String::from)];
    for p in patches {
        let objects = if p.active {
            p.objects
                .iter()
                .map(|o| format!("{}({})", o.name, yn(o.patched)))
                .collect::<Vec<_>>()
                .join(",")
        } else {
            "disabled, module still loaded".to_string()
        };
        let funcs: usize = p.objects.iter().map(|o| o.functions.len()).sum();
        let mut module = Vec::new();
        if let Some(t) = &p.module.taint {
            module.push(format!("taint={t}"));
        }
        if let Some(r) = p.module.refcnt {
            module.push(format!("refcnt={r}"));
        }
        if let Some(s) = &p.module.srcversion {
            module.push(format!("srcversion={s}"));
        }
        rows.push([
            p.name.clone(),
            yn(p.enabled).into(),
            yn(p.transition).into(),
            objects,
            funcs.to_string(),
            module.join(" "),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;

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

use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sys::{Kernel, SysKernel};
use sysfs::{Root, WaitOutcome};

pub use modinfo::ModuleInfo;
pub use sysfs::{PatchState, StalledTask};

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

/// Asked when a transition has passed its deadline, with the patch name
/// and the tasks that have not switched; `true` forces the transition
/// (writes 1 to `force`) instead of reversing it. The caller decides how
/// to get consent (a prompt, `--yes`); without one suture never forces.
pub type ForceConfirm = Arc<dyn Fn(&str, &[StalledTask]) -> bool + Send + Sync>;

/// Why forcing is dangerous, for prompts and warnings; `unpatching`
/// picks the direction. The kernel (`klp_force_transition`) marks as forced,
/// and so never releases the module of, the patch being disabled, or, when
/// patching, the patches an atomic-replace patch supersedes.
pub fn force_warning(unpatching: bool) -> &'static str {
    if unpatching {
        "forcing marks every task as switched although the listed tasks may still be running the patched code: \
         if they return into it after its module is gone the kernel crashes, so the livepatch core never releases \
         this module: it stays loaded (disabled) until the next reboot; plan that reboot"
    } else {
        "forcing marks every task as switched although the listed tasks may still be running the old code: if the \
         patch changes what old and new functions do together, the kernel can misbehave or crash. The livepatch core \
         then never releases the modules of the patches this one replaces (atomic replace): they can never be \
         removed until the next reboot; plan that reboot and apply no more livepatches meanwhile"
    }
}

/// How long the kernel (5.15+) waits between the fake signals it sends to
/// tasks blocking a transition (`SIGNALS_TIMEOUT` in kernel/livepatch/transition.c).
pub const KERNEL_SIGNAL_PERIOD: Duration = Duration::from_secs(15);

/// Options for [`load`]. `Default` gives a 60 s transition timeout.
#[derive(Clone)]
pub struct LoadOptions {
    /// How long the patching transition may take before it is reversed.
    pub timeout: Duration,
    pub poll_interval: Duration,
    /// Module parameters passed to `finit_module`.
    pub params: String,
    /// Consent to force the transition on timeout; `None`: reverse it.
    pub force: Option<ForceConfirm>,
    /// The sha256 `suture install` recorded for this file: a file that no
    /// longer hashes to it is refused.
    pub installed_sha256: Option<String>,
    /// Period of the fake signals suture sends itself on kernels that have
    /// a per-patch `signal` attribute (5.1 to 5.14); newer kernels send
    /// them on their own every [`KERNEL_SIGNAL_PERIOD`].
    pub signal_every: Duration,
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("timeout", &self.timeout)
            .field("poll_interval", &self.poll_interval)
            .field("params", &self.params)
            .field("force", &self.force.is_some())
            .field("installed_sha256", &self.installed_sha256)
            .field("signal_every", &self.signal_every)
            .finish()
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(10),
            params: String::new(),
            force: None,
            installed_sha256: None,
            signal_every: KERNEL_SIGNAL_PERIOD,
        }
    }
}

/// Options for [`unload`].
#[derive(Clone)]
pub struct UnloadOptions {
    /// Bound on each wait: the unpatching transition, the sysfs directory
    /// going away, the module reference dropping.
    pub timeout: Duration,
    pub poll_interval: Duration,
    /// Consent to force the unpatching transition on timeout; `None`:
    /// leave it running and report.
    pub force: Option<ForceConfirm>,
    pub signal_every: Duration,
}

impl std::fmt::Debug for UnloadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnloadOptions")
            .field("timeout", &self.timeout)
            .field("poll_interval", &self.poll_interval)
            .field("force", &self.force.is_some())
            .field("signal_every", &self.signal_every)
            .finish()
    }
}

impl Default for UnloadOptions {
    fn default() -> Self {
        UnloadOptions {
            timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(10),
            force: None,
            signal_every: KERNEL_SIGNAL_PERIOD,
        }
    }
}

/// What suture did about tasks that were slow to switch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TransitionAid {
    /// Fake signals suture sent through the `signal` attribute (kernels
    /// that have it); 0 on 6.1, whose core sends them itself.
    pub signals_sent: u32,
    /// True when the kernel has no `signal` attribute and sends the fake
    /// signal on its own every 15 s.
    pub kernel_signals: bool,
    /// The transition was forced: the module can never be removed.
    pub forced: bool,
    /// Tasks that had not switched when the transition was forced.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forced_past: Vec<StalledTask>,
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
    pub aid: TransitionAid,
    /// The running kernel's build-id and whether the module's recorded one
    /// matched (`None`: the module records none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    pub build_id_checked: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnloadReport {
    pub name: String,
    /// False when the patch was already disabled and only the module remained.
    pub was_enabled: bool,
    pub transition_ms: f64,
    pub total_ms: f64,
    pub aid: TransitionAid,
    /// False only after a forced transition: the kernel keeps the module.
    pub module_removed: bool,
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

    /// The checks made before anything reaches the kernel: a signature the
    /// trust store accepts (when it holds certificates), an ELF module,
    /// tagged livepatch, built for the running release and, when the module
    /// records it, for the running build of that release.
    pub fn check_module(&self, path: &Path) -> Result<Checked, HostError> {
        let data = std::fs::read(path)
            .map_err(|e| HostError::io(format!("cannot read {}", path.display()), &e))?;
        self.check_data(path, &data)
    }

    /// Where the trust store is: `/etc/suture/certs` under the host root.
    pub fn trust_store_dir(&self) -> PathBuf {
        self.root.0.join(modsig::STORE_DIR)
    }

    /// The signature check alone: the signer, `None` for an unsigned module
    /// under an empty store.
    pub fn check_signature(
        &self,
        path: &Path,
        data: &[u8],
    ) -> Result<Option<modsig::SignatureReport>, HostError> {
        let dir = self.trust_store_dir();
        let store = modsig::TrustStore::load(&dir).map_err(|e| {
            HostError::new(ErrorKind::TrustStore, format!("cannot use the trust store {}: {e}", dir.display())).hint(
                "fix or remove that file: while the store cannot be read, suture refuses every module rather than \
                 load one unchecked",
            )
        })?;
        modsig::check(data, &store).map_err(|e| signature_refusal(path, &e, &dir))
    }

    /// [`Host::check_module`] on bytes already read.
    pub fn check_data(&self, path: &Path, data: &[u8]) -> Result<Checked, HostError> {
        // Authenticity first: the rest of the checks read what a tampered
        // file says about itself.
        let signature = self.check_signature(path, data)?;
        let info = modinfo::parse_module(data).map_err(|e| modinfo_refusal(path, &e))?;
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
        let running = sysfs::running_build_id(&self.root);
        let mut build_id_checked = false;
        if let Some(want) = &info.suture.release_build_id {
            match &running {
                Some(have) if have == want => build_id_checked = true,
                Some(have) => {
                    return Err(HostError::new(
                        ErrorKind::BuildIdMismatch,
                        format!(
                            "refusing to load {}: built for a {release} kernel with build-id {want}, but the running \
                             {release} kernel has build-id {have} (another build of the same release)",
                            path.display()
                        ),
                    )
                    .hint(format!(
                        "rebuild the patch from the image this host runs (/boot/vmlinuz-{release} of the installed \
                         linux-image-{release} package), or boot the kernel it was built for"
                    )));
                }
                None => {
                    return Err(HostError::new(
                        ErrorKind::BuildIdMismatch,
                        format!(
                            "cannot check {}: it was built for build-id {want}, but {} has no GNU build-id note",
                            path.display(),
                            self.root.0.join("sys/kernel/notes").display()
                        ),
                    )
                    .hint("mount sysfs on /sys; without the running kernel's build-id the module cannot be matched to it"));
                }
            }
        }
        Ok(Checked {
            info,
            release,
            running_build_id: running,
            build_id_checked,
            signature,
        })
    }

    /// Checks, loads and waits for a livepatch module; on a transition
    /// timeout the patch is reversed and removed (or forced, with consent),
    /// and the error names the tasks that did not switch.
    pub fn load(&self, path: &Path, opts: &LoadOptions) -> Result<LoadReport, HostError> {
        let start = Instant::now();
        // One descriptor for the checks and for finit_module, so the bytes
        // checked are those of the file the kernel reads (the kernel reads
        // a descriptor from offset 0, whatever its position).
        let mut file = std::fs::File::open(path)
            .map_err(|e| HostError::io(format!("cannot open {}", path.display()), &e))?;
        let mut data = Vec::new();
        io::Read::read_to_end(&mut file, &mut data)
            .map_err(|e| HostError::io(format!("cannot read {}", path.display()), &e))?;
        if let Some(want) = &opts.installed_sha256 {
            let have = state::sha256_hex(&data);
            if &have != want {
                return Err(HostError::new(
                    ErrorKind::Modified,
                    format!(
                        "refusing to load {}: the file changed since it was installed (sha256 {have}, recorded at \
                         install {want})",
                        path.display()
                    ),
                )
                .hint("reinstall the patch from a trusted copy with `suture install FILE.ko`, or remove it with \
                       `suture uninstall NAME`"));
            }
        }
        let Checked {
            info,
            release,
            running_build_id,
            build_id_checked,
            ..
        } = self.check_data(path, &data)?;
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

        let mark = self.kernel.log_mark();
        let t0 = Instant::now();
        if let Err(e) = self.kernel.finit_module(&file, &opts.params) {
            let mut err = self.explain_load_errno(&name, &e, self.kernel.log_since(mark));
            if err.kind == ErrorKind::UnknownSymbol {
                // The module's own `depends` says which modules export what
                // it needs; those not loaded are the likely cause.
                let missing: Vec<&str> = info
                    .depends
                    .iter()
                    .map(String::as_str)
                    .filter(|m| !self.root.module_dir(m).is_dir())
                    .collect();
                if !missing.is_empty() {
                    err = err.hint(format!(
                        "{name} depends on {}, not loaded: `modprobe {}` first, or rebuild the patch so that it does not depend on them",
                        missing.join(", "),
                        missing.join(" ")
                    ));
                }
            }
            return Err(err);
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
        let mut aid = TransitionAid::default();
        if self.wait_transition(
            &name,
            opts.timeout,
            opts.poll_interval,
            opts.signal_every,
            &mut aid,
        ) == WaitOutcome::TimedOut
        {
            let stalled = self.stalled_for(&name, 1);
            match &opts.force {
                Some(confirm) if confirm(&name, &stalled) => {
                    self.force_transition(&name, opts.poll_interval, &mut aid, stalled)?;
                }
                _ => return Err(self.abort_load(&name, opts, stalled, &aid)),
            }
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
            aid,
            build_id: running_build_id,
            build_id_checked,
        })
    }

    /// The tasks not yet in state `target` with the patch's functions
    /// looked for on their stacks.
    fn stalled_for(&self, name: &str, target: i32) -> Vec<StalledTask> {
        let patched = sysfs::read_patch(&self.root, name)
            .ok()
            .flatten()
            .map(|p| sysfs::patched_function_names(&p))
            .unwrap_or_default();
        sysfs::stalled_tasks(&self.root, target, &patched, Some(name))
    }

    /// Waits for the transition of `name` to end. On kernels with a
    /// per-patch `signal` attribute (5.1 to 5.14) suture sends the fake
    /// signal itself every `signal_every`; later kernels, 6.1 included,
    /// removed the attribute and signal stragglers on their own.
    fn wait_transition(
        &self,
        name: &str,
        timeout: Duration,
        poll: Duration,
        signal_every: Duration,
        aid: &mut TransitionAid,
    ) -> WaitOutcome {
        let signal = self.root.patch_dir(name).join("signal");
        let mut last_signal = Instant::now();
        sysfs::wait_until(timeout, poll, || {
            if sysfs::transition_done(&self.root, name) {
                return true;
            }
            aid.kernel_signals = !signal.exists();
            if !aid.kernel_signals
                && last_signal.elapsed() >= signal_every
                && std::fs::write(&signal, "1").is_ok()
            {
                aid.signals_sent += 1;
                last_signal = Instant::now();
            }
            false
        })
    }

    /// Writes 1 to `force` and waits for the kernel to finish the
    /// transition it now considers complete.
    fn force_transition(
        &self,
        name: &str,
        poll: Duration,
        aid: &mut TransitionAid,
        stalled: Vec<StalledTask>,
    ) -> Result<(), HostError> {
        let force = self.root.patch_dir(name).join("force");
        std::fs::write(&force, "1").map_err(|e| {
            HostError::io(
                format!("forcing {name} (writing 1 to {})", force.display()),
                &e,
            )
        })?;
        aid.forced = true;
        aid.forced_past = stalled;
        // The core completes a forced transition from its next retry (once a
        // second); allow a few.
        if sysfs::wait_until(Duration::from_secs(10), poll, || {
            sysfs::transition_done(&self.root, name)
        }) == WaitOutcome::TimedOut
        {
            return Err(HostError::new(
                ErrorKind::Kernel,
                format!("livepatch {name} is still in transition 10 s after it was forced"),
            )
            .hint("check `dmesg`"));
        }
        Ok(())
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
            .hint("the module needs symbols this kernel does not export, or a module it depends on is not loaded; `dmesg` names each `Unknown symbol`"),
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
        let unknown = unknown_symbols(&log);
        let errno_name = if errno == libc::ENOENT {
            "ENOENT".to_string()
        } else {
            format!("errno {errno}")
        };
        if log_has("Unknown symbol") {
            // The module loader's: symbols no loaded module or vmlinux exports.
            err.kind = ErrorKind::UnknownSymbol;
            err.message = format!(
                "the kernel could not resolve symbol{} of {name}: {} ({errno_name})",
                if unknown.len() == 1 { "" } else { "s" },
                unknown.join(", "),
            );
        } else if !unknown.is_empty() {
            // The livepatch core's lookup (EINVAL): a function the patch
            // replaces or a symbol its code uses is not in the running
            // kernel; the kind stays what the errno says.
            err.message = format!(
                "the livepatch core found no {} in the running kernel for {name} ({errno_name}): a function it replaces or a symbol its code uses",
                unknown.join(", "),
            );
        }
        // The kernel's own words decide between causes that share an errno.
        if log_has("pre-patch callback failed for object") {
            err = HostError::new(
                ErrorKind::Kernel,
                format!("{name} refused to load: its own pre-patch callback returned an error ({e})"),
            )
            .hint("the patch's author decided this host is not in a state to patch; the kernel log says which object; nothing was changed");
        } else if log_has("is not compatible with the already installed livepatches") {
            err = HostError::new(
                ErrorKind::Kernel,
                format!("{name} is not compatible with the loaded livepatches: a loaded patch records a system state (klp_state) this one lacks or has at a lower version"),
            )
            .hint("build the replacing patch with every `--state ID:VERSION` the loaded patch has, at the same or a higher version (`modinfo` or `suture status` of the loaded patch)");
        }
        err.errno = Some(errno);
        err.kernel_log = log;
        err
    }

    /// The patching transition did not finish: record who is stuck, reverse
    /// the transition, remove the module, and report.
    fn abort_load(
        &self,
        name: &str,
        opts: &LoadOptions,
        stalled: Vec<StalledTask>,
        aid: &TransitionAid,
    ) -> HostError {
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
        let mut err = HostError::new(ErrorKind::TransitionTimeout, msg).hint(signal_hint(
            "the listed tasks sleep in or above a patched function; retry when they are idle, or give a longer --timeout",
            opts.timeout,
            aid,
        ));
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
        let mut aid = TransitionAid::default();
        if pdir.is_dir() {
            let state = sysfs::read_patch(&self.root, name)
                .map_err(|e| HostError::io(format!("reading {}", pdir.display()), &e))?;
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
                        err = err.hint("another livepatch is in transition; wait for it (`suture status`) and retry");
                    }
                    return Err(err);
                }
            }
            let t = Instant::now();
            if self.wait_transition(
                name,
                opts.timeout,
                opts.poll_interval,
                opts.signal_every,
                &mut aid,
            ) == WaitOutcome::TimedOut
            {
                let stalled = self.stalled_for(name, 0);
                match &opts.force {
                    Some(confirm) if confirm(name, &stalled) => {
                        self.force_transition(name, opts.poll_interval, &mut aid, stalled)?;
                    }
                    _ => {
                        let mut err = HostError::new(
                            ErrorKind::TransitionTimeout,
                            format!(
                                "livepatch {name} did not finish unpatching within {:?}: {} task(s) still run patched code",
                                opts.timeout,
                                stalled.len()
                            ),
                        )
                        .hint(signal_hint(
                            &format!(
                                "the transition is still in progress and will finish when these tasks leave the patched functions; \
                                 run `suture unload {name}` again later, or write 1 to {} to re-enable (reverse) it",
                                pdir.join("enabled").display()
                            ),
                            opts.timeout,
                            &aid,
                        ));
                        err.stalled_tasks = stalled;
                        return Err(err);
                    }
                }
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
        // After a forced transition the core never drops the module
        // reference: waiting for it would only spend the timeout.
        let module_removed = if aid.forced {
            false
        } else {
            if self.root.module_dir(name).is_dir() {
                self.remove_module(name, opts.timeout, opts.poll_interval)?;
            }
            true
        };
        Ok(UnloadReport {
            name: name.to_string(),
            was_enabled,
            transition_ms: ms(transition_time),
            total_ms: ms(start.elapsed()),
            aid,
            module_removed,
        })
    }

    /// Every active livepatch, plus loaded livepatch modules whose patch is
    /// disabled.
    pub fn list(&self) -> Result<Vec<PatchState>, HostError> {
        sysfs::list_patches(&self.root).map_err(|e| HostError::io("listing livepatches".into(), &e))
    }
}

/// What [`Host::check_module`] found.
#[derive(Debug, Clone)]
pub struct Checked {
    pub info: ModuleInfo,
    /// The running kernel's release (equal to the module's).
    pub release: String,
    pub running_build_id: Option<String>,
    /// The module records a build-id and it equals the running kernel's.
    pub build_id_checked: bool,
    /// Who signed it, and the certificate it verified against.
    pub signature: Option<modsig::SignatureReport>,
}

/// A signature refusal with what to do about it.
fn signature_refusal(path: &Path, e: &modsig::SigError, store: &Path) -> HostError {
    use modsig::SigError as S;
    let kind = match e {
        S::Unsigned => ErrorKind::Unsigned,
        S::UnknownSigner { .. } => ErrorKind::UnknownSigner,
        S::Modified { .. } => ErrorKind::Modified,
        S::Malformed(_) | S::Unsupported(_) | S::BadSignature { .. } => ErrorKind::BadSignature,
    };
    let store = store.display();
    let hint = match e {
        S::Unsigned => format!(
            "sign it with `suture build --sign-key KEY.pem --sign-cert CERT.pem ...` using a key whose certificate \
             is in {store}"
        ),
        S::UnknownSigner { .. } => format!(
            "if you trust that signer, put its certificate (PEM or DER) in {store}; otherwise re-sign the module \
             with a key whose certificate is there"
        ),
        S::Modified { .. } => "do not load it: get the module again from its build, or rebuild and re-sign it".into(),
        S::Malformed(_) | S::BadSignature { .. } => {
            "get the module again from its build, or re-sign an intact copy with `suture build --sign-key ... \
             --sign-cert ...`"
                .into()
        }
        S::Unsupported(_) => "sign with an RSA key and sha256, sha384 or sha512".into(),
    };
    HostError::new(kind, format!("refusing to load {}: {e}", path.display())).hint(hint)
}

/// Adds to a timeout hint what the fake signal could and could not do.
fn signal_hint(base: &str, timeout: Duration, aid: &TransitionAid) -> String {
    let mut h = base.to_string();
    if aid.kernel_signals && timeout < KERNEL_SIGNAL_PERIOD {
        h.push_str(&format!(
            "; the kernel sends blocking tasks a fake signal only every {} s, so a --timeout of {:?} gave them none",
            KERNEL_SIGNAL_PERIOD.as_secs(),
            timeout
        ));
    } else if aid.kernel_signals {
        h.push_str(
            "; the kernel's fake signal (every 15 s) did not move them: they sleep uninterruptibly (kthreads, D state) \
             and only switch when they leave the patched function",
        );
    } else if aid.signals_sent > 0 {
        h.push_str(&format!(
            "; suture sent {} fake signal(s) through the signal attribute without effect",
            aid.signals_sent
        ));
    }
    h.push_str("; --force exists but is dangerous (see `suture load --help`)");
    h
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

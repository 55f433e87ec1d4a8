//! Loading a livepatch: `finit_module` from the checked descriptor, the
//! transition watched, reversed (or forced, with consent) on its deadline,
//! the blocking tasks named.

use crate::error::already_loaded;
use crate::sysfs::{self, WaitOutcome};
use crate::*;
use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Adds to a timeout hint what the fake signal could and could not do.
pub(crate) fn signal_hint(base: &str, timeout: Duration, aid: &TransitionAid) -> String {
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

impl Host {
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
    pub(crate) fn stalled_for(&self, name: &str, target: i32) -> Vec<StalledTask> {
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
    pub(crate) fn wait_transition(
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
    pub(crate) fn force_transition(
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

    pub(crate) fn explain_load_errno(
        &self,
        name: &str,
        e: &io::Error,
        log: Vec<String>,
    ) -> HostError {
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
    pub(crate) fn abort_load(
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
}

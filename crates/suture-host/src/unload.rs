//! Unloading: disable, wait for the transition, `delete_module`.

use crate::load::signal_hint;
use crate::sysfs::{self, WaitOutcome};
use crate::*;
use serde::Serialize;
use std::time::{Duration, Instant};

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

impl Host {
    /// Waits for the module's reference count to drop, then deletes it.
    pub(crate) fn remove_module(
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
}
